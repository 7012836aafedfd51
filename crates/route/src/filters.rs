//! Pure request/response transformations for the filters of a matched rule.
//!
//! SKELETON: signatures are the contract with `strait-proxy`; bodies are being implemented.

use http::HeaderMap;
use strait_config::{Cors, HeaderModifier, PathMatch, PathModifier, RequestRedirect};

/// Applies set/add/remove to a header map (names case-insensitive, `add` appends a value).
pub fn modify_headers(modifier: &HeaderModifier, headers: &mut HeaderMap) {
    let _ = (modifier, headers);
    todo!("filters")
}

/// The request as the client addressed it, for computing redirects.
#[derive(Clone, Copy, Debug)]
pub struct RequestTarget<'r> {
    /// `http` or `https`: how the client reached the listener.
    pub scheme: &'r str,
    /// Host without port.
    pub host: &'r str,
    /// The listener port the request arrived on (the Gateway's port, not a local mapping).
    pub listener_port: u16,
    pub path: &'r str,
    pub query: Option<&'r str>,
}

/// The `Location` value for a RequestRedirect, per the spec's port/scheme defaulting rules.
pub fn redirect_location(
    redirect: &RequestRedirect,
    target: &RequestTarget<'_>,
    matched: &PathMatch,
) -> String {
    let _ = (redirect, target, matched);
    todo!("filters")
}

/// The rewritten path (without query) for a URLRewrite path modifier.
pub fn rewrite_path(modifier: &PathModifier, matched: &PathMatch, path: &str) -> String {
    let _ = (modifier, matched, path);
    todo!("filters")
}

/// What the CORS filter decides for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum CorsOutcome {
    /// Not a CORS request (no Origin): proceed unchanged.
    NotCors,
    /// A preflight (OPTIONS with Origin and Access-Control-Request-Method): answer directly with
    /// these headers and status 200 (an origin that is not allowed gets no CORS headers).
    Preflight(HeaderMap),
    /// An actual cross-origin request: proxy it and add these headers to the response.
    Simple(HeaderMap),
}

/// Evaluates the CORS filter for a request's method and headers.
pub fn cors(cors: &Cors, method: &http::Method, request_headers: &HeaderMap) -> CorsOutcome {
    let _ = (cors, method, request_headers);
    todo!("filters")
}

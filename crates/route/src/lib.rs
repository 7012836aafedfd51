//! The route engine: pure, shared by ingress gateways and waypoints.
//!
//! A [`RouteTable`] is built once per config version from a [`PortConfig`] (all regexes compiled,
//! hostnames and paths indexed). Per request, [`RouteTable::route`] picks the listener (listener
//! isolation), then the highest-precedence matching rule across every route attached to it, as
//! the Gateway API spec orders them. The filters module holds the pure request/response
//! transformations the proxy applies for the chosen rule.
//!
//! SKELETON: the API below is the contract with `strait-proxy`; bodies are being implemented.

pub mod filters;

use std::sync::Arc;

use http::{HeaderMap, Method};
use strait_config::{
    ClusterKey, HeaderModifier, HttpFilter, PathMatch, PortConfig, Retry, RouteRef, Timeouts,
};

/// Why a [`RouteTable`] could not be built. Compile validates first, so this means a config
/// produced elsewhere (or a compile bug); the message names the route.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{route}: invalid regular expression {pattern:?}: {source}")]
    Regex {
        route: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },
}

/// What the proxy knows about a request when routing it. All borrowed: routing allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'r> {
    pub method: &'r Method,
    /// Host (or `:authority`) without port, lower-cased by the caller.
    pub host: &'r str,
    /// Path without the query string.
    pub path: &'r str,
    /// Raw query string without `?`.
    pub query: Option<&'r str>,
    pub headers: &'r HeaderMap,
    /// TLS server name, for HTTPS listeners (421 detection).
    pub sni: Option<&'r str>,
}

/// The routing outcome.
#[derive(Debug)]
pub enum Decision<'t> {
    /// No listener or no rule matches: answer 404.
    NotFound,
    /// HTTPS: the Host belongs to a different listener than the one SNI selected: answer 421.
    Misdirected,
    Matched(RouteMatch<'t>),
}

/// A matched rule, with what filters need to know about the match.
#[derive(Debug)]
pub struct RouteMatch<'t> {
    /// sectionName of the listener that took the request.
    pub listener: &'t str,
    pub route: &'t RouteRef,
    pub rule: &'t Rule,
    /// The path match that selected the rule (ReplacePrefixMatch needs it).
    pub path_match: &'t PathMatch,
}

/// A routing table for one port of a Gateway.
#[derive(Debug)]
pub struct RouteTable {
    _private: (),
}

impl RouteTable {
    /// Builds the indexes for every listener and route on `port`.
    pub fn build(port: &PortConfig) -> Result<RouteTable, BuildError> {
        let _ = port;
        todo!("route engine")
    }

    /// Finds the rule for a request. No allocation, no linear scan over all routes.
    pub fn route<'t>(&'t self, req: &RequestInfo<'_>) -> Decision<'t> {
        let _ = req;
        todo!("route engine")
    }
}

/// A rule ready to execute: filters precompiled, backends with cumulative weights.
#[derive(Debug)]
pub struct Rule {
    pub name: Option<String>,
    pub filters: Arc<[HttpFilter]>,
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    total_weight: u64,
}

/// A backend of a rule.
#[derive(Debug)]
pub struct Backend {
    pub weight: u32,
    /// `None` for an invalid reference: requests that pick it get 500.
    pub cluster: Option<ClusterKey>,
    pub filters: Arc<[HttpFilter]>,
}

impl Rule {
    /// Picks a backend by weight; `roll` is uniform random in `0..u64::MAX`. `None` when the rule
    /// has no backends or all weights are 0 (answer 500).
    pub fn pick_backend(&self, roll: u64) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        let mut point = roll % self.total_weight;
        for backend in &self.backends {
            let w = u64::from(backend.weight);
            if point < w {
                return Some(backend);
            }
            point -= w;
        }
        None
    }
}

/// Re-exported so the proxy need not depend on config for header modifiers.
pub type Modifier = HeaderModifier;

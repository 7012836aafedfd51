//! Per-request pipeline: route, filters, backend choice, forwarding with timeouts and retries.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::Either;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use strait_config::{AppProtocol, BackendTarget, ObjectRef, Retry};
use strait_route::filters::{self, CorsOutcome, Filter, RequestTarget};
use strait_route::{Decision, RequestInfo, RouteMatch, RouteTable};

use crate::h1::OnUpgrade;
use crate::headers;
use crate::tls::PortTls;
use crate::upstream::{self, Body, ClusterState, Clusters, InFlight, Inbound, Outgoing, SendError};

/// Bodies up to this size are buffered so retries and mirrors can replay them.
const REPLAY_LIMIT: u64 = 64 * 1024;
/// Extra attempts on other endpoints after a refused connection, without a retry policy.
const MAX_CONNECT_RETRIES: usize = 2;
/// A mirror never lives longer than this.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a port serves under one config version.
#[derive(Debug)]
pub(crate) struct PortState {
    pub(crate) gateway: ObjectRef,
    /// The Gateway listener port (not the local one): redirects use it.
    pub(crate) listener_port: u16,
    pub(crate) table: RouteTable,
    pub(crate) clusters: Arc<Clusters>,
    pub(crate) tls: Option<PortTls>,
}

/// What a connection knows about itself.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// `peer`'s address for `x-forwarded-for`.
    peer_header: HeaderValue,
    pub(crate) https: bool,
    pub(crate) sni: Option<String>,
}

impl ConnInfo {
    pub(crate) fn new(peer: SocketAddr, https: bool, sni: Option<String>) -> ConnInfo {
        ConnInfo {
            peer,
            peer_header: headers::client_address(peer.ip()),
            https,
            sni,
        }
    }
}

/// Filter effects carried from request processing to the upstream call and the response.
#[derive(Default)]
struct Effects<'t> {
    host_rewrite: Option<&'t str>,
    path_rewrite: Option<String>,
    cors: Option<HeaderMap>,
}

pub(crate) fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(upstream::empty());
    *response.status_mut() = code;
    response
}

/// Handles one request; never fails (errors become status codes).
///
/// A function returning an `async` block rather than an `async fn`: an `async fn` keeps its
/// arguments twice in its future (as captured, and as the locals it moves them into when first
/// polled), which for the request is 272 more bytes and a copy of them per request.
#[allow(clippy::manual_async_fn)]
pub(crate) fn handle(
    state: Arc<PortState>,
    conn: Arc<ConnInfo>,
    mut req: Request<Inbound>,
) -> impl Future<Output = Response<Body>> + Send {
    async move {
        let conn = &*conn;
        let client_version = req.version();
        let host_value: Option<HeaderValue> = match req.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        let raw_host = host_value
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let host = headers::normalize_host(raw_host);
        let decision = state.table.route(&RequestInfo {
            method: req.method(),
            host: &host,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            sni: conn.sni.as_deref(),
        });
        let matched = match decision {
            Decision::NotFound => {
                tracing::debug!(host = %host, path = req.uri().path(), "no route: 404");
                return status(StatusCode::NOT_FOUND);
            }
            Decision::Misdirected => {
                tracing::debug!(host = %host, sni = ?conn.sni, "misdirected: 421");
                return status(StatusCode::MISDIRECTED_REQUEST);
            }
            Decision::Matched(m) => m,
        };
        tracing::debug!(
            host = %host,
            path = req.uri().path(),
            route = %format_args!("{}/{}", matched.route.namespace, matched.route.name),
            listener = matched.listener,
            "matched"
        );
        let rule = matched.rule;
        let mut effects = Effects::default();
        if let Some(response) = request_filters(
            &rule.filters,
            &mut req,
            &matched,
            &state,
            conn,
            &host,
            &mut effects,
        ) {
            return response;
        }
        let Some(backend) = rule.pick_backend(rand::random::<u64>()) else {
            tracing::debug!("rule without usable backend: 500");
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        };
        if let Some(response) = request_filters(
            &backend.filters,
            &mut req,
            &matched,
            &state,
            conn,
            &host,
            &mut effects,
        ) {
            return response;
        }
        let Some(cluster) = backend
            .cluster
            .as_ref()
            .and_then(|key| state.clusters.get(key))
        else {
            tracing::debug!(cluster = ?backend.cluster, "invalid backend: 500");
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        };
        if cluster.endpoints.is_empty() {
            tracing::debug!(cluster = %cluster.key, "no endpoints: 503");
            return status(StatusCode::SERVICE_UNAVAILABLE);
        }

        let hop_by_hop = headers::HopByHop::scan(req.headers());
        let upgrade = client_version == Version::HTTP_11
            && cluster.protocol != AppProtocol::H2c
            && hop_by_hop.has_upgrade()
            && headers::is_websocket_upgrade(req.headers());
        let client_upgrade = if upgrade {
            req.extensions_mut().remove::<OnUpgrade>()
        } else {
            None
        };
        let (parts, body) = req.into_parts();
        let path_and_query = match effects.path_rewrite.take() {
            Some(path) => {
                let pq = match parts.uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                };
                match PathAndQuery::try_from(pq) {
                    Ok(pq) => pq,
                    Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR),
                }
            }
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let upstream_host = match effects.host_rewrite {
            Some(hostname) => HeaderValue::from_str(hostname).ok(),
            None => host_value,
        };
        let mut outgoing = Outgoing {
            method: parts.method,
            path_and_query,
            headers: parts.headers,
            host: upstream_host,
        };
        // The client's Host stays in the map: the upstream request replaces (HTTP/1.1) or removes
        // (HTTP/2) it, one lookup instead of two.
        headers::strip_scanned(&mut outgoing.headers, hop_by_hop, upgrade);
        headers::add_forwarded(&mut outgoing.headers, &conn.peer_header, conn.https);

        let filters = || rule.filters.iter().chain(backend.filters.iter());
        let request_timeout = rule.timeouts.request.filter(|d| !d.is_zero());
        let backend_timeout = rule.timeouts.backend_request.filter(|d| !d.is_zero());

        // This future is made in its box (`server::pin_in_place`) and never moved, so the plain
        // exchange is awaited in it rather than boxed again: a second allocation of a few KiB
        // (beyond glibc's per-thread cache) cost more than the room. Upgrades are boxed, as are
        // h2c and TLS inside `upstream::send`, so that their larger state is paid by them alone.
        let result = if upgrade {
            let attempt = Box::pin(forward_upgrade(cluster, outgoing, client_upgrade));
            with_timeout(request_timeout.or(backend_timeout), attempt).await
        } else {
            let has_mirror = filters().any(|f| matches!(f, Filter::RequestMirror(_)));
            let retries = rule.retry.as_ref().filter(|r| r.attempts > 0);
            let body = if has_mirror || retries.is_some() {
                match Box::pin(buffer_small(body)).await {
                    Ok(body) => body,
                    Err(response) => return response,
                }
            } else if body.is_end_stream() {
                // No body (GET...): replayable for free.
                ReqBody::Buffered(Bytes::new())
            } else {
                ReqBody::Streaming(Some(Body::Stream(body)))
            };
            if has_mirror {
                for filter in filters() {
                    if let Filter::RequestMirror(mirror) = filter {
                        spawn_mirror(&state.clusters, mirror, &outgoing, &body);
                    }
                }
            }
            let attempt = forward(cluster, outgoing, body, retries, backend_timeout);
            with_timeout(request_timeout, attempt).await
        };
        let response = match result {
            Ok(response) => response,
            Err(code) => return status(code),
        };
        let (mut parts, body) = response.into_parts();
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            headers::strip_hop_by_hop(&mut parts.headers, false);
        }
        parts.version = client_version;
        if let Some(cors) = effects.cors {
            // `None` names continue the previous header: replace the backend's values, keep all ours.
            let mut last = None;
            for (name, value) in cors {
                match name {
                    Some(name) => {
                        parts.headers.insert(name.clone(), value);
                        last = Some(name);
                    }
                    None => {
                        if let Some(name) = &last {
                            parts.headers.append(name.clone(), value);
                        }
                    }
                }
            }
        }
        for filter in filters() {
            if let Filter::ResponseHeaderModifier(edits) = filter {
                edits.apply(&mut parts.headers);
            }
        }
        Response::from_parts(parts, body)
    }
}

/// `fut`, answered 504 when `limit` passes first. Not an `async fn`, which would keep `fut`
/// twice (as its argument and inside the timeout).
fn with_timeout<F>(
    limit: Option<Duration>,
    fut: F,
) -> impl Future<Output = Result<Response<Body>, StatusCode>>
where
    F: Future<Output = Result<Response<Body>, StatusCode>>,
{
    match limit {
        Some(limit) => Either::Left(tokio::time::timeout(limit, fut).map(move |outcome| {
            outcome.unwrap_or_else(|_| {
                tracing::debug!(?limit, "request timeout: 504");
                Err(StatusCode::GATEWAY_TIMEOUT)
            })
        })),
        None => Either::Right(fut),
    }
}

/// Applies request-side filters; returns a response when a filter answers directly.
fn request_filters<'t>(
    list: &'t [Filter],
    req: &mut Request<Inbound>,
    matched: &RouteMatch<'_>,
    state: &PortState,
    conn: &ConnInfo,
    host: &str,
    effects: &mut Effects<'t>,
) -> Option<Response<Body>> {
    for filter in list {
        match filter {
            Filter::RequestHeaderModifier(edits) => edits.apply(req.headers_mut()),
            Filter::ResponseHeaderModifier(_) | Filter::RequestMirror(_) => {}
            Filter::RequestRedirect(redirect) => {
                let target = RequestTarget {
                    scheme: if conn.https { "https" } else { "http" },
                    host,
                    listener_port: state.listener_port,
                    path: req.uri().path(),
                    query: req.uri().query(),
                };
                let location = filters::redirect_location(redirect, &target, matched.path_match);
                let code = StatusCode::from_u16(redirect.status_code).unwrap_or(StatusCode::FOUND);
                let Ok(location) = HeaderValue::from_str(&location) else {
                    tracing::warn!(location, "redirect produced an invalid Location: 500");
                    return Some(status(StatusCode::INTERNAL_SERVER_ERROR));
                };
                let mut response = status(code);
                response.headers_mut().insert(header::LOCATION, location);
                return Some(response);
            }
            Filter::UrlRewrite(rewrite) => {
                if let Some(hostname) = &rewrite.hostname {
                    effects.host_rewrite = Some(hostname);
                }
                if let Some(path) = &rewrite.path {
                    effects.path_rewrite = Some(filters::rewrite_path(
                        path,
                        matched.path_match,
                        req.uri().path(),
                    ));
                }
            }
            Filter::Cors(cors) => match filters::cors(cors, req.method(), req.headers()) {
                CorsOutcome::NotCors => {}
                CorsOutcome::Preflight(headers) => {
                    let mut response = status(StatusCode::OK);
                    *response.headers_mut() = headers;
                    return Some(response);
                }
                CorsOutcome::Simple(headers) => effects.cors = Some(headers),
            },
        }
    }
    None
}

/// A request body, buffered when it is small enough to be replayed.
enum ReqBody {
    Buffered(Bytes),
    /// Sent once (`None` afterwards).
    Streaming(Option<Body>),
}

impl ReqBody {
    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Buffered(_))
    }

    fn take(&mut self) -> Body {
        match self {
            ReqBody::Buffered(bytes) => Body::full(bytes.clone()),
            ReqBody::Streaming(body) => body.take().unwrap_or_else(upstream::empty),
        }
    }
}

/// Reads the body into memory when it fits in [`REPLAY_LIMIT`]; otherwise keeps what was read
/// in front of the rest of the stream. Request trailers are not kept in a buffered body.
async fn buffer_small(mut body: Inbound) -> Result<ReqBody, Response<Body>> {
    if body.is_end_stream() {
        return Ok(ReqBody::Buffered(Bytes::new()));
    }
    if body.size_hint().lower() > REPLAY_LIMIT {
        return Ok(ReqBody::Streaming(Some(Body::Stream(body))));
    }
    let mut chunks = VecDeque::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(error = %e, "client body failed: 400");
                return Err(status(StatusCode::BAD_REQUEST));
            }
        };
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            chunks.push_back(data);
            if total > REPLAY_LIMIT {
                return Ok(ReqBody::Streaming(Some(Body::Prefixed(chunks, body))));
            }
        }
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut all = bytes::BytesMut::with_capacity(total as usize);
            for chunk in chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        }
    };
    Ok(ReqBody::Buffered(bytes))
}

/// Sends the request with retries; each attempt may pick another endpoint.
async fn forward(
    cluster: &ClusterState,
    outgoing: Outgoing,
    mut body: ReqBody,
    retry: Option<&Retry>,
    per_attempt: Option<Duration>,
) -> Result<Response<Body>, StatusCode> {
    let replayable = body.replayable();
    let mut retries = match retry {
        Some(retry) if replayable => retry.attempts,
        _ => 0,
    };
    // A refused connection never reached the backend: trying another endpoint is always safe,
    // policy or not (endpoint lists lag behind pods going away).
    let mut connect_retries = if replayable {
        cluster
            .endpoints
            .len()
            .saturating_sub(1)
            .min(MAX_CONNECT_RETRIES)
    } else {
        0
    };
    let mut previous = None;
    let mut outgoing = Some(outgoing);
    loop {
        let Some(endpoint) = cluster.pick_avoiding(previous) else {
            return Err(StatusCode::SERVICE_UNAVAILABLE);
        };
        // Only a request that may be retried pays for a copy of its head.
        let more = retries > 0 || connect_retries > 0;
        let head = if more {
            outgoing.clone()
        } else {
            outgoing.take()
        };
        let Some(head) = head else {
            return Err(StatusCode::BAD_GATEWAY);
        };
        let guard = InFlight::new(endpoint);
        // Each arm makes its send future where it is awaited: one made before the match is
        // moved (copied) into the arm's.
        let (protocol, body) = (cluster.protocol, body.take());
        let outcome = match per_attempt {
            Some(limit) => Box::pin(tokio::time::timeout(
                limit,
                upstream::send(protocol, endpoint, head, body),
            ))
            .await
            .ok(),
            None => Some(upstream::send(protocol, endpoint, head, body).await),
        };
        drop(guard);
        previous = Some(endpoint.addr);
        match outcome {
            Some(Ok(response)) => {
                let code = response.status().as_u16();
                let retriable = retry.is_some_and(|r| r.codes.contains(&code));
                if retries == 0 || !retriable {
                    return Ok(response);
                }
                tracing::debug!(code, endpoint = %endpoint.addr, "retrying on status");
            }
            Some(Err(SendError::Connect(e))) if connect_retries > 0 => {
                tracing::warn!(cluster = %cluster.key, endpoint = %endpoint.addr, error = %e, "upstream connect failed, trying another endpoint");
                connect_retries -= 1;
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(cluster = %cluster.key, endpoint = %endpoint.addr, error = %e, "upstream request failed");
                if retries == 0 {
                    return Err(StatusCode::BAD_GATEWAY);
                }
            }
            None => {
                tracing::debug!(cluster = %cluster.key, endpoint = %endpoint.addr, "backend request timeout");
                if retries == 0 {
                    return Err(StatusCode::GATEWAY_TIMEOUT);
                }
            }
        }
        retries -= 1;
        if let Some(backoff) = retry.and_then(|r| r.backoff).filter(|d| !d.is_zero()) {
            Box::pin(tokio::time::sleep(backoff)).await;
        }
    }
}

/// Forwards a WebSocket upgrade and, on 101, splices the two upgraded streams.
async fn forward_upgrade(
    cluster: &ClusterState,
    outgoing: Outgoing,
    client: Option<OnUpgrade>,
) -> Result<Response<Body>, StatusCode> {
    let Some(endpoint) = cluster.pick() else {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    };
    let mut response = match upstream::send_upgrade(endpoint, outgoing).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(cluster = %cluster.key, endpoint = %endpoint.addr, error = %e, "upgrade request failed");
            return Err(StatusCode::BAD_GATEWAY);
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = client else {
            return Err(StatusCode::BAD_GATEWAY);
        };
        let upstream = hyper::upgrade::on(&mut response);
        let guard = InFlight::new(endpoint);
        tokio::spawn(async move {
            let _guard = guard;
            let (mut client, upstream) = match tokio::join!(client.wait(), upstream) {
                (Ok(client), Ok(upstream)) => (client, upstream),
                (Err(e), _) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
                (_, Err(e)) => {
                    tracing::debug!(error = %e, "upstream upgrade did not complete");
                    return;
                }
            };
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "upgraded connection ended with error");
            }
        });
    }
    Ok(response.map(|body| Body::Stream(Inbound::Hyper(body))))
}

/// Fire-and-forget copy of the request; never delays or fails the primary.
fn spawn_mirror(
    clusters: &Arc<Clusters>,
    mirror: &strait_config::RequestMirror,
    outgoing: &Outgoing,
    body: &ReqBody,
) {
    if mirror.percent < 100.0 && rand::random::<f64>() * 100.0 >= mirror.percent {
        return;
    }
    let BackendTarget::Cluster(key) = &mirror.backend else {
        return;
    };
    let Some(cluster) = clusters.get(key).cloned() else {
        return;
    };
    let Some(endpoint) = cluster.pick().cloned() else {
        return;
    };
    let mut copy = outgoing.clone();
    let body = match body {
        ReqBody::Buffered(bytes) => Body::full(bytes.clone()),
        ReqBody::Streaming(_) => {
            copy.headers.remove(header::CONTENT_LENGTH);
            upstream::empty()
        }
    };
    tokio::spawn(async move {
        let _guard = InFlight::new(&endpoint);
        let send = upstream::send(cluster.protocol, &endpoint, copy, body);
        match tokio::time::timeout(MIRROR_TIMEOUT, send).await {
            Ok(Ok(response)) => {
                // Drain so the pooled connection can be reused.
                let _ = tokio::time::timeout(MIRROR_TIMEOUT, response.into_body().collect()).await;
            }
            Ok(Err(SendError::Connect(e) | SendError::Other(e))) => {
                tracing::debug!(cluster = %cluster.key, error = %e, "mirror failed");
            }
            Err(_) => tracing::debug!(cluster = %cluster.key, "mirror timed out"),
        }
    });
}

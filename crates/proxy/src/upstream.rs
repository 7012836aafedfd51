//! Upstream side: clusters, endpoint choice and pooled connections.
//!
//! HTTP/1.1 keeps idle keep-alive connections per endpoint and worker ([`crate::pool`]). h2c
//! keeps one multiplexed connection per endpoint and worker, as Envoy does: a worker's requests
//! share it and never wake another worker's thread to reach it. WebSocket upgrades use a
//! dedicated HTTP/1.1 connection, since an upgraded connection never returns to a pool.
//! Endpoint state (in-flight counters, the h2 connections) outlives config versions so a config
//! swap does not reset connections.
//!
//! Clusters with a BackendTLSPolicy ([`crate::backend_tls`]) get endpoints of their own, built
//! per config version: HTTP/1.1 goes through a keep-alive pool private to the cluster (one per
//! worker), h2 through the endpoint's connections, both over TLS with the policy's SNI and
//! trust.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::backend_tls::{self, Origination};
use crate::coalesce::{Coalesce, FlushAt};
use crate::dial::{BoxIo, Dialer, TcpDialer, dial_within};
use crate::h1::client::{self, ClientConn, ClientError, Failure};
use crate::pool::{Checkin, IDLE_TIMEOUT, IdlePool};
use crate::workers::PerWorker;
use arc_swap::ArcSwapOption;
use futures_util::future::Either;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use strait_config::{AppProtocol, CertificatePem, Cluster, ClusterKey, GatewayConfig, ProxyConfig};

pub(crate) use crate::body::{Body, Inbound};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An empty body.
pub(crate) fn empty() -> Body {
    Body::empty()
}

/// One backend address, shared by every cluster and config version that lists it (except
/// TLS-originating clusters, whose endpoints are their own).
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    authority: Authority,
    in_flight: AtomicUsize,
    h2: PerWorker<H2Slot>,
    /// Idle plain HTTP/1.1 connections (TLS-originating clusters pool in their origination).
    pub(crate) h1: IdlePool,
    /// Set for endpoints of a cluster with a BackendTLSPolicy. Such endpoints belong to their
    /// cluster alone (another Service may reach the same address without TLS).
    tls: Option<Arc<Origination>>,
    dialer: Arc<dyn Dialer>,
}

impl std::fmt::Debug for dyn Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

impl Endpoint {
    fn new(addr: SocketAddr, dialer: Arc<dyn Dialer>) -> Option<Endpoint> {
        let authority = Authority::try_from(addr.to_string()).ok()?;
        Some(Endpoint {
            addr,
            authority,
            in_flight: AtomicUsize::new(0),
            h2: PerWorker::new(H2Slot::default),
            h1: IdlePool::default(),
            tls: None,
            dialer,
        })
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The calling worker's h2 connection, (re)connecting when there is none or it closed.
    async fn h2_sender(&self) -> Result<http2::SendRequest<Body>, SendError> {
        let slot = self.h2.get();
        if let Some(sender) = slot.open() {
            return Ok(sender);
        }
        // Boxed so the request's future does not carry the size of a handshake.
        Box::pin(self.h2_connect(slot)).await
    }

    async fn h2_connect(&self, slot: &H2Slot) -> Result<http2::SendRequest<Body>, SendError> {
        // Only one task of the worker connects; the others wait and reuse its connection.
        let _connecting = slot.connecting.lock().await;
        if let Some(sender) = slot.open() {
            return Ok(sender);
        }
        let stream: BoxIo = match self.tls.as_deref() {
            None => connect(self.dialer.as_ref(), self.addr).await?,
            Some(Origination::Ready { connector, .. }) => Box::new(
                connector
                    .connect(self.addr, CONNECT_TIMEOUT)
                    .await
                    .map_err(SendError::Connect)?,
            ),
            Some(Origination::Invalid(why)) => {
                return Err(SendError::Connect(why.clone().into()));
            }
        };
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Requests of many client tasks share this connection: let them share flushes.
            .handshake(TokioIo::new(Coalesce::new(stream, FlushAt::NextPass)))
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "h2c upstream connection closed");
            }
        });
        slot.sender.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    /// A new plain HTTP/1.1 connection.
    async fn h1_connect(&self) -> Result<Box<ClientConn>, SendError> {
        Ok(ClientConn::new(
            connect(self.dialer.as_ref(), self.addr).await?,
        ))
    }
}

/// One worker's HTTP/2 connection to an endpoint.
#[derive(Debug, Default)]
struct H2Slot {
    sender: ArcSwapOption<http2::SendRequest<Body>>,
    /// Held by the task that connects, so that the worker opens one connection, not one per
    /// request that found none.
    connecting: tokio::sync::Mutex<()>,
}

impl H2Slot {
    /// The connection, unless there is none or it closed.
    fn open(&self) -> Option<http2::SendRequest<Body>> {
        self.sender
            .load_full()
            .filter(|sender| !sender.is_closed())
            .map(|sender| (*sender).clone())
    }
}

/// Counts a request against an endpoint for load balancing while alive.
pub(crate) struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub(crate) fn new(endpoint: &Arc<Endpoint>) -> InFlight {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A Service port as the proxy runs it.
#[derive(Debug)]
pub(crate) struct ClusterState {
    pub(crate) key: ClusterKey,
    pub(crate) protocol: AppProtocol,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
}

impl ClusterState {
    /// Power of two choices on in-flight requests.
    pub(crate) fn pick(&self) -> Option<&Arc<Endpoint>> {
        self.pick_avoiding(None)
    }

    /// Like [`pick`](Self::pick), but never returns `avoid` when another endpoint exists
    /// (a retry should not go back to the endpoint that just failed).
    pub(crate) fn pick_avoiding(&self, avoid: Option<SocketAddr>) -> Option<&Arc<Endpoint>> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first(),
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (self.endpoints.get(a)?, self.endpoints.get(b)?);
                Some(if Some(ea.addr) == avoid {
                    eb
                } else if Some(eb.addr) == avoid || ea.in_flight() <= eb.in_flight() {
                    ea
                } else {
                    eb
                })
            }
        }
    }
}

/// Looked up on every request: foldhash rather than SipHash (the keys come from config).
pub(crate) type Clusters = foldhash::HashMap<ClusterKey, Arc<ClusterState>>;

/// Endpoints by address: one endpoint (and one connection pool) per address however many
/// clusters and config versions list it.
type Registry = Mutex<HashMap<SocketAddr, Weak<Endpoint>>>;

fn lock(registry: &Registry) -> MutexGuard<'_, HashMap<SocketAddr, Weak<Endpoint>>> {
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Process-wide upstream machinery.
pub(crate) struct Runtime {
    endpoints: Arc<Registry>,
    dialer: Arc<dyn Dialer>,
    /// Closes idle connections past their timeout; lives as long as the runtime.
    _reaper: Option<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Periodically closes idle connections that outlived [`IDLE_TIMEOUT`], so an endpoint that
/// no longer gets requests does not hold its backend's connections forever.
fn spawn_reaper(registry: &Arc<Registry>) -> Option<AbortOnDrop> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let registry = Arc::downgrade(registry);
    Some(AbortOnDrop(handle.spawn(async move {
        let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let live: Vec<Arc<Endpoint>> =
                lock(&registry).values().filter_map(Weak::upgrade).collect();
            for endpoint in live {
                endpoint.h1.prune();
            }
        }
    })))
}

impl Runtime {
    /// Dials plain TCP (ingress Gateways).
    pub(crate) fn new() -> Runtime {
        Runtime::with_dialer(Arc::new(TcpDialer))
    }

    /// Reaches endpoints through `dialer` (a waypoint's HBONE tunnels).
    pub(crate) fn with_dialer(dialer: Arc<dyn Dialer>) -> Runtime {
        let endpoints = Arc::new(Registry::default());
        Runtime {
            _reaper: spawn_reaper(&endpoints),
            endpoints,
            dialer,
        }
    }

    /// How endpoints are reached.
    pub(crate) fn dialer(&self) -> &dyn Dialer {
        self.dialer.as_ref()
    }

    /// Builds the clusters of a config, reusing endpoint state that already exists.
    pub(crate) fn clusters(&self, config: &ProxyConfig) -> Clusters {
        self.clusters_for(config, None)
    }

    /// Like [`clusters`](Self::clusters), as seen by `gateway`: TLS origination presents that
    /// Gateway's backend client certificate.
    pub(crate) fn clusters_for(
        &self,
        config: &ProxyConfig,
        gateway: Option<&GatewayConfig>,
    ) -> Clusters {
        let client_certificate = gateway.and_then(|g| g.backend_client_certificate.as_ref());
        self.build_clusters(&config.clusters, client_certificate)
    }

    /// Builds clusters from a cluster map (the mesh config has its own).
    pub(crate) fn build_clusters(
        &self,
        clusters_config: &BTreeMap<ClusterKey, Cluster>,
        client_certificate: Option<&CertificatePem>,
    ) -> Clusters {
        let mut registry = lock(&self.endpoints);
        registry.retain(|_, weak| weak.strong_count() > 0);
        let mut clusters =
            Clusters::with_capacity_and_hasher(clusters_config.len(), Default::default());
        for (key, cluster) in clusters_config {
            let mut endpoints = Vec::with_capacity(cluster.endpoints.len());
            if let Some(tls) = &cluster.tls {
                let origination = Arc::new(backend_tls::build(
                    tls,
                    cluster.protocol,
                    client_certificate,
                ));
                if let Origination::Invalid(why) = origination.as_ref() {
                    tracing::warn!(cluster = %key, reason = %why, "backend TLS unusable, requests will fail");
                }
                for addr in &cluster.endpoints {
                    if let Some(mut endpoint) = Endpoint::new(*addr, self.dialer.clone()) {
                        endpoint.tls = Some(origination.clone());
                        endpoints.push(Arc::new(endpoint));
                    }
                }
            }
            for addr in cluster.endpoints.iter().filter(|_| cluster.tls.is_none()) {
                if let Some(existing) = registry.get(addr).and_then(Weak::upgrade) {
                    endpoints.push(existing);
                } else if let Some(endpoint) = Endpoint::new(*addr, self.dialer.clone()) {
                    let endpoint = Arc::new(endpoint);
                    registry.insert(*addr, Arc::downgrade(&endpoint));
                    endpoints.push(endpoint);
                }
            }
            let state = ClusterState {
                key: key.clone(),
                protocol: cluster.protocol,
                endpoints,
            };
            clusters.insert(key.clone(), Arc::new(state));
        }
        clusters
    }
}

/// Why an upstream attempt failed before a response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection could not be established.
    Connect(BoxError),
    /// The connection failed before a response (reset, protocol error...).
    Other(BoxError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// What is sent upstream, kept apart from the body so retries and mirrors can rebuild it.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    pub(crate) path_and_query: PathAndQuery,
    /// Hop-by-hop headers already removed. A `Host` left in the map is never sent: the
    /// request builders replace it with `host` (HTTP/1.1) or drop it (HTTP/2).
    pub(crate) headers: HeaderMap,
    pub(crate) host: Option<HeaderValue>,
}

impl Outgoing {
    fn into_request(self, protocol: AppProtocol, endpoint: &Endpoint, body: Body) -> Request<Body> {
        let h2 = protocol == AppProtocol::H2c;
        let authority = match (&self.host, h2) {
            (Some(host), true) => {
                Authority::try_from(host.as_bytes()).unwrap_or_else(|_| endpoint.authority.clone())
            }
            _ => endpoint.authority.clone(),
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(self.path_and_query);
        let uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
        let mut request = Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers;
        if h2 {
            *request.version_mut() = Version::HTTP_2;
            request.headers_mut().remove(header::HOST);
        } else {
            *request.version_mut() = Version::HTTP_11;
            set_host(&mut request, self.host, endpoint);
        }
        request
    }
}

/// HTTP/1.1 `Host`: the client's (or the rewritten) one, else the endpoint's address.
fn set_host(request: &mut Request<Body>, host: Option<HeaderValue>, endpoint: &Endpoint) {
    let host = host.or_else(|| HeaderValue::from_str(endpoint.authority.as_str()).ok());
    if let Some(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
}

async fn connect(dialer: &dyn Dialer, addr: SocketAddr) -> Result<BoxIo, SendError> {
    dial_within(dialer, addr, CONNECT_TIMEOUT)
        .await
        .map_err(|e| SendError::Connect(e.into()))
}

/// Sends one request to one endpoint.
///
/// Not an `async fn`: that would keep the request in its own future beside the copy the
/// chosen path's future keeps. Plain HTTP/1.1, the common case, is the path's future itself;
/// the others are boxed, so that it carries no room for their larger state.
pub(crate) fn send(
    protocol: AppProtocol,
    endpoint: &Arc<Endpoint>,
    outgoing: Outgoing,
    body: Body,
) -> impl Future<Output = Result<Response<Body>, SendError>> + Send + '_ {
    if endpoint.tls.is_none() && protocol != AppProtocol::H2c {
        return Either::Left(send_h1(endpoint, outgoing, body));
    }
    Either::Right(Box::pin(async move {
        let response = if let Some(origination) = &endpoint.tls
            && !multiplexed(protocol, endpoint)
        {
            send_tls(origination, endpoint, outgoing, body, false).await?
        } else {
            send_h2(protocol, endpoint, outgoing, body).await?
        };
        Ok(response.map(|body| Body::Stream(Inbound::Hyper(body))))
    }))
}

/// Sends over a pooled plain HTTP/1.1 connection, or a new one when none is idle. The
/// connection returns to the pool when the response body ends.
async fn send_h1(
    endpoint: &Arc<Endpoint>,
    outgoing: Outgoing,
    mut body: Body,
) -> Result<Response<Body>, SendError> {
    let host = match &outgoing.host {
        Some(host) => host.as_bytes(),
        None => endpoint.authority.as_str().as_bytes(),
    };
    // At most one retry, and on a new connection: a new connection never asks for a retry.
    let mut retried = false;
    loop {
        let pooled = if retried {
            None
        } else {
            endpoint.h1.checkout()
        };
        let conn = match pooled {
            Some(conn) => conn,
            // Boxed: the dial would otherwise make every request's future (which is moved
            // several times per request) as large as its own.
            None => Box::pin(endpoint.h1_connect()).await?,
        };
        let head = client::RequestHead {
            method: &outgoing.method,
            target: outgoing.path_and_query.as_str(),
            host,
            headers: &outgoing.headers,
        };
        match client::send(conn, head, body, Checkin::new(endpoint.clone())).await {
            Ok(response) => return Ok(response.map(Body::Upstream)),
            Err(Failure::Retry(again)) if !retried => {
                body = again;
                retried = true;
            }
            Err(Failure::Retry(_)) => {
                return Err(SendError::Other(ClientError::ClosedBeforeAnswer.into()));
            }
            Err(Failure::Failed(e)) => return Err(SendError::Other(e)),
        }
    }
}

/// Sends over h2c, or h2 to a TLS-originating cluster that negotiated it.
async fn send_h2(
    protocol: AppProtocol,
    endpoint: &Endpoint,
    outgoing: Outgoing,
    body: Body,
) -> Result<Response<Incoming>, SendError> {
    let mut request = outgoing.into_request(protocol, endpoint, body);
    if endpoint.tls.is_some() {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTPS);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    let mut sender = endpoint.h2_sender().await?;
    let request = match sender.ready().await {
        Ok(()) => match sender.try_send_request(request).await {
            Ok(response) => return Ok(response),
            Err(mut e) => match e.take_message() {
                Some(request) => request,
                None => return Err(SendError::Other(e.into_error().into())),
            },
        },
        Err(_) => request,
    };
    // The cached connection went away (GOAWAY, reset) before taking the request: the
    // request was not sent, so it is safe to send it on a fresh connection.
    endpoint.h2.get().sender.store(None);
    let mut sender = endpoint.h2_sender().await?;
    sender
        .ready()
        .await
        .map_err(|e| SendError::Other(e.into()))?;
    sender
        .send_request(request)
        .await
        .map_err(|e| SendError::Other(e.into()))
}

/// Sends an upgrade request (WebSocket) on a fresh HTTP/1.1 connection that supports upgrades.
pub(crate) async fn send_upgrade(
    endpoint: &Endpoint,
    outgoing: Outgoing,
) -> Result<Response<Incoming>, SendError> {
    if let Some(origination) = &endpoint.tls {
        return send_tls(origination, endpoint, outgoing, empty(), true).await;
    }
    let stream = connect(endpoint.dialer.as_ref(), endpoint.addr).await?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(e.into()))?;
    let addr = endpoint.addr;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upgrade upstream connection failed");
        }
    });
    let request = outgoing.into_request(AppProtocol::Http1, endpoint, empty());
    sender
        .send_request(request)
        .await
        .map_err(|e| SendError::Other(e.into()))
}

/// Whether requests to this endpoint go over the shared HTTP/2 connection.
fn multiplexed(protocol: AppProtocol, endpoint: &Endpoint) -> bool {
    match endpoint.tls.as_deref() {
        None => protocol == AppProtocol::H2c,
        Some(Origination::Ready { h2, .. }) => *h2,
        Some(Origination::Invalid(_)) => false,
    }
}

/// Sends one request to a TLS-originating endpoint (BackendTLSPolicy) over HTTP/1.1: through
/// the calling worker's keep-alive pool of the cluster, or for an upgrade over a dedicated
/// connection.
async fn send_tls(
    origination: &Origination,
    endpoint: &Endpoint,
    outgoing: Outgoing,
    body: Body,
    upgrade: bool,
) -> Result<Response<Incoming>, SendError> {
    let (connector, pool) = match origination {
        Origination::Invalid(why) => return Err(SendError::Connect(why.clone().into())),
        Origination::Ready {
            connector, pool, ..
        } => (connector, pool),
    };
    let mut request = outgoing.into_request(AppProtocol::Http1, endpoint, body);
    if !upgrade {
        return pool.get().request(request).await.map_err(|e| {
            if e.is_connect() {
                SendError::Connect(e.into())
            } else {
                SendError::Other(e.into())
            }
        });
    }
    // An upgraded connection never returns to a pool: dial a dedicated one.
    let stream = connector
        .connect(endpoint.addr, CONNECT_TIMEOUT)
        .await
        .map_err(SendError::Connect)?;
    if let Some(path_and_query) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = Uri::from(path_and_query);
    }
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(e.into()))?;
    let addr = endpoint.addr;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "TLS upgrade upstream connection closed");
        }
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| SendError::Other(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ClusterKey {
        ClusterKey {
            namespace: "ns".into(),
            name: name.into(),
            port: 80,
        }
    }

    fn config(endpoints: &[(&str, Vec<SocketAddr>)]) -> ProxyConfig {
        let clusters: BTreeMap<_, _> = endpoints
            .iter()
            .map(|(name, eps)| {
                (
                    key(name),
                    Cluster {
                        protocol: AppProtocol::Http1,
                        endpoints: eps.clone(),
                        tls: None,
                    },
                )
            })
            .collect();
        ProxyConfig {
            version: 1,
            gateways: vec![],
            clusters,
        }
    }

    #[test]
    fn endpoint_state_survives_config_versions_and_is_shared() {
        let rt = Runtime::new();
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let first = rt.clusters(&config(&[("x", vec![a, b]), ("y", vec![a])]));
        let xa = first[&key("x")].endpoints[0].clone();
        assert!(
            Arc::ptr_eq(&xa, &first[&key("y")].endpoints[0]),
            "same address, same endpoint"
        );
        let _guard = InFlight::new(&xa);
        let second = rt.clusters(&config(&[("z", vec![a])]));
        let za = &second[&key("z")].endpoints[0];
        assert!(Arc::ptr_eq(&xa, za));
        assert_eq!(za.in_flight(), 1);
        drop(first);
        drop(second);
        drop(_guard);
        drop(xa);
        let third = rt.clusters(&config(&[("z", vec![b])]));
        assert_eq!(
            rt.endpoints.lock().unwrap().len(),
            1,
            "dead endpoints are forgotten"
        );
        assert_eq!(third[&key("z")].endpoints[0].in_flight(), 0);
    }

    /// An h2c server answering 200 to everything; counts the connections it accepted.
    async fn h2c_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(empty()))
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, accepted)
    }

    /// Sends one request over the calling worker's h2 connection and checks its answer.
    async fn get_over_h2(endpoint: &Endpoint) {
        let mut sender = endpoint.h2_sender().await.expect("connected");
        let request = Request::builder()
            .uri(format!("http://{}/", endpoint.addr))
            .version(Version::HTTP_2)
            .body(empty())
            .unwrap();
        let response = sender.send_request(request).await.expect("answered");
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn each_worker_has_its_own_h2_connection_to_an_endpoint() {
        let (addr, accepted) = h2c_server().await;
        let mut endpoint = Endpoint::new(addr, Arc::new(TcpDialer)).unwrap();
        endpoint.h2 = PerWorker::with_count(2, H2Slot::default);
        for worker in [1, 1, 0, 0, 1] {
            crate::workers::enter(worker);
            get_over_h2(&endpoint).await;
        }
        crate::workers::enter(0);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "one connection per worker, reused by its later requests"
        );
        assert!(endpoint.h2.all().all(|slot| slot.open().is_some()));
    }

    #[test]
    fn host_left_in_the_headers_is_replaced_or_dropped() {
        let addr: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let endpoint = Endpoint::new(addr, Arc::new(TcpDialer)).unwrap();
        let outgoing = |host: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("client.example"));
            headers.insert("x-a", HeaderValue::from_static("1"));
            Outgoing {
                method: Method::GET,
                path_and_query: PathAndQuery::from_static("/p?q"),
                headers,
                host: host.map(HeaderValue::from_static),
            }
        };
        let hosts = |r: &Request<Body>| -> Vec<String> {
            r.headers()
                .get_all(header::HOST)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };

        let h1 = outgoing(Some("a.example")).into_request(AppProtocol::Http1, &endpoint, empty());
        assert_eq!(hosts(&h1), ["a.example"]);

        let h2 = outgoing(Some("a.example")).into_request(AppProtocol::H2c, &endpoint, empty());
        assert!(
            hosts(&h2).is_empty(),
            "HTTP/2 carries the authority instead"
        );
        assert_eq!(h2.uri(), "http://a.example/p?q");
        assert_eq!(h2.version(), Version::HTTP_2);
    }

    #[test]
    fn p2c_prefers_less_loaded_endpoint() {
        let rt = Runtime::new();
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let clusters = rt.clusters(&config(&[("x", vec![a, b]), ("empty", vec![])]));
        assert!(clusters[&key("empty")].pick().is_none());
        let cluster = &clusters[&key("x")];
        let busy: Vec<_> = (0..5)
            .map(|_| InFlight::new(&cluster.endpoints[0]))
            .collect();
        for _ in 0..50 {
            assert_eq!(cluster.pick().unwrap().addr, b);
        }
        drop(busy);
        for _ in 0..50 {
            assert_eq!(cluster.pick_avoiding(Some(b)).unwrap().addr, a);
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(cluster.pick().unwrap().addr);
        }
        assert_eq!(seen.len(), 2, "idle endpoints are both used");
    }
}

//! HBONE: application connections tunnelled as HTTP/2 `CONNECT` streams over mutual TLS.
//!
//! Compatible with Istio's ztunnel: TLS 1.3 with SPIFFE certificates on both sides, ALPN `h2`,
//! port 15008, one `CONNECT` stream per application connection whose `:authority` is the
//! original destination `ip:port` (for Service traffic the Service VIP, which is how a waypoint
//! knows which Service's routes apply). The client keeps one HTTP/2 connection per
//! (local identity, peer address, expected peer identity) and multiplexes tunnels over it, so a
//! new application connection costs a stream, not a handshake.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use h2::server::SendResponse;
use h2::{Ping, PingPong, Reason, RecvStream};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use rustls::pki_types::ServerName;
use strait_identity::{SpiffeId, WorkloadCertificate, peer_identity};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::coalesce::{Coalesce, FlushAt};
use crate::dial::{BoxIo, Dialer, dial_within};
pub use crate::tunnel::{Tunnel, relay};
use crate::workers::PerWorker;

/// The HBONE port of every meshed pod and waypoint.
pub const HBONE_PORT: u16 = 15008;
/// Bounds connection setup (TCP + TLS + HTTP/2) to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds the wait for the answer to a `CONNECT`: the peer connects its target (within its own
/// 5 s connect timeout) before it answers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection whose peer does not answer a PING within [`KEEP_ALIVE_TIMEOUT`] is dropped, so
/// a vanished node or waypoint does not keep tunnels (or a pooled connection) hanging.
/// Client HTTP/2 connections keep the same schedule (`http2.rs`).
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub(crate) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Header carrying the original client address to the far end (as ztunnel does).
const FORWARDED: &str = "forwarded";
/// Largest HTTP/2 frame we accept (the peer sends DATA frames up to this). The 16 KiB default
/// costs a frame, a flush and a write syscall per 16 KiB of tunnelled data; 256 KiB frames cut
/// that sixteen-fold and still hold a stream off the connection for only ~2 ms at 1 Gbit/s.
const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// Receive windows: a tunnel may have 4 MiB in flight, all tunnels of a connection 16 MiB.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Data h2 may hold per stream before the writer waits for the peer's window.
const STREAM_SEND_BUFFER: usize = 1024 * 1024;
/// Tunnels one connection carries at once; more wait for a free slot at the client.
const MAX_TUNNELS_PER_CONNECTION: u32 = 1000;
/// A `CONNECT` carries a handful of headers; anything near this is not HBONE.
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Read buffer under the TLS layer: rustls asks the socket for 4 KiB at a time, so without it
/// a 16 KiB record costs four or five `read` syscalls.
const SOCKET_READ_BUFFER: usize = 64 * 1024;
/// Encrypted bytes rustls may queue before the socket takes them (64 KiB by default), so a
/// large DATA frame is encrypted and written with one `writev`.
const TLS_SEND_BUFFER: usize = 256 * 1024;

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("HBONE to {peer}: connect: {source}")]
    Connect {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("HBONE to {peer}: TLS: {source}")]
    Tls {
        peer: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("HBONE to {peer}: HTTP/2: {source}")]
    Http {
        peer: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("HBONE to {peer}: CONNECT {target} refused with {status}")]
    Refused {
        peer: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },
    #[error("HBONE to {peer}: bad CONNECT target {target}")]
    BadTarget { peer: SocketAddr, target: String },
}

impl From<HboneError> for io::Error {
    fn from(e: HboneError) -> io::Error {
        let kind = match &e {
            HboneError::Connect { source, .. } => source.kind(),
            HboneError::Refused { .. } => io::ErrorKind::ConnectionRefused,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    local: String,
    peer: SocketAddr,
    peer_id: Option<String>,
}

/// A pooled HTTP/2 connection: the handle that opens streams, and whether the task driving
/// the connection has ended (h2's handle cannot tell).
#[derive(Clone)]
struct Connection {
    sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Connection {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// One pooled connection slot; the async mutex makes concurrent openers wait for one handshake.
#[derive(Default)]
struct Slot {
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl Slot {
    /// False only for an idle slot whose connection is gone (or never came).
    fn is_alive_or_busy(&self) -> bool {
        match self.connection.try_lock() {
            Ok(connection) => connection.as_ref().is_some_and(|c| !c.is_closed()),
            Err(_) => true,
        }
    }
}

/// Opens tunnels, pooling HTTP/2 connections.
pub struct HboneClient {
    /// Opens the TCP connections under the TLS (the node proxy dials from the source pod's
    /// network namespace with the proxy mark).
    dialer: Arc<dyn Dialer>,
    /// Each worker keeps its own connections ([`PerWorker`]): a tunnel is relayed by the
    /// thread that drives its connection.
    pool: PerWorker<Mutex<HashMap<PoolKey, Arc<Slot>>>>,
}

/// What a tunnel is opened for.
pub struct TunnelTarget<'a> {
    /// The certificate the client presents.
    pub local: &'a WorkloadCertificate,
    /// `ip:15008` of the peer node proxy or waypoint.
    pub peer: SocketAddr,
    /// The identity the peer must prove; `None` accepts any mesh identity.
    pub peer_id: Option<&'a SpiffeId>,
    /// The original destination, sent as `:authority`.
    pub target: SocketAddr,
    /// The application client's address, sent in `forwarded`.
    pub source: Option<IpAddr>,
}

impl HboneClient {
    pub fn new(dialer: Arc<dyn Dialer>) -> HboneClient {
        HboneClient {
            dialer,
            pool: PerWorker::new(Mutex::default),
        }
    }

    /// Opens one tunnel. A pooled connection is reused when alive; a refused `CONNECT` is not
    /// retried (the peer said no), a pooled connection that turns out dead (or going away) is
    /// replaced once.
    pub async fn open(&self, to: &TunnelTarget<'_>) -> Result<Tunnel, HboneError> {
        let key = PoolKey {
            local: to.local.id().to_string(),
            peer: to.peer,
            peer_id: to.peer_id.map(ToString::to_string),
        };
        let slot = {
            let mut pool = match self.pool.get().lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if !pool.contains_key(&key) {
                // A miss is the moment to forget peers that went away (pods come and go), so
                // the pool does not grow with churn.
                pool.retain(|_, slot| slot.is_alive_or_busy());
            }
            pool.entry(key).or_default().clone()
        };
        let request = connect_request(to).map_err(|_| HboneError::BadTarget {
            peer: to.peer,
            target: to.target.to_string(),
        })?;
        let pooled = self.connection(&slot, to, None).await?;
        let failed = pooled.closed.clone();
        match Self::try_open(pooled.sender, &request, to).await {
            Err(Attempt::Retry(e)) => {
                tracing::debug!(peer = %to.peer, error = %e, "pooled HBONE connection unusable");
            }
            result => return result.map_err(Attempt::into_error),
        }
        // Only the connection that failed is replaced, so openers that failed on the same dead
        // connection share one new handshake.
        let fresh = self.connection(&slot, to, Some(&failed)).await?;
        Self::try_open(fresh.sender, &request, to)
            .await
            .map_err(Attempt::into_error)
    }

    /// Sends one `CONNECT` on `sender`'s connection and waits for the answer.
    async fn try_open(
        sender: h2::client::SendRequest<Bytes>,
        request: &Request<()>,
        to: &TunnelTarget<'_>,
    ) -> Result<Tunnel, Attempt> {
        let http_error = |source| HboneError::Http {
            peer: to.peer,
            source,
        };
        // Nothing reaches the peer before `send_request` succeeds: any failure may be retried.
        let mut sender = sender
            .ready()
            .await
            .map_err(|e| Attempt::Retry(http_error(e)))?;
        let (response, send) = sender
            .send_request(request.clone(), false)
            .map_err(|e| Attempt::Retry(http_error(e)))?;
        let response = match tokio::time::timeout(RESPONSE_TIMEOUT, response).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if never_processed(&e) => return Err(Attempt::Retry(http_error(e))),
            Ok(Err(e)) => return Err(Attempt::Final(http_error(e))),
            Err(_) => {
                return Err(Attempt::Final(HboneError::Connect {
                    peer: to.peer,
                    source: io::Error::new(io::ErrorKind::TimedOut, "no answer to CONNECT"),
                }));
            }
        };
        if response.status() != StatusCode::OK {
            return Err(Attempt::Final(HboneError::Refused {
                peer: to.peer,
                target: to.target,
                status: response.status(),
            }));
        }
        Ok(Tunnel::new(send, response.into_body()))
    }

    /// The slot's live connection, connecting when there is none or when it is the one that
    /// just `failed` (another opener may already have replaced it).
    async fn connection(
        &self,
        slot: &Slot,
        to: &TunnelTarget<'_>,
        failed: Option<&Arc<AtomicBool>>,
    ) -> Result<Connection, HboneError> {
        let mut guard = slot.connection.lock().await;
        if let Some(connection) = guard.as_ref()
            && !connection.is_closed()
            && !failed.is_some_and(|failed| Arc::ptr_eq(failed, &connection.closed))
        {
            return Ok(connection.clone());
        }
        let connection = self.handshake(to).await?;
        *guard = Some(connection.clone());
        Ok(connection)
    }

    async fn handshake(&self, to: &TunnelTarget<'_>) -> Result<Connection, HboneError> {
        let peer = to.peer;
        let tcp: BoxIo = dial_within(self.dialer.as_ref(), peer, CONNECT_TIMEOUT)
            .await
            .map_err(|source| HboneError::Connect { peer, source })?;
        let tcp = BufReader::with_capacity(SOCKET_READ_BUFFER, tcp);
        let connector = tokio_rustls::TlsConnector::from(to.local.client_config(to.peer_id));
        let timed_out = |what| HboneError::Tls {
            peer,
            source: io::Error::new(io::ErrorKind::TimedOut, what),
        };
        let mut tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            connector.connect(ServerName::IpAddress(peer.ip().into()), tcp),
        )
        .await
        .map_err(|_| timed_out("handshake timed out"))?
        .map_err(|source| HboneError::Tls { peer, source })?;
        tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
        let mut builder = h2::client::Builder::new();
        builder
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_send_buffer_size(STREAM_SEND_BUFFER);
        let (sender, mut connection) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            builder.handshake::<_, Bytes>(Coalesce::new(tls, FlushAt::NextPass)),
        )
        .await
        .map_err(|_| timed_out("HTTP/2 handshake timed out"))?
        .map_err(|source| HboneError::Http { peer, source })?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = connection.ping_pong();
        let mark_closed = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "HBONE connection closed");
                },
                () = unresponsive(ping) => {
                    tracing::info!(%peer, "HBONE peer stopped answering pings: connection dropped");
                }
            }
            mark_closed.store(true, Ordering::Release);
        });
        Ok(Connection { sender, closed })
    }
}

/// How one `CONNECT` attempt failed.
enum Attempt {
    /// The peer certainly did not act on it: another connection may carry it.
    Retry(HboneError),
    /// The peer answered, or may have acted on it: no second try.
    Final(HboneError),
}

impl Attempt {
    fn into_error(self) -> HboneError {
        match self {
            Attempt::Retry(e) | Attempt::Final(e) => e,
        }
    }
}

/// Whether the peer certainly did not act on a sent `CONNECT` (it refused the stream, or a
/// graceful GOAWAY excluded it), so opening it again elsewhere cannot connect the target twice.
/// A connection that died mid-request proves nothing: the peer may have connected.
fn never_processed(e: &h2::Error) -> bool {
    e.reason() == Some(Reason::REFUSED_STREAM)
        || (e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR))
}

/// Resolves once the peer leaves a PING unanswered for [`KEEP_ALIVE_TIMEOUT`] (or the
/// connection ends); never when there is no ping handle.
async fn unresponsive(ping: Option<PingPong>) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            _ => return,
        }
    }
}

fn connect_request(to: &TunnelTarget<'_>) -> Result<Request<()>, http::Error> {
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(Uri::builder().authority(to.target.to_string()).build()?);
    if let Some(source) = to.source {
        let value = match source {
            IpAddr::V4(ip) => format!("for={ip}"),
            IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        builder = builder.header(FORWARDED, value);
    }
    builder.body(())
}

/// A `CONNECT` the server received.
#[derive(Debug)]
pub struct TunnelRequest {
    /// `:authority`, the original destination.
    pub target: SocketAddr,
    /// The TCP peer (node proxy or waypoint).
    pub peer_addr: SocketAddr,
    /// The peer's verified SPIFFE identity.
    pub peer_id: Option<SpiffeId>,
    /// The application client's address from `forwarded`, when sent.
    pub source: Option<IpAddr>,
    pub headers: HeaderMap,
}

/// What happens to an accepted tunnel once the `200` is sent.
pub type TunnelTask = Box<dyn FnOnce(Tunnel) -> BoxFuture<'static, ()> + Send>;

/// Decides about each `CONNECT`: prepare (connect the target...) and return the task to run on
/// the tunnel, or the status to refuse with. Preparing before answering means a dead target
/// gives the client an error instead of a tunnel that closes at once.
pub trait TunnelHandler: Send + Sync + 'static {
    fn open(&self, request: TunnelRequest) -> BoxFuture<'static, Result<TunnelTask, StatusCode>>;
}

/// The server's certificate, looked up per connection so rotations apply to new connections.
pub trait ServerIdentity: Send + Sync + 'static {
    fn certificate(&self) -> BoxFuture<'_, Option<Arc<WorkloadCertificate>>>;
}

/// Serves HBONE on `listener` until `stop` flips; open tunnels outlive the listener.
pub async fn serve(
    listener: TcpListener,
    identity: Arc<dyn ServerIdentity>,
    handler: Arc<dyn TunnelHandler>,
    stop: watch::Receiver<bool>,
) {
    let serve_stop = stop.clone();
    crate::accept::accept_until_stopped(listener, stop, |peer| {
        let (identity, handler, stop) = (identity.clone(), handler.clone(), serve_stop.clone());
        move |stream| serve_connection(stream, peer, identity, handler, stop)
    })
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    identity: Arc<dyn ServerIdentity>,
    handler: Arc<dyn TunnelHandler>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(certificate) = identity.certificate().await else {
        tracing::warn!(%peer, "no server certificate yet: HBONE connection refused");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(certificate.server_config());
    let stream = BufReader::with_capacity(SOCKET_READ_BUFFER, stream);
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "HBONE TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
    let peer_id = Arc::new(tls.get_ref().1.peer_certificates().and_then(peer_identity));
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_TUNNELS_PER_CONNECTION)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(STREAM_SEND_BUFFER);
    let mut connection = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        builder.handshake::<_, Bytes>(Coalesce::new(tls, FlushAt::NextPass)),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "HBONE HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let unresponsive = unresponsive(connection.ping_pong());
    tokio::pin!(unresponsive);
    let mut draining = false;
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    tokio::spawn(serve_tunnel(request, respond, peer, peer_id.clone(), handler.clone()));
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "HBONE server connection ended");
                    break;
                }
                None => break,
            },
            () = &mut unresponsive => {
                tracing::info!(%peer, "HBONE peer stopped answering pings: connection dropped");
                break;
            }
            () = stop_requested(&mut stop), if !draining => {
                // GOAWAY: no new tunnels; open ones run to their end.
                draining = true;
                connection.graceful_shutdown();
            }
        }
    }
}

/// Resolves when `stop` flips to true; never if its sender is gone (keep serving what is open).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopped| *stopped).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Answers one `CONNECT` and, when the handler accepts it, runs the tunnel.
async fn serve_tunnel(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    peer_id: Arc<Option<SpiffeId>>,
    handler: Arc<dyn TunnelHandler>,
) {
    let (parts, body) = request.into_parts();
    if parts.method != Method::CONNECT {
        return refuse(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(target) = parts
        .uri
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return refuse(&mut respond, StatusCode::BAD_REQUEST);
    };
    let source = parts
        .headers
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_for);
    let request = TunnelRequest {
        target,
        peer_addr: peer,
        peer_id: (*peer_id).clone(),
        source,
        headers: parts.headers,
    };
    // A client that gives up (RST_STREAM) while the target is being connected gets no tunnel,
    // and the half-made connection is dropped at once.
    let opened = tokio::select! {
        opened = handler.open(request) => opened,
        _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
            tracing::debug!(%peer, %target, "CONNECT cancelled by the client");
            return;
        }
    };
    match opened {
        Ok(task) => match respond.send_response(status(StatusCode::OK), false) {
            Ok(send) => task(Tunnel::new(send, body)).await,
            Err(e) => tracing::debug!(%peer, %target, error = %e, "tunnel not established"),
        },
        Err(code) => refuse(&mut respond, code),
    }
}

fn refuse(respond: &mut SendResponse<Bytes>, code: StatusCode) {
    // The client may already be gone; then there is nobody to tell.
    let _ = respond.send_response(status(code), true);
}

fn status(code: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = code;
    response
}

/// The `for=` address of a `forwarded` header (`for=1.2.3.4`, `for="[::1]"`).
fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
    value.split([';', ',']).find_map(|part| {
        let v = part.trim().strip_prefix("for=")?;
        let v = v.trim_matches('"');
        let v = v
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(v);
        v.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dial::TcpDialer;
    use std::sync::atomic::AtomicUsize;
    use strait_identity::{CertificateAuthority, Certificates};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fixed(Arc<WorkloadCertificate>);

    impl ServerIdentity for Fixed {
        fn certificate(&self) -> BoxFuture<'_, Option<Arc<WorkloadCertificate>>> {
            let c = self.0.clone();
            Box::pin(async move { Some(c) })
        }
    }

    /// Echoes tunnels addressed to port 7; never answers port 9 (and counts how many of those
    /// waits were abandoned); refuses others with 503. Records callers.
    /// What the server saw of one CONNECT: target, caller identity, forwarded source.
    type Seen = (SocketAddr, Option<SpiffeId>, Option<IpAddr>);

    struct EchoSeven(Mutex<Vec<Seen>>, Arc<AtomicUsize>);

    /// Counts its drops: shows that a pending `open` was abandoned.
    struct DropCounter(Arc<AtomicUsize>);

    impl Drop for DropCounter {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl TunnelHandler for Arc<EchoSeven> {
        fn open(
            &self,
            request: TunnelRequest,
        ) -> BoxFuture<'static, Result<TunnelTask, StatusCode>> {
            self.0
                .lock()
                .unwrap()
                .push((request.target, request.peer_id.clone(), request.source));
            let port = request.target.port();
            let never_answered = (port == 9).then(|| DropCounter(self.1.clone()));
            Box::pin(async move {
                if let Some(_dropped_when_abandoned) = never_answered {
                    std::future::pending::<()>().await;
                }
                if port != 7 {
                    return Err(StatusCode::SERVICE_UNAVAILABLE);
                }
                Ok(Box::new(|tunnel: Tunnel| {
                    Box::pin(async move {
                        let mut io = tunnel;
                        let mut buf = [0u8; 64];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }) as BoxFuture<'static, ()>
                }) as TunnelTask)
            })
        }
    }

    /// An HBONE server on loopback presenting `cert`; serving stops when the sender drops.
    async fn start_server(
        cert: Arc<WorkloadCertificate>,
    ) -> (SocketAddr, Arc<EchoSeven>, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(EchoSeven(
            Mutex::new(Vec::new()),
            Arc::new(AtomicUsize::new(0)),
        ));
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve(
            listener,
            Arc::new(Fixed(cert)),
            Arc::new(handler.clone()),
            stop_rx,
        ));
        (addr, handler, stop)
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa).unwrap()
    }

    /// A server (shop/cart) started on loopback and a client certificate (web/frontend), both
    /// from one fresh mesh CA.
    async fn server_and_client_cert() -> (
        SocketAddr,
        Arc<EchoSeven>,
        watch::Sender<bool>,
        Arc<WorkloadCertificate>,
    ) {
        let certs = Certificates::from_ca(Arc::new(
            CertificateAuthority::new_self_signed("cluster.local").unwrap(),
        ));
        let server_cert = certs.get(&id("shop", "cart")).await.unwrap();
        let client_cert = certs.get(&id("web", "frontend")).await.unwrap();
        let (addr, handler, stop) = start_server(server_cert).await;
        (addr, handler, stop, client_cert)
    }

    #[tokio::test]
    async fn tunnels_are_mutual_tls_multiplexed_and_refusals_carry_status() {
        let (addr, handler, _stop, client_cert) = server_and_client_cert().await;
        let client = HboneClient::new(Arc::new(TcpDialer));
        let expected = id("shop", "cart");
        let target = |port| TunnelTarget {
            local: &client_cert,
            peer: addr,
            peer_id: Some(&expected),
            target: SocketAddr::from(([198, 19, 0, 10], port)),
            source: Some(IpAddr::from([198, 18, 0, 10])),
        };
        for _ in 0..3 {
            let mut io = client.open(&target(7)).await.unwrap();
            io.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            io.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        }
        assert_eq!(
            client.pool.get().lock().unwrap().len(),
            1,
            "one pooled connection"
        );
        let refused = client.open(&target(8)).await.unwrap_err();
        assert!(
            matches!(
                refused,
                HboneError::Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    ..
                }
            ),
            "{refused}"
        );
        let seen = handler.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 4);
        assert_eq!(
            seen[0].1,
            Some(id("web", "frontend")),
            "server sees the caller's identity"
        );
        assert_eq!(seen[0].2, Some(IpAddr::from([198, 18, 0, 10])));

        // A client expecting another identity never gets a tunnel.
        let wrong = id("shop", "other");
        let err = HboneClient::new(Arc::new(TcpDialer))
            .open(&TunnelTarget {
                peer_id: Some(&wrong),
                ..target(7)
            })
            .await
            .unwrap_err();
        assert!(matches!(err, HboneError::Tls { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_connect_the_client_gives_up_on_is_abandoned_by_the_server() {
        let (addr, handler, _stop, client_cert) = server_and_client_cert().await;
        let client = HboneClient::new(Arc::new(TcpDialer));
        let target = TunnelTarget {
            local: &client_cert,
            peer: addr,
            peer_id: None,
            target: SocketAddr::from(([198, 19, 0, 10], 9)),
            source: None,
        };
        // The server's handler never answers port 9; the client stops waiting.
        let gave_up = tokio::time::timeout(Duration::from_millis(300), client.open(&target)).await;
        assert!(gave_up.is_err(), "no answer yet");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while handler.1.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server kept preparing a tunnel nobody waits for"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The connection itself stays usable.
        let mut io = client
            .open(&TunnelTarget {
                target: SocketAddr::from(([198, 19, 0, 10], 7)),
                ..target
            })
            .await
            .unwrap();
        io.write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
    }

    /// Plain TCP, counting the connections it opens.
    struct CountingDialer(Arc<AtomicUsize>);

    impl Dialer for CountingDialer {
        fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            TcpDialer.dial(addr)
        }
    }

    #[tokio::test]
    async fn openers_that_failed_on_one_connection_share_its_replacement() {
        let (addr, _handler, _stop, client_cert) = server_and_client_cert().await;
        let dials = Arc::new(AtomicUsize::new(0));
        let client = HboneClient::new(Arc::new(CountingDialer(dials.clone())));
        let target = TunnelTarget {
            local: &client_cert,
            peer: addr,
            peer_id: None,
            target: SocketAddr::from(([198, 19, 0, 10], 7)),
            source: None,
        };
        drop(client.open(&target).await.unwrap());
        let slot = client
            .pool
            .get()
            .lock()
            .unwrap()
            .values()
            .next()
            .cloned()
            .unwrap();
        let first = slot
            .connection
            .lock()
            .await
            .as_ref()
            .unwrap()
            .closed
            .clone();
        assert_eq!(dials.load(Ordering::SeqCst), 1);

        // Two openers report a failure on the first connection: one replaces it, the other
        // takes the replacement instead of replacing it again.
        let replaced = client
            .connection(&slot, &target, Some(&first))
            .await
            .unwrap();
        let shared = client
            .connection(&slot, &target, Some(&first))
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&replaced.closed, &first));
        assert!(Arc::ptr_eq(&replaced.closed, &shared.closed));
        assert_eq!(dials.load(Ordering::SeqCst), 2, "one handshake for both");
        // An opener that failed on some other connection keeps the live one.
        client.connection(&slot, &target, None).await.unwrap();
        assert_eq!(dials.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused() {
        let ours = Certificates::from_ca(Arc::new(
            CertificateAuthority::new_self_signed("cluster.local").unwrap(),
        ));
        let theirs = Certificates::from_ca(Arc::new(
            CertificateAuthority::new_self_signed("cluster.local").unwrap(),
        ));
        let server_cert = ours.get(&id("shop", "cart")).await.unwrap();
        let intruder = theirs.get(&id("web", "frontend")).await.unwrap();
        let (addr, handler, _stop) = start_server(server_cert).await;
        let result = HboneClient::new(Arc::new(TcpDialer))
            .open(&TunnelTarget {
                local: &intruder,
                peer: addr,
                peer_id: None,
                target: SocketAddr::from(([198, 19, 0, 10], 7)),
                source: None,
            })
            .await;
        assert!(result.is_err());
        assert!(
            handler.0.lock().unwrap().is_empty(),
            "no tunnel request got through"
        );
    }

    #[test]
    fn forwarded_for_parsing() {
        assert_eq!(
            parse_forwarded_for("for=198.18.0.10"),
            Some("198.18.0.10".parse().unwrap())
        );
        assert_eq!(
            parse_forwarded_for("proto=http;for=\"[2001:db8::1]\""),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_forwarded_for("by=x"), None);
    }
}

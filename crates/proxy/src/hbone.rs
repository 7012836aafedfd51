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
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use strait_identity::{SpiffeId, WorkloadCertificate, peer_identity};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::dial::{BoxIo, Dialer, dial_within};

/// The HBONE port of every meshed pod and waypoint.
pub const HBONE_PORT: u16 = 15008;
/// Bounds connection setup (TCP + TLS + HTTP/2) to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Header carrying the original client address to the far end (as ztunnel does).
const FORWARDED: &str = "forwarded";
/// Largest HTTP/2 frame we accept (the peer sends DATA frames up to this). The 16 KiB default
/// costs a frame, a flush and a write syscall per 16 KiB of tunnelled data; 256 KiB frames cut
/// that sixteen-fold and still hold a stream off the connection for only ~2 ms at 1 Gbit/s.
const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// Read buffer under the TLS layer: rustls asks the socket for 4 KiB at a time, so without it
/// a 16 KiB record costs four or five `read` syscalls.
const SOCKET_READ_BUFFER: usize = 64 * 1024;
/// Encrypted bytes rustls may queue before the socket takes them (64 KiB by default), so a
/// large DATA frame is encrypted and written with one `writev`.
const TLS_SEND_BUFFER: usize = 256 * 1024;

/// An established tunnel: the application byte stream.
pub type Tunnel = Upgraded;

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
        source: hyper::Error,
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

type Sender = http2::SendRequest<Empty<Bytes>>;

/// One pooled connection slot; the async mutex makes concurrent openers wait for one handshake.
#[derive(Default)]
struct Slot {
    sender: tokio::sync::Mutex<Option<Sender>>,
}

impl Slot {
    /// False only for an idle slot whose connection is gone (or never came).
    fn is_alive_or_busy(&self) -> bool {
        match self.sender.try_lock() {
            Ok(sender) => sender.as_ref().is_some_and(|s| !s.is_closed()),
            Err(_) => true,
        }
    }
}

/// Opens tunnels, pooling HTTP/2 connections.
pub struct HboneClient {
    /// Opens the TCP connections under the TLS (the node proxy dials from the source pod's
    /// network namespace with the proxy mark).
    dialer: Arc<dyn Dialer>,
    pool: Mutex<HashMap<PoolKey, Arc<Slot>>>,
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
            pool: Mutex::new(HashMap::new()),
        }
    }

    /// Opens one tunnel. A pooled connection is reused when alive; a refused `CONNECT` is not
    /// retried (the peer said no), a dead pooled connection is replaced once.
    pub async fn open(&self, to: &TunnelTarget<'_>) -> Result<Tunnel, HboneError> {
        let key = PoolKey {
            local: to.local.id().to_string(),
            peer: to.peer,
            peer_id: to.peer_id.map(ToString::to_string),
        };
        let slot = {
            let mut pool = match self.pool.lock() {
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
        for attempt in 0..2 {
            let mut sender = self.sender(&slot, to, attempt > 0).await?;
            if sender.ready().await.is_err() {
                continue;
            }
            let request = connect_request(to).map_err(|_| HboneError::BadTarget {
                peer: to.peer,
                target: to.target.to_string(),
            })?;
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(e) if attempt == 0 && e.is_closed() => continue,
                Err(source) => {
                    return Err(HboneError::Http {
                        peer: to.peer,
                        source,
                    });
                }
            };
            if response.status() != StatusCode::OK {
                return Err(HboneError::Refused {
                    peer: to.peer,
                    target: to.target,
                    status: response.status(),
                });
            }
            return hyper::upgrade::on(response)
                .await
                .map_err(|source| HboneError::Http {
                    peer: to.peer,
                    source,
                });
        }
        Err(HboneError::Connect {
            peer: to.peer,
            source: io::Error::new(io::ErrorKind::ConnectionReset, "pooled connection closed"),
        })
    }

    /// The slot's live sender, connecting when there is none (or `fresh` is asked).
    async fn sender(
        &self,
        slot: &Slot,
        to: &TunnelTarget<'_>,
        fresh: bool,
    ) -> Result<Sender, HboneError> {
        let mut guard = slot.sender.lock().await;
        if let Some(sender) = guard.as_ref()
            && !fresh
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let sender = self.handshake(to).await?;
        *guard = Some(sender.clone());
        Ok(sender)
    }

    async fn handshake(&self, to: &TunnelTarget<'_>) -> Result<Sender, HboneError> {
        let peer = to.peer;
        let tcp: BoxIo = dial_within(self.dialer.as_ref(), peer, CONNECT_TIMEOUT)
            .await
            .map_err(|source| HboneError::Connect { peer, source })?;
        let tcp = BufReader::with_capacity(SOCKET_READ_BUFFER, tcp);
        let connector = tokio_rustls::TlsConnector::from(to.local.client_config(to.peer_id));
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            connector.connect(ServerName::IpAddress(peer.ip().into()), tcp),
        )
        .await
        .map_err(|_| HboneError::Tls {
            peer,
            source: io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"),
        })?
        .map_err(|source| HboneError::Tls { peer, source })?;
        let mut tls = tls;
        tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
            .max_frame_size(MAX_FRAME_SIZE);
        let (sender, conn) = builder
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| HboneError::Http { peer, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HBONE connection closed");
            }
        });
        Ok(sender)
    }
}

fn connect_request(to: &TunnelTarget<'_>) -> Result<Request<Empty<Bytes>>, http::Error> {
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
    builder.body(Empty::new())
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
    crate::accept::accept_until_stopped(&listener, stop, |stream, peer| {
        tokio::spawn(serve_connection(
            stream,
            peer,
            identity.clone(),
            handler.clone(),
            serve_stop.clone(),
        ));
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
    let peer_id = tls.get_ref().1.peer_certificates().and_then(peer_identity);
    let peer_id = Arc::new(peer_id);
    let service = service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let peer_id = peer_id.clone();
        async move {
            if req.method() != Method::CONNECT {
                return Ok::<_, std::convert::Infallible>(status(StatusCode::METHOD_NOT_ALLOWED));
            }
            let Some(target) = req
                .uri()
                .authority()
                .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
            else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            let source = req
                .headers()
                .get(FORWARDED)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_forwarded_for);
            let on_upgrade = hyper::upgrade::on(&mut req);
            let request = TunnelRequest {
                target,
                peer_addr: peer,
                peer_id: (*peer_id).clone(),
                source,
                headers: std::mem::take(req.headers_mut()),
            };
            match handler.open(request).await {
                Ok(task) => {
                    tokio::spawn(async move {
                        match on_upgrade.await {
                            Ok(tunnel) => task(tunnel).await,
                            Err(e) => {
                                tracing::debug!(%peer, %target, error = %e, "tunnel not established")
                            }
                        }
                    });
                    Ok(status(StatusCode::OK))
                }
                Err(code) => Ok(status(code)),
            }
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(1000)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .keep_alive_interval(Duration::from_secs(30))
        .max_frame_size(MAX_FRAME_SIZE);
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let stopping = async {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                // The listener owner is gone; keep serving what is open.
                std::future::pending::<()>().await;
            }
        }
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopping => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HBONE server connection ended");
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
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

/// First size of a copy buffer: an idle or chatty tunnel stays cheap.
const COPY_BUF_MIN: usize = 16 * 1024;
/// Largest copy buffer: a read that fills the buffer doubles it up to this, so bulk transfers
/// move large chunks (fewer tunnel messages, frames and syscalls per byte).
const COPY_BUF_MAX: usize = 256 * 1024;

/// Copies both ways until both sides finish; half-closes are propagated (EOF on one side shuts
/// down writing on the other, the reverse direction keeps flowing). Each direction holds one
/// buffer of at most [`COPY_BUF_MAX`] bytes, allocated on first use and freed at its EOF.
pub async fn splice<A, B>(mut a: A, mut b: B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Direction::Running(CopyBuffer::default());
    let mut b_to_a = Direction::Running(CopyBuffer::default());
    std::future::poll_fn(|cx| {
        let a_to_b = a_to_b.poll(cx, &mut a, &mut b)?;
        let b_to_a = b_to_a.poll(cx, &mut b, &mut a)?;
        match (a_to_b, b_to_a) {
            (Poll::Ready(sent), Poll::Ready(received)) => Poll::Ready(Ok((sent, received))),
            _ => Poll::Pending,
        }
    })
    .await
}

enum Direction {
    Running(CopyBuffer),
    ShuttingDown(u64),
    Done(u64),
}

impl Direction {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            match self {
                Direction::Running(pipe) => {
                    let copied = ready!(pipe.poll_copy(cx, Pin::new(&mut *r), Pin::new(&mut *w)))?;
                    *self = Direction::ShuttingDown(copied);
                }
                Direction::ShuttingDown(copied) => {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    *self = Direction::Done(*copied);
                }
                Direction::Done(copied) => return Poll::Ready(Ok(*copied)),
            }
        }
    }
}

/// One direction's buffer: `buf[pos..end]` is read but not yet written.
#[derive(Default)]
struct CopyBuffer {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
    need_flush: bool,
    copied: u64,
}

impl CopyBuffer {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.end && !self.eof {
                if self.buf.is_empty() {
                    self.buf = vec![0; COPY_BUF_MIN];
                }
                let mut read = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to send for now: push out what was written.
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = read.filled().len();
                self.pos = 0;
                self.end = n;
                self.eof = n == 0;
            }
            while self.pos < self.end {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.copied += n as u64;
                self.need_flush = true;
            }
            if self.end == self.buf.len() && self.buf.len() < COPY_BUF_MAX {
                // The last read filled the buffer: more is waiting, read bigger chunks.
                let grown = (self.buf.len() * 2).min(COPY_BUF_MAX);
                self.buf = vec![0; grown];
            }
            if self.eof {
                ready!(w.as_mut().poll_flush(cx))?;
                self.buf = Vec::new();
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dial::TcpDialer;
    use strait_identity::{CertificateAuthority, Certificates};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fixed(Arc<WorkloadCertificate>);

    impl ServerIdentity for Fixed {
        fn certificate(&self) -> BoxFuture<'_, Option<Arc<WorkloadCertificate>>> {
            let c = self.0.clone();
            Box::pin(async move { Some(c) })
        }
    }

    /// Echoes tunnels addressed to port 7; refuses others with 503. Records callers.
    /// What the server saw of one CONNECT: target, caller identity, forwarded source.
    type Seen = (SocketAddr, Option<SpiffeId>, Option<IpAddr>);

    struct EchoSeven(Mutex<Vec<Seen>>);

    impl TunnelHandler for Arc<EchoSeven> {
        fn open(
            &self,
            request: TunnelRequest,
        ) -> BoxFuture<'static, Result<TunnelTask, StatusCode>> {
            self.0
                .lock()
                .unwrap()
                .push((request.target, request.peer_id.clone(), request.source));
            let ok = request.target.port() == 7;
            Box::pin(async move {
                if !ok {
                    return Err(StatusCode::SERVICE_UNAVAILABLE);
                }
                Ok(Box::new(|tunnel: Tunnel| {
                    Box::pin(async move {
                        let mut io = TokioIo::new(tunnel);
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
        let handler = Arc::new(EchoSeven(Mutex::new(Vec::new())));
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

    #[tokio::test]
    async fn tunnels_are_mutual_tls_multiplexed_and_refusals_carry_status() {
        let ca = Arc::new(CertificateAuthority::new_self_signed("cluster.local").unwrap());
        let certs = Certificates::from_ca(ca);
        let server_cert = certs.get(&id("shop", "cart")).await.unwrap();
        let client_cert = certs.get(&id("web", "frontend")).await.unwrap();
        let (addr, handler, _stop) = start_server(server_cert).await;
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
            let mut io = TokioIo::new(client.open(&target(7)).await.unwrap());
            io.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            io.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        }
        assert_eq!(
            client.pool.lock().unwrap().len(),
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

    #[tokio::test]
    async fn splice_moves_bulk_data_intact_and_propagates_half_close() {
        let (mut left, left_inner) = tokio::io::duplex(64 * 1024);
        let (right_inner, mut right) = tokio::io::duplex(64 * 1024);
        let spliced = tokio::spawn(splice(left_inner, right_inner));
        // More than the largest copy buffer, in a pattern that shows reordering or loss.
        let sent: Vec<u8> = (0..3 * COPY_BUF_MAX + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                left.write_all(&sent).await.unwrap();
                left.shutdown().await.unwrap();
                left
            })
        };
        let mut received = Vec::new();
        right.read_to_end(&mut received).await.unwrap();
        assert!(received == sent, "bytes arrive intact and in order");
        // The other direction still flows after the first one closed.
        right.write_all(b"bye").await.unwrap();
        right.shutdown().await.unwrap();
        let mut left = writer.await.unwrap();
        let mut reply = Vec::new();
        left.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"bye");
        let (forward, backward) = spliced.await.unwrap().unwrap();
        assert_eq!(forward, sent.len() as u64);
        assert_eq!(backward, 3);
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

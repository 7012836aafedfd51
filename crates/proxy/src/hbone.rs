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
use std::sync::{Arc, Mutex};
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
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(16 * 1024 * 1024)
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
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "HBONE TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
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
        .keep_alive_interval(Duration::from_secs(30));
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

/// Copies both ways until both sides finish; half-closes are propagated.
pub async fn splice<A, B>(mut a: A, mut b: B) -> io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(&mut a, &mut b).await
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

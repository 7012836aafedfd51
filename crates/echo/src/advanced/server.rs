//! The echo-advanced server: Istio-echo style text replies on HTTP ports, byte echo on TCP ports.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_netns::NetNs;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{AdvancedError, AdvancedOptions, EchoPort, Identity};
use crate::{TlsSettings, canonical_header_name};

/// A running echo-advanced pod. Dropping it (or [`AdvancedEcho::stop`]) closes its listeners
/// and every open connection: a deleted pod does not keep answering.
pub struct AdvancedEcho {
    identity: Identity,
    addrs: Vec<(EchoPort, SocketAddr)>,
    log: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Drop for AdvancedEcho {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for AdvancedEcho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvancedEcho")
            .field("identity", &self.identity)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

struct Shared {
    identity: Identity,
    log: Arc<Mutex<Vec<String>>>,
}

impl AdvancedEcho {
    /// Binds every port of `options` inside `netns` (the current namespace when `None`) and
    /// serves them on the current Tokio runtime. Fails if any port cannot be bound.
    pub async fn start_in(
        netns: Option<&NetNs>,
        options: AdvancedOptions,
        identity: Identity,
    ) -> Result<AdvancedEcho, AdvancedError> {
        let shared = Arc::new(Shared {
            identity: identity.clone(),
            log: Arc::default(),
        });
        let acceptor = if options.tls_ports.is_empty() {
            None
        } else {
            Some(tls_acceptor(&identity, options.tls.as_ref())?)
        };
        let (stop, stopped) = watch::channel(false);
        let mut server = AdvancedEcho {
            identity: identity.clone(),
            addrs: Vec::new(),
            log: shared.log.clone(),
            tasks: Vec::new(),
            stop,
        };
        let ports = options
            .http_ports
            .iter()
            .map(|p| (EchoPort::Http, *p))
            .chain(options.tls_ports.iter().map(|p| (EchoPort::Tls, *p)))
            .chain(options.tcp_ports.iter().map(|p| (EchoPort::Tcp, *p)));
        for (kind, port) in ports {
            let addr = SocketAddr::new(options.bind, port);
            let listener = bind(netns, addr, &identity.pod)?;
            let addr = listener.local_addr().unwrap_or(addr);
            server.addrs.push((kind, addr));
            let acceptor = (kind == EchoPort::Tls).then(|| acceptor.clone()).flatten();
            server.tasks.push(tokio::spawn(accept_loop(
                listener,
                kind,
                acceptor,
                shared.clone(),
                stopped.clone(),
            )));
        }
        Ok(server)
    }

    /// Who this server claims to be.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Every bound address with its kind, in order HTTP, TLS, TCP as configured.
    pub fn addrs(&self) -> &[(EchoPort, SocketAddr)] {
        &self.addrs
    }

    /// The bound addresses of one kind.
    pub fn addrs_of(&self, kind: EchoPort) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
            .collect()
    }

    /// Log lines so far: `Echoing back request made to <uri> to client (<remote>)` per HTTP
    /// request, `Echoing back TCP connection on <port> from client (<remote>)` per TCP
    /// connection.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether some request to exactly `uri` (path and query) was answered.
    pub fn saw_request(&self, uri: &str) -> bool {
        let needle = format!("Echoing back request made to {uri} to client");
        self.log().iter().any(|l| l.starts_with(&needle))
    }

    /// Stops serving (same as dropping); listeners close once the runtime next runs.
    pub fn stop(self) {}

    /// Stops serving and waits until the listeners are closed: the ports are free (and the
    /// namespace no longer held by them) when this returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

fn bind(netns: Option<&NetNs>, addr: SocketAddr, pod: &str) -> Result<TcpListener, AdvancedError> {
    match netns {
        Some(ns) => ns
            .tcp_listener(addr, 1024)
            .map_err(|source| AdvancedError::NetNs {
                pod: pod.to_string(),
                source,
            }),
        None => {
            let bind_error = |source| AdvancedError::Bind {
                pod: pod.to_string(),
                addr,
                source,
            };
            let socket = if addr.is_ipv6() {
                tokio::net::TcpSocket::new_v6()
            } else {
                tokio::net::TcpSocket::new_v4()
            }
            .map_err(bind_error)?;
            socket.set_reuseaddr(true).map_err(bind_error)?;
            socket.bind(addr).map_err(bind_error)?;
            socket.listen(1024).map_err(bind_error)
        }
    }
}

fn tls_acceptor(
    identity: &Identity,
    tls: Option<&TlsSettings>,
) -> Result<tokio_rustls::TlsAcceptor, AdvancedError> {
    let tls_error = |reason: String| AdvancedError::Tls {
        pod: identity.pod.clone(),
        reason,
    };
    let generated;
    let settings = match tls {
        Some(settings) => settings,
        None => {
            let mut names = vec!["localhost".to_string()];
            if !identity.pod.is_empty() {
                names.push(identity.pod.clone());
            }
            let cert = rcgen::generate_simple_self_signed(names)
                .map_err(|e| tls_error(format!("self-signed certificate: {e}")))?;
            generated = TlsSettings {
                cert_pem: cert.cert.pem(),
                key_pem: cert.signing_key.serialize_pem(),
                client_ca_pem: None,
            };
            &generated
        }
    };
    crate::tls_acceptor(settings).map_err(tls_error)
}

async fn accept_loop(
    listener: TcpListener,
    kind: EchoPort,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    stopped: watch::Receiver<bool>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(pod = %shared.identity.pod, "echo accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| listener.local_addr().unwrap_or(remote));
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let mut stopped = stopped.clone();
        let connection = async move {
            match (kind, acceptor) {
                (EchoPort::Tcp, _) => echo_bytes(stream, local, remote, &shared).await,
                (_, Some(acceptor)) => {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let alpn = tls
                        .get_ref()
                        .1
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default();
                    serve_http(TokioIo::new(tls), local, remote, alpn, shared).await;
                }
                (_, None) => {
                    serve_http(TokioIo::new(stream), local, remote, String::new(), shared).await
                }
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                () = connection => {}
                _ = stopped.wait_for(|stop| *stop) => {}
            }
        });
    }
}

async fn echo_bytes(mut stream: TcpStream, local: SocketAddr, remote: SocketAddr, shared: &Shared) {
    if let Ok(mut log) = shared.log.lock() {
        log.push(format!(
            "Echoing back TCP connection on {} from client ({remote})",
            local.port()
        ));
    }
    let (mut read, mut write) = stream.split();
    let _ = tokio::io::copy(&mut read, &mut write).await;
}

async fn serve_http<I>(
    io: TokioIo<I>,
    local: SocketAddr,
    remote: SocketAddr,
    alpn: String,
    shared: Arc<Shared>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let alpn = alpn.clone();
        async move {
            Ok::<_, std::convert::Infallible>(handle(req, local, remote, &alpn, &shared).await)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let _ = builder.serve_connection_with_upgrades(io, service).await;
}

async fn handle(
    req: Request<Incoming>,
    local: SocketAddr,
    remote: SocketAddr,
    alpn: &str,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if req.uri().path() == "/ws" && crate::is_websocket_upgrade(req.headers()) {
        return crate::websocket(req);
    }
    let (parts, body) = req.into_parts();
    // Drain the body so the client can finish sending; its content is not echoed.
    let _ = body.collect().await;
    let host = crate::request_host(&parts);
    let proto = crate::proto_name(parts.version);
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != http::header::HOST)
        .map(|(name, value)| {
            (
                canonical_header_name(name.as_str()),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    // Stable: values of one name keep their order.
    headers.sort_by(|a, b| a.0.cmp(&b.0));

    let id = &shared.identity;
    let mut body = String::with_capacity(512);
    let mut field = |key: &str, value: &str| {
        let _ = writeln!(body, "{key}={value}");
    };
    field("ServiceVersion", &id.version);
    field("ServicePort", &local.port().to_string());
    field("Host", &host);
    field("URL", &uri);
    field("Cluster", &id.cluster);
    field("Method", parts.method.as_str());
    field("Proto", proto);
    field("IP", &remote.ip().to_string());
    field("Alpn", alpn);
    for (name, value) in &headers {
        field("RequestHeader", &format!("{name}:{value}"));
    }
    field("Hostname", &id.pod);
    field("Namespace", &id.namespace);

    if let Ok(mut log) = shared.log.lock() {
        log.push(format!(
            "Echoing back request made to {uri} to client ({remote})"
        ));
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

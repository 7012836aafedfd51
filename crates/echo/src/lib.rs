//! Echo backends that behave like the Gateway API conformance `echo-basic` image.
//!
//! The conformance harness and the demo need real upstreams whose replies describe what they
//! received (path, Host, headers, TLS) and who answered (pod, namespace), so that routing
//! decisions of the proxy can be checked from the outside. One [`EchoServer`] stands for one pod:
//! HTTP/1.1 on 3000, h2c (prior knowledge) on 3001 and optionally TLS on 8443.
//!
//! The [`advanced`] module is the mesh suite's `echo-advanced` (Istio-style) counterpart: a
//! server placed inside a pod's network namespace and the `strait-echo client` used to probe it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub mod advanced;

/// Who the echo server claims to be; reported in every reply like the env of an echo pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub service: String,
    pub pod: String,
    pub ingress: String,
}

/// PEM material for the TLS port (the Secret mounted into a TLS echo pod).
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub cert_pem: String,
    pub key_pem: String,
    /// When set, client certificates are requested and verified against this CA.
    pub client_ca_pem: Option<String>,
}

/// Which ports to serve on which address.
#[derive(Clone, Debug)]
pub struct EchoOptions {
    pub ip: IpAddr,
    /// HTTP/1.1 (and HTTP/2 prior knowledge) port; echo-basic uses 3000.
    pub http_port: u16,
    /// h2c-only port; echo-basic uses 3001. `None` disables it.
    pub h2c_port: Option<u16>,
    /// TLS port (echo-basic: 8443) and its certificate.
    pub tls: Option<(u16, TlsSettings)>,
}

impl EchoOptions {
    /// The echo-basic defaults on `ip`: 3000 and 3001, no TLS.
    pub fn new(ip: IpAddr) -> Self {
        EchoOptions {
            ip,
            http_port: 3000,
            h2c_port: Some(3001),
            tls: None,
        }
    }
}

/// Failures to start an echo server.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("echo {pod}: binding {addr}: {source}")]
    Bind {
        pod: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("echo {pod}: invalid TLS material: {reason}")]
    Tls { pod: String, reason: String },
}

/// A running echo pod; its listeners stop when it is dropped.
pub struct EchoServer {
    identity: Identity,
    addrs: Vec<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
    /// Tells open connections to stop: a deleted pod does not keep answering.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PortKind {
    Http,
    H2c,
    Tls,
}

struct Shared {
    identity: Identity,
    log: Arc<Mutex<Vec<String>>>,
    /// Attempts seen per retry uuid.
    retries: Mutex<HashMap<String, u32>>,
}

/// What a TLS connection negotiated, echoed back in `tls`.
#[derive(Clone, Debug, Serialize, Default)]
struct TlsInfo {
    version: String,
    #[serde(rename = "serverName")]
    server_name: String,
    #[serde(rename = "negotiatedProtocol")]
    negotiated_protocol: String,
    #[serde(rename = "cipherSuite")]
    cipher_suite: String,
    #[serde(rename = "peerCertificates", skip_serializing_if = "Vec::is_empty")]
    peer_certificates: Vec<String>,
}

#[derive(Serialize)]
struct EchoReply<'a> {
    path: String,
    host: String,
    method: String,
    proto: String,
    headers: BTreeMap<String, Vec<String>>,
    namespace: &'a str,
    ingress: &'a str,
    service: &'a str,
    pod: &'a str,
    #[serde(rename = "httpPort")]
    http_port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsInfo>,
}

impl EchoServer {
    /// One HTTP/1.1 (+h2 prior knowledge) listener on `addr`: enough for the demo.
    pub async fn start_http(addr: SocketAddr, identity: Identity) -> Result<EchoServer, EchoError> {
        Self::start(
            EchoOptions {
                ip: addr.ip(),
                http_port: addr.port(),
                h2c_port: None,
                tls: None,
            },
            identity,
        )
        .await
    }

    /// Starts every listener of `options`; fails if any port cannot be bound.
    pub async fn start(options: EchoOptions, identity: Identity) -> Result<EchoServer, EchoError> {
        let shared = Arc::new(Shared {
            identity: identity.clone(),
            log: Arc::default(),
            retries: Mutex::default(),
        });
        let mut ports = vec![(options.http_port, PortKind::Http, None)];
        if let Some(port) = options.h2c_port {
            ports.push((port, PortKind::H2c, None));
        }
        if let Some((port, tls)) = &options.tls {
            let acceptor = tls_acceptor(tls).map_err(|reason| EchoError::Tls {
                pod: identity.pod.clone(),
                reason,
            })?;
            ports.push((*port, PortKind::Tls, Some(acceptor)));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut server = EchoServer {
            identity: identity.clone(),
            addrs: Vec::new(),
            log: shared.log.clone(),
            tasks: Vec::new(),
            stop,
        };
        for (port, kind, acceptor) in ports {
            let addr = SocketAddr::new(options.ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| EchoError::Bind {
                    pod: identity.pod.clone(),
                    addr,
                    source,
                })?;
            let addr = listener.local_addr().unwrap_or(addr);
            server.addrs.push(addr);
            let shared = shared.clone();
            server.tasks.push(tokio::spawn(accept_loop(
                listener,
                kind,
                addr,
                acceptor,
                shared,
                stopped.clone(),
            )));
        }
        Ok(server)
    }

    /// Who this server claims to be.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The bound addresses, in order HTTP, h2c, TLS (useful with port 0).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The request log lines so far (`Echoing back request made to <uri> to client (<remote>)`).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether some log line mentions a request to exactly `uri`.
    pub fn saw_request(&self, uri: &str) -> bool {
        let needle = format!("Echoing back request made to {uri} to client");
        self.log().iter().any(|l| l.starts_with(&needle))
    }
}

pub(crate) fn tls_acceptor(tls: &TlsSettings) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = pem_blocks(&tls.cert_pem, "CERTIFICATE")
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    if certs.is_empty() {
        return Err("no CERTIFICATE in cert PEM".into());
    }
    let key = ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"]
        .iter()
        .find_map(|label| {
            pem_blocks(&tls.key_pem, label)
                .into_iter()
                .next()
                .map(|der| match *label {
                    "PRIVATE KEY" => PrivateKeyDer::Pkcs8(der.into()),
                    "EC PRIVATE KEY" => PrivateKeyDer::Sec1(der.into()),
                    _ => PrivateKeyDer::Pkcs1(der.into()),
                })
        })
        .ok_or_else(|| "no private key in key PEM".to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in pem_blocks(ca, "CERTIFICATE") {
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|e| e.to_string())?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    kind: PortKind,
    local: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let mut stopped = stopped.clone();
        let connection = async move {
            match acceptor {
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let info = tls_info(tls.get_ref().1);
                    serve(TokioIo::new(tls), kind, local, remote, Some(info), shared).await;
                }
                None => serve(TokioIo::new(stream), kind, local, remote, None, shared).await,
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

fn tls_info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => String::new(),
    };
    TlsInfo {
        version,
        server_name: conn.server_name().unwrap_or_default().to_string(),
        negotiated_protocol: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
        cipher_suite: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        peer_certificates: conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect(),
    }
}

async fn serve<I>(
    io: TokioIo<I>,
    kind: PortKind,
    local: SocketAddr,
    remote: SocketAddr,
    tls: Option<TlsInfo>,
    shared: Arc<Shared>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let tls = tls.clone();
        async move { handle(req, kind, local, remote, tls, shared).await }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let _ = builder.serve_connection_with_upgrades(io, service).await;
}

type Body = Full<Bytes>;

/// Answer produced when the retry simulator decides to drop the connection.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated connection failure")
    }
}

impl std::error::Error for DropConnection {}

async fn handle(
    req: Request<Incoming>,
    kind: PortKind,
    local: SocketAddr,
    remote: SocketAddr,
    tls: Option<TlsInfo>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, DropConnection> {
    if kind == PortKind::H2c
        && req.version() != http::Version::HTTP_2
        && !req.headers().contains_key(http::header::UPGRADE)
    {
        return Ok(text(StatusCode::BAD_REQUEST, "Expected h2c request"));
    }
    let raw_uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let uri = collapse_slashes(&raw_uri);
    let path = uri.split('?').next().unwrap_or("/").to_string();
    let query = query_params(&uri);

    if path == "/health" {
        return Ok(text(StatusCode::OK, "OK"));
    }
    if path == "/ws" && is_websocket_upgrade(req.headers()) {
        return Ok(websocket(req));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(text(status, ""));
    }
    if path.starts_with("/retry/") {
        let uuid = query.get("uuid").cloned().unwrap_or_default();
        let succeed_after: u32 = query
            .get("succeedAfter")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let attempt = {
            let mut retries = shared.retries.lock().map_err(|_| DropConnection)?;
            let n = retries.entry(uuid).or_insert(0);
            *n += 1;
            *n
        };
        if attempt <= succeed_after {
            if let Some(delay) = query.get("delayRetry").and_then(|d| parse_duration(d)) {
                tokio::time::sleep(delay).await;
            }
            match query
                .get("responseCode")
                .and_then(|c| c.parse::<u16>().ok())
            {
                Some(code) => {
                    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
                    return Ok(text(status, "retry simulator failure"));
                }
                None => return Err(DropConnection),
            }
        }
    }
    if let Some(delay) = query.get("delay") {
        match parse_duration(delay) {
            Some(d) => tokio::time::sleep(d).await,
            None => return Ok(text(StatusCode::BAD_REQUEST, "invalid delay")),
        }
    }

    let (parts, body) = req.into_parts();
    // Drain the body so the client can finish sending; its content is not echoed.
    let _ = body.collect().await;
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        if name == http::header::HOST {
            continue;
        }
        headers
            .entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = request_host(&parts);
    let proto = proto_name(parts.version);
    let id = &shared.identity;
    let reply = EchoReply {
        path: uri.clone(),
        host,
        method: parts.method.as_str().to_string(),
        proto: proto.to_string(),
        headers,
        namespace: &id.namespace,
        ingress: &id.ingress,
        service: &id.service,
        pod: &id.pod,
        http_port: local.port().to_string(),
        tls,
    };
    if let Ok(mut log) = shared.log.lock() {
        log.push(format!(
            "Echoing back request made to {uri} to client ({remote})"
        ));
    }
    let body = serde_json::to_vec_pretty(&reply).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Some(set) = parts.headers.get("x-echo-set-header") {
        for (name, value) in parse_set_header(&String::from_utf8_lossy(set.as_bytes())) {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) else {
                continue;
            };
            let joined = match h.get(&name) {
                Some(old) => {
                    let old = String::from_utf8_lossy(old.as_bytes()).into_owned();
                    HeaderValue::from_str(&format!("{old},{}", value.to_str().unwrap_or("")))
                        .unwrap_or(value)
                }
                None => value,
            };
            h.insert(name, joined);
        }
    }
    Ok(response)
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub(crate) fn websocket(req: Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::{Message, Role};
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(_) | Message::Binary(_) => msg,
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    response
}

/// Collapses runs of `/` in the path part (the query is left alone), as echo-basic's mux does.
pub fn collapse_slashes(uri: &str) -> String {
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri, None),
    };
    let mut out = String::with_capacity(uri.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn query_params(uri: &str) -> HashMap<String, String> {
    uri.split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Parses a Go `time.ParseDuration` string such as `1s`, `500ms`, `1m30s`, `1.5s`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Some(Duration::from_secs_f64(total))
}

/// `a:1,b:2` → [(a, 1), (b, 2)]; entries without `:` are ignored.
pub fn parse_set_header(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|pair| {
            let (name, value) = pair.split_once(':')?;
            let name = name.trim();
            (!name.is_empty()).then(|| (name.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: `x-header-set` → `X-Header-Set`.
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
        upper = c == '-';
    }
    out
}

/// DER blocks with the given label from a PEM text.
pub fn pem_blocks(pem: &str, label: &str) -> Vec<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let Some(stop) = after.find(&end) else { break };
        if let Some(der) = base64_decode(&after[..stop]) {
            out.push(der);
        }
        rest = &after[stop + end.len()..];
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (whitespace ignored); `None` on an invalid character.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            break;
        }
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// PEM-encodes one DER blob (64-column lines, like Go's `pem.Encode`).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests;

/// The host a request was sent to: `:authority`, else the Host header.
pub(crate) fn request_host(parts: &http::request::Parts) -> String {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        })
        .unwrap_or_default()
}

/// The protocol as Go's echo servers print it.
pub(crate) fn proto_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

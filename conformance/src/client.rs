//! The HTTP client side of the harness: HTTP/1.1, h2c prior knowledge, HTTPS (SNI, trust
//! anchors, client certificates), HTTP/2 over TLS and WebSocket — one fresh connection per request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Whether an error is the client refusing the server's certificate (not a server refusal).
pub fn is_client_side_rejection(error: &str) -> bool {
    error.contains("invalid peer certificate")
}

/// Per-request timeout (upstream: 10 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2cPriorKnowledge,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

/// TLS parameters of an HTTPS request.
#[derive(Clone, Debug, Default)]
pub struct TlsClient {
    pub sni: String,
    pub trust: Vec<CertificateDer<'static>>,
    pub client_cert: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

/// One request to send.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub ip: IpAddr,
    pub port: u16,
    pub host_header: String,
    pub path: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub protocol: Protocol,
    pub tls: Option<TlsClient>,
}

/// What came back.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub client_cert_requested: bool,
}

/// Sends `o` on a new connection, bounded by [`REQUEST_TIMEOUT`].
pub async fn send(o: &Outgoing) -> Result<Received, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, send_inner(o)).await {
        Ok(r) => r,
        Err(_) => Err("request timed out".into()),
    }
}

async fn send_inner(o: &Outgoing) -> Result<Received, String> {
    let addr = SocketAddr::new(o.ip, o.port);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match &o.tls {
        None => exchange(tcp, o, o.protocol == Protocol::H2cPriorKnowledge, false).await,
        Some(tls) => {
            let requested = Arc::new(AtomicBool::new(false));
            let config = client_config(tls, o.protocol == Protocol::H2, requested.clone())?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = ServerName::try_from(tls.sni.clone())
                .map_err(|e| format!("invalid SNI {}: {e}", tls.sni))?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let mut r = exchange(stream, o, h2, true).await?;
            r.client_cert_requested = requested.load(Ordering::SeqCst);
            Ok(r)
        }
    }
}

/// Only performs the TLS handshake; `Ok(client_cert_requested)` or the handshake error.
pub async fn handshake(ip: IpAddr, port: u16, tls: &TlsClient) -> Result<bool, String> {
    let fut = async {
        let tcp = TcpStream::connect(SocketAddr::new(ip, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let requested = Arc::new(AtomicBool::new(false));
        let config = client_config(tls, false, requested.clone())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(tls.sni.clone()).map_err(|e| e.to_string())?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(requested.load(Ordering::SeqCst))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err("handshake timed out".into()))
}

async fn exchange<S>(stream: S, o: &Outgoing, h2: bool, tls: bool) -> Result<Received, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let scheme = if tls { "https" } else { "http" };
    let mut builder = http::Request::builder().method(o.method.as_str());
    if h2 {
        builder = builder.uri(format!("{scheme}://{}{}", o.host_header, o.path));
    } else {
        builder = builder
            .uri(o.path.as_str())
            .header("host", o.host_header.as_str());
    }
    for (k, v) in &o.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building request: {e}"))?;
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading body: {e}"))?
        .to_bytes();
    Ok(Received {
        status,
        headers,
        body,
        client_cert_requested: false,
    })
}

fn client_config(
    tls: &TlsClient,
    h2: bool,
    requested: Arc<AtomicBool>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(TrustVerifier::new(&tls.trust, provider.clone())?);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let key = match &tls.client_cert {
        Some((chain, key)) => Some(
            provider
                .key_provider
                .load_private_key(key.clone_key())
                .map(|k| Arc::new(rustls::sign::CertifiedKey::new(chain.clone(), k)))
                .map_err(|e| format!("client key: {e}"))?,
        ),
        None => None,
    };
    let mut config = builder.with_client_cert_resolver(Arc::new(Resolver { key, requested }));
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// Presents the configured client certificate (if any) and records that the server asked.
#[derive(Debug)]
struct Resolver {
    key: Option<Arc<rustls::sign::CertifiedKey>>,
    requested: Arc<AtomicBool>,
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.requested.store(true, Ordering::SeqCst);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Trusts what chains to the given anchors (WebPKI, hostname checked) and, like Go's pool with a
/// self-signed leaf, a presented leaf that is itself one of the anchors. Without anchors every
/// certificate is accepted (cases that check refusals must see the server refuse, not us).
#[derive(Debug)]
struct TrustVerifier {
    anchors: Vec<CertificateDer<'static>>,
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl TrustVerifier {
    fn new(
        anchors: &[CertificateDer<'static>],
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for a in anchors {
            let _ = roots.add(a.clone());
        }
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| e.to_string())?,
            )
        };
        Ok(TrustVerifier {
            anchors: anchors.to_vec(),
            webpki,
            provider,
        })
    }
}

impl ServerCertVerifier for TrustVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .anchors
            .iter()
            .any(|a| a.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Runs a WebSocket exchange: each step sends a frame and expects the echoed frame back.
pub async fn websocket(
    ip: IpAddr,
    port: u16,
    host: &str,
    path: &str,
    origin: Option<&str>,
    steps: &[crate::spec::WsStep],
) -> Result<(), String> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let fut = async {
        let tcp = TcpStream::connect(SocketAddr::new(ip, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut req = format!("ws://{host}{path}")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        if let Some(origin) = origin
            && let Ok(v) = http::HeaderValue::from_str(origin)
        {
            req.headers_mut().insert("origin", v);
        }
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| format!("websocket handshake: {e}"))?;
        for step in steps {
            let (send, want) = match (&step.send_text, &step.send_binary) {
                (Some(t), _) => (
                    Message::text(t.clone()),
                    Message::text(step.receive_text.clone().unwrap_or_default()),
                ),
                (None, Some(b)) => (
                    Message::binary(b.clone()),
                    Message::binary(step.receive_binary.clone().unwrap_or_default()),
                ),
                (None, None) => continue,
            };
            ws.send(send).await.map_err(|e| format!("ws send: {e}"))?;
            let got = loop {
                match ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(m)) => break m,
                    Some(Err(e)) => return Err(format!("ws receive: {e}")),
                    None => return Err("ws closed".into()),
                }
            };
            if got != want {
                return Err(format!("ws: got {got:?}, want {want:?}"));
            }
        }
        let _ = ws.close(None).await;
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err("websocket timed out".into()))
}

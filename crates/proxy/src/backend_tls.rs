//! TLS origination to backends (BackendTLSPolicy, GEP-1897).
//!
//! One rustls `ClientConfig` per cluster (and per Gateway when that Gateway presents a client
//! certificate), built when a config is applied. The SNI is the policy's hostname; the server
//! certificate must chain to the policy's CAs and match either that hostname or, when the
//! policy lists subjectAltNames, one of them. A policy compile marked invalid yields
//! [`Origination::Invalid`] so requests fail instead of going out in cleartext.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::upstream::Body;
use crate::workers::PerWorker;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use strait_config::{AppProtocol, BackendTls, CertificatePem, SubjectAltName};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How to reach the endpoints of a cluster with a BackendTLSPolicy.
pub(crate) enum Origination {
    Ready {
        /// Dials an endpoint with the policy's SNI and verification.
        connector: TlsConnector,
        /// Speak HTTP/2 (ALPN `h2`) rather than HTTP/1.1.
        h2: bool,
        /// Keep-alive pools of HTTP/1.1 TLS connections, private to this cluster and config
        /// version (the TLS settings are part of the connection's identity), one per worker
        /// ([`PerWorker`]).
        pool: PerWorker<Client<TlsConnector, Body>>,
    },
    /// Requests must fail; the text says why (for logs).
    Invalid(String),
}

/// Builds the origination for a cluster; never fails, errors become [`Origination::Invalid`].
pub(crate) fn build(
    tls: &BackendTls,
    protocol: AppProtocol,
    client_certificate: Option<&CertificatePem>,
) -> Origination {
    if let Some(why) = &tls.invalid {
        return Origination::Invalid(why.clone());
    }
    match try_build(tls, protocol, client_certificate) {
        Ok(o) => o,
        Err(why) => Origination::Invalid(format!("backend TLS to {}: {why}", tls.server_name)),
    }
}

fn try_build(
    tls: &BackendTls,
    protocol: AppProtocol,
    client_certificate: Option<&CertificatePem>,
) -> Result<Origination, String> {
    let server_name = ServerName::try_from(tls.server_name.clone())
        .map_err(|e| format!("invalid hostname: {e}"))?;
    let mut roots = RootCertStore::empty();
    for pem in &tls.ca_certificates_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("invalid CA PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable CA certificate: {e}"))?;
        }
    }
    if tls.system_roots {
        let (_added, _unusable) = roots
            .add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    }
    if roots.is_empty() {
        return Err("no CA certificate".into());
    }
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("CA certificates: {e}"))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if tls.subject_alt_names.is_empty() {
        builder.with_webpki_verifier(verifier)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SanVerifier {
                inner: verifier,
                subject_alt_names: tls.subject_alt_names.clone(),
            }))
    };
    let mut config = match client_certificate {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.cert_chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate {}: {e}", c.source))?;
            let key = PrivateKeyDer::from_pem_slice(c.private_key_pem.as_bytes())
                .map_err(|e| format!("client key {}: {e}", c.source))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate {}: {e}", c.source))?
        }
    };
    let h2 = protocol == AppProtocol::H2c;
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let connector = TlsConnector {
        config: Arc::new(config),
        server_name,
    };
    let pool = PerWorker::new(|| {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false)
            .build(connector.clone())
    });
    Ok(Origination::Ready {
        connector,
        h2,
        pool,
    })
}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origination::Ready { connector, h2, .. } => f
                .debug_struct("Ready")
                .field("server_name", &connector.server_name)
                .field("h2", h2)
                .finish_non_exhaustive(),
            Origination::Invalid(why) => f.debug_tuple("Invalid").field(why).finish(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Dials `http://ip:port` URIs (the endpoint address) and performs the TLS handshake.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsConnector {
    /// TCP connect plus TLS handshake, both bounded by `timeout`.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, BoxError> {
        let connect = async {
            let tcp = crate::dial::connect(addr).await?;
            tokio_rustls::TlsConnector::from(self.config.clone())
                .connect(self.server_name.clone(), tcp)
                .await
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => Ok(result?),
            Err(_) => Err("TLS connect timed out".into()),
        }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsConn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .ok_or("upstream URI without authority")?
                .as_str()
                .parse()?;
            let stream = connector.connect(addr, CONNECT_TIMEOUT).await?;
            Ok(TlsConn(TokioIo::new(stream)))
        })
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled TLS connection as hyper-util's client sees it.
pub(crate) struct TlsConn(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Chain validation by webpki, name validation against the policy's subjectAltNames (which
/// replace the hostname check, GEP-1897).
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    subject_alt_names: Vec<SubjectAltName>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the chain is trusted.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        if certificate_matches(end_entity, &self.subject_alt_names) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether the certificate carries one of `wanted` among its SANs.
fn certificate_matches(cert: &CertificateDer<'_>, wanted: &[SubjectAltName]) -> bool {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|name| {
        wanted.iter().any(|w| match (w, name) {
            (SubjectAltName::Hostname(h), GeneralName::DNSName(dns)) => dns_matches(dns, h),
            (SubjectAltName::Uri(u), GeneralName::URI(uri)) => uri == u,
            _ => false,
        })
    })
}

/// DNS name comparison, case-insensitive, with a certificate `*.` wildcard covering exactly
/// one label.
fn dns_matches(presented: &str, wanted: &str) -> bool {
    let presented = presented.trim_end_matches('.');
    let wanted = wanted.trim_end_matches('.');
    if presented.eq_ignore_ascii_case(wanted) {
        return true;
    }
    match (presented.strip_prefix("*."), wanted.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::dns_matches;
    use crate::upstream::{Body, Outgoing, Runtime, send};
    use http::{HeaderMap, Method};
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use strait_config::{
        AppProtocol, BackendTls, CertificatePem, Cluster, ClusterKey, GatewayConfig, ObjectRef,
        ProxyConfig, SubjectAltName,
    };

    #[test]
    fn dns_name_matching() {
        let cases = [
            ("abc.example.com", "abc.example.com", true),
            ("ABC.example.com", "abc.EXAMPLE.com", true),
            ("*.example.com", "abc.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("other.example.com", "abc.example.com", false),
        ];
        for (presented, wanted, expected) in cases {
            assert_eq!(
                dns_matches(presented, wanted),
                expected,
                "{presented} vs {wanted}"
            );
        }
    }

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        pem: String,
    }

    fn ca() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    fn leaf(sans: &[&str], ca: &Ca) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for san in sans {
            params.subject_alt_names.push(if san.contains("://") {
                SanType::URI((*san).try_into().unwrap())
            } else {
                SanType::DnsName((*san).try_into().unwrap())
            });
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A loopback TLS backend answering `sni=<SNI> client=<presented a client cert>`.
    async fn backend(ca: &Ca) -> SocketAddr {
        backend_counting(ca).await.0
    }

    /// Also returns the number of completed TLS handshakes.
    async fn backend_counting(ca: &Ca) -> (SocketAddr, Arc<AtomicUsize>) {
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counter = handshakes.clone();
        let (cert, key) = leaf(
            &[
                "abc.example.com",
                "spiffe://abc.example.com/test-identity",
                "other.example.com",
            ],
            ca,
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (_, conn) = tls.get_ref();
                    let text = format!(
                        "sni={} client={} alpn={}",
                        conn.server_name().unwrap_or(""),
                        conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                        String::from_utf8_lossy(conn.alpn_protocol().unwrap_or(b"")),
                    );
                    let service = service_fn(move |_req| {
                        let text = text.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Body::full(
                                bytes::Bytes::from(text),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        (addr, handshakes)
    }

    fn policy(server_name: &str, ca_pem: &str, sans: Vec<SubjectAltName>) -> BackendTls {
        BackendTls {
            server_name: server_name.into(),
            ca_certificates_pem: vec![ca_pem.into()],
            system_roots: false,
            subject_alt_names: sans,
            invalid: None,
        }
    }

    async fn request(
        addr: SocketAddr,
        tls: BackendTls,
        client: Option<CertificatePem>,
    ) -> Result<String, String> {
        request_with(addr, tls, client, AppProtocol::Http1).await
    }

    async fn request_with(
        addr: SocketAddr,
        tls: BackendTls,
        client: Option<CertificatePem>,
        protocol: AppProtocol,
    ) -> Result<String, String> {
        let key = ClusterKey {
            namespace: "ns".into(),
            name: "svc".into(),
            port: 443,
        };
        let mut clusters = BTreeMap::new();
        clusters.insert(
            key.clone(),
            Cluster {
                protocol,
                endpoints: vec![addr],
                tls: Some(tls),
            },
        );
        let gateway = GatewayConfig {
            gateway: ObjectRef {
                namespace: "ns".into(),
                name: "gw".into(),
            },
            addresses: vec![],
            ports: vec![],
            backend_client_certificate: client,
        };
        let config = ProxyConfig {
            version: 1,
            gateways: vec![gateway.clone()],
            clusters,
        };
        let rt = Runtime::new();
        let clusters = rt.clusters_for(&config, Some(&gateway));
        let endpoint = clusters[&key].endpoints[0].clone();
        let outgoing = Outgoing {
            method: Method::GET,
            path_and_query: "/x".parse().unwrap(),
            headers: HeaderMap::new(),
            host: Some("abc.example.com".parse().unwrap()),
        };
        let response = send(protocol, &endpoint, outgoing, Body::empty())
            .await
            .map_err(|e| e.to_string())?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn originates_tls_with_sni_and_verifies_names() {
        let ca = ca();
        let other_ca = ca_other();
        let addr = backend(&ca).await;
        let host = |h: &str| SubjectAltName::Hostname(h.into());
        let uri = |u: &str| SubjectAltName::Uri(u.into());
        let cases: Vec<(&str, BackendTls, Option<&str>)> = vec![
            (
                "hostname matches",
                policy("abc.example.com", &ca.pem, vec![]),
                Some("sni=abc.example.com client=false alpn=http/1.1"),
            ),
            (
                "hostname mismatch",
                policy("abc.example.org", &ca.pem, vec![]),
                None,
            ),
            (
                "untrusted CA",
                policy("abc.example.com", &other_ca, vec![]),
                None,
            ),
            (
                "DNS SAN replaces hostname check",
                policy("sni.example.net", &ca.pem, vec![host("other.example.com")]),
                Some("sni=sni.example.net client=false alpn=http/1.1"),
            ),
            (
                "URI SAN",
                policy(
                    "abc.example.com",
                    &ca.pem,
                    vec![uri("spiffe://abc.example.com/test-identity")],
                ),
                Some("sni=abc.example.com client=false alpn=http/1.1"),
            ),
            (
                "one of several SANs",
                policy(
                    "abc.example.com",
                    &ca.pem,
                    vec![
                        host("nope.example.com"),
                        uri("spiffe://abc.example.com/test-identity"),
                    ],
                ),
                Some("sni=abc.example.com client=false alpn=http/1.1"),
            ),
            (
                "no SAN matches even though the hostname would",
                policy(
                    "abc.example.com",
                    &ca.pem,
                    vec![
                        host("nope.example.com"),
                        uri("spiffe://abc.example.com/other"),
                    ],
                ),
                None,
            ),
            (
                "invalid policy never connects in cleartext",
                BackendTls {
                    invalid: Some("no valid CA".into()),
                    ..policy("abc.example.com", &ca.pem, vec![])
                },
                None,
            ),
        ];
        for (name, tls, expected) in cases {
            let got = request(addr, tls, None).await;
            match expected {
                Some(body) => assert_eq!(got.as_deref(), Ok(body), "{name}"),
                None => assert!(got.is_err(), "{name}: expected failure, got {got:?}"),
            }
        }
    }

    fn ca_other() -> String {
        ca().pem
    }

    #[tokio::test]
    async fn http1_tls_connections_are_reused() {
        let ca = ca();
        let (addr, handshakes) = backend_counting(&ca).await;
        let key = ClusterKey {
            namespace: "ns".into(),
            name: "svc".into(),
            port: 443,
        };
        let config = ProxyConfig {
            version: 1,
            gateways: vec![],
            clusters: BTreeMap::from([(
                key.clone(),
                Cluster {
                    protocol: AppProtocol::Http1,
                    endpoints: vec![addr],
                    tls: Some(policy("abc.example.com", &ca.pem, vec![])),
                },
            )]),
        };
        let rt = Runtime::new();
        let clusters = rt.clusters(&config);
        let endpoint = clusters[&key].endpoints[0].clone();
        for _ in 0..3 {
            let outgoing = Outgoing {
                method: Method::GET,
                path_and_query: "/x".parse().unwrap(),
                headers: HeaderMap::new(),
                host: None,
            };
            let response = send(AppProtocol::Http1, &endpoint, outgoing, Body::empty())
                .await
                .unwrap();
            response.into_body().collect().await.unwrap();
        }
        assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn h2_backends_negotiate_h2() {
        let ca = ca();
        let addr = backend(&ca).await;
        let got = request_with(
            addr,
            policy("abc.example.com", &ca.pem, vec![]),
            None,
            AppProtocol::H2c,
        )
        .await;
        assert_eq!(
            got.as_deref(),
            Ok("sni=abc.example.com client=false alpn=h2")
        );
    }

    #[tokio::test]
    async fn presents_gateway_client_certificate() {
        let ca = ca();
        let addr = backend(&ca).await;
        let (cert, key) = leaf(&["client.example.com"], &ca);
        let client = CertificatePem {
            source: ObjectRef {
                namespace: "ns".into(),
                name: "client".into(),
            },
            cert_chain_pem: cert,
            private_key_pem: key,
        };
        let got = request(
            addr,
            policy("abc.example.com", &ca.pem, vec![]),
            Some(client),
        )
        .await;
        assert_eq!(
            got.as_deref(),
            Ok("sni=abc.example.com client=true alpn=http/1.1")
        );
    }
}

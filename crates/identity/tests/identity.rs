//! End-to-end behaviour of the CA, its gRPC service, the certificate manager and HBONE TLS.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use strait_identity::{
    AllowAll, AllowLocal, Authorizer, CaError, Caller, CertificateAuthority, CertificateClient,
    Certificates, IdentityError, SpiffeId, WorkloadCertificate, csr_identity, peer_identity, serve,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::{Code, Status};
use x509_parser::extensions::GeneralName;

const TD: &str = "cluster.local";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

fn ca() -> Arc<CertificateAuthority> {
    Arc::new(CertificateAuthority::new_self_signed(TD).unwrap())
}

/// A CA server on 127.0.0.1:0; dropping the guard shuts it down.
struct CaServer {
    endpoint: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), IdentityError>>>,
}

impl CaServer {
    async fn start<A: Authorizer>(ca: Arc<CertificateAuthority>, authorizer: A) -> CaServer {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(ca, authorizer, listener, async {
            let _ = rx.await;
        }));
        CaServer {
            endpoint,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("CA server shuts down")
            .unwrap()
            .unwrap();
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Counts signing decisions; admits a caller whose `x-identity` header names the requested ID.
#[derive(Clone, Default)]
struct HeaderAuthorizer {
    calls: Arc<AtomicUsize>,
}

impl Authorizer for HeaderAuthorizer {
    async fn authorize(&self, caller: &Caller<'_>, requested: &SpiffeId) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let claimed = caller
            .metadata
            .get("x-identity")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("no x-identity"))?;
        if claimed == requested.to_string() {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{claimed} may not obtain {requested}"
            )))
        }
    }
}

/// A CSR for `uris` (URI SANs), with a fresh key.
fn csr(uris: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// Runs a TLS handshake over an in-memory pipe and exchanges one message; returns what each
/// side saw of the other (server's view, client's view), or the side's error.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (
    Result<Option<SpiffeId>, std::io::Error>,
    Result<Option<SpiffeId>, std::io::Error>,
) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server).accept(server_io).await?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let peer = peer_identity(conn.peer_certificates().unwrap_or_default());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok(peer)
    };
    let client_side = async move {
        // Callers dial pod IPs; the name is irrelevant to verification.
        let name = ServerName::try_from("198.18.0.10").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, client_io).await?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let peer = peer_identity(conn.peer_certificates().unwrap_or_default());
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok(peer)
    };
    tokio::join!(server_side, client_side)
}

#[tokio::test]
async fn csr_round_trip_over_grpc() {
    let ca = ca();
    let server = CaServer::start(ca.clone(), AllowLocal).await;
    let client = CertificateClient::connect(&server.endpoint).await.unwrap();
    let certs = Certificates::new(client.clone()).with_validity(Duration::from_secs(3600));
    let cart = id("shop", "cart");

    let cert = certs.get(&cart).await.unwrap();
    assert_eq!(cert.id(), &cart);
    assert_eq!(peer_identity(cert.cert_chain()), Some(cart.clone()));
    assert_eq!(cert.root(), ca.root_der());
    let remaining = cert.remaining();
    assert!(
        remaining > Duration::from_secs(3590) && remaining <= Duration::from_secs(3600),
        "{remaining:?}"
    );
    assert!(cert.not_before() <= SystemTime::now());

    // What the CA put in the leaf: only the identity, no CA bit, both TLS usages.
    let (_, leaf) = x509_parser::parse_x509_certificate(&cert.cert_chain()[0]).unwrap();
    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        sans.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local/ns/shop/sa/cart")]
    );
    assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);

    // The raw RPC returns the root and the chain; over-long requests are capped by the CA.
    let response = client
        .create_certificate(
            csr(&["spiffe://cluster.local/ns/shop/sa/cart"]),
            Duration::from_secs(365 * 24 * 3600),
        )
        .await
        .unwrap();
    assert_eq!(response.root_pem, ca.root_pem());
    assert_eq!(response.cert_chain_pem.len(), 1);
    let der =
        rustls_pki_types::pem::PemObject::from_pem_slice(response.cert_chain_pem[0].as_bytes())
            .map(|d: rustls_pki_types::CertificateDer<'_>| d.to_vec())
            .unwrap();
    let (_, capped) = x509_parser::parse_x509_certificate(&der).unwrap();
    let lifetime =
        capped.validity().not_after.timestamp() - capped.validity().not_before.timestamp();
    assert!(
        lifetime <= 24 * 3600 + 60,
        "lifetime {lifetime}s exceeds the cap"
    );

    // Malformed input is the caller's fault.
    let err = client
        .create_certificate("not a csr".into(), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::Rpc { status, .. } if status.code() == Code::InvalidArgument),
        "{err}"
    );
    // A CSR for a trust domain the CA does not serve is refused.
    let err = client
        .create_certificate(
            csr(&["spiffe://other.domain/ns/shop/sa/cart"]),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::Rpc { status, .. } if status.code() == Code::PermissionDenied),
        "{err}"
    );

    server.stop().await;
}

#[tokio::test]
async fn authorizer_refuses_identity_mismatch() {
    let authorizer = HeaderAuthorizer::default();
    let server = CaServer::start(ca(), authorizer.clone()).await;
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let client = CertificateClient::connect(&server.endpoint).await.unwrap();

    // A caller that is "cart" asking for "payments" is refused with the authorizer's status.
    let mut request = tonic::Request::new(strait_proto::ca::v1::CreateCertificateRequest {
        csr_pem: csr(&["spiffe://cluster.local/ns/shop/sa/payments"]),
        validity_seconds: 0,
    });
    request
        .metadata_mut()
        .insert("x-identity", cart.parse().unwrap());
    let mut raw =
        strait_proto::ca::v1::certificate_service_client::CertificateServiceClient::connect(
            server.endpoint.clone(),
        )
        .await
        .unwrap();
    let status = raw.create_certificate(request).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("payments"), "{status:?}");

    // Asking for its own identity succeeds.
    let mut request = tonic::Request::new(strait_proto::ca::v1::CreateCertificateRequest {
        csr_pem: csr(&[cart]),
        validity_seconds: 60,
    });
    request
        .metadata_mut()
        .insert("x-identity", cart.parse().unwrap());
    let response = raw.create_certificate(request).await.unwrap().into_inner();
    assert_eq!(response.cert_chain_pem.len(), 1);

    // Without credentials the authorizer's refusal reaches the manager.
    let err = Certificates::new(client)
        .get(&id("shop", "cart"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::Rpc { status, .. } if status.code() == Code::Unauthenticated),
        "{err}"
    );
    // CSRs carrying several SANs never reach the authorizer.
    let calls = authorizer.calls.load(Ordering::SeqCst);
    let client = CertificateClient::connect(&server.endpoint).await.unwrap();
    let err = client
        .create_certificate(
            csr(&[cart, "spiffe://cluster.local/ns/shop/sa/payments"]),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::Rpc { status, .. } if status.code() == Code::InvalidArgument),
        "{err}"
    );
    assert_eq!(authorizer.calls.load(Ordering::SeqCst), calls);
    server.stop().await;
}

#[tokio::test]
async fn allow_local_refuses_remote_callers() {
    let metadata = tonic::metadata::MetadataMap::new();
    let cart = id("shop", "cart");
    let remote = Caller::new(&metadata, Some(SocketAddr::from(([198, 18, 0, 7], 40000))));
    let status = AllowLocal.authorize(&remote, &cart).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let unknown = Caller::new(&metadata, None);
    assert!(AllowLocal.authorize(&unknown, &cart).await.is_err());
    let local = Caller::new(&metadata, Some(SocketAddr::from(([127, 0, 0, 1], 40000))));
    AllowLocal.authorize(&local, &cart).await.unwrap();
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
    AllowLocal
        .authorize(&Caller::new(&metadata, Some(mapped)), &cart)
        .await
        .unwrap();
    AllowAll.authorize(&remote, &cart).await.unwrap();

    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("authorization", "Bearer  tok3n ".parse().unwrap());
    assert_eq!(Caller::new(&metadata, None).bearer_token(), Some("tok3n"));
    metadata.insert("authorization", "Basic abc".parse().unwrap());
    assert_eq!(Caller::new(&metadata, None).bearer_token(), None);
}

#[test]
fn sign_csr_checks_the_requested_identity() {
    let ca = ca();
    let cart = id("shop", "cart");
    let for_cart = csr(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    assert_eq!(csr_identity(&for_cart).unwrap(), cart);

    let err = ca
        .sign_csr(&for_cart, &id("shop", "payments"), Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
    let err = ca
        .sign_csr(
            &csr(&["spiffe://other.domain/ns/shop/sa/cart"]),
            &SpiffeId::new("other.domain", "shop", "cart").unwrap(),
            Duration::ZERO,
        )
        .unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
    let err = ca.sign_csr(&csr(&[]), &cart, Duration::ZERO).unwrap_err();
    assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
    assert!(csr_identity(&csr(&[])).is_err());
    assert!(csr_identity(&csr(&["spiffe://cluster.local/not/a/workload"])).is_err());

    // A CSR whose signature does not verify is refused.
    let mut tampered = rustls_pki_types::pem::PemObject::from_pem_slice(for_cart.as_bytes())
        .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));
    let err = ca.sign_csr(&tampered, &cart, Duration::ZERO).unwrap_err();
    assert!(matches!(err, CaError::InvalidCsr(_)), "{err}");

    let chain = ca
        .sign_csr(&for_cart, &cart, Duration::from_secs(60))
        .unwrap();
    assert_eq!(chain.len(), 1);
}

#[tokio::test]
async fn ca_reloads_from_pem() {
    let ca = ca();
    let reloaded = Arc::new(CertificateAuthority::from_pem(ca.root_pem(), &ca.key_pem()).unwrap());
    assert_eq!(reloaded.trust_domain(), TD);
    assert_eq!(reloaded.root_der(), ca.root_der());
    // Certificates from the reloaded CA and the original trust each other.
    let a = Certificates::from_ca(ca.clone())
        .get(&id("a", "x"))
        .await
        .unwrap();
    let b = Certificates::from_ca(reloaded)
        .get(&id("b", "y"))
        .await
        .unwrap();
    let (server_saw, client_saw) =
        handshake(a.server_config(), b.client_config(Some(a.id()))).await;
    assert_eq!(server_saw.unwrap(), Some(id("b", "y")));
    assert_eq!(client_saw.unwrap(), Some(id("a", "x")));

    let other = CertificateAuthority::new_self_signed(TD).unwrap();
    let err = CertificateAuthority::from_pem(ca.root_pem(), &other.key_pem()).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(CertificateAuthority::from_pem("garbage", &ca.key_pem()).is_err());
}

#[tokio::test]
async fn mutual_tls_between_workloads() {
    let certs = Certificates::from_ca(ca());
    let (cart, payments) = (id("shop", "cart"), id("pay", "payments"));
    let server = certs.get(&payments).await.unwrap();
    let client = certs.get(&cart).await.unwrap();

    let (server_saw, client_saw) = handshake(
        server.server_config(),
        client.client_config(Some(&payments)),
    )
    .await;
    assert_eq!(server_saw.unwrap(), Some(cart.clone()));
    assert_eq!(client_saw.unwrap(), Some(payments.clone()));

    // Any identity of the trust domain is accepted when none is expected.
    let (server_saw, client_saw) =
        handshake(server.server_config(), client.client_config(None)).await;
    assert_eq!(server_saw.unwrap(), Some(cart.clone()));
    assert_eq!(client_saw.unwrap(), Some(payments.clone()));

    // Configs are cached: one allocation per expected peer.
    assert!(Arc::ptr_eq(
        &client.client_config(Some(&payments)),
        &client.client_config(Some(&payments))
    ));
    assert!(Arc::ptr_eq(
        &server.server_config(),
        &server.server_config()
    ));
}

#[tokio::test]
async fn client_expecting_another_identity_fails() {
    let certs = Certificates::from_ca(ca());
    let server = certs.get(&id("pay", "payments")).await.unwrap();
    let client = certs.get(&id("shop", "cart")).await.unwrap();
    let impostor_check = id("pay", "ledger");

    let (server_saw, client_saw) = handshake(
        server.server_config(),
        client.client_config(Some(&impostor_check)),
    )
    .await;
    let err = client_saw.unwrap_err();
    assert!(
        err.to_string()
            .contains("expected spiffe://cluster.local/ns/pay/sa/ledger"),
        "{err}"
    );
    assert!(server_saw.is_err());
}

#[tokio::test]
async fn certificates_of_another_ca_are_refused() {
    let mesh = Certificates::from_ca(ca());
    // Same trust domain name, different root: must not be trusted.
    let foreign = Certificates::from_ca(ca());
    let ours = mesh.get(&id("shop", "cart")).await.unwrap();
    let theirs = foreign.get(&id("shop", "cart")).await.unwrap();

    // Our client against a foreign server: the client refuses the server's chain.
    let (server_saw, client_saw) = handshake(
        theirs.server_config(),
        ours.client_config(Some(theirs.id())),
    )
    .await;
    let err = client_saw.unwrap_err();
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    assert!(server_saw.is_err());

    // A foreign client against our server. In TLS 1.3 the client judges the server first, so
    // this client accepts any server to let our server's verdict on its certificate show.
    let mut trusting = ClientConfig::builder_with_provider(strait_identity::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_cert_resolver(Arc::new(FixedClientCert(theirs.certified_key())));
    trusting.alpn_protocols = vec![b"h2".to_vec()];
    let (server_saw, client_saw) = handshake(ours.server_config(), Arc::new(trusting)).await;
    let err = server_saw.unwrap_err();
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    assert!(client_saw.is_err());

    // The same trusting client presenting a certificate of our mesh is accepted, so the
    // refusal above is about the foreign chain.
    let mut trusting = ClientConfig::builder_with_provider(strait_identity::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_cert_resolver(Arc::new(FixedClientCert(ours.certified_key())));
    trusting.alpn_protocols = vec![b"h2".to_vec()];
    let (server_saw, client_saw) = handshake(ours.server_config(), Arc::new(trusting)).await;
    assert_eq!(server_saw.unwrap(), Some(id("shop", "cart")));
    assert_eq!(client_saw.unwrap(), Some(id("shop", "cart")));
}

/// Test-only server verifier that accepts anything (still checks handshake signatures).
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &strait_identity::crypto_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &strait_identity::crypto_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        strait_identity::crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A leaf signed by the mesh root for a DNS name instead of a SPIFFE ID, bypassing the CA
/// service (which would never issue it).
fn dns_leaf(ca: &CertificateAuthority) -> Arc<rustls::sign::CertifiedKey> {
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        ca.root_pem(),
        rcgen::KeyPair::from_pem(&ca.key_pem()).unwrap(),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["cart.shop".to_owned()]).unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Arc::new(
        rustls::sign::CertifiedKey::from_der(
            vec![cert.der().clone()],
            key,
            &strait_identity::crypto_provider(),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn certificate_without_spiffe_id_is_refused() {
    let ca = ca();
    let ours = Certificates::from_ca(ca.clone())
        .get(&id("shop", "cart"))
        .await
        .unwrap();
    let plain = dns_leaf(&ca);
    assert_eq!(peer_identity(&plain.cert), None);
    assert_eq!(peer_identity(&[]), None);

    // As a client: chains to the root, but the server wants a SPIFFE ID.
    let mut client = ClientConfig::builder_with_provider(strait_identity::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_cert_resolver(Arc::new(FixedClientCert(plain.clone())));
    client.alpn_protocols = vec![b"h2".to_vec()];
    let (server_saw, _) = handshake(ours.server_config(), Arc::new(client)).await;
    let err = server_saw.unwrap_err();
    assert!(err.to_string().contains("no URI SAN"), "{err}");

    // As a server: our client refuses it even when expecting no particular identity.
    let mut server = ServerConfig::builder_with_provider(strait_identity::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedServerCert(plain)));
    server.alpn_protocols = vec![b"h2".to_vec()];
    let (_, client_saw) = handshake(Arc::new(server), ours.client_config(None)).await;
    let err = client_saw.unwrap_err();
    assert!(err.to_string().contains("no URI SAN"), "{err}");
}

#[derive(Debug)]
struct FixedServerCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[tokio::test]
async fn single_flight_per_identity_and_forget() {
    let authorizer = CountingAllowAll::default();
    let server = CaServer::start(ca(), authorizer.clone()).await;
    let certs = Certificates::new(CertificateClient::connect(&server.endpoint).await.unwrap());
    let cart = id("shop", "cart");

    let gets = (0..10).map(|_| {
        let certs = certs.clone();
        let cart = cart.clone();
        tokio::spawn(async move { certs.get(&cart).await.unwrap() })
    });
    let mut issued = Vec::new();
    for task in gets {
        issued.push(task.await.unwrap());
    }
    assert!(issued.iter().all(|c| Arc::ptr_eq(c, &issued[0])));
    assert_eq!(authorizer.calls.load(Ordering::SeqCst), 1);
    assert_eq!(certs.identities(), vec![cart.clone()]);

    // Another identity is a separate flight.
    certs.get(&id("shop", "payments")).await.unwrap();
    assert_eq!(authorizer.calls.load(Ordering::SeqCst), 2);

    certs.forget(&cart);
    assert!(certs.cached(&cart).is_none());
    assert_eq!(certs.identities(), vec![id("shop", "payments")]);
    let again = certs.get(&cart).await.unwrap();
    assert!(!Arc::ptr_eq(&again, &issued[0]));
    assert_eq!(authorizer.calls.load(Ordering::SeqCst), 3);
    server.stop().await;
}

#[derive(Clone, Default)]
struct CountingAllowAll {
    calls: Arc<AtomicUsize>,
}

impl Authorizer for CountingAllowAll {
    async fn authorize(&self, _caller: &Caller<'_>, _requested: &SpiffeId) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Widen the window in which concurrent callers could race.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }
}

#[tokio::test]
async fn rotation_replaces_short_lived_certificate() {
    let authorizer = CountingAllowAll::default();
    let server = CaServer::start(ca(), authorizer.clone()).await;
    let client = CertificateClient::connect_lazy(&server.endpoint).unwrap();
    let certs = Certificates::new(client).with_validity(Duration::from_secs(6));
    let cart = id("shop", "cart");

    let first = certs.get(&cart).await.unwrap();
    let lifetime = first.remaining();
    assert!(lifetime <= Duration::from_secs(6), "{lifetime:?}");
    // Renewal is due at half the lifetime (at most 3 s); the first certificate is valid for at
    // least another second after 4 s, so a new one here comes from the background rotation.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rotated = certs.cached(&cart).expect("certificate still held");
    assert!(
        !Arc::ptr_eq(&rotated, &first),
        "certificate was not rotated"
    );
    assert!(rotated.not_after() > first.not_after());
    assert_ne!(rotated.cert_chain(), first.cert_chain());
    assert_eq!(authorizer.calls.load(Ordering::SeqCst), 2);
    // `get` hands out the rotated certificate without another request.
    assert!(Arc::ptr_eq(&certs.get(&cart).await.unwrap(), &rotated));
    assert_eq!(authorizer.calls.load(Ordering::SeqCst), 2);

    // Connections made with the old certificate's configs and the new one interoperate.
    let (server_saw, client_saw) =
        handshake(first.server_config(), rotated.client_config(Some(&cart))).await;
    assert_eq!(server_saw.unwrap(), Some(cart.clone()));
    assert_eq!(client_saw.unwrap(), Some(cart.clone()));

    // Forgetting stops rotation: no further requests.
    certs.forget(&cart);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(authorizer.calls.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn unreachable_ca_is_reported_with_its_endpoint() {
    // Bind then drop to get a port nothing listens on.
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = CertificateClient::connect(&endpoint).await.unwrap_err();
    assert!(err.to_string().contains(&endpoint), "{err}");
    let err = CertificateClient::connect_lazy("https://127.0.0.1:1").unwrap_err();
    assert!(
        matches!(err, IdentityError::InvalidEndpoint { .. }),
        "{err}"
    );

    let certs = Certificates::new(CertificateClient::connect_lazy(&endpoint).unwrap());
    let err = certs.get(&id("shop", "cart")).await.unwrap_err();
    assert!(err.to_string().contains(&endpoint), "{err}");
    // A failed identity is not held.
    assert!(certs.identities().is_empty());
}

#[test]
fn workload_certificate_rejects_wrong_identity() {
    let ca = ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/shop/sa/cart".try_into().unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let chain = ca
        .sign_csr(&csr, &id("shop", "cart"), Duration::ZERO)
        .unwrap();

    let err = WorkloadCertificate::from_pem(
        id("shop", "payments"),
        &chain,
        ca.root_pem(),
        key.serialize_der(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("certificate is for"), "{err}");
    let other_key = rcgen::KeyPair::generate().unwrap();
    let err = WorkloadCertificate::from_pem(
        id("shop", "cart"),
        &chain,
        ca.root_pem(),
        other_key.serialize_der(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("private key"), "{err}");
    let other_ca = CertificateAuthority::new_self_signed(TD).unwrap();
    let err = WorkloadCertificate::from_pem(
        id("shop", "cart"),
        &chain,
        other_ca.root_pem(),
        key.serialize_der(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
    WorkloadCertificate::from_pem(
        id("shop", "cart"),
        &chain,
        ca.root_pem(),
        key.serialize_der(),
    )
    .unwrap();
}

/// An organisation's root (no SPIFFE SAN) and an intermediate it issued, with the
/// intermediate's key: (root PEM, intermediate PEM, intermediate key PEM).
fn intermediate_pki(san: Option<&str>) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::default();
    root.distinguished_name.push(DnType::CommonName, "Org Root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root_cert = root.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root, root_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Org mesh CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    if let Some(san) = san {
        params.subject_alt_names = vec![rcgen::SanType::URI(san.try_into().unwrap())];
    }
    let cert = params.signed_by(&key, &root_issuer).unwrap();
    (root_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn intermediate_ca_chains_to_the_given_anchor() {
    let (root, intermediate, key) = intermediate_pki(None);
    // No SPIFFE SAN: `from_pem` cannot tell the trust domain, `from_pem_chain` is told.
    assert!(CertificateAuthority::from_pem(&intermediate, &key).is_err());
    let ca = Arc::new(
        CertificateAuthority::from_pem_chain(&intermediate, &key, Some(&root), TD).unwrap(),
    );
    assert_eq!(ca.trust_domain(), TD);
    let anchor = rustls_pki_types::pem::PemObject::from_pem_slice(root.as_bytes()).unwrap();
    assert_eq!(ca.root_der(), &anchor);
    let chain = ca
        .sign_csr(
            &csr(&["spiffe://cluster.local/ns/shop/sa/cart"]),
            &id("shop", "cart"),
            Duration::ZERO,
        )
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf, then the intermediate");

    // Workloads of the intermediate authenticate each other through the root.
    let certs = Certificates::from_ca(ca);
    let a = certs.get(&id("a", "x")).await.unwrap();
    let b = certs.get(&id("b", "y")).await.unwrap();
    let (server_saw, client_saw) =
        handshake(a.server_config(), b.client_config(Some(a.id()))).await;
    assert_eq!(server_saw.unwrap(), Some(id("b", "y")));
    assert_eq!(client_saw.unwrap(), Some(id("a", "x")));

    // The root may also close the chain in the same PEM.
    let ca = CertificateAuthority::from_pem_chain(&format!("{intermediate}{root}"), &key, None, TD)
        .unwrap();
    assert_eq!(ca.root_der(), &anchor);

    // An anchor that did not issue the intermediate fails at load.
    let (other_root, _, _) = intermediate_pki(None);
    let err = CertificateAuthority::from_pem_chain(&intermediate, &key, Some(&other_root), TD)
        .unwrap_err();
    assert!(err.to_string().contains("certificate chain"), "{err}");

    // A SPIFFE SAN naming another trust domain is refused.
    let (root, intermediate, key) = intermediate_pki(Some("spiffe://other.domain"));
    let err =
        CertificateAuthority::from_pem_chain(&intermediate, &key, Some(&root), TD).unwrap_err();
    assert!(err.to_string().contains("other.domain"), "{err}");
}

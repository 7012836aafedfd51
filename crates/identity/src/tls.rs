//! Workload certificates and the rustls configurations HBONE uses with them.
//!
//! Peers are authenticated by chain to the mesh root and by the SPIFFE ID in the leaf's URI SAN;
//! DNS names play no part (callers dial pod IPs). Both sides speak TLS 1.3 only with ALPN `h2`,
//! and use the `ring` provider explicitly so no process-wide provider has to be installed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::ca::unix_to_system;
use crate::{IdentityError, SpiffeId};

/// ALPN protocol HBONE negotiates.
pub const HBONE_ALPN: &[u8] = b"h2";
/// Client configs cached per expected peer before the cache is reset (bounds memory when
/// peers churn; the number of service accounts a proxy talks to is normally far smaller).
const MAX_CACHED_CLIENT_CONFIGS: usize = 4096;

/// The `ring` crypto provider all configs of this crate use.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate for one workload identity, with its key, its trust anchor and ready-made
/// rustls configurations. Configs are built once and shared, so a new connection costs an `Arc`
/// clone.
pub struct WorkloadCertificate {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    root: CertificateDer<'static>,
    certified_key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// When a rotation should start: half of the lifetime remaining at receipt.
    refresh_at: Instant,
    server: Arc<ServerConfig>,
    /// Client config accepting any identity of the trust domain.
    client_any: Arc<ClientConfig>,
    /// Client configs requiring a specific server identity.
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// Assembles a certificate from what the CA returned: `chain_pem` (leaf first), the root
    /// (`root_pem`) and the private key (PKCS#8 DER) of the CSR. Checks that the leaf names
    /// `id`, matches the key and chains to the root right now.
    pub fn from_pem(
        id: SpiffeId,
        chain_pem: &[String],
        root_pem: &str,
        key_pkcs8_der: Vec<u8>,
    ) -> Result<WorkloadCertificate, IdentityError> {
        let invalid = |reason: String| IdentityError::InvalidCertificate {
            id: id.clone(),
            reason,
        };
        let chain = chain_pem
            .iter()
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("certificate chain: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(invalid("empty certificate chain".into()));
        };
        let root = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| invalid(format!("root certificate: {e}")))?;

        match leaf_identity(leaf) {
            Ok(found) if found == id => {}
            Ok(found) => return Err(invalid(format!("certificate is for {found}"))),
            Err(reason) => return Err(invalid(reason)),
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| invalid(format!("certificate: {e}")))?;
        let not_before = unix_to_system(parsed.validity().not_before.timestamp());
        let not_after = unix_to_system(parsed.validity().not_after.timestamp());

        let provider = crypto_provider();
        let mut roots = RootCertStore::empty();
        roots
            .add(root.clone())
            .map_err(|e| invalid(format!("root certificate: {e}")))?;
        let roots = Arc::new(roots);
        let parsed_leaf = rustls::server::ParsedCertificate::try_from(leaf)
            .map_err(|e| invalid(format!("certificate: {e}")))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed_leaf,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| invalid(format!("does not verify against the root: {e}")))?;

        let key = PrivateKeyDer::Pkcs8(key_pkcs8_der.into());
        let certified_key = CertifiedKey::from_der(chain.clone(), key, &provider)
            .map_err(|e| invalid(format!("private key: {e}")))?;
        let certified_key = Arc::new(certified_key);

        let tls = |e: rustls::Error| IdentityError::Tls {
            id: id.clone(),
            source: Box::new(e),
        };
        let resolver = Arc::new(SingleCert(certified_key.clone()));

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| invalid(format!("client verifier: {e}")))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(Arc::new(MeshClientVerifier {
                inner: client_verifier,
                trust_domain: id.trust_domain().to_owned(),
            }))
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![HBONE_ALPN.to_vec()];
        // No resumption: every connection re-verifies the peer against the current root and
        // identity rules, and a resumed session could not be tied to an expected identity.
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        let mut client_any = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MeshServerVerifier {
                roots: roots.clone(),
                algorithms: provider.signature_verification_algorithms,
                trust_domain: id.trust_domain().to_owned(),
                expected: None,
            }))
            .with_client_cert_resolver(resolver);
        client_any.alpn_protocols = vec![HBONE_ALPN.to_vec()];
        client_any.resumption = Resumption::disabled();

        let remaining = not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Ok(WorkloadCertificate {
            id,
            chain,
            root,
            certified_key,
            not_before,
            not_after,
            refresh_at: Instant::now() + remaining / 2,
            server: Arc::new(server),
            client_any: Arc::new(client_any),
            clients: Mutex::new(HashMap::new()),
            roots,
            provider,
        })
    }

    /// The identity this certificate proves.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// Start of validity (backdated a little by the CA for clock skew).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Time left before expiry (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// When the manager renews this certificate.
    pub(crate) fn refresh_at(&self) -> Instant {
        self.refresh_at
    }

    /// The chain presented to peers, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The mesh root peers are verified against.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// Chain and signing key, for callers assembling their own rustls configs.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified_key.clone()
    }

    /// Server side of HBONE: TLS 1.3, ALPN `h2`, presents this certificate and requires a
    /// client certificate that chains to the mesh root and carries a SPIFFE ID of the same trust
    /// domain. Read the caller's identity with [`peer_identity`] after the handshake.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Client side of HBONE: TLS 1.3, ALPN `h2`, presents this certificate, and accepts a server
    /// certificate that chains to the mesh root and names `expected_server` (any SPIFFE ID of
    /// the trust domain when `None`). The TLS server name is ignored.
    pub fn client_config(&self, expected_server: Option<&SpiffeId>) -> Arc<ClientConfig> {
        let Some(expected) = expected_server else {
            return self.client_any.clone();
        };
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = clients.get(expected) {
            return config.clone();
        }
        if clients.len() >= MAX_CACHED_CLIENT_CONFIGS {
            clients.clear();
        }
        let mut config = ClientConfig::clone(&self.client_any);
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(MeshServerVerifier {
                roots: self.roots.clone(),
                algorithms: self.provider.signature_verification_algorithms,
                trust_domain: self.id.trust_domain().to_owned(),
                expected: Some(expected.clone()),
            }));
        let config = Arc::new(config);
        clients.insert(expected.clone(), config.clone());
        config
    }
}

/// The SPIFFE ID in the leaf (first) certificate of a peer's chain, e.g. from
/// `ServerConnection::peer_certificates()`. `None` when there is no certificate or the leaf
/// does not carry exactly one URI SAN holding a workload SPIFFE ID.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    leaf_identity(certs.first()?).ok()
}

/// The workload SPIFFE ID of a certificate, or why it has none.
fn leaf_identity(cert: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subjectAltName: {e}"))?
        .ok_or("certificate has no subjectAltName")?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => uri.parse().map_err(|e: crate::SpiffeIdError| e.to_string()),
        (None, _) => Err("certificate has no URI SAN".into()),
        (Some(_), Some(_)) => Err("certificate has more than one URI SAN".into()),
    }
}

/// Why a verified chain was still refused: the identity rules of the mesh.
#[derive(Debug, thiserror::Error)]
#[error("peer identity: {0}")]
struct PeerIdentityError(String);

fn identity_error(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        PeerIdentityError(reason),
    ))))
}

/// Checks the leaf's SPIFFE ID: in `trust_domain`, and equal to `expected` when given.
fn check_identity(
    leaf: &CertificateDer<'_>,
    trust_domain: &str,
    expected: Option<&SpiffeId>,
) -> Result<(), rustls::Error> {
    let found = leaf_identity(leaf).map_err(identity_error)?;
    if found.trust_domain() != trust_domain {
        return Err(identity_error(format!(
            "{found} is outside trust domain {trust_domain:?}"
        )));
    }
    if let Some(expected) = expected
        && &found != expected
    {
        return Err(identity_error(format!("expected {expected}, got {found}")));
    }
    Ok(())
}

/// Server certificate verification for HBONE: chain to the mesh root (webpki, serverAuth EKU,
/// validity), then the SPIFFE identity; the DNS name is not consulted.
#[derive(Debug)]
struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    trust_domain: String,
    expected: Option<SpiffeId>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        check_identity(end_entity, &self.trust_domain, self.expected.as_ref())?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client certificate verification for HBONE: webpki chain to the mesh root (clientAuth EKU,
/// validity), then the caller must carry a SPIFFE ID of the trust domain.
#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, &self.trust_domain, None)?;
        Ok(verified)
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

/// Presents the same certificate to every peer, as client and as server.
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for SingleCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0
            .key
            .choose_scheme(sigschemes)
            .is_some()
            .then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

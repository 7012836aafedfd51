//! The mesh certificate authority: a root that signs short-lived workload certificates.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::spiffe::{SpiffeId, validate_trust_domain};

/// Lifetime of workload certificates when the caller does not ask for one.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest workload certificate lifetime the CA grants unless configured otherwise: leaves are
/// never revoked, so a short lifetime is what bounds a leaked key.
pub const MAX_CERT_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);
/// Lifetime of a root created by [`CertificateAuthority::new_self_signed`].
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How far `notBefore` is backdated, so peers with slightly slow clocks accept new certificates.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why the CA refused or failed to issue a certificate, or to load.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR is not valid PEM/PKCS#10, its signature does not verify, or it carries an
    /// extension the CA does not understand.
    #[error("certificate signing request: {0}")]
    InvalidCsr(String),
    /// The CSR does not carry exactly one URI SAN naming the requested identity.
    #[error("certificate signing request names {found:?}, not {requested}")]
    IdentityMismatch {
        requested: SpiffeId,
        found: Vec<String>,
    },
    /// The requested identity belongs to another trust domain.
    #[error("{requested} is outside trust domain {trust_domain:?} of this CA")]
    ForeignTrustDomain {
        requested: SpiffeId,
        trust_domain: String,
    },
    /// The trust domain given to the CA is not valid.
    #[error("CA trust domain {trust_domain:?}: {reason}")]
    InvalidTrustDomain {
        trust_domain: String,
        reason: String,
    },
    /// The CA certificate or key given to [`CertificateAuthority::from_pem`] is unusable.
    #[error("CA {what}: {reason}")]
    InvalidCa { what: &'static str, reason: String },
    /// The CA's own certificate has expired (or is not valid yet).
    #[error("CA certificate for trust domain {trust_domain:?} is outside its validity period")]
    CaExpired { trust_domain: String },
    /// Generating or signing failed in the crypto library.
    #[error("signing certificate for {what}: {source}")]
    Signing {
        what: String,
        #[source]
        source: rcgen::Error,
    },
}

/// A certificate authority for one trust domain. It signs CSRs for SPIFFE identities of that
/// domain with short lifetimes; the CSR only contributes its public key (and the identity, which
/// is checked), everything else in the certificate is decided here.
pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The trust anchor (for a self-signed CA, its own certificate).
    root_der: CertificateDer<'static>,
    root_pem: String,
    /// Certificates between the signing certificate (included) and the anchor, sent with
    /// every leaf; empty for a self-signed root.
    intermediates_pem: Vec<String>,
    /// When the first certificate on the path to the anchor expires.
    root_not_after: SystemTime,
    default_validity: Duration,
    max_validity: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("intermediates", &self.intermediates_pem.len())
            .field("root_not_after", &self.root_not_after)
            .field("default_validity", &self.default_validity)
            .field("max_validity", &self.max_validity)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a fresh ECDSA P-256 root for `trust_domain`, valid for [`ROOT_VALIDITY`]. The
    /// root carries the URI SAN `spiffe://<trust_domain>` so [`Self::from_pem`] can recover the
    /// trust domain when the CA is reloaded.
    pub fn new_self_signed(trust_domain: &str) -> Result<CertificateAuthority, CaError> {
        validate_trust_domain(trust_domain).map_err(|reason| CaError::InvalidTrustDomain {
            trust_domain: trust_domain.to_owned(),
            reason,
        })?;
        let signing = |source| CaError::Signing {
            what: format!("root of trust domain {trust_domain:?}"),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "strait");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("strait mesh CA {trust_domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let uri = format!("spiffe://{trust_domain}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(signing)?)];
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(now + ROOT_VALIDITY);
        params.serial_number = Some(random_serial());
        let root = params.self_signed(&key).map_err(signing)?;
        let root_der = root.der().clone();
        let root_pem = root.pem();
        // Round to whole seconds the way the certificate encodes it.
        let root_not_after = from_offset(params.not_after);
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
            root_der,
            root_pem,
            intermediates_pem: Vec::new(),
            root_not_after,
            default_validity: DEFAULT_CERT_VALIDITY,
            max_validity: MAX_CERT_VALIDITY,
        })
    }

    /// Loads a CA from its PEM certificate and PEM (PKCS#8) private key, e.g. from a Secret.
    /// The certificate must be a currently valid CA certificate whose public key matches the key,
    /// and carry the URI SAN `spiffe://<trust-domain>` (as [`Self::new_self_signed`] writes).
    /// It is its own trust anchor; see [`Self::from_pem_chain`] for an intermediate CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, CaError> {
        Self::load(cert_pem, key_pem, None, None)
    }

    /// Loads a CA that may be an intermediate of an existing PKI (e.g. one an organisation's
    /// root issued for the mesh), so workloads can be trusted by that root's other users.
    ///
    /// - `ca_chain_pem`: the signing CA certificate first, then the certificates above it, in
    ///   order (each issued by the next). The first must match `key_pem` (PKCS#8).
    /// - `trust_anchor_pem`: the certificate proxies verify peers against. `None`: the last
    ///   certificate of `ca_chain_pem` (the signing certificate itself for a self-signed root).
    /// - `trust_domain`: the SPIFFE trust domain. The signing certificate need not carry a
    ///   `spiffe://` URI SAN; if it does, it must name this trust domain.
    ///
    /// Every certificate below the anchor is sent with each workload certificate, so peers can
    /// build the path to the anchor. The chain is checked once here by issuing and verifying a
    /// throwaway certificate, so a wrong chain fails at load instead of breaking mesh traffic.
    pub fn from_pem_chain(
        ca_chain_pem: &str,
        key_pem: &str,
        trust_anchor_pem: Option<&str>,
        trust_domain: &str,
    ) -> Result<CertificateAuthority, CaError> {
        Self::load(ca_chain_pem, key_pem, trust_anchor_pem, Some(trust_domain))
    }

    fn load(
        chain_pem: &str,
        key_pem: &str,
        anchor_pem: Option<&str>,
        trust_domain: Option<&str>,
    ) -> Result<CertificateAuthority, CaError> {
        let invalid = |what, reason: String| CaError::InvalidCa { what, reason };
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid("private key", e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("certificate", format!("no PEM certificate: {e}")))?;
        let Some(signing_der) = chain.first() else {
            return Err(invalid("certificate", "no PEM certificate".into()));
        };
        let (_, cert) = x509_parser::parse_x509_certificate(signing_der)
            .map_err(|e| invalid("certificate", e.to_string()))?;
        if !is_ca_cert(&cert).map_err(|reason| invalid("certificate", reason))? {
            return Err(invalid("certificate", "not a CA certificate".into()));
        }
        if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(invalid(
                "certificate",
                "public key does not match the private key".into(),
            ));
        }
        let trust_domain = match (trust_domain, trust_domain_of(&cert)) {
            (Some(wanted), Some(found)) if wanted != found => {
                return Err(invalid(
                    "certificate",
                    format!("names trust domain {found:?} (URI SAN), not {wanted:?}"),
                ));
            }
            (Some(wanted), _) => wanted.to_owned(),
            (None, Some(found)) => found,
            (None, None) => {
                return Err(invalid(
                    "certificate",
                    "no URI SAN spiffe://<trust-domain>".into(),
                ));
            }
        };
        validate_trust_domain(&trust_domain).map_err(|reason| CaError::InvalidTrustDomain {
            trust_domain: trust_domain.clone(),
            reason,
        })?;
        let anchor = match anchor_pem {
            Some(pem) => CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| invalid("trust anchor", format!("no PEM certificate: {e}")))?,
            None => chain.last().cloned().unwrap_or_else(|| signing_der.clone()),
        };
        let intermediates: Vec<CertificateDer<'static>> =
            chain.iter().filter(|c| **c != anchor).cloned().collect();
        // Leaves must not outlive any certificate on their path.
        let mut not_after: Option<SystemTime> = None;
        for (what, der) in chain
            .iter()
            .map(|c| ("certificate", c))
            .chain([("trust anchor", &anchor)])
        {
            let (_, parsed) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| invalid(what, e.to_string()))?;
            if !is_ca_cert(&parsed).map_err(|reason| invalid(what, reason))? {
                return Err(invalid(
                    what,
                    format!("{} is not a CA certificate", parsed.subject()),
                ));
            }
            if !parsed.validity().is_valid() {
                return Err(CaError::CaExpired { trust_domain });
            }
            let expires = unix_to_system(parsed.validity().not_after.timestamp());
            not_after = Some(not_after.map_or(expires, |t| t.min(expires)));
        }
        let issuer = Issuer::from_ca_cert_der(signing_der, key)
            .map_err(|e| invalid("certificate", e.to_string()))?;
        let ca = CertificateAuthority {
            trust_domain,
            issuer,
            root_pem: pem_encode(&anchor),
            root_der: anchor,
            intermediates_pem: intermediates.iter().map(pem_encode).collect(),
            root_not_after: not_after.unwrap_or(SystemTime::UNIX_EPOCH),
            default_validity: DEFAULT_CERT_VALIDITY,
            max_validity: MAX_CERT_VALIDITY,
        };
        ca.self_check()?;
        Ok(ca)
    }

    /// Issues a short-lived certificate and verifies it the way proxies will (chain to the
    /// trust anchor, identity, key match), so an unusable chain is reported at load.
    fn self_check(&self) -> Result<(), CaError> {
        let invalid = |reason: String| CaError::InvalidCa {
            what: "certificate chain",
            reason,
        };
        let id =
            SpiffeId::new(&self.trust_domain, "strait-system", "ca-self-check").map_err(|e| {
                CaError::InvalidTrustDomain {
                    trust_domain: self.trust_domain.clone(),
                    reason: e.reason,
                }
            })?;
        let signing = |source| CaError::Signing {
            what: id.to_string(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(signing)?)];
        let csr = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(signing)?;
        let chain = self.sign_csr(&csr, &id, Duration::from_secs(60))?;
        crate::tls::WorkloadCertificate::from_pem(id, &chain, &self.root_pem, key.serialize_der())
            .map(drop)
            .map_err(|e| invalid(e.to_string()))
    }

    /// Sets the lifetime used when a request asks for none (`default`) and the longest granted
    /// (`max`); `default` is clamped to `max`.
    pub fn with_validity(mut self, default: Duration, max: Duration) -> CertificateAuthority {
        self.max_validity = max;
        self.default_validity = default.min(max);
        self
    }

    /// The trust domain this CA issues identities for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate (PEM): the trust anchor of every workload certificate (for an
    /// intermediate CA, the anchor given to [`Self::from_pem_chain`]).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate (DER).
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// The CA private key (PKCS#8 PEM), for persisting the CA. Secret: store it accordingly.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs `csr_pem` for `requested` and returns the chain (PEM): the leaf, then the CA
    /// certificates below the trust anchor (none for a self-signed root).
    ///
    /// The CSR must be correctly self-signed and name exactly `requested` as its only SAN (a URI
    /// SAN). The certificate gets that URI SAN, no subject, `CA:false`, `digitalSignature`, the
    /// serverAuth and clientAuth EKUs, and a lifetime of `validity` (zero: the default) capped at
    /// the CA's maximum and at the root's own expiry.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        requested: &SpiffeId,
        validity: Duration,
    ) -> Result<Vec<String>, CaError> {
        if requested.trust_domain() != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                requested: requested.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let csr = parse_csr(csr_pem)?;
        let found = csr_sans(&csr);
        if found.len() != 1 || found[0] != requested.to_string() {
            return Err(CaError::IdentityMismatch {
                requested: requested.clone(),
                found,
            });
        }
        let now = SystemTime::now();
        if now >= self.root_not_after {
            return Err(CaError::CaExpired {
                trust_domain: self.trust_domain.clone(),
            });
        }
        let validity = match validity {
            Duration::ZERO => self.default_validity,
            v => v.min(self.max_validity),
        };
        let not_after = (now + validity).min(self.root_not_after);

        let signing = |source| CaError::Signing {
            what: requested.to_string(),
            source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            requested.to_string().try_into().map_err(signing)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(signing)?;
        tracing::debug!(identity = %requested, ?validity, "signed workload certificate");
        let mut chain = Vec::with_capacity(1 + self.intermediates_pem.len());
        chain.push(leaf.pem());
        chain.extend(self.intermediates_pem.iter().cloned());
        Ok(chain)
    }

    /// A serving certificate for the control plane itself (the config stream and the CA
    /// endpoint), for DNS names such as `strait-controller.strait-system.svc`: proxies verify it
    /// against the same trust anchor as workload certificates, so the root they already need
    /// is all they need. Returns the chain (leaf first) and the private key, both PEM.
    pub fn issue_server_certificate(
        &self,
        dns_names: &[String],
        validity: Duration,
    ) -> Result<(String, String), CaError> {
        let what = dns_names.first().cloned().unwrap_or_default();
        let signing = |source| CaError::Signing {
            what: what.clone(),
            source,
        };
        let now = SystemTime::now();
        let not_after = (now + validity).min(self.root_not_after);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(signing)?;
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer).map_err(signing)?;
        let mut chain = leaf.pem();
        for intermediate in &self.intermediates_pem {
            chain.push_str(intermediate);
        }
        Ok((chain, key.serialize_pem()))
    }
}

/// The identity a CSR asks for: its only SAN, which must be a workload SPIFFE ID. This is how
/// a caller names the identity it wants; the server authorises it before signing.
pub fn csr_identity(csr_pem: &str) -> Result<SpiffeId, CaError> {
    let csr = parse_csr(csr_pem)?;
    match csr.params.subject_alt_names.as_slice() {
        [SanType::URI(uri)] => uri
            .as_str()
            .parse()
            .map_err(|e: crate::SpiffeIdError| CaError::InvalidCsr(e.to_string())),
        _ => Err(CaError::InvalidCsr(format!(
            "must carry exactly one URI SAN (the SPIFFE ID), found {:?}",
            csr_sans(&csr)
        ))),
    }
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, CaError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| CaError::InvalidCsr(e.to_string()))
}

/// The CSR's SANs, rendered for comparison and error messages.
fn csr_sans(csr: &CertificateSigningRequestParams) -> Vec<String> {
    csr.params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            SanType::URI(uri) => uri.as_str().to_owned(),
            SanType::DnsName(name) => format!("DNS:{}", name.as_str()),
            SanType::Rfc822Name(name) => format!("email:{}", name.as_str()),
            SanType::IpAddress(ip) => format!("IP:{ip}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Whether a certificate's basic constraints say CA.
fn is_ca_cert(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<bool, String> {
    Ok(cert
        .basic_constraints()
        .map_err(|e| e.to_string())?
        .is_some_and(|bc| bc.value.ca))
}

/// `spiffe://<td>` from a CA certificate's URI SANs.
fn trust_domain_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri
            .strip_prefix("spiffe://")
            .map(|td| td.trim_end_matches('/'))
            .filter(|td| !td.contains('/'))
            .map(str::to_owned),
        _ => None,
    })
}

/// A random positive 127-bit serial number (RFC 5280 asks for unpredictable, non-zero serials).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn from_offset(t: OffsetDateTime) -> SystemTime {
    unix_to_system(t.unix_timestamp())
}

/// Seconds since the epoch as a `SystemTime` (saturating at the epoch for earlier times).
pub(crate) fn unix_to_system(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn pem_encode(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

//! Frontend TLS: one rustls `ServerConfig` per HTTPS listener of a port, chosen by SNI.
//!
//! A config per listener (instead of one config with a certificate resolver) lets each listener
//! carry its own client-certificate validation: the ClientHello is read first
//! (`LazyConfigAcceptor`), its SNI picks the listener, and that listener's config finishes the
//! handshake.

use std::io::BufReader;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use strait_config::{CertificatePem, ClientValidation, PortConfig};

/// The TLS configurations of one HTTPS port.
#[derive(Debug)]
pub(crate) struct PortTls {
    listeners: Vec<TlsListener>,
}

#[derive(Debug)]
struct TlsListener {
    hostname: Option<String>,
    config: Arc<ServerConfig>,
}

/// Why a listener's TLS configuration could not be built.
#[derive(Debug)]
pub(crate) struct TlsBuildError {
    pub listener: String,
    pub reason: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PortTls {
    /// Builds a config for every listener of `port` that has certificates.
    pub(crate) fn build(port: &PortConfig) -> Result<PortTls, TlsBuildError> {
        let mut listeners = Vec::new();
        for listener in &port.listeners {
            let Some(tls) = &listener.tls else { continue };
            let err = |reason: String| TlsBuildError {
                listener: listener.name.clone(),
                reason,
            };
            // Compile reports listeners whose certificate refs do not resolve; such a listener
            // simply has no certificate here and the others on the port keep working.
            let Some(cert) = tls.certificates.first() else {
                continue;
            };
            let config = server_config(cert, tls.client_validation.as_ref()).map_err(err)?;
            listeners.push(TlsListener {
                hostname: listener.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
                config: Arc::new(config),
            });
        }
        if listeners.is_empty() {
            return Err(TlsBuildError {
                listener: port
                    .listeners
                    .first()
                    .map(|l| l.name.clone())
                    .unwrap_or_default(),
                reason: "HTTPS port without any certificate".to_owned(),
            });
        }
        Ok(PortTls { listeners })
    }

    /// The config for a ClientHello's SNI: the most specific listener hostname matching it;
    /// without SNI, the listener without hostname (or the first one).
    pub(crate) fn select(&self, sni: Option<&str>) -> Option<&Arc<ServerConfig>> {
        let hostnames = self.listeners.iter().map(|l| l.hostname.as_deref());
        let index = match sni {
            Some(sni) => best_listener(hostnames, sni),
            None => {
                let mut hostnames = hostnames;
                Some(hostnames.position(|h| h.is_none()).unwrap_or(0))
            }
        };
        index.and_then(|i| self.listeners.get(i)).map(|l| &l.config)
    }
}

/// Index of the most specific hostname matching `host`: exact, then longest wildcard suffix,
/// then a listener without hostname. `host` must be lower-case.
pub(crate) fn best_listener<'a>(
    hostnames: impl Iterator<Item = Option<&'a str>>,
    host: &str,
) -> Option<usize> {
    // (rank, wildcard length): exact = 2, wildcard = 1, catch-all = 0.
    let mut best: Option<(usize, u8, usize)> = None;
    for (i, hostname) in hostnames.enumerate() {
        let score = match hostname {
            Some(h) if h.eq_ignore_ascii_case(host) => (2, h.len()),
            Some(h) => match h.strip_prefix('*') {
                Some(suffix)
                    if suffix.starts_with('.')
                        && host.len() > suffix.len()
                        && host
                            .get(host.len() - suffix.len()..)
                            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix)) =>
                {
                    (1, h.len())
                }
                _ => continue,
            },
            None => (0, 0),
        };
        if best.is_none_or(|(_, rank, len)| (score.0, score.1) > (rank, len)) {
            best = Some((i, score.0, score.1));
        }
    }
    best.map(|(i, _, _)| i)
}

fn server_config(
    cert: &CertificatePem,
    validation: Option<&ClientValidation>,
) -> Result<ServerConfig, String> {
    let chain = rustls_pemfile::certs(&mut BufReader::new(cert.cert_chain_pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("Secret {}: bad certificate PEM: {e}", cert.source))?;
    if chain.is_empty() {
        return Err(format!("Secret {}: no certificate in PEM", cert.source));
    }
    let key = rustls_pemfile::private_key(&mut BufReader::new(cert.private_key_pem.as_bytes()))
        .map_err(|e| format!("Secret {}: bad private key PEM: {e}", cert.source))?
        .ok_or_else(|| format!("Secret {}: no private key in PEM", cert.source))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match validation {
        None => builder.with_no_client_auth(),
        Some(validation) => {
            let mut roots = rustls::RootCertStore::empty();
            for pem in &validation.ca_certificates_pem {
                for der in rustls_pemfile::certs(&mut BufReader::new(pem.as_bytes())) {
                    let der = der.map_err(|e| format!("bad CA certificate PEM: {e}"))?;
                    roots
                        .add(der)
                        .map_err(|e| format!("bad CA certificate: {e}"))?;
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client validation: {e}"))?;
            if validation.allow_insecure_fallback {
                builder.with_client_cert_verifier(Arc::new(InsecureFallback(verifier)))
            } else {
                builder.with_client_cert_verifier(verifier)
            }
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("Secret {}: {e}", cert.source))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// `AllowInsecureFallback`: a client certificate is requested and checked, but a missing or
/// invalid one does not fail the handshake.
#[derive(Debug)]
struct InsecureFallback(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for InsecureFallback {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.verify_client_cert(end_entity, intermediates, now) {
            Ok(verified) => Ok(verified),
            Err(e) => {
                tracing::debug!(error = %e, "invalid client certificate accepted (insecure fallback)");
                Ok(ClientCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::best_listener;

    #[test]
    fn most_specific_hostname_wins() {
        let listeners = [
            None,
            Some("*.example.com"),
            Some("foo.example.com"),
            Some("*.b.example.com"),
        ];
        let cases = [
            ("foo.example.com", Some(2)),
            ("FOO.example.com", Some(2)),
            ("bar.example.com", Some(1)),
            ("x.b.example.com", Some(3)),
            ("a.x.example.com", Some(1)),
            ("example.com", Some(0)),
            ("other.org", Some(0)),
        ];
        for (host, want) in cases {
            assert_eq!(
                best_listener(listeners.iter().copied(), host),
                want,
                "{host}"
            );
        }
        let no_catch_all = [Some("*.example.com"), Some("foo.example.com")];
        assert_eq!(
            best_listener(no_catch_all.iter().copied(), "example.com"),
            None
        );
        assert_eq!(
            best_listener(no_catch_all.iter().copied(), "other.org"),
            None
        );
        assert_eq!(
            best_listener(no_catch_all.iter().copied(), "x.example.com"),
            Some(0)
        );
    }
}

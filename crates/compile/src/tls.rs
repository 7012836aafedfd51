//! HTTPS listener certificates: `certificateRefs` to `kubernetes.io/tls` Secrets.

use gateway_api::experimental::gateways::GatewayListenersTlsCertificateRefs;
use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use strait_config::{CertificatePem, ClientValidation, ObjectRef};
use strait_model::types::Gateway;

use crate::context::{Context, name, ns};
use crate::reference_grants::{self, From, To};

/// Why a listener's certificate references did not all resolve (a listener ResolvedRefs reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RefFailure {
    pub reason: &'static str,
    pub message: String,
}

/// Resolves the certificate references of one listener. Valid certificates are returned even
/// when another reference failed, so the listener can still serve them.
/// `from_kind` is the ReferenceGrant `from` kind: Gateway, or ListenerSet for its listeners.
pub(crate) fn resolve_certificates_as(
    ctx: &Context<'_>,
    gateway: &Gateway,
    from_kind: &str,
    listener: &str,
    refs: &[GatewayListenersTlsCertificateRefs],
) -> (Vec<CertificatePem>, Option<RefFailure>) {
    let gw_ns = ns(&gateway.metadata);
    let mut certs = Vec::new();
    let mut failure = None;
    if refs.is_empty() {
        failure = Some(RefFailure {
            reason: "InvalidCertificateRef",
            message: format!("listener {listener}: HTTPS listener has no certificateRefs"),
        });
    }
    for r in refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let secret_ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let secret_name = &r.name;
        let what = format!("Secret {secret_ns}/{secret_name}");
        let result = if !group.is_empty() || kind != "Secret" {
            Err(RefFailure {
                reason: "InvalidCertificateRef",
                message: format!(
                    "listener {listener}: unsupported certificateRef {group}/{kind} {secret_name} (only core Secrets)"
                ),
            })
        } else if !reference_grants::permitted(
            ctx.snapshot,
            &From {
                group: "gateway.networking.k8s.io",
                kind: from_kind,
                namespace: gw_ns,
            },
            &To {
                group: "",
                kind: "Secret",
                namespace: secret_ns,
                name: secret_name,
            },
        ) {
            Err(RefFailure {
                reason: "RefNotPermitted",
                message: format!(
                    "listener {listener}: {what} is in another namespace and no ReferenceGrant allows it"
                ),
            })
        } else {
            match ctx.secret(secret_ns, secret_name) {
                None => Err(RefFailure {
                    reason: "InvalidCertificateRef",
                    message: format!("listener {listener}: {what} not found"),
                }),
                Some(secret) => parse_tls_secret(secret).map_err(|e| RefFailure {
                    reason: "InvalidCertificateRef",
                    message: format!("listener {listener}: {what}: {e}"),
                }),
            }
        };
        match result {
            Ok(cert) => certs.push(cert),
            Err(e) => {
                if failure.is_none() {
                    failure = Some(e);
                }
            }
        }
    }
    (certs, failure)
}

fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.0.clone());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.as_bytes().to_vec())
}

/// Checks `tls.crt` holds at least one PEM certificate and `tls.key` a PEM private key.
pub(crate) fn parse_tls_secret(secret: &Secret) -> Result<CertificatePem, String> {
    let crt = secret_value(secret, "tls.crt").ok_or("missing tls.crt")?;
    let key = secret_value(secret, "tls.key").ok_or("missing tls.key")?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&crt) {
        cert.map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err("tls.crt holds no PEM certificate".into());
    }
    PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let cert_chain_pem = String::from_utf8(crt).map_err(|_| "tls.crt is not UTF-8")?;
    let private_key_pem = String::from_utf8(key).map_err(|_| "tls.key is not UTF-8")?;
    Ok(CertificatePem {
        source: ObjectRef {
            namespace: ns(&secret.metadata).to_string(),
            name: name(&secret.metadata).to_string(),
        },
        cert_chain_pem,
        private_key_pem,
    })
}

/// A CA reference of frontend client-certificate validation, independent of the generated type.
struct CaRef<'a> {
    group: &'a str,
    kind: &'a str,
    name: &'a str,
    namespace: Option<&'a str>,
}

/// Frontend (client certificate) validation of the HTTPS listeners on one port.
pub(crate) struct FrontendValidation {
    /// `None` when every CA reference failed: the listener must not serve.
    pub validation: Option<ClientValidation>,
    pub failure: Option<RefFailure>,
}

/// Resolves `spec.tls.frontend` for `port` (a `perPort` entry wins over `default`). `None` when
/// no validation is configured for that port.
pub(crate) fn frontend_validation(
    ctx: &Context<'_>,
    gateway: &Gateway,
    port: i32,
) -> Option<FrontendValidation> {
    use gateway_api::experimental::gateways::{
        GatewayTlsFrontendDefaultValidationMode as DM,
        GatewayTlsFrontendPerPortTlsValidationMode as PM,
    };
    let frontend = gateway.spec.tls.as_ref()?.frontend.as_ref()?;
    let per_port = frontend.per_port.iter().flatten().find(|p| p.port == port);
    let (refs, insecure): (Vec<CaRef<'_>>, bool) = match per_port {
        Some(p) => {
            let v = p.tls.validation.as_ref()?;
            (
                v.ca_certificate_refs
                    .iter()
                    .map(|r| CaRef {
                        group: &r.group,
                        kind: &r.kind,
                        name: &r.name,
                        namespace: r.namespace.as_deref(),
                    })
                    .collect(),
                matches!(v.mode, Some(PM::AllowInsecureFallback)),
            )
        }
        None => {
            let v = frontend.default.validation.as_ref()?;
            (
                v.ca_certificate_refs
                    .iter()
                    .map(|r| CaRef {
                        group: &r.group,
                        kind: &r.kind,
                        name: &r.name,
                        namespace: r.namespace.as_deref(),
                    })
                    .collect(),
                matches!(v.mode, Some(DM::AllowInsecureFallback)),
            )
        }
    };
    let gw_ns = ns(&gateway.metadata);
    let mut cas = Vec::new();
    let mut failure = None;
    for r in &refs {
        let ref_ns = r.namespace.unwrap_or(gw_ns);
        let what = format!("{} {ref_ns}/{}", r.kind, r.name);
        let result = if !r.group.is_empty() || !matches!(r.kind, "ConfigMap" | "Secret") {
            Err(RefFailure {
                reason: "InvalidCACertificateKind",
                message: format!(
                    "caCertificateRef {}/{} {}: unsupported kind",
                    r.group, r.kind, r.name
                ),
            })
        } else if !reference_grants::permitted(
            ctx.snapshot,
            &From {
                group: crate::listeners::GATEWAY_GROUP,
                kind: "Gateway",
                namespace: gw_ns,
            },
            &To {
                group: "",
                kind: r.kind,
                namespace: ref_ns,
                name: r.name,
            },
        ) {
            Err(RefFailure {
                reason: "RefNotPermitted",
                message: format!("caCertificateRef {what} is not permitted by any ReferenceGrant"),
            })
        } else {
            ca_bundle(ctx, r.kind, ref_ns, r.name).map_err(|e| RefFailure {
                reason: "InvalidCACertificateRef",
                message: format!("caCertificateRef {what}: {e}"),
            })
        };
        match result {
            Ok(pem) => cas.push(pem),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    Some(FrontendValidation {
        validation: (!cas.is_empty()).then_some(ClientValidation {
            ca_certificates_pem: cas,
            allow_insecure_fallback: insecure,
        }),
        failure,
    })
}

/// Whether any frontend validation of the Gateway allows insecure fallback.
pub(crate) fn insecure_frontend(gateway: &Gateway) -> bool {
    use gateway_api::experimental::gateways::{
        GatewayTlsFrontendDefaultValidationMode as DM,
        GatewayTlsFrontendPerPortTlsValidationMode as PM,
    };
    let Some(f) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return false;
    };
    f.default
        .validation
        .as_ref()
        .is_some_and(|v| matches!(v.mode, Some(DM::AllowInsecureFallback)))
        || f.per_port.iter().flatten().any(|p| {
            p.tls
                .validation
                .as_ref()
                .is_some_and(|v| matches!(v.mode, Some(PM::AllowInsecureFallback)))
        })
}

/// The `ca.crt` PEM bundle of a ConfigMap or Secret.
fn ca_bundle(ctx: &Context<'_>, kind: &str, namespace: &str, name: &str) -> Result<String, String> {
    let pem = if kind == "ConfigMap" {
        let cm = ctx
            .snapshot
            .config_maps
            .iter()
            .find(|c| ns(&c.metadata) == namespace && crate::context::name(&c.metadata) == name)
            .ok_or("not found")?;
        cm.data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| {
                cm.binary_data
                    .as_ref()
                    .and_then(|d| d.get("ca.crt"))
                    .map(|b| b.0.clone())
            })
            .ok_or("no ca.crt key")?
    } else {
        let secret = ctx.secret(namespace, name).ok_or("not found")?;
        secret_value(secret, "ca.crt").ok_or("no ca.crt key")?
    };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| format!("ca.crt is not valid PEM: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err("ca.crt holds no PEM certificate".into());
    }
    String::from_utf8(pem).map_err(|_| "ca.crt is not UTF-8".into())
}

/// Gateway-level `ResolvedRefs` for `spec.tls.backend.clientCertificateRef` (the certificate
/// the Gateway presents to backends). `None` when not configured.
pub(crate) fn backend_client_certificate(
    ctx: &Context<'_>,
    gateway: &Gateway,
) -> Option<Result<CertificatePem, RefFailure>> {
    let r = gateway
        .spec
        .tls
        .as_ref()?
        .backend
        .as_ref()?
        .client_certificate_ref
        .as_ref()?;
    let gw_ns = ns(&gateway.metadata);
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    let secret_ns = r.namespace.as_deref().unwrap_or(gw_ns);
    let what = format!("clientCertificateRef Secret {secret_ns}/{}", r.name);
    if !group.is_empty() || kind != "Secret" {
        return Some(Err(RefFailure {
            reason: "InvalidClientCertificateRef",
            message: format!(
                "clientCertificateRef {group}/{kind} {}: unsupported kind",
                r.name
            ),
        }));
    }
    if !reference_grants::permitted(
        ctx.snapshot,
        &From {
            group: crate::listeners::GATEWAY_GROUP,
            kind: "Gateway",
            namespace: gw_ns,
        },
        &To {
            group: "",
            kind: "Secret",
            namespace: secret_ns,
            name: &r.name,
        },
    ) {
        return Some(Err(RefFailure {
            reason: "RefNotPermitted",
            message: format!("{what} is not permitted by any ReferenceGrant"),
        }));
    }
    Some(match ctx.secret(secret_ns, &r.name) {
        None => Err(RefFailure {
            reason: "InvalidClientCertificateRef",
            message: format!("{what} not found"),
        }),
        Some(secret) => parse_tls_secret(secret).map_err(|e| RefFailure {
            reason: "InvalidClientCertificateRef",
            message: format!("{what}: {e}"),
        }),
    })
}

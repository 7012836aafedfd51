//! BackendTLSPolicy (GEP-1897): which clusters the proxy must reach over TLS, and the policies'
//! ancestor statuses.
//!
//! Runs after routes are attached, on the finished [`ProxyConfig`]: a policy's ancestors are
//! the Gateways whose routes reach a Service port the policy targets, which is exactly what the
//! compiled listeners say. Policies are ordered oldest first (creationTimestamp, then
//! namespace/name); for the same Service and the same sectionName (or none) the first one wins
//! and the others are `Conflicted`. A policy naming the Service port's sectionName takes
//! precedence over one naming the whole Service.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyValidation, BackendTlsPolicyValidationSubjectAltNamesType,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use strait_config::{
    BackendTarget, BackendTls, ClusterKey, HttpFilter, ObjectRef, ProxyConfig, SubjectAltName,
};

use crate::ObjectStatus;
use crate::StatusJson;
use crate::conditions::{Condition, render};
use crate::context::{Context, name, ns};
use crate::listeners::GATEWAY_GROUP;

/// A policy after validation, before conflicts are resolved.
struct Evaluated<'a> {
    policy: &'a BackendTlsPolicy,
    /// The TLS settings when at least one trust anchor is usable.
    tls: Result<BackendTls, String>,
    /// `Accepted` before conflict resolution.
    accepted: Condition,
    resolved_refs: Condition,
}

/// Sets `Cluster::tls` for every cluster a policy targets, the Gateways' backend client
/// certificates, and pushes one status per BackendTLSPolicy.
pub(crate) fn apply(ctx: &Context<'_>, config: &mut ProxyConfig, statuses: &mut Vec<ObjectStatus>) {
    set_client_certificates(ctx, config);
    let users = cluster_users(config);

    let mut policies: Vec<&BackendTlsPolicy> = ctx
        .snapshot
        .backend_tls_policies
        .iter()
        .map(Arc::as_ref)
        .collect();
    policies.sort_by_key(|p| order_key(&p.metadata));
    let evaluated: Vec<Evaluated<'_>> = policies.into_iter().map(|p| evaluate(ctx, p)).collect();

    // (namespace, service, sectionName) → index of the winning policy.
    let mut winners: BTreeMap<(String, String, Option<String>), usize> = BTreeMap::new();
    let mut conflicted = vec![false; evaluated.len()];
    for (i, e) in evaluated.iter().enumerate() {
        let policy_ns = ns(&e.policy.metadata);
        for t in service_targets(e.policy) {
            let slot = (
                policy_ns.to_string(),
                t.name.clone(),
                t.section_name.clone(),
            );
            match winners.get(&slot) {
                Some(&w) if w != i => conflicted[i] = true,
                _ => {
                    winners.insert(slot, i);
                }
            }
        }
    }

    for (key, cluster) in config.clusters.iter_mut() {
        let port_name = service_port_name(ctx, key);
        let by_section = port_name.and_then(|p| {
            winners.get(&(key.namespace.clone(), key.name.clone(), Some(p.to_string())))
        });
        let by_service = winners.get(&(key.namespace.clone(), key.name.clone(), None));
        if let Some(&i) = by_section.or(by_service)
            && let Some(e) = evaluated.get(i)
        {
            cluster.tls = Some(match &e.tls {
                Ok(tls) => tls.clone(),
                Err(why) => BackendTls {
                    server_name: e.policy.spec.validation.hostname.clone(),
                    ca_certificates_pem: Vec::new(),
                    system_roots: false,
                    subject_alt_names: Vec::new(),
                    invalid: Some(format!(
                        "BackendTLSPolicy {}/{}: {why}",
                        ns(&e.policy.metadata),
                        name(&e.policy.metadata)
                    )),
                },
            });
        }
    }

    for (i, e) in evaluated.iter().enumerate() {
        let policy_ns = ns(&e.policy.metadata);
        let mut ancestors: BTreeSet<&ObjectRef> = BTreeSet::new();
        for (key, gateways) in &users {
            if key.namespace != policy_ns {
                continue;
            }
            let port_name = service_port_name(ctx, key);
            let targeted = service_targets(e.policy).any(|t| {
                t.name == key.name
                    && t.section_name
                        .as_deref()
                        .is_none_or(|s| Some(s) == port_name)
            });
            if targeted {
                ancestors.extend(gateways.iter());
            }
        }
        let accepted = if conflicted[i] {
            Condition::new(
                "Accepted",
                false,
                "Conflicted",
                "An older BackendTLSPolicy targets the same Service and sectionName",
            )
        } else {
            e.accepted.clone()
        };
        let conditions = [accepted, e.resolved_refs.clone()];
        let rendered = render(&conditions, e.policy.metadata.generation, ctx.now());
        // The API caps status.ancestors at 16 entries.
        let ancestors: Vec<_> = ancestors
            .into_iter()
            .take(16)
            .map(|g| {
                json!({
                    "ancestorRef": {
                        "group": GATEWAY_GROUP,
                        "kind": "Gateway",
                        "namespace": g.namespace,
                        "name": g.name,
                    },
                    "controllerName": ctx.input.controller_name,
                    "conditions": rendered,
                })
            })
            .collect();
        // Policies none of our Gateways reach are left alone: their status belongs to other
        // controllers (a status write replaces the whole ancestor list).
        if ancestors.is_empty() {
            continue;
        }
        statuses.push(ObjectStatus {
            kind: "BackendTLSPolicy".into(),
            namespace: policy_ns.into(),
            name: name(&e.policy.metadata).into(),
            status: StatusJson::new(&json!({ "ancestors": ancestors })),
        });
    }
}

/// Oldest first; ties by namespace/name (GEP-713 conflict resolution).
fn order_key(meta: &ObjectMeta) -> (String, String, String) {
    let created = meta
        .creation_timestamp
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    (created, ns(meta).to_string(), name(meta).to_string())
}

struct Target {
    name: String,
    section_name: Option<String>,
}

/// The core Service targets of a policy (other kinds are not ours to interpret).
fn service_targets(policy: &BackendTlsPolicy) -> impl Iterator<Item = Target> + '_ {
    policy
        .spec
        .target_refs
        .iter()
        .filter(|t| t.group.is_empty() && t.kind == "Service")
        .map(|t| Target {
            name: t.name.clone(),
            section_name: t.section_name.clone().filter(|s| !s.is_empty()),
        })
}

/// The `name` of the Service port a cluster stands for.
fn service_port_name<'a>(ctx: &Context<'a>, key: &ClusterKey) -> Option<&'a str> {
    ctx.service(&key.namespace, &key.name)?
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| i64::from(p.port) == i64::from(key.port))?
        .name
        .as_deref()
}

/// Validates a policy's trust anchors and names.
fn evaluate<'a>(ctx: &Context<'_>, policy: &'a BackendTlsPolicy) -> Evaluated<'a> {
    let policy_ns = ns(&policy.metadata);
    let validation = &policy.spec.validation;
    let refs = validation.ca_certificate_refs.as_deref().unwrap_or(&[]);
    let mut pems = Vec::new();
    let mut failure: Option<(&'static str, String)> = None;
    for r in refs {
        let result = if !r.group.is_empty() || r.kind != "ConfigMap" {
            Err((
                "InvalidKind",
                format!(
                    "caCertificateRef {}/{} {} is not a supported kind (core ConfigMap)",
                    r.group, r.kind, r.name
                ),
            ))
        } else {
            config_map_ca(ctx, policy_ns, &r.name).map_err(|e| {
                (
                    "InvalidCACertificateRef",
                    format!("caCertificateRef ConfigMap {policy_ns}/{}: {e}", r.name),
                )
            })
        };
        match result {
            Ok(pem) => pems.push(pem),
            Err(f) => {
                failure.get_or_insert(f);
            }
        }
    }
    let resolved_refs = match &failure {
        Some((reason, message)) => Condition::new("ResolvedRefs", false, *reason, message.clone()),
        None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "References resolved"),
    };
    let system_roots = match validation.well_known_ca_certificates.as_deref() {
        None => false,
        Some("System") => true,
        Some(v) => {
            let message = format!("wellKnownCACertificates {v:?} is not supported");
            return Evaluated {
                policy,
                tls: Err(message.clone()),
                accepted: Condition::new("Accepted", false, "Invalid", message),
                resolved_refs,
            };
        }
    };
    if pems.is_empty() && !system_roots {
        let message = match failure {
            Some((_, m)) => m,
            None => "no caCertificateRefs".to_string(),
        };
        return Evaluated {
            policy,
            tls: Err(message.clone()),
            accepted: Condition::new("Accepted", false, "NoValidCACertificate", message),
            resolved_refs,
        };
    }
    Evaluated {
        policy,
        tls: Ok(BackendTls {
            server_name: validation.hostname.clone(),
            ca_certificates_pem: pems,
            system_roots,
            subject_alt_names: subject_alt_names(validation),
            invalid: None,
        }),
        accepted: Condition::new("Accepted", true, "Accepted", "Policy accepted"),
        resolved_refs,
    }
}

fn subject_alt_names(validation: &BackendTlsPolicyValidation) -> Vec<SubjectAltName> {
    validation
        .subject_alt_names
        .iter()
        .flatten()
        .filter_map(|s| match s.r#type {
            BackendTlsPolicyValidationSubjectAltNamesType::Hostname => {
                s.hostname.clone().map(SubjectAltName::Hostname)
            }
            BackendTlsPolicyValidationSubjectAltNamesType::Uri => {
                s.uri.clone().map(SubjectAltName::Uri)
            }
        })
        .collect()
}

/// The `ca.crt` PEM bundle of a ConfigMap; it must hold at least one certificate.
fn config_map_ca(ctx: &Context<'_>, namespace: &str, cm_name: &str) -> Result<String, String> {
    let cm = ctx
        .snapshot
        .config_maps
        .iter()
        .find(|c| ns(&c.metadata) == namespace && name(&c.metadata) == cm_name)
        .ok_or("not found")?;
    let pem = cm
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .cloned()
        .ok_or("no ca.crt key")?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        cert.map_err(|e| format!("ca.crt is not valid PEM: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err("ca.crt holds no PEM certificate".into());
    }
    Ok(pem)
}

/// Cluster → Gateways with an attached route that can send traffic to it.
fn cluster_users(config: &ProxyConfig) -> BTreeMap<ClusterKey, BTreeSet<ObjectRef>> {
    let mut users: BTreeMap<ClusterKey, BTreeSet<ObjectRef>> = BTreeMap::new();
    let mut add = |key: &ClusterKey, gw: &ObjectRef| {
        users.entry(key.clone()).or_default().insert(gw.clone());
    };
    for gw in &config.gateways {
        let routes = gw
            .ports
            .iter()
            .flat_map(|p| &p.listeners)
            .flat_map(|l| &l.http_routes);
        for rule in routes.flat_map(|r| &r.rules) {
            let backend_filters = rule.backends.iter().flat_map(|b| &b.filters);
            for filter in rule.filters.iter().chain(backend_filters) {
                if let HttpFilter::RequestMirror(m) = filter
                    && let BackendTarget::Cluster(key) = &m.backend
                {
                    add(key, &gw.gateway);
                }
            }
            for b in &rule.backends {
                if let BackendTarget::Cluster(key) = &b.target {
                    add(key, &gw.gateway);
                }
            }
        }
    }
    users
}

/// Copies each valid `spec.tls.backend.clientCertificateRef` into the Gateway's config (its
/// status condition is written with the Gateway's).
fn set_client_certificates(ctx: &Context<'_>, config: &mut ProxyConfig) {
    for gw in &mut config.gateways {
        let object = ctx.snapshot.gateways.iter().find(|g| {
            ns(&g.metadata) == gw.gateway.namespace && name(&g.metadata) == gw.gateway.name
        });
        if let Some(Some(Ok(cert))) = object.map(|g| crate::tls::backend_client_certificate(ctx, g))
        {
            gw.backend_client_certificate = Some(cert);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::path::Path;

    use serde_json::Value;
    use strait_config::{ClusterKey, ObjectRef, SubjectAltName};

    use crate::tests::{self_signed, tls_secret};
    use crate::{CONTROLLER_NAME, CompileInput, CompileOutput, compile};

    const FIXTURE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait}
spec: {controllerName: strait.dev/gateway-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw-a, namespace: infra, generation: 1}
spec:
  gatewayClassName: strait
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw-b, namespace: infra, generation: 1}
spec:
  gatewayClassName: strait
  tls: {backend: {clientCertificateRef: {name: client}}}
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: infra}
spec:
  ports:
  - {name: https, port: 443, targetPort: 8443}
  - {name: alt, port: 8443, targetPort: 8443}
---
apiVersion: v1
kind: Service
metadata: {name: svc2, namespace: infra}
spec:
  ports: [{name: https, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Service
metadata: {name: svc3, namespace: infra}
spec:
  ports:
  - {name: https, port: 443, targetPort: 8443}
  - {name: alt, port: 8443, targetPort: 8443}
---
apiVersion: v1
kind: Service
metadata: {name: unused, namespace: infra}
spec:
  ports: [{name: https, port: 443, targetPort: 8443}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a, namespace: infra}
spec:
  parentRefs: [{name: gw-a}]
  rules:
  - matches: [{path: {type: Exact, value: /one}}]
    backendRefs: [{name: svc, port: 443}]
  - matches: [{path: {type: Exact, value: /two}}]
    backendRefs: [{name: svc, port: 8443}]
  - matches: [{path: {type: Exact, value: /three}}]
    backendRefs: [{name: svc2, port: 443}]
  - matches: [{path: {type: Exact, value: /four}}]
    backendRefs: [{name: svc3, port: 443}]
  - matches: [{path: {type: Exact, value: /five}}]
    backendRefs: [{name: svc3, port: 8443}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b, namespace: infra}
spec:
  parentRefs: [{name: gw-b}]
  rules:
  - backendRefs: [{name: svc, port: 8443}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: z-oldest, namespace: infra, generation: 2, creationTimestamp: "2026-01-01T00:00:01Z"}
spec:
  targetRefs: [{group: "", kind: Service, name: svc}]
  validation:
    caCertificateRefs: [{group: "", kind: ConfigMap, name: ca}]
    hostname: abc.example.com
    subjectAltNames:
    - {type: Hostname, hostname: other.example.com}
    - {type: URI, uri: "spiffe://abc.example.com/id"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: a-newer, namespace: infra, generation: 1, creationTimestamp: "2026-01-01T00:00:02Z"}
spec:
  targetRefs: [{group: "", kind: Service, name: svc}]
  validation:
    caCertificateRefs: [{group: "", kind: ConfigMap, name: ca}]
    hostname: newer.example.com
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: section, namespace: infra, generation: 1, creationTimestamp: "2026-01-01T00:00:03Z"}
spec:
  targetRefs: [{group: "", kind: Service, name: svc, sectionName: https}]
  validation:
    caCertificateRefs: [{group: "", kind: Secret, name: ca}]
    hostname: section.example.com
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: missing, namespace: infra, generation: 1, creationTimestamp: "2026-01-01T00:00:04Z"}
spec:
  targetRefs: [{group: "", kind: Service, name: svc2}]
  validation:
    caCertificateRefs: [{group: "", kind: ConfigMap, name: nope}]
    hostname: abc.example.com
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: empty-ca, namespace: infra, generation: 1, creationTimestamp: "2026-01-01T00:00:05Z"}
spec:
  targetRefs: [{group: "", kind: Service, name: unused}]
  validation:
    caCertificateRefs: [{group: "", kind: ConfigMap, name: empty}]
    hostname: abc.example.com
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: system, namespace: infra, generation: 1}
spec:
  targetRefs: [{group: "", kind: Service, name: svc3, sectionName: https}]
  validation: {wellKnownCACertificates: System, hostname: abc.example.com}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: bogus-roots, namespace: infra, generation: 1}
spec:
  targetRefs: [{group: "", kind: Service, name: svc3, sectionName: alt}]
  validation: {wellKnownCACertificates: Mozilla, hostname: abc.example.com}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: empty, namespace: infra}
data: {ca.crt: ""}
"#;

    fn snapshot() -> (strait_model::Snapshot, String) {
        let (crt, key) = self_signed();
        let ca = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ca, namespace: infra}}\ndata:\n  ca.crt: |\n{}",
            crt.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        );
        let text = format!("{FIXTURE}---\n{ca}");
        let report = strait_model::load_str(&text, Path::new("fixture.yaml"));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let mut snapshot = report.snapshot;
        snapshot
            .secrets
            .push(tls_secret("infra", "client", &crt, &key).into());
        (snapshot, crt)
    }

    fn addresses() -> BTreeMap<ObjectRef, Vec<IpAddr>> {
        ["gw-a", "gw-b"]
            .iter()
            .map(|n| {
                (
                    ObjectRef {
                        namespace: "infra".into(),
                        name: (*n).into(),
                    },
                    vec![IpAddr::from([127, 0, 0, 1])],
                )
            })
            .collect()
    }

    fn run() -> (CompileOutput, String) {
        let (snapshot, crt) = snapshot();
        let addresses = addresses();
        let out = compile(&CompileInput {
            snapshot: &snapshot,
            controller_name: CONTROLLER_NAME,
            gateway_addresses: &addresses,
            now: "2026-01-01T00:00:00Z",
        });
        (out, crt)
    }

    /// Policies without ancestors show no conditions: check the validation itself.
    #[test]
    fn empty_ca_bundle_is_no_valid_certificate() {
        let (snapshot, _) = snapshot();
        let addresses = addresses();
        let input = CompileInput {
            snapshot: &snapshot,
            controller_name: CONTROLLER_NAME,
            gateway_addresses: &addresses,
            now: "2026-01-01T00:00:00Z",
        };
        let ctx = crate::context::Context::new(&input);
        let policy = snapshot
            .backend_tls_policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("empty-ca"))
            .expect("policy");
        let e = super::evaluate(&ctx, policy);
        assert!(e.tls.is_err());
        assert_eq!(
            (e.accepted.status, &*e.accepted.reason),
            (false, "NoValidCACertificate")
        );
        assert_eq!(
            (e.resolved_refs.status, &*e.resolved_refs.reason),
            (false, "InvalidCACertificateRef")
        );
    }

    fn policy_status(out: &CompileOutput, name: &str) -> Value {
        out.statuses
            .iter()
            .find(|s| s.kind == "BackendTLSPolicy" && s.name == name)
            .unwrap_or_else(|| panic!("no status for {name}"))
            .status
            .value()
            .unwrap()
    }

    fn condition(conditions: &Value, ty: &str) -> (String, String, Option<i64>) {
        let c = conditions
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == ty))
            .unwrap_or_else(|| panic!("no {ty} in {conditions}"));
        (
            c["status"].as_str().unwrap_or("").to_string(),
            c["reason"].as_str().unwrap_or("").to_string(),
            c["observedGeneration"].as_i64(),
        )
    }

    #[test]
    fn policy_statuses() {
        let (out, _) = run();
        // (policy, ancestors, Accepted, ResolvedRefs, generation)
        let cases = [
            (
                "z-oldest",
                vec!["gw-a", "gw-b"],
                ("True", "Accepted"),
                ("True", "ResolvedRefs"),
                2,
            ),
            (
                "a-newer",
                vec!["gw-a", "gw-b"],
                ("False", "Conflicted"),
                ("True", "ResolvedRefs"),
                1,
            ),
            (
                "section",
                vec!["gw-a"],
                ("False", "NoValidCACertificate"),
                ("False", "InvalidKind"),
                1,
            ),
            (
                "missing",
                vec!["gw-a"],
                ("False", "NoValidCACertificate"),
                ("False", "InvalidCACertificateRef"),
                1,
            ),
            (
                "system",
                vec!["gw-a"],
                ("True", "Accepted"),
                ("True", "ResolvedRefs"),
                1,
            ),
            (
                "bogus-roots",
                vec!["gw-a"],
                ("False", "Invalid"),
                ("True", "ResolvedRefs"),
                1,
            ),
        ];
        assert!(
            !out.statuses.iter().any(|s| s.name == "empty-ca"),
            "a policy no Gateway of ours reaches gets no status"
        );
        for (name, ancestors, accepted, resolved, generation) in cases {
            let st = &policy_status(&out, name);
            let list = st["ancestors"].as_array().expect("ancestors");
            let names: Vec<&str> = list
                .iter()
                .map(|a| a["ancestorRef"]["name"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(names, ancestors, "{name} ancestors");
            for a in list {
                assert_eq!(a["ancestorRef"]["kind"], "Gateway");
                assert_eq!(a["ancestorRef"]["group"], "gateway.networking.k8s.io");
                assert_eq!(a["ancestorRef"]["namespace"], "infra");
                assert_eq!(a["controllerName"], CONTROLLER_NAME);
                let got_a = condition(&a["conditions"], "Accepted");
                let got_r = condition(&a["conditions"], "ResolvedRefs");
                assert_eq!(
                    (got_a.0.as_str(), got_a.1.as_str()),
                    accepted,
                    "{name} Accepted"
                );
                assert_eq!(
                    (got_r.0.as_str(), got_r.1.as_str()),
                    resolved,
                    "{name} ResolvedRefs"
                );
                assert_eq!(got_a.2, Some(generation), "{name} observedGeneration");
            }
        }
    }

    #[test]
    fn clusters_get_the_winning_policy() {
        let (out, crt) = run();
        let key = |name: &str, port: u16| ClusterKey {
            namespace: "infra".into(),
            name: name.into(),
            port,
        };
        let clusters = &out.config.clusters;
        // Port 443 is named `https`: the sectionName policy wins over the Service-wide one,
        // and it is invalid, so requests must fail.
        let https = clusters[&key("svc", 443)].tls.as_ref().expect("tls 443");
        assert!(https.invalid.is_some());
        assert_eq!(https.server_name, "section.example.com");
        // Port 8443 gets the oldest Service-wide policy.
        let alt = clusters[&key("svc", 8443)].tls.as_ref().expect("tls 8443");
        assert_eq!(alt.invalid, None);
        assert_eq!(alt.server_name, "abc.example.com");
        assert_eq!(alt.ca_certificates_pem, vec![crt.clone()]);
        assert_eq!(
            alt.subject_alt_names,
            vec![
                SubjectAltName::Hostname("other.example.com".into()),
                SubjectAltName::Uri("spiffe://abc.example.com/id".into()),
            ]
        );
        let missing = clusters[&key("svc2", 443)].tls.as_ref().expect("tls svc2");
        assert!(missing.invalid.is_some());
        let system = clusters[&key("svc3", 443)].tls.as_ref().expect("tls svc3");
        assert!(system.system_roots && system.invalid.is_none());
        let bogus = clusters[&key("svc3", 8443)]
            .tls
            .as_ref()
            .expect("tls svc3 alt");
        assert!(bogus.invalid.is_some());
        // Only gw-b presents a client certificate.
        let certs: Vec<(&str, bool)> = out
            .config
            .gateways
            .iter()
            .map(|g| {
                (
                    g.gateway.name.as_str(),
                    g.backend_client_certificate
                        .as_ref()
                        .is_some_and(|c| c.cert_chain_pem == crt),
                )
            })
            .collect();
        assert_eq!(certs, vec![("gw-a", false), ("gw-b", true)]);
    }
}

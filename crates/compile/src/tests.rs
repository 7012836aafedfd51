//! Table-driven tests over YAML fixtures.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use strait_config::{
    AppProtocol, BackendTarget, ClusterKey, HttpFilter, ListenerProtocol, ObjectRef, PathMatch,
};
use strait_model::Snapshot;

use crate::{CONTROLLER_NAME, CompileInput, CompileOutput, compile};

pub(crate) const NOW: &str = "2026-01-01T00:00:00Z";

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait, generation: 3}
spec: {controllerName: strait.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra, labels: {team: infra}}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {team: apps}}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: infra}
spec:
  selector: {app: svc}
  ports:
  - {name: http, port: 8080, targetPort: 3000}
  - {name: h2c, port: 8081, targetPort: 3001, appProtocol: kubernetes.io/h2c}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc-abc, namespace: infra, labels: {kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{name: http, port: 3000}, {name: h2c, port: 3001}]
endpoints:
- addresses: [10.0.0.3]
- addresses: [10.0.0.2]
  conditions: {ready: false}
- addresses: [10.0.0.1]
  conditions: {ready: true}
---
apiVersion: v1
kind: Service
metadata: {name: app-svc, namespace: apps}
spec:
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: app-svc-1, namespace: apps, labels: {kubernetes.io/service-name: app-svc}}
addressType: IPv4
ports: [{port: 8000}]
endpoints:
- addresses: [10.1.0.1]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, generation: 2}
spec:
  gatewayClassName: strait
  listeners:
  - name: http
    port: 80
    protocol: HTTP
  - name: all
    port: 8080
    protocol: HTTP
    hostname: "*.example.com"
    allowedRoutes: {namespaces: {from: All}}
  - name: selected
    port: 8090
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {matchLabels: {team: apps}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: foreign, namespace: infra}
spec:
  gatewayClassName: other
  listeners: [{name: http, port: 80, protocol: HTTP}]
"#;

pub(crate) fn self_signed() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["*".to_string()]);
    let cert = match cert {
        Ok(c) => c,
        Err(e) => panic!("rcgen: {e}"),
    };
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

pub(crate) fn tls_secret(ns: &str, name: &str, crt: &str, key: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(name.into());
    s.type_ = Some("kubernetes.io/tls".into());
    s.data = Some(BTreeMap::from([
        ("tls.crt".to_string(), ByteString(crt.as_bytes().to_vec())),
        ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
    ]));
    s
}

fn load(extra: &str) -> Snapshot {
    let text = format!("{BASE}\n---\n{extra}");
    let report = strait_model::load_str(&text, Path::new("fixture.yaml"));
    assert!(
        report.errors.is_empty(),
        "fixture errors: {:?}",
        report.errors
    );
    report.snapshot
}

fn addresses() -> BTreeMap<ObjectRef, Vec<IpAddr>> {
    ["gw", "tls", "extra", "foreign", "edge"]
        .iter()
        .map(|n| {
            (
                ObjectRef {
                    namespace: "infra".into(),
                    name: n.to_string(),
                },
                vec!["127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))],
            )
        })
        .collect()
}

fn run(snapshot: &Snapshot) -> CompileOutput {
    let addrs = addresses();
    compile(&CompileInput {
        snapshot,
        controller_name: CONTROLLER_NAME,
        gateway_addresses: &addrs,
        now: NOW,
    })
}

pub(crate) fn status(out: &CompileOutput, kind: &str, ns: &str, name: &str) -> Option<Value> {
    out.statuses
        .iter()
        .find(|s| s.kind == kind && s.namespace == ns && s.name == name)
        .map(|s| s.status.value().unwrap())
}

/// `(status, reason)` of condition `ty` in a conditions array.
pub(crate) fn cond(conditions: &Value, ty: &str) -> Option<(String, String)> {
    conditions.as_array()?.iter().find_map(|c| {
        (c["type"] == ty).then(|| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

fn pair(s: &str, r: &str) -> Option<(String, String)> {
    Some((s.to_string(), r.to_string()))
}

pub(crate) fn listener<'a>(gw: &'a Value, name: &str) -> &'a Value {
    gw["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .unwrap_or(&Value::Null)
}

pub(crate) fn route_parent<'a>(route: &'a Value, gateway: &str) -> &'a Value {
    route["parents"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["parentRef"]["name"] == gateway))
        .unwrap_or(&Value::Null)
}

#[test]
fn gateway_class_status() {
    let out = run(&load(""));
    let st = &status(&out, "GatewayClass", "", "strait").expect("our class has a status");
    assert_eq!(
        cond(&st["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        cond(&st["conditions"], "SupportedVersion"),
        pair("True", "SupportedVersion")
    );
    for c in st["conditions"].as_array().into_iter().flatten() {
        assert_eq!(c["observedGeneration"], 3);
        assert_eq!(c["lastTransitionTime"], NOW);
    }
    let features: Vec<&str> = st["supportedFeatures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(features.contains(&"HTTPRoute") && features.contains(&"ReferenceGrant"));
    assert!(status(&out, "GatewayClass", "", "other").is_none());
    assert!(status(&out, "Gateway", "infra", "foreign").is_none());
}

/// `(name, yaml, gateway Accepted, gateway Programmed, [(listener, type, status, reason)])`.
type GatewayCase = (
    &'static str,
    &'static str,
    (&'static str, &'static str),
    (&'static str, &'static str),
    &'static [(&'static str, &'static str, &'static str, &'static str)],
);

#[test]
fn gateway_conditions_table() {
    let head = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: extra, namespace: infra, generation: 5}\nspec:\n  gatewayClassName: strait\n";
    let cases: &[GatewayCase] = &[
        (
            "valid",
            "  listeners: [{name: a, port: 80, protocol: HTTP}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[
                ("a", "Accepted", "True", "Accepted"),
                ("a", "Programmed", "True", "Programmed"),
                ("a", "ResolvedRefs", "True", "ResolvedRefs"),
                ("a", "Conflicted", "False", "NoConflicts"),
            ],
        ),
        (
            "only unsupported protocol",
            "  listeners: [{name: u, port: 80, protocol: UDP}]",
            ("False", "ListenersNotValid"),
            ("False", "ListenersNotValid"),
            &[("u", "Accepted", "False", "UnsupportedProtocol")],
        ),
        (
            "mixed protocols",
            "  listeners: [{name: a, port: 80, protocol: HTTP}, {name: u, port: 81, protocol: TCP}]",
            ("True", "ListenersNotValid"),
            ("True", "Programmed"),
            &[
                ("a", "Accepted", "True", "Accepted"),
                ("u", "Accepted", "False", "UnsupportedProtocol"),
            ],
        ),
        (
            "invalid route kind",
            "  listeners: [{name: a, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: Foo}]}}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[
                ("a", "ResolvedRefs", "False", "InvalidRouteKinds"),
                ("a", "Programmed", "False", "Invalid"),
            ],
        ),
        (
            "protocol conflict",
            "  listeners: [{name: a, port: 80, protocol: HTTP}, {name: b, port: 80, protocol: HTTPS, tls: {certificateRefs: [{name: good}]}}]",
            ("True", "ListenersNotValid"),
            ("True", "Programmed"),
            &[
                ("a", "Conflicted", "False", "NoConflicts"),
                ("b", "Accepted", "False", "ProtocolConflict"),
                ("b", "Conflicted", "True", "ProtocolConflict"),
            ],
        ),
        (
            "hostname conflict",
            "  listeners: [{name: a, port: 80, protocol: HTTP, hostname: x.com}, {name: b, port: 80, protocol: HTTP, hostname: x.com}]",
            ("True", "ListenersNotValid"),
            ("True", "Programmed"),
            &[("b", "Accepted", "False", "HostnameConflict")],
        ),
        (
            "missing parametersRef",
            "  infrastructure: {parametersRef: {group: '', kind: ConfigMap, name: nope}}\n  listeners: [{name: a, port: 80, protocol: HTTP}]",
            ("False", "InvalidParameters"),
            ("False", "Invalid"),
            &[],
        ),
        (
            "existing parametersRef",
            "  infrastructure: {parametersRef: {group: '', kind: ConfigMap, name: params}}\n  listeners: [{name: a, port: 80, protocol: HTTP}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[],
        ),
        (
            "unsupported address type",
            "  addresses: [{type: test/fake, value: x}]\n  listeners: [{name: a, port: 80, protocol: HTTP}]",
            ("False", "UnsupportedAddress"),
            ("False", "Invalid"),
            &[],
        ),
        (
            "unusable address",
            "  addresses: [{type: IPAddress, value: 192.0.2.1}]\n  listeners: [{name: a, port: 80, protocol: HTTP}]",
            ("True", "Accepted"),
            ("False", "AddressNotUsable"),
            &[],
        ),
        (
            "usable address",
            "  addresses: [{value: 127.0.0.1}]\n  listeners: [{name: a, port: 80, protocol: HTTP}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[],
        ),
        (
            "https valid certificate",
            "  listeners: [{name: s, port: 443, protocol: HTTPS, tls: {certificateRefs: [{kind: Secret, group: '', name: good}]}}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[
                ("s", "ResolvedRefs", "True", "ResolvedRefs"),
                ("s", "Programmed", "True", "Programmed"),
            ],
        ),
        (
            "https missing secret",
            "  listeners: [{name: s, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: nope}]}}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[
                ("s", "Accepted", "True", "Accepted"),
                ("s", "ResolvedRefs", "False", "InvalidCertificateRef"),
                ("s", "Programmed", "False", "Invalid"),
            ],
        ),
        (
            "https wrong group",
            "  listeners: [{name: s, port: 443, protocol: HTTPS, tls: {certificateRefs: [{group: wrong.io, kind: Secret, name: good}]}}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[("s", "ResolvedRefs", "False", "InvalidCertificateRef")],
        ),
        (
            "https wrong kind",
            "  listeners: [{name: s, port: 443, protocol: HTTPS, tls: {certificateRefs: [{kind: WrongKind, name: good}]}}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[("s", "ResolvedRefs", "False", "InvalidCertificateRef")],
        ),
        (
            "https malformed secret",
            "  listeners: [{name: s, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: malformed}]}}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[("s", "ResolvedRefs", "False", "InvalidCertificateRef")],
        ),
        (
            "https no certificateRefs",
            "  listeners: [{name: s, port: 443, protocol: HTTPS}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[("s", "ResolvedRefs", "False", "InvalidCertificateRef")],
        ),
        (
            "https cross-namespace without grant",
            "  listeners: [{name: s, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: apps-cert, namespace: apps}]}}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[("s", "ResolvedRefs", "False", "RefNotPermitted")],
        ),
        (
            "https cross-namespace with grant",
            "  listeners: [{name: s, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: granted, namespace: apps}]}}]",
            ("True", "Accepted"),
            ("True", "Programmed"),
            &[("s", "ResolvedRefs", "True", "ResolvedRefs")],
        ),
    ];
    let (crt, key) = self_signed();
    for (name, spec, accepted, programmed, listeners) in cases {
        let mut snapshot = load(&format!(
            "{head}{spec}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: params, namespace: infra}}\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: apps}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}}]\n  to: [{{group: '', kind: Secret, name: granted}}]\n"
        ));
        snapshot
            .secrets
            .push(tls_secret("infra", "good", &crt, &key).into());
        snapshot
            .secrets
            .push(tls_secret("infra", "malformed", "not a cert", "nor a key").into());
        snapshot
            .secrets
            .push(tls_secret("apps", "apps-cert", &crt, &key).into());
        snapshot
            .secrets
            .push(tls_secret("apps", "granted", &crt, &key).into());
        let out = run(&snapshot);
        let gw = &status(&out, "Gateway", "infra", "extra")
            .unwrap_or_else(|| panic!("{name}: no Gateway status"));
        assert_eq!(
            cond(&gw["conditions"], "Accepted"),
            pair(accepted.0, accepted.1),
            "{name}: Accepted"
        );
        assert_eq!(
            cond(&gw["conditions"], "Programmed"),
            pair(programmed.0, programmed.1),
            "{name}: Programmed"
        );
        for c in gw["conditions"].as_array().into_iter().flatten() {
            assert_eq!(c["observedGeneration"], 5, "{name}");
        }
        for (l, ty, st, reason) in *listeners {
            let ls = listener(gw, l);
            assert_eq!(
                cond(&ls["conditions"], ty),
                pair(st, reason),
                "{name}: listener {l} {ty}"
            );
        }
        let in_config = out
            .config
            .gateways
            .iter()
            .any(|g| g.gateway.name == "extra");
        assert_eq!(
            in_config,
            accepted.0 == "True" && programmed.0 == "True",
            "{name}: in config"
        );
    }
}

#[test]
fn listener_supported_kinds_and_addresses() {
    let out = run(&load(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: extra, namespace: infra}\nspec:\n  gatewayClassName: strait\n  listeners:\n  - {name: u, port: 80, protocol: UDP}\n  - {name: k, port: 81, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}, {kind: TLSRoute}]}}\n",
    ));
    let gw = &status(&out, "Gateway", "infra", "extra").expect("status");
    assert_eq!(listener(gw, "u")["supportedKinds"], serde_json::json!([]));
    assert_eq!(
        listener(gw, "k")["supportedKinds"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}])
    );
    assert_eq!(
        cond(&listener(gw, "k")["conditions"], "ResolvedRefs"),
        pair("False", "InvalidRouteKinds")
    );
    assert_eq!(
        gw["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": "127.0.0.1"}])
    );
}

/// `(name, route yaml, gateway, Accepted, ResolvedRefs, attachedRoutes per listener of gw)`.
type RouteCase = (
    &'static str,
    &'static str,
    (&'static str, &'static str),
    (&'static str, &'static str),
    [u64; 3],
);

#[test]
fn route_conditions_table() {
    let cases: &[RouteCase] = &[
        (
            "same namespace, all listeners that allow it",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [a.example.com]\n  rules: [{backendRefs: [{name: svc, port: 8080}]}]",
            ("True", "Accepted"),
            ("True", "ResolvedRefs"),
            [1, 1, 0],
        ),
        (
            "sectionName selects one listener",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, sectionName: http}]\n  rules: [{backendRefs: [{name: svc, port: 8080}]}]",
            ("True", "Accepted"),
            ("True", "ResolvedRefs"),
            [1, 0, 0],
        ),
        (
            "port selects one listener",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, port: 8080}]\n  rules: [{backendRefs: [{name: svc, port: 8080}]}]",
            ("True", "Accepted"),
            ("True", "ResolvedRefs"),
            [0, 1, 0],
        ),
        (
            "unknown sectionName",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, sectionName: nope}]",
            ("False", "NoMatchingParent"),
            ("True", "ResolvedRefs"),
            [0, 0, 0],
        ),
        (
            "port matches no listener",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, port: 9999}]",
            ("False", "NoMatchingParent"),
            ("True", "ResolvedRefs"),
            [0, 0, 0],
        ),
        (
            "sectionName and port disagree",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, sectionName: http, port: 8080}]",
            ("False", "NoMatchingParent"),
            ("True", "ResolvedRefs"),
            [0, 0, 0],
        ),
        (
            "other namespace: All and Selector listeners",
            "namespace: apps\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules: [{backendRefs: [{name: app-svc, port: 80}]}]",
            ("True", "Accepted"),
            ("True", "ResolvedRefs"),
            [0, 1, 1],
        ),
        (
            "other namespace on a Same listener",
            "namespace: apps\nspec:\n  parentRefs: [{name: gw, namespace: infra, sectionName: http}]",
            ("False", "NotAllowedByListeners"),
            ("True", "ResolvedRefs"),
            [0, 0, 0],
        ),
        (
            "hostnames do not intersect",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, sectionName: all}]\n  hostnames: [example.com, foo.net]",
            ("False", "NoMatchingListenerHostname"),
            ("True", "ResolvedRefs"),
            [0, 0, 0],
        ),
        (
            "invalid regex",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{matches: [{path: {type: RegularExpression, value: '/(['}}]}]",
            ("False", "UnsupportedValue"),
            ("True", "ResolvedRefs"),
            [0, 0, 0],
        ),
        (
            "unknown backend kind",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, sectionName: http}]\n  rules: [{backendRefs: [{group: example.com, kind: Thing, name: svc, port: 8080}]}]",
            ("True", "Accepted"),
            ("False", "InvalidKind"),
            [1, 0, 0],
        ),
        (
            "missing service",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, sectionName: http}]\n  rules: [{backendRefs: [{name: nope, port: 8080}]}]",
            ("True", "Accepted"),
            ("False", "BackendNotFound"),
            [1, 0, 0],
        ),
        (
            "cross-namespace backend without grant",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, sectionName: http}]\n  rules: [{backendRefs: [{name: app-svc, namespace: apps, port: 80}]}]",
            ("True", "Accepted"),
            ("False", "RefNotPermitted"),
            [1, 0, 0],
        ),
        (
            "cross-namespace mirror without grant",
            "namespace: infra\nspec:\n  parentRefs: [{name: gw, sectionName: http}]\n  rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: app-svc, namespace: apps, port: 80}}}], backendRefs: [{name: svc, port: 8080}]}]",
            ("True", "Accepted"),
            ("False", "RefNotPermitted"),
            [1, 0, 0],
        ),
    ];
    for (name, spec, accepted, resolved, attached) in cases {
        let out = run(&load(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n  generation: 7\n  {spec}\n"
        )));
        let ns = if spec.starts_with("namespace: apps") {
            "apps"
        } else {
            "infra"
        };
        let route =
            status(&out, "HTTPRoute", ns, "r").unwrap_or_else(|| panic!("{name}: no status"));
        let parent = route_parent(&route, "gw");
        assert_eq!(
            cond(&parent["conditions"], "Accepted"),
            pair(accepted.0, accepted.1),
            "{name}: Accepted"
        );
        assert_eq!(
            cond(&parent["conditions"], "ResolvedRefs"),
            pair(resolved.0, resolved.1),
            "{name}: ResolvedRefs"
        );
        assert_eq!(parent["controllerName"], CONTROLLER_NAME, "{name}");
        assert_eq!(
            parent["parentRef"]["group"], "gateway.networking.k8s.io",
            "{name}"
        );
        assert_eq!(parent["parentRef"]["kind"], "Gateway", "{name}");
        assert_eq!(parent["parentRef"]["namespace"], "infra", "{name}");
        for c in parent["conditions"].as_array().into_iter().flatten() {
            assert_eq!(c["observedGeneration"], 7, "{name}");
        }
        let gw = &status(&out, "Gateway", "infra", "gw").expect("gw status");
        let got: Vec<u64> = ["http", "all", "selected"]
            .iter()
            .map(|l| listener(gw, l)["attachedRoutes"].as_u64().unwrap_or(99))
            .collect();
        assert_eq!(got, attached.to_vec(), "{name}: attachedRoutes");
        // The config carries the route exactly where it is counted.
        let cfg = out
            .config
            .gateways
            .iter()
            .find(|g| g.gateway.name == "gw")
            .expect("gw config");
        let in_cfg: Vec<u64> = ["http", "all", "selected"]
            .iter()
            .map(|l| {
                cfg.ports
                    .iter()
                    .flat_map(|p| &p.listeners)
                    .find(|x| x.name == *l)
                    .map(|x| x.http_routes.len() as u64)
                    .unwrap_or(99)
            })
            .collect();
        assert_eq!(in_cfg, attached.to_vec(), "{name}: routes in config");
    }
}

#[test]
fn foreign_parents_get_no_entries() {
    let out = run(&load(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: infra}\nspec:\n  parentRefs: [{name: foreign}, {name: gw, sectionName: http}, {name: missing}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: only-foreign, namespace: infra}\nspec:\n  parentRefs: [{name: foreign}]\n",
    ));
    let route = &status(&out, "HTTPRoute", "infra", "r").expect("status");
    assert_eq!(route["parents"].as_array().map(Vec::len), Some(1));
    assert_eq!(route["parents"][0]["parentRef"]["sectionName"], "http");
    assert!(status(&out, "HTTPRoute", "infra", "only-foreign").is_none());
}

#[test]
fn cross_namespace_backend_with_grant_resolves() {
    let out = run(&load(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: infra}\nspec:\n  parentRefs: [{name: gw, sectionName: http}]\n  rules: [{backendRefs: [{name: app-svc, namespace: apps, port: 80}]}]\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: apps}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]\n  to: [{group: '', kind: Service}]\n",
    ));
    let route = &status(&out, "HTTPRoute", "infra", "r").expect("status");
    assert_eq!(
        cond(&route_parent(route, "gw")["conditions"], "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );
    let key = ClusterKey {
        namespace: "apps".into(),
        name: "app-svc".into(),
        port: 80,
    };
    let cluster = out.config.clusters.get(&key).expect("cluster");
    assert_eq!(
        cluster.endpoints,
        vec!["10.1.0.1:8000".parse().expect("addr")]
    );
}

#[test]
fn config_translation() {
    let out = run(&load(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra, creationTimestamp: "2025-01-02T03:04:05Z"}
spec:
  parentRefs: [{name: gw, sectionName: all}]
  hostnames: ["*.example.com", "a.b.example.com", "other.net"]
  rules:
  - matches:
    - method: GET
      headers: [{name: X, value: "1"}]
      queryParams: [{name: q, type: RegularExpression, value: "^a.*"}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: svc, port: 8081}, fraction: {numerator: 1, denominator: 4}}
    backendRefs:
    - {name: svc, port: 8080, weight: 3}
    - {name: nope, port: 80}
    timeouts: {request: 500ms, backendRequest: 0s}
    retry: {codes: [500, 502], attempts: 2, backoff: 100ms}
  - name: empty
  - filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}
    - type: URLRewrite
      urlRewrite: {hostname: h.example.com}
    - type: ExtensionRef
      extensionRef: {group: example.com, kind: Foo, name: bar}
"#,
    ));
    let gw = out
        .config
        .gateways
        .iter()
        .find(|g| g.gateway.name == "gw")
        .expect("gw");
    assert_eq!(
        gw.addresses,
        vec!["127.0.0.1".parse::<IpAddr>().expect("ip")]
    );
    let ports: Vec<u16> = gw.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![80, 8080, 8090]);
    assert!(
        gw.ports
            .iter()
            .all(|p| p.protocol == ListenerProtocol::Http)
    );
    let port = gw.ports.iter().find(|p| p.port == 8080).expect("port");
    let l = &port.listeners[0];
    assert_eq!(l.hostname.as_deref(), Some("*.example.com"));
    let route = &l.http_routes[0];
    assert_eq!(route.hostnames, vec!["*.example.com", "a.b.example.com"]);
    assert_eq!(route.creation_timestamp, "2025-01-02T03:04:05Z");
    assert_eq!(route.rules.len(), 3);

    let r0 = &route.rules[0];
    assert_eq!(r0.matches[0].method.as_deref(), Some("GET"));
    assert_eq!(r0.matches[0].path, PathMatch::Prefix("/".into()));
    assert_eq!(r0.matches[0].headers.len(), 1);
    assert_eq!(
        r0.timeouts.request,
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(r0.timeouts.backend_request, None);
    let retry = r0.retry.as_ref().expect("retry");
    assert_eq!((retry.codes.clone(), retry.attempts), (vec![500, 502], 2));
    assert_eq!(retry.backoff, Some(std::time::Duration::from_millis(100)));
    match &r0.filters[0] {
        HttpFilter::RequestMirror(m) => {
            assert!((m.percent - 25.0).abs() < 1e-9);
            assert!(matches!(&m.backend, BackendTarget::Cluster(k) if k.port == 8081));
        }
        other => panic!("unexpected filter {other:?}"),
    }
    assert_eq!(r0.backends.len(), 2);
    assert_eq!(r0.backends[0].weight, 3);
    assert!(
        matches!(&r0.backends[0].target, BackendTarget::Cluster(k) if k.name == "svc" && k.port == 8080)
    );
    assert_eq!(r0.backends[1].weight, 1);
    assert!(matches!(
        &r0.backends[1].target,
        BackendTarget::Invalid { .. }
    ));

    let r1 = &route.rules[1];
    assert_eq!(r1.name.as_deref(), Some("empty"));
    assert!(r1.backends.is_empty());
    assert_eq!(r1.matches[0].path, PathMatch::Prefix("/".into()));

    // An unsupported filter makes the whole rule answer 500.
    let r2 = &route.rules[2];
    assert!(r2.filters.is_empty());
    assert!(matches!(&r2.backends[..], [b] if matches!(b.target, BackendTarget::Invalid { .. })));

    let http = out
        .config
        .clusters
        .get(&ClusterKey {
            namespace: "infra".into(),
            name: "svc".into(),
            port: 8080,
        })
        .expect("cluster");
    assert_eq!(http.protocol, AppProtocol::Http1);
    assert_eq!(
        http.endpoints,
        vec![
            "10.0.0.1:3000".parse().expect("a"),
            "10.0.0.3:3000".parse().expect("a")
        ]
    );
    let h2c = out
        .config
        .clusters
        .get(&ClusterKey {
            namespace: "infra".into(),
            name: "svc".into(),
            port: 8081,
        })
        .expect("mirror cluster");
    assert_eq!(h2c.protocol, AppProtocol::H2c);
    assert_eq!(h2c.endpoints[0].port(), 3001);
}

#[test]
fn output_is_deterministic() {
    let extra = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: b, namespace: infra}\nspec:\n  parentRefs: [{name: gw}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a, namespace: infra}\nspec:\n  parentRefs: [{name: gw}]\n";
    let snapshot = load(extra);
    let mut reversed = snapshot.clone();
    reversed.http_routes.reverse();
    reversed.gateways.reverse();
    reversed.services.reverse();
    let (a, b) = (run(&snapshot), run(&reversed));
    assert_eq!(a.config, b.config);
    assert_eq!(a.statuses, b.statuses);
    let gw = a
        .config
        .gateways
        .iter()
        .find(|g| g.gateway.name == "gw")
        .expect("gw");
    let names: Vec<&str> = gw.ports[0].listeners[0]
        .http_routes
        .iter()
        .map(|r| r.route.name.as_str())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
}

#[test]
fn durations() {
    let cases = [
        ("500ms", Some(500)),
        ("1s", Some(1000)),
        ("1m1s", Some(61_000)),
        ("0s", None),
    ];
    for (s, want) in cases {
        let got = crate::http_route::parse_duration(s).expect("valid");
        assert_eq!(got, want.map(std::time::Duration::from_millis), "{s}");
    }
    assert!(crate::http_route::parse_duration("soon").is_err());
}

#[test]
fn gateway_class_invalid_parameters() {
    let out = run(&load(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: bad}\nspec:\n  controllerName: strait.dev/gateway-controller\n  parametersRef: {group: example.com, kind: Params, name: p}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: extra, namespace: infra}\nspec:\n  gatewayClassName: bad\n  listeners: [{name: a, port: 80, protocol: HTTP}]\n",
    ));
    let st = &status(&out, "GatewayClass", "", "bad").expect("status");
    assert_eq!(
        cond(&st["conditions"], "Accepted"),
        pair("False", "InvalidParameters")
    );
    // Gateways of a class we did not accept are left alone.
    assert!(status(&out, "Gateway", "infra", "extra").is_none());
}

/// Provisioning parameters: the class's ConfigMap under each Gateway's, the waypoint class's for
/// every waypoint, and malformed ones reject their object naming the ConfigMap and the key.
#[test]
fn proxy_parameters_come_from_class_and_gateway_config_maps() {
    let out = run(&load(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: class-params, namespace: strait-system}
data: {workers: "2", replicas: "3", limits.cpu: "4"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: big, namespace: infra}
data: {workers: auto, requests.cpu: "2"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: typo, namespace: infra}
data: {worker: "2"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: waypoint-params, namespace: strait-system}
data: {workers: "3"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sized}
spec:
  controllerName: strait.dev/gateway-controller
  parametersRef: {group: "", kind: ConfigMap, name: class-params, namespace: strait-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait-waypoint}
spec:
  controllerName: strait.dev/gateway-controller
  parametersRef: {group: "", kind: ConfigMap, name: waypoint-params, namespace: strait-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: strait-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: sized-edge, namespace: infra}
spec:
  gatewayClassName: strait-waypoint
  infrastructure: {parametersRef: {group: "", kind: ConfigMap, name: big}}
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: own, namespace: infra}
spec:
  gatewayClassName: sized
  infrastructure: {parametersRef: {group: "", kind: ConfigMap, name: big}}
  listeners: [{name: a, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: class-only, namespace: infra}
spec:
  gatewayClassName: sized
  listeners: [{name: a, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: typo, namespace: infra}
spec:
  gatewayClassName: sized
  infrastructure: {parametersRef: {group: "", kind: ConfigMap, name: typo}}
  listeners: [{name: a, port: 80, protocol: HTTP}]
"#,
    ));
    let key = |name: &str| ObjectRef {
        namespace: "infra".into(),
        name: name.into(),
    };
    let gateways = &out.provisioning.gateways;
    let own = &gateways[&key("own")];
    assert_eq!(own.workers, Some(strait_config::Workers::PerCpu));
    assert_eq!(own.replicas, Some(3), "the class's replicas");
    assert_eq!(own.requests_cpu.as_str(), "2");
    assert_eq!(own.limits_cpu.as_ref().map(|q| q.as_str()), Some("4"));
    let class_only = &gateways[&key("class-only")];
    assert_eq!(class_only.workers, "2".parse().ok());
    assert_eq!(class_only.requests_cpu.as_str(), "100m");
    assert!(
        !gateways.contains_key(&key("typo")),
        "a rejected Gateway is not provisioned"
    );
    let st = &status(&out, "Gateway", "infra", "typo").expect("status");
    assert_eq!(
        cond(&st["conditions"], "Accepted"),
        pair("False", "InvalidParameters")
    );
    let message = st["conditions"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "Gateway infra/typo: parametersRef ConfigMap infra/typo: unknown key `worker`"
        ),
        "{message}"
    );
    let waypoints = &out.provisioning.waypoints;
    assert_eq!(
        waypoints[&key("edge")].workers,
        "3".parse().ok(),
        "the class's"
    );
    assert_eq!(
        waypoints[&key("sized-edge")].workers,
        Some(strait_config::Workers::PerCpu),
        "its own over the class's"
    );
}

const MESH_ROUTE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {strait.dev/mesh: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 80}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
"#;

/// A Gateway of the waypoint class declares a waypoint: provisioned as one (never as an ingress
/// Gateway), with a status of its own; its listeners can only be HBONE on 15008.
#[test]
fn waypoint_class_gateways_are_waypoints_not_ingress_gateways() {
    let out = run(&load(&format!(
        r#"{MESH_ROUTE}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: strait-waypoint}}
spec: {{controllerName: strait.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: strait-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: http, namespace: infra}}
spec:
  gatewayClassName: strait-waypoint
  listeners: [{{name: web, port: 80, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-waypoint, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: http-1, namespace: infra, labels: {{gateway.networking.k8s.io/gateway-name: http}}}}
spec: {{containers: [{{name: strait, image: strait}}]}}
status: {{phase: Running, podIP: 198.18.0.9}}
"#
    )));
    let key = |namespace: &str, name: &str| ObjectRef {
        namespace: namespace.into(),
        name: name.into(),
    };
    let waypoints: Vec<&ObjectRef> = out.provisioning.waypoints.keys().collect();
    assert_eq!(
        waypoints,
        [
            &key("infra", "edge"),
            &key("infra", "http"),
            &key("shop", "waypoint")
        ],
        "declared waypoints, and the one the route's Service is bound to"
    );
    assert!(
        !out.provisioning
            .gateways
            .contains_key(&key("infra", "edge"))
            && !out
                .provisioning
                .gateways
                .contains_key(&key("infra", "http")),
        "no waypoint is provisioned as an ingress Gateway"
    );
    assert!(
        out.config.gateways.iter().all(|g| g.gateway.name != "http"),
        "nor served as one"
    );

    let edge = &status(&out, "Gateway", "infra", "edge").expect("status");
    assert_eq!(
        cond(&edge["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(
        cond(&edge["conditions"], "Programmed"),
        pair("False", "Pending"),
        "no waypoint pod runs yet"
    );
    assert_eq!(
        edge["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": "127.0.0.1"}]),
        "the address of its Service"
    );
    let mesh = listener(edge, "mesh");
    assert_eq!(
        cond(&mesh["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    assert_eq!(mesh["supportedKinds"], serde_json::json!([]));

    let http = &status(&out, "Gateway", "infra", "http").expect("status");
    assert_eq!(
        cond(&http["conditions"], "Accepted"),
        pair("True", "ListenersNotValid")
    );
    assert_eq!(
        cond(&http["conditions"], "Programmed"),
        pair("True", "Programmed"),
        "its pod runs"
    );
    assert_eq!(
        cond(&listener(http, "web")["conditions"], "Accepted"),
        pair("False", "UnsupportedProtocol")
    );

    let route = &status(&out, "HTTPRoute", "infra", "to-waypoint").expect("status");
    let entry = route_parent(route, "edge");
    assert_eq!(
        cond(&entry["conditions"], "Accepted"),
        pair("False", "NotAllowedByListeners"),
        "a route cannot attach to a waypoint Gateway: {entry}"
    );
    assert_eq!(
        entry["parentRef"],
        serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "edge"})
    );
}

#[test]
fn a_waypoint_class_with_invalid_parameters_leaves_waypoints_on_the_defaults() {
    let out = run(&load(&format!(
        r#"{MESH_ROUTE}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: waypoint-params, namespace: strait-system}}
data: {{workers: "3", requests.memory: 1Gi, limits.memory: 256Mi}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: strait-waypoint}}
spec:
  controllerName: strait.dev/gateway-controller
  parametersRef: {{group: "", kind: ConfigMap, name: waypoint-params, namespace: strait-system}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: strait-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
"#
    )));
    let st = &status(&out, "GatewayClass", "", "strait-waypoint").expect("status");
    assert_eq!(
        cond(&st["conditions"], "Accepted"),
        pair("False", "InvalidParameters")
    );
    assert_eq!(
        st["conditions"][0]["message"],
        "GatewayClass strait-waypoint: parameters: requests.memory `1Gi` is above limits.memory `256Mi`"
    );
    let bound = ObjectRef {
        namespace: "shop".into(),
        name: "waypoint".into(),
    };
    assert_eq!(
        out.provisioning.waypoints,
        BTreeMap::from([(bound, crate::parameters::ProxyParameters::default())]),
        "the bound waypoint still runs, on the defaults; the declared one waits for its class"
    );
    assert!(status(&out, "Gateway", "infra", "edge").is_none());
}

#[test]
fn frontend_client_validation() {
    let (crt, key) = self_signed();
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: tls, namespace: infra}\nspec:\n  gatewayClassName: strait\n  tls:\n    frontend:\n      default:\n        validation:\n          mode: AllowInsecureFallback\n          caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]\n      perPort:\n      - {port: 8443, tls: {validation: {caCertificateRefs: [{group: '', kind: ConfigMap, name: missing}]}}}\n      - {port: 9443, tls: {validation: {caCertificateRefs: [{group: '', kind: Service, name: svc}]}}}\n  listeners:\n  - {name: ok, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: good}]}}\n  - {name: missing, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: good}]}}\n  - {name: kind, port: 9443, protocol: HTTPS, tls: {certificateRefs: [{name: good}]}}\n  - {name: plain, port: 80, protocol: HTTP}\n";
    let mut snapshot = load(gateway);
    snapshot
        .secrets
        .push(tls_secret("infra", "good", &crt, &key).into());
    let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
    cm.metadata.namespace = Some("infra".into());
    cm.metadata.name = Some("ca".into());
    cm.data = Some(BTreeMap::from([("ca.crt".to_string(), crt.clone())]));
    snapshot.config_maps.push(cm.into());
    let out = run(&snapshot);
    let gw = &status(&out, "Gateway", "infra", "tls").expect("status");
    assert_eq!(
        cond(&gw["conditions"], "InsecureFrontendValidationMode"),
        pair("True", "ConfigurationChanged")
    );
    let table = [
        ("ok", "Accepted", "True", "Accepted"),
        ("ok", "ResolvedRefs", "True", "ResolvedRefs"),
        ("missing", "Accepted", "False", "NoValidCACertificate"),
        (
            "missing",
            "ResolvedRefs",
            "False",
            "InvalidCACertificateRef",
        ),
        ("missing", "Programmed", "False", "Invalid"),
        ("kind", "Accepted", "False", "NoValidCACertificate"),
        ("kind", "ResolvedRefs", "False", "InvalidCACertificateKind"),
        ("plain", "Accepted", "True", "Accepted"),
    ];
    for (l, ty, st, reason) in table {
        assert_eq!(
            cond(&listener(gw, l)["conditions"], ty),
            pair(st, reason),
            "listener {l} {ty}"
        );
    }
    let cfg = out
        .config
        .gateways
        .iter()
        .find(|g| g.gateway.name == "tls")
        .expect("config");
    let ports: Vec<u16> = cfg.ports.iter().map(|p| p.port).collect();
    assert_eq!(
        ports,
        vec![80, 443],
        "listeners without a valid CA are not served"
    );
    let https = cfg.ports.iter().find(|p| p.port == 443).expect("443");
    assert_eq!(https.protocol, ListenerProtocol::Https);
    let tls = https.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.certificates.len(), 1);
    let cv = tls.client_validation.as_ref().expect("client validation");
    assert!(cv.allow_insecure_fallback);
    assert_eq!(cv.ca_certificates_pem, vec![crt]);
}

#[test]
fn backend_client_certificate_condition() {
    let (crt, key) = self_signed();
    let cases = [
        (
            "{group: '', kind: Secret, name: good}",
            "True",
            "ResolvedRefs",
        ),
        (
            "{group: '', kind: Secret, name: nope}",
            "False",
            "InvalidClientCertificateRef",
        ),
        (
            "{group: '', kind: Thing, name: good}",
            "False",
            "InvalidClientCertificateRef",
        ),
        ("{name: good, namespace: apps}", "False", "RefNotPermitted"),
    ];
    for (r, st, reason) in cases {
        let mut snapshot = load(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: extra, namespace: infra}}\nspec:\n  gatewayClassName: strait\n  tls: {{backend: {{clientCertificateRef: {r}}}}}\n  listeners: [{{name: a, port: 80, protocol: HTTP}}]\n"
        ));
        snapshot
            .secrets
            .push(tls_secret("infra", "good", &crt, &key).into());
        snapshot
            .secrets
            .push(tls_secret("apps", "good", &crt, &key).into());
        let out = run(&snapshot);
        let gw = &status(&out, "Gateway", "infra", "extra").expect("status");
        assert_eq!(
            cond(&gw["conditions"], "ResolvedRefs"),
            pair(st, reason),
            "{r}"
        );
    }
}

#[test]
fn grpc_route_translation() {
    let out = run(&load(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches:
    - method: {service: pkg.Svc, method: Echo}
    - method: {service: pkg.Svc}
    - method: {method: Echo}
    - method: {type: RegularExpression, service: "pkg\\..*", method: "E.*"}
      headers: [{name: x-v, value: "1"}]
    backendRefs: [{name: svc, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: bad, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{method: {type: RegularExpression, service: "(["}}]
"#,
    ));
    let st = &status(&out, "GRPCRoute", "infra", "g").expect("status");
    assert_eq!(
        cond(&route_parent(st, "gw")["conditions"], "Accepted"),
        pair("True", "Accepted")
    );
    let bad = &status(&out, "GRPCRoute", "infra", "bad").expect("status");
    assert_eq!(
        cond(&route_parent(bad, "gw")["conditions"], "Accepted"),
        pair("False", "UnsupportedValue")
    );
    let gw = &status(&out, "Gateway", "infra", "gw").expect("gw");
    assert_eq!(listener(gw, "http")["attachedRoutes"], 1);
    assert!(
        listener(gw, "http")["supportedKinds"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k["kind"] == "GRPCRoute"))
    );
    let cfg = out
        .config
        .gateways
        .iter()
        .find(|g| g.gateway.name == "gw")
        .expect("gw");
    let route = &cfg.ports[0].listeners[0].http_routes[0];
    assert_eq!(route.route.kind, "GRPCRoute");
    let paths: Vec<&PathMatch> = route.rules[0].matches.iter().map(|m| &m.path).collect();
    assert_eq!(
        paths,
        vec![
            &PathMatch::Exact("/pkg.Svc/Echo".into()),
            &PathMatch::Prefix("/pkg.Svc".into()),
            &PathMatch::RegularExpression("/[^/]+/Echo".into()),
            &PathMatch::RegularExpression("/(?:pkg\\..*)/(?:E.*)".into()),
        ]
    );
    assert_eq!(route.rules[0].matches[3].headers.len(), 1);
    // gRPC backends always speak HTTP/2.
    let cluster = out
        .config
        .clusters
        .get(&ClusterKey {
            namespace: "infra".into(),
            name: "svc".into(),
            port: 8080,
        })
        .expect("cluster");
    assert_eq!(cluster.protocol, AppProtocol::H2c);
}

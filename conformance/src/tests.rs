use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::client::Received;
use crate::expect::{self, Sent};
use crate::spec::{self, Check, Expect, RedirectExpect};
use crate::status::{self, CheckState, World};

fn corpus() -> PathBuf {
    std::env::var_os("STRAIT_CONFORMANCE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance")
        })
}

#[test]
fn every_cases_yaml_in_the_corpus_parses() {
    let dirs =
        crate::test_dirs(&corpus()).expect("corpus directory (set STRAIT_CONFORMANCE_CORPUS)");
    assert!(dirs.len() >= 150, "only {} test folders found", dirs.len());
    let mut cases = 0;
    let mut errors = Vec::new();
    for dir in &dirs {
        let s = match spec::load(dir) {
            Ok(s) => s,
            Err(e) => {
                errors.push(
                    format!("{e:#}")
                        .lines()
                        .take(8)
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
                continue;
            }
        };
        let folder = dir.file_name().unwrap().to_string_lossy();
        assert_eq!(s.test, folder, "test name of {}", dir.display());
        assert!(!s.profile.is_empty(), "{folder}: no profile");
        assert!(!s.features.is_empty(), "{folder}: no features");
        for c in &s.status_expectations {
            assert!(!c.check.is_empty(), "{folder}: status check without kind");
        }
        cases += s.cases.len();
    }
    assert!(
        errors.is_empty(),
        "{} files fail to parse:\n{}",
        errors.len(),
        errors.join("\n\n")
    );
    assert_eq!(cases, 532, "INDEX.md counts 532 case entries");
}

#[test]
fn every_gateway_http_test_is_runnable_or_honestly_skipped() {
    let features: Vec<String> = crate::runner::SUPPORTED_FEATURES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut runnable = 0;
    let mut skipped = Vec::new();
    for dir in crate::test_dirs(&corpus()).unwrap() {
        let s = spec::load(&dir).unwrap();
        if s.profile != "GATEWAY-HTTP" {
            continue;
        }
        match crate::runner::skip_reason(&s, &features) {
            None => runnable += 1,
            Some(reason) => skipped.push(format!("{}: {reason}", s.test)),
        }
    }
    // All 37 core tests plus the HTTP extended ones Strait supports (not: infrastructure
    // propagation, TLSRoute, and BackendTLSPolicy whose actions are prose only).
    assert!(
        runnable >= 92,
        "only {runnable} GATEWAY-HTTP tests runnable; skipped:\n{}",
        skipped.join("\n")
    );
}

#[test]
fn parses_typed_fields() {
    let s = spec::parse(
        r#"
test: X
profile: GATEWAY-HTTP
features: [Gateway, HTTPRoute]
gateway: {name: g, namespace: ns, first_listener_port: 80}
status_expectations:
  - check: gateway_listeners
    gateway: {name: g, namespace: ns}
    exact: true
    listeners: [{name: http, supportedKinds: [HTTPRoute], attachedRoutes: 1, conditions: [{type: Accepted, status: "True"}]}]
actions:
  - after_case: 1
    delete: {kind: ReferenceGrant, name: rg, namespace: ns}
cases:
  - request: {path: /, headers: {Version: "2"}}
    expect: {status: [500, 502], redirect: {port: 8443}}
"#,
        "inline",
    )
    .unwrap();
    assert_eq!(s.gateway.unwrap().first_listener_port, Some(80));
    assert_eq!(
        s.status_expectations[0].listeners[0].attached_routes,
        Some(1)
    );
    assert_eq!(s.actions[0].after_case, Some(1));
    assert_eq!(
        s.cases[0].expect.status.as_ref().unwrap().codes(),
        vec![500, 502]
    );
    assert_eq!(
        s.cases[0].expect.redirect.as_ref().unwrap().port,
        Some(8443)
    );
    assert_eq!(s.cases[0].request.headers["Version"], "2");
}

#[test]
fn distribution_checker() {
    let weights: BTreeMap<String, f64> = [
        ("v1".to_string(), 0.7),
        ("v2".to_string(), 0.3),
        ("v3".to_string(), 0.0),
    ]
    .into();
    let counts = |a: usize, b: usize, c: usize| -> BTreeMap<String, usize> {
        [("v1", a), ("v2", b), ("v3", c)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    };
    let table = [
        (counts(350, 150, 0), true),
        (counts(370, 130, 0), true),
        (counts(380, 120, 0), false),
        (counts(349, 150, 1), false),
        (counts(500, 0, 0), false),
        (counts(0, 0, 0), false),
    ];
    for (c, ok) in table {
        assert_eq!(
            expect::check_distribution(&c, &weights, 0.05).is_ok(),
            ok,
            "{c:?}"
        );
    }
    let mut stray = counts(350, 150, 0);
    stray.insert("other".into(), 1);
    assert!(expect::check_distribution(&stray, &weights, 0.05).is_err());
    assert_eq!(
        expect::backend_of_pod("infra-backend-v1-6b8c7d5f4a-x2z9q"),
        "infra-backend-v1"
    );
}

#[test]
fn redirect_location_comparison() {
    let r = |scheme: Option<&str>, host: Option<&str>, port: Option<u16>, path: Option<&str>| {
        RedirectExpect {
            status: None,
            scheme: scheme.map(String::from),
            host: host.map(String::from),
            port,
            path: path.map(String::from),
        }
    };
    let table: Vec<(RedirectExpect, &str, &str, bool)> = vec![
        (
            r(None, Some("example.org"), None, None),
            "http://example.org/x",
            "/x",
            true,
        ),
        (
            r(None, Some("example.org"), None, None),
            "http://example.org:80/x",
            "/x",
            true,
        ),
        (
            r(None, Some("example.org"), None, None),
            "http://example.org:8080/x",
            "/x",
            false,
        ),
        (
            r(None, Some("example.org"), None, None),
            "http://other.org/x",
            "/x",
            false,
        ),
        (r(None, None, None, None), "http://a/x", "/x?q=1", true),
        (r(None, None, None, None), "http://a/y", "/x", false),
        (
            r(Some("https"), None, None, None),
            "https://a/x",
            "/x",
            true,
        ),
        (
            r(Some("https"), None, None, None),
            "https://a:443/x",
            "/x",
            true,
        ),
        (
            r(Some("https"), None, None, None),
            "http://a/x",
            "/x",
            false,
        ),
        (
            r(None, None, Some(8083), None),
            "http://a:8083/x",
            "/x",
            true,
        ),
        (r(None, None, Some(8083), None), "http://a/x", "/x", false),
        (
            r(None, None, None, Some("/new")),
            "http://a/new?x=1",
            "/old",
            true,
        ),
        (r(None, None, None, Some("/new")), "/new", "/old", true),
    ];
    for (want, location, req_path, ok) in table {
        assert_eq!(
            expect::check_redirect(&want, "http", req_path, location).is_ok(),
            ok,
            "{location} vs {want:?}"
        );
    }
    let loc = expect::parse_location("https://[::1]:8443/p?q");
    assert_eq!(loc.host.as_deref(), Some("[::1]"));
    assert_eq!(loc.port, Some(8443));
    assert_eq!(loc.path, "/p");
}

fn response(status: u16, body: Value, headers: &[(&str, &str)]) -> Received {
    let mut r = Received {
        status,
        body: serde_json::to_vec(&body).unwrap().into(),
        ..Received::default()
    };
    r.headers
        .insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        r.headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

#[test]
fn response_expectations() {
    let echo = json!({"path": "/p?x=1", "host": "h.com", "method": "GET", "namespace": "ns",
        "pod": "infra-backend-v1-abc-def", "headers": {"X-A": ["1", "2"], "Version": ["2"]}});
    let sent = Sent {
        method: "GET".into(),
        path: "/p?x=1".into(),
        host: Some("h.com".into()),
        headers: [("version".to_string(), "2".to_string())].into(),
        scheme: "http".into(),
        request_id: None,
    };
    let e = |yaml: &str| -> Expect { serde_saphyr::from_str(yaml).unwrap() };
    let ok = response(200, echo.clone(), &[("x-resp", "a"), ("x-resp", "b")]);
    let table = [
        (
            "{status: 200, backend: infra-backend-v1, namespace: ns}",
            true,
        ),
        (
            "{status: 200, backend: infra-backend-v2, namespace: ns}",
            false,
        ),
        ("{status: 200}", false),
        ("{status: 404, namespace: ns}", false),
        (
            "{status: 200, namespace: ns, request_seen_by_backend: {path: '/p?x=1', headers: {x-a: '1,2'}}}",
            true,
        ),
        (
            "{status: 200, namespace: ns, request_seen_by_backend: {path: '/p?x=1', absent_headers: [X-A]}}",
            false,
        ),
        (
            "{status: 200, namespace: ns, request_seen_by_backend: {path: '/p'}}",
            false,
        ),
        (
            "{status: 200, namespace: ns, response: {headers: {X-Resp: 'a,b'}}}",
            true,
        ),
        (
            "{status: 200, namespace: ns, response: {absent_headers: [x-resp]}}",
            false,
        ),
        (
            "{status: 200, namespace: ns, response: {headers_one_of: {x-resp: ['a, b'], }, ignore_whitespace: true}}",
            true,
        ),
    ];
    for (yaml, want) in table {
        assert_eq!(expect::check(&e(yaml), &sent, &ok).is_ok(), want, "{yaml}");
    }
    // Timeouts: 408 and 504 are interchangeable; body checks only on 200/204.
    let timeout = response(408, json!({}), &[]);
    assert!(expect::check(&e("{status: 504}"), &sent, &timeout).is_ok());
    assert!(expect::check(&e("{status: 500}"), &sent, &timeout).is_err());
    // Non-JSON answers count as answered by the gateway (empty namespace).
    let mut plain = response(200, json!({}), &[]);
    plain
        .headers
        .insert("content-type", "text/plain".parse().unwrap());
    plain.body = "hi".into();
    let gw = e("{status: 200, answered_by_gateway: true, request_seen_by_backend: {}}");
    assert!(expect::check(&gw, &sent, &plain).is_ok());
    assert!(expect::check(&e("{status: 200, namespace: ns}"), &sent, &plain).is_err());
}

struct FakeWorld(BTreeMap<(String, String, String), Value>);

impl World for FakeWorld {
    fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.0
            .get(&(kind.into(), namespace.into(), name.into()))
            .cloned()
    }
    fn names(&self, kind: &str) -> Vec<(String, String)> {
        self.0
            .keys()
            .filter(|k| k.0 == kind)
            .map(|k| (k.1.clone(), k.2.clone()))
            .collect()
    }
}

fn world(route_parent_accepted: &str, route_gen_observed: i64) -> FakeWorld {
    let cond = |t: &str, s: &str, r: &str, g: i64| json!({"type": t, "status": s, "reason": r, "observedGeneration": g});
    let gw = json!({
        "metadata": {"name": "g", "namespace": "ns", "generation": 1},
        "spec": {"listeners": [{"name": "http", "port": 80}]},
        "status": {
            "addresses": [{"type": "IPAddress", "value": "127.100.0.1"}],
            "conditions": [cond("Accepted", "True", "Accepted", 1), cond("Programmed", "True", "Programmed", 1)],
            "listeners": [{"name": "http", "attachedRoutes": 1,
                "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}, {"kind": "GRPCRoute"}],
                "conditions": [cond("Accepted", "True", "Accepted", 1), cond("ResolvedRefs", "True", "ResolvedRefs", 1), cond("Programmed", "True", "Programmed", 1)]}]
        }
    });
    let route = json!({
        "metadata": {"name": "r", "namespace": "ns", "generation": 2},
        "status": {"parents": [{
            "controllerName": status::CONTROLLER_NAME,
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g"},
            "conditions": [cond("Accepted", route_parent_accepted, "Accepted", route_gen_observed),
                           cond("ResolvedRefs", "True", "ResolvedRefs", route_gen_observed)]
        }]}
    });
    FakeWorld(
        [
            (("Gateway".into(), "ns".into(), "g".into()), gw),
            (("HTTPRoute".into(), "ns".into(), "r".into()), route),
        ]
        .into(),
    )
}

#[test]
fn status_checks_against_hand_written_status() {
    let check = |yaml: &str| -> Check { serde_saphyr::from_str(yaml).unwrap() };
    let accepted = "{check: gateway_and_routes_accepted, gateway: {name: g, namespace: ns}, routes: [{kind: HTTPRoute, name: r, namespace: ns}]}";
    let table = [
        (accepted, "True", 2, true),
        (accepted, "False", 2, false),
        // Stale observedGeneration on the route's parent conditions.
        (accepted, "True", 1, false),
        (
            "{check: route_condition, route: {kind: HTTPRoute, name: r, namespace: ns}, parent: {kind: Gateway, name: g, namespace: ns}, condition: {type: ResolvedRefs, status: 'True', reason: ResolvedRefs}}",
            "True",
            2,
            true,
        ),
        (
            "{check: route_condition, route: {kind: HTTPRoute, name: r, namespace: ns}, parent: {kind: Gateway, name: g, namespace: ns}, condition: {type: ResolvedRefs, status: 'False'}}",
            "True",
            2,
            false,
        ),
        (
            "{check: gateway_listeners, gateway: {name: g, namespace: ns}, exact: true, listeners: [{name: http, supportedKinds: [HTTPRoute, GRPCRoute], attachedRoutes: 1, conditions: [{type: Accepted, status: 'True'}]}]}",
            "True",
            2,
            true,
        ),
        (
            "{check: gateway_listeners, gateway: {name: g, namespace: ns}, exact: true, listeners: [{name: http, supportedKinds: [], attachedRoutes: 1, conditions: []}]}",
            "True",
            2,
            false,
        ),
        (
            "{check: gateway_listeners, gateway: {name: g, namespace: ns}, exact: true, listeners: [{name: http, attachedRoutes: 2, conditions: []}]}",
            "True",
            2,
            false,
        ),
        (
            "{check: gateway_condition, gateway: {name: g, namespace: ns}, condition: {type: Programmed, status: 'True'}}",
            "True",
            2,
            true,
        ),
        (
            "{check: gateway_condition, gateway: {name: g, namespace: ns}, condition: {type: Programmed, status: 'False'}}",
            "True",
            2,
            false,
        ),
        (
            "{check: route_parents, route: {kind: HTTPRoute, name: r, namespace: ns}, namespace_required: false, contains: [{parentRef: {group: gateway.networking.k8s.io, kind: Gateway, name: g, namespace: ns}, controllerName: ours, conditions: [{type: Accepted, status: 'True'}]}]}",
            "True",
            2,
            true,
        ),
        (
            "{check: route_parents, route: {kind: HTTPRoute, name: r, namespace: ns}, namespace_required: true, contains: [{parentRef: {group: gateway.networking.k8s.io, kind: Gateway, name: g, namespace: ns}, controllerName: ours, conditions: [{type: Accepted, status: 'True'}]}]}",
            "True",
            2,
            false,
        ),
        (
            "{check: observed_generation_latest, object: {kind: HTTPRoute, name: r, namespace: ns}}",
            "True",
            2,
            true,
        ),
        (
            "{check: observed_generation_latest, object: {kind: HTTPRoute, name: r, namespace: ns}}",
            "True",
            1,
            false,
        ),
        (
            "{check: spec_field_count, object: {kind: Gateway, name: g, namespace: ns}, field: spec.listeners, count: 1}",
            "True",
            2,
            true,
        ),
        (
            "{check: spec_field_count, object: {kind: Gateway, name: g, namespace: ns}, field: spec.listeners, count: 2}",
            "True",
            2,
            false,
        ),
        (
            "{check: namespaces_ready, namespaces: [ns]}",
            "True",
            2,
            true,
        ),
        (
            "{check: gateway_addresses, gateway: {name: g, namespace: ns}, min: 1}",
            "True",
            2,
            true,
        ),
    ];
    for (yaml, accepted_status, observed, want) in table {
        let w = world(accepted_status, observed);
        let got = status::evaluate(&check(yaml), &w, &mut CheckState::default());
        assert_eq!(got.is_ok(), want, "{yaml}: {got:?}");
    }
    // No accepted parents: an entry with Accepted=False passes at once.
    let no_parents = check(
        "{check: route_no_accepted_parents, route: {kind: HTTPRoute, name: r, namespace: ns}}",
    );
    assert!(status::evaluate(&no_parents, &world("False", 2), &mut CheckState::default()).is_ok());
    assert!(status::evaluate(&no_parents, &world("True", 2), &mut CheckState::default()).is_err());
    // generation_changed compares with the generation read before the action.
    let changed = check(
        "{check: observed_generation_latest, object: {kind: HTTPRoute, name: r, namespace: ns}, generation_changed: true}",
    );
    let mut same = CheckState {
        generation_before: Some(2),
        ..CheckState::default()
    };
    assert!(status::evaluate(&changed, &world("True", 2), &mut same).is_err());
    let mut older = CheckState {
        generation_before: Some(1),
        ..CheckState::default()
    };
    assert!(status::evaluate(&changed, &world("True", 2), &mut older).is_ok());
}

#[test]
fn actions_edit_manifests() {
    let mut docs = vec![
        json!({"kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "ns"},
               "spec": {"rules": [{"backendRefs": [{"name": "a"}]}]}}),
        json!({"kind": "Gateway", "metadata": {"name": "g", "namespace": "ns"},
               "spec": {"listeners": [{"name": "http"}, {"name": "https"}]}}),
        json!({"kind": "ReferenceGrant", "metadata": {"name": "rg", "namespace": "ns"}}),
    ];
    let cluster = crate::cluster::Cluster::default();
    let a = |yaml: &str| -> spec::Action { serde_saphyr::from_str(yaml).unwrap() };
    crate::runner::apply_action(&a("{patch: {kind: HTTPRoute, name: r, namespace: ns, set: {'spec.rules[0].backendRefs[0].name': b}}}"), &mut docs, &cluster).unwrap();
    assert_eq!(docs[0]["spec"]["rules"][0]["backendRefs"][0]["name"], "b");
    crate::runner::apply_action(
        &a("{patch: {kind: Gateway, name: g, keep_only_listeners: [http]}}"),
        &mut docs,
        &cluster,
    )
    .unwrap();
    assert_eq!(docs[1]["spec"]["listeners"].as_array().unwrap().len(), 1);
    crate::runner::apply_action(
        &a("{patch: {kind: Gateway, name: g, append_listener: {name: x, port: 80}}}"),
        &mut docs,
        &cluster,
    )
    .unwrap();
    assert_eq!(docs[1]["spec"]["listeners"][1]["name"], "x");
    crate::runner::apply_action(
        &a("{delete: {kind: ReferenceGrant, name: rg, namespace: ns}}"),
        &mut docs,
        &cluster,
    )
    .unwrap();
    assert_eq!(docs.len(), 2);
    assert!(
        crate::runner::apply_action(
            &a("{delete: {kind: ReferenceGrant, name: rg, namespace: ns}}"),
            &mut docs,
            &cluster
        )
        .is_err()
    );
    assert!(
        crate::runner::apply_action(
            &a("{patch: {kind: Gateway, name: missing, set: {spec.x: 1}}}"),
            &mut docs,
            &cluster
        )
        .is_err()
    );
}

#[tokio::test]
async fn cluster_makes_endpoint_slices_for_selected_pods() {
    let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: ns}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: example/other}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: 3000, appProtocol: kubernetes.io/h2c}]
---
apiVersion: v1
kind: Service
metadata: {name: nosel, namespace: ns}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g, namespace: ns}
spec: {gatewayClassName: "{GATEWAY_CLASS_NAME}", listeners: []}
"#;
    let mut docs = crate::cluster::parse_docs(text, "inline").unwrap();
    crate::cluster::substitute(&mut docs);
    assert_eq!(docs[3]["spec"]["gatewayClassName"], "strait");
    let mut cluster = crate::cluster::Cluster::default();
    cluster.sync(&docs, &Default::default()).await.unwrap();
    let pods: Vec<_> = cluster.pods().collect();
    assert_eq!(pods.len(), 2);
    let name = &pods[0].name;
    let parts: Vec<&str> = name.rsplitn(3, '-').collect();
    assert_eq!(parts[2], "web");
    assert_eq!(parts[1].len(), 10);
    assert_eq!(parts[0].len(), 5);
    let slices = cluster.endpoint_slices(&docs);
    assert_eq!(slices.len(), 1, "only Services with a selector get slices");
    let s = &slices[0];
    assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
    assert_eq!(s["ports"][0]["port"], 3000);
    assert_eq!(s["ports"][0]["name"], "http");
    assert_eq!(s["ports"][0]["appProtocol"], "kubernetes.io/h2c");
    assert_eq!(s["endpoints"].as_array().unwrap().len(), 2);
    // Round-trips through the YAML writer.
    let text = crate::cluster::write_docs(&slices).unwrap();
    assert_eq!(crate::cluster::parse_docs(&text, "out").unwrap(), slices);
}

#[test]
fn date_is_rfc3339() {
    let d = crate::now_rfc3339();
    assert_eq!(d.len(), 20, "{d}");
    assert!(d.starts_with("20") && d.ends_with('Z'), "{d}");
}

#[test]
fn remove_address_names_an_index_or_a_substituted_placeholder() {
    use crate::cluster::{UNUSABLE_ADDRESS, USABLE_ADDRESS, address_to_remove, substitute};
    let mut docs = vec![serde_json::json!({
        "kind": "Gateway",
        "metadata": {"name": "g", "namespace": "n"},
        "spec": {"addresses": [
            {"type": "test/fake-invalid-type", "value": "x"},
            {"value": "PLACEHOLDER_UNUSABLE_ADDRS"},
            {"value": "PLACEHOLDER_USABLE_ADDRS"}]}
    })];
    substitute(&mut docs);
    let addresses = docs[0]["spec"]["addresses"].as_array().unwrap().clone();
    assert_eq!(addresses[1]["value"], UNUSABLE_ADDRESS);
    assert_eq!(addresses[2]["type"], "IPAddress");
    assert_eq!(addresses[2]["value"], USABLE_ADDRESS);
    let remove = |which: &str| address_to_remove(which, &addresses);
    assert_eq!(
        remove("spec.addresses[0] (the invalid-type address)"),
        Some(0)
    );
    assert_eq!(remove("the unusable address"), Some(1));
    assert_eq!(remove("the usable address"), Some(2));
    assert_eq!(remove("spec.addresses[7]"), None);
    assert_eq!(remove("some other address"), None);
}

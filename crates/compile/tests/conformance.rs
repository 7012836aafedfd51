//! Replays the static status expectations of the GATEWAY-HTTP conformance tests (transcribed in
//! /work/shared/conformance) against `compile`. Checks that need time, actions, pods or
//! generations (`after_action`, `observed_generation_latest`, `namespaces_ready`, ...) are skipped:
//! they belong to the replay harness. The mesh tests check no status; for them this file checks
//! that every route they apply attaches to its Services and reaches the waypoint's route tables.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::Value;
use strait_compile::{CONTROLLER_NAME, CompileInput, CompileOutput, compile};
use strait_config::ObjectRef;
use strait_model::Snapshot;

/// Tests whose static checks need features this compiler does not implement yet.
const KNOWN_UNSUPPORTED: &[&str] = &[];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance")
}

fn tls_secret(ns: &str, name: &str) -> Secret {
    let cert =
        match rcgen::generate_simple_self_signed(vec!["*".to_string(), "abc.example.com".into()]) {
            Ok(c) => c,
            Err(e) => panic!("rcgen: {e}"),
        };
    let mut s = Secret::default();
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(name.into());
    s.type_ = Some("kubernetes.io/tls".into());
    s.data = Some(BTreeMap::from([
        (
            "tls.crt".to_string(),
            ByteString(cert.cert.pem().into_bytes()),
        ),
        (
            "tls.key".to_string(),
            ByteString(cert.signing_key.serialize_pem().into_bytes()),
        ),
    ]));
    s
}

fn secret_pem(secret: &Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

fn load_test(dir: &Path) -> Snapshot {
    let base =
        std::fs::read_to_string(root().join("base/gateway/manifests.yaml")).unwrap_or_default();
    let own = std::fs::read_to_string(dir.join("manifests.yaml")).unwrap_or_default();
    let class = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: strait}}\nspec: {{controllerName: {CONTROLLER_NAME}}}\n"
    );
    let text = format!("{class}\n---\n{base}\n---\n{own}")
        .replace("{GATEWAY_CLASS_NAME}", "strait")
        .replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER_NAME);
    let report = strait_model::load_str(&text, &dir.join("manifests.yaml"));
    assert!(
        report.errors.is_empty(),
        "{}: {:?}",
        dir.display(),
        report.errors
    );
    let mut snapshot = report.snapshot;
    snapshot
        .secrets
        .push(tls_secret("gateway-conformance-web-backend", "certificate").into());
    for (ns, name) in [
        (
            "gateway-conformance-infra",
            "tls-validity-checks-ca-certificate",
        ),
        (
            "gateway-conformance-infra",
            "tls-validity-checks-per-port-ca-certificate",
        ),
        ("gateway-conformance-infra", "tls-checks-ca-certificate"),
        ("gateway-conformance-infra", "mismatch-ca-certificate"),
        ("gateway-conformance-web-backend", "web-backend-cm"),
    ] {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some(ns.into());
        cm.metadata.name = Some(name.into());
        let pem = secret_pem(&tls_secret(ns, name), "tls.crt");
        cm.data = Some(BTreeMap::from([("ca.crt".to_string(), pem)]));
        snapshot.config_maps.push(cm.into());
    }
    for name in [
        "tls-validity-checks-client-certificate",
        "tls-validity-checks-per-port-client-certificate",
        "tls-checks-client-certificate",
        "tls-validity-checks-certificate",
        "tls-checks-certificate",
        "tls-passthrough-checks-certificate",
        "tls-terminate-checks-certificate",
    ] {
        snapshot
            .secrets
            .push(tls_secret("gateway-conformance-infra", name).into());
    }
    snapshot
}

fn run(snapshot: &Snapshot) -> CompileOutput {
    let addresses: BTreeMap<ObjectRef, Vec<IpAddr>> = snapshot
        .gateways
        .iter()
        .map(|g| {
            (
                ObjectRef {
                    namespace: g.metadata.namespace.clone().unwrap_or_default(),
                    name: g.metadata.name.clone().unwrap_or_default(),
                },
                vec![IpAddr::from([127, 0, 0, 1])],
            )
        })
        .collect();
    compile(&CompileInput {
        snapshot,
        controller_name: CONTROLLER_NAME,
        gateway_addresses: &addresses,
        now: "2026-01-01T00:00:00Z",
    })
}

fn status(out: &CompileOutput, kind: &str, ns: &str, name: &str) -> Result<Value, String> {
    let found = out
        .statuses
        .iter()
        .find(|s| s.kind == kind && s.namespace == ns && s.name == name)
        .ok_or_else(|| format!("no status for {kind} {ns}/{name}"))?;
    found
        .status
        .value()
        .map_err(|e| format!("{kind} {ns}/{name}: {e}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn has_condition(conditions: &Value, want: &Value) -> bool {
    conditions.as_array().into_iter().flatten().any(|c| {
        c["type"] == want["type"]
            && (want.get("status").is_none() || c["status"] == want["status"])
            && (want.get("reason").is_none() || c["reason"] == want["reason"])
    })
}

fn all_conditions(conditions: &Value, want: &Value) -> bool {
    want.as_array()
        .into_iter()
        .flatten()
        .all(|w| has_condition(conditions, w))
}

fn gateway(out: &CompileOutput, check: &Value) -> Result<Value, String> {
    let g = &check["gateway"];
    status(out, "Gateway", s(&g["namespace"]), s(&g["name"]))
}

fn listener_set(out: &CompileOutput, check: &Value) -> Result<Value, String> {
    let l = &check["listenerset"];
    status(out, "ListenerSet", s(&l["namespace"]), s(&l["name"]))
}

fn route(out: &CompileOutput, r: &Value) -> Result<Value, String> {
    status(out, s(&r["kind"]), s(&r["namespace"]), s(&r["name"]))
}

/// `gateway_listeners` / `listenerset_listeners` on a `status.listeners` owner.
fn listeners_match(st: &Value, c: &Value) -> Result<(), String> {
    let actual = st["listeners"].as_array().cloned().unwrap_or_default();
    let exact = c["exact"] == true;
    let want = c["listeners"].as_array().cloned().unwrap_or_default();
    if exact && actual.len() != want.len() {
        return Err(format!("listener count: got {}", st["listeners"]));
    }
    for w in &want {
        let Some(a) = actual.iter().find(|a| a["name"] == w["name"]) else {
            return Err(format!("listener {} missing", w["name"]));
        };
        if !all_conditions(&a["conditions"], &w["conditions"]) {
            return Err(format!(
                "listener {} want {} got {}",
                w["name"], w["conditions"], a["conditions"]
            ));
        }
        if exact {
            if a["attachedRoutes"] != w["attachedRoutes"] {
                return Err(format!(
                    "listener {} attachedRoutes {} want {}",
                    w["name"], a["attachedRoutes"], w["attachedRoutes"]
                ));
            }
            let kinds: BTreeSet<String> = a["supportedKinds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| {
                    format!(
                        "{}/{}",
                        k["group"].as_str().unwrap_or("gateway.networking.k8s.io"),
                        s(&k["kind"])
                    )
                })
                .collect();
            let want_kinds: Vec<&str> = w["supportedKinds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            if want_kinds.is_empty() != kinds.is_empty()
                || want_kinds.iter().any(|k| !kinds.contains(*k))
            {
                return Err(format!(
                    "listener {} kinds {kinds:?} want {want_kinds:?}",
                    w["name"]
                ));
            }
        }
    }
    Ok(())
}

/// Evaluates one check; `Ok(false)` = skipped.
fn check(out: &CompileOutput, c: &Value) -> Result<bool, String> {
    if c.get("after_action").is_some() {
        return Ok(false);
    }
    let fail = |m: String| Err(format!("{}: {m}", s(&c["check"])));
    match s(&c["check"]) {
        "gateway_and_routes_accepted" => {
            let gw = &gateway(out, c)?;
            if !gw["addresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a.get("type").is_some()))
            {
                return fail("no address".into());
            }
            let (gns, gname) = (s(&c["gateway"]["namespace"]), s(&c["gateway"]["name"]));
            for r in c["routes"].as_array().into_iter().flatten() {
                let st = route(out, r)?;
                let ok = st["parents"].as_array().into_iter().flatten().any(|p| {
                    p["controllerName"] == CONTROLLER_NAME
                        && p["parentRef"]["group"] == "gateway.networking.k8s.io"
                        && p["parentRef"]["kind"] == "Gateway"
                        && p["parentRef"]["name"] == gname
                        && p["parentRef"]["namespace"] == gns
                        && has_condition(
                            &p["conditions"],
                            &serde_json::json!({"type": "Accepted", "status": "True", "reason": "Accepted"}),
                        )
                });
                if !ok {
                    return fail(format!("route {} not accepted: {}", r["name"], st));
                }
            }
            if c.get("listeners_ready") != Some(&Value::Bool(false)) {
                for l in gw["listeners"].as_array().into_iter().flatten() {
                    for t in ["ResolvedRefs", "Accepted", "Programmed"] {
                        if !has_condition(
                            &l["conditions"],
                            &serde_json::json!({"type": t, "status": "True"}),
                        ) {
                            return fail(format!("listener {} not {t}", l["name"]));
                        }
                    }
                }
            }
        }
        "route_condition" => {
            let st = route(out, &c["route"])?;
            let p = &c["parent"];
            let ok = st["parents"].as_array().into_iter().flatten().any(|e| {
                e["parentRef"]["name"] == p["name"]
                    && (e["parentRef"].get("namespace").is_none()
                        || e["parentRef"]["namespace"] == p["namespace"])
                    && has_condition(&e["conditions"], &c["condition"])
            });
            if !ok {
                return fail(format!("want {} got {}", c["condition"], st));
            }
        }
        "route_parents" => {
            let st = route(out, &c["route"])?;
            for want in c["contains"].as_array().into_iter().flatten() {
                let ok = st["parents"].as_array().into_iter().flatten().any(|e| {
                    e["controllerName"] == CONTROLLER_NAME
                        && e["parentRef"]["group"] == want["parentRef"]["group"]
                        && e["parentRef"]["kind"] == want["parentRef"]["kind"]
                        && e["parentRef"]["name"] == want["parentRef"]["name"]
                        && e["parentRef"]["namespace"] == want["parentRef"]["namespace"]
                        && all_conditions(&e["conditions"], &want["conditions"])
                });
                if !ok {
                    return fail(format!("want {want} got {st}"));
                }
            }
        }
        "route_no_accepted_parents" => {
            let st = &route(out, &c["route"]).unwrap_or(Value::Null);
            let parents = st["parents"].as_array().cloned().unwrap_or_default();
            let ok = parents.is_empty()
                || (parents.len() == 1
                    && has_condition(
                        &parents[0]["conditions"],
                        &serde_json::json!({"type": "Accepted", "status": "False"}),
                    ));
            if !ok {
                return fail(format!("got {st}"));
            }
        }
        "gateway_zero_routes" => {
            let gw = &gateway(out, c)?;
            let ls = gw["listeners"].as_array().cloned().unwrap_or_default();
            if !(ls.is_empty() || (ls.len() == 1 && ls[0]["attachedRoutes"] == 0)) {
                return fail(format!("got {}", gw["listeners"]));
            }
        }
        "gateway_condition" => {
            let gw = &gateway(out, c)?;
            if !has_condition(&gw["conditions"], &c["condition"]) {
                return fail(format!("want {} got {}", c["condition"], gw["conditions"]));
            }
        }
        "gatewayclass_condition" => {
            let gc = &status(out, "GatewayClass", "", s(&c["gatewayclass"]))?;
            if !has_condition(&gc["conditions"], &c["condition"]) {
                return fail(format!("got {}", gc["conditions"]));
            }
        }
        "gateway_addresses" => {
            let gw = &gateway(out, c)?;
            if c.get("min").is_some()
                && !gw["addresses"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a.get("type").is_some()))
            {
                return fail("no address".into());
            }
        }
        "gateway_listeners" => {
            let gw = &gateway(out, c)?;
            if let Err(e) = listeners_match(gw, c) {
                return fail(e);
            }
        }
        "listenerset_listeners" => {
            let ls = &listener_set(out, c)?;
            if let Err(e) = listeners_match(ls, c) {
                return fail(e);
            }
        }
        "listenerset_condition" => {
            let ls = &listener_set(out, c)?;
            if !has_condition(&ls["conditions"], &c["condition"]) {
                return fail(format!("want {} got {}", c["condition"], ls["conditions"]));
            }
        }
        "gateway_attached_listenersets" => {
            let gw = &gateway(out, c)?;
            let got = gw["attachedListenerSets"].as_u64().unwrap_or(0);
            if Some(got) != c["count"].as_u64() {
                return fail(format!("attachedListenerSets {got} want {}", c["count"]));
            }
        }
        "listenerset_and_routes_accepted" => {
            let ls = &listener_set(out, c)?;
            let (lns, lname) = (
                s(&c["listenerset"]["namespace"]),
                s(&c["listenerset"]["name"]),
            );
            for r in c["routes"].as_array().into_iter().flatten() {
                let st = route(out, r)?;
                let ok = st["parents"].as_array().into_iter().flatten().any(|p| {
                    p["controllerName"] == CONTROLLER_NAME
                        && p["parentRef"]["group"] == "gateway.networking.k8s.io"
                        && p["parentRef"]["kind"] == "ListenerSet"
                        && p["parentRef"]["name"] == lname
                        && p["parentRef"]["namespace"] == lns
                        && has_condition(
                            &p["conditions"],
                            &serde_json::json!({"type": "Accepted", "status": "True", "reason": "Accepted"}),
                        )
                });
                if !ok {
                    return fail(format!("route {} not accepted: {}", r["name"], st));
                }
            }
            for l in ls["listeners"].as_array().into_iter().flatten() {
                for t in ["ResolvedRefs", "Accepted", "Programmed"] {
                    if !has_condition(
                        &l["conditions"],
                        &serde_json::json!({"type": t, "status": "True"}),
                    ) {
                        return fail(format!("listener {} not {t}", l["name"]));
                    }
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

#[test]
fn gateway_http_static_status_expectations() {
    let root = root();
    if !root.join("INDEX.md").exists() {
        println!("skipping: conformance data not found at {}", root.display());
        return;
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checked = 0;
    for dir in dirs {
        let Ok(text) = std::fs::read_to_string(dir.join("cases.yaml")) else {
            continue;
        };
        let cases: Value = match serde_saphyr::from_str(&text) {
            Ok(v) => v,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        if cases["profile"] != "GATEWAY-HTTP" && cases["profile"] != "GATEWAY-GRPC" {
            continue;
        }
        let name = s(&cases["test"]).to_string();
        let out = run(&load_test(&dir));
        for c in cases["status_expectations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            match check(&out, c) {
                Ok(true) => checked += 1,
                Ok(false) => {}
                Err(e) => failures.entry(name.clone()).or_default().push(e),
            }
        }
    }
    for (test, errs) in &failures {
        println!("{test}:");
        for e in errs {
            println!("    {e}");
        }
    }
    println!("{checked} checks passed");
    let unexpected: Vec<&String> = failures
        .keys()
        .filter(|t| !KNOWN_UNSUPPORTED.contains(&t.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "unexpected failures: {unexpected:?}");
    assert!(checked > 100, "only {checked} checks ran");
}

/// Every MESH-* test's routes, on the verbatim mesh base with its namespaces enrolled: each
/// Service parentRef is Accepted, binds the Service to the namespace's default waypoint, and
/// puts the route in that waypoint's tables for the selected ports (producer or consumer).
#[test]
fn mesh_routes_reach_their_waypoints() {
    use strait_config::mesh::MESH_LABEL;

    let root = root();
    if !root.join("INDEX.md").exists() {
        println!("skipping: conformance data not found at {}", root.display());
        return;
    }
    let base = std::fs::read_to_string(root.join("base/mesh/manifests.yaml")).unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    let mut checked = 0;
    for dir in dirs {
        let Ok(text) = std::fs::read_to_string(dir.join("cases.yaml")) else {
            continue;
        };
        let cases: Value = match serde_saphyr::from_str(&text) {
            Ok(v) => v,
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        if !s(&cases["profile"]).starts_with("MESH-") {
            continue;
        }
        let own = std::fs::read_to_string(dir.join("manifests.yaml")).unwrap_or_default();
        let report =
            strait_model::load_str(&format!("{base}\n---\n{own}"), &dir.join("manifests.yaml"));
        assert!(
            report.errors.is_empty(),
            "{}: {:?}",
            dir.display(),
            report.errors
        );
        let mut snapshot = report.snapshot;
        for n in &mut snapshot.namespaces {
            std::sync::Arc::make_mut(n)
                .metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(MESH_LABEL.into(), "enabled".into());
        }
        let out = run(&snapshot);
        let routes = snapshot
            .http_routes
            .iter()
            .map(|r| ("HTTPRoute", &r.metadata, serde_json::to_value(&r.spec)))
            .chain(
                snapshot
                    .grpc_routes
                    .iter()
                    .map(|r| ("GRPCRoute", &r.metadata, serde_json::to_value(&r.spec))),
            );
        for (kind, meta, spec) in routes {
            let spec = spec.unwrap_or(Value::Null);
            let route_ns = meta.namespace.clone().unwrap_or_default();
            let route_name = meta.name.clone().unwrap_or_default();
            let what = format!("{}: {kind} {route_ns}/{route_name}", dir.display());
            let st = match status(&out, kind, &route_ns, &route_name) {
                Ok(st) => st,
                Err(e) => panic!("{what}: {e}"),
            };
            let entries: Vec<&Value> = st["parents"].as_array().into_iter().flatten().collect();
            for (i, pref) in spec["parentRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let entry = entries[i];
                assert!(
                    has_condition(
                        &entry["conditions"],
                        &serde_json::json!({"type": "Accepted", "status": "True"})
                    ),
                    "{what}: {entry}"
                );
                let service = ObjectRef {
                    namespace: pref["namespace"].as_str().unwrap_or(&route_ns).into(),
                    name: s(&pref["name"]).into(),
                };
                let bound = out.mesh.services.iter().find(|m| m.service == service);
                let waypoint = ObjectRef {
                    namespace: service.namespace.clone(),
                    name: "waypoint".into(),
                };
                assert_eq!(
                    bound.and_then(|b| b.waypoint.as_ref()),
                    Some(&waypoint),
                    "{what}: waypoint of {service}"
                );
                let config = out
                    .mesh
                    .waypoint(&waypoint)
                    .and_then(|w| w.services.iter().find(|ws| ws.service == service));
                let Some(config) = config else {
                    panic!("{what}: {service} missing from waypoint {waypoint}");
                };
                for port in &config.ports {
                    let selected = pref["port"]
                        .as_u64()
                        .is_none_or(|p| p == u64::from(port.port));
                    let caller = (route_ns != service.namespace).then_some(route_ns.as_str());
                    let listed = port.routes_for(caller).is_some_and(|pc| {
                        pc.listeners
                            .iter()
                            .flat_map(|l| &l.http_routes)
                            .any(|r| r.route.name == route_name && r.route.namespace == route_ns)
                    });
                    assert_eq!(
                        listed,
                        selected && port.protocol.is_http(),
                        "{what}: {service} port {}",
                        port.port
                    );
                }
                checked += 1;
            }
        }
    }
    println!("{checked} mesh parentRefs checked");
    assert!(checked >= 20, "only {checked} mesh parentRefs checked");
}

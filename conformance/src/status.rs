//! Evaluation of `status_expectations` against stored objects (pure: no I/O, no clock).
//!
//! Each check returns `Ok(())` when its pass condition holds on this read, or `Err(why)`; the
//! caller polls until it passes or the check's timeout expires.

use std::time::Duration;

use serde_json::Value;

use crate::spec::{Check, Condition, ObjRef};

/// The GatewayClass controller name the harness configures.
pub const CONTROLLER_NAME: &str = "strait.dev/gateway-controller";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Read access to the "cluster" the checks inspect.
pub trait World {
    /// The stored object with its status, as the API server would return it.
    fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value>;
    /// `(namespace, name)` of every object of `kind`.
    fn names(&self, kind: &str) -> Vec<(String, String)>;
}

/// State carried across polls of one check.
#[derive(Default, Debug)]
pub struct CheckState {
    /// `route_no_accepted_parents`: an earlier poll saw empty parents.
    pub seen_empty: bool,
    /// `generation_changed`: metadata.generation read before the action.
    pub generation_before: Option<i64>,
    /// `gateway_addresses`: the Gateway's `spec.addresses` as first applied.
    pub applied_spec_addresses: Option<Vec<Value>>,
}

/// Upstream's timeout for a check kind.
pub fn timeout(check: &Check) -> Duration {
    let secs = match check.check.as_str() {
        "namespaces_ready" => 300,
        "gateway_condition"
        | "gateway_addresses"
        | "gatewayclass_condition"
        | "listenerset_condition" => 180,
        "gateway_and_routes_accepted" => 180,
        _ => 60,
    };
    Duration::from_secs(secs)
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part).unwrap_or(&Value::Null);
    }
    cur
}

fn arr<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path).as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path).as_str().unwrap_or("")
}

fn generation(obj: &Value) -> i64 {
    get(obj, "metadata.generation").as_i64().unwrap_or(0)
}

/// Every condition observed the object's current generation.
pub fn latest_gen(obj: &Value, conditions: &[Value]) -> Result<(), String> {
    let gen_ = generation(obj);
    for c in conditions {
        let observed = c.get("observedGeneration").and_then(Value::as_i64);
        if observed != Some(gen_) {
            return Err(format!(
                "condition {} has observedGeneration {:?}, generation is {gen_}",
                s(c, "type"),
                observed
            ));
        }
    }
    Ok(())
}

/// The list holds an entry of that type with the given status/reason.
pub fn has_condition(conditions: &[Value], want: &Condition) -> bool {
    conditions.iter().any(|c| {
        s(c, "type") == want.type_
            && want.status.as_deref().is_none_or(|st| s(c, "status") == st)
            && want.reason.as_deref().is_none_or(|r| s(c, "reason") == r)
    })
}

fn conditions_match(conditions: &[Value], want: &[Condition], count: bool) -> Result<(), String> {
    if count && conditions.len() < want.len() {
        return Err(format!(
            "{} conditions, expected at least {}",
            conditions.len(),
            want.len()
        ));
    }
    for w in want {
        if !has_condition(conditions, w) {
            return Err(format!(
                "missing condition {} ({})",
                describe(w),
                brief(conditions)
            ));
        }
    }
    Ok(())
}

fn describe(c: &Condition) -> String {
    format!(
        "{}={}{}",
        c.type_,
        c.status.as_deref().unwrap_or("*"),
        c.reason
            .as_deref()
            .map(|r| format!("/{r}"))
            .unwrap_or_default()
    )
}

fn brief(conditions: &[Value]) -> String {
    let parts: Vec<String> = conditions
        .iter()
        .map(|c| format!("{}={}/{}", s(c, "type"), s(c, "status"), s(c, "reason")))
        .collect();
    format!("have [{}]", parts.join(", "))
}

fn need<'a, T>(field: &'a Option<T>, name: &str) -> Result<&'a T, String> {
    field
        .as_ref()
        .ok_or_else(|| format!("check lacks field `{name}`"))
}

fn fetch(world: &dyn World, kind: &str, r: &ObjRef) -> Result<Value, String> {
    world
        .object(kind, &r.namespace, &r.name)
        .ok_or_else(|| format!("{kind} {}/{} not found", r.namespace, r.name))
}

fn route_kind(r: &ObjRef) -> &str {
    if r.kind.is_empty() {
        "HTTPRoute"
    } else {
        &r.kind
    }
}

/// The Gateway's first typed address, if any.
pub fn gateway_address(gw: &Value) -> Option<String> {
    arr(gw, "status.addresses")
        .iter()
        .find(|a| a.get("type").is_some_and(|t| !t.is_null()) || a.get("value").is_some())
        .and_then(|a| a.get("value").and_then(Value::as_str))
        .map(String::from)
}

/// Route parents step of `gateway_and_routes_accepted` / `listenerset_and_routes_accepted`.
fn parents_accepted(
    route: &Value,
    route_ns: &str,
    parent_kind: &str,
    parent: &ObjRef,
    require_latest: bool,
) -> Result<(), String> {
    let parents = arr(route, "status.parents");
    let matching = parents
        .iter()
        .filter(|p| {
            let pr = &p["parentRef"];
            let ns_ok = match pr.get("namespace").and_then(Value::as_str) {
                Some(ns) => ns == parent.namespace,
                None => route_ns == parent.namespace,
            };
            s(p, "controllerName") == CONTROLLER_NAME
                && pr.get("group").and_then(Value::as_str) == Some(GATEWAY_GROUP)
                && pr.get("kind").and_then(Value::as_str) == Some(parent_kind)
                && s(pr, "name") == parent.name
                && ns_ok
                && has_condition(
                    arr(p, "conditions"),
                    &Condition {
                        type_: "Accepted".into(),
                        status: Some("True".into()),
                        reason: Some("Accepted".into()),
                    },
                )
        })
        .count();
    // Several listener names are satisfied by one entry: sectionName is not compared.
    if matching == 0 {
        return Err(format!(
            "route {route_ns}/{} has no accepted parent {parent_kind} {}/{} ({})",
            s(route, "metadata.name"),
            parent.namespace,
            parent.name,
            parents
                .iter()
                .map(|p| brief(arr(p, "conditions")))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if require_latest {
        for p in parents {
            latest_gen(route, arr(p, "conditions"))
                .map_err(|e| format!("route {}: {e}", s(route, "metadata.name")))?;
        }
    }
    Ok(())
}

fn listeners_ready(owner: &str, listeners: &[Value]) -> Result<(), String> {
    for l in listeners {
        for t in ["ResolvedRefs", "Accepted", "Programmed"] {
            let want = Condition {
                type_: t.into(),
                status: Some("True".into()),
                reason: None,
            };
            if !has_condition(arr(l, "conditions"), &want) {
                return Err(format!(
                    "{owner} listener {} not {t} ({})",
                    s(l, "name"),
                    brief(arr(l, "conditions"))
                ));
            }
        }
    }
    Ok(())
}

fn listeners_match(
    obj: &Value,
    exact: bool,
    expected: &[crate::spec::ListenerExpect],
) -> Result<(), String> {
    let actual = arr(obj, "status.listeners");
    if exact && actual.len() != expected.len() {
        return Err(format!(
            "{} listeners in status, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    for want in expected {
        let Some(l) = actual.iter().find(|l| s(l, "name") == want.name) else {
            return Err(format!("listener {} missing from status", want.name));
        };
        if exact {
            if let Some(kinds) = &want.supported_kinds {
                let have: Vec<String> = arr(l, "supportedKinds")
                    .iter()
                    .map(|k| {
                        let group = k
                            .get("group")
                            .and_then(Value::as_str)
                            .unwrap_or(GATEWAY_GROUP);
                        format!("{group}/{}", s(k, "kind"))
                    })
                    .collect();
                if kinds.is_empty() && !have.is_empty() {
                    return Err(format!(
                        "listener {}: supportedKinds {have:?}, want []",
                        want.name
                    ));
                }
                for k in kinds {
                    let k = if k.contains('/') {
                        k.clone()
                    } else {
                        format!("{GATEWAY_GROUP}/{k}")
                    };
                    if !have.contains(&k) {
                        return Err(format!(
                            "listener {}: supportedKinds {have:?} lacks {k}",
                            want.name
                        ));
                    }
                }
            }
            if let Some(n) = want.attached_routes {
                let have = l.get("attachedRoutes").and_then(Value::as_i64).unwrap_or(0);
                if have != n {
                    return Err(format!(
                        "listener {}: attachedRoutes {have}, want {n}",
                        want.name
                    ));
                }
            }
        }
        conditions_match(arr(l, "conditions"), &want.conditions, true)
            .map_err(|e| format!("listener {}: {e}", want.name))?;
    }
    Ok(())
}

fn conds_latest(obj: &Value, what: &str) -> Result<(), String> {
    latest_gen(obj, arr(obj, "status.conditions")).map_err(|e| format!("{what}: {e}"))
}

/// Evaluates one read of `check`.
pub fn evaluate(check: &Check, world: &dyn World, state: &mut CheckState) -> Result<(), String> {
    match check.check.as_str() {
        "namespaces_ready" => {
            for ns in &check.namespaces {
                for (gns, name) in world.names("Gateway") {
                    if &gns != ns {
                        continue;
                    }
                    let gw = world.object("Gateway", &gns, &name).unwrap_or(Value::Null);
                    if s(
                        &gw,
                        "metadata.annotations.gateway-api/skip-this-for-readiness",
                    ) == "true"
                    {
                        continue;
                    }
                    // Only Gateways of our class are programmed by us.
                    let conds = arr(&gw, "status.conditions");
                    conds_latest(&gw, &format!("Gateway {gns}/{name}"))?;
                    for t in ["Accepted", "Programmed"] {
                        let want = Condition {
                            type_: t.into(),
                            status: Some("True".into()),
                            reason: None,
                        };
                        if !has_condition(conds, &want) {
                            return Err(format!("Gateway {gns}/{name} not {t}"));
                        }
                    }
                }
            }
            Ok(())
        }
        "gateway_and_routes_accepted" => {
            let gref = need(&check.gateway, "gateway")?;
            let gw = fetch(world, "Gateway", gref)?;
            conds_latest(&gw, "Gateway")?;
            if gateway_address(&gw).is_none() {
                return Err(format!(
                    "Gateway {}/{} has no address",
                    gref.namespace, gref.name
                ));
            }
            let latest = check.listeners_ready.unwrap_or(true);
            for r in &check.routes {
                let route = fetch(world, route_kind(r), r)?;
                parents_accepted(&route, &r.namespace, "Gateway", gref, latest)?;
            }
            if latest {
                listeners_ready("Gateway", arr(&gw, "status.listeners"))?;
            }
            Ok(())
        }
        "listenerset_and_routes_accepted" => {
            let lref = need(&check.listenerset, "listenerset")?;
            for r in &check.routes {
                let route = fetch(world, route_kind(r), r)?;
                parents_accepted(&route, &r.namespace, "ListenerSet", lref, true)?;
            }
            let ls = fetch(world, "ListenerSet", lref)?;
            conds_latest(&ls, "ListenerSet")?;
            listeners_ready("ListenerSet", arr(&ls, "status.listeners"))
        }
        "route_condition" => {
            let r = need(&check.route, "route")?;
            let parent = need(&check.parent, "parent")?;
            let cond = need(&check.condition, "condition")?;
            let route = fetch(world, route_kind(r), r)?;
            let parents = arr(&route, "status.parents");
            for p in parents {
                latest_gen(&route, arr(p, "conditions"))?;
            }
            let found = parents.iter().any(|p| {
                let pr = &p["parentRef"];
                s(pr, "name") == parent.name
                    && pr
                        .get("namespace")
                        .and_then(Value::as_str)
                        .is_none_or(|ns| ns == parent.namespace)
                    && has_condition(arr(p, "conditions"), cond)
            });
            if found {
                Ok(())
            } else {
                Err(format!(
                    "route {}/{} parent {} lacks {} ({})",
                    r.namespace,
                    r.name,
                    parent.name,
                    describe(cond),
                    parents
                        .iter()
                        .map(|p| brief(arr(p, "conditions")))
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            }
        }
        "route_parents" => {
            let r = need(&check.route, "route")?;
            let route = fetch(world, route_kind(r), r)?;
            let parents = arr(&route, "status.parents");
            let ns_required = check.namespace_required.unwrap_or(false);
            for want in &check.contains {
                let controller = if want.controller_name == "ours" {
                    CONTROLLER_NAME
                } else {
                    want.controller_name.as_str()
                };
                let wr = &want.parent_ref;
                let ok = parents.iter().any(|p| {
                    let pr = &p["parentRef"];
                    let ns_ok = match pr.get("namespace").and_then(Value::as_str) {
                        Some(ns) => ns == wr.namespace,
                        None => !ns_required,
                    };
                    s(p, "controllerName") == controller
                        && pr.get("group").and_then(Value::as_str) == wr.group.as_deref()
                        && pr.get("kind").and_then(Value::as_str) == Some(wr.kind.as_str())
                        && s(pr, "name") == wr.name
                        && ns_ok
                        && conditions_match(arr(p, "conditions"), &want.conditions, true).is_ok()
                });
                if !ok {
                    return Err(format!(
                        "route {}/{} has no parent entry like {}/{} {:?}",
                        r.namespace,
                        r.name,
                        wr.kind,
                        wr.name,
                        want.conditions.iter().map(describe).collect::<Vec<_>>()
                    ));
                }
            }
            for p in parents {
                latest_gen(&route, arr(p, "conditions"))?;
            }
            Ok(())
        }
        "route_no_accepted_parents" => {
            let r = need(&check.route, "route")?;
            let route = fetch(world, route_kind(r), r)?;
            let parents = arr(&route, "status.parents");
            if parents.is_empty() {
                if state.seen_empty {
                    return Ok(());
                }
                state.seen_empty = true;
                return Err("parents empty (confirming on next poll)".into());
            }
            let rejected = Condition {
                type_: "Accepted".into(),
                status: Some("False".into()),
                reason: None,
            };
            if parents.len() == 1
                && latest_gen(&route, arr(&parents[0], "conditions")).is_ok()
                && has_condition(arr(&parents[0], "conditions"), &rejected)
            {
                Ok(())
            } else {
                Err(format!(
                    "route {}/{} has accepted parents ({})",
                    r.namespace,
                    r.name,
                    parents
                        .iter()
                        .map(|p| brief(arr(p, "conditions")))
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            }
        }
        "gateway_zero_routes" => {
            let gw = fetch(world, "Gateway", need(&check.gateway, "gateway")?)?;
            conds_latest(&gw, "Gateway")?;
            let listeners = arr(&gw, "status.listeners");
            let ok = listeners.is_empty()
                || (listeners.len() == 1
                    && listeners[0]
                        .get("attachedRoutes")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                        == 0);
            if ok {
                Ok(())
            } else {
                Err("Gateway has attached routes".into())
            }
        }
        "gateway_condition" | "listenerset_condition" => {
            let (kind, r) = if check.check == "gateway_condition" {
                ("Gateway", need(&check.gateway, "gateway")?)
            } else {
                ("ListenerSet", need(&check.listenerset, "listenerset")?)
            };
            let obj = fetch(world, kind, r)?;
            conds_latest(&obj, kind)?;
            let cond = need(&check.condition, "condition")?;
            if has_condition(arr(&obj, "status.conditions"), cond) {
                Ok(())
            } else {
                Err(format!(
                    "{kind} {}/{} lacks {} ({})",
                    r.namespace,
                    r.name,
                    describe(cond),
                    brief(arr(&obj, "status.conditions"))
                ))
            }
        }
        "gatewayclass_condition" => {
            let name = need(&check.gatewayclass, "gatewayclass")?;
            let obj = world
                .object("GatewayClass", "", name)
                .ok_or_else(|| format!("GatewayClass {name} not found"))?;
            conds_latest(&obj, "GatewayClass")?;
            let cond = need(&check.condition, "condition")?;
            if has_condition(arr(&obj, "status.conditions"), cond) {
                Ok(())
            } else {
                Err(format!("GatewayClass {name} lacks {}", describe(cond)))
            }
        }
        "gateway_listeners" | "listenerset_listeners" => {
            let (kind, r) = if check.check == "gateway_listeners" {
                ("Gateway", need(&check.gateway, "gateway")?)
            } else {
                ("ListenerSet", need(&check.listenerset, "listenerset")?)
            };
            let obj = fetch(world, kind, r)?;
            if check.exact || kind == "ListenerSet" {
                conds_latest(&obj, kind)?;
            }
            listeners_match(&obj, check.exact, &check.listeners)
                .map_err(|e| format!("{kind} {}/{}: {e}", r.namespace, r.name))
        }
        "gateway_addresses" => {
            let gw = fetch(world, "Gateway", need(&check.gateway, "gateway")?)?;
            let addrs = arr(&gw, "status.addresses");
            if let Some(count) = check.count {
                if addrs.len() as i64 != count {
                    return Err(format!("{} addresses, want {count}", addrs.len()));
                }
                let spec = match &state.applied_spec_addresses {
                    Some(applied) => applied.as_slice(),
                    None => arr(&gw, "spec.addresses"),
                };
                let value_of = |i: usize| spec.get(i).map(|a| s(a, "value").to_string());
                for &i in &check.include_spec_addresses {
                    let v = value_of(i).ok_or_else(|| format!("spec.addresses[{i}] missing"))?;
                    let Some(st) = addrs.iter().find(|a| s(a, "value") == v) else {
                        return Err(format!("address {v} not in status"));
                    };
                    if st.get("type") != spec[i].get("type") {
                        return Err(format!("address {v} has a different type"));
                    }
                }
                for &i in &check.exclude_spec_addresses {
                    if let Some(v) = value_of(i)
                        && addrs.iter().any(|a| s(a, "value") == v)
                    {
                        return Err(format!("address {v} should not be in status"));
                    }
                }
                return Ok(());
            }
            conds_latest(&gw, "Gateway")?;
            if addrs
                .iter()
                .any(|a| a.get("type").is_some_and(|t| !t.is_null()))
            {
                Ok(())
            } else {
                Err("no typed address in status".into())
            }
        }
        "gateway_attached_listenersets" => {
            let gw = fetch(world, "Gateway", need(&check.gateway, "gateway")?)?;
            conds_latest(&gw, "Gateway")?;
            let have = get(&gw, "status.attachedListenerSets")
                .as_i64()
                .unwrap_or(0);
            let want = check.count.unwrap_or(0);
            if have == want {
                Ok(())
            } else {
                Err(format!("attachedListenerSets {have}, want {want}"))
            }
        }
        "observed_generation_latest" => {
            let r = need(&check.object, "object")?;
            let obj = fetch(world, &r.kind, r)?;
            match r.kind.as_str() {
                "HTTPRoute" | "GRPCRoute" | "TLSRoute" | "TCPRoute" | "UDPRoute" => {
                    for p in arr(&obj, "status.parents") {
                        latest_gen(&obj, arr(p, "conditions"))?;
                    }
                }
                "BackendTLSPolicy" => {
                    for p in arr(&obj, "status.ancestors") {
                        latest_gen(&obj, arr(p, "conditions"))?;
                    }
                }
                _ => conds_latest(&obj, &r.kind)?,
            }
            if check.generation_changed
                && let Some(before) = state.generation_before
                && generation(&obj) == before
            {
                return Err(format!(
                    "metadata.generation still {before} after the action"
                ));
            }
            Ok(())
        }
        "policy_ancestor_condition" => {
            let r = need(&check.policy, "policy")?;
            let ancestor = need(&check.ancestor, "ancestor")?;
            let cond = need(&check.condition, "condition")?;
            let obj = fetch(world, &r.kind, r)?;
            for a in arr(&obj, "status.ancestors") {
                latest_gen(&obj, arr(a, "conditions"))?;
                let ar = &a["ancestorRef"];
                if s(ar, "name") == ancestor.name
                    && ar
                        .get("namespace")
                        .and_then(Value::as_str)
                        .is_none_or(|n| n == ancestor.namespace)
                    && has_condition(arr(a, "conditions"), cond)
                {
                    return Ok(());
                }
            }
            Err(format!(
                "policy {}/{} lacks {} for {}",
                r.namespace,
                r.name,
                describe(cond),
                ancestor.name
            ))
        }
        "spec_field_count" => {
            let r = need(&check.object, "object")?;
            let obj = fetch(world, &r.kind, r)?;
            let field = need(&check.field, "field")?;
            let have = get(&obj, field).as_array().map_or(0, Vec::len) as i64;
            let want = check.count.unwrap_or(0);
            if have == want {
                Ok(())
            } else {
                Err(format!("{field} has {have} items, want {want}"))
            }
        }
        other => Err(format!("unsupported check kind `{other}`")),
    }
}

/// Checks that only read once instead of polling.
pub fn is_single_read(check: &Check) -> bool {
    check.immediate || check.check == "spec_field_count"
}

/// Check kinds this harness can evaluate (others make the test skip).
pub const SUPPORTED_CHECKS: &[&str] = &[
    "namespaces_ready",
    "gateway_and_routes_accepted",
    "listenerset_and_routes_accepted",
    "route_condition",
    "route_parents",
    "route_no_accepted_parents",
    "gateway_zero_routes",
    "gateway_condition",
    "gatewayclass_condition",
    "gateway_listeners",
    "listenerset_condition",
    "listenerset_listeners",
    "gateway_addresses",
    "gateway_attached_listenersets",
    "observed_generation_latest",
    "policy_ancestor_condition",
    "spec_field_count",
];

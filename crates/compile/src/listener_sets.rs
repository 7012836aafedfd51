//! ListenerSets (GEP-1713): listeners declared outside a Gateway and merged into it.
//!
//! A ListenerSet attaches to its parent Gateway only when the Gateway's
//! `spec.allowedListeners.namespaces` admits its namespace (the default admits none). Its
//! listeners are validated like the Gateway's own (certificate references need a ReferenceGrant
//! from `ListenerSet`), then checked for conflicts in precedence order: the Gateway's listeners
//! first, then ListenerSets by creationTimestamp and namespace/name. Accepted listeners join the
//! Gateway's listener list tagged with their owner, so routes attach to them through a
//! `ListenerSet` parentRef and the data plane serves them on the Gateway's addresses.

use std::collections::{BTreeMap, BTreeSet};

use gateway_api::experimental::gateways::{
    GatewayAllowedListenersNamespacesFrom as From, GatewayListeners,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use strait_config::ObjectRef;
use strait_model::types::{Gateway, ListenerSet};

use crate::ObjectStatus;
use crate::StatusJson;
use crate::conditions::{Condition, render};
use crate::context::{Context, name, ns};
use crate::gateway::GatewayState;
use crate::listeners::{self, GATEWAY_GROUP, ListenerState};
use crate::namespaces::selector_from;

/// A ListenerSet whose parentRef names one of our Gateways.
#[derive(Debug)]
pub(crate) struct ListenerSetState<'a> {
    pub set: &'a ListenerSet,
    pub key: ObjectRef,
    /// Index of the parent in the Gateway list.
    pub gateway: usize,
    pub conditions: Vec<Condition>,
}

/// Why a listener lost to an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Conflict {
    Protocol,
    Hostname,
}

impl Conflict {
    fn reason(self) -> &'static str {
        match self {
            Conflict::Protocol => "ProtocolConflict",
            Conflict::Hostname => "HostnameConflict",
        }
    }
}

/// Listeners already claimed on a Gateway, in precedence order: a port belongs to the protocol
/// of its first listener, and a (port, protocol, hostname) to its first listener.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    port_protocol: BTreeMap<i32, String>,
    hosts: BTreeSet<(i32, String, String)>,
}

impl Claims {
    /// Claims the listener, or reports the conflict with an earlier claim.
    pub(crate) fn claim(
        &mut self,
        port: i32,
        protocol: &str,
        hostname: Option<&str>,
    ) -> Result<(), Conflict> {
        if let Some(p) = self.port_protocol.get(&port)
            && p != protocol
        {
            return Err(Conflict::Protocol);
        }
        let host = (
            port,
            protocol.to_string(),
            hostname.unwrap_or("").to_string(),
        );
        if !self.hosts.insert(host) {
            return Err(Conflict::Hostname);
        }
        self.port_protocol.insert(port, protocol.to_string());
        Ok(())
    }
}

fn creation_timestamp(meta: &ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether a Gateway's `spec.allowedListeners` admits ListenerSets from `set_ns`.
fn allowed(ctx: &Context<'_>, gateway: &Gateway, set_ns: &str) -> bool {
    let Some(namespaces) = gateway
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
    else {
        return false;
    };
    match namespaces.from {
        None | Some(From::None) => false,
        Some(From::All) => true,
        Some(From::Same) => ns(&gateway.metadata) == set_ns,
        Some(From::Selector) => {
            selector_from!(namespaces.selector.as_ref()).matches(&ctx.namespace_labels(set_ns))
        }
    }
}

/// The ListenerSet presented as a Gateway in its own namespace, so the Gateway listener checks
/// (protocols, route kinds, allowedRoutes, certificates) apply unchanged.
fn as_gateway(set: &ListenerSet, parent: &Gateway) -> Gateway {
    let listeners = set
        .spec
        .listeners
        .iter()
        .map(|l| {
            serde_json::to_value(l)
                .ok()
                .and_then(|v| serde_json::from_value::<GatewayListeners>(v).ok())
                // Same schema; should a field not convert, keep the listener so it still
                // reports a status (an empty protocol is rejected as unsupported).
                .unwrap_or_else(|| GatewayListeners {
                    name: l.name.clone(),
                    port: l.port,
                    ..Default::default()
                })
        })
        .collect();
    let mut gateway = Gateway {
        metadata: ObjectMeta {
            namespace: Some(ns(&set.metadata).to_string()),
            name: Some(name(&set.metadata).to_string()),
            ..Default::default()
        },
        spec: Default::default(),
        status: None,
    };
    gateway.spec.gateway_class_name = parent.spec.gateway_class_name.clone();
    gateway.spec.listeners = listeners;
    gateway
}

/// Turns a listener into one that lost a conflict: not Accepted, not Programmed, Conflicted.
fn mark_conflicted(l: &mut ListenerState, conflict: Conflict) {
    let reason = conflict.reason();
    let msg = format!(
        "listener {}: conflicts with a listener of higher precedence on port {}",
        l.name, l.port
    );
    l.routable = false;
    l.servable = false;
    l.conditions
        .retain(|c| !matches!(c.kind, "Accepted" | "Programmed" | "Conflicted"));
    l.conditions
        .insert(0, Condition::new("Accepted", false, reason, msg.clone()));
    l.conditions
        .insert(1, Condition::new("Programmed", false, reason, msg.clone()));
    l.conditions
        .push(Condition::new("Conflicted", true, reason, msg));
}

/// A listener the data plane can serve: Accepted and Programmed.
fn valid(l: &ListenerState) -> bool {
    l.servable
        && l.conditions
            .iter()
            .any(|c| c.kind == "Programmed" && c.status)
}

/// Validates every ListenerSet whose parent is one of `gateways` and appends the listeners of
/// the admitted ones to their Gateway (owner set). Call before route attachment.
pub(crate) fn evaluate<'a>(
    ctx: &Context<'a>,
    gateways: &mut [GatewayState<'a>],
) -> Vec<ListenerSetState<'a>> {
    let mut sets: Vec<(usize, &'a ListenerSet)> = ctx
        .snapshot
        .listener_sets
        .iter()
        .filter_map(|set| {
            let p = &set.spec.parent_ref;
            let group = p.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let kind = p.kind.as_deref().unwrap_or("Gateway");
            if group != GATEWAY_GROUP || kind != "Gateway" {
                return None;
            }
            let parent_ns = p.namespace.as_deref().unwrap_or(ns(&set.metadata));
            gateways
                .iter()
                .position(|g| g.key.namespace == parent_ns && g.key.name == p.name)
                .map(|gi| (gi, set.as_ref()))
        })
        .collect();
    // Precedence: older first, then "{namespace}/{name}" as one string.
    sets.sort_by_cached_key(|(gi, s)| {
        (
            *gi,
            creation_timestamp(&s.metadata),
            format!("{}/{}", ns(&s.metadata), name(&s.metadata)),
        )
    });

    let mut claims: BTreeMap<usize, Claims> = BTreeMap::new();
    let mut out = Vec::new();
    for (gi, set) in sets {
        let gw = &mut gateways[gi];
        let key = ObjectRef {
            namespace: ns(&set.metadata).to_string(),
            name: name(&set.metadata).to_string(),
        };
        let claims = claims.entry(gi).or_insert_with(|| {
            let mut c = Claims::default();
            for l in &gw.gateway.spec.listeners {
                // The Gateway's own conflicts are reported by its listener checks.
                let _ = c.claim(l.port, &l.protocol, l.hostname.as_deref());
            }
            c
        });
        if !allowed(ctx, gw.gateway, &key.namespace) {
            let msg = format!(
                "ListenerSet {key}: Gateway {} does not allow ListenerSets from namespace {}",
                gw.key, key.namespace
            );
            out.push(ListenerSetState {
                set,
                key,
                gateway: gi,
                conditions: vec![
                    Condition::new("Accepted", false, "NotAllowed", msg.clone()),
                    Condition::new("Programmed", false, "NotAllowed", msg),
                ],
            });
            continue;
        }
        // Each listener is validated alone: conflicts, including those inside this
        // ListenerSet, are decided by the claims in precedence order (the Gateway's listeners
        // own their ports first).
        let synthetic = as_gateway(set, gw.gateway);
        let mut states = Vec::with_capacity(synthetic.spec.listeners.len());
        for l in &synthetic.spec.listeners {
            let mut one = synthetic.clone();
            one.spec.listeners = vec![l.clone()];
            let Some(mut state) = listeners::evaluate_as(ctx, &one, "ListenerSet").pop() else {
                continue;
            };
            state.owner = Some(key.clone());
            if let Err(conflict) = claims.claim(l.port, &l.protocol, l.hostname.as_deref()) {
                mark_conflicted(&mut state, conflict);
            }
            states.push(state);
        }
        let total = states.len();
        let good = states.iter().filter(|l| valid(l)).count();
        let parent_accepted = gw
            .conditions
            .iter()
            .any(|c| c.kind == "Accepted" && c.status);
        let conditions = if !parent_accepted {
            let msg = format!(
                "ListenerSet {key}: parent Gateway {} is not accepted",
                gw.key
            );
            vec![
                Condition::new("Accepted", false, "ParentNotAccepted", msg.clone()),
                Condition::new("Programmed", false, "ParentNotAccepted", msg),
            ]
        } else if good == 0 {
            let msg = format!("ListenerSet {key}: no valid listener");
            vec![
                Condition::new("Accepted", false, "ListenersNotValid", msg.clone()),
                Condition::new("Programmed", false, "ListenersNotValid", msg),
            ]
        } else {
            let accepted = if good < total {
                Condition::new(
                    "Accepted",
                    true,
                    "ListenersNotValid",
                    format!("ListenerSet {key}: some listeners are not valid"),
                )
            } else {
                Condition::new("Accepted", true, "Accepted", "ListenerSet accepted")
            };
            let programmed = if gw.serve {
                Condition::new("Programmed", true, "Programmed", "ListenerSet programmed")
            } else {
                Condition::new(
                    "Programmed",
                    false,
                    "Pending",
                    format!(
                        "ListenerSet {key}: parent Gateway {} is not programmed",
                        gw.key
                    ),
                )
            };
            vec![accepted, programmed]
        };
        if !parent_accepted {
            // Keep the listeners for status, but nothing may attach to or serve them.
            for s in &mut states {
                s.routable = false;
                s.servable = false;
            }
        }
        gw.listeners.extend(states);
        out.push(ListenerSetState {
            set,
            key,
            gateway: gi,
            conditions,
        });
    }
    out
}

/// Finds the Gateway carrying the listeners of ListenerSet `namespace/name` (only admitted
/// ListenerSets have any).
pub(crate) fn find_parent(
    gateways: &[GatewayState<'_>],
    namespace: &str,
    name: &str,
) -> Option<(usize, ObjectRef)> {
    gateways.iter().enumerate().find_map(|(gi, g)| {
        g.listeners
            .iter()
            .filter_map(|l| l.owner.as_ref())
            .find(|o| o.namespace == namespace && o.name == name)
            .map(|o| (gi, o.clone()))
    })
}

/// `status.attachedListenerSets`: ListenerSets admitted with at least one valid listener (the
/// ones that are Accepted).
pub(crate) fn attached_count(gw: &GatewayState<'_>) -> usize {
    gw.listeners
        .iter()
        .filter(|l| valid(l))
        .filter_map(|l| l.owner.as_ref())
        .collect::<BTreeSet<_>>()
        .len()
}

/// The status of every ListenerSet of ours. Call after route attachment (attachedRoutes).
pub(crate) fn statuses(
    ctx: &Context<'_>,
    sets: &[ListenerSetState<'_>],
    gateways: &[GatewayState<'_>],
    out: &mut Vec<ObjectStatus>,
) {
    for s in sets {
        let generation = s.set.metadata.generation;
        let listeners: Vec<_> = gateways
            .get(s.gateway)
            .map(|g| g.listeners.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter(|l| l.owner.as_ref() == Some(&s.key))
            .map(|l| crate::status::listener_status(l, generation, ctx.now()))
            .collect();
        out.push(ObjectStatus {
            kind: "ListenerSet".into(),
            namespace: s.key.namespace.clone(),
            name: s.key.name.clone(),
            status: StatusJson::new(&json!({
                "conditions": render(&s.conditions, generation, ctx.now()),
                "listeners": listeners,
            })),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use serde_json::Value;
    use strait_model::Snapshot;

    use super::*;
    use crate::tests::{NOW, cond, listener, route_parent, self_signed, status, tls_secret};
    use crate::{CONTROLLER_NAME, CompileInput, CompileOutput, compile};

    const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait}
spec: {controllerName: strait.dev/gateway-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {team: apps}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: infra}
spec:
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: apps}
spec:
  ports: [{port: 8080}]
"#;

    fn gateway(allowed: &str) -> String {
        format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra, generation: 1}}
spec:
  gatewayClassName: strait
  {allowed}
  listeners:
  - {{name: main, port: 80, protocol: HTTP, hostname: gw.com, allowedRoutes: {{namespaces: {{from: All}}}}}}
"#
        )
    }

    fn listener_set(ns: &str, name: &str, created: &str, listeners: &str) -> String {
        format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {{name: {name}, namespace: {ns}, generation: 4, creationTimestamp: "{created}"}}
spec:
  parentRef: {{name: gw, namespace: infra}}
  listeners:
{listeners}
"#
        )
    }

    fn run(docs: &[String]) -> CompileOutput {
        let text = format!("{BASE}\n---\n{}", docs.join("\n---\n"));
        let report = strait_model::load_str(&text, Path::new("fixture.yaml"));
        assert!(report.errors.is_empty(), "fixture: {:?}", report.errors);
        run_snapshot(&report.snapshot)
    }

    fn run_snapshot(snapshot: &Snapshot) -> CompileOutput {
        let addrs = BTreeMap::from([(
            ObjectRef {
                namespace: "infra".into(),
                name: "gw".into(),
            },
            vec![IpAddr::from([127, 0, 0, 1])],
        )]);
        compile(&CompileInput {
            snapshot,
            controller_name: CONTROLLER_NAME,
            gateway_addresses: &addrs,
            now: NOW,
        })
    }

    fn pair(s: &str, r: &str) -> Option<(String, String)> {
        Some((s.to_string(), r.to_string()))
    }

    fn ls_status(out: &CompileOutput, ns: &str, name: &str) -> Value {
        status(out, "ListenerSet", ns, name).unwrap_or(Value::Null)
    }

    fn attached(out: &CompileOutput) -> Value {
        status(out, "Gateway", "infra", "gw")
            .map_or(Value::Null, |g| g["attachedListenerSets"].clone())
    }

    const ONE_LISTENER: &str = "  - {name: l, port: 80, protocol: HTTP, hostname: ls.com, allowedRoutes: {namespaces: {from: Same}}}";

    #[test]
    fn allowed_listeners_table() {
        // (allowedListeners, ListenerSet namespace, Accepted, attachedListenerSets)
        let cases = [
            ("", "infra", pair("False", "NotAllowed"), 0),
            (
                "allowedListeners: {namespaces: {from: None}}",
                "infra",
                pair("False", "NotAllowed"),
                0,
            ),
            (
                "allowedListeners: {namespaces: {from: Same}}",
                "infra",
                pair("True", "Accepted"),
                1,
            ),
            (
                "allowedListeners: {namespaces: {from: Same}}",
                "apps",
                pair("False", "NotAllowed"),
                0,
            ),
            (
                "allowedListeners: {namespaces: {from: All}}",
                "apps",
                pair("True", "Accepted"),
                1,
            ),
            (
                "allowedListeners: {namespaces: {from: Selector, selector: {matchLabels: {team: apps}}}}",
                "apps",
                pair("True", "Accepted"),
                1,
            ),
            (
                "allowedListeners: {namespaces: {from: Selector, selector: {matchLabels: {team: apps}}}}",
                "other",
                pair("False", "NotAllowed"),
                0,
            ),
        ];
        for (i, (allowed, ns, want, count)) in cases.into_iter().enumerate() {
            let out = run(&[
                gateway(allowed),
                listener_set(ns, "ls", "2026-01-01T00:00:00Z", ONE_LISTENER),
            ]);
            let st = &ls_status(&out, ns, "ls");
            assert_eq!(cond(&st["conditions"], "Accepted"), want, "case {i}: {st}");
            assert_eq!(
                cond(&st["conditions"], "Programmed").map(|c| c.0),
                want.as_ref().map(|w| w.0.clone()),
                "case {i}"
            );
            assert_eq!(st["conditions"][0]["observedGeneration"], 4, "case {i}");
            assert_eq!(attached(&out), count, "case {i}");
            // The Gateway never lists ListenerSet listeners itself.
            let gw = &status(&out, "Gateway", "infra", "gw").unwrap_or(Value::Null);
            assert_eq!(
                gw["listeners"].as_array().map(Vec::len),
                Some(1),
                "case {i}"
            );
            // Admitted listeners are served on the Gateway's port under a qualified name.
            let served: Vec<String> = out
                .config
                .gateways
                .iter()
                .flat_map(|g| &g.ports)
                .flat_map(|p| &p.listeners)
                .map(|l| l.name.clone())
                .collect();
            assert_eq!(
                served.contains(&format!("{ns}/ls/l")),
                count == 1,
                "case {i}: {served:?}"
            );
        }
    }

    #[test]
    fn conflict_precedence() {
        // The older ListenerSet wins even though its name sorts later; the Gateway beats both.
        let all = "allowedListeners: {namespaces: {from: All}}";
        let out = run(&[
            gateway(all),
            listener_set(
                "infra",
                "a-newer",
                "2026-01-02T00:00:00Z",
                "  - {name: tcp, port: 80, protocol: TCP}\n  - {name: dup, port: 80, protocol: HTTP, hostname: shared.com}\n  - {name: own, port: 80, protocol: HTTP, hostname: own.com}\n  - {name: own2, port: 80, protocol: HTTP, hostname: own.com}",
            ),
            listener_set(
                "infra",
                "b-older",
                "2026-01-01T00:00:00Z",
                "  - {name: dup, port: 80, protocol: HTTP, hostname: shared.com}\n  - {name: gwdup, port: 80, protocol: HTTP, hostname: gw.com}",
            ),
        ]);
        let older = &ls_status(&out, "infra", "b-older");
        let newer = &ls_status(&out, "infra", "a-newer");
        // (status, listener, condition, want)
        let cases = [
            (older, "dup", "Accepted", pair("True", "Accepted")),
            (older, "dup", "Conflicted", pair("False", "NoConflicts")),
            (
                older,
                "gwdup",
                "Accepted",
                pair("False", "HostnameConflict"),
            ),
            (
                older,
                "gwdup",
                "Conflicted",
                pair("True", "HostnameConflict"),
            ),
            (newer, "dup", "Accepted", pair("False", "HostnameConflict")),
            (
                newer,
                "dup",
                "Programmed",
                pair("False", "HostnameConflict"),
            ),
            (newer, "tcp", "Accepted", pair("False", "ProtocolConflict")),
            (newer, "tcp", "Conflicted", pair("True", "ProtocolConflict")),
            // A protocol loser earlier in the same ListenerSet does not take the port.
            (newer, "own", "Accepted", pair("True", "Accepted")),
            (newer, "own", "Programmed", pair("True", "Programmed")),
            (newer, "own2", "Accepted", pair("False", "HostnameConflict")),
        ];
        for (i, (st, l, ty, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                cond(&listener(st, l)["conditions"], ty),
                want,
                "case {i}: {st}"
            );
        }
        assert_eq!(
            cond(&older["conditions"], "Accepted"),
            pair("True", "ListenersNotValid")
        );
        assert_eq!(
            cond(&older["conditions"], "Programmed"),
            pair("True", "Programmed")
        );
        assert_eq!(
            cond(&newer["conditions"], "Accepted"),
            pair("True", "ListenersNotValid")
        );
        assert_eq!(attached(&out), 2);
    }

    #[test]
    fn route_attachment_table() {
        let all = "allowedListeners: {namespaces: {from: All}}";
        let route = |ns: &str, name: &str, parent: &str| {
            format!(
                r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{parent}]
  rules: [{{backendRefs: [{{name: svc, port: 8080}}]}}]
"#
            )
        };
        let out = run(&[
            gateway(all),
            listener_set("apps", "ls", "2026-01-01T00:00:00Z", ONE_LISTENER),
            route("apps", "via-ls", "{kind: ListenerSet, name: ls}"),
            route(
                "apps",
                "via-ls-section",
                "{kind: ListenerSet, name: ls, sectionName: l}",
            ),
            route(
                "apps",
                "via-gw-ls-section",
                "{name: gw, namespace: infra, sectionName: l}",
            ),
            route("apps", "via-gw", "{name: gw, namespace: infra}"),
            route(
                "infra",
                "wrong-ns",
                "{kind: ListenerSet, name: ls, namespace: apps}",
            ),
        ]);
        // (route namespace, route, parent name, parentRef kind, Accepted)
        let cases = [
            (
                "apps",
                "via-ls",
                "ls",
                "ListenerSet",
                pair("True", "Accepted"),
            ),
            (
                "apps",
                "via-ls-section",
                "ls",
                "ListenerSet",
                pair("True", "Accepted"),
            ),
            (
                "apps",
                "via-gw-ls-section",
                "gw",
                "Gateway",
                pair("False", "NoMatchingParent"),
            ),
            ("apps", "via-gw", "gw", "Gateway", pair("True", "Accepted")),
            // `Same` on a ListenerSet listener means the ListenerSet's namespace.
            (
                "infra",
                "wrong-ns",
                "ls",
                "ListenerSet",
                pair("False", "NotAllowedByListeners"),
            ),
        ];
        for (i, (ns, name, parent, kind, want)) in cases.into_iter().enumerate() {
            let st = &status(&out, "HTTPRoute", ns, name).unwrap_or(Value::Null);
            assert_eq!(
                st["parents"].as_array().map(Vec::len),
                Some(1),
                "case {i}: {st}"
            );
            let p = route_parent(st, parent);
            assert_eq!(p["parentRef"]["kind"], kind, "case {i}");
            assert_eq!(p["parentRef"]["group"], GATEWAY_GROUP, "case {i}");
            assert_eq!(cond(&p["conditions"], "Accepted"), want, "case {i}: {st}");
        }
        let ls = &ls_status(&out, "apps", "ls");
        assert_eq!(listener(ls, "l")["attachedRoutes"], 2);
        let gw = &status(&out, "Gateway", "infra", "gw").unwrap_or(Value::Null);
        assert_eq!(listener(gw, "main")["attachedRoutes"], 1);
        // One port, both listeners; the ListenerSet's carries only its own routes.
        let ports = &out.config.gateways[0].ports;
        assert_eq!(ports.len(), 1);
        let ls_listener = ports[0].listeners.iter().find(|l| l.name == "apps/ls/l");
        let routes: Vec<&str> = ls_listener
            .map(|l| {
                l.http_routes
                    .iter()
                    .map(|r| r.route.name.as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(routes, ["via-ls", "via-ls-section"]);
        assert_eq!(
            ls_listener.and_then(|l| l.hostname.as_deref()),
            Some("ls.com")
        );
    }

    #[test]
    fn certificate_reference_grants() {
        let all = "allowedListeners: {namespaces: {from: All}}";
        let https = "  - {name: l, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert, namespace: infra}]}}";
        let grant = |kind: &str| {
            format!(
                r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: g, namespace: infra}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: {kind}, namespace: apps}}]
  to: [{{group: "", kind: Secret}}]
"#
            )
        };
        // (grant, listener ResolvedRefs, ListenerSet Accepted)
        let cases = [
            (
                None,
                pair("False", "RefNotPermitted"),
                pair("False", "ListenersNotValid"),
            ),
            (
                Some("Gateway"),
                pair("False", "RefNotPermitted"),
                pair("False", "ListenersNotValid"),
            ),
            (
                Some("ListenerSet"),
                pair("True", "ResolvedRefs"),
                pair("True", "Accepted"),
            ),
        ];
        let (crt, key) = self_signed();
        for (i, (kind, refs, accepted)) in cases.into_iter().enumerate() {
            let mut docs = vec![
                gateway(all),
                listener_set("apps", "ls", "2026-01-01T00:00:00Z", https),
            ];
            docs.extend(kind.map(grant));
            let text = format!("{BASE}\n---\n{}", docs.join("\n---\n"));
            let mut snapshot = strait_model::load_str(&text, Path::new("fixture.yaml")).snapshot;
            snapshot
                .secrets
                .push(tls_secret("infra", "cert", &crt, &key).into());
            let out = run_snapshot(&snapshot);
            let st = &ls_status(&out, "apps", "ls");
            assert_eq!(
                cond(&listener(st, "l")["conditions"], "ResolvedRefs"),
                refs,
                "case {i}"
            );
            assert_eq!(cond(&st["conditions"], "Accepted"), accepted, "case {i}");
        }
    }

    #[test]
    fn claims_precedence_table() {
        // (port, protocol, hostname, expected) claimed in order on one Gateway.
        type Case<'a> = (i32, &'a str, Option<&'a str>, Result<(), Conflict>);
        let cases: &[Case<'_>] = &[
            (80, "HTTP", Some("a.com"), Ok(())),
            (80, "HTTP", Some("b.com"), Ok(())),
            (80, "HTTP", Some("a.com"), Err(Conflict::Hostname)),
            (80, "TCP", None, Err(Conflict::Protocol)),
            (80, "HTTP", None, Ok(())),
            (80, "HTTP", None, Err(Conflict::Hostname)),
            (443, "HTTPS", Some("a.com"), Ok(())),
            (443, "HTTP", Some("c.com"), Err(Conflict::Protocol)),
            (8080, "TCP", None, Ok(())),
            (8080, "HTTP", Some("d.com"), Err(Conflict::Protocol)),
        ];
        let mut claims = Claims::default();
        for (i, (port, proto, host, want)) in cases.iter().enumerate() {
            assert_eq!(claims.claim(*port, proto, *host), *want, "case {i}");
        }
    }
}

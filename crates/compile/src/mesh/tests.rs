//! Table-driven tests of the mesh half over YAML fixtures: the conformance mesh base
//! (testdata/base.yaml) plus per-case namespace labels and objects.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde_json::{Value, json};
use strait_config::mesh::{MeshConfig, MeshProtocol, MtlsMode, WaypointPort};
use strait_config::{AppProtocol, BackendTarget, ClusterKey, ListenerProtocol, ObjectRef};
use strait_model::Snapshot;

use crate::{CONTROLLER_NAME, CompileInput, CompileOutput, compile};

const NOW: &str = "2026-01-01T00:00:00Z";
const MESH: &str = "gateway-conformance-mesh";
const CONSUMER: &str = "gateway-conformance-mesh-consumer";
const BASE: &str = include_str!("testdata/base.yaml");

/// A running pod of the default waypoint.
const WAYPOINT_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-abc
  namespace: gateway-conformance-mesh
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  serviceAccountName: waypoint
  nodeName: node-a
  containers: [{name: waypoint, image: strait}]
status: {phase: Running, podIP: 198.18.1.2}
"#;

/// A running pod of the waypoint `edge`.
const EDGE_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: edge-abc
  namespace: gateway-conformance-mesh
  labels: {gateway.networking.k8s.io/gateway-name: edge}
spec:
  serviceAccountName: edge
  containers: [{name: waypoint, image: strait}]
status: {phase: Running, podIP: 198.18.1.3}
"#;

/// A producer route on every port of Service echo.
const ECHO_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-route, namespace: gateway-conformance-mesh, generation: 4}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  hostnames: [echo.example.com]
  rules:
  - backendRefs: [{name: echo-v1, port: 80}]
"#;

/// Producer route on echo-v1 port 80 and a consumer route on echo-v1 (all ports) from the
/// consumer namespace, whose backendRef crosses namespaces without a ReferenceGrant.
const CONSUMER_ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: v1-producer, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: 80}]
  rules:
  - backendRefs: [{name: echo-v2, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: v1-consumer, namespace: gateway-conformance-mesh-consumer}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo-v1, namespace: gateway-conformance-mesh}
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}
    backendRefs: [{name: echo-v1, namespace: gateway-conformance-mesh, port: 80}]
"#;

/// MeshPorts: a port-scoped parentRef and an unscoped one.
const PORT_ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split-v1, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: 80}]
  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split-v2, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v2}]
  rules: [{backendRefs: [{name: echo-v2, port: 80}]}]
"#;

const SECTION_ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: alt, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, sectionName: http-alt}]
  rules: [{backendRefs: [{name: echo-v1, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: both, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, sectionName: http, port: 80}]
  rules: [{backendRefs: [{name: echo-v2, port: 80}]}]
"#;

const BAD_PARENTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: gateway-conformance-mesh}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo-v9}
  - {group: "", kind: Service, name: echo, port: 81}
  - {group: "", kind: Service, name: echo, sectionName: nope}
  - {group: "", kind: Service, name: echo, sectionName: http, port: 8080}
  - {group: "", kind: Service, name: echo, port: 9090}
  - {group: "", kind: Service, name: echo-v1, namespace: nowhere}
  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
"#;

const OUTSIDE_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-outside, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: ext, namespace: outside}]
  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
"#;

/// MeshGRPCRouteWeight, verbatim (echo-v3 does not exist).
const GRPC_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: mesh-grpc-weighted-backends
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 7070
  rules:
  - backendRefs:
    - name: echo-v1
      port: 7070
      weight: 70
    - name: echo-v2
      port: 7070
      weight: 30
    - name: echo-v3
      port: 7070
      weight: 0
"#;

const INVALID_KIND_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: invalid-kind, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{group: example.com, kind: Widget, name: w, port: 80}]}]
"#;

const WAYPOINT_PODS_NOT_SERVING: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-pending
  namespace: gateway-conformance-mesh
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {containers: [{name: waypoint, image: strait}]}
status: {phase: Pending, podIP: 198.18.1.4}
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-unready
  namespace: gateway-conformance-mesh
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {containers: [{name: waypoint, image: strait}]}
status:
  phase: Running
  podIP: 198.18.1.5
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-terminating
  namespace: gateway-conformance-mesh
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
  deletionTimestamp: "2026-01-01T00:00:00Z"
spec: {containers: [{name: waypoint, image: strait}]}
status: {phase: Running, podIP: 198.18.1.6}
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-other-namespace
  namespace: gateway-conformance-mesh-consumer
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {containers: [{name: waypoint, image: strait}]}
status: {phase: Running, podIP: 198.18.2.2}
"#;

const ENABLED: &str = "strait.dev/mesh: enabled";

/// Loads the base with namespace `gateway-conformance-mesh` labelled `labels` (a YAML flow
/// mapping body) and the case's objects.
fn load(labels: &str, extra: &str) -> Snapshot {
    let namespace = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {MESH}\n  labels: {{{labels}}}\n"
    );
    let text = format!("{namespace}---\n{BASE}\n---\n{extra}");
    let report = strait_model::load_str(&text, Path::new("mesh-fixture.yaml"));
    assert!(
        report.errors.is_empty(),
        "fixture errors: {:?}",
        report.errors
    );
    report.snapshot
}

fn run(snapshot: &Snapshot) -> CompileOutput {
    let addresses: BTreeMap<ObjectRef, Vec<IpAddr>> = BTreeMap::from([(
        object(&format!("{MESH}/gw")),
        vec![IpAddr::from([127, 0, 0, 1])],
    )]);
    compile(&CompileInput {
        snapshot,
        controller_name: CONTROLLER_NAME,
        gateway_addresses: &addresses,
        now: NOW,
    })
}

/// `ns/name`, or `name` in namespace `gateway-conformance-mesh`.
fn object(s: &str) -> ObjectRef {
    let (namespace, name) = s.split_once('/').unwrap_or((MESH, s));
    ObjectRef {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad IP {s:?} in test: {e}"))
}

fn route_status(out: &CompileOutput, route: &str) -> Value {
    let (kind, rest) = route.split_once(' ').unwrap_or(("HTTPRoute", route));
    let key = object(rest);
    let mut matching: Vec<Value> = out
        .statuses
        .iter()
        .filter(|s| s.kind == kind && s.namespace == key.namespace && s.name == key.name)
        .map(|s| s.status.value().unwrap())
        .collect();
    assert_eq!(matching.len(), 1, "{route}: one status, got {matching:?}");
    matching.remove(0)
}

/// The waypoint port of `service` and `port`, wherever the Service is bound.
fn waypoint_port<'a>(mesh: &'a MeshConfig, service: &str, port: u16) -> &'a WaypointPort {
    let key = object(service);
    mesh.waypoints
        .iter()
        .flat_map(|w| &w.services)
        .find(|s| s.service == key)
        .unwrap_or_else(|| panic!("{service} is bound to no waypoint"))
        .ports
        .iter()
        .find(|p| p.port == port)
        .unwrap_or_else(|| panic!("{service} has no waypoint port {port}"))
}

/// Names (`ns/name`, or `name` in `gateway-conformance-mesh`) of the routes a caller from
/// `caller` gets on a port.
fn routes_for(port: &WaypointPort, caller: Option<&str>) -> Vec<String> {
    let Some(pc) = port.routes_for(caller) else {
        return Vec::new();
    };
    assert_eq!(pc.port, port.port);
    assert_eq!(pc.protocol, ListenerProtocol::Http);
    assert_eq!(pc.listeners.len(), 1, "one listener per waypoint port");
    pc.listeners[0]
        .http_routes
        .iter()
        .map(|r| {
            assert!(r.hostnames.is_empty(), "mesh route hostnames are cleared");
            if r.route.namespace == MESH {
                r.route.name.clone()
            } else {
                format!("{}/{}", r.route.namespace, r.route.name)
            }
        })
        .collect()
}

type Conditions = &'static [(&'static str, &'static str, &'static str)];

/// Objects are named `ns/name`, or `name` in namespace `gateway-conformance-mesh`.
struct Case {
    name: &'static str,
    /// Labels of namespace `gateway-conformance-mesh`.
    labels: &'static str,
    yaml: &'static [&'static str],
    /// `(service, waypoint)`; `None` = the Service is in the mesh without a waypoint.
    bindings: &'static [(&'static str, Option<&'static str>)],
    /// Every waypoint with its addresses.
    waypoints: &'static [(&'static str, &'static [&'static str])],
    /// `(service, port, caller namespace, routes that apply)`; none = the Service's endpoints.
    tables: &'static [(
        &'static str,
        u16,
        Option<&'static str>,
        &'static [&'static str],
    )],
    /// `(route, entry index in status.parents, parentRef name, conditions)`; the conditions
    /// listed are all the entry has.
    parents: &'static [(&'static str, usize, &'static str, Conditions)],
}

const ACCEPTED: (&str, &str, &str) = ("Accepted", "True", "Accepted");
const RESOLVED: (&str, &str, &str) = ("ResolvedRefs", "True", "ResolvedRefs");
const READY: (&str, &str, &str) = ("strait.dev/WaypointReady", "True", "Ready");
const UNAVAILABLE: (&str, &str, &str) =
    ("strait.dev/WaypointReady", "False", "WaypointUnavailable");
const NO_WAYPOINT: (&str, &str, &str) = ("strait.dev/WaypointReady", "False", "NoWaypoint");
const NO_MATCHING_PARENT: (&str, &str, &str) = ("Accepted", "False", "NoMatchingParent");

const CASES: &[Case] = &[
    Case {
        name: "default waypoint bound by a producer route",
        labels: ENABLED,
        yaml: &[WAYPOINT_POD, ECHO_ROUTE],
        bindings: &[
            ("echo", Some("waypoint")),
            ("echo-v1", None),
            ("echo-v2", None),
            ("gateway-conformance-mesh-consumer/echo-v1", None),
        ],
        waypoints: &[("waypoint", &["198.18.1.2"])],
        tables: &[
            ("echo", 80, None, &["echo-route"]),
            ("echo", 80, Some(CONSUMER), &["echo-route"]),
            ("echo", 8080, None, &["echo-route"]),
            ("echo", 7070, None, &["echo-route"]),
            // TCP ports carry no HTTP routes.
            ("echo", 9090, None, &[]),
            ("echo", 443, None, &[]),
        ],
        parents: &[("echo-route", 0, "echo", &[ACCEPTED, RESOLVED, READY])],
    },
    Case {
        name: "consumer routes replace producer routes for their namespace only",
        labels: ENABLED,
        yaml: &[WAYPOINT_POD, CONSUMER_ROUTES],
        bindings: &[("echo-v1", Some("waypoint")), ("echo", None)],
        waypoints: &[("waypoint", &["198.18.1.2"])],
        tables: &[
            ("echo-v1", 80, None, &["v1-producer"]),
            ("echo-v1", 80, Some(MESH), &["v1-producer"]),
            ("echo-v1", 80, Some("outside"), &["v1-producer"]),
            (
                "echo-v1",
                80,
                Some(CONSUMER),
                &["gateway-conformance-mesh-consumer/v1-consumer"],
            ),
            (
                "echo-v1",
                8080,
                Some(CONSUMER),
                &["gateway-conformance-mesh-consumer/v1-consumer"],
            ),
            ("echo-v1", 8080, None, &[]),
        ],
        parents: &[
            ("v1-producer", 0, "echo-v1", &[ACCEPTED, RESOLVED, READY]),
            // Mesh backendRefs to other namespaces need no ReferenceGrant (GEP-1426).
            (
                "gateway-conformance-mesh-consumer/v1-consumer",
                0,
                "echo-v1",
                &[ACCEPTED, RESOLVED, READY],
            ),
        ],
    },
    Case {
        name: "a parentRef port scopes the route to that Service port",
        labels: ENABLED,
        yaml: &[WAYPOINT_POD, PORT_ROUTES],
        bindings: &[
            ("echo-v1", Some("waypoint")),
            ("echo-v2", Some("waypoint")),
            ("echo", None),
        ],
        waypoints: &[("waypoint", &["198.18.1.2"])],
        tables: &[
            ("echo-v1", 80, None, &["split-v1"]),
            ("echo-v1", 8080, None, &[]),
            ("echo-v1", 7070, None, &[]),
            ("echo-v2", 80, None, &["split-v2"]),
            ("echo-v2", 8080, None, &["split-v2"]),
            ("echo-v2", 7070, None, &["split-v2"]),
            ("echo-v2", 9090, None, &[]),
        ],
        parents: &[
            ("split-v1", 0, "echo-v1", &[ACCEPTED, RESOLVED, READY]),
            ("split-v2", 0, "echo-v2", &[ACCEPTED, RESOLVED, READY]),
        ],
    },
    Case {
        name: "sectionName selects the Service port of that name",
        labels: ENABLED,
        yaml: &[WAYPOINT_POD, SECTION_ROUTES],
        bindings: &[("echo", Some("waypoint"))],
        waypoints: &[("waypoint", &["198.18.1.2"])],
        tables: &[
            ("echo", 8080, None, &["alt"]),
            ("echo", 80, None, &["both"]),
            ("echo", 7070, None, &[]),
        ],
        parents: &[
            ("alt", 0, "echo", &[ACCEPTED, RESOLVED, READY]),
            ("both", 0, "echo", &[ACCEPTED, RESOLVED, READY]),
        ],
    },
    Case {
        name: "parentRefs naming no Service, port or HTTP port are not accepted",
        labels: ENABLED,
        yaml: &[WAYPOINT_POD, BAD_PARENTS],
        // Nothing accepted: the default waypoint stays unused.
        bindings: &[("echo", None), ("echo-v1", None)],
        waypoints: &[],
        tables: &[],
        parents: &[
            ("bad", 0, "echo-v9", &[NO_MATCHING_PARENT, RESOLVED]),
            ("bad", 1, "echo", &[NO_MATCHING_PARENT, RESOLVED]),
            ("bad", 2, "echo", &[NO_MATCHING_PARENT, RESOLVED]),
            ("bad", 3, "echo", &[NO_MATCHING_PARENT, RESOLVED]),
            (
                "bad",
                4,
                "echo",
                &[("Accepted", "False", "UnsupportedValue"), RESOLVED],
            ),
            ("bad", 5, "echo-v1", &[NO_MATCHING_PARENT, RESOLVED]),
        ],
    },
    Case {
        name: "waypoint label none opts the namespace out",
        labels: "strait.dev/mesh: enabled, strait.dev/waypoint: none",
        yaml: &[WAYPOINT_POD, ECHO_ROUTE],
        bindings: &[("echo", None), ("echo-v1", None)],
        waypoints: &[],
        tables: &[],
        parents: &[("echo-route", 0, "echo", &[ACCEPTED, RESOLVED, NO_WAYPOINT])],
    },
    Case {
        name: "named waypoint binds every Service of the namespace",
        labels: "strait.dev/mesh: enabled, strait.dev/waypoint: edge",
        yaml: &[EDGE_POD],
        bindings: &[
            ("echo", Some("edge")),
            ("echo-v1", Some("edge")),
            ("echo-v2", Some("edge")),
            ("gateway-conformance-mesh-consumer/echo-v1", None),
        ],
        waypoints: &[("edge", &["198.18.1.3"])],
        tables: &[("echo", 80, None, &[]), ("echo-v2", 9090, None, &[])],
        parents: &[],
    },
    Case {
        name: "named waypoint without pods is down",
        labels: "strait.dev/mesh: enabled, strait.dev/waypoint: edge",
        // The default waypoint's pod does not serve `edge`.
        yaml: &[WAYPOINT_POD, ECHO_ROUTE],
        bindings: &[("echo-v1", Some("edge"))],
        waypoints: &[("edge", &[])],
        tables: &[("echo", 80, None, &["echo-route"])],
        parents: &[("echo-route", 0, "echo", &[ACCEPTED, RESOLVED, UNAVAILABLE])],
    },
    Case {
        name: "default waypoint without pods is down: still bound, fail closed",
        labels: ENABLED,
        yaml: &[ECHO_ROUTE],
        bindings: &[("echo", Some("waypoint"))],
        waypoints: &[("waypoint", &[])],
        tables: &[("echo", 80, None, &["echo-route"])],
        parents: &[("echo-route", 0, "echo", &[ACCEPTED, RESOLVED, UNAVAILABLE])],
    },
    Case {
        name: "pending, unready, terminating and foreign waypoint pods do not serve",
        labels: ENABLED,
        yaml: &[WAYPOINT_PODS_NOT_SERVING, ECHO_ROUTE],
        bindings: &[("echo", Some("waypoint"))],
        waypoints: &[("waypoint", &[])],
        tables: &[],
        parents: &[("echo-route", 0, "echo", &[ACCEPTED, RESOLVED, UNAVAILABLE])],
    },
    Case {
        name: "a Service outside the mesh accepts the route but no waypoint applies it",
        labels: ENABLED,
        yaml: &[WAYPOINT_POD, OUTSIDE_ROUTE],
        bindings: &[("echo", None)],
        waypoints: &[],
        tables: &[],
        parents: &[("to-outside", 0, "ext", &[ACCEPTED, RESOLVED, NO_WAYPOINT])],
    },
    Case {
        name: "GRPCRoute with a Service parent",
        labels: ENABLED,
        yaml: &[WAYPOINT_POD, GRPC_ROUTE],
        bindings: &[("echo", Some("waypoint"))],
        waypoints: &[("waypoint", &["198.18.1.2"])],
        tables: &[
            ("echo", 7070, None, &["mesh-grpc-weighted-backends"]),
            ("echo", 80, None, &[]),
        ],
        parents: &[(
            "GRPCRoute gateway-conformance-mesh/mesh-grpc-weighted-backends",
            0,
            "echo",
            &[
                ACCEPTED,
                ("ResolvedRefs", "False", "BackendNotFound"),
                READY,
            ],
        )],
    },
    Case {
        name: "backendRef of an unsupported kind",
        labels: ENABLED,
        yaml: &[WAYPOINT_POD, INVALID_KIND_ROUTE],
        bindings: &[("echo", Some("waypoint"))],
        waypoints: &[("waypoint", &["198.18.1.2"])],
        tables: &[("echo", 80, None, &["invalid-kind"])],
        parents: &[(
            "invalid-kind",
            0,
            "echo",
            &[ACCEPTED, ("ResolvedRefs", "False", "InvalidKind"), READY],
        )],
    },
];

#[test]
fn mesh_cases() {
    for case in CASES {
        let out = run(&load(case.labels, &case.yaml.join("\n---\n")));
        let mesh = &out.mesh;
        let name = case.name;
        assert_eq!(mesh.version, 0, "{name}");
        assert_eq!(mesh.trust_domain, "cluster.local", "{name}");

        for (service, waypoint) in case.bindings {
            let s = mesh
                .services
                .iter()
                .find(|s| s.service == object(service))
                .unwrap_or_else(|| panic!("{name}: no mesh Service {service}"));
            assert_eq!(
                s.waypoint,
                waypoint.map(object),
                "{name}: waypoint of {service}"
            );
        }

        let waypoints: Vec<(ObjectRef, Vec<IpAddr>)> = mesh
            .waypoints
            .iter()
            .map(|w| (w.gateway.clone(), w.addresses.clone()))
            .collect();
        let want: Vec<(ObjectRef, Vec<IpAddr>)> = case
            .waypoints
            .iter()
            .map(|(w, a)| (object(w), a.iter().map(|a| ip(a)).collect()))
            .collect();
        assert_eq!(waypoints, want, "{name}: waypoints");
        for w in &mesh.waypoints {
            assert_eq!(w.service_account, w.gateway.name, "{name}");
            // A waypoint lists exactly the Services bound to it.
            let bound: Vec<&ObjectRef> = mesh
                .services
                .iter()
                .filter(|s| s.waypoint.as_ref() == Some(&w.gateway))
                .map(|s| &s.service)
                .collect();
            let listed: Vec<&ObjectRef> = w.services.iter().map(|s| &s.service).collect();
            assert_eq!(listed, bound, "{name}: services of {}", w.gateway);
        }

        for (service, port, caller, want) in case.tables {
            let p = waypoint_port(mesh, service, *port);
            assert_eq!(
                p.cluster,
                ClusterKey {
                    namespace: object(service).namespace,
                    name: object(service).name,
                    port: *port,
                },
                "{name}"
            );
            assert_eq!(
                routes_for(p, *caller),
                *want,
                "{name}: routes of {service}:{port} for caller {caller:?}"
            );
        }

        for (route, index, parent, conditions) in case.parents {
            let st = &route_status(&out, route);
            let entry = &st["parents"][*index];
            assert_eq!(entry["controllerName"], CONTROLLER_NAME, "{name}: {route}");
            assert_eq!(entry["parentRef"]["group"], "", "{name}: {route}");
            assert_eq!(entry["parentRef"]["kind"], "Service", "{name}: {route}");
            assert_eq!(entry["parentRef"]["name"], *parent, "{name}: {route}");
            let got: Vec<(String, String, String)> = entry["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    assert_eq!(c["lastTransitionTime"], NOW);
                    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
                    (s("type"), s("status"), s("reason"))
                })
                .collect();
            let want: Vec<(String, String, String)> = conditions
                .iter()
                .map(|(t, s, r)| (t.to_string(), s.to_string(), r.to_string()))
                .collect();
            assert_eq!(got, want, "{name}: {route} parent {index}");
        }
    }
}

#[test]
fn route_status_details() {
    let out = run(&load(
        ENABLED,
        &[ECHO_ROUTE, PORT_ROUTES, BAD_PARENTS].join("\n---\n"),
    ));
    let st = &route_status(&out, "echo-route");
    let entry = &st["parents"][0];
    // The parentRef as written: no namespace or port when none was given.
    assert_eq!(
        entry["parentRef"],
        json!({"group": "", "kind": "Service", "name": "echo"})
    );
    for c in entry["conditions"].as_array().into_iter().flatten() {
        assert_eq!(c["observedGeneration"], 4, "{c}");
    }
    assert_eq!(
        entry["conditions"][2]["message"],
        "waypoint gateway-conformance-mesh/waypoint has no running pods: connections to \
         Service gateway-conformance-mesh/echo are refused"
    );
    let st = &route_status(&out, "split-v1");
    assert_eq!(
        st["parents"][0]["parentRef"],
        json!({"group": "", "kind": "Service", "name": "echo-v1", "port": 80})
    );
    let st = &route_status(&out, "bad");
    let parents = st["parents"].as_array().cloned().unwrap_or_default();
    assert_eq!(parents.len(), 6);
    assert_eq!(
        parents[3]["parentRef"],
        json!({"group": "", "kind": "Service", "name": "echo", "sectionName": "http", "port": 8080})
    );
    assert_eq!(
        parents[5]["parentRef"]["namespace"], "nowhere",
        "a given namespace is echoed"
    );
    let messages: Vec<&str> = parents
        .iter()
        .map(|p| p["conditions"][0]["message"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        messages[..4],
        [
            "Service gateway-conformance-mesh/echo-v9 not found",
            "Service gateway-conformance-mesh/echo has no TCP port numbered 81",
            "Service gateway-conformance-mesh/echo has no TCP port named nope",
            "Service gateway-conformance-mesh/echo has no TCP port named http numbered 8080",
        ]
    );
    assert!(
        messages[4].contains("port 9090 is not HTTP"),
        "{}",
        messages[4]
    );
}

#[test]
fn route_tables_are_one_listener_port_configs() {
    let unnamed = r#"
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: gateway-conformance-mesh}
spec:
  clusterIP: 198.19.0.20
  ports: [{port: 8000, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: plain, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: plain}]
  rules: [{backendRefs: [{name: plain, port: 8000}]}]
"#;
    let out = run(&load(
        ENABLED,
        &[WAYPOINT_POD, ECHO_ROUTE, unnamed].join("\n---\n"),
    ));
    let port = waypoint_port(&out.mesh, "echo", 80);
    let producer = port.producer.as_ref().expect("producer routes");
    let listener = &producer.listeners[0];
    assert_eq!(listener.name, "http");
    assert_eq!(listener.hostname, None);
    assert!(listener.tls.is_none());
    let route = &listener.http_routes[0];
    assert!(route.hostnames.is_empty(), "route hostnames are cleared");
    assert_eq!(
        route.rules[0].backends[0].target,
        BackendTarget::Cluster(ClusterKey {
            namespace: MESH.into(),
            name: "echo-v1".into(),
            port: 80,
        })
    );
    assert!(port.consumers.is_empty());
    let plain = waypoint_port(&out.mesh, "plain", 8000);
    let listener = &plain.producer.as_ref().expect("producer routes").listeners[0];
    assert_eq!(
        listener.name, "8000",
        "unnamed port: listener named by number"
    );
    // Ingress config is untouched by mesh routes.
    assert!(out.config.gateways.is_empty());
    assert!(out.config.clusters.is_empty());
}

#[test]
fn workloads_of_enrolled_namespaces() {
    let out = run(&load(ENABLED, &[WAYPOINT_POD, ECHO_ROUTE].join("\n---\n")));
    let mesh = &out.mesh;
    /// `(ip, pod, service account, captured, node, netns)`.
    type Summary<'a> = (
        IpAddr,
        String,
        String,
        bool,
        Option<&'a str>,
        Option<&'a str>,
    );
    let summary: Vec<Summary<'_>> = mesh
        .workloads
        .iter()
        .map(|w| {
            (
                w.ip,
                w.pod.to_string(),
                w.service_account.clone(),
                w.captured,
                w.node.as_deref(),
                w.netns.as_deref(),
            )
        })
        .collect();
    // Sorted by IP; Succeeded, IP-less, host-network and non-enrolled pods left out.
    assert_eq!(
        summary,
        vec![
            (
                ip("198.18.1.2"),
                "gateway-conformance-mesh/waypoint-abc".into(),
                "waypoint".into(),
                false,
                Some("node-a"),
                None
            ),
            (
                ip("198.18.1.11"),
                "gateway-conformance-mesh/echo-v1-abc".into(),
                "default".into(),
                true,
                Some("node-a"),
                Some("strait-t-echo-v1")
            ),
            (
                ip("198.18.1.12"),
                "gateway-conformance-mesh/echo-v2-abc".into(),
                "echo".into(),
                true,
                Some("node-b"),
                None
            ),
            (
                ip("198.18.2.11"),
                "gateway-conformance-mesh-consumer/echo-v1-abc".into(),
                "default".into(),
                true,
                Some("node-a"),
                None
            ),
        ]
    );
    for w in &mesh.workloads {
        assert_eq!(mesh.workload(w.ip).map(|f| &f.pod), Some(&w.pod));
        assert_eq!(w.mtls, MtlsMode::Permissive);
    }
    assert!(mesh.workload(ip("198.18.1.99")).is_none(), "Succeeded pod");
    assert!(
        mesh.workload(ip("198.18.0.1")).is_none(),
        "host network pod"
    );
    assert!(mesh.workload(ip("198.18.9.1")).is_none(), "not enrolled");

    // Capture exclusions from annotations, invalid entries dropped.
    let v2 = mesh.workload(ip("198.18.1.12")).expect("echo-v2 pod");
    assert_eq!(v2.capture.outbound_ports, vec![5432, 6379]);
    assert_eq!(
        v2.capture.outbound_cidrs,
        vec!["198.18.200.0/24".to_string(), "198.18.201.1/32".to_string()]
    );
    assert_eq!(v2.capture.inbound_ports, vec![15090]);
    let v1 = mesh.workload(ip("198.18.1.11")).expect("echo-v1 pod");
    assert_eq!(v1.capture, Default::default());

    // Without a route the default waypoint is unused: its pod is neither listed nor captured.
    let out = run(&load(ENABLED, WAYPOINT_POD));
    assert!(out.mesh.workload(ip("198.18.1.2")).is_none());
    assert!(out.mesh.waypoints.is_empty());
}

#[test]
fn strict_mtls_namespace() {
    let out = run(&load(
        "strait.dev/mesh: enabled, strait.dev/mtls: strict",
        "",
    ));
    let modes: Vec<(String, MtlsMode)> = out
        .mesh
        .workloads
        .iter()
        .map(|w| (w.pod.namespace.clone(), w.mtls))
        .collect();
    assert_eq!(
        modes,
        vec![
            (MESH.to_string(), MtlsMode::Strict),
            (MESH.to_string(), MtlsMode::Strict),
            (CONSUMER.to_string(), MtlsMode::Permissive),
        ]
    );
}

#[test]
fn namespace_not_enrolled() {
    let out = run(&load("strait.dev/mtls: strict", ECHO_ROUTE));
    let namespaces: Vec<&str> = out
        .mesh
        .services
        .iter()
        .map(|s| s.service.namespace.as_str())
        .collect();
    assert_eq!(namespaces, vec![CONSUMER], "only the enrolled namespace");
    assert!(
        out.mesh
            .workloads
            .iter()
            .all(|w| w.pod.namespace == CONSUMER)
    );
    let st = &route_status(&out, "echo-route");
    assert_eq!(st["parents"][0]["conditions"][2]["reason"], "NoWaypoint");
}

#[test]
fn services_protocols_and_clusters() {
    let extra = r#"
apiVersion: v1
kind: Service
metadata: {name: named, namespace: gateway-conformance-mesh}
spec:
  clusterIPs: [198.19.0.30, "fd00::30"]
  ports:
  - {name: http2-api, port: 81}
  - {name: ws, port: 82}
  - {name: tcp-db, port: 83, appProtocol: http}
  - {name: grpc-web, port: 84}
  - {name: web, port: 85}
  - {name: h2c, port: 86}
  - {name: socket, port: 87, appProtocol: kubernetes.io/ws}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: gateway-conformance-mesh}
spec:
  clusterIP: None
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: gateway-conformance-mesh
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  clusterIP: 198.19.0.2
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: hbone, port: 15008}]
"#;
    let out = run(&load(
        "strait.dev/mesh: enabled, strait.dev/waypoint: edge",
        extra,
    ));
    let mesh = &out.mesh;
    let service = |name: &str| {
        mesh.services
            .iter()
            .find(|s| s.service == object(&format!("{MESH}/{name}")))
            .unwrap_or_else(|| panic!("no Service {name}"))
    };
    let protocols = |name: &str| -> Vec<(u16, MeshProtocol)> {
        service(name)
            .ports
            .iter()
            .map(|p| (p.port, p.protocol))
            .collect()
    };
    use MeshProtocol::*;
    assert_eq!(
        protocols("echo"),
        vec![
            (80, Http1),
            (8080, Http1),
            (443, Tcp),
            (9090, Tcp),
            (7070, Grpc)
        ]
    );
    assert_eq!(
        protocols("named"),
        vec![
            (81, H2c),
            (82, WebSocket),
            (83, Http1),
            (84, Grpc),
            (85, Tcp),
            (86, H2c),
            (87, WebSocket)
        ],
        "name prefixes; UDP ports left out"
    );
    assert_eq!(service("echo").vips, vec![ip("198.19.0.10")]);
    assert_eq!(
        service("named").vips,
        vec![ip("198.19.0.30"), ip("fd00::30")]
    );
    assert!(service("headless").vips.is_empty());
    // Services are sorted, and a VIP finds its Service port.
    let names: Vec<&ObjectRef> = mesh.services.iter().map(|s| &s.service).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let (found, port) = mesh
        .service_by_vip(ip("198.19.0.12"), 8080)
        .expect("echo-v2:8080 by VIP");
    assert_eq!(found.service.name, "echo-v2");
    assert_eq!(port.protocol, Http1);
    // A named waypoint binds every Service except the waypoint's own.
    assert_eq!(
        service("echo").waypoint,
        Some(object(&format!("{MESH}/edge")))
    );
    assert_eq!(service("waypoint").waypoint, None);

    // Every Service port has its cluster: ready endpoints at the target port.
    let cluster = |svc: &str, port: u16| {
        let key = ClusterKey {
            namespace: MESH.into(),
            name: svc.into(),
            port,
        };
        mesh.clusters
            .get(&key)
            .unwrap_or_else(|| panic!("no cluster {key}"))
    };
    let addrs = |v: &[&str]| -> Vec<SocketAddr> {
        v.iter()
            .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
            .collect()
    };
    assert_eq!(
        cluster("echo", 80).endpoints,
        addrs(&["198.18.1.11:8080", "198.18.1.12:8080"])
    );
    assert_eq!(
        cluster("echo-v2", 80).endpoints,
        addrs(&["198.18.1.12:8080"]),
        "unready endpoints are left out"
    );
    assert_eq!(
        cluster("echo", 9090).endpoints,
        addrs(&["198.18.1.11:9090", "198.18.1.12:9090"])
    );
    assert_eq!(cluster("echo", 80).protocol, AppProtocol::Http1);
    assert_eq!(cluster("echo", 7070).protocol, AppProtocol::H2c);
    assert_eq!(cluster("named", 81).protocol, AppProtocol::H2c);
    assert_eq!(cluster("named", 87).protocol, AppProtocol::WebSocket);
    assert!(
        cluster("named", 81).endpoints.is_empty(),
        "no EndpointSlice"
    );
    for s in &mesh.services {
        for p in &s.ports {
            assert!(
                mesh.clusters.contains_key(&p.cluster),
                "cluster {}",
                p.cluster
            );
        }
    }
}

#[test]
fn gateway_and_service_parents_share_one_status() {
    let extra = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait}
spec: {controllerName: strait.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: gateway-conformance-mesh}
spec:
  gatewayClassName: strait
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: both, namespace: gateway-conformance-mesh, generation: 7}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  - {name: gw}
  - {name: other-gateway}
  rules:
  - backendRefs:
    - {name: echo-v1, port: 80}
    - {name: ext, namespace: outside, port: 80}
"#;
    let out = run(&load(ENABLED, &[WAYPOINT_POD, extra].join("\n---\n")));
    let st = &route_status(&out, "both");
    let parents = st["parents"].as_array().cloned().unwrap_or_default();
    assert_eq!(parents.len(), 2, "{st}");
    // spec.parentRefs order: the Service first, then the Gateway (not ours: no entry).
    let service = &parents[0];
    assert_eq!(
        service["parentRef"],
        json!({"group": "", "kind": "Service", "name": "echo", "port": 80})
    );
    let gateway = &parents[1];
    assert_eq!(gateway["parentRef"]["kind"], "Gateway");
    assert_eq!(gateway["parentRef"]["name"], "gw");
    let reasons = |p: &Value| -> Vec<String> {
        p["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}={}/{}",
                    c["type"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or(""),
                    c["reason"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    // The cross-namespace backendRef needs a ReferenceGrant at the Gateway, not in the mesh.
    assert_eq!(
        reasons(gateway),
        vec![
            "Accepted=True/Accepted",
            "ResolvedRefs=False/RefNotPermitted"
        ]
    );
    assert_eq!(
        reasons(service),
        vec![
            "Accepted=True/Accepted",
            "ResolvedRefs=True/ResolvedRefs",
            "strait.dev/WaypointReady=True/Ready"
        ]
    );
    for p in &parents {
        for c in p["conditions"].as_array().into_iter().flatten() {
            assert_eq!(c["observedGeneration"], 7);
        }
    }

    // The ingress listener and the waypoint both carry the route, each with its own backends.
    let ingress_rule = &out.config.gateways[0].ports[0].listeners[0].http_routes[0].rules[0];
    assert!(matches!(
        ingress_rule.backends[1].target,
        BackendTarget::Invalid { .. }
    ));
    let port = waypoint_port(&out.mesh, "echo", 80);
    let mesh_rule = &port.producer.as_ref().expect("producer").listeners[0].http_routes[0].rules[0];
    let ext = ClusterKey {
        namespace: "outside".into(),
        name: "ext".into(),
        port: 80,
    };
    assert_eq!(
        mesh_rule.backends[1].target,
        BackendTarget::Cluster(ext.clone())
    );
    assert!(!out.config.clusters.contains_key(&ext));
    // Both halves resolve the same endpoints for the same Service port.
    let v1 = ClusterKey {
        namespace: MESH.into(),
        name: "echo-v1".into(),
        port: 80,
    };
    assert_eq!(
        out.config.clusters.get(&v1).map(|c| &c.endpoints),
        out.mesh.clusters.get(&v1).map(|c| &c.endpoints)
    );
    // The backend outside the mesh joins the mesh's Services, without a waypoint.
    let outside = out
        .mesh
        .services
        .iter()
        .find(|s| s.service == object("outside/ext"))
        .expect("backend Service listed");
    assert_eq!(outside.waypoint, None);
    assert_eq!(outside.vips, vec![ip("198.19.9.1")]);
    assert_eq!(
        out.mesh.clusters.get(&ext).map(|c| c.endpoints.clone()),
        Some(vec![
            "198.18.9.1:8080".parse().unwrap_or_else(|e| panic!("{e}"))
        ])
    );
    // Exactly one status object per route, and statuses stay sorted.
    let keys: Vec<(&str, &str, &str)> = out
        .statuses
        .iter()
        .map(|s| (s.kind.as_str(), s.namespace.as_str(), s.name.as_str()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted);
}

#[test]
fn grpc_route_backends_speak_h2c() {
    let out = run(&load(ENABLED, &[WAYPOINT_POD, GRPC_ROUTE].join("\n---\n")));
    let key = ClusterKey {
        namespace: MESH.into(),
        name: "echo-v1".into(),
        port: 7070,
    };
    assert_eq!(
        out.mesh.clusters.get(&key).map(|c| c.protocol),
        Some(AppProtocol::H2c)
    );
    let port = waypoint_port(&out.mesh, "echo", 7070);
    assert_eq!(port.protocol, MeshProtocol::Grpc);
    let rules = &port.producer.as_ref().expect("producer").listeners[0].http_routes[0].rules;
    let targets: Vec<&BackendTarget> = rules[0].backends.iter().map(|b| &b.target).collect();
    assert!(
        matches!(targets[2], BackendTarget::Invalid { .. }),
        "echo-v3 missing"
    );
}

#[test]
fn compile_is_deterministic() {
    let snapshot = load(
        ENABLED,
        &[WAYPOINT_POD, ECHO_ROUTE, CONSUMER_ROUTES, GRPC_ROUTE].join("\n---\n"),
    );
    let a = run(&snapshot);
    let b = run(&snapshot);
    assert_eq!(a.mesh, b.mesh);
    assert_eq!(a.statuses, b.statuses);
    // The mesh config survives its wire format.
    let json = serde_json::to_string(&a.mesh).unwrap_or_else(|e| panic!("{e}"));
    let back: MeshConfig = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, a.mesh);
}

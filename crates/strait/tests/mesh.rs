//! End-to-end mesh tests on network-namespace topologies (need root, iptables and iproute2).
//!
//! Each test builds its own topology ([`strait_testbed`]): namespace `shop` (enrolled, STRICT
//! mTLS) with the `cart` Service and its waypoint, namespace `web` (enrolled) with a client pod,
//! and namespace `outside` (not enrolled). Everything is removed afterwards, also on failure.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use strait::mesh::{CaSource, MeshOptions, WaypointSelection};
use strait::standalone::{Standalone, StandaloneOptions};
use strait_echo::advanced::{EchoResponse, parse_client_output};
use strait_testbed::{Pod, PodSpec, Testbed, TestbedOptions, contains};

mod common;
use common::TempDir;

const TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    strait.dev/mtls: strict
---
apiVersion: v1
kind: Namespace
metadata:
  name: web
---
apiVersion: v1
kind: Namespace
metadata:
  name: outside
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: cart, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  template:
    metadata: {labels: {app: cart}}
    spec:
      serviceAccountName: cart
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-advanced:v1.5.1
        args: [--port=8080]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: web}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-advanced:v1.5.1
        args: [--port=8080]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: stranger, namespace: outside}
spec:
  selector: {matchLabels: {app: stranger}}
  template:
    metadata: {labels: {app: stranger}}
    spec:
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-advanced:v1.5.1
        args: [--port=8080]
"#;

/// Marks responses that passed the waypoint.
const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: cart}
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Via-Waypoint, value: shop}]
    backendRefs:
    - {name: cart, port: 80}
"#;

struct Scene {
    testbed: Testbed,
    dir: TempDir,
    client: Pod,
    cart: Pod,
    stranger: Pod,
    waypoint: Pod,
}

/// `None` (with the reason printed) when this machine cannot build topologies.
async fn scene(name: &str) -> Option<Scene> {
    if let Err(reason) = strait_testbed::check_host() {
        eprintln!("skipping {name}: {reason}");
        return None;
    }
    let docs = strait_testbed::parse_manifests(TOPOLOGY, "topology").expect("topology parses");
    let testbed = Testbed::build(
        &docs,
        TestbedOptions {
            enroll: vec!["shop".into(), "web".into()],
            ..TestbedOptions::default()
        },
    )
    .await
    .expect("topology builds");
    assert!(
        testbed.options().echo_binary.is_some(),
        "run `cargo build -p strait-echo` first"
    );
    let waypoint = testbed
        .add_pod(PodSpec {
            namespace: "shop".into(),
            name: "waypoint-6b7f9d8c5d-q2x7m".into(),
            labels: [(
                "gateway.networking.k8s.io/gateway-name".to_string(),
                "waypoint".to_string(),
            )]
            .into_iter()
            .collect(),
            service_account: "waypoint".into(),
            ..PodSpec::default()
        })
        .await
        .expect("waypoint pod");
    let dir = TempDir::new(&format!("mesh-{name}"));
    let mut text = String::new();
    for object in testbed.objects() {
        text.push_str("---\n");
        text.push_str(&serde_json::to_string(&object).unwrap());
        text.push('\n');
    }
    dir.write("topology.yaml", &text);
    dir.write("route.yaml", ROUTE);
    let one = |ns: &str, app: &str| {
        testbed
            .pods_matching(ns, &[("app", app)])
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("pod {ns}/{app}"))
    };
    let (client, cart, stranger) = (
        one("web", "client"),
        one("shop", "cart"),
        one("outside", "stranger"),
    );
    Some(Scene {
        testbed,
        dir,
        client,
        cart,
        stranger,
        waypoint,
    })
}

impl Scene {
    async fn standalone(&self, mesh: MeshOptions) -> Standalone {
        let standalone = Standalone::start(StandaloneOptions {
            dir: self.dir.0.clone(),
            port_offset: 0,
            watch: false,
            gateways: false,
            mesh: Some(mesh),
            config_listen: None,
        })
        .await
        .expect("standalone starts");
        assert_eq!(standalone.load_errors(), Vec::<String>::new());
        standalone
    }

    /// Standalone with its CA served on loopback (for separate `strait node` / `strait
    /// waypoint` processes) and the in-process components asked for; returns the CA URL.
    async fn standalone_serving_ca(
        &self,
        node: bool,
        waypoints: WaypointSelection,
    ) -> (Standalone, String) {
        let standalone = self
            .standalone(MeshOptions {
                ca: CaSource::Local {
                    listen: Some("127.0.0.1:0".parse().unwrap()),
                },
                node,
                node_name: None,
                netns_dir: None,
                waypoints,
                probe_sources: Vec::new(),
            })
            .await;
        let ca = format!("http://{}", standalone.ca_addr().expect("CA served"));
        (standalone, ca)
    }

    /// One request with the echo client from inside `from`'s namespace.
    async fn request(&self, from: &Pod, url: &str, headers: &[&str]) -> EchoResponse {
        let mut argv = vec!["strait-echo", "client", url, "--timeout", "3s"];
        for h in headers {
            argv.push("-H");
            argv.push(h);
        }
        let output = self.testbed.exec(from, &argv).await.expect("exec");
        parse_client_output(&String::from_utf8_lossy(&output.stdout))
            .into_iter()
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "no output from the echo client: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    }

    /// Retries until `ok` holds (the data plane converges asynchronously).
    async fn eventually(
        &self,
        from: &Pod,
        url: &str,
        what: &str,
        ok: impl Fn(&EchoResponse) -> bool,
    ) -> EchoResponse {
        let started = Instant::now();
        loop {
            let response = self.request(from, url, &[]).await;
            if ok(&response) {
                return response;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{what}: still {response:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn via_waypoint(r: &EchoResponse) -> bool {
    r.status == 200
        && r.response_header("X-Via-Waypoint") == Some("shop")
        && r.field("Hostname").is_some_and(|h| h.starts_with("cart-"))
}

fn strait_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

/// A child process killed (SIGKILL) when dropped, also when the test fails.
struct Child(tokio::process::Child);

impl Child {
    fn spawn(args: &[&str]) -> Child {
        let child = tokio::process::Command::new(strait_binary())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("strait starts");
        Child(child)
    }

    async fn kill(mut self) {
        let _ = self.0.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_to_pod_bytes_are_mutual_tls_and_strict_refuses_plaintext() {
    let Some(scene) = scene("wire").await else {
        return;
    };
    let standalone = scene.standalone(MeshOptions::all_in_one()).await;
    let cart_url = "http://cart.shop/checkout";
    scene
        .eventually(
            &scene.client,
            cart_url,
            "mesh request via the waypoint",
            via_waypoint,
        )
        .await;

    let sniffer = scene.testbed.sniff().expect("sniffer");
    let secret = "canary-9f1c2e-plaintext";
    let meshed = scene
        .request(&scene.client, cart_url, &[&format!("X-Secret:{secret}")])
        .await;
    assert!(via_waypoint(&meshed), "{meshed:?}");
    assert_eq!(meshed.request_header("X-Secret").as_deref(), Some(secret));
    // Control: the same canary sent in plaintext between two PERMISSIVE/unmeshed pods is visible,
    // so the capture would have seen it.
    let control_secret = "canary-control-visible";
    let control_url = format!("http://{}:8080/", scene.client.ip);
    let control = scene
        .request(
            &scene.stranger,
            &control_url,
            &[&format!("X-Secret:{control_secret}")],
        )
        .await;
    assert_eq!(
        control.status, 200,
        "PERMISSIVE pod reachable in plaintext: {control:?}"
    );
    let wire = sniffer.stop();
    assert!(
        contains(&wire, control_secret.as_bytes()),
        "the capture sees plaintext"
    );
    assert!(
        !contains(&wire, secret.as_bytes()),
        "mesh traffic crossed the wire in plaintext"
    );

    // STRICT: a pod outside the mesh cannot reach cart's port in plaintext.
    let strict_url = format!("http://{}:8080/", scene.cart.ip);
    let refused = scene.request(&scene.stranger, &strict_url, &[]).await;
    assert_eq!(
        refused.status, 0,
        "STRICT pod answered plaintext: {refused:?}"
    );
    // ...while a mesh client reaches the same pod address (over HBONE).
    let direct = scene.request(&scene.client, &strict_url, &[]).await;
    assert_eq!(direct.status, 200, "{direct:?}");
    assert_eq!(
        direct.response_header("X-Via-Waypoint"),
        None,
        "pod address bypasses routes"
    );

    standalone.shutdown().await;
    scene.testbed.teardown().expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_waypoint_fails_closed_and_recovers() {
    let Some(scene) = scene("waypoint").await else {
        return;
    };
    let (standalone, ca) = scene
        .standalone_serving_ca(true, WaypointSelection::None)
        .await;
    let dir = scene.dir.0.display().to_string();
    let waypoint_args = [
        "waypoint",
        dir.as_str(),
        "--namespace",
        "shop",
        "--ca",
        ca.as_str(),
        "--netns",
        scene.waypoint.netns.as_str(),
        "--no-watch",
    ];
    let url = "http://cart.shop/";
    let waypoint = Child::spawn(&waypoint_args);
    scene
        .eventually(&scene.client, url, "through the waypoint", via_waypoint)
        .await;

    waypoint.kill().await;
    let refused = scene
        .eventually(&scene.client, url, "refused without the waypoint", |r| {
            r.status != 200
        })
        .await;
    assert_eq!(
        refused.status, 0,
        "no answer at all, not a bypass: {refused:?}"
    );
    for _ in 0..5 {
        let r = scene.request(&scene.client, url, &[]).await;
        assert_eq!(
            r.status, 0,
            "traffic went around the stopped waypoint: {r:?}"
        );
    }

    // Back on two workers (the node proxy's one HBONE connection lands on one of them).
    let waypoint = Child::spawn(&[&waypoint_args[..], &["--workers", "2"]].concat());
    scene
        .eventually(&scene.client, url, "waypoint back", via_waypoint)
        .await;
    for _ in 0..4 {
        let r = scene.request(&scene.client, url, &[]).await;
        assert!(via_waypoint(&r), "through a waypoint on two workers: {r:?}");
    }
    waypoint.kill().await;
    standalone.shutdown().await;
    scene.testbed.teardown().expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_proxy_converges_and_traffic_resumes() {
    let Some(scene) = scene("node").await else {
        return;
    };
    let (standalone, ca) = scene
        .standalone_serving_ca(false, WaypointSelection::All)
        .await;
    let dir = scene.dir.0.display().to_string();
    let node_args = ["node", dir.as_str(), "--ca", ca.as_str(), "--no-watch"];
    let url = "http://cart.shop/";
    let client_netns = scene.testbed.netns(&scene.client).unwrap();

    let node = Child::spawn(&node_args);
    scene
        .eventually(&scene.client, url, "node proxy up", via_waypoint)
        .await;
    let rules = strait_capture::installed(&client_netns).expect("rules readable");
    assert!(!rules.is_empty(), "capture rules installed");
    assert!(
        rules.iter().any(|rule| rule.starts_with("1338: ")),
        "the pod's TCP is routed through loopback: {rules:#?}"
    );

    node.kill().await;
    // The rules stay: the pod's connections fail instead of leaving the mesh.
    assert_eq!(strait_capture::installed(&client_netns).unwrap(), rules);
    let down = scene.request(&scene.client, url, &[]).await;
    assert_eq!(
        down.status, 0,
        "traffic flowed without the node proxy: {down:?}"
    );

    // Back on three workers: each connection is served by the worker it is handed to, over
    // that worker's own HBONE connections.
    let node = Child::spawn(&[&node_args[..], &["--workers", "3"]].concat());
    scene
        .eventually(&scene.client, url, "node proxy back", via_waypoint)
        .await;
    for _ in 0..6 {
        let r = scene.request(&scene.client, url, &[]).await;
        assert!(
            via_waypoint(&r),
            "through a node proxy on three workers: {r:?}"
        );
    }
    assert_eq!(
        strait_capture::installed(&client_netns).unwrap(),
        rules,
        "re-applying converged to one copy of the rules"
    );
    node.kill().await;
    standalone.shutdown().await;
    scene.testbed.teardown().expect("teardown");
}

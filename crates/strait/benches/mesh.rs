//! Mesh data-plane cost, measured on a real network-namespace topology (needs root):
//! sequential keep-alive HTTP requests from one pod to another, (1) without the mesh,
//! (2) through both node proxies over HBONE (a Service without routes), and (3) also through
//! the waypoint (a Service with a route). Prints requests per second and mean latency.
//!
//! `cargo build --release -p strait-echo && cargo bench -p strait --bench mesh`

use std::time::{Duration, Instant};

use strait::mesh::MeshOptions;
use strait::standalone::{Standalone, StandaloneOptions};
use strait_echo::advanced::parse_client_output;
use strait_testbed::{Pod, PodSpec, Testbed, TestbedOptions};

const REQUESTS: usize = 3000;

const TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: bench}
spec:
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      containers:
      - {name: echo, image: echo-advanced, args: [--port=8080]}
---
apiVersion: v1
kind: Service
metadata: {name: direct, namespace: bench}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: routed, namespace: bench}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: routed, namespace: bench}
spec:
  parentRefs: [{group: "", kind: Service, name: routed}]
  rules: [{backendRefs: [{name: routed, port: 80}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: bench}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - {name: echo, image: echo-advanced, args: [--port=8080]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: plain}
spec:
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      containers:
      - {name: echo, image: echo-advanced, args: [--port=8080]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: plain}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers:
      - {name: echo, image: echo-advanced, args: [--port=8080]}
"#;

async fn run(testbed: &Testbed, from: &Pod, url: &str) -> Result<Duration, String> {
    let count = REQUESTS.to_string();
    let started = Instant::now();
    let output = testbed
        .exec(from, &["strait-echo", "client", url, "--count", &count])
        .await
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let responses = parse_client_output(&String::from_utf8_lossy(&output.stdout));
    let ok = responses.iter().filter(|r| r.status == 200).count();
    if ok != REQUESTS {
        return Err(format!("{url}: {ok}/{REQUESTS} answered 200"));
    }
    Ok(elapsed)
}

fn report(name: &str, elapsed: Duration, baseline: Option<Duration>) {
    let rps = REQUESTS as f64 / elapsed.as_secs_f64();
    let mean_us = elapsed.as_secs_f64() * 1e6 / REQUESTS as f64;
    let ratio = baseline
        .map(|b| {
            format!(
                "  ({:.2}x the no-mesh latency)",
                elapsed.as_secs_f64() / b.as_secs_f64()
            )
        })
        .unwrap_or_default();
    println!("{name:<34} {rps:>9.0} req/s  {mean_us:>7.1} us/request{ratio}");
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(reason) = strait_testbed::check_host() {
        println!("mesh bench skipped: {reason}");
        return;
    }
    let docs = strait_testbed::parse_manifests(TOPOLOGY, "bench topology").expect("topology");
    let testbed = Testbed::build(
        &docs,
        TestbedOptions {
            enroll: vec!["bench".into()],
            ..TestbedOptions::default()
        },
    )
    .await
    .expect("topology builds");
    if testbed.options().echo_binary.is_none() {
        println!("mesh bench skipped: build strait-echo first");
        return;
    }
    testbed
        .add_pod(PodSpec {
            namespace: "bench".into(),
            name: "waypoint-5f6d7c8b9a-bnch1".into(),
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
    let dir = std::env::temp_dir().join(format!("strait-mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text: String = testbed
        .objects()
        .iter()
        .map(|o| format!("---\n{}\n", serde_json::to_string(o).unwrap_or_default()))
        .collect();
    std::fs::write(dir.join("topology.yaml"), text).expect("write topology");
    let standalone = Standalone::start(StandaloneOptions {
        dir: dir.clone(),
        port_offset: 0,
        watch: false,
        gateways: false,
        mesh: Some(MeshOptions::all_in_one()),
        config_listen: None,
    })
    .await
    .expect("standalone");
    let pod = |ns: &str, app: &str| {
        testbed
            .pods_matching(ns, &[("app", app)])
            .into_iter()
            .next()
            .expect("pod")
    };
    let plain_server = pod("plain", "server");
    let plain = run(
        &testbed,
        &pod("plain", "client"),
        &format!("http://{}:8080/", plain_server.ip),
    )
    .await;
    let client = pod("bench", "client");
    // Warm the pools and certificates first.
    let _ = run(&testbed, &client, "http://direct.bench/").await;
    let _ = run(&testbed, &client, "http://routed.bench/").await;
    let hbone = run(&testbed, &client, "http://direct.bench/").await;
    let waypoint = run(&testbed, &client, "http://routed.bench/").await;
    println!(
        "{REQUESTS} sequential keep-alive requests, one client, 2 cores shared with the proxies:"
    );
    match (plain, hbone, waypoint) {
        (Ok(plain), Ok(hbone), Ok(waypoint)) => {
            report("no mesh (pod to pod)", plain, None);
            report("mesh: node -> node (HBONE)", hbone, Some(plain));
            report("mesh: node -> waypoint -> node", waypoint, Some(plain));
        }
        (a, b, c) => println!("a run failed: {:?} {:?} {:?}", a.err(), b.err(), c.err()),
    }
    standalone.shutdown().await;
    let _ = testbed.teardown();
    let _ = std::fs::remove_dir_all(&dir);
}

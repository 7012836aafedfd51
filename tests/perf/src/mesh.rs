//! The mesh topology of the performance run, built with `strait-testbed`.
//!
//! The proxies themselves are started by `run.sh` as separate `strait` processes (so that their
//! CPU time and memory can be read from `/proc` one by one); this module only makes the
//! namespaces, writes the manifests those processes read, prints what the script needs and
//! keeps everything alive until a signal, then tears it down.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use strait_testbed::{Pod, PodSpec, Testbed, TestbedOptions};

/// Enrolled namespace `bench`: a server and a client pod, a Service `direct` (node to node over
/// HBONE only) and a Service `routed` whose HTTPRoute sends it through the waypoint. Namespace
/// `plain` is out of the mesh: the pod-to-pod baseline and the out-of-mesh peer of the node's
/// plain passthrough. Its `captured-client` pod gets one capture rule from `run.sh` (not the
/// node's): HAProxy behind it pays what an enrolled pod's traffic pays before reaching the node,
/// so the passthrough can be compared like for like. No pod runs an in-process echo server:
/// `run.sh` starts nginx and iperf3 inside the pods, the same backend as everywhere else.
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
      - {name: nginx, image: nginx}
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
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add: [{name: x-routed-by, value: strait}]
    backendRefs: [{name: routed, port: 80}]
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
      - {name: load, image: load}
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
      - {name: nginx, image: nginx}
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
      - {name: load, image: load}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: captured-client, namespace: plain}
spec:
  selector: {matchLabels: {app: captured-client}}
  template:
    metadata: {labels: {app: captured-client}}
    spec:
      containers:
      - {name: load, image: load}
"#;

/// Builds the topology, writes `DIR/topology.yaml` and `DIR/env` (the `KEY=value` lines also
/// printed on stdout), and waits for SIGTERM/SIGINT; the testbed is torn down on every exit
/// path, including errors after it was built.
pub async fn run(dir: &Path) -> anyhow::Result<()> {
    // Installed first: a signal that arrives while the topology is being built is kept and
    // answered by tearing it down right after.
    let signals = Signals::install()?;
    strait_testbed::check_host().map_err(|reason| anyhow::anyhow!("mesh topology: {reason}"))?;
    let docs = strait_testbed::parse_manifests(TOPOLOGY, "perf mesh topology")?;
    let testbed = Testbed::build(
        &docs,
        TestbedOptions {
            enroll: vec!["bench".into()],
            start_echo: false,
            ..TestbedOptions::default()
        },
    )
    .await
    .context("building the mesh topology")?;
    let result = serve(&testbed, dir, signals).await;
    let teardown = testbed.teardown();
    result?;
    teardown.context("tearing down the mesh topology")?;
    eprintln!("mesh topology torn down");
    Ok(())
}

async fn serve(testbed: &Testbed, dir: &Path, signals: Signals) -> anyhow::Result<()> {
    let waypoint = testbed
        .add_pod(PodSpec {
            namespace: "bench".into(),
            name: "waypoint-5f6d7c8b9a-perf1".into(),
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
        .context("adding pod bench/waypoint")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let topology: String = testbed
        .objects()
        .iter()
        .map(|o| format!("---\n{}\n", serde_json::to_string(o).unwrap_or_default()))
        .collect();
    let topology_file = dir.join("topology.yaml");
    std::fs::write(&topology_file, topology)
        .with_context(|| format!("writing {}", topology_file.display()))?;
    let pod = |ns: &str, app: &str| -> anyhow::Result<Pod> {
        testbed
            .pods_matching(ns, &[("app", app)])
            .into_iter()
            .next()
            .with_context(|| format!("no pod with app={app} in namespace {ns}"))
    };
    let vip = |name: &str| -> anyhow::Result<String> {
        testbed
            .service_vip("bench", name)
            .map(|ip| ip.to_string())
            .with_context(|| format!("Service bench/{name} has no cluster IP"))
    };
    let (mesh_client, mesh_server) = (pod("bench", "client")?, pod("bench", "server")?);
    let (plain_client, plain_server) = (pod("plain", "client")?, pod("plain", "server")?);
    let captured_client = pod("plain", "captured-client")?;
    let env = [
        ("MESH_DIR", dir.display().to_string()),
        ("NODE_NETNS", testbed.node_netns_name().to_string()),
        ("MESH_CLIENT_NETNS", mesh_client.netns.clone()),
        ("MESH_SERVER_NETNS", mesh_server.netns.clone()),
        ("MESH_SERVER_IP", mesh_server.ip.to_string()),
        ("PLAIN_CLIENT_NETNS", plain_client.netns.clone()),
        ("PLAIN_SERVER_NETNS", plain_server.netns.clone()),
        ("PLAIN_SERVER_IP", plain_server.ip.to_string()),
        ("CAPTURED_CLIENT_NETNS", captured_client.netns.clone()),
        ("CAPTURED_CLIENT_IP", captured_client.ip.to_string()),
        ("WAYPOINT_NETNS", waypoint.netns.clone()),
        ("DIRECT_VIP", vip("direct")?),
        ("ROUTED_VIP", vip("routed")?),
    ];
    let text = render_env(&env);
    let env_file = dir.join("env");
    std::fs::write(&env_file, &text).with_context(|| format!("writing {}", env_file.display()))?;
    print!("{text}");
    println!("READY=1");
    signals.wait().await;
    Ok(())
}

/// `KEY=value` lines; values are names and addresses, never containing shell syntax.
fn render_env(pairs: &[(&str, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// SIGTERM and SIGINT handlers, installed before the work they end starts, so that no signal
/// kills the process before it can clean up.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Waits for SIGTERM or SIGINT.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// The default directory for the topology files of this process.
pub fn default_dir() -> PathBuf {
    std::env::temp_dir().join(format!("strait-perf-mesh-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_parses_and_env_renders() {
        let docs = strait_testbed::parse_manifests(TOPOLOGY, "t").unwrap();
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "Deployment").count(), 5);
        assert!(kinds.contains(&"HTTPRoute"));
        let env = render_env(&[("A", "1".into()), ("B", "x-y".into())]);
        assert_eq!(env, "A=1\nB=x-y\n");
    }
}

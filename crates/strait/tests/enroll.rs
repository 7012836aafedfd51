//! `strait wait-for-capture` against a real node proxy: the init container returns once the
//! node proxy serves the pod (capture rules already in place), and fails with a clear message
//! when nothing captures the pod. Needs root, iproute2 and iptables; skipped otherwise.
//! Addresses are from 198.18.0.0/15.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_config::ObjectRef;
use strait_config::mesh::{CaptureExclusions, MeshConfig, MtlsMode, Workload};
use strait_identity::{CertificateAuthority, Certificates};
use strait_node::{NodeOptions, NodeProxy};

const NODE: &str = "strait-node";
const PREFIX: &str = "strait-enrolltest-";

fn strait_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A pod-like namespace (loopback up, `eth0` with `address`) and a private namespace
/// directory listing it, both removed on drop (also when the test fails).
struct PodNs {
    name: String,
    dir: PathBuf,
}

impl PodNs {
    fn new(tag: &str, address: Ipv4Addr) -> PodNs {
        let name = format!("{PREFIX}{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        ip(&["netns", "add", &name]);
        let pod = PodNs { name, dir };
        ip(&["-n", &pod.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &pod.name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&["-n", &pod.name, "link", "set", "peer0", "up"]);
        ip(&["-n", &pod.name, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &pod.name,
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            "eth0",
        ]);
        std::fs::create_dir_all(&pod.dir).unwrap();
        std::os::unix::fs::symlink(
            Path::new("/run/netns").join(&pod.name),
            pod.dir.join("cni-0"),
        )
        .unwrap();
        pod
    }

    fn handle(&self) -> strait_netns::NetNs {
        strait_netns::NetNs::named(&self.name).unwrap()
    }

    /// `strait wait-for-capture --timeout TIMEOUT` inside the namespace, as the pod's init
    /// container would run it.
    fn wait_for_capture(&self, timeout: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(strait_binary())
            .args(["wait-for-capture", "--timeout", timeout])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(pod: &ObjectRef, address: Ipv4Addr) -> Arc<MeshConfig> {
    Arc::new(MeshConfig {
        version: 1,
        trust_domain: "cluster.local".into(),
        workloads: vec![Workload {
            pod: pod.clone(),
            ip: IpAddr::V4(address),
            service_account: "default".into(),
            node: Some(NODE.into()),
            netns: None,
            captured: true,
            mtls: MtlsMode::Permissive,
            capture: CaptureExclusions::default(),
        }],
        ..MeshConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_capture_returns_once_the_node_proxy_serves_the_pod_and_times_out_otherwise() {
    if let Err(reason) = strait_testbed::check_host() {
        eprintln!("skipping: {reason}");
        return;
    }
    let address = Ipv4Addr::new(198, 18, 252, 1);
    let pod_ns = PodNs::new("wait", address);

    // Nothing serves the pod: a clear failure after the timeout.
    let started = Instant::now();
    let out = pod_ns.wait_for_capture("1s").output().await.unwrap();
    assert!(!out.status.success(), "succeeded without a node proxy");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not captured") && stderr.contains("127.0.0.1:15008"),
        "{stderr}"
    );

    // It waits while the pod is not served, and returns once it is.
    let mut waiting = pod_ns.wait_for_capture("30s").spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "returned before the pod was captured"
    );
    let ca = CertificateAuthority::new_self_signed("cluster.local").unwrap();
    let node = NodeProxy::new(NodeOptions {
        node_name: Some(NODE.into()),
        certs: Arc::new(Certificates::from_ca(Arc::new(ca))),
        probe_sources: Vec::new(),
        manage_rules: true,
        netns_dir: Some(pod_ns.dir.clone()),
    });
    let pod = ObjectRef {
        namespace: "shop".into(),
        name: "cart-5d8f9c7b6a-x2k4q".into(),
    };
    let errors = node.apply(config(&pod, address)).await;
    assert!(errors.is_empty(), "{errors:?}");
    let status = tokio::time::timeout(Duration::from_secs(10), waiting.wait())
        .await
        .expect("wait-for-capture returns once the pod is served")
        .unwrap();
    assert!(status.success(), "{status}");
    // What it promises: the capture rules are in place when it returns.
    assert!(
        !strait_capture::installed(&pod_ns.handle())
            .unwrap()
            .is_empty()
    );
    node.shutdown(true).await;
}

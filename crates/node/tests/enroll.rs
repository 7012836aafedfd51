//! The node proxy on a cluster-like node: the mesh config names no network namespace (as the
//! controller's does not), so the node proxy finds each local pod's namespace by its address
//! among the runtime's namespace files. Needs root, iproute2 and iptables; skipped otherwise.
//! Addresses are from 198.18.0.0/15.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NetnsDir, TestNs};
use strait_config::ObjectRef;
use strait_config::mesh::{CaptureExclusions, MeshConfig, MtlsMode, Workload};
use strait_identity::{CertificateAuthority, Certificates};
use strait_netns::NetNs;
use strait_node::{NodeError, NodeOptions, NodeProxy};
use strait_testbed::{NODE_ADDRESS, Pod, Testbed, TestbedOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODE: &str = "strait-node";

const TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
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
      - {name: echo, image: registry.k8s.io/gateway-api/echo-advanced:v1.5.1, args: [--port=8080]}
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
      - {name: echo, image: registry.k8s.io/gateway-api/echo-advanced:v1.5.1, args: [--port=8080]}
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
      - {name: echo, image: registry.k8s.io/gateway-api/echo-advanced:v1.5.1, args: [--port=8080]}
"#;

fn obj(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// A pod as the controller reports it on a real node: no namespace name.
fn workload(pod: ObjectRef, ip: IpAddr, node: &str, captured: bool, mtls: MtlsMode) -> Workload {
    Workload {
        service_account: "default".into(),
        pod,
        ip,
        node: Some(node.into()),
        netns: None,
        captured,
        mtls,
        capture: CaptureExclusions::default(),
    }
}

fn mesh(version: u64, mut workloads: Vec<Workload>) -> Arc<MeshConfig> {
    workloads.sort_by_key(|w| w.ip);
    Arc::new(MeshConfig {
        version,
        trust_domain: "cluster.local".into(),
        workloads,
        ..MeshConfig::default()
    })
}

fn node_proxy(netns_dir: &std::path::Path, probe_sources: Vec<String>) -> NodeProxy {
    let ca = CertificateAuthority::new_self_signed("cluster.local").expect("CA");
    NodeProxy::new(NodeOptions {
        node_name: Some(NODE.into()),
        certs: Arc::new(Certificates::from_ca(Arc::new(ca))),
        probe_sources,
        manage_rules: true,
        netns_dir: Some(netns_dir.to_path_buf()),
    })
}

/// One HTTP request to the echo server at `to`, from inside `from` (the socket is made there,
/// unmarked, so the capture rules see it like the application's). The echo body's `IP=` line
/// (the address the server saw the connection from), or `None` when refused or reset.
async fn echo_peer(from: &NetNs, to: SocketAddr) -> Option<IpAddr> {
    let exchange = async {
        let mut stream = from.connect(to, None).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("IP="))
            .and_then(|ip| ip.trim().parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Whether something listens on `addr` inside `netns`.
async fn listening(netns: &NetNs, addr: SocketAddr) -> bool {
    tokio::time::timeout(Duration::from_secs(2), netns.connect(addr, None))
        .await
        .is_ok_and(|r| r.is_ok())
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn one(testbed: &Testbed, namespace: &str, app: &str) -> Pod {
    testbed
        .pods_matching(namespace, &[("app", app)])
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("pod {namespace}/{app}"))
}

fn rules(netns: &NetNs) -> Vec<String> {
    strait_capture::installed(netns).expect("rules readable")
}

const HBONE_LOOPBACK: SocketAddr = SocketAddr::new(
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    strait_proxy::hbone::HBONE_PORT,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_without_a_named_namespace_are_found_by_address_and_captured() {
    if let Some(reason) = common::unsupported() {
        eprintln!("skipping: {reason}");
        return;
    }
    let docs = strait_testbed::parse_manifests(TOPOLOGY, "topology").unwrap();
    let testbed = Testbed::build(
        &docs,
        TestbedOptions {
            node_name: NODE.into(),
            ..TestbedOptions::default()
        },
    )
    .await
    .expect("topology builds");
    let (cart, client, stranger) = (
        one(&testbed, "shop", "cart"),
        one(&testbed, "web", "client"),
        one(&testbed, "outside", "stranger"),
    );
    let ns = |pod: &Pod| testbed.netns(pod).unwrap();
    // The runtime's directory: one file per sandbox, plus the node's own namespace (which
    // holds the node's address, not a pod's).
    let dir = NetnsDir::new("enroll");
    for (i, pod) in testbed.pods().iter().enumerate() {
        dir.link(
            &format!("cni-{i}"),
            &std::path::Path::new("/run/netns").join(&pod.netns),
        );
    }
    dir.link(
        "host",
        &std::path::Path::new("/run/netns").join(testbed.node_netns_name()),
    );

    // Kubelet probes come from the node's address on the pod network.
    let node = node_proxy(&dir.0, vec![format!("{NODE_ADDRESS}/32")]);
    let cart_ref = obj("shop", &cart.name);
    let client_ref = obj("web", &client.name);
    let config = |version, cart_captured| {
        mesh(
            version,
            vec![
                workload(
                    cart_ref.clone(),
                    IpAddr::V4(cart.ip),
                    NODE,
                    cart_captured,
                    MtlsMode::Strict,
                ),
                workload(
                    client_ref.clone(),
                    IpAddr::V4(client.ip),
                    NODE,
                    true,
                    MtlsMode::Permissive,
                ),
                workload(
                    obj("outside", &stranger.name),
                    IpAddr::V4(stranger.ip),
                    NODE,
                    false,
                    MtlsMode::Permissive,
                ),
                // Another node's pod: not ours, even though nothing else would stop us.
                workload(
                    obj("web", "elsewhere"),
                    IpAddr::V4(Ipv4Addr::new(198, 18, 250, 1)),
                    "other-node",
                    true,
                    MtlsMode::Permissive,
                ),
            ],
        )
    };
    let errors = node.apply(config(1, true)).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(node.pods().await, {
        let mut v = vec![cart_ref.clone(), client_ref.clone()];
        v.sort();
        v
    });
    assert!(
        !rules(&ns(&cart)).is_empty(),
        "rules in the found namespace"
    );
    assert!(rules(&ns(&stranger)).is_empty(), "uncaptured pod untouched");

    let cart_app = SocketAddr::new(IpAddr::V4(cart.ip), 8080);
    // client -> cart is carried by the node proxy over HBONE: the application sees the
    // connection come from its own pod address (the proxy's socket in its namespace), not
    // from the client.
    assert_eq!(
        echo_peer(&ns(&client), cart_app).await,
        Some(IpAddr::V4(cart.ip))
    );
    // A pod outside the mesh is refused by the STRICT pod: its inbound is captured.
    assert_eq!(echo_peer(&ns(&stranger), cart_app).await, None);
    // The kubelet's probe (from the node's address) reaches the application directly.
    assert_eq!(
        echo_peer(&testbed.node_netns().unwrap(), cart_app).await,
        Some(IpAddr::V4(NODE_ADDRESS))
    );

    // The namespace is unlabelled (the pod is no longer captured): rules and listeners go.
    let errors = node.apply(config(2, false)).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(node.pods().await, vec![client_ref.clone()]);
    assert!(rules(&ns(&cart)).is_empty(), "rules removed");
    assert!(!listening(&ns(&cart), HBONE_LOOPBACK).await, "15008 closed");
    assert_eq!(
        echo_peer(&ns(&stranger), cart_app).await,
        Some(IpAddr::V4(stranger.ip)),
        "plaintext reaches the uncaptured pod directly"
    );

    node.shutdown(true).await;
    assert!(rules(&ns(&client)).is_empty(), "shutdown removed the rules");
    testbed.teardown().expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_pods_are_retried_recreated_sandboxes_followed_and_restarts_converge() {
    if let Some(reason) = common::unsupported() {
        eprintln!("skipping: {reason}");
        return;
    }
    common::clean_stale();
    let ip = Ipv4Addr::new(198, 18, 253, 1);
    let dir = NetnsDir::new("pending");
    let pod = obj("shop", "late-7d9c8b6f5-x8k2p");
    let config = |version| {
        mesh(
            version,
            vec![workload(
                pod.clone(),
                IpAddr::V4(ip),
                NODE,
                true,
                MtlsMode::Permissive,
            )],
        )
    };
    let node = node_proxy(&dir.0, Vec::new());

    // The config names a pod whose namespace is not there (yet): reported once, then retried.
    let errors = node.apply(config(1)).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0], NodeError::NetnsNotFound { pod: p, .. } if *p == pod),
        "{errors:?}"
    );
    assert!(errors[0].to_string().contains("shop/late-7d9c8b6f5-x8k2p"));
    assert_eq!(node.pending().await, vec![pod.clone()]);
    let errors = node.apply(config(2)).await;
    assert!(
        errors.is_empty(),
        "the same error is not reported again: {errors:?}"
    );

    // The sandbox appears: the timer serves it without a new config.
    let first = TestNs::new("late-1", Some(ip));
    dir.link("cni-1", &first.path());
    eventually(
        "pod served once its namespace exists",
        Duration::from_secs(15),
        || async { node.pods().await == vec![pod.clone()] },
    )
    .await;
    assert!(node.pending().await.is_empty());
    assert!(listening(&first.handle(), HBONE_LOOPBACK).await);
    let installed = rules(&first.handle());
    assert!(!installed.is_empty());

    // The sandbox is recreated with the same address: the network plugin tears the old one
    // down (its file lingers), the runtime makes a new namespace. (After a pause, so the
    // periodic check of served namespaces, not the first one after serving, notices it.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.remove_interface();
    let second = TestNs::new("late-2", Some(ip));
    dir.link("cni-2", &second.path());
    eventually(
        "the new sandbox is served",
        Duration::from_secs(20),
        || async { listening(&second.handle(), HBONE_LOOPBACK).await },
    )
    .await;
    assert_eq!(rules(&second.handle()), installed);
    assert!(
        !listening(&first.handle(), HBONE_LOOPBACK).await,
        "old one released"
    );

    // A node proxy restart (rules left in place) converges on one copy of the rules.
    node.shutdown(false).await;
    drop(node);
    assert_eq!(
        rules(&second.handle()),
        installed,
        "rules kept across restart"
    );
    let restarted = node_proxy(&dir.0, Vec::new());
    let errors = restarted.apply(config(3)).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(restarted.pods().await, vec![pod.clone()]);
    assert_eq!(rules(&second.handle()), installed);
    assert!(listening(&second.handle(), HBONE_LOOPBACK).await);

    // The pod is deleted: rules removed, listeners closed.
    let errors = restarted.apply(mesh(4, Vec::new())).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(restarted.pods().await.is_empty());
    assert!(rules(&second.handle()).is_empty());
    assert!(!listening(&second.handle(), HBONE_LOOPBACK).await);
    restarted.shutdown(true).await;
}

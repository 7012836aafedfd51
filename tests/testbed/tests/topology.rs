//! The testbed on the mesh suite's base manifests: real namespaces, veths, echo pods.
//!
//! Needs root and iproute2 (skipped with a message otherwise) and the `strait-echo` binary:
//! run `cargo build -p strait-echo` before `cargo test -p strait-testbed`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use strait_echo::advanced::parse_client_output;
use strait_testbed::{
    AdvancedOptions, ETC_NETNS_DIR, PodSpec, Testbed, TestbedError, TestbedOptions, check_host,
    contains, find_echo_binary, parse_manifests,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MESH_NS: &str = "gateway-conformance-mesh";
const CONSUMER_NS: &str = "gateway-conformance-mesh-consumer";

/// The mesh base manifests, or `None` (with the reason printed) when this machine cannot run
/// the test.
fn mesh_manifests() -> Option<Vec<Value>> {
    if let Err(reason) = check_host() {
        eprintln!("SKIP: {reason}");
        return None;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/conformance/base/mesh/manifests.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!(
            "SKIP: the conformance corpus is absent ({} not readable)",
            path.display()
        );
        return None;
    };
    Some(parse_manifests(&text, &path.display().to_string()).expect("mesh base manifests parse"))
}

fn echo_binary() -> PathBuf {
    find_echo_binary().unwrap_or_else(|| {
        panic!(
            "the strait-echo binary was not found next to {:?}: run `cargo build -p strait-echo` \
             (same profile) before these tests, or set STRAIT_ECHO_BIN",
            std::env::current_exe().ok()
        )
    })
}

fn options() -> TestbedOptions {
    TestbedOptions {
        enroll: vec![MESH_NS.into()],
        start_echo: true,
        node_name: "node-a".into(),
        echo_binary: Some(echo_binary()),
    }
}

fn exists(netns: &str) -> bool {
    Path::new("/run/netns").join(netns).exists() || Path::new(ETC_NETNS_DIR).join(netns).exists()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[tokio::test]
async fn pods_reach_each_other_directly() {
    let Some(docs) = mesh_manifests() else { return };
    let testbed = Testbed::build(&docs, options())
        .await
        .expect("building the testbed");
    let v1 = testbed.pods_matching(MESH_NS, &[("app", "echo"), ("version", "v1")]);
    let v2 = testbed.pods_matching(MESH_NS, &[("app", "echo"), ("version", "v2")]);
    assert_eq!((v1.len(), v2.len()), (1, 1));
    let (v1, v2) = (&v1[0], &v2[0]);
    assert_eq!(testbed.pods().len(), 3);
    // Kubernetes-style names: the backend is the name minus its last two parts.
    let parts: Vec<&str> = v2.name.rsplitn(3, '-').collect();
    assert_eq!(parts[2], "echo-v2");
    assert_eq!((parts[1].len(), parts[0].len()), (10, 5));

    let url = format!("http://{}:8080/x?y=1", v2.ip);
    let out = testbed
        .exec(v1, &["strait-echo", "client", &url, "-H", "X-Probe:direct"])
        .await
        .expect("exec");
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let responses = parse_client_output(&text);
    assert_eq!(responses.len(), 1, "{text}");
    let r = &responses[0];
    assert_eq!(r.status, 200);
    assert_eq!(r.field("Hostname"), Some(v2.name.as_str()));
    assert_eq!(r.field("Namespace"), Some(MESH_NS));
    assert_eq!(r.field("ServiceVersion"), Some("v2"));
    assert_eq!(r.field("IP"), Some(v1.ip.to_string().as_str()));
    assert_eq!(r.field("URL"), Some("/x?y=1"));
    assert_eq!(r.request_header("X-Probe").as_deref(), Some("direct"));
    assert!(
        testbed
            .echo_log(v2)
            .iter()
            .any(|l| l.contains(&format!("({}:", v1.ip))),
        "{:?}",
        testbed.echo_log(v2)
    );

    // Weight tests send 500 requests per check: one kept-alive connection makes that quick.
    let started = std::time::Instant::now();
    let out = testbed
        .exec(v1, &["strait-echo", "client", &url, "--count", "500"])
        .await
        .expect("exec");
    let elapsed = started.elapsed();
    let responses = parse_client_output(&stdout(&out));
    assert_eq!(responses.len(), 500);
    assert!(responses.iter().all(|r| r.status == 200));
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
    eprintln!("500 requests pod to pod: {elapsed:?}");

    // The TCP and TLS ports of the container args listen too, inside the pod.
    let ns = testbed.netns(v1).unwrap();
    let mut tcp = ns
        .connect((v2.ip, 9090).into(), None)
        .await
        .expect("TCP 9090");
    tcp.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    ns.connect((v2.ip, 8443).into(), None)
        .await
        .expect("TLS 8443");

    // No pod and not the node has a way out: only the pod network and the Service range.
    let routes = stdout(&testbed.exec(v1, &["ip", "-4", "route"]).await.unwrap());
    assert!(!routes.contains("default"), "{routes}");
    assert!(routes.contains("198.18.0.0/16 dev eth0"), "{routes}");
    assert!(
        routes.contains("198.19.0.0/16 via 198.18.0.1 dev eth0"),
        "{routes}"
    );
    let node_routes = std::process::Command::new("ip")
        .args(["-n", testbed.node_netns_name(), "-4", "route"])
        .output()
        .unwrap();
    let node_routes = String::from_utf8_lossy(&node_routes.stdout);
    assert!(!node_routes.contains("default"), "{node_routes}");
    assert!(
        node_routes.contains("198.18.0.0/16 dev br0"),
        "{node_routes}"
    );
    assert!(
        node_routes.contains("unreachable 198.19.0.0/16"),
        "{node_routes}"
    );
    assert_eq!(node_routes.trim().lines().count(), 2, "{node_routes}");
}

#[tokio::test]
async fn objects_describe_the_cluster() {
    let Some(docs) = mesh_manifests() else { return };
    let testbed = Testbed::build(&docs, options())
        .await
        .expect("building the testbed");
    let objects = testbed.objects();

    let namespaces = of_kind(&objects, "Namespace");
    let mesh = namespaces
        .iter()
        .find(|n| n["metadata"]["name"] == MESH_NS)
        .unwrap();
    assert_eq!(mesh["metadata"]["labels"]["strait.dev/mesh"], "enabled");
    let consumer = namespaces
        .iter()
        .find(|n| n["metadata"]["name"] == CONSUMER_NS)
        .unwrap();
    assert!(
        consumer["metadata"]["labels"]
            .get("strait.dev/mesh")
            .is_none()
    );
    assert_eq!(of_kind(&objects, "Deployment").len(), 3);

    let services = of_kind(&objects, "Service");
    assert_eq!(services.len(), 3);
    let vip = testbed.service_vip(MESH_NS, "echo").expect("echo VIP");
    assert!(vip.to_string().starts_with("198.19."), "{vip}");
    let vips: std::collections::HashSet<_> = services
        .iter()
        .map(|s| s["spec"]["clusterIP"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(vips.len(), 3, "distinct VIPs");

    let pods = of_kind(&objects, "Pod");
    assert_eq!(pods.len(), 3);
    for pod in &pods {
        let netns = pod["metadata"]["annotations"]["strait.dev/netns"]
            .as_str()
            .unwrap();
        assert!(Path::new("/run/netns").join(netns).exists(), "{netns}");
        assert_eq!(pod["spec"]["nodeName"], "node-a");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(pod["status"]["podIPs"][0]["ip"], pod["status"]["podIP"]);
        assert!(pod["metadata"]["labels"]["pod-template-hash"].is_string());
    }

    let slices = of_kind(&objects, "EndpointSlice");
    let echo = slices
        .iter()
        .find(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "echo")
        .unwrap();
    assert_eq!(echo["metadata"]["namespace"], MESH_NS);
    assert_eq!(echo["endpoints"].as_array().unwrap().len(), 2);
    let ports: BTreeMap<String, u64> = echo["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["http"], 8080);
    assert_eq!(ports["http-alt"], 8080);
    assert_eq!(ports["https"], 8443);
    assert_eq!(ports["tcp"], 9090);
    let v1_slice = slices
        .iter()
        .find(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "echo-v1")
        .unwrap();
    assert_eq!(v1_slice["endpoints"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn service_names_resolve_inside_pods() {
    let Some(docs) = mesh_manifests() else { return };
    let testbed = Testbed::build(&docs, options())
        .await
        .expect("building the testbed");
    let v1 = testbed.pods_matching(MESH_NS, &[("version", "v1")])[0].clone();
    let consumer = testbed.pods_matching(CONSUMER_NS, &[("app", "echo")])[0].clone();
    let vip = testbed.service_vip(MESH_NS, "echo").unwrap().to_string();
    let v2_vip = testbed.service_vip(MESH_NS, "echo-v2").unwrap().to_string();

    let lookup = |pod, name: &'static str| {
        let testbed = &testbed;
        async move { testbed.exec(pod, &["getent", "hosts", name]).await.unwrap() }
    };
    let out = lookup(&v1, "echo").await;
    assert!(out.status.success());
    assert!(
        stdout(&out).starts_with(&format!("{vip} ")),
        "{}",
        stdout(&out)
    );
    for name in [
        "echo-v2.gateway-conformance-mesh",
        "echo-v2.gateway-conformance-mesh.svc",
        "echo-v2.gateway-conformance-mesh.svc.cluster.local",
    ] {
        let out = lookup(&consumer, name).await;
        assert!(
            stdout(&out).starts_with(&format!("{v2_vip} ")),
            "{name}: {}",
            stdout(&out)
        );
    }
    // The bare name only works in the Service's own namespace.
    assert!(!lookup(&consumer, "echo").await.status.success());
    // The pod's own name resolves to its address.
    let own = testbed
        .exec(&v1, &["getent", "hosts", &v1.name])
        .await
        .unwrap();
    assert!(
        stdout(&own).starts_with(&format!("{} ", v1.ip)),
        "{}",
        stdout(&own)
    );
    // The client resolves Service names with the same resolver: here to a VIP nothing serves
    // without capture, so the request fails, but it fails at the VIP. The node's ICMP
    // unreachable can come back while `connect` still holds the socket, when it is kept as a
    // soft error and the SYN is sent again a second later (the first retransmission): that one
    // fails the connection, so the timeout leaves room for it (with 1 s, one CI run in many
    // saw the request time out instead).
    let out = testbed
        .exec(
            &v1,
            &["strait-echo", "client", "http://echo/", "--timeout", "5s"],
        )
        .await
        .unwrap();
    assert!(!out.status.success());
    let r = &parse_client_output(&stdout(&out))[0];
    assert_eq!(r.status, 0);
    assert!(
        r.field("Error").unwrap_or_default().contains(&vip),
        "{:?}",
        r.field("Error")
    );
}

#[tokio::test]
async fn added_pods_and_services_join_the_topology() {
    let Some(docs) = mesh_manifests() else { return };
    let testbed = Testbed::build(&docs, options())
        .await
        .expect("building the testbed");
    let client = testbed
        .add_pod(PodSpec {
            namespace: "outside".into(),
            name: "client".into(),
            labels: [("app".to_string(), "client".to_string())].into(),
            ..PodSpec::default()
        })
        .await
        .expect("adding a client pod");
    let waypoint = testbed
        .add_pod(PodSpec {
            namespace: MESH_NS.into(),
            name: "waypoint-5b6c7d8f9g-abcde".into(),
            labels: [
                (
                    "gateway.networking.k8s.io/gateway-name".to_string(),
                    "waypoint".to_string(),
                ),
                ("version".to_string(), "wp".to_string()),
            ]
            .into(),
            service_account: "waypoint".into(),
            echo: Some(AdvancedOptions::default()),
            ..PodSpec::default()
        })
        .await
        .expect("adding a waypoint pod");
    assert!(matches!(
        testbed
            .add_pod(PodSpec {
                namespace: "outside".into(),
                name: "client".into(),
                ..PodSpec::default()
            })
            .await,
        Err(TestbedError::Invalid(_))
    ));
    let vip = testbed
        .add_service(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "waypoint", "namespace": MESH_NS},
            "spec": {"selector": {"gateway.networking.k8s.io/gateway-name": "waypoint"},
                     "ports": [{"name": "mesh", "port": 15008}]}
        }))
        .await
        .unwrap()
        .expect("a VIP");
    let out = testbed
        .exec(
            &client,
            &["getent", "hosts", "waypoint.gateway-conformance-mesh"],
        )
        .await
        .unwrap();
    assert!(
        stdout(&out).starts_with(&format!("{vip} ")),
        "{}",
        stdout(&out)
    );

    let url = format!("http://{}:8080/hello", waypoint.ip);
    let out = testbed
        .exec(&client, &["strait-echo", "client", &url, "--count", "20"])
        .await
        .unwrap();
    let responses = parse_client_output(&stdout(&out));
    assert_eq!(responses.len(), 20);
    assert!(responses.iter().all(|r| r.status == 200
        && r.field("Hostname") == Some("waypoint-5b6c7d8f9g-abcde")
        && r.field("ServiceVersion") == Some("wp")));

    let objects = testbed.objects();
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "Namespace" && o["metadata"]["name"] == "outside")
    );
    let slice = objects
        .iter()
        .find(|o| {
            o["kind"] == "EndpointSlice"
                && o["metadata"]["labels"]["kubernetes.io/service-name"] == "waypoint"
        })
        .unwrap();
    assert_eq!(
        slice["endpoints"][0]["addresses"][0],
        waypoint.ip.to_string()
    );
    let wp_object = objects
        .iter()
        .find(|o| o["kind"] == "Pod" && o["metadata"]["name"] == waypoint.name.as_str())
        .unwrap();
    assert_eq!(wp_object["spec"]["serviceAccountName"], "waypoint");

    // Replacing the Service keeps its VIP.
    let again = testbed
        .add_service(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "waypoint", "namespace": MESH_NS},
            "spec": {"selector": {"gateway.networking.k8s.io/gateway-name": "waypoint"},
                     "ports": [{"name": "mesh", "port": 15008}, {"name": "x", "port": 1}]}
        }))
        .await
        .unwrap();
    assert_eq!(again, Some(vip));

    testbed.remove_pod(MESH_NS, &waypoint.name).await.unwrap();
    assert!(!exists(&waypoint.netns));
    assert!(testbed.pod(MESH_NS, &waypoint.name).is_none());
    let slice = testbed
        .objects()
        .into_iter()
        .find(|o| {
            o["kind"] == "EndpointSlice"
                && o["metadata"]["labels"]["kubernetes.io/service-name"] == "waypoint"
        })
        .unwrap();
    assert_eq!(slice["endpoints"], json!([]));
    let out = testbed
        .exec(&client, &["strait-echo", "client", &url, "--timeout", "1s"])
        .await
        .unwrap();
    assert!(!out.status.success(), "the removed pod still answered");
}

#[tokio::test]
async fn the_sniffer_sees_what_crosses_the_node() {
    let Some(docs) = mesh_manifests() else { return };
    let testbed = Testbed::build(&docs, options())
        .await
        .expect("building the testbed");
    let v1 = testbed.pods_matching(MESH_NS, &[("version", "v1")])[0].clone();
    let v2 = testbed.pods_matching(MESH_NS, &[("version", "v2")])[0].clone();
    let sniffer = testbed.sniff().expect("starting the capture");
    let url = format!("http://{}:8080/sniffed", v2.ip);
    let out = testbed
        .exec(
            &v1,
            &[
                "strait-echo",
                "client",
                &url,
                "-H",
                "X-Marker:plaintext-on-the-wire",
            ],
        )
        .await
        .unwrap();
    assert!(out.status.success());
    let frames = sniffer.stop_frames();
    let wire = frames.concat();
    assert!(contains(&wire, b"X-Marker: plaintext-on-the-wire"));
    // The answer crossed too, and each frame was recorded once: the request's TCP segment
    // appears in exactly one frame.
    assert!(contains(&wire, v2.name.as_bytes()));
    let with_request = frames
        .iter()
        .filter(|f| contains(f, b"GET /sniffed HTTP/1.1"))
        .count();
    assert_eq!(with_request, 1);
    // Traffic inside one pod never reaches the node.
    let sniffer = testbed.sniff().unwrap();
    let out = testbed
        .exec(
            &v1,
            &["strait-echo", "client", "http://127.0.0.1:8080/local-only"],
        )
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(!contains(&sniffer.stop(), b"/local-only"));
}

#[tokio::test]
async fn teardown_removes_everything() {
    let Some(docs) = mesh_manifests() else { return };
    let testbed = Testbed::build(&docs, options())
        .await
        .expect("building the testbed");
    let names = testbed.netns_names();
    assert_eq!(names.len(), 4, "node + 3 pods: {names:?}");
    assert!(
        names
            .iter()
            .all(|n| Path::new("/run/netns").join(n).exists())
    );
    testbed.teardown().expect("teardown");
    for name in &names {
        assert!(!exists(name), "{name} left behind");
    }
    assert!(matches!(
        testbed
            .add_pod(PodSpec {
                namespace: "x".into(),
                name: "y".into(),
                ..PodSpec::default()
            })
            .await,
        Err(TestbedError::TornDown)
    ));
    testbed.teardown().expect("teardown is idempotent");
}

#[tokio::test]
async fn a_panicking_test_still_cleans_up() {
    let Some(docs) = mesh_manifests() else { return };
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = names.clone();
    let options = options();
    let task = tokio::spawn(async move {
        let testbed = Testbed::build(&docs, options)
            .await
            .expect("building the testbed");
        seen.lock().unwrap().extend(testbed.netns_names());
        panic!("a test failing with its testbed alive");
    });
    assert!(task.await.unwrap_err().is_panic());
    let names = names.lock().unwrap().clone();
    assert_eq!(names.len(), 4);
    for name in &names {
        assert!(!exists(name), "{name} left behind after a panic");
    }
}

#[tokio::test]
async fn leftovers_of_dead_processes_are_removed() {
    if let Err(reason) = check_host() {
        eprintln!("SKIP: {reason}");
        return;
    }
    // PID 4294967295 cannot exist: this namespace belongs to a dead process.
    let stale = "stb-4294967295-1-0-p0";
    let status = std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap();
    assert!(status.success() || Path::new("/run/netns").join(stale).exists());
    std::fs::create_dir_all(Path::new(ETC_NETNS_DIR).join(stale)).unwrap();
    let testbed = Testbed::build(
        &[],
        TestbedOptions {
            echo_binary: None,
            ..TestbedOptions::default()
        },
    )
    .await
    .expect("building an empty testbed");
    assert!(!exists(stale), "stale namespace survived");
    assert!(testbed.pods().is_empty());
    assert!(
        Path::new("/run/netns")
            .join(testbed.node_netns_name())
            .exists()
    );
}

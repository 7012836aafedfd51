//! Standalone end to end on loopback: serving, hot reload without dropping connections, bad
//! input that leaves the rest of the config serving, and `check`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use strait::standalone::{Standalone, StandaloneOptions};

mod common;
use common::{TempDir, backend_yaml, echo, gateway_yaml, route_yaml};

fn gateway_address(standalone: &Standalone) -> std::net::IpAddr {
    let gateway = standalone.object("Gateway", "t", "gw").expect("gateway");
    gateway["status"]["addresses"][0]["value"]
        .as_str()
        .expect("an address in status")
        .parse()
        .unwrap()
}

/// Sends GET `path` on an open HTTP/1.1 connection; returns status and echoed pod.
async fn get(sender: &mut http1::SendRequest<Empty<Bytes>>, path: &str) -> (u16, String) {
    let request = http::Request::get(path)
        .header("host", "example.com")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let pod = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["pod"].as_str().map(String::from))
        .unwrap_or_default();
    (status, pod)
}

async fn connect(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn reload_swaps_routes_on_open_connections_and_survives_bad_documents() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new("reload");
    let _v1 = echo("127.0.0.1:39101", "v1").await;
    let _v2 = echo("127.0.0.1:39102", "v2").await;
    dir.write("gateway.yaml", &gateway_yaml(39180));
    dir.write(
        "backends.yaml",
        &format!(
            "{}---{}",
            backend_yaml("v1", "127.0.0.1:39101".parse().unwrap()),
            backend_yaml("v2", "127.0.0.1:39102".parse().unwrap())
        ),
    );
    dir.write("route.yaml", &route_yaml("r", "/", "v1"));
    let standalone = Standalone::start(StandaloneOptions::gateways_only(dir.0.clone(), 0, false))
        .await
        .unwrap();
    let addr = SocketAddr::new(gateway_address(&standalone), 39180);

    let mut connection = connect(addr).await;
    assert_eq!(get(&mut connection, "/a").await, (200, "v1-pod".into()));

    // Switch the backend; the same keep-alive connection sees the new route.
    dir.write("route.yaml", &route_yaml("r", "/", "v2"));
    standalone.reload().await.unwrap();
    assert_eq!(get(&mut connection, "/a").await, (200, "v2-pod".into()));
    let route = standalone.object("HTTPRoute", "t", "r").unwrap();
    assert_eq!(route["metadata"]["generation"], 2);
    assert_eq!(
        route["status"]["parents"][0]["conditions"][0]["observedGeneration"],
        2
    );

    // A malformed document elsewhere is reported and the rest keeps serving.
    dir.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [oops\n",
    );
    standalone.reload().await.unwrap();
    let errors = standalone.load_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("broken.yaml:"), "{}", errors[0]);
    assert_eq!(get(&mut connection, "/a").await, (200, "v2-pod".into()));

    // A route with an invalid regex is rejected with a condition; the other route serves.
    dir.write(
        "bad-route.yaml",
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: t}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]
    backendRefs: [{name: v1, port: 80}]
",
    );
    standalone.reload().await.unwrap();
    let bad = standalone.object("HTTPRoute", "t", "bad").unwrap();
    let accepted = &bad["status"]["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .cloned()
        .unwrap();
    assert_eq!(accepted["status"], "False", "{accepted}");
    assert_eq!(get(&mut connection, "/a").await, (200, "v2-pod".into()));

    // A half-saved edit of the route's own file: its objects keep serving (nothing is deleted by
    // a broken file), and the error names the file.
    let half_saved = route_yaml("r", "/", "v1");
    dir.write(
        "route.yaml",
        &format!("{}\n  - matches: [{{path: ", &half_saved.trim_end()),
    );
    standalone.reload().await.unwrap();
    assert!(
        standalone
            .load_errors()
            .iter()
            .any(|e| e.contains("route.yaml:")),
        "{:?}",
        standalone.load_errors()
    );
    assert_eq!(get(&mut connection, "/a").await, (200, "v2-pod".into()));

    // Removing the route: 404 on the still-open connection.
    std::fs::remove_file(dir.0.join("route.yaml")).unwrap();
    std::fs::remove_file(dir.0.join("bad-route.yaml")).unwrap();
    standalone.reload().await.unwrap();
    assert_eq!(get(&mut connection, "/a").await.0, 404);
    standalone.shutdown().await;
}

#[tokio::test]
async fn watch_mode_picks_up_file_changes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new("watch");
    let _v1 = echo("127.0.0.1:39111", "w1").await;
    dir.write("gateway.yaml", &gateway_yaml(39190));
    dir.write(
        "backends.yaml",
        &backend_yaml("w1", "127.0.0.1:39111".parse().unwrap()),
    );
    let standalone = Standalone::start(StandaloneOptions::gateways_only(dir.0.clone(), 0, true))
        .await
        .unwrap();
    let addr = SocketAddr::new(gateway_address(&standalone), 39190);
    let mut connection = connect(addr).await;
    assert_eq!(get(&mut connection, "/").await.0, 404);
    dir.write("route.yaml", &route_yaml("r", "/", "w1"));
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = get(&mut connection, "/").await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, (200, "w1-pod".into()));
    standalone.shutdown().await;
}

/// A reload of a large directory is compiled beside the data plane: on a current-thread runtime
/// (a proxy on one CPU), requests on open connections keep being answered while it runs.
#[tokio::test(flavor = "current_thread")]
async fn a_large_reload_does_not_stall_requests() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = TempDir::new("large-reload");
    let _backend = echo("127.0.0.1:39121", "l1").await;
    dir.write("gateway.yaml", &gateway_yaml(39182));
    dir.write(
        "backends.yaml",
        &format!(
            "{}---{}",
            backend_yaml("l1", "127.0.0.1:39121".parse().unwrap()),
            route_yaml("r", "/", "l1")
        ),
    );
    let standalone = Standalone::start(StandaloneOptions::gateways_only(dir.0.clone(), 0, false))
        .await
        .unwrap();
    let addr = SocketAddr::new(gateway_address(&standalone), 39182);
    let mut connection = connect(addr).await;
    assert_eq!(get(&mut connection, "/").await, (200, "l1-pod".into()));

    let routes: Vec<String> = (0..ROUTES)
        .map(|i| route_yaml(&format!("r{i}"), &format!("/p{i}"), "l1"))
        .collect();
    dir.write("many.yaml", &routes.join("---"));
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        let mut answered = 0;
        while done.try_recv().is_err() {
            let start = std::time::Instant::now();
            assert_eq!(get(&mut connection, "/").await.0, 200);
            slowest = slowest.max(start.elapsed());
            answered += 1;
        }
        (slowest, answered)
    });
    let start = std::time::Instant::now();
    standalone.reload().await.unwrap();
    let reload = start.elapsed();
    done_tx.send(()).unwrap();
    let (slowest, answered) = client.await.unwrap();
    let config = standalone.config();
    assert_eq!(
        config.gateways[0].ports[0].listeners[0].http_routes.len(),
        ROUTES + 1
    );
    // Compiled on the runtime's thread, the request in flight would wait the whole reload.
    assert!(
        reload >= Duration::from_millis(50),
        "the reload took {reload:?}: too short to show a stall; grow ROUTES"
    );
    assert!(
        slowest < reload / 3 && answered >= 5,
        "{answered} requests answered during a {reload:?} reload, the slowest in {slowest:?}"
    );
    standalone.shutdown().await;
}

/// Routes in the large reload: enough that its compile takes well over 50 ms in a test build.
const ROUTES: usize = 2_000;

#[test]
fn check_reports_problems_with_object_names() {
    let dir = TempDir::new("check");
    dir.write("gateway.yaml", &gateway_yaml(80));
    dir.write("route.yaml", &route_yaml("r", "/", "missing"));
    let report = strait::check::check(std::slice::from_ref(&dir.0));
    assert!(report.yaml.contains("kind: HTTPRoute"), "{}", report.yaml);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("HTTPRoute t/r") && p.contains("BackendNotFound")),
        "{:?}",
        report.problems
    );
    assert!(Path::new(&dir.0).exists());
}

//! Object change → proxy holding the new version, end to end: the in-process API server,
//! the controller (watch, debounce, compile of 1,000 routes, publish) and a subscribed proxy
//! over the gRPC config stream. Each round changes one HTTPRoute's path and times until the
//! proxy has applied a config containing it. Prints p50/p90/p99/max.
//!
//! `cargo bench -p strait-controller --bench propagation`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use strait_config::{PathMatch, ProxyConfig};
use strait_controller::publish::Publisher;
use strait_controller::{ControllerOptions, run};
use strait_test_apiserver::TestApiServer;
use strait_xds::client::Subscription;
use strait_xds::server::ConfigHub;
use strait_xds::{Hello, Scope};

const ROUTES: usize = 1000;
const ROUNDS: usize = 100;
const GW: &str = "gateway.networking.k8s.io/v1";

fn has_path(config: &ProxyConfig, wanted: &str) -> bool {
    config
        .gateways
        .iter()
        .flat_map(|g| &g.ports)
        .flat_map(|p| &p.listeners)
        .flat_map(|l| &l.http_routes)
        .flat_map(|r| &r.rules)
        .flat_map(|r| &r.matches)
        .any(|m| matches!(&m.path, PathMatch::Prefix(p) if p == wanted))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let server = TestApiServer::start().await.expect("api server");
    let seed = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "strait"},
               "spec": {"controllerName": "strait.dev/gateway-controller"}}),
        json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"gatewayClassName": "strait",
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web-strait", "namespace": "shop",
                            "labels": {"gateway.networking.k8s.io/gateway-name": "web"}},
               "spec": {"ports": [{"name": "tcp-80", "port": 80}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cart", "namespace": "shop"},
               "spec": {"ports": [{"name": "http", "port": 80}]}}),
    ];
    for object in seed {
        server.create(object).expect("seed");
    }
    for i in 0..ROUTES {
        server
            .create(json!({"apiVersion": GW, "kind": "HTTPRoute",
                "metadata": {"name": format!("r{i}"), "namespace": "shop"},
                "spec": {"parentRefs": [{"name": "web"}],
                         "hostnames": [format!("h{}.example.com", i % 100)],
                         "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": format!("/r{i}")}}],
                                    "backendRefs": [{"name": "cart", "port": 80}]}]}}))
            .expect("route");
    }
    let hub = ConfigHub::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(strait_xds::server::serve(
        hub.clone(),
        listener,
        std::future::pending(),
    ));
    let client = server.kube_client().expect("client");
    let mut publisher = Publisher::new(hub);
    tokio::spawn(run(client, ControllerOptions::default(), move |o| {
        publisher.publish(o)
    }));

    let latest: Arc<Mutex<Option<ProxyConfig>>> = Arc::default();
    let sink = latest.clone();
    let _subscription = Subscription::spawn(
        endpoint,
        Hello::new(Scope::gateway("shop", "web"), "bench"),
        move |_, bytes| {
            let parsed = serde_json::from_slice::<ProxyConfig>(&bytes)
                .map(|config| {
                    *sink.lock().unwrap() = Some(config);
                })
                .map_err(|e| e.to_string());
            std::future::ready(parsed)
        },
    );
    let wait_for = |path: String| {
        let latest = latest.clone();
        async move {
            let started = Instant::now();
            loop {
                if latest
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|c| has_path(c, &path))
                {
                    return Some(started.elapsed());
                }
                if started.elapsed() > Duration::from_secs(30) {
                    return None;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    };
    wait_for(format!("/r{}", ROUTES - 1))
        .await
        .expect("initial config");

    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let name = format!("r{}", round * 7 % ROUTES);
        let mut route = server
            .get(GW, "HTTPRoute", Some("shop"), &name)
            .expect("route");
        let path = format!("/changed-{round}");
        route["spec"]["rules"][0]["matches"][0]["path"]["value"] = json!(path);
        let started = Instant::now();
        server.update(route).expect("update");
        if wait_for(path).await.is_none() {
            println!("round {round}: change never arrived");
            return;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "object change -> proxy applied, {ROUTES} routes, {ROUNDS} changes: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  (includes the 10 ms quiet-time debounce)",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        samples[samples.len() - 1]
    );
}

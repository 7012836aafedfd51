//! Object change → proxy holding the new version, end to end: the in-process API server,
//! the controller (watch, debounce, compile of 1,000 routes by default, publish) and a
//! subscribed proxy over the gRPC config stream. Each round changes one HTTPRoute's path and
//! times until the proxy has applied a config containing it. Prints p50/p90/p99/max, and how
//! late a 1 ms timer fired meanwhile on the runtime the controller runs on (with the
//! in-process API server; the proxy decodes on the blocking pool): a long synchronous step
//! there (taking a snapshot, a status pass) would delay everything sharing it, which in a
//! controller includes the CA and the config stream. Last, the process's peak RSS.
//!
//! `cargo bench -p strait-controller --bench propagation`; `STRAIT_BENCH_ROUTES=10000` for the
//! compile benchmark's scale.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use strait_config::{PathMatch, ProxyConfig};
use strait_controller::publish::Publisher;
use strait_controller::{ControllerOptions, run};
use strait_test_apiserver::TestApiServer;
use strait_xds::client::Subscription;
use strait_xds::server::ConfigHub;
use strait_xds::{Hello, Scope};
use tokio::sync::watch;

/// Routes in the API server unless `STRAIT_BENCH_ROUTES` says otherwise.
const DEFAULT_ROUTES: usize = 1000;
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

/// The sample at quantile `q` of sorted `samples` (zero when there is none).
fn quantile(samples: &[Duration], q: f64) -> Duration {
    let at = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
    samples.get(at).copied().unwrap_or_default()
}

/// Records how late a 1 ms timer fires, again and again, until `stop`.
fn spawn_lateness_probe(stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Duration>> {
    tokio::spawn(async move {
        let mut late = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1);
            tokio::time::sleep_until(deadline).await;
            late.push(deadline.elapsed());
        }
        late
    })
}

/// The allocator of the `strait` binary the controller ships in: glibc's malloc, spread over
/// this benchmark's threads, held 2.5 times the heap in RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        // `RUST_LOG=strait_controller=debug` shows each compile's and publish's duration.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let routes = std::env::var("STRAIT_BENCH_ROUTES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_ROUTES);
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
    for i in 0..routes {
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

    // The latest applied config, and a signal for each: the wait below checks a config once,
    // when it arrives, instead of scanning 10,000 routes in a loop on one of the two cores the
    // controller and the proxy need.
    let (applied_tx, applied) = watch::channel::<Option<Arc<ProxyConfig>>>(None);
    let _subscription = Subscription::spawn(
        endpoint,
        Hello::new(Scope::gateway("shop", "web"), "bench"),
        move |_, bytes| {
            // Decoded aside, as proxies do: a config of 10,000 routes takes milliseconds, which
            // the lateness probe would otherwise blame on the controller.
            let applied_tx = applied_tx.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let config =
                        serde_json::from_slice::<ProxyConfig>(&bytes).map_err(|e| e.to_string())?;
                    // The replaced config is freed here too, off the runtime.
                    applied_tx.send_replace(Some(Arc::new(config)));
                    Ok::<(), String>(())
                })
                .await
                .map_err(|e| e.to_string())?
            }
        },
    );
    let wait_for = |path: String| {
        let mut applied = applied.clone();
        async move {
            let started = Instant::now();
            let arrived = applied.wait_for(|config| {
                config
                    .as_ref()
                    .is_some_and(|config| has_path(config, &path))
            });
            tokio::time::timeout(Duration::from_secs(30), arrived)
                .await
                .ok()
                .and_then(Result::ok)
                .map(|_| started.elapsed())
        }
    };
    wait_for(format!("/r{}", routes - 1))
        .await
        .expect("initial config");

    let stop_probe = Arc::new(AtomicBool::new(false));
    let probe = spawn_lateness_probe(stop_probe.clone());
    let mut samples = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let name = format!("r{}", round * 7 % routes);
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
    stop_probe.store(true, Ordering::Relaxed);
    let mut late = probe.await.expect("lateness probe");
    samples.sort();
    late.sort();
    println!(
        "object change -> proxy applied, {routes} routes, {ROUNDS} changes: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  (includes the 10 ms quiet-time debounce)",
        quantile(&samples, 0.50),
        quantile(&samples, 0.90),
        quantile(&samples, 0.99),
        quantile(&samples, 1.0)
    );
    println!(
        "meanwhile a 1 ms timer on the controller's runtime fired late by: p50 {:?}  p99 {:?}  max {:?}  ({} samples)",
        quantile(&late, 0.50),
        quantile(&late, 0.99),
        quantile(&late, 1.0),
        late.len()
    );
    if let Some(peak) = peak_rss() {
        println!(
            "peak RSS of this process (controller, in-process API server and subscribed proxy): {peak}"
        );
    }
}

/// `VmHWM` of this process, as the kernel reports it.
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line["VmHWM:".len()..].trim().to_owned())
}

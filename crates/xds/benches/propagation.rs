//! Publish→apply latency of the config stream: 1000 publishes of a ~1 MB gateway config (1,000
//! HTTPRoutes, shaped like `strait_config::ProxyConfig`) to one subscriber over loopback gRPC.
//! The subscriber's apply callback scans the whole JSON, as a proxy decoding it would.
//!
//! Run with `cargo bench -p strait-xds --bench propagation`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strait_xds::server::serve;
use strait_xds::{ConfigHub, Hello, Scope, Subscription};
use tokio::sync::{mpsc, oneshot};

const PUBLISHES: usize = 1000;
const WARMUP: usize = 20;
const ROUTES: usize = 1000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let hub = ConfigHub::new();
    let scope = Scope::gateway("infra", "public");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(hub.clone(), listener, async move {
        let _ = stopped.await;
    }));

    let (applied_tx, mut applied) = mpsc::unbounded_channel::<(u64, Instant)>();
    let subscription = Subscription::spawn(
        format!("http://{addr}"),
        Hello::new(scope.clone(), "bench-proxy"),
        move |version, payload| {
            let parsed = serde_json::from_slice::<serde::de::IgnoredAny>(&payload)
                .map(|_| {
                    let _ = applied_tx.send((version, Instant::now()));
                })
                .map_err(|err| format!("config version {version}: {err}"));
            std::future::ready(parsed)
        },
    );

    let mut config = proxy_config(ROUTES);
    let size = serde_json::to_vec(&config)?.len();
    let mut latencies = Vec::with_capacity(PUBLISHES);
    let started = Instant::now();
    for i in 0..WARMUP + PUBLISHES {
        config["version"] = json!(i);
        let payload = serde_json::to_vec(&config)?;
        let published = Instant::now();
        let version = hub.publish(&scope, payload);
        let applied_at = loop {
            let (v, at) = tokio::time::timeout(Duration::from_secs(30), applied.recv())
                .await?
                .ok_or("subscription ended")?;
            if v == version {
                break at;
            }
        };
        if i == WARMUP {
            // Exclude connection setup and warm-up from the throughput figure.
            latencies.clear();
        }
        if i >= WARMUP {
            latencies.push(applied_at.saturating_duration_since(published));
        }
    }
    let total = started.elapsed();
    subscription.stop().await;
    let _ = stop.send(());
    server.await??;

    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "propagation: {PUBLISHES} publishes of {:.2} MB ({ROUTES} routes), publish→apply latency",
        size as f64 / 1e6
    );
    println!(
        "  p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  mean {:?}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies[latencies.len() - 1],
        mean
    );
    println!(
        "  total {:.2?} incl. serialization ({:.1} MB/s end to end)",
        total,
        (size * (WARMUP + PUBLISHES)) as f64 / 1e6 / total.as_secs_f64()
    );
    Ok(())
}

/// A gateway config with `routes` HTTPRoutes (~1 KB of JSON each) and their clusters.
fn proxy_config(routes: usize) -> Value {
    let http_routes: Vec<Value> = (0..routes)
        .map(|i| {
            json!({
                "route": {"kind": "HTTPRoute", "namespace": format!("team-{}", i % 50), "name": format!("route-{i}")},
                "creation_timestamp": "2026-11-22T08:00:00Z",
                "hostnames": [format!("svc-{i}.example.com"), format!("svc-{i}.internal.example.com")],
                "rules": [
                    {
                        "name": "api",
                        "matches": [{
                            "path": {"PathPrefix": format!("/api/v1/service-{i}")},
                            "headers": [{"name": "x-tenant", "value": {"Exact": format!("tenant-{}", i % 7)}}],
                            "query_params": [],
                            "method": "GET"
                        }],
                        "filters": [{"RequestHeaderModifier": {
                            "set": [["x-route", format!("route-{i}")]],
                            "add": [["x-gateway", "public"]],
                            "remove": ["x-internal-debug"]
                        }}],
                        "backends": [
                            {"weight": 90, "target": {"Cluster": format!("team-{}/svc-{i}:8080", i % 50)}, "filters": []},
                            {"weight": 10, "target": {"Cluster": format!("team-{}/svc-{i}-canary:8080", i % 50)}, "filters": []}
                        ],
                        "timeouts": {"request": "10s", "backend_request": "5s"},
                        "retry": {"attempts": 2, "backoff": "25ms", "codes": [502, 503, 504]}
                    },
                    {
                        "name": null,
                        "matches": [{"path": {"Exact": format!("/healthz/{i}")}, "headers": [], "query_params": [], "method": null}],
                        "filters": [],
                        "backends": [{"weight": 1, "target": {"Cluster": format!("team-{}/svc-{i}:8080", i % 50)}, "filters": []}],
                        "timeouts": {"request": null, "backend_request": null},
                        "retry": null
                    }
                ]
            })
        })
        .collect();
    let clusters: Vec<Value> = (0..routes)
        .map(|i| {
            json!([
                {"namespace": format!("team-{}", i % 50), "name": format!("svc-{i}"), "port": 8080},
                {"endpoints": [format!("198.18.{}.{}:8080", i / 250, i % 250 + 1)], "protocol": "Http1", "tls": null}
            ])
        })
        .collect();
    json!({
        "version": 0,
        "gateways": [{
            "gateway": {"namespace": "infra", "name": "public"},
            "addresses": ["198.19.0.10"],
            "ports": [{
                "port": 80,
                "protocol": "Http",
                "listeners": [{"name": "http", "hostname": null, "tls": null, "http_routes": http_routes}]
            }],
            "backend_client_certificate": null
        }],
        "clusters": clusters
    })
}

//! Route table build and lookup at scale: 10,000 HTTPRoutes over 1,000 hostnames.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use strait_config::{
    BackendTarget, ClusterKey, HeaderMatch, HttpMatch, HttpRoute, HttpRule, ListenerConfig,
    ListenerProtocol, PathMatch, PortConfig, RouteRef, StringMatch, Timeouts, WeightedBackend,
};
use strait_route::{Decision, RequestInfo, RouteTable};

const HOSTS: usize = 1_000;
const ROUTES: usize = 10_000;

fn host(i: usize) -> String {
    format!("svc-{i}.example.com")
}

fn rule(path: PathMatch, headers: Vec<HeaderMatch>, backend: usize) -> HttpRule {
    HttpRule {
        name: None,
        matches: vec![HttpMatch {
            path,
            headers,
            query_params: vec![],
            method: None,
        }],
        filters: vec![],
        backends: vec![WeightedBackend {
            weight: 1,
            target: BackendTarget::Cluster(ClusterKey {
                namespace: "bench".into(),
                name: format!("backend-{backend}"),
                port: 8080,
            }),
            filters: vec![],
        }],
        timeouts: Timeouts::default(),
        retry: None,
    }
}

/// Route `i` serves host `i % HOSTS` with an exact path, a prefix, and (every third route) a
/// header-gated prefix; half the hosts also get a wildcard route.
fn port_config() -> PortConfig {
    let mut routes = Vec::with_capacity(ROUTES);
    for i in 0..ROUTES {
        let h = i % HOSTS;
        let n = i / HOSTS;
        let mut rules = vec![
            rule(PathMatch::Exact(format!("/api/v{n}/status")), vec![], i),
            rule(PathMatch::Prefix(format!("/app{n}/")), vec![], i),
        ];
        if i % 3 == 0 {
            rules.push(rule(
                PathMatch::Prefix(format!("/canary{n}")),
                vec![HeaderMatch {
                    name: "x-canary".into(),
                    value: StringMatch::Exact("yes".into()),
                }],
                i,
            ));
        }
        let hostnames = if i % 2 == 0 && n == 0 {
            vec![host(h), format!("*.zone-{h}.example.com")]
        } else {
            vec![host(h)]
        };
        routes.push(HttpRoute {
            route: RouteRef {
                kind: "HTTPRoute".into(),
                namespace: "bench".into(),
                name: format!("route-{i}"),
            },
            creation_timestamp: format!("2024-01-01T00:00:{:02}Z", i % 60),
            hostnames,
            rules,
        });
    }
    PortConfig {
        port: 80,
        protocol: ListenerProtocol::Http,
        listeners: vec![ListenerConfig {
            name: "http".into(),
            hostname: None,
            tls: None,
            http_routes: routes,
        }],
    }
}

fn lookup(table: &RouteTable, host: &str, path: &str, headers: &HeaderMap) -> bool {
    let info = RequestInfo {
        method: &Method::GET,
        host,
        path,
        query: None,
        headers,
        sni: None,
    };
    matches!(table.route(&info), Decision::Matched(_))
}

fn bench(c: &mut Criterion) {
    let config = port_config();
    c.bench_function("build 10k routes / 1k hosts", |b| {
        b.iter(|| RouteTable::build(black_box(&config)))
    });

    let table = RouteTable::build(&config).expect("bench config is valid");
    let empty = HeaderMap::new();
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", HeaderValue::from_static("yes"));
    let exact_host = host(417);
    let wildcard_host = "a.b.zone-418.example.com";

    assert!(lookup(&table, &exact_host, "/api/v3/status", &empty));
    assert!(lookup(&table, &exact_host, "/app9/deep/path/x", &empty));
    assert!(lookup(&table, &exact_host, "/canary0/x", &canary));
    assert!(lookup(&table, wildcard_host, "/app0/x", &empty));
    assert!(!lookup(&table, &exact_host, "/nothing/here", &empty));
    assert!(!lookup(&table, "unknown.example.org", "/app0/", &empty));

    let mut group = c.benchmark_group("route");
    group.bench_function("hit exact path", |b| {
        b.iter(|| {
            lookup(
                &table,
                black_box(&exact_host),
                black_box("/api/v3/status"),
                &empty,
            )
        })
    });
    group.bench_function("hit prefix (4 segments)", |b| {
        b.iter(|| {
            lookup(
                &table,
                black_box(&exact_host),
                black_box("/app9/deep/path/x"),
                &empty,
            )
        })
    });
    group.bench_function("hit header-gated prefix", |b| {
        b.iter(|| {
            lookup(
                &table,
                black_box(&exact_host),
                black_box("/canary0/x"),
                &canary,
            )
        })
    });
    group.bench_function("hit wildcard host", |b| {
        b.iter(|| {
            lookup(
                &table,
                black_box(wildcard_host),
                black_box("/app0/x"),
                &empty,
            )
        })
    });
    group.bench_function("miss path", |b| {
        b.iter(|| {
            lookup(
                &table,
                black_box(&exact_host),
                black_box("/nothing/here"),
                &empty,
            )
        })
    });
    group.bench_function("miss host", |b| {
        b.iter(|| {
            lookup(
                &table,
                black_box("unknown.example.org"),
                black_box("/app0/"),
                &empty,
            )
        })
    });
    group.finish();

    print_tail_latency(&table, &canary);
}

/// The lookup target is a p99, which criterion's mean does not show: time single lookups over a
/// mix of hosts, paths, hits and misses and print the percentiles (nanoseconds, including about
/// 20-40 ns of clock overhead per sample).
fn print_tail_latency(table: &RouteTable, canary: &HeaderMap) {
    let empty = HeaderMap::new();
    let hosts: Vec<String> = (0..1000).map(host).collect();
    let paths = [
        "/api/v3/status",
        "/app9/deep/path/x",
        "/canary0/x",
        "/nothing/here",
        "/app0/",
    ];
    let mut samples = Vec::with_capacity(200_000);
    for i in 0..200_000usize {
        let host = &hosts[(i * 7919) % hosts.len()];
        let path = paths[i % paths.len()];
        let headers = if i % 3 == 0 { canary } else { &empty };
        let start = std::time::Instant::now();
        black_box(lookup(table, black_box(host), black_box(path), headers));
        samples.push(start.elapsed().as_nanos());
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "route lookup latency over {} mixed lookups: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        samples.len(),
        at(0.50),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

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
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Compiles HTTPRoutes attached to one Gateway: 10,000 routes spread over 1,000 hostnames and
//! 100 Services of 2 endpoints (the target's case), and 1,000 routes to 10 Services of 500
//! endpoints each (many routes sharing large backends). Then the 10,000 routes' config through
//! the JSON of the config stream: what the controller serializes and every proxy parses on each
//! change.

use std::collections::BTreeMap;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use strait_compile::{CONTROLLER_NAME, CompileInput, compile};
use strait_config::{ObjectRef, ProxyConfig};
use strait_model::Snapshot;

/// `routes` routes over `hosts` hostnames, sending to `services` Services of `endpoints` ready
/// endpoints each.
fn snapshot(routes: usize, hosts: usize, services: usize, endpoints: usize) -> Snapshot {
    let mut text = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: strait}\nspec: {controllerName: strait.dev/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: bench}\nspec:\n  gatewayClassName: strait\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n",
    );
    for s in 0..services {
        let addresses: Vec<String> = (0..endpoints)
            .map(|e| format!("{{addresses: [10.{s}.{}.{}]}}", e / 250, e % 250 + 1))
            .collect();
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: bench}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{s}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{s}}}}}\naddressType: IPv4\nports: [{{name: http, port: 3000}}]\nendpoints: [{}]\n",
            addresses.join(", ")
        ));
    }
    for r in 0..routes {
        let host = r % hosts;
        let svc = r % services;
        text.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: route-{r}, namespace: bench}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [host-{host}.example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /r{r}}}, headers: [{{name: x-r, value: v{r}}}]}}]\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-a, value: b}}]}}}}]\n    backendRefs: [{{name: svc-{svc}, port: 8080}}]\n"
        ));
    }
    let report = strait_model::load_str(&text, std::path::Path::new("bench.yaml"));
    assert!(report.errors.is_empty(), "{:?}", report.errors.first());
    report.snapshot
}

fn bench(c: &mut Criterion) {
    let addresses: BTreeMap<ObjectRef, Vec<IpAddr>> = BTreeMap::from([(
        ObjectRef {
            namespace: "bench".into(),
            name: "gw".into(),
        },
        vec![IpAddr::from([127, 0, 0, 1])],
    )]);
    let mut target = None;
    for (name, snapshot) in [
        (
            "compile_10k_routes_1k_hosts",
            snapshot(10_000, 1_000, 100, 2),
        ),
        (
            "compile_1k_routes_10_services_500_endpoints",
            snapshot(1_000, 100, 10, 500),
        ),
    ] {
        let input = CompileInput {
            snapshot: &snapshot,
            controller_name: CONTROLLER_NAME,
            gateway_addresses: &addresses,
            now: "2026-01-01T00:00:00Z",
        };
        c.bench_function(name, |b| b.iter(|| compile(std::hint::black_box(&input))));
        target.get_or_insert_with(|| compile(&input).config);
    }
    let Some(config) = target else { return };
    let payload = serde_json::to_vec(&config).expect("config serializes");
    println!("config of 10,000 routes: {} bytes of JSON", payload.len());
    c.bench_function("encode_10k_routes_config", |b| {
        b.iter(|| serde_json::to_vec(std::hint::black_box(&config)))
    });
    c.bench_function("decode_10k_routes_config", |b| {
        b.iter(|| serde_json::from_slice::<ProxyConfig>(std::hint::black_box(&payload)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Turns one compile output into per-scope configs on the [`ConfigHub`]: each ingress Gateway
//! gets its own `ProxyConfig` (its listeners and only the clusters its routes reach, so an
//! endpoint change elsewhere pushes nothing to it), each waypoint and each node the mesh config.
//! The hub pushes only scopes whose bytes changed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use strait_compile::CompileOutput;
use strait_config::mesh::MeshConfig;
use strait_config::{BackendTarget, Cluster, ClusterKey, GatewayConfig, HttpFilter, ProxyConfig};
use strait_xds::Scope;
use strait_xds::server::ConfigHub;

/// Publishes compile outputs, remembering which scopes exist so vanished ones are removed.
pub struct Publisher {
    hub: ConfigHub,
    /// Nodes that should receive the mesh config (node proxies subscribe by node name).
    nodes: BTreeSet<String>,
    published: BTreeSet<Scope>,
}

impl Publisher {
    pub fn new(hub: ConfigHub) -> Publisher {
        Publisher {
            hub,
            nodes: BTreeSet::new(),
            published: BTreeSet::new(),
        }
    }

    /// The hub (for serving it).
    pub fn hub(&self) -> &ConfigHub {
        &self.hub
    }

    /// Publishes every scope of `output`; scopes no longer present are removed.
    pub fn publish(&mut self, output: &CompileOutput) {
        let mut scopes = BTreeSet::new();
        for gateway in &output.config.gateways {
            let scope = Scope::gateway(&gateway.gateway.namespace, &gateway.gateway.name);
            // Serialized from borrows: cloning a Gateway of thousands of routes into its own
            // `ProxyConfig` first (and freeing it after) cost more than the serialization.
            if let Ok(bytes) = serde_json::to_vec(&ScopeView::new(&output.config, gateway)) {
                self.hub.publish(&scope, bytes);
            }
            scopes.insert(scope);
        }
        if let Ok(mesh) = serde_json::to_vec(&output.mesh) {
            // Every waypoint provisioned, including one declared by a Gateway that no Service
            // is bound to yet: it serves nothing, but it must get a config to become ready.
            for waypoint in output.provisioning.waypoints.keys() {
                let scope = Scope::waypoint(&waypoint.namespace, &waypoint.name);
                self.hub.publish(&scope, mesh.clone());
                scopes.insert(scope);
            }
            self.nodes.extend(nodes_of(&output.mesh));
            for node in &self.nodes {
                let scope = Scope::node(node);
                self.hub.publish(&scope, mesh.clone());
                scopes.insert(scope);
            }
        }
        for gone in self.published.difference(&scopes) {
            self.hub.remove(gone);
        }
        self.published = scopes;
    }
}

/// Every node that runs a meshed pod.
fn nodes_of(mesh: &MeshConfig) -> BTreeSet<String> {
    mesh.workloads
        .iter()
        .filter_map(|w| w.node.clone())
        .collect()
}

/// One Gateway's config: its own listeners and the clusters its routes and mirrors reach.
pub fn gateway_scope(config: &ProxyConfig, gateway: &GatewayConfig) -> ProxyConfig {
    let used = used_clusters(gateway);
    let clusters: BTreeMap<ClusterKey, _> = config
        .clusters
        .iter()
        .filter(|(key, _)| used.contains(*key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ProxyConfig {
        version: config.version,
        gateways: vec![gateway.clone()],
        clusters,
    }
}

/// [`gateway_scope`] by reference: serializes exactly as the `ProxyConfig` it returns
/// (`clusters` as a list of `[key, cluster]` pairs, in key order), without copying anything.
#[derive(Serialize)]
struct ScopeView<'a> {
    version: u64,
    gateways: [&'a GatewayConfig; 1],
    clusters: Vec<(&'a ClusterKey, &'a Cluster)>,
}

impl<'a> ScopeView<'a> {
    fn new(config: &'a ProxyConfig, gateway: &'a GatewayConfig) -> ScopeView<'a> {
        let used = used_clusters(gateway);
        ScopeView {
            version: config.version,
            gateways: [gateway],
            clusters: config
                .clusters
                .iter()
                .filter(|(key, _)| used.contains(*key))
                .collect(),
        }
    }
}

/// The clusters a Gateway's routes and mirrors reach.
fn used_clusters(gateway: &GatewayConfig) -> BTreeSet<&ClusterKey> {
    let mut used = BTreeSet::new();
    for port in &gateway.ports {
        for listener in &port.listeners {
            for route in &listener.http_routes {
                for rule in &route.rules {
                    let filters = rule
                        .filters
                        .iter()
                        .chain(rule.backends.iter().flat_map(|b| b.filters.iter()));
                    let mirrors = filters.filter_map(|filter| match filter {
                        HttpFilter::RequestMirror(mirror) => Some(&mirror.backend),
                        _ => None,
                    });
                    let targets = rule.backends.iter().map(|b| &b.target).chain(mirrors);
                    for target in targets {
                        if let BackendTarget::Cluster(key) = target {
                            used.insert(key);
                        }
                    }
                }
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CLUSTER: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait}
spec: {controllerName: strait.dev/gateway-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: shop}
spec:
  gatewayClassName: strait
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: admin, namespace: shop}
spec:
  gatewayClassName: strait
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: web-strait, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: web}}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: tcp-80, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: admin-strait, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: admin}}
spec:
  clusterIP: 198.19.0.11
  ports: [{name: tcp-8080, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: audit, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: console, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /cart}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: audit, port: 80}}
    backendRefs: [{name: cart, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: admin, namespace: shop}
spec:
  parentRefs: [{name: admin}]
  rules:
  - backendRefs: [{name: console, port: 80}]
"#;

    #[test]
    fn a_gateway_scope_serializes_from_borrows_exactly_as_its_own_config() {
        let report = strait_model::load_str(CLUSTER, Path::new("cluster.yaml"));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let output = crate::compile_snapshot(&report.snapshot, strait_compile::CONTROLLER_NAME);
        assert_eq!(output.config.gateways.len(), 2);
        assert_eq!(output.config.clusters.len(), 3);
        for gateway in &output.config.gateways {
            let owned = gateway_scope(&output.config, gateway);
            // Each Gateway gets only what its routes (and mirrors) reach.
            let expected = if gateway.gateway.name == "web" { 2 } else { 1 };
            assert_eq!(owned.clusters.len(), expected, "{}", gateway.gateway.name);
            let borrowed = serde_json::to_vec(&ScopeView::new(&output.config, gateway)).unwrap();
            assert_eq!(borrowed, serde_json::to_vec(&owned).unwrap());
            let decoded: ProxyConfig = serde_json::from_slice(&borrowed).unwrap();
            assert_eq!(decoded, owned);
        }
    }

    #[test]
    fn a_declared_waypoint_without_services_gets_the_mesh_config() {
        let report = strait_model::load_str(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait-waypoint}
spec: {controllerName: strait.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: strait-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#,
            Path::new("declared.yaml"),
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let output = crate::compile_snapshot(&report.snapshot, strait_compile::CONTROLLER_NAME);
        assert!(
            output.mesh.waypoints.is_empty(),
            "no Service is bound to it"
        );
        let mut publisher = Publisher::new(ConfigHub::new());
        publisher.publish(&output);
        let scope = Scope::waypoint("shop", "edge");
        assert!(publisher.hub().current(&scope).is_some());
    }
}

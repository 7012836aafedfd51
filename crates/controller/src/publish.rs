//! Turns one compile output into per-scope configs on the [`ConfigHub`]: each ingress Gateway
//! gets its own `ProxyConfig` (its listeners and only the clusters its routes reach, so an
//! endpoint change elsewhere pushes nothing to it), each waypoint and each node the mesh config.
//! The hub pushes only scopes whose bytes changed.

use std::collections::{BTreeMap, BTreeSet};

use strait_compile::CompileOutput;
use strait_config::mesh::MeshConfig;
use strait_config::{BackendTarget, ClusterKey, GatewayConfig, HttpFilter, ProxyConfig};
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
            let config = gateway_scope(&output.config, gateway);
            if let Ok(bytes) = serde_json::to_vec(&config) {
                self.hub.publish(&scope, bytes);
            }
            scopes.insert(scope);
        }
        if let Ok(mesh) = serde_json::to_vec(&output.mesh) {
            for waypoint in &output.mesh.waypoints {
                let scope = Scope::waypoint(&waypoint.gateway.namespace, &waypoint.gateway.name);
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
    let mut used = BTreeSet::new();
    let mut note = |target: &BackendTarget| {
        if let BackendTarget::Cluster(key) = target {
            used.insert(key.clone());
        }
    };
    for port in &gateway.ports {
        for listener in &port.listeners {
            for route in &listener.http_routes {
                for rule in &route.rules {
                    let filters = rule
                        .filters
                        .iter()
                        .chain(rule.backends.iter().flat_map(|b| b.filters.iter()));
                    for filter in filters {
                        if let HttpFilter::RequestMirror(mirror) = filter {
                            note(&mirror.backend);
                        }
                    }
                    for backend in &rule.backends {
                        note(&backend.target);
                    }
                }
            }
        }
    }
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

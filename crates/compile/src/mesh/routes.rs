//! Waypoint route tables: per Service port, the producer routes (the Service's namespace) and
//! the consumer routes (by the caller's namespace), as one-listener [`PortConfig`]s so the
//! ingress route engine runs them unchanged.

use std::collections::{BTreeMap, BTreeSet};

use strait_config::mesh::WaypointPort;
use strait_config::{
    ClusterKey, HttpRoute as RouteConfig, ListenerConfig, ListenerProtocol, ObjectRef, PortConfig,
};

/// The routes of one Service port.
#[derive(Default)]
struct Tables {
    producer: Vec<RouteConfig>,
    consumers: BTreeMap<String, Vec<RouteConfig>>,
    /// Route indexes already added, so a route naming the port twice is listed once.
    seen: BTreeSet<usize>,
}

/// Route tables of every Service port some route applies to.
#[derive(Default)]
pub(crate) struct RouteTables(BTreeMap<(ObjectRef, u16), Tables>);

impl RouteTables {
    /// Adds route `index` (translated as `route`, hostnames cleared: mesh parents match by
    /// destination Service, not Host) to a Service port. A route in the Service's namespace is
    /// a producer route; any other is a consumer route for callers from its namespace.
    pub(crate) fn add(
        &mut self,
        service: &ObjectRef,
        port: u16,
        index: usize,
        route: &RouteConfig,
    ) {
        let tables = self.0.entry((service.clone(), port)).or_default();
        if !tables.seen.insert(index) {
            return;
        }
        let mut route = route.clone();
        route.hostnames.clear();
        if route.route.namespace == service.namespace {
            tables.producer.push(route);
        } else {
            tables
                .consumers
                .entry(route.route.namespace.clone())
                .or_default()
                .push(route);
        }
    }

    /// The waypoint view of a Service port; `listener` names the port (its name or number).
    pub(crate) fn port(
        &self,
        service: &ObjectRef,
        port: u16,
        listener: &str,
        protocol: strait_config::mesh::MeshProtocol,
        cluster: ClusterKey,
    ) -> WaypointPort {
        let tables = self.0.get(&(service.clone(), port));
        let table = |routes: &[RouteConfig]| PortConfig {
            port,
            protocol: ListenerProtocol::Http,
            listeners: vec![ListenerConfig {
                name: listener.to_string(),
                hostname: None,
                tls: None,
                http_routes: routes.to_vec(),
            }],
        };
        WaypointPort {
            port,
            protocol,
            cluster,
            producer: tables
                .filter(|t| !t.producer.is_empty())
                .map(|t| table(&t.producer)),
            consumers: tables
                .map(|t| {
                    t.consumers
                        .iter()
                        .map(|(ns, routes)| (ns.clone(), table(routes)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

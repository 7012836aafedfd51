//! The mesh (GAMMA) half of compilation: enrolled workloads, Services with their protocol,
//! endpoints and waypoint, the waypoints' route tables, and the `status.parents` entries of
//! routes whose parentRefs are Services.
//!
//! Order matters: Service parentRefs are resolved first ([`parents`]) because a namespace
//! without an explicit waypoint uses its default waypoint only for Services that an accepted
//! route targets ([`waypoints`]); then route tables ([`routes`]) are built for bound Services,
//! the Services those routes send to join the Service list ([`services`]), and the waypoints'
//! pods decide both the workloads ([`workloads`]) and whether routes report the waypoint ready.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use strait_config::mesh::{
    DEFAULT_TRUST_DOMAIN, MeshConfig, MeshService, MeshServicePort, WaypointConfig,
};
use strait_config::{AppProtocol, ObjectRef};

use crate::conditions::Condition;
use crate::context::Context;
use crate::routes::{RouteParents, RouteSet, Scope, merge_clusters, resolved_refs, route_config};

mod capture;
mod namespaces;
mod parents;
mod protocol;
mod routes;
mod services;
pub(crate) mod waypoint_gateways;
mod waypoints;
mod workloads;

use namespaces::MeshNamespaces;
use routes::RouteTables;
use waypoints::Unbound;

/// A Service of the mesh with its waypoint binding.
struct Member<'a> {
    service: &'a Service,
    binding: Result<ObjectRef, Unbound>,
}

/// Compiles the mesh config and adds the Service parent entries of route statuses.
pub(crate) fn compile<'a>(
    ctx: &Context<'a>,
    routes: &RouteSet<'a>,
    route_parents: &mut RouteParents,
) -> MeshConfig {
    let namespaces = MeshNamespaces::new(ctx.snapshot);
    let service_parents = parents::resolve(ctx, routes);
    let targeted: BTreeSet<&ObjectRef> = service_parents
        .iter()
        .filter(|p| p.outcome.is_ok())
        .map(|p| &p.service)
        .collect();

    // Every Service of an enrolled namespace, with its waypoint.
    let mut members: BTreeMap<ObjectRef, Member<'_>> = BTreeMap::new();
    for service in &ctx.snapshot.services {
        let key = services::service_ref(service);
        let Some(namespace) = namespaces.enrolled(&key.namespace) else {
            continue;
        };
        let binding = waypoints::bind(Some(namespace), service, targeted.contains(&key));
        members.insert(key, Member { service, binding });
    }

    // Routes of the Services that pass a waypoint, and the clusters those routes send to.
    let mut tables = RouteTables::default();
    let mut clusters = BTreeMap::new();
    let mut grpc_clusters = BTreeSet::new();
    let mut applied = BTreeSet::new();
    for parent in &service_parents {
        let Ok(ports) = &parent.outcome else {
            continue;
        };
        if members
            .get(&parent.service)
            .is_none_or(|m| m.binding.is_err())
        {
            continue;
        }
        let (Some(route), Some(compiled)) = (
            routes.get(parent.route),
            routes.compiled(ctx, parent.route, Scope::Mesh),
        ) else {
            continue;
        };
        let config = route_config(route, Vec::new(), compiled.rules.clone());
        for &port in ports {
            tables.add(&parent.service, port, parent.route, &config);
        }
        if applied.insert(parent.route) {
            merge_clusters(
                ctx,
                &compiled.clusters,
                route.kind(),
                &mut clusters,
                &mut grpc_clusters,
            );
        }
    }

    // The Services those routes send to join the mesh's Services (node proxies must know
    // their VIPs); outside enrolled namespaces they have no waypoint.
    let backends: BTreeSet<ObjectRef> = clusters
        .keys()
        .map(|k| ObjectRef {
            namespace: k.namespace.clone(),
            name: k.name.clone(),
        })
        .collect();
    for key in backends {
        if members.contains_key(&key) {
            continue;
        }
        if let Some(service) = ctx.service(&key.namespace, &key.name) {
            let binding = waypoints::bind(namespaces.enrolled(&key.namespace), service, false);
            members.insert(key, Member { service, binding });
        }
    }

    // Services, and the clusters of their ports (the mesh's protocol detection decides how
    // every Service port is spoken to, route backends included).
    let mut mesh_services = Vec::with_capacity(members.len());
    for (key, member) in &members {
        let mut ports = Vec::new();
        for port in services::ports(member.service) {
            let cluster_key = services::cluster_key(key, port.port);
            clusters.insert(cluster_key.clone(), services::cluster(ctx, key, &port));
            ports.push(MeshServicePort {
                port: port.port,
                protocol: port.protocol,
                cluster: cluster_key,
            });
        }
        mesh_services.push(MeshService {
            service: key.clone(),
            vips: services::vips(member.service),
            ports,
            waypoint: member.binding.as_ref().ok().cloned(),
        });
    }
    // GRPCRoute backends speak HTTP/2 whatever the Service port says.
    for key in grpc_clusters {
        if let Some(c) = clusters.get_mut(&key) {
            c.protocol = AppProtocol::H2c;
        }
    }

    let used: BTreeSet<ObjectRef> = members
        .values()
        .filter_map(|m| m.binding.as_ref().ok().cloned())
        .collect();
    let waypoint_configs: Vec<WaypointConfig> = used
        .iter()
        .map(|w| {
            let bound = members
                .iter()
                .filter(|(_, m)| m.binding.as_ref() == Ok(w))
                .map(|(k, m)| (k, m.service));
            waypoints::config(ctx, w, bound, &tables)
        })
        .collect();
    let workloads = workloads::workloads(ctx.snapshot, &namespaces, &used);

    // Route statuses.
    for parent in &service_parents {
        let (Some(route), Some(compiled)) = (
            routes.get(parent.route),
            routes.compiled(ctx, parent.route, Scope::Mesh),
        ) else {
            continue;
        };
        let conditions = match &parent.outcome {
            Ok(ports) => {
                let binding = members
                    .get(&parent.service)
                    .map_or(Err(Unbound::NotEnrolled), |m| {
                        m.binding.as_ref().map_err(|e| *e)
                    });
                let addresses = binding
                    .ok()
                    .and_then(|w| waypoint_configs.iter().find(|c| &c.gateway == w))
                    .map_or(&[][..], |c| c.addresses.as_slice());
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                vec![
                    Condition::new(
                        "Accepted",
                        true,
                        "Accepted",
                        format!(
                            "Route accepted for Service {} port {}",
                            parent.service,
                            ports.join(", ")
                        ),
                    ),
                    resolved_refs(compiled),
                    waypoints::readiness(&parent.service, binding, addresses),
                ]
            }
            Err((reason, message)) => vec![
                Condition::new("Accepted", false, *reason, message.clone()),
                resolved_refs(compiled),
            ],
        };
        route_parents.push(
            ctx,
            (parent.route, route),
            parent.parent_index,
            parent.parent_ref.clone(),
            &conditions,
        );
    }

    MeshConfig {
        version: 0,
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        workloads,
        services: mesh_services,
        waypoints: waypoint_configs,
        clusters,
    }
}

#[cfg(test)]
mod tests;

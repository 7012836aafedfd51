//! Waypoint binding (which waypoint a Service goes through), the waypoints' configs, and the
//! `strait.dev/WaypointReady` route condition that tells users when traffic is refused.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use strait_config::ObjectRef;
use strait_config::mesh::{WaypointConfig, WaypointService};

use super::namespaces::{MeshNamespace, WaypointChoice};
use super::routes::RouteTables;
use super::services;
use super::workloads;
use crate::conditions::Condition;
use crate::context::{Context, ns};

/// Implementation-specific route condition: whether the waypoint of a Service parent can carry
/// traffic. Connections never bypass a missing waypoint, so this is how users learn why they
/// are refused.
pub(crate) const WAYPOINT_READY: &str = "strait.dev/WaypointReady";

/// Why a Service has no waypoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unbound {
    /// Its namespace is not enrolled.
    NotEnrolled,
    /// Its namespace says `strait.dev/waypoint=none`.
    OptedOut,
    /// It fronts a Gateway's own pods.
    GatewayService,
    /// Default waypoint, but no route targets the Service.
    NotTargeted,
}

/// The waypoint a Service goes through. `namespace` is the Service's namespace when enrolled;
/// `targeted` says whether an accepted route parentRef names the Service.
pub(crate) fn bind(
    namespace: Option<&MeshNamespace>,
    service: &Service,
    targeted: bool,
) -> Result<ObjectRef, Unbound> {
    let namespace = namespace.ok_or(Unbound::NotEnrolled)?;
    if services::is_gateway_service(service) {
        return Err(Unbound::GatewayService);
    }
    let waypoint = match &namespace.waypoint {
        WaypointChoice::OptedOut => return Err(Unbound::OptedOut),
        WaypointChoice::Default if !targeted => return Err(Unbound::NotTargeted),
        WaypointChoice::Named(_) | WaypointChoice::Default => namespace.waypoint_name(),
    };
    let name = waypoint.ok_or(Unbound::OptedOut)?;
    Ok(ObjectRef {
        namespace: ns(&service.metadata).into(),
        name: name.into(),
    })
}

/// The config of one waypoint: its addresses and the Services bound to it (sorted), each port
/// with its route tables.
pub(crate) fn config<'a>(
    ctx: &Context<'_>,
    waypoint: &ObjectRef,
    bound: impl Iterator<Item = (&'a ObjectRef, &'a Service)>,
    tables: &RouteTables,
) -> WaypointConfig {
    let services = bound
        .map(|(key, service)| WaypointService {
            service: key.clone(),
            vips: services::vips(service),
            ports: services::ports(service)
                .iter()
                .map(|p| {
                    tables.port(
                        key,
                        p.port,
                        &p.listener_name(),
                        p.protocol,
                        services::cluster_key(key, p.port),
                    )
                })
                .collect(),
        })
        .collect();
    WaypointConfig {
        gateway: waypoint.clone(),
        // The waypoint's pods run as a service account named after it (its HBONE identity).
        service_account: waypoint.name.clone(),
        addresses: workloads::waypoint_addresses(ctx.snapshot, waypoint),
        services,
    }
}

/// `strait.dev/WaypointReady` of a route parent naming `service`. `addresses` are those of
/// the bound waypoint.
pub(crate) fn readiness(
    service: &ObjectRef,
    binding: Result<&ObjectRef, Unbound>,
    addresses: &[IpAddr],
) -> Condition {
    let not_applied = "no waypoint applies this route";
    match binding {
        Ok(w) if !addresses.is_empty() => Condition::new(
            WAYPOINT_READY,
            true,
            "Ready",
            format!(
                "waypoint {w} serves Service {service} from {} address(es)",
                addresses.len()
            ),
        ),
        // Whether or not a Gateway declares it: the controller provisions a bound waypoint
        // either way, so what is missing is a running pod.
        Ok(w) => Condition::new(
            WAYPOINT_READY,
            false,
            "WaypointUnavailable",
            format!(
                "waypoint {w} has no running pods: connections to Service {service} are refused"
            ),
        ),
        Err(unbound) => {
            let why = match unbound {
                Unbound::NotEnrolled => format!(
                    "Service {service} is not in the mesh (namespace {} is not labelled \
                     strait.dev/mesh=enabled)",
                    service.namespace
                ),
                Unbound::OptedOut => format!(
                    "namespace {} opts out of waypoints (strait.dev/waypoint=none)",
                    service.namespace
                ),
                Unbound::GatewayService => {
                    format!("Service {service} fronts a Gateway's pods")
                }
                Unbound::NotTargeted => format!("Service {service} is bound to no waypoint"),
            };
            Condition::new(
                WAYPOINT_READY,
                false,
                "NoWaypoint",
                format!("{why}: {not_applied}"),
            )
        }
    }
}

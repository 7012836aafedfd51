//! Where an outbound connection goes: the pure decision, separated from the sockets.

use std::net::SocketAddr;

use strait_config::ObjectRef;
use strait_config::mesh::MeshConfig;
use strait_identity::SpiffeId;
use strait_proxy::hbone::HBONE_PORT;
use strait_proxy::mesh::workload_identity;

/// The route of one outbound connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// HBONE to `peer` (a node proxy or waypoint on 15008) proving `peer_id`, `:authority` =
    /// `target`.
    Tunnel {
        peer: SocketAddr,
        peer_id: SpiffeId,
        target: SocketAddr,
    },
    /// Plain TCP (the destination is outside the mesh).
    Passthrough(SocketAddr),
    /// Refused: the reason is logged. Never sent around a waypoint.
    Refuse(Refusal),
}

/// Why a connection is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The Service is bound to a waypoint that has no running pod (or is unknown).
    WaypointUnavailable {
        service: ObjectRef,
        waypoint: ObjectRef,
    },
    /// The Service has no ready endpoint on that port.
    NoEndpoints { service: ObjectRef, port: u16 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::WaypointUnavailable { service, waypoint } => write!(
                f,
                "Service {service} must pass waypoint {waypoint}, which has no running pod"
            ),
            Refusal::NoEndpoints { service, port } => {
                write!(f, "Service {service} port {port} has no ready endpoint")
            }
        }
    }
}

/// Decides the route of a connection to `dst`. `roll` picks among equal choices (waypoint
/// pods, endpoints) so the caller controls randomness.
pub fn plan(mesh: &MeshConfig, dst: SocketAddr, roll: u64) -> Plan {
    if let Some((service, port)) = mesh.service_by_vip(dst.ip(), dst.port()) {
        if let Some(waypoint_ref) = &service.waypoint {
            let Some(waypoint) = mesh
                .waypoint(waypoint_ref)
                .filter(|w| !w.addresses.is_empty())
            else {
                return Plan::Refuse(Refusal::WaypointUnavailable {
                    service: service.service.clone(),
                    waypoint: waypoint_ref.clone(),
                });
            };
            let Ok(peer_id) = SpiffeId::new(
                mesh.trust_domain.as_str(),
                waypoint.gateway.namespace.as_str(),
                waypoint.service_account.as_str(),
            ) else {
                return Plan::Refuse(Refusal::WaypointUnavailable {
                    service: service.service.clone(),
                    waypoint: waypoint_ref.clone(),
                });
            };
            let ip = pick(&waypoint.addresses, roll);
            return Plan::Tunnel {
                peer: SocketAddr::new(ip, HBONE_PORT),
                peer_id,
                // The VIP: the waypoint picks the Service (and its routes) from it.
                target: dst,
            };
        }
        let endpoints = mesh
            .clusters
            .get(&port.cluster)
            .map(|c| c.endpoints.as_slice())
            .unwrap_or_default();
        if endpoints.is_empty() {
            return Plan::Refuse(Refusal::NoEndpoints {
                service: service.service.clone(),
                port: dst.port(),
            });
        }
        return to_address(mesh, pick(endpoints, roll));
    }
    to_address(mesh, dst)
}

/// A connection to a pod (or any other address): HBONE when the pod is meshed.
fn to_address(mesh: &MeshConfig, dst: SocketAddr) -> Plan {
    let peer_id = mesh
        .workload(dst.ip())
        .filter(|w| w.captured)
        .and_then(|w| workload_identity(mesh, w));
    match peer_id {
        Some(peer_id) => Plan::Tunnel {
            peer: SocketAddr::new(dst.ip(), HBONE_PORT),
            peer_id,
            target: dst,
        },
        None => Plan::Passthrough(dst),
    }
}

fn pick<T: Copy>(items: &[T], roll: u64) -> T {
    // Callers check non-emptiness; modulo keeps this total.
    items[(roll % items.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use strait_config::mesh::{
        CaptureExclusions, MeshProtocol, MeshService, MeshServicePort, MtlsMode, WaypointConfig,
        Workload,
    };
    use strait_config::{AppProtocol, Cluster, ClusterKey};

    fn obj(ns: &str, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn workload(name: &str, ip: &str, captured: bool) -> Workload {
        Workload {
            pod: obj("shop", name),
            ip: ip.parse().unwrap(),
            service_account: format!("{name}-sa"),
            node: None,
            netns: None,
            captured,
            mtls: MtlsMode::Permissive,
            capture: CaptureExclusions::default(),
        }
    }

    fn mesh(waypoint: Option<Vec<&str>>) -> MeshConfig {
        let key = ClusterKey {
            namespace: "shop".into(),
            name: "cart".into(),
            port: 80,
        };
        let mut clusters = BTreeMap::new();
        clusters.insert(
            key.clone(),
            Cluster {
                protocol: AppProtocol::Http1,
                endpoints: vec!["198.18.0.11:8080".parse().unwrap()],
                tls: None,
            },
        );
        let mut workloads = vec![
            workload("cart", "198.18.0.11", true),
            workload("legacy", "198.18.0.12", false),
        ];
        workloads.sort_by_key(|w| w.ip);
        MeshConfig {
            version: 1,
            trust_domain: "cluster.local".into(),
            workloads,
            services: vec![MeshService {
                service: obj("shop", "cart"),
                vips: vec!["198.19.0.10".parse().unwrap()],
                ports: vec![MeshServicePort {
                    port: 80,
                    protocol: MeshProtocol::Http1,
                    cluster: key,
                }],
                waypoint: waypoint.as_ref().map(|_| obj("shop", "waypoint")),
            }],
            waypoints: waypoint
                .map(|addresses| {
                    vec![WaypointConfig {
                        gateway: obj("shop", "waypoint"),
                        service_account: "waypoint".into(),
                        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
                        services: vec![],
                    }]
                })
                .unwrap_or_default(),
            clusters,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn service_with_waypoint_tunnels_to_the_waypoint_with_the_vip() {
        let m = mesh(Some(vec!["198.18.0.50"]));
        assert_eq!(
            plan(&m, addr("198.19.0.10:80"), 7),
            Plan::Tunnel {
                peer: addr("198.18.0.50:15008"),
                peer_id: SpiffeId::new("cluster.local", "shop", "waypoint").unwrap(),
                target: addr("198.19.0.10:80"),
            }
        );
    }

    #[test]
    fn consecutive_rolls_choose_different_waypoint_replicas() {
        let m = mesh(Some(vec!["198.18.0.50", "198.18.0.51"]));
        let peer = |roll| match plan(&m, addr("198.19.0.10:80"), roll) {
            Plan::Tunnel { peer, .. } => peer,
            other => panic!("{other:?}"),
        };
        assert_ne!(peer(40), peer(41), "a retry reaches the other replica");
    }

    #[test]
    fn waypoint_without_pods_fails_closed() {
        let m = mesh(Some(vec![]));
        assert!(matches!(
            plan(&m, addr("198.19.0.10:80"), 0),
            Plan::Refuse(Refusal::WaypointUnavailable { .. })
        ));
    }

    #[test]
    fn service_without_waypoint_goes_to_an_endpoint_over_hbone() {
        let m = mesh(None);
        assert_eq!(
            plan(&m, addr("198.19.0.10:80"), 3),
            Plan::Tunnel {
                peer: addr("198.18.0.11:15008"),
                peer_id: SpiffeId::new("cluster.local", "shop", "cart-sa").unwrap(),
                target: addr("198.18.0.11:8080"),
            }
        );
    }

    #[test]
    fn unknown_port_of_a_vip_and_unmeshed_pods_pass_through() {
        let m = mesh(None);
        assert_eq!(
            plan(&m, addr("198.19.0.10:81"), 0),
            Plan::Passthrough(addr("198.19.0.10:81"))
        );
        assert_eq!(
            plan(&m, addr("198.18.0.12:8080"), 0),
            Plan::Passthrough(addr("198.18.0.12:8080"))
        );
    }

    #[test]
    fn service_without_endpoints_is_refused() {
        let mut m = mesh(None);
        m.clusters.values_mut().for_each(|c| c.endpoints.clear());
        assert!(matches!(
            plan(&m, addr("198.19.0.10:80"), 0),
            Plan::Refuse(Refusal::NoEndpoints { .. })
        ));
    }
}

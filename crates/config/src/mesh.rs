//! The mesh half of the compiled configuration: what node proxies and waypoints need.
//!
//! Like ztunnel's workload/service model: proxies learn *workloads* (enrolled pods, with the
//! identity they run as) and *services* (VIPs, ports, endpoints, and the waypoint they must go
//! through). Waypoints additionally get, per Service port, the route tables that apply to it:
//! one for producer routes (in the Service's namespace) and one per consumer namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Cluster, ClusterKey, ObjectRef, PortConfig};

/// Namespace label that enrolls a namespace's pods in the mesh (`enabled`).
pub const MESH_LABEL: &str = "strait.dev/mesh";
/// Namespace label: `strict` refuses plaintext inbound traffic to the namespace's pods.
pub const MTLS_LABEL: &str = "strait.dev/mtls";
/// Namespace label naming the waypoint Gateway of the namespace (`none` opts out).
pub const WAYPOINT_LABEL: &str = "strait.dev/waypoint";
/// The waypoint name used when the namespace does not name one.
pub const DEFAULT_WAYPOINT: &str = "waypoint";
/// Pod label carried by the pods of a (waypoint) Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Pod annotation (standalone and tests only): the named network namespace the pod lives in,
/// which is where the node proxy binds the pod's capture ports. In a cluster the node proxy
/// finds the namespace itself, by the pod's IP among the runtime's namespace files.
pub const NETNS_ANNOTATION: &str = "strait.dev/netns";
/// Pod annotation: comma-separated outbound TCP ports never captured.
pub const EXCLUDE_OUTBOUND_PORTS_ANNOTATION: &str = "strait.dev/exclude-outbound-ports";
/// Pod annotation: comma-separated outbound CIDRs never captured.
pub const EXCLUDE_OUTBOUND_CIDRS_ANNOTATION: &str = "strait.dev/exclude-outbound-cidrs";
/// Pod annotation: comma-separated inbound TCP ports never captured.
pub const EXCLUDE_INBOUND_PORTS_ANNOTATION: &str = "strait.dev/exclude-inbound-ports";
/// The trust domain of SPIFFE identities.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Everything the mesh data plane serves, versioned as a whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshConfig {
    /// Monotonic version, bumped by the producer on every change.
    pub version: u64,
    /// SPIFFE trust domain (`cluster.local`).
    pub trust_domain: String,
    /// Pods of enrolled namespaces and waypoint pods, sorted by IP.
    pub workloads: Vec<Workload>,
    /// Every Service of an enrolled namespace, and every Service a mesh route sends to.
    pub services: Vec<MeshService>,
    /// The waypoints that at least one Service is bound to.
    pub waypoints: Vec<WaypointConfig>,
    /// Endpoints of every Service port above, by key (pod IP : target port).
    #[serde(with = "crate::cluster_map")]
    pub clusters: BTreeMap<ClusterKey, Cluster>,
}

/// One pod as the mesh sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub pod: ObjectRef,
    pub ip: IpAddr,
    /// `spec.serviceAccountName` (`default` when unset): with the namespace, its SPIFFE identity.
    pub service_account: String,
    /// `spec.nodeName`: the node proxy of that node serves the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The named network namespace ([`NETNS_ANNOTATION`]), standalone only; in a cluster the
    /// node proxy discovers it by [`Workload::ip`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// True for pods of enrolled namespaces: the node proxy captures their traffic and peers
    /// reach them over HBONE. False for waypoint pods (they speak HBONE themselves, uncaptured).
    pub captured: bool,
    pub mtls: MtlsMode,
    /// Capture exclusions from the pod's annotations.
    #[serde(default, skip_serializing_if = "crate::is_default")]
    pub capture: CaptureExclusions,
}

/// Whether a pod accepts plaintext inbound connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsMode {
    /// Plaintext inbound (from outside the mesh) is accepted on the inbound capture port.
    #[default]
    Permissive,
    /// Only HBONE (mutual TLS) inbound; plaintext connections are refused.
    Strict,
}

/// What the capture rules leave alone for one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureExclusions {
    pub outbound_ports: Vec<u16>,
    /// CIDRs as written (`10.0.0.0/8`), validated by compile.
    pub outbound_cidrs: Vec<String>,
    pub inbound_ports: Vec<u16>,
}

/// A Service as the mesh sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeshService {
    pub service: ObjectRef,
    /// `spec.clusterIPs` (none for headless Services).
    pub vips: Vec<IpAddr>,
    pub ports: Vec<MeshServicePort>,
    /// The waypoint every connection to this Service must pass. `Some` with an absent or empty
    /// waypoint means connections are refused (fail closed), never sent around it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<ObjectRef>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeshServicePort {
    pub port: u16,
    pub protocol: MeshProtocol,
    /// The Service's own endpoints for this port.
    pub cluster: ClusterKey,
}

/// What a Service port speaks (`appProtocol`, else the port name prefix, else TCP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MeshProtocol {
    Http1,
    H2c,
    Grpc,
    WebSocket,
    #[default]
    Tcp,
}

impl MeshProtocol {
    /// Whether a waypoint parses this port's traffic as HTTP.
    pub fn is_http(self) -> bool {
        !matches!(self, MeshProtocol::Tcp)
    }
}

/// One waypoint (a Gateway of class `strait-waypoint`, by default `<namespace>/waypoint`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaypointConfig {
    pub gateway: ObjectRef,
    /// The service account its pods run as (its HBONE identity).
    pub service_account: String,
    /// IPs of its running pods; empty = down (traffic to its Services is refused).
    pub addresses: Vec<IpAddr>,
    /// The Services bound to it, with their route tables.
    pub services: Vec<WaypointService>,
}

/// A Service behind a waypoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaypointService {
    pub service: ObjectRef,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<WaypointPort>,
}

/// The routes of one Service port, as the waypoint applies them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaypointPort {
    pub port: u16,
    pub protocol: MeshProtocol,
    /// The Service's own endpoints: used when no route applies to the caller.
    pub cluster: ClusterKey,
    /// Producer routes (the Service's namespace), for callers without consumer routes. A
    /// one-listener [`PortConfig`] so the ingress route engine runs it unchanged; route
    /// hostnames are ignored for mesh parents (the Service is the destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<PortConfig>,
    /// Consumer routes by the caller's namespace (read from its peer certificate). For a
    /// caller in such a namespace they replace the producer routes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers: BTreeMap<String, PortConfig>,
}

impl WaypointPort {
    /// The routes that apply to a caller from `caller_namespace`; `None` = no route attached,
    /// send to the Service's endpoints.
    pub fn routes_for(&self, caller_namespace: Option<&str>) -> Option<&PortConfig> {
        caller_namespace
            .and_then(|ns| self.consumers.get(ns))
            .or(self.producer.as_ref())
    }
}

impl MeshConfig {
    /// The Service a VIP belongs to, with the port.
    pub fn service_by_vip(
        &self,
        ip: IpAddr,
        port: u16,
    ) -> Option<(&MeshService, &MeshServicePort)> {
        self.services.iter().find_map(|s| {
            if !s.vips.contains(&ip) {
                return None;
            }
            s.ports.iter().find(|p| p.port == port).map(|p| (s, p))
        })
    }

    /// The workload with this IP.
    pub fn workload(&self, ip: IpAddr) -> Option<&Workload> {
        self.workloads
            .binary_search_by(|w| w.ip.cmp(&ip))
            .ok()
            .and_then(|i| self.workloads.get(i))
    }

    /// A waypoint by Gateway.
    pub fn waypoint(&self, gateway: &ObjectRef) -> Option<&WaypointConfig> {
        self.waypoints.iter().find(|w| &w.gateway == gateway)
    }
}

//! Services as the mesh sees them: VIPs, TCP ports with their protocol, and each port's
//! endpoints (the same endpoints ingress backends resolve to).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use strait_config::mesh::{GATEWAY_NAME_LABEL, MeshProtocol};
use strait_config::{Cluster, ClusterKey, ObjectRef};

use super::protocol;
use crate::backends;
use crate::context::{Context, name, ns};

/// One TCP port of a Service.
pub(crate) struct Port<'a> {
    pub port: u16,
    pub name: Option<&'a str>,
    pub protocol: MeshProtocol,
    pub spec: &'a ServicePort,
}

impl Port<'_> {
    /// The listener name of the port in waypoint route tables: its name, else its number.
    pub(crate) fn listener_name(&self) -> String {
        match self.name {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => self.port.to_string(),
        }
    }
}

/// `namespace/name` of a Service.
pub(crate) fn service_ref(service: &Service) -> ObjectRef {
    ObjectRef {
        namespace: ns(&service.metadata).into(),
        name: name(&service.metadata).into(),
    }
}

/// The TCP ports of a Service in spec order. UDP and SCTP ports are left out: the node proxy
/// captures TCP only.
pub(crate) fn ports(service: &Service) -> Vec<Port<'_>> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some(Port {
                port: u16::try_from(p.port).ok().filter(|&n| n != 0)?,
                name: p.name.as_deref(),
                protocol: protocol::detect(p.app_protocol.as_deref(), p.name.as_deref()),
                spec: p,
            })
        })
        .collect()
}

/// `spec.clusterIPs` (else `spec.clusterIP`), without `None` (headless) and unparsable values.
pub(crate) fn vips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let written: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in written.into_iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// Whether the Service fronts a Gateway's own pods (labelled, or selecting by
/// [`GATEWAY_NAME_LABEL`]): a waypoint's Service must never be sent through a waypoint.
pub(crate) fn is_gateway_service(service: &Service) -> bool {
    let labelled = service
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(GATEWAY_NAME_LABEL));
    let selects = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| s.contains_key(GATEWAY_NAME_LABEL));
    labelled || selects
}

/// The cluster key of a Service port.
pub(crate) fn cluster_key(service: &ObjectRef, port: u16) -> ClusterKey {
    ClusterKey {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        port,
    }
}

/// The endpoints of one Service port, spoken to as the port's protocol says.
pub(crate) fn cluster(ctx: &Context<'_>, service: &ObjectRef, port: &Port<'_>) -> Cluster {
    Cluster {
        protocol: protocol::cluster_protocol(port.protocol),
        endpoints: backends::endpoints(ctx, &service.namespace, &service.name, port.spec),
        tls: None,
    }
}

//! backendRef resolution to Service ports and their ready endpoints.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::ServicePort;
use strait_config::{AppProtocol, Cluster, ClusterKey};

use crate::context::Context;
use crate::reference_grants::{self, From, To};
use crate::tls::RefFailure;

/// A backendRef independent of the generated type (rule, filter or mirror) it came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct BackendRefSpec {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i32>,
}

/// A Service port a backendRef resolved to: what its cluster is made from, once a route that
/// sends to it is accepted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServiceBackend<'a> {
    protocol: AppProtocol,
    port: &'a ServicePort,
}

impl ServiceBackend<'_> {
    /// The cluster of `key`, the key this backend resolved with.
    pub(crate) fn cluster(&self, ctx: &Context<'_>, key: &ClusterKey) -> Cluster {
        Cluster {
            protocol: self.protocol,
            endpoints: endpoints(ctx, &key.namespace, &key.name, self.port),
            tls: None,
        }
    }
}

/// Resolves a backendRef of a route (`route_kind` in `route_ns`) to a Service port. A
/// backendRef to another namespace needs a ReferenceGrant when `grants_required` (Gateway
/// parents); mesh parents do not (GEP-1426: mesh routes augment Services their callers can
/// already reach).
pub(crate) fn resolve<'a>(
    ctx: &Context<'a>,
    route_kind: &str,
    route_ns: &str,
    r: &BackendRefSpec,
    grants_required: bool,
) -> Result<(ClusterKey, ServiceBackend<'a>), RefFailure> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    let namespace = r.namespace.as_deref().unwrap_or(route_ns);
    // Formatted only into an error: most references resolve.
    let what = format_args!("Service {namespace}/{}", r.name);
    if !group.is_empty() || kind != "Service" {
        return Err(RefFailure {
            reason: "InvalidKind",
            message: format!(
                "backendRef {group}/{kind} {} is not a supported kind",
                r.name
            ),
        });
    }
    if grants_required
        && !reference_grants::permitted(
            ctx.snapshot,
            &From {
                group: crate::listeners::GATEWAY_GROUP,
                kind: route_kind,
                namespace: route_ns,
            },
            &To {
                group: "",
                kind: "Service",
                namespace,
                name: &r.name,
            },
        )
    {
        return Err(RefFailure {
            reason: "RefNotPermitted",
            message: format!("backendRef to {what} is not permitted by any ReferenceGrant"),
        });
    }
    let Some(service) = ctx.service(namespace, &r.name) else {
        return Err(RefFailure {
            reason: "BackendNotFound",
            message: format!("backendRef {what} not found"),
        });
    };
    let Some(port) = r.port else {
        return Err(RefFailure {
            reason: "BackendNotFound",
            message: format!("backendRef {what} has no port"),
        });
    };
    let service_port = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.port == port));
    let Some(service_port) = service_port else {
        return Err(RefFailure {
            reason: "BackendNotFound",
            message: format!("backendRef {what} has no port {port}"),
        });
    };
    let key = ClusterKey {
        namespace: namespace.to_string(),
        name: r.name.clone(),
        port: u16::try_from(port).unwrap_or(0),
    };
    let protocol = match service_port.app_protocol.as_deref() {
        Some("kubernetes.io/h2c") => AppProtocol::H2c,
        Some("kubernetes.io/ws") => AppProtocol::WebSocket,
        _ => AppProtocol::Http1,
    };
    Ok((
        key,
        ServiceBackend {
            protocol,
            port: service_port,
        },
    ))
}

/// The ready endpoints of one Service port: every ready address of the Service's EndpointSlices
/// with the slice port of the same name (the resolved target port), sorted and deduplicated.
/// Shared by ingress backends and mesh Services so both see the same endpoints.
pub(crate) fn endpoints(
    ctx: &Context<'_>,
    namespace: &str,
    service: &str,
    service_port: &ServicePort,
) -> Vec<SocketAddr> {
    let port_name = service_port.name.as_deref().unwrap_or("");
    let mut endpoints = Vec::new();
    for slice in ctx.slices(namespace, service) {
        let Some(slice_port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    endpoints.push(SocketAddr::new(ip, slice_port));
                }
            }
        }
    }
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

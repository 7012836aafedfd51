//! Pods as the mesh sees them: enrolled pods (captured) and waypoint pods (uncaptured).

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use strait_config::ObjectRef;
use strait_config::mesh::{GATEWAY_NAME_LABEL, NETNS_ANNOTATION, Workload};
use strait_model::Snapshot;

use super::capture;
use super::namespaces::MeshNamespaces;
use crate::context::{name, ns};

/// The service account a pod runs as when `spec.serviceAccountName` is unset.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Every workload, sorted by IP (one entry per pod IP; a dual-stack pod has two). Enrolled pods
/// are captured; pods of a waypoint in `waypoints` are listed uncaptured. A pod that carries its
/// namespace's waypoint label is never captured, even while that waypoint is unused, since
/// capturing a waypoint would loop its HBONE traffic back through the node proxy. Pods on the
/// host network share the node's address and are left alone.
pub(crate) fn workloads(
    snapshot: &Snapshot,
    namespaces: &MeshNamespaces,
    waypoints: &BTreeSet<ObjectRef>,
) -> Vec<Workload> {
    let mut out = Vec::new();
    for pod in &snapshot.pods {
        if finished(pod) || host_network(pod) {
            continue;
        }
        let namespace = ns(&pod.metadata);
        let Some(mesh_ns) = namespaces.enrolled(namespace) else {
            continue;
        };
        let gateway = gateway_name(pod);
        let captured = match gateway {
            Some(g) if mesh_ns.waypoint_name() == Some(g) => {
                let waypoint = ObjectRef {
                    namespace: namespace.into(),
                    name: g.into(),
                };
                if !waypoints.contains(&waypoint) {
                    continue;
                }
                false
            }
            _ => true,
        };
        let spec = pod.spec.as_ref();
        for ip in pod_ips(pod) {
            out.push(Workload {
                pod: ObjectRef {
                    namespace: namespace.into(),
                    name: name(&pod.metadata).into(),
                },
                ip,
                service_account: spec
                    .and_then(|s| s.service_account_name.as_deref())
                    .filter(|s| !s.is_empty())
                    .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
                    .into(),
                node: spec.and_then(|s| s.node_name.clone()),
                netns: pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(NETNS_ANNOTATION))
                    .filter(|n| !n.is_empty())
                    .cloned(),
                captured,
                mtls: mesh_ns.mtls,
                capture: capture::exclusions(pod.metadata.annotations.as_ref()),
            });
        }
    }
    // Two pods never share an IP in a healthy cluster; if a stale object says otherwise, keep
    // one deterministically so lookups by IP stay unambiguous.
    out.sort_by(|a, b| (a.ip, &a.pod).cmp(&(b.ip, &b.pod)));
    out.dedup_by_key(|w| w.ip);
    out
}

/// The addresses of a waypoint: IPs of its namespace's running pods labelled with its name.
/// Empty means the waypoint is down.
pub(crate) fn waypoint_addresses(snapshot: &Snapshot, waypoint: &ObjectRef) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = snapshot
        .pods
        .iter()
        .filter(|p| {
            ns(&p.metadata) == waypoint.namespace
                && gateway_name(p) == Some(waypoint.name.as_str())
                && running(p)
        })
        .flat_map(|pod| pod_ips(pod))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The Gateway a pod belongs to ([`GATEWAY_NAME_LABEL`]).
fn gateway_name(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(GATEWAY_NAME_LABEL)
        .map(String::as_str)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// Succeeded and Failed pods keep their IP in the API but no longer own it.
fn finished(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

fn host_network(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
}

/// Running, not terminating, and not reported unready. A missing phase counts as running: the
/// API server always sets one, so only hand-written (standalone) files lack it.
fn running(pod: &Pod) -> bool {
    let unready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "False"));
    matches!(phase(pod), None | Some("Running"))
        && pod.metadata.deletion_timestamp.is_none()
        && !unready
}

/// `status.podIP` and any further `status.podIPs`, parsed, in that order, without repeats.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = Vec::new();
    let all = status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().flatten().map(|p| &p.ip));
    for ip in all.filter_map(|s| s.parse::<IpAddr>().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

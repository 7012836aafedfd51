//! What the controller keeps of each object it caches.
//!
//! Every object the API server sends carries `metadata.managedFields` (which manager set which
//! field), and an object applied with client-side `kubectl apply` carries a second, complete
//! copy of itself in the `kubectl.kubernetes.io/last-applied-configuration` annotation. Neither
//! is read by compile, the status writer or the CA, yet together they are often most of an
//! object's bytes, and the reflectors hold every object of every kind compile reads for the
//! process's life (and each snapshot a copy of them). So each object is pruned as it arrives, before the
//! reflector stores it.
//!
//! Pods are pruned much further: the controller caches every Pod of the cluster, and of one it
//! reads only who and where it is (name, namespace, uid, labels, its own `strait.dev/`
//! annotations, service account, node, host network, deletion), its phase, IPs and Ready
//! condition. Containers, volumes, tolerations and container statuses are dropped.

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus};
use kube::Resource;
use kube::api::ObjectMeta;

/// The annotation `kubectl apply` (client-side) keeps the whole applied object in.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The prefix of every annotation of ours a Pod can carry (the netns and the capture
/// exclusions); a Pod keeps only annotations under it.
pub const OWN_ANNOTATION_PREFIX: &str = "strait.dev/";

/// Drops what no reader of any cached kind uses: the managed fields and the last-applied copy.
pub fn metadata<K: Resource>(object: &mut K) {
    strip_metadata(object.meta_mut());
}

fn strip_metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// Keeps of a Pod what compile (mesh workloads, waypoint addresses) and the CA (which node
/// proxy may obtain whose certificate) read of it.
pub fn pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    strip_metadata(meta);
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|key, _| key.starts_with(OWN_ANNOTATION_PREFIX));
    }
    meta.owner_references = None;
    meta.finalizers = None;
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        service_account_name: spec.service_account_name,
        node_name: spec.node_name,
        host_network: spec.host_network,
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        conditions: status.conditions.map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.type_ == "Ready")
                .map(|c| PodCondition {
                    type_: c.type_,
                    status: c.status,
                    ..PodCondition::default()
                })
                .collect()
        }),
        ..PodStatus::default()
    });
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use k8s_openapi::api::core::v1::Pod;
    use serde_json::{Value, json};
    use strait_model::types::HttpRoute;

    use super::*;

    /// A Deployment's pod as a kube-apiserver lists it (managed fields of three managers,
    /// containers, volumes, container statuses).
    const POD: &str = include_str!("../testdata/pod.json");
    /// An HTTPRoute applied with client-side `kubectl apply`, its status written.
    const HTTP_ROUTE: &str = include_str!("../testdata/httproute.json");

    /// The enrolled namespace, its waypoint and the Service bound to it.
    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {strait.dev/mesh: enabled, strait.dev/waypoint: waypoint}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app.kubernetes.io/name: cart}
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

    /// The fixture pod renamed, readdressed and then changed by `edit`.
    fn pod_like(name: &str, ip: &str, edit: impl FnOnce(&mut Value)) -> Pod {
        let mut value: Value = serde_json::from_str(POD).unwrap();
        value["metadata"]["name"] = json!(name);
        value["status"]["podIP"] = json!(ip);
        value["status"]["podIPs"] = json!([{"ip": ip}]);
        edit(&mut value);
        serde_json::from_value(value).unwrap()
    }

    fn waypoint_pod(name: &str, ip: &str, ready: &str) -> Pod {
        pod_like(name, ip, |pod| {
            pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] = json!("waypoint");
            pod["spec"]["serviceAccountName"] = json!("waypoint");
            for condition in pod["status"]["conditions"].as_array_mut().unwrap() {
                condition["status"] = json!(ready);
            }
        })
    }

    fn pods() -> Vec<Pod> {
        vec![
            pod_like("cart-a", "198.18.3.17", |_| {}),
            pod_like("cart-done", "198.18.3.18", |pod| {
                pod["status"]["phase"] = json!("Succeeded")
            }),
            pod_like("cart-host", "198.18.3.19", |pod| {
                pod["spec"]["hostNetwork"] = json!(true)
            }),
            pod_like("cart-leaving", "198.18.3.20", |pod| {
                pod["metadata"]["deletionTimestamp"] = json!("2026-11-30T10:00:00Z")
            }),
            waypoint_pod("waypoint-a", "198.18.4.1", "True"),
            waypoint_pod("waypoint-b", "198.18.4.2", "False"),
        ]
    }

    fn compile_with(pods: Vec<Pod>) -> strait_config::mesh::MeshConfig {
        let report = strait_model::load_str(CLUSTER, Path::new("cluster.yaml"));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let mut snapshot = report.snapshot;
        snapshot.pods = pods.into_iter().map(Into::into).collect();
        crate::compile_snapshot(&snapshot, strait_compile::CONTROLLER_NAME).mesh
    }

    #[test]
    fn pruned_pods_compile_to_the_same_mesh() {
        let full = compile_with(pods());
        let pruned = compile_with(
            pods()
                .into_iter()
                .map(|mut p| {
                    pod(&mut p);
                    p
                })
                .collect(),
        );
        assert_eq!(pruned, full);
        // What the pruning must keep is what made these differ.
        let cart = full
            .workloads
            .iter()
            .find(|w| w.pod.name == "cart-a")
            .expect("the running pod is a workload");
        assert_eq!(cart.service_account, "cart");
        assert_eq!(cart.node.as_deref(), Some("worker-3"));
        assert!(cart.netns.as_deref().is_some_and(|n| n.contains("cni-")));
        assert_eq!(cart.capture.outbound_ports, [5432]);
        let names: Vec<&str> = full.workloads.iter().map(|w| &*w.pod.name).collect();
        assert!(!names.contains(&"cart-done") && !names.contains(&"cart-host"));
        let waypoint = full.waypoints.first().expect("the namespace's waypoint");
        assert_eq!(
            waypoint.addresses,
            ["198.18.4.1".parse::<std::net::IpAddr>().unwrap()],
            "only the ready waypoint pod serves"
        );
    }

    #[test]
    fn a_pruned_pod_keeps_identity_placement_and_state_only() {
        let mut p = pod_like("cart-a", "198.18.3.17", |_| {});
        pod(&mut p);
        let meta = &p.metadata;
        assert_eq!(
            meta.uid.as_deref(),
            Some("5e3f0a7c-2d94-4b8e-b1c6-93a0f4d2e817")
        );
        assert_eq!(meta.resource_version.as_deref(), Some("48211973"));
        assert!(meta.managed_fields.is_none() && meta.owner_references.is_none());
        let annotations: Vec<&str> = meta
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| &**k)
            .collect();
        assert_eq!(
            annotations,
            ["strait.dev/exclude-outbound-ports", "strait.dev/netns"]
        );
        assert_eq!(meta.labels.as_ref().map(|l| l.len()), Some(3));
        let spec = p.spec.as_ref().unwrap();
        assert!(spec.containers.is_empty() && spec.volumes.is_none() && spec.tolerations.is_none());
        assert_eq!(spec.service_account_name.as_deref(), Some("cart"));
        assert_eq!(spec.node_name.as_deref(), Some("worker-3"));
        let status = p.status.as_ref().unwrap();
        assert!(status.container_statuses.is_none() && status.host_ip.is_none());
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let conditions = status.conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(
            (&*conditions[0].type_, &*conditions[0].status),
            ("Ready", "True")
        );
        let bytes = |p: &Pod| serde_json::to_vec(p).unwrap().len();
        let full = pod_like("cart-a", "198.18.3.17", |_| {});
        assert!(
            bytes(&p) * 8 < bytes(&full),
            "pruned {} bytes of {}",
            bytes(&p),
            bytes(&full)
        );
    }

    #[test]
    fn every_object_loses_its_managed_fields_and_last_applied_copy_only() {
        let mut route: HttpRoute = serde_json::from_str(HTTP_ROUTE).unwrap();
        metadata(&mut route);
        let value = serde_json::to_value(&route).unwrap();
        assert!(value["metadata"].get("managedFields").is_none());
        assert_eq!(value["metadata"]["annotations"], json!({}));
        let original: Value = serde_json::from_str(HTTP_ROUTE).unwrap();
        for part in ["spec", "status"] {
            assert_eq!(value[part], original[part], "{part} is kept whole");
        }
        for field in ["name", "namespace", "uid", "resourceVersion", "generation"] {
            assert_eq!(value["metadata"][field], original["metadata"][field]);
        }
    }

    #[test]
    fn our_annotations_share_the_prefix_a_pod_keeps() {
        use strait_config::mesh::*;
        for key in [
            NETNS_ANNOTATION,
            EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
            EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
            EXCLUDE_INBOUND_PORTS_ANNOTATION,
        ] {
            assert!(key.starts_with(OWN_ANNOTATION_PREFIX), "{key}");
        }
    }
}

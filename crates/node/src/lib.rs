//! The node proxy: one process serving every enrolled pod of its node, from inside each pod's
//! network namespace (as ztunnel's in-pod mode does).
//!
//! For each local pod it opens a handle on the pod's namespace, binds the capture ports there
//! (15001 outbound, 15006 plaintext inbound, 15008 HBONE) and installs the capture rules
//! ([`strait_capture`]). Connections are then handled by this process with the pod's own
//! addresses and the pod's SPIFFE identity; its own sockets carry the proxy mark so the rules
//! let them through. Restarting the process re-binds and re-applies the rules idempotently, so
//! it converges on whatever a crash left behind.

mod orig_dst;
mod plan;
mod pod;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use strait_config::ObjectRef;
use strait_config::mesh::{MeshConfig, Workload};
use strait_identity::Certificates;
use strait_proxy::mesh::MeshView;
use tokio::sync::Mutex;

pub use orig_dst::original_dst;
pub use plan::{Plan, Refusal, plan};

use crate::pod::PodProxy;

/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Plaintext inbound capture port.
pub const INBOUND_PORT: u16 = 15006;

/// How the node proxy runs.
#[derive(Clone)]
pub struct NodeOptions {
    /// Serve pods whose `spec.nodeName` is this; `None` serves every pod with a known netns.
    pub node_name: Option<String>,
    pub certs: Arc<Certificates>,
    /// Sources whose inbound connections are never captured (kubelet health probes).
    pub probe_sources: Vec<String>,
    /// Install and remove the capture rules (off only for tests of the proxy alone).
    pub manage_rules: bool,
}

/// Why a pod could not be served. Each names the pod.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("pod {pod}: network namespace: {source}")]
    Netns {
        pod: ObjectRef,
        #[source]
        source: Box<strait_netns::NetNsError>,
    },
    #[error("pod {pod}: capture rules: {source}")]
    Capture {
        pod: ObjectRef,
        #[source]
        source: Box<strait_capture::CaptureError>,
    },
    #[error("pod {pod}: service account {service_account:?} cannot form a SPIFFE identity")]
    Identity {
        pod: ObjectRef,
        service_account: String,
    },
    #[error("pod {pod}: capture rules: worker failed")]
    CaptureWorker { pod: ObjectRef },
}

/// The node proxy.
pub struct NodeProxy {
    options: NodeOptions,
    view: MeshView,
    pods: Mutex<HashMap<ObjectRef, PodProxy>>,
}

impl NodeProxy {
    pub fn new(options: NodeOptions) -> NodeProxy {
        NodeProxy {
            options,
            view: Arc::new(ArcSwap::from_pointee(MeshConfig::default())),
            pods: Mutex::new(HashMap::new()),
        }
    }

    /// Applies a mesh config: starts serving pods that became local, stops serving pods that
    /// left (removing their rules), and swaps the config every connection consults. A pod that
    /// fails to start is reported and retried on the next apply.
    pub async fn apply(&self, mesh: Arc<MeshConfig>) -> Vec<NodeError> {
        self.view.store(mesh.clone());
        let desired: HashMap<ObjectRef, &Workload> = mesh
            .workloads
            .iter()
            .filter(|w| w.captured && w.netns.is_some() && self.is_local(w))
            .map(|w| (w.pod.clone(), w))
            .collect();
        let mut pods = self.pods.lock().await;
        let mut errors = Vec::new();
        let gone: Vec<ObjectRef> = pods
            .iter()
            .filter(|(key, pod)| desired.get(*key).is_none_or(|w| !pod.serves(w)))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(pod) = pods.remove(&key) {
                pod.stop(self.options.manage_rules).await;
            }
        }
        for (key, workload) in desired {
            if let Some(pod) = pods.get(&key) {
                pod.update(workload.clone(), self.options.manage_rules);
                continue;
            }
            match PodProxy::start(workload.clone(), &self.options, self.view.clone()).await {
                Ok(pod) => {
                    pods.insert(key, pod);
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// The pods currently served.
    pub async fn pods(&self) -> Vec<ObjectRef> {
        let mut pods: Vec<_> = self.pods.lock().await.keys().cloned().collect();
        pods.sort();
        pods
    }

    /// Stops serving every pod. `remove_rules` also uninstalls the capture rules (a node
    /// proxy that is merely restarting leaves them, so pods fail closed meanwhile).
    pub async fn shutdown(&self, remove_rules: bool) {
        let mut pods = self.pods.lock().await;
        for (_, pod) in pods.drain() {
            pod.stop(remove_rules && self.options.manage_rules).await;
        }
    }

    fn is_local(&self, workload: &Workload) -> bool {
        match &self.options.node_name {
            None => true,
            Some(node) => workload.node.as_deref() == Some(node.as_str()),
        }
    }
}

//! The node proxy: one process serving every enrolled pod of its node, from inside each pod's
//! network namespace (as ztunnel's in-pod mode does).
//!
//! For each local pod it opens a handle on the pod's namespace, binds the capture ports there
//! (15001 outbound, 15006 plaintext inbound, 15008 HBONE) and installs the capture rules
//! ([`strait_capture`]). Connections are then handled by this process with the pod's own
//! addresses and the pod's SPIFFE identity; its own sockets carry the proxy mark so the rules
//! let them through. Restarting the process re-binds and re-applies the rules idempotently, so
//! it converges on whatever a crash left behind.
//!
//! In a cluster the config does not name the pods' namespaces: [`discover`] finds each local
//! pod's namespace by its IP among the runtime's namespace files. Pods that cannot be served
//! yet (namespace not found, rules failing) are retried on a timer with backoff until they are
//! served or leave the config, each distinct error logged once. The same timer notices a pod
//! whose sandbox was recreated (its namespace file gone, or its address moved to a new
//! namespace) and serves the new namespace.

pub mod discover;
mod orig_dst;
mod plan;
mod pod;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use strait_config::ObjectRef;
use strait_config::mesh::{MeshConfig, Workload};
use strait_identity::Certificates;
use strait_netns::{FileId, NetNs};
use strait_proxy::mesh::MeshView;
use tokio::sync::Mutex;

pub use discover::{DEFAULT_NETNS_DIR, Discovery, DiscoveryError, Found, Resolution};
pub use orig_dst::original_dst;
pub use plan::{Plan, Refusal, plan};

use crate::pod::{PodProxy, StartError, remove_rules_from};

/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Plaintext inbound capture port.
pub const INBOUND_PORT: u16 = 15006;

/// How often pending pods and served sandboxes are looked at.
const TICK: Duration = Duration::from_millis(500);
/// First retry of a pod that could not be served; doubles per failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How often a served pod's namespace is entered to check it still holds the pod's address
/// (a sandbox recreated with the same IP while the old namespace file lingers).
const LIVENESS_EVERY: Duration = Duration::from_secs(5);

/// How the node proxy runs.
#[derive(Clone)]
pub struct NodeOptions {
    /// Serve pods whose `spec.nodeName` is this; `None` serves every captured pod whose
    /// namespace is named or can be discovered.
    pub node_name: Option<String>,
    pub certs: Arc<Certificates>,
    /// Sources whose inbound connections are never captured (kubelet health probes).
    pub probe_sources: Vec<String>,
    /// Install and remove the capture rules (off only for tests of the proxy alone).
    pub manage_rules: bool,
    /// Find the namespace of local pods the config does not name (`Workload::netns` unset) by
    /// their IP among the namespace files of this directory ([`DEFAULT_NETNS_DIR`] in a
    /// cluster). `None`: only pods with a named namespace are served.
    pub netns_dir: Option<PathBuf>,
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
    #[error(
        "pod {pod}: no network namespace under {} holds its address {ip} yet (retrying)",
        dir.display()
    )]
    NetnsNotFound {
        pod: ObjectRef,
        ip: IpAddr,
        dir: PathBuf,
    },
    #[error("pod {pod}: several network namespaces hold its address {ip}: {} (retrying)", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NetnsAmbiguous {
        pod: ObjectRef,
        ip: IpAddr,
        paths: Vec<PathBuf>,
    },
    #[error("pod {pod}: finding its network namespace: {reason}")]
    Discovery { pod: ObjectRef, reason: String },
}

/// The node proxy.
pub struct NodeProxy {
    inner: Arc<Inner>,
    ticker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    options: NodeOptions,
    view: MeshView,
    state: Mutex<State>,
    discovery: Option<Arc<std::sync::Mutex<Discovery>>>,
}

#[derive(Default)]
struct State {
    /// The last config applied (pending pods are retried against it).
    mesh: Option<Arc<MeshConfig>>,
    pods: HashMap<ObjectRef, Served>,
    pending: HashMap<ObjectRef, Pending>,
    last_liveness: Option<Instant>,
}

struct Served {
    proxy: PodProxy,
    /// Where a discovered namespace was found (`None` for named ones).
    found_at: Option<(PathBuf, FileId)>,
}

/// A pod that should be served but is not (yet).
struct Pending {
    failures: u32,
    next_try: Instant,
    /// The last error reported for it: the same error is not reported again.
    reported: Option<String>,
    /// Capture rules a failed start left in this namespace: removed if the pod leaves.
    rules_in: Option<NetNs>,
}

/// Why a start attempt did not serve the pod.
struct Failure {
    /// `None`: not an error yet (the rescan that could find it was rate limited).
    error: Option<NodeError>,
    rules_in: Option<NetNs>,
}

impl NodeProxy {
    pub fn new(options: NodeOptions) -> NodeProxy {
        let discovery = options
            .netns_dir
            .clone()
            .map(|dir| Arc::new(std::sync::Mutex::new(Discovery::new(dir))));
        NodeProxy {
            inner: Arc::new(Inner {
                options,
                view: Arc::new(ArcSwap::from_pointee(MeshConfig::default())),
                state: Mutex::new(State::default()),
                discovery,
            }),
            ticker: std::sync::Mutex::new(None),
        }
    }

    /// Applies a mesh config: starts serving pods that became local, stops serving pods that
    /// left (removing their rules), and swaps the config every connection consults. Returns
    /// the errors of pods that could not be served, each reported once: such pods are retried
    /// in the background (with backoff) until they are served or leave the config.
    pub async fn apply(&self, mesh: Arc<MeshConfig>) -> Vec<NodeError> {
        self.inner.view.store(mesh.clone());
        let errors = {
            let mut state = self.inner.state.lock().await;
            state.mesh = Some(mesh);
            self.inner.reconcile(&mut state, true).await
        };
        self.ensure_ticker();
        errors
    }

    /// The pods currently served.
    pub async fn pods(&self) -> Vec<ObjectRef> {
        let mut pods: Vec<_> = self.inner.state.lock().await.pods.keys().cloned().collect();
        pods.sort();
        pods
    }

    /// The pods that should be served but are not yet (being retried).
    pub async fn pending(&self) -> Vec<ObjectRef> {
        let mut pods: Vec<_> = self
            .inner
            .state
            .lock()
            .await
            .pending
            .keys()
            .cloned()
            .collect();
        pods.sort();
        pods
    }

    /// Stops serving every pod. `remove_rules` also uninstalls the capture rules (a node
    /// proxy that is merely restarting leaves them, so pods fail closed meanwhile).
    pub async fn shutdown(&self, remove_rules: bool) {
        if let Some(ticker) = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            ticker.abort();
        }
        let remove = remove_rules && self.inner.options.manage_rules;
        let mut state = self.inner.state.lock().await;
        state.mesh = None;
        for (_, served) in state.pods.drain() {
            served.proxy.stop(remove).await;
        }
        for (pod, pending) in state.pending.drain() {
            if let (true, Some(netns)) = (remove, pending.rules_in) {
                remove_rules_from(&pod, netns).await;
            }
        }
    }

    /// Starts the retry timer once (it needs a runtime, which `apply` has).
    fn ensure_ticker(&self) {
        let mut ticker = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        if ticker.is_some() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        *ticker = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.tick().await;
            }
        }));
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            ticker.abort();
        }
    }
}

impl Inner {
    /// One timer round: drops served sandboxes that are gone, then retries due pods.
    async fn tick(&self) {
        let mut state = self.state.lock().await;
        if state.mesh.is_none() {
            return;
        }
        self.drop_stale_sandboxes(&mut state).await;
        for error in self.reconcile(&mut state, false).await {
            tracing::warn!("{error}");
        }
    }

    /// Whether this proxy should serve `workload`.
    fn wants(&self, workload: &Workload) -> bool {
        workload.captured
            && self.is_local(workload)
            && (workload.netns.is_some() || self.discovery.is_some())
    }

    fn is_local(&self, workload: &Workload) -> bool {
        match &self.options.node_name {
            None => true,
            Some(node) => workload.node.as_deref() == Some(node.as_str()),
        }
    }

    /// Converges on the last config: stops pods that left or changed, forgets pending pods that
    /// left, and starts the pods due (all of them when `force`). Returns the errors not
    /// reported before.
    async fn reconcile(&self, state: &mut State, force: bool) -> Vec<NodeError> {
        let Some(mesh) = state.mesh.clone() else {
            return Vec::new();
        };
        let manage_rules = self.options.manage_rules;
        let desired: HashMap<&ObjectRef, &Workload> = mesh
            .workloads
            .iter()
            .filter(|w| self.wants(w))
            .map(|w| (&w.pod, w))
            .collect();
        let gone: Vec<ObjectRef> = state
            .pods
            .iter()
            .filter(|(key, served)| desired.get(key).is_none_or(|w| !served.proxy.serves(w)))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(served) = state.pods.remove(&key) {
                served.proxy.stop(manage_rules).await;
            }
        }
        let left: Vec<ObjectRef> = state
            .pending
            .keys()
            .filter(|key| !desired.contains_key(key))
            .cloned()
            .collect();
        for key in left {
            if let Some(pending) = state.pending.remove(&key) {
                if let (true, Some(netns)) = (manage_rules, pending.rules_in) {
                    remove_rules_from(&key, netns).await;
                }
                if pending.reported.is_some() {
                    tracing::info!(pod = %key, "pod left the mesh config before it could be served");
                }
            }
        }
        if force {
            // A new config: served pods take their changed settings (a timer round has none).
            for (key, workload) in &desired {
                if let Some(served) = state.pods.get(*key) {
                    served.proxy.update((*workload).clone(), manage_rules);
                }
            }
        }

        let now = Instant::now();
        let mut due: Vec<&Workload> = desired
            .values()
            .filter(|w| !state.pods.contains_key(&w.pod))
            .filter(|w| force || state.pending.get(&w.pod).is_none_or(|p| p.next_try <= now))
            .copied()
            .collect();
        due.sort_by(|a, b| a.pod.cmp(&b.pod));
        let unnamed: Vec<IpAddr> = due
            .iter()
            .filter(|w| w.netns.is_none())
            .map(|w| w.ip)
            .collect();
        let resolved = self.resolve(unnamed).await;

        let mut errors = Vec::new();
        for workload in due {
            let key = workload.pod.clone();
            match self.start(workload, &resolved).await {
                Ok(served) => {
                    if let Some(pending) = state.pending.remove(&key)
                        && pending.reported.is_some()
                    {
                        tracing::info!(pod = %key, "pod served after {} failed attempt(s)", pending.failures);
                    }
                    state.pods.insert(key, served);
                }
                Err(failure) => {
                    let pending = state.pending.entry(key).or_insert(Pending {
                        failures: 0,
                        next_try: now,
                        reported: None,
                        rules_in: None,
                    });
                    if failure.rules_in.is_some() {
                        pending.rules_in = failure.rules_in;
                    }
                    match failure.error {
                        None => pending.next_try = now + discover::MIN_RESCAN,
                        Some(error) => {
                            pending.failures += 1;
                            pending.next_try = now + backoff(pending.failures);
                            let text = error.to_string();
                            if pending.reported.as_deref() != Some(text.as_str()) {
                                pending.reported = Some(text);
                                errors.push(error);
                            }
                        }
                    }
                }
            }
        }
        errors
    }

    /// Looks the addresses up (one batch, at most one rescan).
    async fn resolve(&self, ips: Vec<IpAddr>) -> Result<HashMap<IpAddr, Resolution>, String> {
        let Some(discovery) = self.discovery.clone() else {
            return Ok(HashMap::new());
        };
        if ips.is_empty() {
            return Ok(HashMap::new());
        }
        tokio::task::spawn_blocking(move || {
            let mut discovery = discovery.lock().unwrap_or_else(|e| e.into_inner());
            discovery.resolve_all(&ips).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err("discovery worker failed".into()))
    }

    /// One start attempt.
    async fn start(
        &self,
        workload: &Workload,
        resolved: &Result<HashMap<IpAddr, Resolution>, String>,
    ) -> Result<Served, Failure> {
        let pod = workload.pod.clone();
        let error = |error: NodeError| Failure {
            error: Some(error),
            rules_in: None,
        };
        let (netns, label, found_at) = match &workload.netns {
            Some(name) => {
                let netns = NetNs::named(name).map_err(|source| {
                    error(NodeError::Netns {
                        pod: pod.clone(),
                        source: Box::new(source),
                    })
                })?;
                (netns, name.clone(), None)
            }
            None => {
                let resolutions = resolved.as_ref().map_err(|reason| {
                    error(NodeError::Discovery {
                        pod: pod.clone(),
                        reason: reason.clone(),
                    })
                })?;
                match resolutions.get(&workload.ip) {
                    Some(Resolution::Found(found)) => (
                        found.netns.clone(),
                        found.path.display().to_string(),
                        Some((found.path.clone(), found.id)),
                    ),
                    Some(Resolution::Ambiguous(paths)) => {
                        return Err(error(NodeError::NetnsAmbiguous {
                            pod,
                            ip: workload.ip,
                            paths: paths.clone(),
                        }));
                    }
                    Some(Resolution::Missing { scanned: true }) => {
                        return Err(error(NodeError::NetnsNotFound {
                            pod,
                            ip: workload.ip,
                            dir: self.options.netns_dir.clone().unwrap_or_default(),
                        }));
                    }
                    Some(Resolution::Missing { scanned: false }) | None => {
                        return Err(Failure {
                            error: None,
                            rules_in: None,
                        });
                    }
                }
            }
        };
        match PodProxy::start(
            workload.clone(),
            netns.clone(),
            label,
            &self.options,
            self.view.clone(),
        )
        .await
        {
            Ok(proxy) => Ok(Served { proxy, found_at }),
            Err(StartError {
                error,
                rules_installed,
            }) => Err(Failure {
                error: Some(error),
                rules_in: rules_installed.then_some(netns),
            }),
        }
    }

    /// Stops serving discovered pods whose sandbox is gone: the namespace file was removed or
    /// now names another namespace, or (checked every [`LIVENESS_EVERY`]) the namespace no
    /// longer holds the pod's address (the network plugin tore it down). They are looked up
    /// again at once, so a recreated sandbox is served in its new namespace. Their rules are
    /// left alone: they die with the old namespace.
    async fn drop_stale_sandboxes(&self, state: &mut State) {
        let now = Instant::now();
        let check_addresses = state
            .last_liveness
            .is_none_or(|last| now.duration_since(last) >= LIVENESS_EVERY);
        let discovered: Vec<(ObjectRef, PathBuf, FileId, NetNs, IpAddr)> = state
            .pods
            .iter()
            .filter_map(|(key, served)| {
                let (path, id) = served.found_at.clone()?;
                Some((
                    key.clone(),
                    path,
                    id,
                    served.proxy.netns().clone(),
                    served.proxy.ip(),
                ))
            })
            .collect();
        if discovered.is_empty() {
            return;
        }
        if check_addresses {
            state.last_liveness = Some(now);
        }
        let stale: Vec<(ObjectRef, &'static str)> = tokio::task::spawn_blocking(move || {
            discovered
                .into_iter()
                .filter_map(|(key, path, id, netns, ip)| {
                    if !Discovery::still_names(&path, id) {
                        return Some((key, "its network namespace file is gone"));
                    }
                    if check_addresses && !netns.addresses().is_ok_and(|a| a.contains(&ip)) {
                        return Some((key, "its network namespace no longer holds its address"));
                    }
                    None
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        for (key, why) in stale {
            if let Some(served) = state.pods.remove(&key) {
                tracing::info!(pod = %key, "sandbox replaced: {why}; looking for its new network namespace");
                served.proxy.stop(false).await;
            }
        }
    }
}

/// The delay before retry number `failures` (1, 2, 4, 8, 10, 10, ... seconds).
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(8);
    (RETRY_FIRST * 2u32.pow(exponent)).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_ten_seconds() {
        let delays: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
    }
}

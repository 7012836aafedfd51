//! Sources: one reflector (list + watch, cached) per kind compile reads, and the snapshot they
//! make together.
//!
//! Secrets are the exception to "cache everything": only the Secrets a Gateway or ListenerSet
//! references are watched, one by name ([`crate::secrets`]); the cluster's other Secrets never
//! enter this process.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use strait_model::Snapshot;

use crate::prune;
use crate::referenced::{Referenced, referenced_config_maps, referenced_secrets};
use strait_model::types::*;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The cached objects of every kind, and a signal raised on every change.
pub struct Sources {
    gateway_classes: Store<GatewayClass>,
    gateways: Store<Gateway>,
    http_routes: Store<HttpRoute>,
    grpc_routes: Store<GrpcRoute>,
    tcp_routes: Store<TcpRoute>,
    tls_routes: Store<TlsRoute>,
    reference_grants: Store<ReferenceGrant>,
    listener_sets: Store<ListenerSet>,
    backend_tls_policies: Store<BackendTlsPolicy>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    namespaces: Store<Namespace>,
    /// Only the Secrets Gateways reference ([`crate::referenced`]), never all of them.
    secrets: Referenced<Secret>,
    /// Only the ConfigMaps something compile reads references, never all of them.
    config_maps: Referenced<ConfigMap>,
    pods: Store<Pod>,
    changed: Arc<Notify>,
    status_changed: Arc<Notify>,
    status_updates: Arc<Mutex<StatusUpdates>>,
    tasks: Vec<JoinHandle<()>>,
}

/// An object whose status we write: kind, namespace (empty for cluster-scoped kinds), name.
pub type StatusKey = (String, String, String);

/// Objects whose status alone changed since the status writer last took them, so that it can
/// check just those instead of every object (our own writes come back as such updates, one
/// per object written).
#[derive(Default)]
struct StatusUpdates {
    objects: HashSet<StatusKey>,
    /// More than [`STATUS_UPDATES_KEPT`] objects changed: the writer must check everything.
    overflowed: bool,
}

/// Status-only updates remembered one by one; beyond this many, checking every object costs
/// no more than looking each up.
const STATUS_UPDATES_KEPT: usize = 16;

impl StatusUpdates {
    fn record(&mut self, key: StatusKey) {
        if self.overflowed {
            return;
        }
        if self.objects.len() < STATUS_UPDATES_KEPT || self.objects.contains(&key) {
            self.objects.insert(key);
        } else {
            self.objects.clear();
            self.overflowed = true;
        }
    }

    /// What was recorded (`None`: too much to tell), leaving nothing recorded.
    fn take(&mut self) -> Option<HashSet<StatusKey>> {
        let taken = std::mem::take(self);
        (!taken.overflowed).then_some(taken.objects)
    }
}

/// What a reflector signals on an event.
#[derive(Clone)]
struct Signals {
    /// Raised by every change compile may read.
    changed: Arc<Notify>,
    /// Raised by a change of nothing but `.status` on a kind whose status we write.
    status_changed: Arc<Notify>,
    /// Which objects those were.
    status_updates: Arc<Mutex<StatusUpdates>>,
}

impl Signals {
    fn status_updated(&self, kind: &str, meta: &kube::api::ObjectMeta) {
        self.status_updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record((
                kind.to_owned(),
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            ));
        self.status_changed.notify_one();
    }
}

/// Starts a reflector for `K` across all namespaces. Every event raises `changed`, except an
/// update of nothing but the status of a kind listed in [`STATUS_ONLY_QUIET`] (compile never
/// reads those statuses; the status writer does, so it raises `status_changed` instead): our
/// own status writes would otherwise each cost a full recompile that a real change then waits
/// behind. Each object is pruned ([`prune`]) before the reflector stores it.
fn reflect<K>(
    client: &Client,
    config: watcher::Config,
    prune: fn(&mut K),
    signals: &Signals,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).modify(prune)).default_backoff();
    let signals = signals.clone();
    let kind = K::kind(&());
    let status_quiet = STATUS_ONLY_QUIET.contains(&kind.as_ref());
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Fingerprints of what compile reads of each object (everything but status), to tell
        // a status-only update from a real one; only kept for `status_quiet` kinds.
        let mut prints: HashMap<reflector::ObjectRef<K>, u64> = HashMap::new();
        let mut relisted: HashMap<reflector::ObjectRef<K>, u64> = HashMap::new();
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(kind = kind.as_ref(), error = %e, "watch failed; retrying");
                    continue;
                }
            };
            if !status_quiet {
                signals.changed.notify_one();
                continue;
            }
            match event {
                watcher::Event::Apply(object) => {
                    let key = reflector::ObjectRef::from_obj(&object);
                    let before = match fingerprint(&object) {
                        Some(print) => prints.insert(key, print).filter(|old| *old == print),
                        None => {
                            prints.remove(&key);
                            None
                        }
                    };
                    if before.is_some() {
                        tracing::trace!(kind = kind.as_ref(), "status-only update");
                        signals.status_updated(kind.as_ref(), object.meta());
                        continue;
                    }
                }
                watcher::Event::Delete(object) => {
                    prints.remove(&reflector::ObjectRef::from_obj(&object));
                }
                watcher::Event::Init => relisted.clear(),
                watcher::Event::InitApply(object) => {
                    if let Some(print) = fingerprint(&object) {
                        relisted.insert(reflector::ObjectRef::from_obj(&object), print);
                    }
                }
                watcher::Event::InitDone => prints = std::mem::take(&mut relisted),
            }
            signals.changed.notify_one();
        }
    }));
    reader
}

/// Dispatches on the kind name to the store of each kind whose status we write (one generic
/// function per caller, one table here).
macro_rules! status_kinds {
    ($sources:expr, $kind:expr, |$store:ident| $body:expr) => {
        match $kind {
            "GatewayClass" => {
                let $store = &$sources.gateway_classes;
                $body
            }
            "Gateway" => {
                let $store = &$sources.gateways;
                $body
            }
            "HTTPRoute" => {
                let $store = &$sources.http_routes;
                $body
            }
            "GRPCRoute" => {
                let $store = &$sources.grpc_routes;
                $body
            }
            "TCPRoute" => {
                let $store = &$sources.tcp_routes;
                $body
            }
            "TLSRoute" => {
                let $store = &$sources.tls_routes;
                $body
            }
            "ListenerSet" => {
                let $store = &$sources.listener_sets;
                $body
            }
            "BackendTLSPolicy" => {
                let $store = &$sources.backend_tls_policies;
                $body
            }
            _ => None,
        }
    };
}

/// A cached object by namespace (empty for cluster-scoped kinds) and name.
fn cached<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    namespace: &str,
    name: &str,
) -> Option<Arc<K>> {
    let key = if namespace.is_empty() {
        reflector::ObjectRef::new(name)
    } else {
        reflector::ObjectRef::new(name).within(namespace)
    };
    store.get(&key)
}

/// Kinds whose status only the status writer reads (never compile), so a status-only update
/// of one needs no recompile.
const STATUS_ONLY_QUIET: [&str; 8] = [
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "TCPRoute",
    "TLSRoute",
    "ListenerSet",
    "BackendTLSPolicy",
];

/// A hash of everything in `object` but its status and the `resourceVersion` every write
/// changes (`managedFields`, which every write changes too, were pruned before it got here);
/// `None` if it does not serialize as an object.
fn fingerprint<K: serde::Serialize>(object: &K) -> Option<u64> {
    let mut value = serde_json::to_value(object).ok()?;
    let map = value.as_object_mut()?;
    map.remove("status");
    if let Some(meta) = map
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&value).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}

/// `store`'s objects sorted by namespace and name, shared with the store: a snapshot holds
/// references to the cached objects, never copies of them.
fn sorted<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<Arc<K>> {
    by_name(store.state())
}

fn by_name<K: Resource>(mut objects: Vec<Arc<K>>) -> Vec<Arc<K>> {
    objects.sort_by(|a, b| namespace_and_name(&**a).cmp(&namespace_and_name(&**b)));
    objects
}

fn namespace_and_name<K: Resource>(object: &K) -> (Option<&str>, Option<&str>) {
    (
        object.meta().namespace.as_deref(),
        object.meta().name.as_deref(),
    )
}

impl Sources {
    /// Starts watching every kind. The returned value's stores fill in the background; see
    /// [`Sources::wait_ready`].
    pub fn start(client: &Client) -> Sources {
        let changed = Arc::new(Notify::new());
        let status_changed = Arc::new(Notify::new());
        let status_updates = Arc::default();
        let signals = Signals {
            changed: changed.clone(),
            status_changed: status_changed.clone(),
            status_updates: Arc::clone(&status_updates),
        };
        let changed = &signals.changed;
        let mut tasks = Vec::new();
        let all = watcher::Config::default;
        Sources {
            gateway_classes: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            gateways: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            http_routes: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            grpc_routes: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            tcp_routes: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            tls_routes: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            reference_grants: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            listener_sets: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            backend_tls_policies: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            services: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            endpoint_slices: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            namespaces: reflect(client, all(), prune::metadata, &signals, &mut tasks),
            secrets: Referenced::new(client.clone(), changed.clone()),
            config_maps: Referenced::new(client.clone(), changed.clone()),
            pods: reflect(client, all(), prune::pod, &signals, &mut tasks),
            changed: changed.clone(),
            status_changed,
            status_updates,
            tasks,
        }
    }

    /// Waits until every kind has been listed once (so the first compile sees a whole cluster,
    /// not a half-listed one that would write wrong statuses).
    pub async fn wait_ready(&self) {
        macro_rules! ready {
            ($($store:ident),*) => {
                $( let _ = self.$store.wait_until_ready().await; )*
            };
        }
        ready!(
            gateway_classes,
            gateways,
            http_routes,
            grpc_routes,
            tcp_routes,
            tls_routes,
            reference_grants,
            listener_sets,
            backend_tls_policies,
            services,
            endpoint_slices,
            namespaces,
            pods
        );
    }

    /// Watches exactly the Secrets and ConfigMaps `snapshot` references, waiting for newly
    /// watched ones to be listed (both kinds at once, so a new Gateway naming a certificate and
    /// a parameters ConfigMap waits for one round trip, not two); true if the snapshot should
    /// be retaken to include them.
    pub async fn sync_referenced(&self, snapshot: &Snapshot) -> bool {
        let (secrets, config_maps) = tokio::join!(
            self.secrets.sync(referenced_secrets(snapshot)),
            self.config_maps.sync(referenced_config_maps(snapshot)),
        );
        secrets || config_maps
    }

    /// Raised on every change of any kind.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Raised when only the status of an object whose status we write changed (not raising
    /// `changed`): the status writer's cue to check it again.
    pub fn status_changed(&self) -> Arc<Notify> {
        self.status_changed.clone()
    }

    /// The objects whose status alone changed since the last call, or `None` when too many did
    /// to be told one by one (check everything).
    pub fn take_status_updates(&self) -> Option<HashSet<StatusKey>> {
        self.status_updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The pod cache, shared with the CA's authorizer (node proxies are checked against it
    /// without a request to the API server per certificate).
    pub fn pods(&self) -> Store<Pod> {
        self.pods.clone()
    }

    /// Everything currently cached, as compile wants it (sorted by namespace and name so equal
    /// clusters compile to equal configs). The objects are the cache's own, shared.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            gateway_classes: sorted(&self.gateway_classes),
            gateways: sorted(&self.gateways),
            http_routes: sorted(&self.http_routes),
            grpc_routes: sorted(&self.grpc_routes),
            tcp_routes: sorted(&self.tcp_routes),
            tls_routes: sorted(&self.tls_routes),
            reference_grants: sorted(&self.reference_grants),
            listener_sets: sorted(&self.listener_sets),
            backend_tls_policies: sorted(&self.backend_tls_policies),
            services: sorted(&self.services),
            endpoint_slices: sorted(&self.endpoint_slices),
            namespaces: sorted(&self.namespaces),
            secrets: by_name(self.secrets.objects()),
            config_maps: by_name(self.config_maps.objects()),
            pods: sorted(&self.pods),
            sources: Default::default(),
        }
    }

    /// The resourceVersion of a cached object whose status we write: `None` if not cached,
    /// `Some(None)` if it has none. Cheap (no serialization), so the status writer can skip
    /// objects it already brought to the desired status at that version.
    pub fn stored_version(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Option<String>> {
        fn find<K: Resource<DynamicType = ()> + Clone>(
            store: &Store<K>,
            namespace: &str,
            name: &str,
        ) -> Option<Option<String>> {
            Some(
                cached(store, namespace, name)?
                    .meta()
                    .resource_version
                    .clone(),
            )
        }
        status_kinds!(self, kind, |store| find(store, namespace, name))
    }

    /// The stored status of an object, if cached (what the status writer compares against).
    pub fn stored_status(&self, kind: &str, namespace: &str, name: &str) -> Option<StoredStatus> {
        fn find<K: Resource<DynamicType = ()> + Clone + serde::Serialize>(
            store: &Store<K>,
            namespace: &str,
            name: &str,
        ) -> Option<StoredStatus> {
            let object = cached(store, namespace, name)?;
            let value = serde_json::to_value(&*object).ok()?;
            Some(StoredStatus {
                status: value
                    .get("status")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
                resource_version: object.meta().resource_version.clone(),
            })
        }
        status_kinds!(self, kind, |store| find(store, namespace, name))
    }
}

/// An object's status as last seen by the reflector.
#[derive(Clone, Debug)]
pub struct StoredStatus {
    pub status: serde_json::Value,
    pub resource_version: Option<String>,
}

impl Drop for Sources {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{STATUS_UPDATES_KEPT, StatusKey, StatusUpdates};

    fn route(name: &str) -> StatusKey {
        ("HTTPRoute".into(), "shop".into(), name.into())
    }

    #[test]
    fn status_updates_are_told_one_by_one_until_there_are_too_many() {
        let mut updates = StatusUpdates::default();
        assert_eq!(updates.take(), Some(Default::default()));
        for _ in 0..2 * STATUS_UPDATES_KEPT {
            // The same object again and again is one update.
            updates.record(route("cart"));
        }
        updates.record(route("web"));
        let taken = updates.take().expect("two objects are told one by one");
        assert_eq!(taken, [route("cart"), route("web")].into_iter().collect());
        assert_eq!(updates.take(), Some(Default::default()), "taking empties");

        for i in 0..=STATUS_UPDATES_KEPT {
            updates.record(route(&format!("r{i}")));
        }
        assert_eq!(updates.take(), None, "too many to tell: check everything");
        updates.record(route("cart"));
        assert_eq!(
            updates.take(),
            Some([route("cart")].into_iter().collect()),
            "told one by one again after the overflow was taken"
        );
    }
}

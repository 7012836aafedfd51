//! Sources: one reflector (list + watch, cached) per kind compile reads, and the snapshot they
//! make together.
//!
//! Secrets are the exception to "cache everything": only the Secrets a Gateway or ListenerSet
//! references are watched, one by name ([`crate::secrets`]); the cluster's other Secrets never
//! enter this process.

use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use strait_model::Snapshot;

use crate::secrets::ReferencedSecrets;
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
    /// Only the Secrets Gateways reference ([`ReferencedSecrets`]), never all of them.
    secrets: ReferencedSecrets,
    config_maps: Store<ConfigMap>,
    pods: Store<Pod>,
    changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts a reflector for `K` across all namespaces; every event raises `changed`.
fn reflect<K>(
    client: &Client,
    config: watcher::Config,
    changed: &Arc<Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    let changed = changed.clone();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying"),
            }
        }
    }));
    reader
}

impl Sources {
    /// Starts watching every kind. The returned value's stores fill in the background; see
    /// [`Sources::wait_ready`].
    pub fn start(client: &Client) -> Sources {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let all = watcher::Config::default;
        Sources {
            gateway_classes: reflect(client, all(), &changed, &mut tasks),
            gateways: reflect(client, all(), &changed, &mut tasks),
            http_routes: reflect(client, all(), &changed, &mut tasks),
            grpc_routes: reflect(client, all(), &changed, &mut tasks),
            tcp_routes: reflect(client, all(), &changed, &mut tasks),
            tls_routes: reflect(client, all(), &changed, &mut tasks),
            reference_grants: reflect(client, all(), &changed, &mut tasks),
            listener_sets: reflect(client, all(), &changed, &mut tasks),
            backend_tls_policies: reflect(client, all(), &changed, &mut tasks),
            services: reflect(client, all(), &changed, &mut tasks),
            endpoint_slices: reflect(client, all(), &changed, &mut tasks),
            namespaces: reflect(client, all(), &changed, &mut tasks),
            secrets: ReferencedSecrets::new(client.clone(), changed.clone()),
            config_maps: reflect(client, all(), &changed, &mut tasks),
            pods: reflect(client, all(), &changed, &mut tasks),
            changed,
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
            config_maps,
            pods
        );
    }

    /// Watches exactly the Secrets `snapshot`'s Gateways reference, waiting for newly watched
    /// ones to be listed; true if the snapshot should be retaken to include them.
    pub async fn sync_secrets(&self, snapshot: &Snapshot) -> bool {
        self.secrets.sync(snapshot).await
    }

    /// Raised on every change of any kind.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// The pod cache, shared with the CA's authorizer (node proxies are checked against it
    /// without a request to the API server per certificate).
    pub fn pods(&self) -> Store<Pod> {
        self.pods.clone()
    }

    /// Everything currently cached, as compile wants it (sorted by namespace and name so equal
    /// clusters compile to equal configs).
    pub fn snapshot(&self) -> Snapshot {
        fn all<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<K> {
            let mut objects: Vec<K> = store.state().iter().map(|o| (**o).clone()).collect();
            objects.sort_by(|a, b| {
                (a.meta().namespace.as_deref(), a.meta().name.as_deref())
                    .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
            });
            objects
        }
        Snapshot {
            gateway_classes: all(&self.gateway_classes),
            gateways: all(&self.gateways),
            http_routes: all(&self.http_routes),
            grpc_routes: all(&self.grpc_routes),
            tcp_routes: all(&self.tcp_routes),
            tls_routes: all(&self.tls_routes),
            reference_grants: all(&self.reference_grants),
            listener_sets: all(&self.listener_sets),
            backend_tls_policies: all(&self.backend_tls_policies),
            services: all(&self.services),
            endpoint_slices: all(&self.endpoint_slices),
            namespaces: all(&self.namespaces),
            secrets: {
                let mut secrets = self.secrets.secrets();
                secrets.sort_by(|a, b| {
                    (a.meta().namespace.as_deref(), a.meta().name.as_deref())
                        .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
                });
                secrets
            },
            config_maps: all(&self.config_maps),
            pods: all(&self.pods),
            sources: Default::default(),
        }
    }

    /// The stored status of an object, if cached (what the status writer compares against).
    pub fn stored_status(&self, kind: &str, namespace: &str, name: &str) -> Option<StoredStatus> {
        fn find<K: Resource<DynamicType = ()> + Clone + serde::Serialize>(
            store: &Store<K>,
            namespace: &str,
            name: &str,
        ) -> Option<StoredStatus> {
            let key = if namespace.is_empty() {
                reflector::ObjectRef::new(name)
            } else {
                reflector::ObjectRef::new(name).within(namespace)
            };
            let object = store.get(&key)?;
            let value = serde_json::to_value(&*object).ok()?;
            Some(StoredStatus {
                status: value
                    .get("status")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
                resource_version: object.meta().resource_version.clone(),
            })
        }
        match kind {
            "GatewayClass" => find(&self.gateway_classes, namespace, name),
            "Gateway" => find(&self.gateways, namespace, name),
            "HTTPRoute" => find(&self.http_routes, namespace, name),
            "GRPCRoute" => find(&self.grpc_routes, namespace, name),
            "TCPRoute" => find(&self.tcp_routes, namespace, name),
            "TLSRoute" => find(&self.tls_routes, namespace, name),
            "ListenerSet" => find(&self.listener_sets, namespace, name),
            "BackendTLSPolicy" => find(&self.backend_tls_policies, namespace, name),
            _ => None,
        }
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

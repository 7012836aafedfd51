//! Secrets and ConfigMaps are cached only when something compile reads references them: one
//! watch per referenced object (`fieldSelector=metadata.name=…` in its namespace), started
//! when the first reference appears and stopped with the last. The controller therefore never
//! holds the cluster's other Secrets (keys it has no business reading) or ConfigMaps (in a
//! cluster, one `kube-root-ca.crt` per namespace, and dashboards, scripts and application
//! settings of up to 1 MiB each) in memory: only the certificates, CA bundles and proxy
//! parameters it must hand on.
//!
//! Who references what: Gateways and ListenerSets name Secrets (listener `certificateRefs`, the
//! backend `clientCertificateRef`, `caCertificateRefs` of kind Secret) and ConfigMaps
//! (`caCertificateRefs` of kind ConfigMap, `infrastructure.parametersRef`); GatewayClasses name
//! a parameters ConfigMap; BackendTLSPolicies name CA ConfigMaps. Whether a reference is
//! *permitted* (ReferenceGrant) is compile's business; watching an object that then turns out
//! not to be usable is harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use strait_model::Snapshot;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::prune;

/// How long a compile waits for a newly referenced object's first list: long enough that a
/// new Gateway's certificate is normally there on its first status, short enough that an
/// unreachable API server does not stall every other change.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// A referenced object by namespace and name.
pub type ReferenceKey = (String, String);

struct Watch<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    task: JoinHandle<()>,
}

/// The watches of the referenced objects of one kind.
pub struct Referenced<K: Resource<DynamicType = ()> + 'static> {
    client: Client,
    changed: Arc<Notify>,
    watches: Mutex<BTreeMap<ReferenceKey, Watch<K>>>,
}

impl<K> Referenced<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    pub fn new(client: Client, changed: Arc<Notify>) -> Referenced<K> {
        Referenced {
            client,
            changed,
            watches: Mutex::new(BTreeMap::new()),
        }
    }

    /// Watches exactly the objects in `wanted`; waits (bounded) for the first list of newly
    /// watched ones. True if any watch started, i.e. the snapshot should be retaken.
    pub async fn sync(&self, wanted: BTreeSet<ReferenceKey>) -> bool {
        let started: Vec<Store<K>> = {
            let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            watches.retain(|key, watch| {
                let keep = wanted.contains(key);
                if !keep {
                    watch.task.abort();
                }
                keep
            });
            let mut started = Vec::new();
            for key in wanted {
                if let std::collections::btree_map::Entry::Vacant(slot) = watches.entry(key) {
                    let watch = self.watch(slot.key());
                    started.push(watch.store.clone());
                    slot.insert(watch);
                }
            }
            started
        };
        for store in &started {
            // On timeout the compile goes ahead; the watch's first event triggers another.
            let _ = tokio::time::timeout(FIRST_LIST_TIMEOUT, store.wait_until_ready()).await;
        }
        !started.is_empty()
    }

    /// The cached referenced objects (shared with the cache, not copied).
    pub fn objects(&self) -> Vec<Arc<K>> {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.values().flat_map(|w| w.store.state()).collect()
    }

    fn watch(&self, (namespace, name): &ReferenceKey) -> Watch<K> {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let (reader, writer) = reflector::store();
        // An object applied with `kubectl apply` keeps its whole data (a Secret's key too) a
        // second time in an annotation: pruned like every cached object.
        let stream = reflector::reflector(writer, watcher(api, config).modify(prune::metadata))
            .default_backoff();
        let changed = self.changed.clone();
        let kind = K::kind(&());
        let key = format!("{namespace}/{name}");
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => changed.notify_one(),
                    Err(e) => {
                        tracing::warn!(kind = %kind, object = %key, error = %e, "watch failed; retrying")
                    }
                }
            }
        });
        Watch {
            store: reader,
            task,
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Drop for Referenced<K> {
    fn drop(&mut self) {
        let watches = self.watches.get_mut().unwrap_or_else(|p| p.into_inner());
        for watch in watches.values() {
            watch.task.abort();
        }
    }
}

/// Where references to one kind sit in the specs that hold them.
struct ReferenceFields {
    /// The kind referenced (core group).
    kind: &'static str,
    /// Fields holding a list of references.
    lists: &'static [&'static str],
    /// Fields holding one reference.
    single: &'static [&'static str],
    /// Whether a reference without a `kind` means this kind (a SecretObjectReference's
    /// default); otherwise the kind must be named.
    kind_by_default: bool,
    /// Whether GatewayClasses and BackendTLSPolicies may reference this kind, besides Gateways
    /// and ListenerSets.
    from_classes_and_policies: bool,
}

const SECRET_FIELDS: ReferenceFields = ReferenceFields {
    kind: "Secret",
    lists: &["certificateRefs", "caCertificateRefs"],
    single: &["clientCertificateRef"],
    kind_by_default: true,
    from_classes_and_policies: false,
};

const CONFIG_MAP_FIELDS: ReferenceFields = ReferenceFields {
    kind: "ConfigMap",
    lists: &["caCertificateRefs"],
    single: &["parametersRef"],
    kind_by_default: false,
    from_classes_and_policies: true,
};

/// Every Secret the Gateways and ListenerSets name.
pub fn referenced_secrets(snapshot: &Snapshot) -> BTreeSet<ReferenceKey> {
    referenced(snapshot, &SECRET_FIELDS)
}

/// Every ConfigMap the GatewayClasses, Gateways, ListenerSets and BackendTLSPolicies name.
pub fn referenced_config_maps(snapshot: &Snapshot) -> BTreeSet<ReferenceKey> {
    referenced(snapshot, &CONFIG_MAP_FIELDS)
}

fn referenced(snapshot: &Snapshot, fields: &ReferenceFields) -> BTreeSet<ReferenceKey> {
    fn specs<'a, K: Resource + 'a, S: Serialize + 'a>(
        objects: &'a [Arc<K>],
        spec: fn(&K) -> &S,
    ) -> impl Iterator<Item = (&'a str, serde_json::Result<Value>)> + 'a {
        objects.iter().map(move |o| {
            (
                o.meta().namespace.as_deref().unwrap_or_default(),
                serde_json::to_value(spec(o)),
            )
        })
    }
    let mut keys = BTreeSet::new();
    let classes_and_policies = fields.from_classes_and_policies.then(|| {
        specs(&snapshot.gateway_classes, |c| &c.spec)
            .chain(specs(&snapshot.backend_tls_policies, |p| &p.spec))
    });
    let all = specs(&snapshot.gateways, |g| &g.spec)
        .chain(specs(&snapshot.listener_sets, |l| &l.spec))
        .chain(classes_and_policies.into_iter().flatten());
    for (namespace, spec) in all {
        if let Ok(spec) = spec {
            collect(&spec, namespace, fields, &mut keys);
        }
    }
    keys
}

fn collect(
    value: &Value,
    namespace: &str,
    fields: &ReferenceFields,
    keys: &mut BTreeSet<ReferenceKey>,
) {
    match value {
        Value::Object(map) => {
            for (field, child) in map {
                match child {
                    Value::Array(refs) if fields.lists.contains(&field.as_str()) => {
                        for reference in refs {
                            add(reference, namespace, fields, keys);
                        }
                    }
                    reference if fields.single.contains(&field.as_str()) => {
                        add(reference, namespace, fields, keys)
                    }
                    _ => collect(child, namespace, fields, keys),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect(item, namespace, fields, keys);
            }
        }
        _ => {}
    }
}

/// A reference to `fields.kind` in the core group; its namespace is the referrer's unless it
/// names one (a cluster-scoped referrer, a GatewayClass, must name one).
fn add(
    reference: &Value,
    namespace: &str,
    fields: &ReferenceFields,
    keys: &mut BTreeSet<ReferenceKey>,
) {
    let group = reference["group"].as_str().unwrap_or("");
    let kind = match reference["kind"].as_str() {
        Some(kind) => kind,
        None if fields.kind_by_default => fields.kind,
        None => return,
    };
    let Some(name) = reference["name"].as_str() else {
        return;
    };
    let namespace = reference["namespace"].as_str().unwrap_or(namespace);
    if group.is_empty() && kind == fields.kind && !namespace.is_empty() {
        keys.insert((namespace.to_string(), name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> BTreeSet<ReferenceKey> {
        pairs
            .iter()
            .map(|(namespace, name)| (namespace.to_string(), name.to_string()))
            .collect()
    }

    #[test]
    fn listener_backend_and_ca_references_of_kind_secret_are_collected() {
        let report = strait_model::load_str(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: shop}
spec:
  gatewayClassName: strait
  tls:
    backend:
      clientCertificateRef: {name: backend-client}
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    hostname: shop.example.com
    tls:
      certificateRefs:
      - {name: shop-cert}
      - {name: shared-cert, namespace: certs}
      - {name: not-a-secret, group: example.com, kind: Vault}
  - {name: http, port: 80, protocol: HTTP}
"#,
            std::path::Path::new("t.yaml"),
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            referenced_secrets(&report.snapshot),
            keys(&[
                ("certs", "shared-cert"),
                ("shop", "backend-client"),
                ("shop", "shop-cert"),
            ])
        );
    }

    #[test]
    fn class_gateway_and_policy_references_of_kind_config_map_are_collected() {
        let report = strait_model::load_str(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait}
spec:
  controllerName: strait.dev/gateway-controller
  parametersRef: {group: "", kind: ConfigMap, name: class-params, namespace: strait-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: no-namespace}
spec:
  controllerName: strait.dev/gateway-controller
  parametersRef: {group: "", kind: ConfigMap, name: nowhere}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: shop}
spec:
  gatewayClassName: strait
  infrastructure:
    parametersRef: {group: "", kind: ConfigMap, name: web-params}
  tls:
    frontend:
      default:
        validation:
          caCertificateRefs:
          - {group: "", kind: ConfigMap, name: client-ca}
          - {group: "", kind: Secret, name: client-ca-secret}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: cart, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: cart}]
  validation:
    caCertificateRefs:
    - {group: "", kind: ConfigMap, name: cart-ca}
    - {group: "", kind: Secret, name: not-a-kind-policies-take}
    hostname: cart.shop.svc
"#,
            std::path::Path::new("t.yaml"),
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            referenced_config_maps(&report.snapshot),
            keys(&[
                ("shop", "cart-ca"),
                ("shop", "client-ca"),
                ("shop", "web-params"),
                ("strait-system", "class-params"),
            ])
        );
        assert_eq!(
            referenced_secrets(&report.snapshot),
            keys(&[("shop", "client-ca-secret")])
        );
    }
}

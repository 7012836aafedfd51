//! Secrets are cached only when a Gateway (or ListenerSet) references them: one watch per
//! referenced Secret (`fieldSelector=metadata.name=…` in its namespace), started when the first
//! reference appears and stopped with the last. The controller therefore never holds the
//! cluster's other Secrets in memory, only the certificates it must hand to a proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _};
use serde_json::Value;
use strait_model::Snapshot;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::prune;

/// How long a compile waits for a newly referenced Secret's first list: long enough that a new
/// Gateway's certificate is normally there on its first status, short enough that an
/// unreachable API server does not stall every other change.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(5);

/// A Secret by namespace and name.
pub type SecretKey = (String, String);

struct SecretWatch {
    store: Store<Secret>,
    task: JoinHandle<()>,
}

/// The watches of referenced Secrets.
pub struct ReferencedSecrets {
    client: Client,
    changed: Arc<Notify>,
    watches: Mutex<BTreeMap<SecretKey, SecretWatch>>,
}

impl ReferencedSecrets {
    pub fn new(client: Client, changed: Arc<Notify>) -> ReferencedSecrets {
        ReferencedSecrets {
            client,
            changed,
            watches: Mutex::new(BTreeMap::new()),
        }
    }

    /// Watches exactly the Secrets `snapshot` references; waits (bounded) for the first list
    /// of newly watched ones. True if any watch started, i.e. the snapshot should be retaken.
    pub async fn sync(&self, snapshot: &Snapshot) -> bool {
        let wanted = referenced_secrets(snapshot);
        let started: Vec<Store<Secret>> = {
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

    /// The cached referenced Secrets (shared with the cache, not copied).
    pub fn secrets(&self) -> Vec<Arc<Secret>> {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.values().flat_map(|w| w.store.state()).collect()
    }

    fn watch(&self, (namespace, name): &SecretKey) -> SecretWatch {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let (reader, writer) = reflector::store();
        // A Secret applied with `kubectl apply` keeps its whole data a second time in an
        // annotation: pruned like every cached object.
        let stream = reflector::reflector(writer, watcher(api, config).modify(prune::metadata))
            .default_backoff();
        let changed = self.changed.clone();
        let key = format!("{namespace}/{name}");
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => changed.notify_one(),
                    Err(e) => {
                        tracing::warn!(secret = %key, error = %e, "Secret watch failed; retrying")
                    }
                }
            }
        });
        SecretWatch {
            store: reader,
            task,
        }
    }
}

impl Drop for ReferencedSecrets {
    fn drop(&mut self) {
        let watches = self.watches.get_mut().unwrap_or_else(|p| p.into_inner());
        for watch in watches.values() {
            watch.task.abort();
        }
    }
}

/// Every Secret the Gateways and ListenerSets name: listener `certificateRefs`, the
/// Gateway's backend `clientCertificateRef`, and any `caCertificateRefs` of kind Secret.
/// Whether a reference is *permitted* (ReferenceGrant) is compile's business; watching a
/// Secret that then turns out not to be usable is harmless.
pub fn referenced_secrets(snapshot: &Snapshot) -> BTreeSet<SecretKey> {
    let mut keys = BTreeSet::new();
    let specs = snapshot
        .gateways
        .iter()
        .map(|g| (g.meta().namespace.clone(), serde_json::to_value(&g.spec)))
        .chain(
            snapshot
                .listener_sets
                .iter()
                .map(|l| (l.meta().namespace.clone(), serde_json::to_value(&l.spec))),
        );
    for (namespace, spec) in specs {
        if let Ok(spec) = spec {
            collect_secret_refs(&spec, namespace.as_deref().unwrap_or_default(), &mut keys);
        }
    }
    keys
}

fn collect_secret_refs(value: &Value, namespace: &str, keys: &mut BTreeSet<SecretKey>) {
    match value {
        Value::Object(map) => {
            for (field, child) in map {
                match (field.as_str(), child) {
                    ("certificateRefs" | "caCertificateRefs", Value::Array(refs)) => {
                        for reference in refs {
                            add_secret_ref(reference, namespace, keys);
                        }
                    }
                    ("clientCertificateRef", reference) => {
                        add_secret_ref(reference, namespace, keys)
                    }
                    _ => collect_secret_refs(child, namespace, keys),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_secret_refs(item, namespace, keys);
            }
        }
        _ => {}
    }
}

/// A SecretObjectReference: group "" and kind Secret, both defaulted when absent.
fn add_secret_ref(reference: &Value, namespace: &str, keys: &mut BTreeSet<SecretKey>) {
    let group = reference["group"].as_str().unwrap_or("");
    let kind = reference["kind"].as_str().unwrap_or("Secret");
    let Some(name) = reference["name"].as_str() else {
        return;
    };
    if group.is_empty() && kind == "Secret" {
        let namespace = reference["namespace"].as_str().unwrap_or(namespace);
        keys.insert((namespace.to_string(), name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let keys = referenced_secrets(&report.snapshot);
        let expected: BTreeSet<SecretKey> = [
            ("certs", "shared-cert"),
            ("shop", "backend-client"),
            ("shop", "shop-cert"),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
        assert_eq!(keys, expected);
    }
}

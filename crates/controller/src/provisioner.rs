//! Applies the provisioner's desired objects ([`crate::provision::desired`]) to the cluster
//! with server-side apply, and deletes the managed objects nothing wants any more.
//!
//! Only objects labelled [`MANAGED_BY`] are ever deleted, so a user's own Deployment that
//! happens to share a name is never touched (server-side apply would report the conflict on
//! the fields we own instead). Applies are skipped when the body did not change since the last
//! successful apply; the memory of what was applied is dropped on a resync and whenever this
//! replica (re)gains leadership, so edits made behind our back (a deleted Deployment, a changed
//! replica image) are repaired within one resync period.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::Value;

use crate::provision::MANAGED_BY;

/// Field manager of every apply (the owner of the fields we set).
pub const FIELD_MANAGER: &str = "strait-controller";

/// One managed object's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManagedKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ManagedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What one reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    pub applied: usize,
    pub unchanged: usize,
    pub deleted: usize,
    /// One line per failure, naming the object.
    pub failed: Vec<String>,
}

/// The kinds the provisioner manages, in apply order (the ServiceAccount and the trust-anchor
/// ConfigMap before the Deployment that uses them).
const KINDS: [&str; 4] = ["ServiceAccount", "ConfigMap", "Deployment", "Service"];

/// The API resource of a managed kind, and the kind's `'static` name; `None` for any other
/// kind, so an unmanaged kind can never reach an API call.
fn managed_kind(kind: &str) -> Option<(&'static str, ApiResource)> {
    Some(match kind {
        "ServiceAccount" => ("ServiceAccount", ApiResource::erase::<ServiceAccount>(&())),
        "ConfigMap" => ("ConfigMap", ApiResource::erase::<ConfigMap>(&())),
        "Deployment" => ("Deployment", ApiResource::erase::<Deployment>(&())),
        "Service" => ("Service", ApiResource::erase::<Service>(&())),
        _ => return None,
    })
}

/// Applies desired objects and collects garbage; keeps what it applied between calls.
pub struct Provisioner {
    client: Client,
    /// Body hash of every object applied successfully, by key. `None` until the managed
    /// objects already in the cluster were listed (at start, and after a reset).
    applied: Option<BTreeMap<ManagedKey, u64>>,
}

impl Provisioner {
    pub fn new(client: Client) -> Provisioner {
        Provisioner {
            client,
            applied: None,
        }
    }

    /// Forgets what was applied: the next reconcile lists the cluster's managed objects again
    /// and re-applies everything (after losing and regaining leadership, and periodically).
    pub fn reset(&mut self) {
        self.applied = None;
    }

    /// Brings the cluster to `desired`: applies new or changed objects, deletes managed
    /// objects that are no longer desired. Failures are reported and retried next time.
    pub async fn reconcile(&mut self, desired: &[Value]) -> ProvisionReport {
        let mut report = ProvisionReport::default();
        let mut applied = match self.applied.take() {
            Some(applied) => applied,
            None => match self.list_managed().await {
                Ok(existing) => existing,
                Err(e) => {
                    report.failed.push(e);
                    return report;
                }
            },
        };
        let mut wanted = BTreeSet::new();
        let mut ordered: Vec<&Value> = desired.iter().collect();
        ordered.sort_by_key(|o| {
            let kind = o["kind"].as_str().unwrap_or_default();
            KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len())
        });
        for object in ordered {
            let Some(key) = key_of(object) else {
                report
                    .failed
                    .push(format!("provisioner: object without kind/name: {object}"));
                continue;
            };
            wanted.insert(key.clone());
            let hash = body_hash(object);
            if applied.get(&key) == Some(&hash) {
                report.unchanged += 1;
                continue;
            }
            match self.apply(&key, object).await {
                Ok(()) => {
                    applied.insert(key, hash);
                    report.applied += 1;
                }
                Err(e) => {
                    // Forget it so the next pass applies it again.
                    applied.remove(&key);
                    report.failed.push(e);
                }
            }
        }
        let stale: Vec<ManagedKey> = applied
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in stale {
            match self.delete(&key).await {
                Ok(()) => {
                    applied.remove(&key);
                    report.deleted += 1;
                }
                Err(e) => report.failed.push(e),
            }
        }
        self.applied = Some(applied);
        report
    }

    async fn apply(&self, key: &ManagedKey, object: &Value) -> Result<(), String> {
        let api = self.api(key)?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&key.name, &params, &Patch::Apply(object))
            .await
            .map(drop)
            .map_err(|e| format!("provisioner: applying {key}: {e}"))
    }

    async fn delete(&self, key: &ManagedKey) -> Result<(), String> {
        match self
            .api(key)?
            .delete(&key.name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(format!("provisioner: deleting {key}: {e}")),
        }
    }

    fn api(&self, key: &ManagedKey) -> Result<Api<DynamicObject>, String> {
        let (_, resource) = managed_kind(key.kind)
            .ok_or_else(|| format!("provisioner: {key}: not a kind the provisioner manages"))?;
        Ok(Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &resource,
        ))
    }

    /// Every object in the cluster carrying our managed-by label, with a hash no body has, so
    /// desired ones are re-applied once and the rest become garbage.
    async fn list_managed(&self) -> Result<BTreeMap<ManagedKey, u64>, String> {
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let mut existing = BTreeMap::new();
        for (kind, resource) in KINDS.into_iter().filter_map(managed_kind) {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| format!("provisioner: listing managed {kind}s: {e}"))?;
            for object in list.items {
                let meta = object.meta();
                if let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) {
                    existing.insert(
                        ManagedKey {
                            kind,
                            namespace: namespace.clone(),
                            name: name.clone(),
                        },
                        UNAPPLIED,
                    );
                }
            }
        }
        Ok(existing)
    }
}

/// The hash recorded for objects found in the cluster but not applied by this process.
const UNAPPLIED: u64 = 0;

fn key_of(object: &Value) -> Option<ManagedKey> {
    let (kind, _) = managed_kind(object["kind"].as_str()?)?;
    Some(ManagedKey {
        kind,
        namespace: object["metadata"]["namespace"].as_str()?.to_string(),
        name: object["metadata"]["name"].as_str()?.to_string(),
    })
}

fn body_hash(object: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    object.to_string().hash(&mut hasher);
    // Never collide with the marker of objects found in the cluster.
    hasher.finish().max(1)
}

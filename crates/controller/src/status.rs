//! The status writer: patches the status subresource of objects whose computed status differs
//! from the stored one. Only our entries of shared lists are replaced (other controllers'
//! `parents` / `ancestors` entries are kept), unchanged conditions keep their
//! `lastTransitionTime`, and nothing is written when nothing changed — so a restart, which
//! recompiles the same cluster, writes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use strait_compile::ObjectStatus;
use strait_compile::status_merge::{keep_foreign_entries, keep_transition_times};
use strait_model::types::*;

use crate::sources::{Sources, StatusKey};

/// Attempts per object when the stored object moved under us (409).
const CONFLICT_RETRIES: usize = 3;

/// Objects a pass checks between two yields to the runtime.
const YIELD_EVERY: usize = 128;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub written: usize,
    pub unchanged: usize,
    pub failed: Vec<String>,
}

/// Writes statuses with one client.
pub struct StatusWriter {
    client: Client,
    controller_name: String,
    /// Objects known to hold the status we want, by kind, namespace and name: the
    /// resourceVersion at which they did and the fingerprint of the computed status it was
    /// merged from. A pass skips such an object while both are unchanged, without reading its
    /// stored status (which means serializing the cached object: thousands of them per pass
    /// otherwise).
    in_sync: HashMap<StatusKey, InSync>,
    /// The statuses of the last pass, held so a pass over the same ones (a status-only change
    /// woke the writer, not a compile) can tell by identity.
    last: Option<Arc<Vec<ObjectStatus>>>,
    /// Counts passes over different statuses.
    generation: u64,
}

struct InSync {
    resource_version: String,
    /// [`strait_compile::StatusJson::fingerprint`] of the computed status. Holding the status
    /// itself would keep a second copy of every status the compile produces (10,000 routes'
    /// worth, for the life of the controller).
    desired: u64,
    /// The [`StatusWriter::generation`] whose desired status was last found equal to `desired`.
    checked: u64,
}

impl StatusWriter {
    pub fn new(client: Client, controller_name: &str) -> StatusWriter {
        StatusWriter {
            client,
            controller_name: controller_name.to_string(),
            in_sync: HashMap::new(),
            last: None,
            generation: 0,
        }
    }

    /// Brings every object's stored status to `statuses`, skipping the ones already there.
    ///
    /// `updated` names the objects whose status alone changed since the last pass
    /// ([`Sources::take_status_updates`]; `None` when too many did). When the last pass was over
    /// these same statuses and left every object in sync, only those objects can have moved,
    /// and only they are checked: the echo of each status written, which comes back this way,
    /// costs a look at one object rather than at thousands.
    pub async fn write(
        &mut self,
        sources: &Sources,
        statuses: &Arc<Vec<ObjectStatus>>,
        updated: Option<&HashSet<StatusKey>>,
    ) -> WriteReport {
        let same = self
            .last
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, statuses));
        if !same {
            self.generation += 1;
            if let Some(previous) = self.last.replace(statuses.clone()) {
                // Possibly the last holder of thousands of statuses: free them elsewhere.
                drop(tokio::task::spawn_blocking(move || drop(previous)));
            }
        }
        let mut report = WriteReport::default();
        // Every object of these statuses in sync after the last pass: none was left out (not
        // cached yet, a failed or inexact write), which a targeted pass would not look at again.
        let all_in_sync = same && self.in_sync.len() == statuses.len();
        match updated {
            Some(updated) if all_in_sync => {
                for key in updated {
                    let Some(desired) = statuses.iter().find(|desired| {
                        desired.name == key.2 && desired.namespace == key.1 && desired.kind == key.0
                    }) else {
                        // Not an object we compute a status for.
                        continue;
                    };
                    let previous = self.in_sync.remove(key);
                    self.sync(sources, desired, key.clone(), previous, &mut report)
                        .await;
                }
            }
            _ => {
                let mut known =
                    std::mem::replace(&mut self.in_sync, HashMap::with_capacity(statuses.len()));
                for (index, desired) in statuses.iter().enumerate() {
                    if index % YIELD_EVERY == YIELD_EVERY - 1 {
                        // A pass over thousands of objects must not hold a runtime thread that
                        // the config pushes and the watches need.
                        tokio::task::yield_now().await;
                    }
                    let key = (
                        desired.kind.clone(),
                        desired.namespace.clone(),
                        desired.name.clone(),
                    );
                    let previous = known.remove(&key);
                    self.sync(sources, desired, key, previous, &mut report)
                        .await;
                }
            }
        }
        report
    }

    /// Brings one object's stored status to `desired`, unless `previous` (what the last pass
    /// knew of it) shows it is already there; remembers it in `in_sync` once it is.
    async fn sync(
        &mut self,
        sources: &Sources,
        desired: &ObjectStatus,
        key: StatusKey,
        previous: Option<InSync>,
        report: &mut WriteReport,
    ) {
        let Some(version) =
            sources.stored_version(&desired.kind, &desired.namespace, &desired.name)
        else {
            // Not cached (yet): the next change event brings it, and another pass.
            return;
        };
        if let (Some(version), Some(mut entry)) = (&version, previous)
            && entry.resource_version == *version
            && (entry.checked == self.generation || entry.desired == desired.status.fingerprint())
        {
            // Merging `desired` into what is stored gave what is stored, at this very
            // version; it still does (only `lastTransitionTime`s differ, and those of
            // unchanged conditions are taken from the stored status).
            report.unchanged += 1;
            entry.checked = self.generation;
            self.in_sync.insert(key, entry);
            return;
        }
        let stored = sources.stored_status(&desired.kind, &desired.namespace, &desired.name);
        let Some(stored) = stored else {
            return;
        };
        let computed = match desired.status.value() {
            Ok(computed) => computed,
            Err(e) => {
                // Text this process serialized itself; unreadable only through a bug.
                tracing::error!(kind = %desired.kind, namespace = %desired.namespace, name = %desired.name, error = %e, "computed status unreadable");
                report.failed.push(format!(
                    "{} {}/{}: computed status unreadable: {e}",
                    desired.kind, desired.namespace, desired.name
                ));
                return;
            }
        };
        let status = self.merged(&stored.status, &computed);
        if status == stored.status {
            report.unchanged += 1;
            if let Some(version) = stored.resource_version {
                self.remember(key, version, desired);
            }
            return;
        }
        // Built here, not for every object checked: it is five strings.
        let Some(resource) = api_resource(&desired.kind) else {
            return;
        };
        match self
            .patch(
                &resource,
                desired,
                &computed,
                status,
                stored.resource_version,
            )
            .await
        {
            Ok(version) => {
                report.written += 1;
                if let Some(version) = version {
                    self.remember(key, version, desired);
                }
            }
            Err(e) => {
                tracing::warn!(kind = %desired.kind, namespace = %desired.namespace, name = %desired.name, error = %e, "status not written");
                report.failed.push(format!(
                    "{} {}/{}: {e}",
                    desired.kind, desired.namespace, desired.name
                ));
            }
        }
    }

    fn remember(&mut self, key: StatusKey, version: String, desired: &ObjectStatus) {
        self.in_sync.insert(
            key,
            InSync {
                resource_version: version,
                desired: desired.status.fingerprint(),
                checked: self.generation,
            },
        );
    }

    fn merged(&self, stored: &Value, desired: &Value) -> Value {
        let mut status = desired.clone();
        keep_foreign_entries(stored, &mut status, &self.controller_name);
        keep_transition_times(stored, &mut status);
        status
    }

    /// Merge-patches `status` with the resourceVersion it was computed against; on a conflict
    /// re-reads the object, re-merges other controllers' entries and tries again. Returns the
    /// resourceVersion at which the object is known to hold exactly `status` (`None` when the
    /// patch left it different, or nothing had to be written after all).
    async fn patch(
        &self,
        resource: &ApiResource,
        desired: &ObjectStatus,
        computed: &Value,
        mut status: Value,
        mut resource_version: Option<String>,
    ) -> Result<Option<String>, kube::Error> {
        let api: Api<DynamicObject> = if desired.namespace.is_empty() {
            Api::all_with(self.client.clone(), resource)
        } else {
            Api::namespaced_with(self.client.clone(), &desired.namespace, resource)
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut body = json!({ "status": status });
            if let Some(rv) = &resource_version {
                body["metadata"] = json!({ "resourceVersion": rv });
            }
            match api
                .patch_status(&desired.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(written) => {
                    let exact = written.data.get("status") == Some(&status);
                    return Ok(written.metadata.resource_version.filter(|_| exact));
                }
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < CONFLICT_RETRIES => {
                    let current = api.get_status(&desired.name).await?;
                    let stored = current.data.get("status").cloned().unwrap_or(Value::Null);
                    status = self.merged(&stored, computed);
                    resource_version = current.metadata.resource_version.clone();
                    if status == stored {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The API resource of a kind whose status Strait writes.
fn api_resource(kind: &str) -> Option<ApiResource> {
    fn of<K: Resource<DynamicType = ()>>() -> ApiResource {
        ApiResource::erase::<K>(&())
    }
    Some(match kind {
        "GatewayClass" => of::<GatewayClass>(),
        "Gateway" => of::<Gateway>(),
        "HTTPRoute" => of::<HttpRoute>(),
        "GRPCRoute" => of::<GrpcRoute>(),
        "TCPRoute" => of::<TcpRoute>(),
        "TLSRoute" => of::<TlsRoute>(),
        "ListenerSet" => of::<ListenerSet>(),
        "BackendTLSPolicy" => of::<BackendTlsPolicy>(),
        _ => return None,
    })
}

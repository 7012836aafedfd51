//! The status writer: patches the status subresource of objects whose computed status differs
//! from the stored one. Only our entries of shared lists are replaced (other controllers'
//! `parents` / `ancestors` entries are kept), unchanged conditions keep their
//! `lastTransitionTime`, and nothing is written when nothing changed — so a restart, which
//! recompiles the same cluster, writes nothing.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use strait_compile::ObjectStatus;
use strait_compile::status_merge::{keep_foreign_entries, keep_transition_times};
use strait_model::types::*;

use crate::sources::Sources;

/// Attempts per object when the stored object moved under us (409).
const CONFLICT_RETRIES: usize = 3;

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
}

impl StatusWriter {
    pub fn new(client: Client, controller_name: &str) -> StatusWriter {
        StatusWriter {
            client,
            controller_name: controller_name.to_string(),
        }
    }

    /// Brings every object's stored status to `statuses`, skipping the ones already there.
    pub async fn write(&self, sources: &Sources, statuses: &[ObjectStatus]) -> WriteReport {
        let mut report = WriteReport::default();
        for desired in statuses {
            let Some(resource) = api_resource(&desired.kind) else {
                continue;
            };
            let stored = sources.stored_status(&desired.kind, &desired.namespace, &desired.name);
            let Some(stored) = stored else {
                // Not cached (yet): the next change event brings it, and another pass.
                continue;
            };
            let status = self.merged(&stored.status, &desired.status);
            if status == stored.status {
                report.unchanged += 1;
                continue;
            }
            match self
                .patch(&resource, desired, status, stored.resource_version)
                .await
            {
                Ok(()) => report.written += 1,
                Err(e) => {
                    tracing::warn!(kind = %desired.kind, namespace = %desired.namespace, name = %desired.name, error = %e, "status not written");
                    report.failed.push(format!(
                        "{} {}/{}: {e}",
                        desired.kind, desired.namespace, desired.name
                    ));
                }
            }
        }
        report
    }

    fn merged(&self, stored: &Value, desired: &Value) -> Value {
        let mut status = desired.clone();
        keep_foreign_entries(stored, &mut status, &self.controller_name);
        keep_transition_times(stored, &mut status);
        status
    }

    /// Merge-patches `status` with the resourceVersion it was computed against; on a conflict
    /// re-reads the object, re-merges other controllers' entries and tries again.
    async fn patch(
        &self,
        resource: &ApiResource,
        desired: &ObjectStatus,
        mut status: Value,
        mut resource_version: Option<String>,
    ) -> Result<(), kube::Error> {
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
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < CONFLICT_RETRIES => {
                    let current = api.get_status(&desired.name).await?;
                    let stored = current.data.get("status").cloned().unwrap_or(Value::Null);
                    status = self.merged(&stored, &desired.status);
                    resource_version = current.metadata.resource_version.clone();
                    if status == stored {
                        return Ok(());
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

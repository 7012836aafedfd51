//! Indexes over the snapshot shared by every compile stage.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use strait_model::Snapshot;

use crate::CompileInput;

/// Label every namespace carries (set by the API server since Kubernetes 1.22); files read in
/// standalone mode may omit it, so it is always implied.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub(crate) struct Context<'a> {
    pub input: &'a CompileInput<'a>,
    pub snapshot: &'a Snapshot,
    services: Index<'a, &'a Service>,
    secrets: Index<'a, &'a Secret>,
    /// namespace → service name → slices labelled `kubernetes.io/service-name`.
    slices: Index<'a, Vec<&'a EndpointSlice>>,
    namespace_labels: HashMap<&'a str, &'a BTreeMap<String, String>>,
}

/// namespace → name → value (nested so lookups with short-lived keys need no allocation).
type Index<'a, V> = HashMap<&'a str, HashMap<&'a str, V>>;

fn index<'a, T: 'a>(
    items: impl Iterator<Item = &'a T>,
    meta: impl Fn(&'a T) -> &'a ObjectMeta,
) -> Index<'a, &'a T> {
    let mut map: Index<'a, &'a T> = HashMap::new();
    for item in items {
        let m = meta(item);
        map.entry(ns(m)).or_default().insert(name(m), item);
    }
    map
}

pub(crate) fn ns(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

pub(crate) fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

impl<'a> Context<'a> {
    pub(crate) fn new(input: &'a CompileInput<'a>) -> Self {
        let snapshot = input.snapshot;
        let services = index(snapshot.services.iter().map(Arc::as_ref), |s| &s.metadata);
        let secrets = index(snapshot.secrets.iter().map(Arc::as_ref), |s| &s.metadata);
        let mut slices: Index<'a, Vec<&'a EndpointSlice>> = HashMap::new();
        for slice in &snapshot.endpoint_slices {
            if let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
            {
                slices
                    .entry(ns(&slice.metadata))
                    .or_default()
                    .entry(svc.as_str())
                    .or_default()
                    .push(slice);
            }
        }
        let namespace_labels = snapshot
            .namespaces
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
            .collect();
        Context {
            input,
            snapshot,
            services,
            secrets,
            slices,
            namespace_labels,
        }
    }

    pub(crate) fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        self.services.get(namespace)?.get(name).copied()
    }

    pub(crate) fn secret(&self, namespace: &str, name: &str) -> Option<&'a Secret> {
        self.secrets.get(namespace)?.get(name).copied()
    }

    pub(crate) fn slices(&self, namespace: &str, service: &str) -> &[&'a EndpointSlice] {
        self.slices
            .get(namespace)
            .and_then(|m| m.get(service))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Labels of a namespace, including the implied name label.
    pub(crate) fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespace_labels
            .get(namespace)
            .map(|l| (*l).clone())
            .unwrap_or_default();
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| namespace.to_string());
        labels
    }

    pub(crate) fn now(&self) -> &str {
        self.input.now
    }
}

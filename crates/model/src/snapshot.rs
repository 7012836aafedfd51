//! The set of objects one compilation sees.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::types::*;

/// `kind namespace/name` of an object (namespace empty for cluster-scoped kinds).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Where an object was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based line of the document's first line.
    pub line: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Every object of the kinds Strait reads. Namespaced objects always carry a namespace
/// (`default` when the document had none, as `kubectl apply` would do).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub http_routes: Vec<Arc<HttpRoute>>,
    pub grpc_routes: Vec<Arc<GrpcRoute>>,
    pub tcp_routes: Vec<Arc<TcpRoute>>,
    pub tls_routes: Vec<Arc<TlsRoute>>,
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    pub listener_sets: Vec<Arc<ListenerSet>>,
    pub backend_tls_policies: Vec<Arc<BackendTlsPolicy>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub secrets: Vec<Arc<Secret>>,
    pub config_maps: Vec<Arc<ConfigMap>>,
    pub pods: Vec<Arc<Pod>>,
    /// Where each object came from, for error messages.
    pub sources: BTreeMap<ObjectKey, Source>,
}

/// Moves every object of `$other` whose key is not in `$target` yet into `$target`; returns the
/// keys that were already there.
macro_rules! absorb_lists {
    ($target:ident, $other:ident, $($field:ident => $kind:literal),* $(,)?) => {{
        let mut clashes = Vec::new();
        $(
            for object in $other.$field {
                let key = ObjectKey {
                    kind: $kind.to_string(),
                    namespace: object.metadata.namespace.clone().unwrap_or_default(),
                    name: object.metadata.name.clone().unwrap_or_default(),
                };
                if $target.sources.contains_key(&key) {
                    clashes.push(key);
                    continue;
                }
                if let Some(source) = $other.sources.get(&key) {
                    $target.sources.insert(key, source.clone());
                }
                $target.$field.push(object);
            }
        )*
        clashes
    }};
}

impl Snapshot {
    /// Adds the objects of `other` that this snapshot does not have yet (same kind, namespace and
    /// name); returns the keys of those it already had, which were left out.
    pub fn absorb(&mut self, other: Snapshot) -> Vec<ObjectKey> {
        let target = self;
        absorb_lists!(target, other,
            gateway_classes => "GatewayClass",
            gateways => "Gateway",
            http_routes => "HTTPRoute",
            grpc_routes => "GRPCRoute",
            tcp_routes => "TCPRoute",
            tls_routes => "TLSRoute",
            reference_grants => "ReferenceGrant",
            listener_sets => "ListenerSet",
            backend_tls_policies => "BackendTLSPolicy",
            services => "Service",
            endpoint_slices => "EndpointSlice",
            namespaces => "Namespace",
            secrets => "Secret",
            config_maps => "ConfigMap",
            pods => "Pod",
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn absorb_keeps_existing_objects_and_reports_clashes() {
        let first = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {v: '1'}}\n";
        let second = "\
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {v: '2'}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
";
        let mut snapshot = crate::load_str(first, Path::new("1.yaml")).snapshot;
        let clashes = snapshot.absorb(crate::load_str(second, Path::new("2.yaml")).snapshot);
        assert_eq!(clashes.len(), 1);
        assert_eq!(clashes[0].to_string(), "Namespace a");
        let names: Vec<_> = snapshot
            .namespaces
            .iter()
            .map(|n| n.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let labels = snapshot.namespaces[0].metadata.labels.as_ref().unwrap();
        assert_eq!(labels["v"], "1", "the object already there wins");
        assert_eq!(snapshot.sources.len(), 2);
    }
}

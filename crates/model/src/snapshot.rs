//! The set of objects one compilation sees.

use std::collections::BTreeMap;
use std::path::PathBuf;

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
    pub gateway_classes: Vec<GatewayClass>,
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub tcp_routes: Vec<TcpRoute>,
    pub tls_routes: Vec<TlsRoute>,
    pub reference_grants: Vec<ReferenceGrant>,
    pub listener_sets: Vec<ListenerSet>,
    pub backend_tls_policies: Vec<BackendTlsPolicy>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub namespaces: Vec<Namespace>,
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    pub pods: Vec<Pod>,
    /// Where each object came from, for error messages.
    pub sources: BTreeMap<ObjectKey, Source>,
}

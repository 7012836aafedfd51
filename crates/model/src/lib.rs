//! Input objects: the Kubernetes and Gateway API objects Strait reads, and loading them from
//! multi-document YAML.
//!
//! Gateway API types come from the `gateway-api` crate (experimental channel, a superset of
//! standard), core types from `k8s-openapi`. A bad document yields a [`LoadError`] naming
//! `file:line` and, when it got that far, `kind namespace/name`; the other documents still load.

mod load;
mod snapshot;

pub use load::{LoadError, LoadReport, load_dir, load_paths, load_str, yaml_files};
pub use snapshot::{ObjectKey, Snapshot, Source};

/// Re-exports so dependants name one set of types.
pub mod types {
    pub use gateway_api::backendtlspolicies::BackendTlsPolicy;
    pub use gateway_api::experimental::gatewayclasses::GatewayClass;
    pub use gateway_api::experimental::gateways::Gateway;
    pub use gateway_api::experimental::grpcroutes::GrpcRoute;
    pub use gateway_api::experimental::httproutes::HttpRoute;
    pub use gateway_api::experimental::listenersets::ListenerSet;
    pub use gateway_api::experimental::referencegrants::ReferenceGrant;
    pub use gateway_api::experimental::tcproutes::TcpRoute;
    pub use gateway_api::experimental::tlsroutes::TlsRoute;
    pub use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
    pub use k8s_openapi::api::discovery::v1::EndpointSlice;
}

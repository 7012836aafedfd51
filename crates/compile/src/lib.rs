//! PURE: turns a [`Snapshot`] into the data-plane [`ProxyConfig`] and the status of every object.
//!
//! No I/O, no clocks, no randomness: the same input always gives the same output, so it can be
//! tested with YAML fixtures and run identically in the controller and in standalone mode.
//!
//! SKELETON: the API below is the contract; the implementation is in progress.

use std::collections::BTreeMap;
use std::net::IpAddr;

use strait_config::{ObjectRef, ProxyConfig};
use strait_model::Snapshot;

/// The `spec.controllerName` of GatewayClasses Strait implements.
pub const CONTROLLER_NAME: &str = "strait.dev/gateway-controller";

/// What compile needs beyond the objects themselves.
#[derive(Clone, Debug)]
pub struct CompileInput<'a> {
    pub snapshot: &'a Snapshot,
    /// GatewayClass controllerName to accept (normally [`CONTROLLER_NAME`]).
    pub controller_name: &'a str,
    /// Addresses the infrastructure assigned to each Gateway (the provisioned Service's IPs, or
    /// standalone's loopback addresses). A Gateway with none is not Programmed.
    pub gateway_addresses: &'a BTreeMap<ObjectRef, Vec<IpAddr>>,
}

/// The status one object should have.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectStatus {
    /// `GatewayClass`, `Gateway`, `HTTPRoute`, ...
    pub kind: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// The whole `status` block as the API server would store it.
    pub status: serde_json::Value,
}

/// The result of one compilation.
#[derive(Clone, Debug, Default)]
pub struct CompileOutput {
    pub config: ProxyConfig,
    /// The status of every GatewayClass of ours, every Gateway of our classes, and every route
    /// with at least one parentRef to one of those Gateways (only our parent entries).
    pub statuses: Vec<ObjectStatus>,
}

/// Compiles a snapshot. Never fails: invalid input becomes status conditions.
pub fn compile(input: &CompileInput<'_>) -> CompileOutput {
    let _ = input;
    todo!("compile")
}

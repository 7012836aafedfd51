//! PURE: turns a [`Snapshot`] into the data-plane [`ProxyConfig`] and the status of every object.
//!
//! No I/O, no clocks, no randomness: the same input always gives the same output, so it can be
//! tested with YAML fixtures and run identically in the controller and in standalone mode.
//!
//! Pipeline: GatewayClasses ([`gateway_class`]) and the parameters of the proxies provisioned
//! for them ([`parameters`]) → Gateways and their listeners ([`gateway`],
//! [`listeners`], [`tls`]) → ListenerSet listeners merged into their Gateway ([`listener_sets`])
//! → HTTPRoutes and GRPCRoutes attached to listeners ([`routes`], [`attachment`],
//! [`http_route`], [`grpc_route`], [`backends`]) → the mesh: workloads, Services, waypoints and
//! the routes whose parents are Services ([`mesh`]) → statuses and config.

use std::collections::BTreeMap;
use std::net::IpAddr;

use strait_config::mesh::MeshConfig;
use strait_config::{ObjectRef, ProxyConfig};
use strait_model::Snapshot;

mod attachment;
mod backend_tls;
mod backends;
mod conditions;
mod context;
mod gateway;
mod gateway_class;
mod grpc_route;
mod hostnames;
mod http_route;
mod listener_sets;
mod listeners;
mod mesh;
mod namespaces;
pub mod parameters;
mod reference_grants;
mod routes;
mod status;
mod status_json;
pub mod status_merge;
mod tls;

pub use status_json::StatusJson;

/// The `spec.controllerName` of GatewayClasses Strait implements.
pub const CONTROLLER_NAME: &str = "strait.dev/gateway-controller";

/// Gateway API features reported in `GatewayClass.status.supportedFeatures` (sorted), so the
/// conformance suite knows which extended tests to run.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayBackendClientCertificate",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteRetry",
    "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRetryConnectionError",
    "HTTPRouteSchemeRedirect",
    "ListenerSet",
    "Mesh",
    "MeshClusterIPMatching",
    "MeshConsumerRoute",
    "MeshHTTPRouteBackendRequestHeaderModification",
    "MeshHTTPRouteNamedRouteRule",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteRewritePath",
    "MeshHTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// What compile needs beyond the objects themselves.
#[derive(Clone, Debug)]
pub struct CompileInput<'a> {
    /// Every object compile may read; nothing else is consulted.
    pub snapshot: &'a Snapshot,
    /// GatewayClass controllerName to accept (normally [`CONTROLLER_NAME`]).
    pub controller_name: &'a str,
    /// Addresses the infrastructure assigned to each Gateway (the provisioned Service's IPs, or
    /// standalone's loopback addresses). A Gateway with none is not Programmed.
    pub gateway_addresses: &'a BTreeMap<ObjectRef, Vec<IpAddr>>,
    /// RFC 3339 time written as every condition's `lastTransitionTime`. Compile is pure, so the
    /// caller supplies it (and keeps the previous time when a condition did not change).
    pub now: &'a str,
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
    pub status: StatusJson,
}

/// The result of one compilation.
#[derive(Clone, Debug, Default)]
pub struct CompileOutput {
    /// What ingress Gateways serve.
    pub config: ProxyConfig,
    /// What node proxies and waypoints serve (version 0: the producer versions it).
    pub mesh: MeshConfig,
    /// The status of every GatewayClass of ours, every Gateway of our classes, every ListenerSet
    /// whose parentRef names one of those Gateways, and every route with at least one parentRef
    /// to one of those Gateways, their ListenerSets or a Service (only our parent entries, one
    /// status per route whatever the parent kinds). Sorted by kind, namespace, name.
    pub statuses: Vec<ObjectStatus>,
    /// How the controller provisions each proxy.
    pub provisioning: Provisioning,
}

/// The parameters of every proxy the controller provisions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provisioning {
    /// Every Accepted Gateway, and its proxy's parameters; no other Gateway is provisioned.
    pub gateways: BTreeMap<ObjectRef, parameters::ProxyParameters>,
    /// Every waypoint to provision, and its proxy's parameters: those a Service is bound to and
    /// those declared by an Accepted Gateway of [`parameters::WAYPOINT_CLASS`].
    pub waypoints: BTreeMap<ObjectRef, parameters::ProxyParameters>,
}

/// Compiles a snapshot. Never fails: invalid input becomes status conditions.
pub fn compile(input: &CompileInput<'_>) -> CompileOutput {
    let ctx = context::Context::new(input);
    let mut statuses = Vec::new();

    let classes = gateway_class::evaluate(&ctx, &mut statuses);
    let mut gateways = gateway::evaluate(&ctx, &classes);

    let listener_sets = listener_sets::evaluate(&ctx, &mut gateways);
    let mut clusters = BTreeMap::new();
    let mut route_set = routes::RouteSet::new(ctx.snapshot);
    let mut route_parents = routes::RouteParents::default();
    routes::attach_all(
        &ctx,
        &mut route_set,
        &mut gateways,
        &mut clusters,
        &mut route_parents,
        classes.contains_key(parameters::WAYPOINT_CLASS),
    );
    let mesh = mesh::compile(&ctx, &route_set, &mut route_parents);
    let mut provisioning = Provisioning {
        gateways: BTreeMap::new(),
        waypoints: mesh::waypoint_gateways::evaluate(
            &ctx,
            classes.get(parameters::WAYPOINT_CLASS),
            &mesh,
            &mut statuses,
        ),
    };
    route_parents.into_statuses(&route_set, &mut statuses);
    listener_sets::statuses(&ctx, &listener_sets, &gateways, &mut statuses);

    let mut config = ProxyConfig {
        version: 0,
        gateways: Vec::new(),
        clusters,
    };
    for mut gw in gateways {
        statuses.push(status::gateway_status(&ctx, &gw));
        if let Some(parameters) = gw.provision.take() {
            provisioning.gateways.insert(gw.key.clone(), parameters);
        }
        if let Some(c) = gw.into_config() {
            config.gateways.push(c);
        }
    }
    backend_tls::apply(&ctx, &mut config, &mut statuses);
    statuses
        .sort_by(|a, b| (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name)));
    CompileOutput {
        config,
        mesh,
        statuses,
        provisioning,
    }
}

#[cfg(test)]
mod tests;

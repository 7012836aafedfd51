//! Route attachment shared by HTTPRoute and GRPCRoute: parentRefs → listeners, route statuses,
//! and the attached routes in the listener configs.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use strait_config::{
    AppProtocol, Cluster, ClusterKey, HttpRoute as RouteConfig, HttpRule, RouteRef,
};
use strait_model::types::{GrpcRoute, HttpRoute};

use crate::ObjectStatus;
use crate::attachment::{self, Attach};
use crate::conditions::{Condition, render};
use crate::context::{Context, name, ns};
use crate::gateway::GatewayState;
use crate::listeners::GATEWAY_GROUP;
use crate::tls::RefFailure;
use crate::{grpc_route, http_route};

/// A route translated once, before attachment.
pub(crate) struct Compiled {
    /// `HTTPRoute` or `GRPCRoute` (the `from` kind of ReferenceGrants).
    pub kind: &'static str,
    pub rules: Vec<HttpRule>,
    /// Set when the route uses something we cannot serve: it is then not Accepted anywhere.
    pub unsupported: Option<String>,
    /// First backend reference that failed to resolve.
    pub ref_failure: Option<RefFailure>,
    pub clusters: Vec<(ClusterKey, Cluster)>,
}

/// HTTPRoute and GRPCRoute parentRefs are distinct generated types of one shape.
macro_rules! borrow_parent_refs {
    ($route:expr) => {
        $route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .map(|p| ParentRef {
                group: p.group.as_deref(),
                kind: p.kind.as_deref(),
                name: &p.name,
                namespace: p.namespace.as_deref(),
                section_name: p.section_name.as_deref(),
                port: p.port,
            })
            .collect()
    };
}

impl Compiled {
    pub(crate) fn new(kind: &'static str) -> Self {
        Compiled {
            kind,
            rules: Vec::new(),
            unsupported: None,
            ref_failure: None,
            clusters: Vec::new(),
        }
    }
}

/// A parentRef independent of the route kind.
struct ParentRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    section_name: Option<&'a str>,
    port: Option<i32>,
}

#[derive(Clone, Copy)]
enum AnyRoute<'a> {
    Http(&'a HttpRoute),
    Grpc(&'a GrpcRoute),
}

impl<'a> AnyRoute<'a> {
    fn kind(self) -> &'static str {
        match self {
            AnyRoute::Http(_) => "HTTPRoute",
            AnyRoute::Grpc(_) => "GRPCRoute",
        }
    }

    fn meta(self) -> &'a ObjectMeta {
        match self {
            AnyRoute::Http(r) => &r.metadata,
            AnyRoute::Grpc(r) => &r.metadata,
        }
    }

    fn hostnames(self) -> &'a [String] {
        match self {
            AnyRoute::Http(r) => r.spec.hostnames.as_deref(),
            AnyRoute::Grpc(r) => r.spec.hostnames.as_deref(),
        }
        .unwrap_or(&[])
    }

    fn parent_refs(self) -> Vec<ParentRef<'a>> {
        match self {
            AnyRoute::Http(r) => borrow_parent_refs!(r),
            AnyRoute::Grpc(r) => borrow_parent_refs!(r),
        }
    }

    fn compile(self, ctx: &Context<'_>) -> Compiled {
        match self {
            AnyRoute::Http(r) => http_route::compile_route(ctx, r),
            AnyRoute::Grpc(r) => grpc_route::compile_route(ctx, r),
        }
    }
}

fn creation_timestamp(meta: &ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Attaches every HTTPRoute and GRPCRoute to the listeners of our Gateways, writing route
/// statuses and collecting the clusters of accepted routes.
pub(crate) fn attach_all(
    ctx: &Context<'_>,
    gateways: &mut [GatewayState<'_>],
    clusters: &mut BTreeMap<ClusterKey, Cluster>,
    statuses: &mut Vec<ObjectStatus>,
) {
    let mut routes: Vec<AnyRoute<'_>> = ctx
        .snapshot
        .http_routes
        .iter()
        .map(AnyRoute::Http)
        .chain(ctx.snapshot.grpc_routes.iter().map(AnyRoute::Grpc))
        .collect();
    routes.sort_by(|a, b| {
        (ns(a.meta()), name(a.meta()), a.kind()).cmp(&(ns(b.meta()), name(b.meta()), b.kind()))
    });
    // GRPCRoute backends speak HTTP/2 whatever the Service port says.
    let mut grpc_clusters = BTreeSet::new();
    for route in routes {
        let kind = route.kind();
        let meta = route.meta();
        let route_ns = ns(meta);
        let route_name = name(meta);
        let hostnames = route.hostnames();
        let mut compiled: Option<Compiled> = None;
        let mut parents = Vec::new();
        let mut attached_to: BTreeSet<(usize, usize)> = BTreeSet::new();
        let mut any_accepted = false;
        for pref in route.parent_refs() {
            let group = pref.group.unwrap_or(GATEWAY_GROUP);
            let parent_kind = pref.kind.unwrap_or("Gateway");
            let parent_ns = pref.namespace.unwrap_or(route_ns);
            let (gi, owner) = match (group == GATEWAY_GROUP, parent_kind) {
                (true, "Gateway") => match gateways
                    .iter()
                    .position(|g| g.key.namespace == parent_ns && g.key.name == pref.name)
                {
                    Some(gi) => (gi, None),
                    None => continue,
                },
                (true, "ListenerSet") => {
                    match crate::listener_sets::find_parent(gateways, parent_ns, pref.name) {
                        Some((gi, owner)) => (gi, Some(owner)),
                        None => continue,
                    }
                }
                _ => continue,
            };
            let c = compiled.get_or_insert_with(|| route.compile(ctx));
            let result = match &c.unsupported {
                Some(msg) => Attach::Rejected("UnsupportedValue", msg.clone()),
                None => attachment::attach(
                    ctx,
                    &gateways[gi],
                    owner.as_ref(),
                    kind,
                    route_ns,
                    pref.section_name,
                    pref.port,
                    hostnames,
                ),
            };
            let accepted = match result {
                Attach::Accepted(listeners) => {
                    any_accepted = true;
                    for (li, effective) in listeners {
                        if !attached_to.insert((gi, li)) {
                            continue;
                        }
                        let listener = &mut gateways[gi].listeners[li];
                        listener.attached_routes += 1;
                        listener.http_routes.push(RouteConfig {
                            route: RouteRef {
                                kind: kind.into(),
                                namespace: route_ns.into(),
                                name: route_name.into(),
                            },
                            creation_timestamp: creation_timestamp(meta),
                            hostnames: effective,
                            rules: c.rules.clone(),
                        });
                    }
                    Condition::new("Accepted", true, "Accepted", "Route accepted")
                }
                Attach::Rejected(reason, msg) => Condition::new("Accepted", false, reason, msg),
            };
            let resolved = match &c.ref_failure {
                Some(f) => Condition::new("ResolvedRefs", false, f.reason, f.message.clone()),
                None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "References resolved"),
            };
            let mut parent_ref = json!({
                "group": GATEWAY_GROUP,
                "kind": parent_kind,
                "namespace": parent_ns,
                "name": pref.name,
            });
            if let Some(map) = parent_ref.as_object_mut() {
                if let Some(s) = pref.section_name {
                    map.insert("sectionName".into(), json!(s));
                }
                if let Some(p) = pref.port {
                    map.insert("port".into(), json!(p));
                }
            }
            parents.push(json!({
                "parentRef": parent_ref,
                "controllerName": ctx.input.controller_name,
                "conditions": render(&[accepted, resolved], meta.generation, ctx.now()),
            }));
        }
        if let (true, Some(c)) = (any_accepted, compiled) {
            for (key, cluster) in c.clusters {
                if kind == "GRPCRoute" {
                    grpc_clusters.insert(key.clone());
                }
                clusters.insert(key, cluster);
            }
        }
        if !parents.is_empty() {
            statuses.push(ObjectStatus {
                kind: kind.into(),
                namespace: route_ns.into(),
                name: route_name.into(),
                status: json!({ "parents": parents }),
            });
        }
    }
    for key in grpc_clusters {
        if let Some(c) = clusters.get_mut(&key) {
            c.protocol = AppProtocol::H2c;
        }
    }
}

//! Route attachment shared by HTTPRoute and GRPCRoute: parentRefs → listeners, route statuses,
//! and the attached routes in the listener configs.
//!
//! Routes are gathered once in a [`RouteSet`] and translated at most once, whichever parents
//! (Gateways, ListenerSets, mesh Services) need them. Each parent kind adds its `status.parents`
//! entries to one [`RouteParents`], so a route with Gateway and Service parents still gets a
//! single status.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value, json};
use strait_config::{
    AppProtocol, Cluster, ClusterKey, HttpRoute as RouteConfig, HttpRule, RouteRef,
};
use strait_model::Snapshot;
use strait_model::types::{GrpcRoute, HttpRoute};

use crate::ObjectStatus;
use crate::StatusJson;
use crate::attachment::{self, Attach};
use crate::backends::ServiceBackend;
use crate::conditions::{Condition, render};
use crate::context::{Context, name, ns};
use crate::gateway::GatewayState;
use crate::listeners::GATEWAY_GROUP;
use crate::parameters::WAYPOINT_CLASS;
use crate::tls::RefFailure;
use crate::{grpc_route, http_route};

/// The kind of parents a translation serves. They differ in one rule only: a backendRef to
/// another namespace needs a ReferenceGrant for Gateway parents, not for mesh (Service) parents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Gateway,
    Mesh,
}

/// A route translated once per [`Scope`], before attachment.
pub(crate) struct Compiled<'a> {
    /// `HTTPRoute` or `GRPCRoute` (the `from` kind of ReferenceGrants).
    pub kind: &'static str,
    /// The parents this translation serves.
    pub scope: Scope,
    pub rules: Vec<HttpRule>,
    /// Set when the route uses something we cannot serve: it is then not Accepted anywhere.
    pub unsupported: Option<String>,
    /// First backend reference that failed to resolve.
    pub ref_failure: Option<RefFailure>,
    /// The Service ports its backends resolved to; their clusters are built when the route is
    /// accepted, once per cluster whatever the number of routes sending to it.
    pub clusters: Vec<(ClusterKey, ServiceBackend<'a>)>,
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

impl Compiled<'_> {
    pub(crate) fn new(kind: &'static str, scope: Scope) -> Self {
        Compiled {
            kind,
            scope,
            rules: Vec::new(),
            unsupported: None,
            ref_failure: None,
            clusters: Vec::new(),
        }
    }
}

/// A parentRef independent of the route kind.
pub(crate) struct ParentRef<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub section_name: Option<&'a str>,
    pub port: Option<i32>,
}

/// An HTTPRoute or a GRPCRoute.
#[derive(Clone, Copy)]
pub(crate) enum AnyRoute<'a> {
    Http(&'a HttpRoute),
    Grpc(&'a GrpcRoute),
}

impl<'a> AnyRoute<'a> {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            AnyRoute::Http(_) => "HTTPRoute",
            AnyRoute::Grpc(_) => "GRPCRoute",
        }
    }

    pub(crate) fn meta(self) -> &'a ObjectMeta {
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

    pub(crate) fn parent_refs(self) -> Vec<ParentRef<'a>> {
        match self {
            AnyRoute::Http(r) => borrow_parent_refs!(r),
            AnyRoute::Grpc(r) => borrow_parent_refs!(r),
        }
    }

    fn compile(self, ctx: &Context<'a>, scope: Scope) -> Compiled<'a> {
        match self {
            AnyRoute::Http(r) => http_route::compile_route(ctx, r, scope),
            AnyRoute::Grpc(r) => grpc_route::compile_route(ctx, r, scope),
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

/// Every HTTPRoute and GRPCRoute of the snapshot, ordered by namespace, name and kind, each
/// translated on first use only (once per [`Scope`]).
pub(crate) struct RouteSet<'a> {
    routes: Vec<AnyRoute<'a>>,
    gateway: Vec<OnceCell<Compiled<'a>>>,
    mesh: Vec<OnceCell<Compiled<'a>>>,
}

impl<'a> RouteSet<'a> {
    pub(crate) fn new(snapshot: &'a Snapshot) -> Self {
        let mut routes: Vec<AnyRoute<'a>> = snapshot
            .http_routes
            .iter()
            .map(|route| AnyRoute::Http(route))
            .chain(
                snapshot
                    .grpc_routes
                    .iter()
                    .map(|route| AnyRoute::Grpc(route)),
            )
            .collect();
        routes.sort_by(|a, b| {
            (ns(a.meta()), name(a.meta()), a.kind()).cmp(&(ns(b.meta()), name(b.meta()), b.kind()))
        });
        let cells = || routes.iter().map(|_| OnceCell::new()).collect();
        RouteSet {
            gateway: cells(),
            mesh: cells(),
            routes,
        }
    }

    /// `(index, route)` in order; the index names the route in [`RouteParents`].
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, AnyRoute<'a>)> + '_ {
        self.routes.iter().copied().enumerate()
    }

    /// Route `index`.
    pub(crate) fn get(&self, index: usize) -> Option<AnyRoute<'a>> {
        self.routes.get(index).copied()
    }

    /// Route `index` translated for parents of `scope`.
    pub(crate) fn compiled(
        &self,
        ctx: &Context<'a>,
        index: usize,
        scope: Scope,
    ) -> Option<&Compiled<'a>> {
        let route = *self.routes.get(index)?;
        let cells = match scope {
            Scope::Gateway => &self.gateway,
            Scope::Mesh => &self.mesh,
        };
        Some(cells.get(index)?.get_or_init(|| route.compile(ctx, scope)))
    }

    /// Moves the rules out of route `index`'s Gateway translation, for the last listener it
    /// attaches to (the ones before get copies). Nothing reads those rules afterwards.
    fn take_gateway_rules(&mut self, index: usize) -> Vec<HttpRule> {
        self.gateway
            .get_mut(index)
            .and_then(OnceCell::get_mut)
            .map(|compiled| std::mem::take(&mut compiled.rules))
            .unwrap_or_default()
    }
}

/// The route as the route engine receives it, with the given effective hostnames and its
/// translated rules.
pub(crate) fn route_config(
    route: AnyRoute<'_>,
    hostnames: Vec<String>,
    rules: Vec<HttpRule>,
) -> RouteConfig {
    let meta = route.meta();
    RouteConfig {
        route: RouteRef {
            kind: route.kind().into(),
            namespace: ns(meta).into(),
            name: name(meta).into(),
        },
        creation_timestamp: creation_timestamp(meta),
        hostnames,
        rules,
    }
}

/// `ResolvedRefs` of a translated route, the same for every parent.
pub(crate) fn resolved_refs(compiled: &Compiled<'_>) -> Condition {
    match &compiled.ref_failure {
        Some(f) => Condition::new("ResolvedRefs", false, f.reason, f.message.clone()),
        None => Condition::new("ResolvedRefs", true, "ResolvedRefs", "References resolved"),
    }
}

/// `status.parents` entries by route index, each tagged with the index of the parentRef it
/// answers so entries of different parent kinds keep the order of `spec.parentRefs`. Each is
/// kept as JSON text from the moment it is made: as `Value` trees, 10,000 routes' entries took
/// 73 MB before the last of them was made.
#[derive(Default)]
pub(crate) struct RouteParents(BTreeMap<usize, Vec<(usize, String)>>);

impl RouteParents {
    /// Adds the entry answering parentRef `parent_index` of route `route`, rendering
    /// `conditions` for the route's generation.
    pub(crate) fn push(
        &mut self,
        ctx: &Context<'_>,
        route: (usize, AnyRoute<'_>),
        parent_index: usize,
        parent_ref: Value,
        conditions: &[Condition],
    ) {
        // Built by hand: `json!` would deep-copy `parent_ref` and the rendered conditions
        // through serde, the costliest part of compiling thousands of routes.
        let mut entry = Map::new();
        entry.insert("parentRef".into(), parent_ref);
        entry.insert(
            "controllerName".into(),
            Value::from(ctx.input.controller_name),
        );
        entry.insert(
            "conditions".into(),
            render(conditions, route.1.meta().generation, ctx.now()),
        );
        let entry = Value::Object(entry).to_string();
        self.0
            .entry(route.0)
            .or_default()
            .push((parent_index, entry));
    }

    /// One status per route that has at least one entry.
    pub(crate) fn into_statuses(self, routes: &RouteSet<'_>, statuses: &mut Vec<ObjectStatus>) {
        for (index, mut entries) in self.0 {
            let Some(route) = routes.routes.get(index) else {
                continue;
            };
            entries.sort_by_key(|(parent_index, _)| *parent_index);
            statuses.push(ObjectStatus {
                kind: route.kind().into(),
                namespace: ns(route.meta()).into(),
                name: name(route.meta()).into(),
                status: StatusJson::of_parents(entries.iter().map(|(_, e)| e.as_str())),
            });
        }
    }
}

/// Attaches every HTTPRoute and GRPCRoute to the listeners of our Gateways, adding the
/// routes' Gateway and ListenerSet parent entries and collecting the clusters of accepted routes.
/// With `waypoint_class` (the waypoint class is ours and accepted), a parentRef to a Gateway of
/// that class is refused with a parent entry that says where such routes go.
pub(crate) fn attach_all<'a>(
    ctx: &Context<'a>,
    routes: &mut RouteSet<'a>,
    gateways: &mut [GatewayState<'_>],
    clusters: &mut BTreeMap<ClusterKey, Cluster>,
    parents: &mut RouteParents,
    waypoint_class: bool,
) {
    // GRPCRoute backends speak HTTP/2 whatever the Service port says.
    let mut grpc_clusters = BTreeSet::new();
    for index in 0..routes.routes.len() {
        let route = routes.routes[index];
        let kind = route.kind();
        let meta = route.meta();
        let route_ns = ns(meta);
        let hostnames = route.hostnames();
        // (gateway, listener, effective hostnames) the route joins, each listener once, filled
        // once all its parentRefs are judged.
        let mut placements: Vec<(usize, usize, Vec<String>)> = Vec::new();
        let mut any_accepted = false;
        for (parent_index, pref) in route.parent_refs().into_iter().enumerate() {
            let group = pref.group.unwrap_or(GATEWAY_GROUP);
            let parent_kind = pref.kind.unwrap_or("Gateway");
            let parent_ns = pref.namespace.unwrap_or(route_ns);
            // Built only for the parentRefs that get an entry from us.
            let parent_ref = || {
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
                parent_ref
            };
            let (gi, owner) = match (group == GATEWAY_GROUP, parent_kind) {
                (true, "Gateway") => match gateways
                    .iter()
                    .position(|g| g.key.namespace == parent_ns && g.key.name == pref.name)
                {
                    Some(gi) => (gi, None),
                    None if waypoint_class && is_waypoint(ctx, parent_ns, pref.name) => {
                        if let Some(c) = routes.compiled(ctx, index, Scope::Gateway) {
                            let refused = Condition::new(
                                "Accepted",
                                false,
                                "NotAllowedByListeners",
                                format!(
                                    "Gateway {parent_ns}/{} is a waypoint: routes reach it \
                                     through the Services they name as parents (group \"\", \
                                     kind Service)",
                                    pref.name
                                ),
                            );
                            parents.push(
                                ctx,
                                (index, route),
                                parent_index,
                                parent_ref(),
                                &[refused, resolved_refs(c)],
                            );
                        }
                        continue;
                    }
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
            let Some(c) = routes.compiled(ctx, index, Scope::Gateway) else {
                continue;
            };
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
                        if !placements.iter().any(|&(g, l, _)| (g, l) == (gi, li)) {
                            placements.push((gi, li, effective));
                        }
                    }
                    Condition::new("Accepted", true, "Accepted", "Route accepted")
                }
                Attach::Rejected(reason, msg) => Condition::new("Accepted", false, reason, msg),
            };
            parents.push(
                ctx,
                (index, route),
                parent_index,
                parent_ref(),
                &[accepted, resolved_refs(c)],
            );
        }
        if !any_accepted {
            continue;
        }
        let Some(c) = routes.compiled(ctx, index, Scope::Gateway) else {
            continue;
        };
        merge_clusters(ctx, &c.clusters, kind, clusters, &mut grpc_clusters);
        // Each listener but the last gets a copy of the rules; the last gets the rules.
        let last = placements.pop();
        for (gi, li, effective) in placements {
            join(
                gateways,
                gi,
                li,
                route_config(route, effective, c.rules.clone()),
            );
        }
        if let Some((gi, li, effective)) = last {
            let rules = routes.take_gateway_rules(index);
            join(gateways, gi, li, route_config(route, effective, rules));
        }
    }
    for key in grpc_clusters {
        if let Some(c) = clusters.get_mut(&key) {
            c.protocol = AppProtocol::H2c;
        }
    }
}

/// Whether Gateway `namespace/name` is of the waypoint class.
fn is_waypoint(ctx: &Context<'_>, namespace: &str, gateway: &str) -> bool {
    ctx.snapshot.gateways.iter().any(|g| {
        g.spec.gateway_class_name == WAYPOINT_CLASS
            && ns(&g.metadata) == namespace
            && name(&g.metadata) == gateway
    })
}

/// Adds an accepted route to listener `li` of Gateway `gi`.
fn join(gateways: &mut [GatewayState<'_>], gi: usize, li: usize, route: RouteConfig) {
    let listener = &mut gateways[gi].listeners[li];
    listener.attached_routes += 1;
    listener.http_routes.push(route);
}

/// Adds the clusters of a route's backends to `clusters`, noting those of GRPCRoutes in
/// `grpc_clusters`. A cluster depends only on its key (the Service port), so each is built
/// once however many routes send to it.
pub(crate) fn merge_clusters(
    ctx: &Context<'_>,
    route_clusters: &[(ClusterKey, ServiceBackend<'_>)],
    kind: &str,
    clusters: &mut BTreeMap<ClusterKey, Cluster>,
    grpc_clusters: &mut BTreeSet<ClusterKey>,
) {
    for (key, backend) in route_clusters {
        if kind == "GRPCRoute" && !grpc_clusters.contains(key) {
            grpc_clusters.insert(key.clone());
        }
        if !clusters.contains_key(key) {
            clusters.insert(key.clone(), backend.cluster(ctx, key));
        }
    }
}

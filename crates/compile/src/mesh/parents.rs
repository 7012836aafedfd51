//! Route parentRefs to Services (GAMMA): which Service ports each one applies to, or why it is
//! not accepted.

use serde_json::{Value, json};
use strait_config::ObjectRef;

use super::services::{self, Port};
use crate::context::{Context, name, ns};
use crate::routes::{AnyRoute, ParentRef, RouteSet, Scope};

/// A route's parentRef to a Service, resolved.
pub(crate) struct ServiceParent {
    /// Index of the route in the [`RouteSet`].
    pub route: usize,
    /// Index of the parentRef in `spec.parentRefs`.
    pub parent_index: usize,
    pub service: ObjectRef,
    /// The parentRef as written, for `status.parents`.
    pub parent_ref: Value,
    /// The Service ports the route applies to (never empty), or `(reason, message)` of
    /// Accepted=False.
    pub outcome: Result<Vec<u16>, (&'static str, String)>,
}

/// Whether a parentRef names a Service (core group, kind Service).
fn is_service(pref: &ParentRef<'_>) -> bool {
    pref.group == Some("") && pref.kind == Some("Service")
}

/// Resolves every Service parentRef of every route, in route order then parentRef order.
pub(crate) fn resolve<'a>(ctx: &Context<'a>, routes: &RouteSet<'a>) -> Vec<ServiceParent> {
    let mut out = Vec::new();
    for (index, route) in routes.iter() {
        for (parent_index, pref) in route.parent_refs().into_iter().enumerate() {
            if !is_service(&pref) {
                continue;
            }
            let service = ObjectRef {
                namespace: pref.namespace.unwrap_or(ns(route.meta())).into(),
                name: pref.name.into(),
            };
            let unsupported = routes
                .compiled(ctx, index, Scope::Mesh)
                .and_then(|c| c.unsupported.clone());
            let outcome = match unsupported {
                Some(msg) => Err(("UnsupportedValue", msg)),
                None => ports_for(ctx, route, &service, &pref),
            };
            out.push(ServiceParent {
                route: index,
                parent_index,
                parent_ref: written(&pref),
                service,
                outcome,
            });
        }
    }
    out
}

/// The parentRef as the user wrote it: optional fields only when given.
fn written(pref: &ParentRef<'_>) -> Value {
    let mut v = json!({"group": "", "kind": "Service", "name": pref.name});
    if let Some(map) = v.as_object_mut() {
        if let Some(n) = pref.namespace {
            map.insert("namespace".into(), json!(n));
        }
        if let Some(s) = pref.section_name {
            map.insert("sectionName".into(), json!(s));
        }
        if let Some(p) = pref.port {
            map.insert("port".into(), json!(p));
        }
    }
    v
}

/// The HTTP ports of `service` that `pref` selects: the port numbered `port`, the port named
/// `sectionName`, both when both are given, every port when neither is.
fn ports_for(
    ctx: &Context<'_>,
    route: AnyRoute<'_>,
    service: &ObjectRef,
    pref: &ParentRef<'_>,
) -> Result<Vec<u16>, (&'static str, String)> {
    let Some(svc) = ctx.service(&service.namespace, &service.name) else {
        return Err(("NoMatchingParent", format!("Service {service} not found")));
    };
    let all = services::ports(svc);
    let selected: Vec<&Port<'_>> = all
        .iter()
        .filter(|p| {
            pref.port.is_none_or(|n| n == i32::from(p.port))
                && pref.section_name.is_none_or(|s| p.name == Some(s))
        })
        .collect();
    if selected.is_empty() {
        let mut what = String::new();
        if let Some(s) = pref.section_name {
            what.push_str(&format!(" named {s}"));
        }
        if let Some(p) = pref.port {
            what.push_str(&format!(" numbered {p}"));
        }
        let what = if what.is_empty() {
            " at all".to_string()
        } else {
            what
        };
        return Err((
            "NoMatchingParent",
            format!("Service {service} has no TCP port{what}"),
        ));
    }
    let http: Vec<u16> = selected
        .iter()
        .filter(|p| p.protocol.is_http())
        .map(|p| p.port)
        .collect();
    if http.is_empty() {
        let numbers: Vec<String> = selected.iter().map(|p| p.port.to_string()).collect();
        return Err((
            "UnsupportedValue",
            format!(
                "{} {}/{}: Service {service} port {} is not HTTP (set appProtocol, or a port \
                 name starting with http, http2, h2c, grpc or ws)",
                route.kind(),
                ns(route.meta()),
                name(route.meta()),
                numbers.join(", "),
            ),
        ));
    }
    Ok(http)
}

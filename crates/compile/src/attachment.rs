//! Whether a route's parentRef attaches to a Gateway's listeners, and with which hostnames.

use strait_config::ObjectRef;

use crate::context::Context;
use crate::gateway::GatewayState;
use crate::hostnames;
use crate::namespaces::AllowedNamespaces;

/// Outcome of one parentRef.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Attach {
    /// `(listener index, effective hostnames)` of every listener the route attaches to.
    Accepted(Vec<(usize, Vec<String>)>),
    /// Accepted=False with this reason and message.
    Rejected(&'static str, String),
}

/// Attaches a route of `route_kind` in `route_ns` with `hostnames` to the listeners selected by
/// `section_name`/`port`. All of: section/port match, kind allowed, namespace allowed, hostnames
/// intersect. The reason reports the first failing step over all candidate listeners.
/// `owner` selects the listeners of one ListenerSet instead of the Gateway's own (`None`);
/// `Same` then means the ListenerSet's namespace.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attach(
    ctx: &Context<'_>,
    gw: &GatewayState<'_>,
    owner: Option<&ObjectRef>,
    route_kind: &str,
    route_ns: &str,
    section_name: Option<&str>,
    port: Option<i32>,
    hostnames: &[String],
) -> Attach {
    let parent = match owner {
        Some(o) => format!("ListenerSet {o}"),
        None => format!("Gateway {}", gw.key),
    };
    let candidates: Vec<usize> = gw
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l.owner.as_ref() == owner
                && section_name.is_none_or(|s| s == l.name)
                && port.is_none_or(|p| p == i32::from(l.port))
        })
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        let mut what = String::new();
        if let Some(s) = section_name {
            what.push_str(&format!(" sectionName {s}"));
        }
        if let Some(p) = port {
            what.push_str(&format!(" port {p}"));
        }
        return Attach::Rejected(
            "NoMatchingParent",
            format!("{parent}: no listener matches{what}"),
        );
    }
    let gw_ns = owner.map_or(gw.key.namespace.as_str(), |o| o.namespace.as_str());
    let allowed: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| {
            let l = &gw.listeners[i];
            l.routable
                && l.supported_kinds.contains(&route_kind)
                && match &l.allowed_namespaces {
                    AllowedNamespaces::Same => route_ns == gw_ns,
                    AllowedNamespaces::All => true,
                    AllowedNamespaces::Selector(s) => s.matches(&ctx.namespace_labels(route_ns)),
                }
        })
        .collect();
    if allowed.is_empty() {
        return Attach::Rejected(
            "NotAllowedByListeners",
            format!("{parent}: no listener allows {route_kind} from namespace {route_ns}"),
        );
    }
    let attached: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .filter_map(|i| {
            hostnames::intersect(gw.listeners[i].hostname.as_deref(), hostnames).map(|h| (i, h))
        })
        .collect();
    if attached.is_empty() {
        return Attach::Rejected(
            "NoMatchingListenerHostname",
            format!("{parent}: no listener hostname intersects the route hostnames"),
        );
    }
    Attach::Accepted(attached)
}

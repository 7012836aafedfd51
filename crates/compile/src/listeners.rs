//! Gateway listener validation: protocol, conflicts, route kinds, namespaces, certificates.

use std::collections::BTreeMap;

use strait_config::{HttpRoute, ListenerProtocol, ListenerTls, ObjectRef};
use strait_model::types::Gateway;

use crate::conditions::Condition;
use crate::context::Context;
use crate::namespaces::{AllowedNamespaces, selector_from};
use crate::tls;

pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Route kinds an HTTP/HTTPS listener can carry.
const HTTP_ROUTE_KINDS: &[&str] = &["HTTPRoute", "GRPCRoute"];

/// One listener after validation, collecting attached routes during route attachment.
#[derive(Clone, Debug)]
pub(crate) struct ListenerState {
    pub name: String,
    pub port: u16,
    pub protocol: Option<ListenerProtocol>,
    pub hostname: Option<String>,
    /// Routes may attach (protocol supported, no conflict).
    pub routable: bool,
    /// Whether the data plane can serve it (routable and, for HTTPS, at least one certificate).
    pub servable: bool,
    /// Route kinds accepted (group is always gateway.networking.k8s.io).
    pub supported_kinds: Vec<&'static str>,
    pub allowed_namespaces: AllowedNamespaces,
    pub tls: Option<ListenerTls>,
    pub conditions: Vec<Condition>,
    pub attached_routes: u32,
    pub http_routes: Vec<HttpRoute>,
    /// The ListenerSet that declared this listener; `None` for the Gateway's own listeners.
    pub owner: Option<ObjectRef>,
}

fn protocol_of(p: &str) -> Option<ListenerProtocol> {
    match p {
        "HTTP" => Some(ListenerProtocol::Http),
        "HTTPS" => Some(ListenerProtocol::Https),
        _ => None,
    }
}

/// Validates every listener of a Gateway, in spec order.
pub(crate) fn evaluate(ctx: &Context<'_>, gateway: &Gateway) -> Vec<ListenerState> {
    evaluate_as(ctx, gateway, "Gateway")
}

/// [`evaluate`] for listeners declared by an object of `from_kind` (the ReferenceGrant `from`
/// kind of their certificate references), e.g. a ListenerSet presented as a Gateway.
pub(crate) fn evaluate_as(
    ctx: &Context<'_>,
    gateway: &Gateway,
    from_kind: &str,
) -> Vec<ListenerState> {
    // Port → protocol of the first listener on it; later listeners speaking another protocol
    // conflict. Same (port, protocol, hostname) twice is a hostname conflict.
    let mut port_protocol: BTreeMap<i32, &str> = BTreeMap::new();
    let mut seen_hosts: BTreeMap<(i32, &str, &str), ()> = BTreeMap::new();
    let mut out = Vec::new();
    for l in &gateway.spec.listeners {
        let protocol = protocol_of(&l.protocol);
        let first = *port_protocol.entry(l.port).or_insert(l.protocol.as_str());
        let host_key = (
            l.port,
            l.protocol.as_str(),
            l.hostname.as_deref().unwrap_or(""),
        );
        let conflict = if first != l.protocol {
            Some("ProtocolConflict")
        } else if seen_hosts.insert(host_key, ()).is_some() {
            Some("HostnameConflict")
        } else {
            None
        };
        let port = u16::try_from(l.port).unwrap_or(0);

        // Route kinds.
        let mut kinds_error = None;
        let supported_kinds: Vec<&'static str> = match protocol {
            None => Vec::new(),
            Some(_) => match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
                None => HTTP_ROUTE_KINDS.to_vec(),
                Some(kinds) => {
                    let mut list = Vec::new();
                    for k in kinds {
                        let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                        match HTTP_ROUTE_KINDS.iter().find(|s| **s == k.kind) {
                            Some(s) if group == GATEWAY_GROUP => {
                                if !list.contains(s) {
                                    list.push(*s);
                                }
                            }
                            _ => {
                                kinds_error.get_or_insert_with(|| {
                                    format!(
                                        "listener {}: route kind {group}/{} is not supported",
                                        l.name, k.kind
                                    )
                                });
                            }
                        }
                    }
                    list
                }
            },
        };

        let allowed_namespaces = match l
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
        {
            None => AllowedNamespaces::Same,
            Some(n) => {
                use gateway_api::experimental::gateways::GatewayListenersAllowedRoutesNamespacesFrom as F;
                match n.from {
                    None | Some(F::Same) => AllowedNamespaces::Same,
                    Some(F::All) => AllowedNamespaces::All,
                    Some(F::Selector) => {
                        AllowedNamespaces::Selector(selector_from!(n.selector.as_ref()))
                    }
                }
            }
        };

        // Certificates.
        let mut tls_state = None;
        let mut cert_error = None;
        let mut frontend_error = None;
        let mut no_valid_ca = false;
        if protocol == Some(ListenerProtocol::Https) {
            let refs = l
                .tls
                .as_ref()
                .and_then(|t| t.certificate_refs.as_deref())
                .unwrap_or(&[]);
            let (certs, failure) =
                tls::resolve_certificates_as(ctx, gateway, from_kind, &l.name, refs);
            cert_error = failure;
            let mut client_validation = None;
            if let Some(fv) = tls::frontend_validation(ctx, gateway, l.port) {
                no_valid_ca = fv.validation.is_none();
                frontend_error = fv.failure;
                client_validation = fv.validation;
            }
            tls_state = Some(ListenerTls {
                certificates: certs,
                client_validation,
            });
        }

        let mut conditions = Vec::new();
        let routable;
        if protocol.is_none() {
            routable = false;
            let msg = format!(
                "listener {}: protocol {} is not supported",
                l.name, l.protocol
            );
            conditions.push(Condition::new(
                "Accepted",
                false,
                "UnsupportedProtocol",
                msg.clone(),
            ));
            conditions.push(Condition::new("Programmed", false, "Invalid", msg));
            conditions.push(Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "References resolved",
            ));
            conditions.push(Condition::new(
                "Conflicted",
                false,
                "NoConflicts",
                "No conflicts",
            ));
        } else if let Some(reason) = conflict {
            routable = false;
            let msg = format!(
                "listener {}: conflicts with another listener on port {}",
                l.name, l.port
            );
            conditions.push(Condition::new("Accepted", false, reason, msg.clone()));
            conditions.push(Condition::new("Programmed", false, reason, msg.clone()));
            conditions.push(Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "References resolved",
            ));
            conditions.push(Condition::new("Conflicted", true, reason, msg));
        } else {
            routable = !no_valid_ca;
            if no_valid_ca {
                conditions.push(Condition::new(
                    "Accepted",
                    false,
                    "NoValidCACertificate",
                    format!(
                        "listener {}: no valid CA certificate for client validation",
                        l.name
                    ),
                ));
            } else {
                conditions.push(Condition::new(
                    "Accepted",
                    true,
                    "Accepted",
                    "Listener accepted",
                ));
            }
            let refs_error = kinds_error
                .map(|m| ("InvalidRouteKinds", m))
                .or(cert_error.map(|e| (e.reason, e.message)))
                .or(frontend_error.map(|e| (e.reason, e.message)));
            match refs_error {
                Some((reason, msg)) => {
                    conditions.push(Condition::new("Programmed", false, "Invalid", msg.clone()));
                    conditions.push(Condition::new("ResolvedRefs", false, reason, msg));
                }
                None => {
                    conditions.push(Condition::new(
                        "Programmed",
                        true,
                        "Programmed",
                        "Listener programmed",
                    ));
                    conditions.push(Condition::new(
                        "ResolvedRefs",
                        true,
                        "ResolvedRefs",
                        "References resolved",
                    ));
                }
            }
            conditions.push(Condition::new(
                "Conflicted",
                false,
                "NoConflicts",
                "No conflicts",
            ));
        }
        let servable = routable
            && port != 0
            && tls_state
                .as_ref()
                .is_none_or(|t| !t.certificates.is_empty());
        out.push(ListenerState {
            name: l.name.clone(),
            port,
            protocol,
            hostname: l.hostname.clone().filter(|h| !h.is_empty()),
            routable,
            servable,
            supported_kinds,
            allowed_namespaces,
            tls: tls_state,
            conditions,
            attached_routes: 0,
            http_routes: Vec::new(),
            owner: None,
        });
    }
    out
}

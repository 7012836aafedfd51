//! Gateways of the waypoint class ([`WAYPOINT_CLASS`]): a waypoint declared by hand.
//!
//! A namespace's waypoint needs no object: the controller provisions it as soon as a Service
//! is bound to it. A Gateway of the waypoint class with the waypoint's name is how a user
//! gives that one waypoint its own labels, annotations and parameters
//! (`spec.infrastructure`), or has it provisioned before any Service is bound to it. Such a
//! Gateway is not an ingress Gateway: routes name Services, not it, and the waypoint serves
//! HBONE on 15008 whatever its listeners say, so a listener that says anything else is
//! reported as not valid.

use std::collections::BTreeMap;

use serde_json::json;
use strait_config::ObjectRef;
use strait_config::mesh::MeshConfig;
use strait_model::types::Gateway;

use super::workloads;
use crate::ObjectStatus;
use crate::StatusJson;
use crate::conditions::{Condition, render};
use crate::context::{Context, name, ns};
use crate::gateway;
use crate::parameters::{Overrides, ProxyParameters, WAYPOINT_CLASS};

/// The port and protocol every waypoint serves.
const HBONE_PORT: i32 = 15008;
const HBONE_PROTOCOL: &str = "HBONE";

/// The waypoints to provision, each with its parameters: every waypoint a Service is bound to
/// (`mesh`) and every Accepted Gateway of the waypoint class. Adds those Gateways' statuses.
///
/// `class` is the waypoint class's parameters when we accepted it; without it, Gateways of
/// the class are left alone (no status, as for any Gateway of a class we did not accept) and
/// bound waypoints take the defaults, as they do when their own Gateway's parameters are
/// invalid: a mistake in a ConfigMap must not take down every waypoint of the mesh.
pub(crate) fn evaluate(
    ctx: &Context<'_>,
    class: Option<&Overrides>,
    mesh: &MeshConfig,
    statuses: &mut Vec<ObjectStatus>,
) -> BTreeMap<ObjectRef, ProxyParameters> {
    let class_parameters = class
        .and_then(|c| c.over(&Overrides::default()).ok())
        .unwrap_or_default();
    let mut provision: BTreeMap<ObjectRef, ProxyParameters> = mesh
        .waypoints
        .iter()
        .map(|w| (w.gateway.clone(), class_parameters.clone()))
        .collect();
    let Some(class) = class else {
        return provision;
    };
    for gateway in ctx
        .snapshot
        .gateways
        .iter()
        .filter(|g| g.spec.gateway_class_name == WAYPOINT_CLASS)
    {
        let key = ObjectRef {
            namespace: ns(&gateway.metadata).to_string(),
            name: name(&gateway.metadata).to_string(),
        };
        let parameters = gateway::parameters(ctx, gateway, &key, class);
        statuses.push(status(ctx, gateway, &key, parameters.as_ref().err()));
        if let Ok(parameters) = parameters {
            provision.insert(key, parameters);
        }
    }
    provision
}

fn status(
    ctx: &Context<'_>,
    gateway: &Gateway,
    key: &ObjectRef,
    invalid_parameters: Option<&String>,
) -> ObjectStatus {
    let generation = gateway.metadata.generation;
    let hbone = |port: i32, protocol: &str| port == HBONE_PORT && protocol == HBONE_PROTOCOL;
    let listeners = &gateway.spec.listeners;
    let all_hbone = listeners.iter().all(|l| hbone(l.port, &l.protocol));
    let pods = workloads::waypoint_addresses(ctx.snapshot, key);
    let accepted = match invalid_parameters {
        Some(message) => Condition::new("Accepted", false, "InvalidParameters", message.clone()),
        None if all_hbone => Condition::new("Accepted", true, "Accepted", "Waypoint accepted"),
        None => Condition::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!(
                "Gateway {key}: a waypoint serves HBONE on {HBONE_PORT} only; other listeners \
                 are ignored"
            ),
        ),
    };
    let programmed = if !accepted.status {
        Condition::new("Programmed", false, "Invalid", accepted.message.clone())
    } else if pods.is_empty() {
        Condition::new(
            "Programmed",
            false,
            "Pending",
            format!("waypoint {key} has no running pod yet"),
        )
    } else {
        Condition::new(
            "Programmed",
            true,
            "Programmed",
            format!("waypoint {key} runs {} pod(s)", pods.len()),
        )
    };
    let now = ctx.now();
    let listener_statuses: Vec<_> = listeners
        .iter()
        .map(|l| {
            let conditions = if hbone(l.port, &l.protocol) {
                vec![
                    Condition::new("Accepted", true, "Accepted", "Listener accepted"),
                    Condition::new(
                        "Programmed",
                        programmed.status,
                        programmed.reason.clone(),
                        programmed.message.clone(),
                    ),
                    Condition::new("ResolvedRefs", true, "ResolvedRefs", "References resolved"),
                ]
            } else {
                let message = format!(
                    "Gateway {key}: listener {}: a waypoint serves only {HBONE_PROTOCOL} on \
                     port {HBONE_PORT}",
                    l.name
                );
                vec![
                    Condition::new("Accepted", false, "UnsupportedProtocol", message.clone()),
                    Condition::new("Programmed", false, "Invalid", message),
                    Condition::new("ResolvedRefs", true, "ResolvedRefs", "References resolved"),
                ]
            };
            json!({
                "name": l.name,
                // Routes name Services, never a waypoint's listener.
                "supportedKinds": [],
                "attachedRoutes": 0,
                "conditions": render(&conditions, generation, now),
            })
        })
        .collect();
    let addresses: Vec<_> = ctx
        .input
        .gateway_addresses
        .get(key)
        .into_iter()
        .flatten()
        .map(|a| json!({"type": "IPAddress", "value": a.to_string()}))
        .collect();
    ObjectStatus {
        kind: "Gateway".into(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        status: StatusJson::new(&json!({
            "addresses": addresses,
            "conditions": render(&[accepted, programmed], generation, now),
            "listeners": listener_statuses,
        })),
    }
}

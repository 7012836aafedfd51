//! Gateway `status` blocks.

use serde_json::json;

use crate::ObjectStatus;
use crate::StatusJson;
use crate::conditions::render;
use crate::context::Context;
use crate::gateway::GatewayState;
use crate::listeners::{GATEWAY_GROUP, ListenerState};

pub(crate) fn gateway_status(ctx: &Context<'_>, gw: &GatewayState<'_>) -> ObjectStatus {
    let generation = gw.gateway.metadata.generation;
    let listeners: Vec<_> = gw
        .listeners
        .iter()
        .filter(|l| l.owner.is_none())
        .map(|l| listener_status(l, generation, ctx.now()))
        .collect();
    let addresses: Vec<_> = gw
        .addresses
        .iter()
        .map(|a| json!({"type": "IPAddress", "value": a.to_string()}))
        .collect();
    ObjectStatus {
        kind: "Gateway".into(),
        namespace: gw.key.namespace.clone(),
        name: gw.key.name.clone(),
        status: StatusJson::new(&json!({
            "addresses": addresses,
            "attachedListenerSets": crate::listener_sets::attached_count(gw),
            "conditions": render(&gw.conditions, generation, ctx.now()),
            "listeners": listeners,
        })),
    }
}

/// One entry of `status.listeners`, the same for a Gateway's and a ListenerSet's listeners.
pub(crate) fn listener_status(
    listener: &ListenerState,
    generation: Option<i64>,
    now: &str,
) -> serde_json::Value {
    json!({
        "name": listener.name,
        "supportedKinds": listener.supported_kinds.iter()
            .map(|k| json!({"group": GATEWAY_GROUP, "kind": k}))
            .collect::<Vec<_>>(),
        "attachedRoutes": listener.attached_routes,
        "conditions": render(&listener.conditions, generation, now),
    })
}

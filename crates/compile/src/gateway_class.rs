//! GatewayClass acceptance.

use std::collections::BTreeSet;

use serde_json::json;

use crate::conditions::{Condition, render};
use crate::context::{Context, name, ns};
use crate::{ObjectStatus, SUPPORTED_FEATURES};

/// Accepts every GatewayClass whose controllerName is ours (unless its parametersRef is
/// invalid); returns the accepted names. Classes of other controllers get no status from us.
pub(crate) fn evaluate(ctx: &Context<'_>, statuses: &mut Vec<ObjectStatus>) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    for class in &ctx.snapshot.gateway_classes {
        if class.spec.controller_name != ctx.input.controller_name {
            continue;
        }
        let class_name = name(&class.metadata).to_string();
        // Strait takes no class parameters except a ConfigMap that must exist.
        let invalid_parameters = class.spec.parameters_ref.as_ref().and_then(|p| {
            let found = p.group.is_empty()
                && p.kind == "ConfigMap"
                && ctx.snapshot.config_maps.iter().any(|c| {
                    Some(ns(&c.metadata)) == p.namespace.as_deref() && name(&c.metadata) == p.name
                });
            (!found).then(|| {
                format!(
                    "GatewayClass {class_name}: parametersRef {}/{} {} not found or not supported",
                    p.group, p.kind, p.name
                )
            })
        });
        let accepted_cond = match &invalid_parameters {
            Some(msg) => Condition::new("Accepted", false, "InvalidParameters", msg.clone()),
            None => Condition::new("Accepted", true, "Accepted", "Accepted by Strait"),
        };
        let conditions = [
            accepted_cond,
            Condition::new(
                "SupportedVersion",
                true,
                "SupportedVersion",
                "Gateway API version is supported",
            ),
        ];
        let features: Vec<_> = SUPPORTED_FEATURES
            .iter()
            .map(|f| json!({ "name": f }))
            .collect();
        statuses.push(ObjectStatus {
            kind: "GatewayClass".into(),
            namespace: String::new(),
            name: class_name.clone(),
            status: json!({
                "conditions": render(&conditions, class.metadata.generation, ctx.now()),
                "supportedFeatures": features,
            }),
        });
        if invalid_parameters.is_none() {
            accepted.insert(class_name);
        }
    }
    accepted
}

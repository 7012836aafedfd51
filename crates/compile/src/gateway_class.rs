//! GatewayClass acceptance.

use std::collections::BTreeSet;

use serde_json::json;

use crate::conditions::{Condition, render};
use crate::context::{Context, name};
use crate::{ObjectStatus, SUPPORTED_FEATURES};

/// Accepts every GatewayClass whose controllerName is ours; returns their names. Classes of
/// other controllers get no status from us.
pub(crate) fn evaluate(ctx: &Context<'_>, statuses: &mut Vec<ObjectStatus>) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    for class in &ctx.snapshot.gateway_classes {
        if class.spec.controller_name != ctx.input.controller_name {
            continue;
        }
        let class_name = name(&class.metadata).to_string();
        let conditions = [
            Condition::new("Accepted", true, "Accepted", "Accepted by Strait"),
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
        accepted.insert(class_name);
    }
    accepted
}

//! GatewayClass acceptance.

use std::collections::BTreeMap;

use serde_json::json;

use crate::StatusJson;
use crate::conditions::{Condition, render};
use crate::context::{Context, name};
use crate::parameters::{Overrides, ParametersRef};
use crate::{ObjectStatus, SUPPORTED_FEATURES};

/// Accepts every GatewayClass whose controllerName is ours (unless its parametersRef is
/// invalid); returns the accepted classes by name, with their parameters. Classes of other
/// controllers get no status from us.
pub(crate) fn evaluate(
    ctx: &Context<'_>,
    statuses: &mut Vec<ObjectStatus>,
) -> BTreeMap<String, Overrides> {
    let mut accepted = BTreeMap::new();
    for class in &ctx.snapshot.gateway_classes {
        if class.spec.controller_name != ctx.input.controller_name {
            continue;
        }
        let class_name = name(&class.metadata).to_string();
        let parameters = match &class.spec.parameters_ref {
            None => Ok(Overrides::default()),
            Some(p) => ParametersRef {
                group: &p.group,
                kind: &p.kind,
                namespace: p.namespace.as_deref(),
                name: &p.name,
            }
            .resolve(ctx, &format!("GatewayClass {class_name}")),
        };
        // A class whose own keys contradict each other would reject every Gateway of it.
        let parameters = parameters.and_then(|p| match p.over(&Overrides::default()) {
            Ok(_) => Ok(p),
            Err(e) => Err(format!("GatewayClass {class_name}: parameters: {e}")),
        });
        let accepted_cond = match &parameters {
            Err(msg) => Condition::new("Accepted", false, "InvalidParameters", msg.clone()),
            Ok(_) => Condition::new("Accepted", true, "Accepted", "Accepted by Strait"),
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
            status: StatusJson::new(&json!({
                "conditions": render(&conditions, class.metadata.generation, ctx.now()),
                "supportedFeatures": features,
            })),
        });
        if let Ok(parameters) = parameters {
            accepted.insert(class_name, parameters);
        }
    }
    accepted
}

//! `strait check DIR`: compile offline and print the status every object would get.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use strait_compile::{CONTROLLER_NAME, CompileInput, compile};
use strait_model::load_paths;

use crate::addresses::{AddressAllocator, AddressMode};
use crate::store::ObjectStore;

/// What `check` found.
#[derive(Debug)]
pub struct CheckReport {
    /// Multi-document YAML, one document per object with a status (like `kubectl get -o yaml`).
    pub yaml: String,
    /// Load errors and every condition that reports a problem, each naming its object.
    pub problems: Vec<String>,
}

/// Loads `paths`, compiles them as standalone would, and reports.
pub fn check(paths: &[PathBuf]) -> CheckReport {
    let report = load_paths(paths);
    let mut problems: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    let mut snapshot = report.snapshot;
    ObjectStore::default().stamp(&mut snapshot, Timestamp::now());
    let addresses = AddressAllocator::new(AddressMode::PerGateway).assign(&snapshot.gateways);
    let now = Timestamp::now().to_string();
    let output = compile(&CompileInput {
        snapshot: &snapshot,
        controller_name: CONTROLLER_NAME,
        gateway_addresses: &addresses,
        now: &now,
    });

    let mut yaml = String::new();
    for status in &output.statuses {
        let object = if status.namespace.is_empty() {
            format!("{} {}", status.kind, status.name)
        } else {
            format!("{} {}/{}", status.kind, status.namespace, status.name)
        };
        let value = match status.status.value() {
            Ok(value) => value,
            Err(e) => {
                problems.push(format!("{object}: computed status unreadable: {e}"));
                continue;
            }
        };
        collect_problems(&object, "", &value, &mut problems);
        let mut metadata = BTreeMap::from([("name", json!(status.name))]);
        if !status.namespace.is_empty() {
            metadata.insert("namespace", json!(status.namespace));
        }
        let document = json!({
            "apiVersion": api_version(&status.kind),
            "kind": status.kind,
            "metadata": metadata,
            "status": value,
        });
        yaml.push_str("---\n");
        yaml.push_str(&serde_saphyr::to_string(&document).unwrap_or_default());
    }
    CheckReport { yaml, problems }
}

fn api_version(kind: &str) -> &'static str {
    match kind {
        "TCPRoute" | "UDPRoute" => "gateway.networking.k8s.io/v1alpha2",
        _ => "gateway.networking.k8s.io/v1",
    }
}

/// Conditions whose `False` means something is wrong (as opposed to e.g. `Conflicted`).
const HEALTHY_WHEN_TRUE: &[&str] = &["Accepted", "ResolvedRefs", "Programmed"];

/// Walks a status block and reports every unhealthy condition with where it sits.
fn collect_problems(object: &str, place: &str, value: &Value, problems: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let (Some(Value::String(kind)), Some(Value::String(status))) =
                (map.get("type"), map.get("status"))
                && HEALTHY_WHEN_TRUE.contains(&kind.as_str())
                && status != "True"
            {
                let reason = map.get("reason").and_then(Value::as_str).unwrap_or("");
                let message = map.get("message").and_then(Value::as_str).unwrap_or("");
                problems.push(format!(
                    "{object}{place}: {kind}={status} {reason}: {message}"
                ));
                return;
            }
            let place = match (map.get("name"), map.get("parentRef")) {
                (Some(Value::String(name)), _) => format!("{place} listener {name}"),
                (_, Some(parent)) => format!(
                    "{place} parent {}",
                    parent.get("name").and_then(Value::as_str).unwrap_or("?")
                ),
                _ => place.to_string(),
            };
            for child in map.values() {
                collect_problems(object, &place, child, problems);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_problems(object, place, item, problems);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_object_and_place() {
        let status = json!({"parents": [{"parentRef": {"name": "gw"}, "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted"},
            {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
             "message": "Service ns/missing not found"}]}]});
        let mut problems = Vec::new();
        collect_problems("HTTPRoute ns/r", "", &status, &mut problems);
        assert_eq!(
            problems,
            vec![
                "HTTPRoute ns/r parent gw: ResolvedRefs=False BackendNotFound: Service ns/missing not found"
            ]
        );
    }
}

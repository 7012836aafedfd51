//! Merging a computed status into the stored one, as a status writer must: keep
//! `lastTransitionTime` of conditions that did not change, and keep other controllers' entries
//! in shared lists (route `parents`, policy `ancestors`).

use serde_json::Value;

/// Carries `lastTransitionTime` over from `previous` for every condition whose status did not
/// change, so a reload that changes nothing changes no status.
pub fn keep_transition_times(previous: &Value, next: &mut Value) {
    match (previous, next) {
        (Value::Object(prev), Value::Object(next)) => {
            let is_condition = next.contains_key("type") && next.contains_key("status");
            if is_condition
                && prev.get("status") == next.get("status")
                && prev.get("type") == next.get("type")
                && let Some(time) = prev.get("lastTransitionTime")
            {
                next.insert("lastTransitionTime".into(), time.clone());
            }
            for (key, value) in next.iter_mut() {
                if let Some(prev_value) = prev.get(key) {
                    keep_transition_times(prev_value, value);
                }
            }
        }
        (Value::Array(prev), Value::Array(next)) => {
            for item in next.iter_mut() {
                let Some(id) = identity(item) else { continue };
                if let Some(prev_item) = prev.iter().find(|p| identity(p) == Some(id)) {
                    keep_transition_times(prev_item, item);
                }
            }
        }
        _ => {}
    }
}

/// What makes a list element the "same" element across two statuses.
fn identity(item: &Value) -> Option<(&'static str, &Value)> {
    let object = item.as_object()?;
    ["type", "parentRef", "ancestorRef", "name"]
        .into_iter()
        .find_map(|key| object.get(key).map(|value| (key, value)))
}

/// Puts back into `ours` the `parents` / `ancestors` entries of `stored` that belong to other
/// controllers (a route or policy may be attached to parents managed by several controllers;
/// each writes only its own entries).
pub fn keep_foreign_entries(stored: &Value, ours: &mut Value, controller_name: &str) {
    for list in ["parents", "ancestors"] {
        let Some(stored_entries) = stored.get(list).and_then(Value::as_array) else {
            continue;
        };
        let foreign: Vec<Value> = stored_entries
            .iter()
            .filter(|entry| {
                entry.get("controllerName").and_then(Value::as_str) != Some(controller_name)
            })
            .cloned()
            .collect();
        if foreign.is_empty() {
            continue;
        }
        let Some(object) = ours.as_object_mut() else {
            continue;
        };
        let entries = object
            .entry(list)
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(entries) = entries.as_array_mut() {
            let mut merged = foreign;
            merged.append(entries);
            *entries = merged;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn other_controllers_parents_survive_and_ours_are_replaced() {
        let stored = json!({"parents": [
            {"controllerName": "example.com/other", "parentRef": {"name": "a"}},
            {"controllerName": "strait.dev/gateway-controller", "parentRef": {"name": "old"}}
        ]});
        let mut ours = json!({"parents": [
            {"controllerName": "strait.dev/gateway-controller", "parentRef": {"name": "new"}}
        ]});
        keep_foreign_entries(&stored, &mut ours, "strait.dev/gateway-controller");
        let names: Vec<&str> = ours["parents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["parentRef"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "new"]);
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let previous = serde_json::json!({"parents": [
            {"parentRef": {"name": "a"}, "conditions": [
                {"type": "Accepted", "status": "True", "lastTransitionTime": "old"},
                {"type": "ResolvedRefs", "status": "True", "lastTransitionTime": "old"}]}]});
        let mut next = serde_json::json!({"parents": [
            {"parentRef": {"name": "a"}, "conditions": [
                {"type": "ResolvedRefs", "status": "False", "lastTransitionTime": "new"},
                {"type": "Accepted", "status": "True", "lastTransitionTime": "new"}]}]});
        keep_transition_times(&previous, &mut next);
        let conditions = &next["parents"][0]["conditions"];
        assert_eq!(conditions[0]["lastTransitionTime"], "new");
        assert_eq!(conditions[1]["lastTransitionTime"], "old");
    }
}

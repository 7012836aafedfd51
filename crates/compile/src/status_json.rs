//! A computed `status` block, kept as JSON text.
//!
//! Compile produces one status per object it reports on, and a large cluster has tens of
//! thousands (every route). As `serde_json::Value` trees, where every small JSON object is a
//! B-tree node of its own, 10,000 routes' statuses took about 100 MB while compile built them
//! and as long as the controller kept them; as text they take about 7 MB. Whoever must look
//! inside one (merge it into a stored status, check a condition) parses it: after the first
//! pass, a status writer does so only for the few objects whose status changed.

use std::hash::{Hash as _, Hasher as _};

use serde_json::Value;

/// A `status` block as compact JSON text (keys sorted, as `serde_json` writes a `Value`), so
/// that two equal statuses are equal texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusJson(Box<str>);

/// The key whose values [`StatusJson::fingerprint`] leaves out, as it appears in the text.
const TRANSITION_TIME: &str = "\"lastTransitionTime\":\"";

impl StatusJson {
    pub fn new(status: &Value) -> StatusJson {
        // A `Value` always serializes: its keys are strings.
        StatusJson(status.to_string().into_boxed_str())
    }

    /// The status as a tree. Fails only on text this type did not write, which it cannot
    /// hold; callers report the error rather than trust that.
    pub fn value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// `{"parents":[…]}` from entries serde_json wrote: the text serde_json would write for
    /// that object (compact, and `parents` its only key), without building the tree.
    pub(crate) fn of_parents<'a>(entries: impl Iterator<Item = &'a str>) -> StatusJson {
        let mut text = String::from("{\"parents\":[");
        for (index, entry) in entries.enumerate() {
            if index > 0 {
                text.push(',');
            }
            text.push_str(entry);
        }
        text.push_str("]}");
        StatusJson(text.into_boxed_str())
    }

    /// A 64-bit hash of the status without the `lastTransitionTime` of its conditions (each
    /// compile stamps new conditions with its own time): two compiles' statuses of an object
    /// have the same fingerprint when they say the same. Two that differ collide with a chance
    /// of 2^-64.
    ///
    /// Read off the text: in compact JSON an unescaped quote only ever delimits a string, so
    /// `"lastTransitionTime":"` is always that key followed by its value, and a timestamp holds
    /// no quote or escape to end it early.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        let mut rest = &*self.0;
        while let Some(start) = rest.find(TRANSITION_TIME) {
            let value = start + TRANSITION_TIME.len();
            hasher.write(&rest.as_bytes()[..value]);
            let Some(length) = rest[value..].find('"') else {
                break;
            };
            rest = &rest[value + length..];
        }
        rest.hash(&mut hasher);
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::StatusJson;

    fn route_status(message: &str, generation: i64, time: &str) -> StatusJson {
        StatusJson::new(&json!({"parents": [{
            "parentRef": {"name": "web"},
            "controllerName": "strait.dev/gateway-controller",
            "conditions": [{
                "type": "Accepted", "status": "True", "reason": "Accepted",
                "message": message, "observedGeneration": generation,
                "lastTransitionTime": time,
            }, {
                "type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                "message": "", "observedGeneration": generation,
                "lastTransitionTime": time,
            }],
        }]}))
    }

    #[test]
    fn parents_joined_as_text_are_what_the_tree_would_write() {
        let entries = [
            json!({"parentRef": {"name": "a"}}),
            json!({"parentRef": {"name": "b"}}),
        ];
        let texts: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            StatusJson::of_parents(texts.iter().map(String::as_str)),
            StatusJson::new(&json!({"parents": entries}))
        );
        assert_eq!(
            StatusJson::of_parents(std::iter::empty()),
            StatusJson::new(&json!({"parents": []}))
        );
    }

    #[test]
    fn reads_back_as_written() {
        let value = json!({"parents": [], "conditions": [{"type": "Accepted"}]});
        assert_eq!(StatusJson::new(&value).value().unwrap(), value);
    }

    #[test]
    fn a_fingerprint_ignores_transition_times_and_nothing_else() {
        let stamped = |time| route_status("accepted", 2, time).fingerprint();
        assert_eq!(
            stamped("2026-01-01T00:00:00Z"),
            stamped("2026-12-07T18:00:00Z")
        );
        let base = route_status("accepted", 2, "t").fingerprint();
        assert_ne!(base, route_status("accepted", 3, "t").fingerprint());
        assert_ne!(base, route_status("Accepted", 2, "t").fingerprint());
        // A message that quotes the key is a string whose quotes are escaped: hashed whole.
        assert_ne!(
            route_status(r#""lastTransitionTime":"x"#, 2, "t").fingerprint(),
            route_status(r#""lastTransitionTime":"y"#, 2, "t").fingerprint()
        );
        let fingerprint = |value| StatusJson::new(&value).fingerprint();
        assert_ne!(
            fingerprint(json!({"a": "bc"})),
            fingerprint(json!({"ab": "c"}))
        );
        assert_ne!(fingerprint(json!({"a": null})), fingerprint(json!({})));
        assert_ne!(fingerprint(json!("1")), fingerprint(json!(1)));
    }
}

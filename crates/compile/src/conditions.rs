//! Kubernetes `metav1.Condition` values as the API server stores them.

use std::borrow::Cow;

use serde_json::{Value, json};

/// One condition before rendering; `observedGeneration` and `lastTransitionTime` are added by
/// [`render`] because they depend on the owning object and the compile input, not the check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Condition {
    pub kind: &'static str,
    pub status: bool,
    /// Most reasons and messages are fixed text, borrowed rather than copied for every object.
    pub reason: Cow<'static, str>,
    pub message: Cow<'static, str>,
}

impl Condition {
    pub(crate) fn new(
        kind: &'static str,
        status: bool,
        reason: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Condition {
            kind,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Renders conditions. `observedGeneration` is omitted when the object has no generation (files
/// read in standalone mode), so a reader comparing it with `metadata.generation` sees both absent.
pub(crate) fn render(conditions: &[Condition], generation: Option<i64>, now: &str) -> Value {
    Value::Array(
        conditions
            .iter()
            .map(|c| {
                let mut v = json!({
                    "type": c.kind,
                    "status": if c.status { "True" } else { "False" },
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": now,
                });
                if let (Some(g), Some(map)) = (generation, v.as_object_mut()) {
                    map.insert("observedGeneration".into(), json!(g));
                }
                v
            })
            .collect(),
    )
}

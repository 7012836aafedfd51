//! API errors rendered as `meta/v1 Status` objects exactly as the real server sends them.

use serde_json::{Value, json};

use crate::registry::ResourceKind;

/// A failed API call: HTTP code, machine-readable reason and message, as in a `Status`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code (404, 409, ...).
    pub code: u16,
    /// `Status.reason` (`NotFound`, `AlreadyExists`, `Conflict`, ...).
    pub reason: &'static str,
    /// Human-readable message, naming the object.
    pub message: String,
    /// `Status.details`, when the error concerns one object.
    pub details: Option<Value>,
}

impl ApiError {
    fn object(
        code: u16,
        reason: &'static str,
        message: String,
        kind: &ResourceKind,
        name: &str,
    ) -> Self {
        let mut details = json!({"name": name, "kind": kind.plural});
        if !kind.group.is_empty() {
            details["group"] = json!(kind.group);
        }
        Self {
            code,
            reason,
            message,
            details: Some(details),
        }
    }

    /// 404: the named object does not exist.
    pub fn not_found(kind: &ResourceKind, name: &str) -> Self {
        let msg = format!("{} {name:?} not found", kind.qualified_plural());
        Self::object(404, "NotFound", msg, kind, name)
    }

    /// 404 for a missing namespace when creating into it.
    pub(crate) fn namespace_not_found(name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces {name:?} not found"),
            details: Some(json!({"name": name, "kind": "namespaces"})),
        }
    }

    /// 409: create of a name that is taken.
    pub fn already_exists(kind: &ResourceKind, name: &str) -> Self {
        let msg = format!("{} {name:?} already exists", kind.qualified_plural());
        Self::object(409, "AlreadyExists", msg, kind, name)
    }

    /// 409: optimistic concurrency failure (stale `resourceVersion` or precondition).
    pub fn conflict(kind: &ResourceKind, name: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
             please apply your changes to the latest version and try again",
            kind.qualified_plural()
        );
        Self::object(409, "Conflict", msg, kind, name)
    }

    /// 422: the object failed validation.
    pub fn invalid(kind: &ResourceKind, name: &str, cause: &str) -> Self {
        let msg = format!("{} {name:?} is invalid: {cause}", kind.kind);
        let mut e = Self::object(422, "Invalid", msg, kind, name);
        if let Some(d) = e.details.as_mut() {
            d["kind"] = json!(kind.kind);
        }
        e
    }

    /// 400: malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// 404 for a URL that names no served resource.
    pub fn no_route(path: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({path})"),
            details: None,
        }
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self {
            code: 405,
            reason: "MethodNotAllowed",
            message: message.into(),
            details: None,
        }
    }

    /// 415 for an unknown patch content type.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
            ),
            details: None,
        }
    }

    /// 410 `Expired` as sent in a watch `ERROR` event for a compacted resourceVersion.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {requested} ({oldest})"),
            details: None,
        }
    }

    /// 504 for a resourceVersion the server has not reached yet (the real server
    /// first waits up to 3s for it; nothing writes here behind the client's back).
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        Self {
            code: 504,
            reason: "Timeout",
            message: format!("Too large resource version: {requested}, current: {current}"),
            details: Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
        }
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

//! Label and field selectors with the syntax and matching rules of `k8s.io/apimachinery`.

use serde_json::Value;

use crate::ApiError;
use crate::registry::ResourceKind;

#[derive(Debug, Clone)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed `labelSelector`: all requirements must hold.
#[derive(Debug, Clone, Default)]
pub struct LabelSelector(Vec<LabelReq>);

impl LabelSelector {
    /// Parses the string form (`app=web,tier in (a,b),!legacy`).
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement: {why} (selector {s:?})"
            ))
        };
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                check_key(key).map_err(|e| bad(&e))?;
                reqs.push(LabelReq::NotExists(key.to_string()));
                continue;
            }
            if let Some(idx) = part.find(['=', '!', '<', '>']) {
                let key = part[..idx].trim();
                let rest = &part[idx..];
                check_key(key).map_err(|e| bad(&e))?;
                let key = key.to_string();
                let req = if let Some(v) = rest.strip_prefix("==") {
                    LabelReq::Eq(key, value(v).map_err(|e| bad(&e))?)
                } else if let Some(v) = rest.strip_prefix("!=") {
                    LabelReq::NotEq(key, value(v).map_err(|e| bad(&e))?)
                } else if let Some(v) = rest.strip_prefix('=') {
                    LabelReq::Eq(key, value(v).map_err(|e| bad(&e))?)
                } else if let Some(v) = rest.strip_prefix('>') {
                    LabelReq::Gt(
                        key,
                        v.trim().parse().map_err(|_| bad("expected an integer"))?,
                    )
                } else if let Some(v) = rest.strip_prefix('<') {
                    LabelReq::Lt(
                        key,
                        v.trim().parse().map_err(|_| bad("expected an integer"))?,
                    )
                } else {
                    return Err(bad("unexpected operator"));
                };
                reqs.push(req);
                continue;
            }
            let mut words = part.splitn(2, char::is_whitespace);
            let key = words.next().unwrap_or_default().trim();
            let rest = words.next().unwrap_or_default().trim();
            check_key(key).map_err(|e| bad(&e))?;
            if rest.is_empty() {
                reqs.push(LabelReq::Exists(key.to_string()));
                continue;
            }
            let (op, set) = if let Some(set) = rest.strip_prefix("notin") {
                ("notin", set)
            } else if let Some(set) = rest.strip_prefix("in") {
                ("in", set)
            } else {
                return Err(bad("expected in, notin, =, ==, != or end of requirement"));
            };
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| bad("expected a parenthesised set of values"))?;
            let values = inner
                .split(',')
                .map(value)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            let key = key.to_string();
            reqs.push(if op == "in" {
                LabelReq::In(key, values)
            } else {
                LabelReq::NotIn(key, values)
            });
        }
        Ok(Self(reqs))
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Gt(k, n) => get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelReq::Lt(k, n) => get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }
}

/// Splits on commas that are not inside a parenthesised value set.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(key: &str) -> Result<(), String> {
    let name = key.rsplit('/').next().unwrap_or_default();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

fn value(v: &str) -> Result<String, String> {
    let v = v.trim();
    let ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())));
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("invalid label value {v:?}"))
    }
}

/// A parsed `fieldSelector` (`=`, `==`, `!=` over the kind's supported field labels).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses and validates against the fields the kind supports, rejecting others
    /// with the real server's `field label not supported` error.
    pub fn parse(s: &str, kind: &ResourceKind) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, val) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            let supported = matches!(field, "metadata.name" | "metadata.namespace")
                || kind.extra_field_labels.iter().any(|f| f == field);
            if !supported {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), eq, val.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    /// Whether the object satisfies every requirement (missing fields compare as "").
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, want)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let have = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_operators() {
        let o = obj(json!({"app": "web", "tier": "front", "n": "5"}));
        let m = |s: &str| LabelSelector::parse(s).expect(s).matches(&o);
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("missing!=x"));
        assert!(m("tier in (front, back)"));
        assert!(!m("tier notin (front)"));
        assert!(m("missing notin (front)"));
        assert!(!m("missing in (front)"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("n>4,n<6"));
        assert!(m(""));
        assert!(LabelSelector::parse("app in front").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn field_selectors() {
        let kind = ResourceKind::custom("g", "v1", "K", "ks", true);
        let o = obj(json!({}));
        let m = |s: &str| FieldSelector::parse(s, &kind).expect(s).matches(&o);
        assert!(m("metadata.name=a,metadata.namespace==ns"));
        assert!(!m("metadata.name!=a"));
        let err = FieldSelector::parse("spec.x=1", &kind).expect_err("unsupported");
        assert_eq!(err.code, 400);
    }
}

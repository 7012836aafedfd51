//! `allowedRoutes.namespaces`: which route namespaces a listener accepts.

use std::collections::BTreeMap;

/// A label selector, independent of the generated type it was read from.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Selector {
    pub match_labels: BTreeMap<String, String>,
    /// `(key, operator, values)`.
    pub match_expressions: Vec<(String, String, Vec<String>)>,
}

/// Reads a `LabelSelector` of any generated Gateway API type (each field that embeds one gets a
/// type of its own, all of one shape) into a [`Selector`]; `$selector` is an
/// `Option<&GeneratedSelector>`, absent meaning "everything".
macro_rules! selector_from {
    ($selector:expr) => {{
        let selector = $selector;
        $crate::namespaces::Selector {
            match_labels: selector
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default(),
            match_expressions: selector
                .and_then(|s| s.match_expressions.as_ref())
                .map(|expressions| {
                    expressions
                        .iter()
                        .map(|e| {
                            (
                                e.key.clone(),
                                e.operator.clone(),
                                e.values.clone().unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }};
}
pub(crate) use selector_from;

impl Selector {
    /// Evaluates the selector; an unknown operator matches nothing (fail closed).
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|(key, op, values)| {
                let value = labels.get(key);
                match op.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// Namespaces a listener admits routes from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AllowedNamespaces {
    /// Only the Gateway's namespace (the default).
    Same,
    All,
    Selector(Selector),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_table() {
        let expr = |k: &str, op: &str, vals: &[&str]| {
            (
                k.to_string(),
                op.to_string(),
                vals.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let cases = vec![
            (Selector::default(), labels(&[]), true),
            (
                Selector {
                    match_labels: labels(&[("a", "1")]),
                    ..Default::default()
                },
                labels(&[("a", "1"), ("b", "2")]),
                true,
            ),
            (
                Selector {
                    match_labels: labels(&[("a", "1")]),
                    ..Default::default()
                },
                labels(&[("a", "2")]),
                false,
            ),
            (
                Selector {
                    match_expressions: vec![expr("a", "In", &["1", "2"])],
                    ..Default::default()
                },
                labels(&[("a", "2")]),
                true,
            ),
            (
                Selector {
                    match_expressions: vec![expr("a", "NotIn", &["1"])],
                    ..Default::default()
                },
                labels(&[]),
                true,
            ),
            (
                Selector {
                    match_expressions: vec![expr("a", "Exists", &[])],
                    ..Default::default()
                },
                labels(&[]),
                false,
            ),
            (
                Selector {
                    match_expressions: vec![expr("a", "DoesNotExist", &[])],
                    ..Default::default()
                },
                labels(&[]),
                true,
            ),
            (
                Selector {
                    match_expressions: vec![expr("a", "Bogus", &[])],
                    ..Default::default()
                },
                labels(&[("a", "1")]),
                false,
            ),
        ];
        for (i, (sel, l, want)) in cases.into_iter().enumerate() {
            assert_eq!(sel.matches(&l), want, "case {i}");
        }
    }
}

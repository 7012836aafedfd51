//! RequestHeaderModifier / ResponseHeaderModifier.

use http::header::{Entry, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use strait_config::HeaderModifier;

/// A header modifier with its names and values parsed once, when the route table is built:
/// parsing a name (and copying a value) on every request cost more than applying the edit.
/// Names and values are `Bytes`-backed, so the per-request clones are reference counts.
#[derive(Clone, Debug, Default)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Parses a modifier. Invalid names or values (compile rejects them) are skipped rather
    /// than failing every request of the route.
    pub fn compile(modifier: &HeaderModifier) -> HeaderEdits {
        let pairs = |list: &[(String, String)]| -> Vec<(HeaderName, HeaderValue)> {
            list.iter()
                .filter_map(|(name, value)| {
                    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                    let value = HeaderValue::from_str(value).ok()?;
                    Some((name, value))
                })
                .collect()
        };
        HeaderEdits {
            set: pairs(&modifier.set),
            add: pairs(&modifier.add),
            remove: modifier
                .remove
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
        }
    }

    /// Applies set, then add, then remove (names case-insensitive). `add` on a header that is
    /// already present folds the values into one `existing,new` value: that is what the spec's
    /// examples and the conformance suite expect, and it means the same as separate fields for
    /// every header but `Set-Cookie`, which keeps separate values.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            if name == SET_COOKIE {
                headers.append(name.clone(), value.clone());
                continue;
            }
            match headers.entry(name.clone()) {
                Entry::Vacant(vacant) => {
                    vacant.insert(value.clone());
                }
                Entry::Occupied(mut occupied) => {
                    let mut joined: Vec<u8> = Vec::new();
                    for existing in occupied.iter() {
                        joined.extend_from_slice(existing.as_bytes());
                        joined.push(b',');
                    }
                    joined.extend_from_slice(value.as_bytes());
                    if let Ok(value) = HeaderValue::from_bytes(&joined) {
                        occupied.insert(value);
                    }
                }
            }
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn map(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn joined(h: &HeaderMap, name: &str) -> Option<String> {
        let values: Vec<&str> = h
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(values.join(","))
        }
    }

    /// The HTTPRouteRequestHeaderModifier / HTTPRouteRewritePath conformance expectations.
    #[test]
    fn conformance_cases() {
        struct Case {
            set: &'static [(&'static str, &'static str)],
            add: &'static [(&'static str, &'static str)],
            remove: &'static [&'static str],
            request: &'static [(&'static str, &'static str)],
            want: &'static [(&'static str, &'static str)],
            absent: &'static [&'static str],
        }
        let cases = [
            Case {
                set: &[("X-Header-Set", "set-overwrites-values")],
                add: &[],
                remove: &[],
                request: &[("Some-Other-Header", "val")],
                want: &[
                    ("some-other-header", "val"),
                    ("x-header-set", "set-overwrites-values"),
                ],
                absent: &[],
            },
            Case {
                set: &[("X-Header-Set", "set-overwrites-values")],
                add: &[],
                remove: &[],
                request: &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Set", "some-other-value"),
                ],
                want: &[("x-header-set", "set-overwrites-values")],
                absent: &[],
            },
            Case {
                set: &[],
                add: &[("X-Header-Add", "add-appends-values")],
                remove: &[],
                request: &[("Some-Other-Header", "val")],
                want: &[("x-header-add", "add-appends-values")],
                absent: &[],
            },
            Case {
                set: &[],
                add: &[("X-Header-Add", "add-appends-values")],
                remove: &[],
                request: &[("X-Header-Add", "some-other-value")],
                want: &[("x-header-add", "some-other-value,add-appends-values")],
                absent: &[],
            },
            Case {
                set: &[],
                add: &[],
                remove: &["X-Header-Remove"],
                request: &[("X-Header-Remove", "val")],
                want: &[],
                absent: &["x-header-remove"],
            },
            Case {
                set: &[
                    ("X-Header-Set-1", "header-set-1"),
                    ("X-Header-Set-2", "header-set-2"),
                ],
                add: &[
                    ("X-Header-Add-1", "header-add-1"),
                    ("X-Header-Add-2", "header-add-2"),
                    ("X-Header-Add-3", "header-add-3"),
                ],
                remove: &["X-Header-Remove-1", "X-Header-Remove-2"],
                request: &[
                    ("X-Header-Set-2", "set-val-2"),
                    ("X-Header-Add-2", "add-val-2"),
                    ("X-Header-Remove-2", "remove-val-2"),
                    ("Another-Header", "another-header-val"),
                ],
                want: &[
                    ("x-header-set-1", "header-set-1"),
                    ("x-header-set-2", "header-set-2"),
                    ("x-header-add-1", "header-add-1"),
                    ("x-header-add-2", "add-val-2,header-add-2"),
                    ("x-header-add-3", "header-add-3"),
                    ("another-header", "another-header-val"),
                ],
                absent: &["x-header-remove-1", "x-header-remove-2"],
            },
            Case {
                set: &[("X-Header-Set", "header-set")],
                add: &[("X-Header-Add", "header-add")],
                remove: &["X-Header-Remove"],
                request: &[
                    ("x-header-set", "original-val-set"),
                    ("x-header-add", "original-val-add"),
                    ("x-header-remove", "original-val-remove"),
                ],
                want: &[
                    ("x-header-set", "header-set"),
                    ("x-header-add", "original-val-add,header-add"),
                ],
                absent: &["x-header-remove"],
            },
            Case {
                set: &[("X-Header-Set", "set-overwrites-values")],
                add: &[
                    ("X-Header-Add", "header-val-1"),
                    ("X-Header-Add-Append", "header-val-2"),
                ],
                remove: &["X-Header-Remove"],
                request: &[
                    ("X-Header-Remove", "remove-val"),
                    ("X-Header-Add-Append", "append-val-1"),
                    ("X-Header-Set", "set-val"),
                ],
                want: &[
                    ("x-header-add", "header-val-1"),
                    ("x-header-add-append", "append-val-1,header-val-2"),
                    ("x-header-set", "set-overwrites-values"),
                ],
                absent: &["x-header-remove"],
            },
        ];
        for (i, case) in cases.iter().enumerate() {
            let modifier = HeaderModifier {
                set: pairs(case.set),
                add: pairs(case.add),
                remove: case.remove.iter().map(|s| s.to_string()).collect(),
            };
            let mut headers = map(case.request);
            HeaderEdits::compile(&modifier).apply(&mut headers);
            for (name, value) in case.want {
                assert_eq!(
                    joined(&headers, name).as_deref(),
                    Some(*value),
                    "case {i}: {name}"
                );
            }
            for name in case.absent {
                assert!(
                    !headers.contains_key(*name),
                    "case {i}: {name} should be removed"
                );
            }
        }
    }

    #[test]
    fn compiled_edits_apply_to_many_requests_independently() {
        let edits = HeaderEdits::compile(&HeaderModifier {
            set: pairs(&[("X-Set", "s")]),
            add: pairs(&[("X-Add", "a"), ("X-Add", "b")]),
            remove: vec!["X-Gone".into()],
        });
        for _ in 0..2 {
            let mut headers = map(&[("x-add", "0"), ("x-add", "00"), ("x-gone", "g")]);
            edits.apply(&mut headers);
            assert_eq!(joined(&headers, "x-add").as_deref(), Some("0,00,a,b"));
            assert_eq!(
                headers.get_all("x-add").iter().count(),
                1,
                "folded into one"
            );
            assert_eq!(joined(&headers, "x-set").as_deref(), Some("s"));
            assert!(!headers.contains_key("x-gone"));
        }
        let mut empty = HeaderMap::new();
        edits.apply(&mut empty);
        assert_eq!(joined(&empty, "x-add").as_deref(), Some("a,b"));
    }

    #[test]
    fn set_replaces_every_value_and_add_keeps_set_cookie_separate() {
        let mut headers = map(&[("x-a", "1"), ("x-a", "2"), ("set-cookie", "a=1")]);
        let modifier = HeaderModifier {
            set: pairs(&[("X-A", "3")]),
            add: pairs(&[("Set-Cookie", "b=2"), ("x-bad name", "v")]),
            remove: vec!["not a header".into()],
        };
        let edits = HeaderEdits::compile(&modifier);
        assert_eq!(edits.add.len(), 1, "the invalid name is skipped");
        assert!(edits.remove.is_empty(), "the invalid name is skipped");
        edits.apply(&mut headers);
        assert_eq!(headers.get_all("x-a").iter().count(), 1);
        assert_eq!(joined(&headers, "x-a").as_deref(), Some("3"));
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
    }
}

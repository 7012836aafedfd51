//! Precompiled request matchers: one [`CompiledMatch`] per HTTPRouteMatch, with its header,
//! query-parameter and method conditions ready to evaluate without allocating.

use std::borrow::Cow;

use http::header::GetAll;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use strait_config::{HttpMatch, StringMatch};

use crate::BuildError;

/// Compiles `pattern` so that it must match the whole input (the spec's full-match semantics).
pub(crate) fn full_regex(pattern: &str, route: &str) -> Result<Regex, BuildError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|source| BuildError::Regex {
        route: route.to_string(),
        pattern: pattern.to_string(),
        source,
    })
}

/// An exact or full-match regex value condition.
#[derive(Debug)]
pub(crate) enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    fn compile(value: &StringMatch, route: &str) -> Result<ValueMatch, BuildError> {
        Ok(match value {
            StringMatch::Exact(v) => ValueMatch::Exact(v.clone()),
            StringMatch::RegularExpression(p) => ValueMatch::Regex(full_regex(p, route)?),
        })
    }

    fn is_match(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(re) => re.is_match(value),
        }
    }
}

/// The conditions of one HTTPRouteMatch besides the path (the path is indexed separately).
#[derive(Debug)]
pub(crate) struct Conditions {
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
}

impl Conditions {
    pub(crate) fn compile(m: &HttpMatch, route: &str) -> Result<Conditions, BuildError> {
        let method = match &m.method {
            None => None,
            Some(name) => {
                Some(
                    Method::from_bytes(name.as_bytes()).map_err(|_| BuildError::Method {
                        route: route.to_string(),
                        method: name.clone(),
                    })?,
                )
            }
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for h in &m.headers {
            let name =
                HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    BuildError::HeaderName {
                        route: route.to_string(),
                        name: h.name.clone(),
                    }
                })?;
            headers.push((name, ValueMatch::compile(&h.value, route)?));
        }
        let mut query = Vec::with_capacity(m.query_params.len());
        for q in &m.query_params {
            query.push((q.name.clone(), ValueMatch::compile(&q.value, route)?));
        }
        Ok(Conditions {
            method,
            headers,
            query,
        })
    }

    pub(crate) fn has_method(&self) -> bool {
        self.method.is_some()
    }

    pub(crate) fn header_count(&self) -> usize {
        self.headers.len()
    }

    pub(crate) fn query_count(&self) -> usize {
        self.query.len()
    }

    /// Whether method, every header and every query parameter condition hold.
    pub(crate) fn matches(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> bool {
        if let Some(want) = &self.method
            && want != method
        {
            return false;
        }
        for (name, value) in &self.headers {
            if !header_matches(headers.get_all(name), value) {
                return false;
            }
        }
        for (name, value) in &self.query {
            let Some(raw) = query.and_then(|q| first_query_value(q, name)) else {
                return false;
            };
            if !value.is_match(&percent_decode(raw)) {
                return false;
            }
        }
        true
    }
}

/// A header given several times is compared as its values joined with `,` (the spec allows
/// that); the joined string is only built for regexes over repeated headers.
fn header_matches(values: GetAll<'_, HeaderValue>, want: &ValueMatch) -> bool {
    let mut iter = values.iter();
    let Some(first) = iter.next() else {
        return false;
    };
    let Some(second) = iter.next() else {
        return match first.to_str() {
            Ok(v) => want.is_match(v),
            Err(_) => false,
        };
    };
    match want {
        ValueMatch::Exact(expected) => {
            let mut rest = expected.as_bytes();
            for (i, value) in [first, second].into_iter().chain(iter).enumerate() {
                if i > 0 {
                    let Some(r) = rest.strip_prefix(b",") else {
                        return false;
                    };
                    rest = r;
                }
                let Some(r) = rest.strip_prefix(value.as_bytes()) else {
                    return false;
                };
                rest = r;
            }
            rest.is_empty()
        }
        ValueMatch::Regex(re) => {
            let mut joined = String::new();
            for (i, value) in [first, second].into_iter().chain(iter).enumerate() {
                let Ok(v) = value.to_str() else { return false };
                if i > 0 {
                    joined.push(',');
                }
                joined.push_str(v);
            }
            re.is_match(&joined)
        }
    }
}

/// The raw (still percent-encoded) value of the first parameter called `name`.
fn first_query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decoded_eq(key, name) {
            return Some(value);
        }
    }
    None
}

/// Compares a form-encoded string with a plain one without decoding into a buffer.
fn decoded_eq(raw: &str, plain: &str) -> bool {
    if !raw.contains(['%', '+']) {
        return raw == plain;
    }
    percent_decode(raw) == plain
}

/// Decodes `%XX` escapes and `+` (form encoding); malformed escapes are kept literally and
/// invalid UTF-8 is replaced, so bad input never fails routing.
pub(crate) fn percent_decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = match bytes.get(i + 1..i + 3) {
                    Some(&[h, l]) => hex_val(h).zip(hex_val(l)).map(|(h, l)| h << 4 | l),
                    _ => None,
                };
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        let cases = [
            ("plain", "plain"),
            ("a%20b", "a b"),
            ("a+b", "a b"),
            ("%41%42", "AB"),
            ("bad%zz", "bad%zz"),
            ("end%", "end%"),
            ("end%4", "end%4"),
            ("%+5", "% 5"),
        ];
        for (raw, want) in cases {
            assert_eq!(percent_decode(raw), want, "{raw}");
        }
    }

    #[test]
    fn first_query_value_wins() {
        let q = "a=1&b=2&a=3&flag&enc%20name=x";
        assert_eq!(first_query_value(q, "a"), Some("1"));
        assert_eq!(first_query_value(q, "b"), Some("2"));
        assert_eq!(first_query_value(q, "flag"), Some(""));
        assert_eq!(first_query_value(q, "enc name"), Some("x"));
        assert_eq!(first_query_value(q, "A"), None);
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append("x", HeaderValue::from_static("a"));
        headers.append("x", HeaderValue::from_static("b"));
        let name = HeaderName::from_static("x");
        let exact = |v: &str| ValueMatch::Exact(v.to_string());
        assert!(header_matches(headers.get_all(&name), &exact("a,b")));
        assert!(!header_matches(headers.get_all(&name), &exact("a")));
        assert!(!header_matches(headers.get_all(&name), &exact("a,b,")));
        assert!(!header_matches(headers.get_all(&name), &exact("a,bc")));
        let re = ValueMatch::Regex(full_regex("a,.*", "t").unwrap());
        assert!(header_matches(headers.get_all(&name), &re));
        let missing = HeaderName::from_static("y");
        assert!(!header_matches(headers.get_all(&missing), &exact("")));
    }
}

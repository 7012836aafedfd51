//! The HTTPRoute CORS filter (GEP-1767).

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use strait_config::Cors;

/// What the CORS filter decides for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum CorsOutcome {
    /// Not a CORS request (no Origin): proceed unchanged.
    NotCors,
    /// A preflight (OPTIONS with Origin and Access-Control-Request-Method): answer directly with
    /// these headers and status 200 (an origin that is not allowed gets no CORS headers).
    Preflight(HeaderMap),
    /// An actual cross-origin request: proxy it and add these headers to the response.
    Simple(HeaderMap),
}

/// The spec default when `maxAge` is unset (0 is not a valid configured value).
const DEFAULT_MAX_AGE: u32 = 5;

/// Evaluates the CORS filter for a request's method and headers.
///
/// Wildcards are answered literally (`*`) only without credentials; with credentials the
/// browser ignores `*`, so the concrete origin, method and requested headers are echoed.
/// A preflight for a method outside `allowMethods` gets no CORS headers (the browser then
/// blocks the request), like a disallowed origin.
pub fn cors(cors: &Cors, method: &Method, request_headers: &HeaderMap) -> CorsOutcome {
    let Some(origin) = request_headers.get(ORIGIN) else {
        return CorsOutcome::NotCors;
    };
    let requested_method = if method == Method::OPTIONS {
        request_headers.get(ACCESS_CONTROL_REQUEST_METHOD)
    } else {
        None
    };
    let preflight = requested_method.is_some();
    let mut out = HeaderMap::new();
    let allowed = origin
        .to_str()
        .ok()
        .and_then(|o| origin_allowed(&cors.allow_origins, o));
    let Some(any_origin) = allowed else {
        return if preflight {
            CorsOutcome::Preflight(out)
        } else {
            CorsOutcome::Simple(out)
        };
    };

    let credentials = cors.allow_credentials;
    if any_origin && !credentials {
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    } else {
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    if credentials {
        out.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    insert_list(
        &mut out,
        ACCESS_CONTROL_EXPOSE_HEADERS,
        &cors.expose_headers,
    );

    let Some(requested_method) = requested_method else {
        return CorsOutcome::Simple(out);
    };

    let wildcard_methods = cors.allow_methods.iter().any(|m| m == "*");
    if wildcard_methods {
        if credentials {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, requested_method.clone());
        } else {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("*"));
        }
    } else {
        let ok = cors
            .allow_methods
            .iter()
            .any(|m| m.as_bytes() == requested_method.as_bytes());
        if !ok {
            return CorsOutcome::Preflight(HeaderMap::new());
        }
        insert_list(&mut out, ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods);
    }

    if cors.allow_headers.iter().any(|h| h == "*") {
        if credentials {
            if let Some(requested) = request_headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
            }
        } else {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
        }
    } else {
        insert_list(&mut out, ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers);
    }

    let max_age = if cors.max_age == 0 {
        DEFAULT_MAX_AGE
    } else {
        cors.max_age
    };
    out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age));
    CorsOutcome::Preflight(out)
}

fn insert_list(out: &mut HeaderMap, name: HeaderName, values: &[String]) {
    if values.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&values.join(", ")) {
        out.insert(name, value);
    }
}

/// `Some(true)` when allowed by `*`, `Some(false)` when allowed by a specific entry (exact, or a
/// `scheme://*.host[:port]` pattern where `*` covers one or more labels), `None` when denied.
fn origin_allowed(patterns: &[String], origin: &str) -> Option<bool> {
    let mut any = false;
    for pattern in patterns {
        if pattern == "*" {
            any = true;
        } else if pattern.eq_ignore_ascii_case(origin) || wildcard_origin(pattern, origin) {
            return Some(false);
        }
    }
    any.then_some(true)
}

fn wildcard_origin(pattern: &str, origin: &str) -> bool {
    let Some((head, tail)) = pattern.split_once('*') else {
        return false;
    };
    if origin.len() < head.len() + tail.len() {
        return false;
    }
    let (o_head, rest) = origin.split_at_checked(head.len()).unwrap_or(("", origin));
    let Some((middle, o_tail)) = rest.split_at_checked(rest.len() - tail.len()) else {
        return false;
    };
    o_head.eq_ignore_ascii_case(head)
        && o_tail.eq_ignore_ascii_case(tail)
        && !middle.is_empty()
        && !middle.contains(['/', ':', '*'])
        && !middle.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The four CORS filters of the HTTPRouteCORS conformance manifests.
    fn cors_1() -> Cors {
        Cors {
            allow_origins: strings(&["https://www.foo.com", "https://*.bar.com"]),
            allow_methods: strings(&["GET", "OPTIONS"]),
            allow_headers: strings(&["x-header-1", "x-header-2"]),
            expose_headers: strings(&["x-header-3", "x-header-4"]),
            allow_credentials: true,
            max_age: 3600,
        }
    }
    fn cors_2() -> Cors {
        Cors {
            allow_origins: strings(&["https://www.foo.com"]),
            allow_methods: strings(&["*"]),
            max_age: 5,
            ..Cors::default()
        }
    }
    fn wildcard_origin_cors() -> Cors {
        Cors {
            allow_origins: strings(&["*"]),
            allow_methods: strings(&["PUT"]),
            max_age: 5,
            ..Cors::default()
        }
    }
    fn wildcard_all(credentials: bool) -> Cors {
        Cors {
            allow_origins: strings(&["*"]),
            allow_methods: strings(&["*"]),
            allow_headers: strings(&["*"]),
            allow_credentials: credentials,
            max_age: 5,
            ..Cors::default()
        }
    }

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    enum Kind {
        Preflight,
        Simple,
    }

    /// `expect`: header → acceptable values (whitespace-insensitive), `""` meaning absent.
    struct Case {
        cors: Cors,
        method: Method,
        request: &'static [(&'static str, &'static str)],
        kind: Kind,
        expect: &'static [(&'static str, &'static [&'static str])],
    }

    const PREFLIGHT_1: &[(&str, &[&str])] = &[
        (
            "access-control-allow-methods",
            &["GET,OPTIONS", "OPTIONS,GET"],
        ),
        (
            "access-control-allow-headers",
            &["x-header-1,x-header-2", "x-header-2,x-header-1"],
        ),
        (
            "access-control-expose-headers",
            &["x-header-3,x-header-4", "x-header-4,x-header-3"],
        ),
        ("access-control-max-age", &["3600"]),
        ("access-control-allow-credentials", &["true"]),
    ];

    #[test]
    fn conformance_cases() {
        let req_1 = |origin: &'static str| -> &'static [(&'static str, &'static str)] {
            match origin {
                "https://www.foo.com" => &[
                    ("origin", "https://www.foo.com"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-header-1, x-header-2"),
                ],
                "https://www.bar.com" => &[
                    ("origin", "https://www.bar.com"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-header-1, x-header-2"),
                ],
                _ => &[
                    ("origin", "https://xpto.www.bar.com"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-header-1, x-header-2"),
                ],
            }
        };
        let cases = vec![
            // 1-3: preflights from exact, wildcard and multi-label wildcard origins.
            Case {
                cors: cors_1(),
                method: Method::OPTIONS,
                request: req_1("https://www.foo.com"),
                kind: Kind::Preflight,
                expect: PREFLIGHT_1,
            },
            Case {
                cors: cors_1(),
                method: Method::OPTIONS,
                request: req_1("https://www.bar.com"),
                kind: Kind::Preflight,
                expect: PREFLIGHT_1,
            },
            Case {
                cors: cors_1(),
                method: Method::OPTIONS,
                request: req_1("xpto"),
                kind: Kind::Preflight,
                expect: PREFLIGHT_1,
            },
            // 4: preflight from a non-matching origin.
            Case {
                cors: cors_1(),
                method: Method::OPTIONS,
                request: &[
                    ("origin", "https://foobar.com"),
                    ("access-control-request-method", "GET"),
                ],
                kind: Kind::Preflight,
                expect: &[("access-control-allow-origin", &[""])],
            },
            // 5-7: simple requests.
            Case {
                cors: cors_1(),
                method: Method::GET,
                request: req_1("https://www.foo.com"),
                kind: Kind::Simple,
                expect: &[("access-control-allow-origin", &["https://www.foo.com"])],
            },
            Case {
                cors: cors_1(),
                method: Method::GET,
                request: req_1("https://www.bar.com"),
                kind: Kind::Simple,
                expect: &[("access-control-allow-origin", &["https://www.bar.com"])],
            },
            Case {
                cors: cors_1(),
                method: Method::GET,
                request: &[
                    ("origin", "https://foobar.com"),
                    ("access-control-request-method", "GET"),
                ],
                kind: Kind::Simple,
                expect: &[("access-control-allow-origin", &[""])],
            },
            // 8-9: wildcard methods without credentials.
            Case {
                cors: cors_2(),
                method: Method::OPTIONS,
                request: &[
                    ("origin", "https://www.foo.com"),
                    ("access-control-request-method", "POST"),
                ],
                kind: Kind::Preflight,
                expect: &[
                    ("access-control-allow-methods", &["POST", "*"]),
                    ("access-control-allow-origin", &["https://www.foo.com"]),
                    ("access-control-allow-credentials", &[""]),
                ],
            },
            Case {
                cors: cors_2(),
                method: Method::OPTIONS,
                request: &[
                    ("origin", "https://www.foo.com"),
                    ("access-control-request-method", "POST"),
                ],
                kind: Kind::Preflight,
                expect: &[("access-control-allow-credentials", &[""])],
            },
            // 10-13: wildcard origin.
            Case {
                cors: wildcard_origin_cors(),
                method: Method::OPTIONS,
                request: &[
                    ("origin", "https://foobar.com"),
                    ("access-control-request-method", "PUT"),
                ],
                kind: Kind::Preflight,
                expect: &[
                    ("access-control-allow-origin", &["https://foobar.com", "*"]),
                    ("access-control-allow-methods", &["PUT"]),
                    ("access-control-allow-credentials", &[""]),
                ],
            },
            Case {
                cors: wildcard_origin_cors(),
                method: Method::OPTIONS,
                request: &[
                    ("origin", "https://foobar.com:12345"),
                    ("access-control-request-method", "PUT"),
                ],
                kind: Kind::Preflight,
                expect: &[
                    (
                        "access-control-allow-origin",
                        &["https://foobar.com:12345", "*"],
                    ),
                    ("access-control-allow-methods", &["PUT"]),
                    ("access-control-allow-credentials", &[""]),
                ],
            },
            Case {
                cors: wildcard_origin_cors(),
                method: Method::PUT,
                request: &[("origin", "https://foobar.com:12345")],
                kind: Kind::Simple,
                expect: &[(
                    "access-control-allow-origin",
                    &["https://foobar.com:12345", "*"],
                )],
            },
            Case {
                cors: wildcard_origin_cors(),
                method: Method::PUT,
                request: &[("origin", "https://foobar.com")],
                kind: Kind::Simple,
                expect: &[
                    ("access-control-allow-origin", &["https://foobar.com", "*"]),
                    ("access-control-allow-credentials", &[""]),
                ],
            },
            // 14-15: wildcard methods and headers, with and without credentials.
            Case {
                cors: wildcard_all(true),
                method: Method::OPTIONS,
                request: &[
                    ("origin", "https://other.foo.com"),
                    ("access-control-request-method", "PUT"),
                    ("access-control-request-headers", "x-header-1, x-header-2"),
                ],
                kind: Kind::Preflight,
                expect: &[
                    ("access-control-allow-origin", &["https://other.foo.com"]),
                    ("access-control-allow-methods", &["PUT"]),
                    (
                        "access-control-allow-headers",
                        &["x-header-1,x-header-2", "x-header-2,x-header-1"],
                    ),
                    ("access-control-allow-credentials", &["true"]),
                ],
            },
            Case {
                cors: wildcard_all(false),
                method: Method::OPTIONS,
                request: &[
                    ("origin", "https://other.foo.com"),
                    ("access-control-request-method", "PUT"),
                    ("access-control-request-headers", "x-header-1, x-header-2"),
                ],
                kind: Kind::Preflight,
                expect: &[
                    (
                        "access-control-allow-origin",
                        &["https://other.foo.com", "*"],
                    ),
                    ("access-control-allow-methods", &["PUT", "*"]),
                    (
                        "access-control-allow-headers",
                        &["x-header-1,x-header-2", "x-header-2,x-header-1", "*"],
                    ),
                    ("access-control-allow-credentials", &[""]),
                ],
            },
            // 16-17: simple requests with and without credentials.
            Case {
                cors: wildcard_all(true),
                method: Method::GET,
                request: &[("origin", "https://other.foo.com")],
                kind: Kind::Simple,
                expect: &[
                    ("access-control-allow-origin", &["https://other.foo.com"]),
                    ("access-control-allow-credentials", &["true"]),
                ],
            },
            Case {
                cors: wildcard_all(false),
                method: Method::GET,
                request: &[("origin", "https://other.foo.com")],
                kind: Kind::Simple,
                expect: &[
                    (
                        "access-control-allow-origin",
                        &["https://other.foo.com", "*"],
                    ),
                    ("access-control-allow-credentials", &[""]),
                ],
            },
        ];
        assert_eq!(cases.len(), 17);
        for (i, case) in cases.iter().enumerate() {
            let outcome = cors(&case.cors, &case.method, &headers(case.request));
            let out = match (&case.kind, outcome) {
                (Kind::Preflight, CorsOutcome::Preflight(h))
                | (Kind::Simple, CorsOutcome::Simple(h)) => h,
                (_, other) => panic!("case {}: unexpected outcome {other:?}", i + 1),
            };
            for (name, accepted) in case.expect {
                let got = out.get(*name).map(|v| v.to_str().unwrap().replace(' ', ""));
                let ok = match got.as_deref() {
                    None => accepted.contains(&""),
                    Some(v) => accepted.contains(&v),
                };
                assert!(
                    ok,
                    "case {}: {name} = {got:?}, accepted {accepted:?}",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn preflight_details() {
        // Not CORS without Origin.
        assert_eq!(
            cors(&cors_1(), &Method::GET, &HeaderMap::new()),
            CorsOutcome::NotCors
        );
        // OPTIONS without Access-Control-Request-Method is an actual request.
        let h = headers(&[("origin", "https://www.foo.com")]);
        assert!(
            matches!(cors(&cors_1(), &Method::OPTIONS, &h), CorsOutcome::Simple(m) if !m.is_empty())
        );
        // A method outside allowMethods gets no CORS headers.
        let h = headers(&[
            ("origin", "https://www.foo.com"),
            ("access-control-request-method", "DELETE"),
        ]);
        assert_eq!(
            cors(&cors_1(), &Method::OPTIONS, &h),
            CorsOutcome::Preflight(HeaderMap::new())
        );
        // maxAge 0 (unset) answers the spec default.
        let h = headers(&[
            ("origin", "https://x"),
            ("access-control-request-method", "PUT"),
        ]);
        let c = Cors {
            max_age: 0,
            ..wildcard_origin_cors()
        };
        let CorsOutcome::Preflight(m) = cors(&c, &Method::OPTIONS, &h) else {
            panic!("preflight")
        };
        assert_eq!(m.get("access-control-max-age").unwrap(), "5");
    }

    #[test]
    fn origin_patterns() {
        let p = strings(&["https://*.bar.com", "http://exact.org:8080"]);
        let cases = [
            ("https://a.bar.com", true),
            ("https://a.b.bar.com", true),
            ("HTTPS://A.BAR.COM", true),
            ("https://bar.com", false),
            ("https://.bar.com", false),
            ("http://a.bar.com", false),
            ("https://a.bar.com:444", false),
            ("https://evil.com/.bar.com", false),
            ("http://exact.org:8080", true),
            ("http://exact.org", false),
            ("", false),
        ];
        for (origin, want) in cases {
            assert_eq!(origin_allowed(&p, origin).is_some(), want, "{origin}");
        }
    }
}

//! Table-driven routing tests mirroring the Gateway API conformance manifests.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use strait_config::{
    BackendTarget, ClusterKey, HeaderMatch, HttpMatch, HttpRoute, HttpRule, ListenerConfig,
    ListenerProtocol, PathMatch, PortConfig, QueryParamMatch, RouteRef, StringMatch, Timeouts,
    WeightedBackend,
};

use crate::{Decision, RequestInfo, RouteTable};

const NS: &str = "gateway-conformance-infra";
const T0: &str = "2024-01-01T00:00:00Z";

/// Builder for one HTTPRouteMatch; starts as the compile default (`PathPrefix /`).
#[derive(Clone)]
struct M(HttpMatch);

fn m() -> M {
    M(HttpMatch {
        path: PathMatch::Prefix("/".into()),
        headers: vec![],
        query_params: vec![],
        method: None,
    })
}

impl M {
    fn exact(mut self, p: &str) -> M {
        self.0.path = PathMatch::Exact(p.into());
        self
    }
    fn prefix(mut self, p: &str) -> M {
        self.0.path = PathMatch::Prefix(p.into());
        self
    }
    fn regex(mut self, p: &str) -> M {
        self.0.path = PathMatch::RegularExpression(p.into());
        self
    }
    fn header(mut self, n: &str, v: &str) -> M {
        self.0.headers.push(HeaderMatch {
            name: n.into(),
            value: StringMatch::Exact(v.into()),
        });
        self
    }
    fn header_re(mut self, n: &str, v: &str) -> M {
        self.0.headers.push(HeaderMatch {
            name: n.into(),
            value: StringMatch::RegularExpression(v.into()),
        });
        self
    }
    fn query(mut self, n: &str, v: &str) -> M {
        self.0.query_params.push(QueryParamMatch {
            name: n.into(),
            value: StringMatch::Exact(v.into()),
        });
        self
    }
    fn method(mut self, v: &str) -> M {
        self.0.method = Some(v.into());
        self
    }
}

fn rule(matches: &[M], backend: &str) -> HttpRule {
    HttpRule {
        name: None,
        matches: matches.iter().map(|m| m.0.clone()).collect(),
        filters: vec![],
        backends: vec![WeightedBackend {
            weight: 1,
            target: BackendTarget::Cluster(ClusterKey {
                namespace: NS.into(),
                name: backend.into(),
                port: 8080,
            }),
            filters: vec![],
        }],
        timeouts: Timeouts::default(),
        retry: None,
    }
}

fn route_at(name: &str, ts: &str, hostnames: &[&str], rules: Vec<HttpRule>) -> HttpRoute {
    HttpRoute {
        route: RouteRef {
            kind: "HTTPRoute".into(),
            namespace: NS.into(),
            name: name.into(),
        },
        creation_timestamp: ts.into(),
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        rules,
    }
}

fn route(name: &str, hostnames: &[&str], rules: Vec<HttpRule>) -> HttpRoute {
    route_at(name, T0, hostnames, rules)
}

fn listener(name: &str, hostname: Option<&str>, routes: Vec<HttpRoute>) -> ListenerConfig {
    ListenerConfig {
        name: name.into(),
        hostname: hostname.map(String::from),
        tls: None,
        http_routes: routes,
    }
}

fn table(listeners: Vec<ListenerConfig>) -> RouteTable {
    let port = PortConfig {
        port: 80,
        protocol: ListenerProtocol::Http,
        listeners,
    };
    RouteTable::build(&port).expect("valid table")
}

/// A request: `path` may carry `?query`.
struct Req<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    sni: Option<&'a str>,
}

const GET: Req<'static> = Req {
    method: "GET",
    host: "example.com",
    path: "/",
    headers: &[],
    sni: None,
};

/// `404`, `421`, or the first backend's name of the matched rule.
fn outcome(table: &RouteTable, req: &Req<'_>) -> String {
    let mut headers = HeaderMap::new();
    for (n, v) in req.headers {
        headers.append(
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let method = Method::from_bytes(req.method.as_bytes()).unwrap();
    let (path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path, None),
    };
    let info = RequestInfo {
        method: &method,
        host: req.host,
        path,
        query,
        headers: &headers,
        sni: req.sni,
    };
    match table.route(&info) {
        Decision::NotFound => "404".into(),
        Decision::Misdirected => "421".into(),
        Decision::Matched(m) => match m.rule.backends.first().and_then(|b| b.cluster.as_ref()) {
            Some(c) => c.name.clone(),
            None => "no-backend".into(),
        },
    }
}

fn check(table: &RouteTable, cases: &[(Req<'_>, &str)]) {
    for (i, (req, want)) in cases.iter().enumerate() {
        let got = outcome(table, req);
        assert_eq!(
            got, *want,
            "case {i}: {} {} host={} headers={:?} sni={:?}",
            req.method, req.path, req.host, req.headers, req.sni
        );
    }
}

fn path(p: &str) -> Req<'_> {
    Req { path: p, ..GET }
}

const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";
const V3: &str = "infra-backend-v3";

#[test]
fn path_match_order() {
    let t = table(vec![listener(
        "http",
        None,
        vec![route(
            "path-matching-order",
            &[],
            vec![
                rule(&[m().exact("/match")], V1),
                rule(&[m().exact("/match/exact")], V2),
                rule(&[m().exact("/match/exact/one")], V3),
                rule(&[m().prefix("/match/")], V3),
                rule(&[m().prefix("/match/prefix/")], V1),
                rule(&[m().prefix("/match/prefix/one")], V2),
            ],
        )],
    )]);
    check(
        &t,
        &[
            (path("/match/exact/one"), V3),
            (path("/match/exact"), V2),
            (path("/match"), V1),
            (path("/match/prefix/one/any"), V2),
            (path("/match/prefix/any"), V1),
            (path("/match/any"), V3),
            // Not conformance cases: segment-wise prefixes and the trailing-slash rule.
            (path("/matchx"), "404"),
            (path("/match/prefix"), V1),
            (path("/match/prefix/onex"), V1),
            (path("/match/"), V3),
        ],
    );
}

#[test]
fn exact_path_matching() {
    let t = table(vec![listener(
        "http",
        None,
        vec![route(
            "exact",
            &[],
            vec![
                rule(&[m().exact("/one")], V1),
                rule(&[m().exact("/two")], V2),
            ],
        )],
    )]);
    check(
        &t,
        &[
            (path("/one"), V1),
            (path("/two"), V2),
            (path("/"), "404"),
            (path("/one/example"), "404"),
            (path("/two/"), "404"),
            (path("/Two"), "404"),
        ],
    );
}

#[test]
fn matching_across_routes() {
    let t = table(vec![listener(
        "http",
        None,
        vec![
            route(
                "matching-part1",
                &["example.com", "example.net"],
                vec![rule(&[m().prefix("/"), m().header("version", "one")], V1)],
            ),
            route(
                "matching-part2",
                &["example.com"],
                vec![rule(&[m().prefix("/v2"), m().header("version", "two")], V2)],
            ),
        ],
    )]);
    let host = |h, p, headers| Req {
        host: h,
        path: p,
        headers,
        ..GET
    };
    check(
        &t,
        &[
            (host("example.com", "/", &[]), V1),
            (host("example.com", "/example", &[]), V1),
            (host("example.net", "/example", &[]), V1),
            (host("example.com", "/example", &[("Version", "one")]), V1),
            (host("example.com", "/v2", &[]), V2),
            (host("example.net", "/v2", &[]), V1),
            (host("example.com", "/v2/example", &[]), V2),
            (host("example.com", "/", &[("Version", "two")]), V2),
            (host("example.org", "/", &[]), "404"),
        ],
    );
}

#[test]
fn query_param_matching() {
    let t = table(vec![listener(
        "http",
        None,
        vec![route(
            "query-param-matching",
            &[],
            vec![
                rule(&[m().query("animal", "whale")], V1),
                rule(&[m().query("animal", "dolphin")], V2),
                rule(
                    &[
                        m().query("animal", "dolphin").query("color", "blue"),
                        m().query("ANIMAL", "Whale"),
                    ],
                    V3,
                ),
                rule(&[m().prefix("/path1").query("animal", "whale")], V1),
                rule(&[m().header("version", "one").query("animal", "whale")], V2),
                rule(
                    &[m()
                        .prefix("/path2")
                        .header("version", "two")
                        .query("animal", "whale")],
                    V3,
                ),
                rule(
                    &[
                        m().prefix("/path3").query("animal", "shark"),
                        m().prefix("/path4")
                            .header("version", "three")
                            .query("animal", "kraken"),
                    ],
                    V1,
                ),
                rule(&[m().prefix("/path5")], V1),
                rule(&[m().query("animal", "hydra")], V2),
                rule(&[m().header("version", "four")], V3),
            ],
        )],
    )]);
    let ph = |p, headers| Req {
        path: p,
        headers,
        ..GET
    };
    check(
        &t,
        &[
            (path("/?animal=whale"), V1),
            (path("/?animal=dolphin"), V2),
            (path("/?animal=dolphin&color=blue"), V3),
            (path("/?ANIMAL=Whale"), V3),
            (path("/?animal=whale&otherparam=irrelevant"), V1),
            (path("/?animal=dolphin&color=yellow"), V2),
            (path("/?color=blue"), "404"),
            (path("/?animal=dog"), "404"),
            (path("/?animal=whaledolphin"), "404"),
            (path("/"), "404"),
            (path("/path1?animal=whale"), V1),
            (ph("/?animal=whale", &[("version", "one")]), V2),
            (ph("/path2?animal=whale", &[("version", "two")]), V3),
            (path("/path3?animal=shark"), V1),
            (ph("/path4?animal=kraken", &[("version", "three")]), V1),
            (path("/?animal=shark"), "404"),
            (path("/path4?animal=kraken"), "404"),
            (path("/path5?animal=hydra"), V1),
            (ph("/?animal=hydra", &[("version", "four")]), V3),
            // Not conformance cases: first value wins, values are decoded.
            (path("/?animal=dolphin&animal=whale"), V2),
            (path("/?animal=wh%61le"), V1),
        ],
    );
}

#[test]
fn method_matching() {
    let t = table(vec![listener(
        "http",
        None,
        vec![route(
            "method-matching",
            &[],
            vec![
                rule(&[m().method("POST")], V1),
                rule(&[m().method("GET")], V2),
                rule(&[m().prefix("/path1").method("GET")], V1),
                rule(&[m().header("version", "one").method("PUT")], V2),
                rule(
                    &[m().prefix("/path2").header("version", "two").method("POST")],
                    V3,
                ),
                rule(
                    &[
                        m().prefix("/path3").method("PATCH"),
                        m().prefix("/path4")
                            .header("version", "three")
                            .method("DELETE"),
                    ],
                    V1,
                ),
                rule(&[m().prefix("/path5")], V1),
                rule(&[m().method("PATCH")], V2),
                rule(&[m().header("version", "four")], V3),
            ],
        )],
    )]);
    let r = |method, p, headers| Req {
        method,
        path: p,
        headers,
        ..GET
    };
    check(
        &t,
        &[
            (r("POST", "/", &[]), V1),
            (r("GET", "/", &[]), V2),
            (r("HEAD", "/", &[]), "404"),
            (r("GET", "/path1", &[]), V1),
            (r("PUT", "/", &[("version", "one")]), V2),
            (r("POST", "/path2", &[("version", "two")]), V3),
            (r("PATCH", "/path3", &[]), V1),
            (r("DELETE", "/path4", &[("version", "three")]), V1),
            (r("PUT", "/", &[]), "404"),
            (r("DELETE", "/path4", &[]), "404"),
            (r("PATCH", "/path5", &[]), V1),
            (r("PATCH", "/", &[("version", "four")]), V2),
        ],
    );
}

#[test]
fn header_matching() {
    let t = table(vec![listener(
        "http",
        None,
        vec![route(
            "header-matching",
            &[],
            vec![
                rule(&[m().header("version", "one")], V1),
                rule(&[m().header("version", "two")], V2),
                rule(
                    &[m().header("version", "two").header("color", "orange")],
                    V1,
                ),
                rule(
                    &[m().header("color", "blue"), m().header("color", "green")],
                    V1,
                ),
                rule(
                    &[m().header("color", "red"), m().header("color", "yellow")],
                    V2,
                ),
            ],
        )],
    )]);
    let h = |headers| Req { headers, ..GET };
    check(
        &t,
        &[
            (h(&[("Version", "one")]), V1),
            (h(&[("Version", "two")]), V2),
            (h(&[("Version", "two"), ("Color", "orange")]), V1),
            (h(&[("Version", "two"), ("Color", "blue")]), V2),
            (h(&[("Color", "orange")]), "404"),
            (h(&[("Some-Other-Header", "one")]), "404"),
            (h(&[("Color", "blue")]), V1),
            (h(&[("Color", "green")]), V1),
            (h(&[("Color", "red")]), V2),
            (h(&[("Color", "yellow")]), V2),
            (h(&[("Color", "purple")]), "404"),
            // Not conformance cases: values are case-sensitive, repeated headers are joined.
            (h(&[("Version", "ONE")]), "404"),
            (h(&[("Color", "red"), ("Color", "blue")]), "404"),
        ],
    );
}

#[test]
fn header_regex_is_full_match() {
    let t = table(vec![listener(
        "http",
        None,
        vec![route(
            "re",
            &[],
            vec![
                rule(&[m().header_re("x-v", "v[0-9]+")], V1),
                rule(&[m().header_re("x-v", "a,b")], V2),
            ],
        )],
    )]);
    let h = |headers| Req { headers, ..GET };
    check(
        &t,
        &[
            (h(&[("X-V", "v12")]), V1),
            (h(&[("X-V", "xv12")]), "404"),
            (h(&[("X-V", "v12x")]), "404"),
            (h(&[("X-V", "a"), ("x-v", "b")]), V2),
        ],
    );
}

#[test]
fn listener_hostname_matching() {
    let v3 = route("backend-v3", &[], vec![rule(&[m()], V3)]);
    let t = table(vec![
        listener(
            "listener-1",
            Some("bar.com"),
            vec![route("backend-v1", &[], vec![rule(&[m()], V1)])],
        ),
        listener(
            "listener-2",
            Some("foo.bar.com"),
            vec![route("backend-v2", &[], vec![rule(&[m()], V2)])],
        ),
        listener("listener-3", Some("*.bar.com"), vec![v3.clone()]),
        listener("listener-4", Some("*.foo.com"), vec![v3]),
    ]);
    let host = |h| Req { host: h, ..GET };
    check(
        &t,
        &[
            (host("bar.com"), V1),
            (host("foo.bar.com"), V2),
            (host("baz.bar.com"), V3),
            (host("boo.bar.com"), V3),
            (host("multiple.prefixes.bar.com"), V3),
            (host("multiple.prefixes.foo.com"), V3),
            (host("foo.com"), "404"),
            (host("no.matching.host"), "404"),
        ],
    );
    assert_eq!(t.listener_for_host("a.b.bar.com"), Some("listener-3"));
    assert_eq!(t.listener_for_host("FOO.BAR.COM"), Some("listener-2"));
    assert_eq!(t.listener_for_host("foo.com"), None);
}

/// GatewayHTTPListenerIsolation: both Gateways; the second one's routes carry hostnames,
/// intersected with the listener as compile does.
#[test]
fn http_listener_isolation() {
    let gw = |hostnames: [&[&str]; 4]| {
        let r = |name: &str, hosts: &[&str], prefix: &str| {
            route(name, hosts, vec![rule(&[m().prefix(prefix)], V1)])
        };
        table(vec![
            listener(
                "empty-hostname",
                None,
                vec![r("to-empty", hostnames[0], "/empty-hostname")],
            ),
            listener(
                "wildcard-example-com",
                Some("*.example.com"),
                vec![r("to-wc", hostnames[1], "/wildcard-example-com")],
            ),
            listener(
                "wildcard-foo-example-com",
                Some("*.foo.example.com"),
                vec![r("to-wc-foo", hostnames[2], "/wildcard-foo-example-com")],
            ),
            listener(
                "abc-foo-example-com",
                Some("abc.foo.example.com"),
                vec![r("to-abc", hostnames[3], "/abc-foo-example-com")],
            ),
        ])
    };
    let plain = gw([&[], &[], &[], &[]]);
    let intersected = gw([
        &[
            "bar.com",
            "*.example.com",
            "*.foo.example.com",
            "abc.foo.example.com",
        ],
        &["*.example.com", "*.foo.example.com", "abc.foo.example.com"],
        &[
            "*.foo.example.com",
            "*.foo.example.com",
            "abc.foo.example.com",
        ],
        &["abc.foo.example.com"],
    ]);
    let hosts = [
        "bar.com",
        "bar.example.com",
        "bar.foo.example.com",
        "abc.foo.example.com",
    ];
    let paths = [
        "/empty-hostname",
        "/wildcard-example-com",
        "/wildcard-foo-example-com",
        "/abc-foo-example-com",
    ];
    for t in [&plain, &intersected] {
        for (hi, host) in hosts.iter().enumerate() {
            for (pi, p) in paths.iter().enumerate() {
                let want = if hi == pi { V1 } else { "404" };
                assert_eq!(
                    outcome(
                        t,
                        &Req {
                            host,
                            path: p,
                            ..GET
                        }
                    ),
                    want,
                    "{host}{p}"
                );
            }
        }
    }
}

#[test]
fn https_misdirected_requests() {
    let r = |name: &str, hosts: &[&str], backend: &str| {
        route(
            name,
            hosts,
            vec![rule(&[m().prefix("/detect-misdirected-requests")], backend)],
        )
    };
    let t = table(vec![
        listener("https", None, vec![r("test-1", &["example.org"], V1)]),
        listener(
            "https-with-hostname",
            Some("second-example.org"),
            vec![r("test-2", &[], V2)],
        ),
        listener(
            "https-with-wildcard-hostname",
            Some("*.wildcard.org"),
            vec![r("test-3", &[], V3)],
        ),
        listener(
            "https-with-hostname-matching-wildcard",
            Some("fourth-example.wildcard.org"),
            vec![r("test-4", &[], V1)],
        ),
    ]);
    let req = |sni, host| Req {
        sni: Some(sni),
        host,
        path: "/detect-misdirected-requests",
        ..GET
    };
    check(
        &t,
        &[
            (req("example.org", "example.org"), V1),
            (req("example.org", "second-example.org"), "421"),
            (req("example.org", "unknown-example.org"), "404"),
            (req("second-example.org", "second-example.org"), V2),
            (req("second-example.org", "example.org"), "421"),
            (req("second-example.org", "unknown-example.org"), "421"),
            (
                req("third-example.wildcard.org", "third-example.wildcard.org"),
                V3,
            ),
            (
                req("third-example.wildcard.org", "fith-example.wildcard.org"),
                V3,
            ),
            (
                req("third-example.wildcard.org", "fourth-example.wildcard.org"),
                "421",
            ),
            (
                req("third-example.wildcard.org", "second-example.org"),
                "421",
            ),
            (
                req("third-example.wildcard.org", "unknown-example.org"),
                "421",
            ),
            (
                req("fourth-example.wildcard.org", "fourth-example.wildcard.org"),
                V1,
            ),
            (
                req("fourth-example.wildcard.org", "fith-example.wildcard.org"),
                "421",
            ),
            (req("unknown-example.org", "example.org"), V1),
            (req("unknown-example.org", "unknown-example.org"), "404"),
        ],
    );
}

#[test]
fn sni_without_matching_listener_defers_to_host() {
    let t = table(vec![listener(
        "a",
        Some("a.example"),
        vec![route("r", &[], vec![rule(&[m()], V1)])],
    )]);
    check(
        &t,
        &[
            (
                Req {
                    sni: Some("other.example"),
                    host: "a.example",
                    ..GET
                },
                V1,
            ),
            (
                Req {
                    sni: None,
                    host: "a.example",
                    ..GET
                },
                V1,
            ),
            (
                Req {
                    sni: Some("a.example"),
                    host: "b.example",
                    ..GET
                },
                "404",
            ),
        ],
    );
}

#[test]
fn hostname_precedence() {
    // Same path everywhere: the most specific matching route hostname wins; a less specific
    // hostname still serves requests that no rule of a more specific one matches.
    let t = table(vec![listener(
        "http",
        None,
        vec![
            route("any", &[], vec![rule(&[m().prefix("/")], "any")]),
            route(
                "wild-short",
                &["*.com"],
                vec![rule(&[m().prefix("/")], "wild-short")],
            ),
            route(
                "wild-long",
                &["*.example.com"],
                vec![rule(&[m().prefix("/w")], "wild-long")],
            ),
            route(
                "exact",
                &["a.example.com"],
                vec![rule(&[m().prefix("/e")], "exact")],
            ),
        ],
    )]);
    let r = |host, p| Req {
        host,
        path: p,
        ..GET
    };
    check(
        &t,
        &[
            (r("a.example.com", "/e"), "exact"),
            (r("a.example.com", "/w"), "wild-long"),
            (r("a.example.com", "/x"), "wild-short"),
            (r("b.example.com", "/e"), "wild-short"),
            (r("b.example.com", "/w/1"), "wild-long"),
            (r("x.y.example.com", "/w"), "wild-long"),
            (r("example.com", "/w"), "wild-short"),
            (r("example.org", "/w"), "any"),
            // Hosts are compared case-insensitively even if the caller did not lower-case.
            (r("A.Example.COM", "/e"), "exact"),
        ],
    );
}

#[test]
fn tie_breaks_across_routes() {
    let t = table(vec![listener(
        "http",
        None,
        vec![
            route_at(
                "b-newer",
                "2024-02-01T00:00:00Z",
                &[],
                vec![rule(&[m().prefix("/same")], "b-newer")],
            ),
            route_at(
                "z-older",
                "2023-01-01T00:00:00Z",
                &[],
                vec![rule(&[m().prefix("/same")], "z-older")],
            ),
            route_at("b", T0, &[], vec![rule(&[m().prefix("/tie")], "b")]),
            route_at(
                "a",
                T0,
                &[],
                vec![
                    rule(&[m().prefix("/tie")], "a"),
                    rule(&[m().prefix("/tie")], "a-second"),
                ],
            ),
            // More specific conditions beat age.
            route_at(
                "young",
                "2025-01-01T00:00:00Z",
                &[],
                vec![rule(&[m().prefix("/same").header("x", "1")], "young")],
            ),
            route_at(
                "q",
                T0,
                &[],
                vec![
                    rule(&[m().prefix("/q").query("a", "1")], "q1"),
                    rule(&[m().prefix("/q").query("a", "1").query("b", "2")], "q2"),
                ],
            ),
        ],
    )]);
    let r = |p, headers| Req {
        path: p,
        headers,
        ..GET
    };
    check(
        &t,
        &[
            (r("/same", &[]), "z-older"),
            (r("/same", &[("x", "1")]), "young"),
            (r("/tie/x", &[]), "a"),
            (r("/q?a=1&b=2", &[]), "q2"),
            (r("/q?a=1", &[]), "q1"),
        ],
    );
}

#[test]
fn regex_paths_sit_between_exact_and_prefix() {
    let t = table(vec![listener(
        "http",
        None,
        vec![route(
            "re",
            &[],
            vec![
                rule(&[m().prefix("/api/v1/users")], "prefix"),
                rule(&[m().regex("/api/v[0-9]+/.*")], "regex-short"),
                rule(&[m().regex("/api/v[0-9]+/users/[0-9]+")], "regex-long"),
                rule(&[m().exact("/api/v1/users/7")], "exact"),
            ],
        )],
    )]);
    check(
        &t,
        &[
            (path("/api/v1/users/7"), "exact"),
            (path("/api/v1/users/8"), "regex-long"),
            (path("/api/v1/users"), "regex-short"),
            (path("/api/vx/users"), "404"),
            // Anchored: a regex must match the whole path.
            (path("/x/api/v1/a"), "404"),
        ],
    );
}

#[test]
fn empty_port_and_unknown_hosts_are_not_found() {
    let t = table(vec![]);
    assert_eq!(outcome(&t, &GET), "404");
    let t = table(vec![listener("only", Some("a.example"), vec![])]);
    assert_eq!(
        outcome(
            &t,
            &Req {
                host: "a.example",
                ..GET
            }
        ),
        "404"
    );
    assert_eq!(outcome(&t, &Req { host: "", ..GET }), "404");
}

#[test]
fn matched_carries_listener_route_and_path_match() {
    let t = table(vec![listener(
        "web",
        None,
        vec![route("r1", &[], vec![rule(&[m().prefix("/p/")], V1)])],
    )]);
    let headers = HeaderMap::new();
    let info = RequestInfo {
        method: &Method::GET,
        host: "h",
        path: "/p/x",
        query: None,
        headers: &headers,
        sni: None,
    };
    let Decision::Matched(found) = t.route(&info) else {
        panic!("expected a match")
    };
    assert_eq!(found.listener, "web");
    assert_eq!(found.route.name, "r1");
    assert_eq!(found.path_match, &PathMatch::Prefix("/p/".into()));
}

#[test]
fn build_errors_name_the_route() {
    let bad = |mm: M| {
        let port = PortConfig {
            port: 80,
            protocol: ListenerProtocol::Http,
            listeners: vec![listener(
                "l",
                None,
                vec![route("bad", &[], vec![rule(&[mm], V1)])],
            )],
        };
        RouteTable::build(&port).expect_err("invalid").to_string()
    };
    let cases = [
        m().regex("("),
        m().header_re("x", "["),
        m().header("bad name", "v"),
        m().method("BAD METHOD"),
    ];
    for c in cases {
        let msg = bad(c);
        assert!(
            msg.contains("HTTPRoute gateway-conformance-infra/bad"),
            "{msg}"
        );
    }
}

#[test]
fn pick_backend_by_weight() {
    let mut r = rule(&[m()], V1);
    r.backends[0].weight = 0;
    let mut b2 = r.backends[0].clone();
    b2.weight = 3;
    if let BackendTarget::Cluster(c) = &mut b2.target {
        c.name = V2.into();
    }
    let mut b3 = b2.clone();
    b3.weight = 1;
    if let BackendTarget::Cluster(c) = &mut b3.target {
        c.name = V3.into();
    }
    r.backends.push(b2);
    r.backends.push(b3);
    let compiled = crate::Rule::from(&r);
    let name = |roll| {
        compiled
            .pick_backend(roll)
            .and_then(|b| b.cluster.as_ref())
            .map(|c| c.name.clone())
    };
    let cases = [(0, V2), (1, V2), (2, V2), (3, V3), (4, V2), (7, V3)];
    for (roll, want) in cases {
        assert_eq!(name(roll).as_deref(), Some(want), "roll {roll}");
    }
    let mut zero = rule(&[m()], V1);
    zero.backends[0].weight = 0;
    assert!(crate::Rule::from(&zero).pick_backend(5).is_none());
    zero.backends.clear();
    assert!(crate::Rule::from(&zero).pick_backend(5).is_none());
    let mut invalid = rule(&[m()], V1);
    invalid.backends[0].target = BackendTarget::Invalid {
        reason: "missing".into(),
    };
    let invalid = crate::Rule::from(&invalid);
    assert!(invalid.pick_backend(0).is_some_and(|b| b.cluster.is_none()));
}

#[test]
fn rule_without_matches_defaults_to_prefix_root() {
    let mut r = rule(&[], V1);
    r.matches.clear();
    let t = table(vec![listener("http", None, vec![route("r", &[], vec![r])])]);
    check(&t, &[(path("/anything/at/all"), V1)]);
}

//! RequestRedirect `Location` computation and URLRewrite paths.

use std::fmt::Write as _;

use strait_config::{PathMatch, PathModifier, RequestRedirect};

use crate::path::{prefix_key, prefix_matches};

/// The request as the client addressed it, for computing redirects.
#[derive(Clone, Copy, Debug)]
pub struct RequestTarget<'r> {
    /// `http` or `https`: how the client reached the listener.
    pub scheme: &'r str,
    /// Host without port.
    pub host: &'r str,
    /// The listener port the request arrived on (the Gateway's port, not a local mapping).
    pub listener_port: u16,
    pub path: &'r str,
    pub query: Option<&'r str>,
}

fn well_known_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else {
        None
    }
}

/// The `Location` value for a RequestRedirect, per the spec's port/scheme defaulting rules:
/// an explicit port wins; otherwise an explicit scheme implies its well-known port; otherwise the
/// listener port is kept. Port 80 with http and 443 with https are omitted. The query string is
/// preserved.
pub fn redirect_location(
    redirect: &RequestRedirect,
    target: &RequestTarget<'_>,
    matched: &PathMatch,
) -> String {
    let scheme = redirect.scheme.as_deref().filter(|s| !s.is_empty());
    let port = match (redirect.port, scheme) {
        (Some(port), _) => port,
        (None, Some(s)) => well_known_port(s).unwrap_or(target.listener_port),
        (None, None) => target.listener_port,
    };
    let scheme = scheme.unwrap_or(target.scheme).to_ascii_lowercase();
    let host = redirect.hostname.as_deref().unwrap_or(target.host);
    let path = match &redirect.path {
        Some(modifier) => rewrite_path(modifier, matched, target.path),
        None => target.path.to_string(),
    };

    let mut location = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    location.push_str(&scheme);
    location.push_str("://");
    if host.contains(':') && !host.starts_with('[') {
        let _ = write!(location, "[{host}]");
    } else {
        location.push_str(host);
    }
    if well_known_port(&scheme) != Some(port) {
        let _ = write!(location, ":{port}");
    }
    if !path.starts_with('/') {
        location.push('/');
    }
    location.push_str(&path);
    if let Some(query) = target.query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(query);
    }
    location
}

/// The rewritten path (without query) for a URLRewrite or redirect path modifier.
///
/// `ReplacePrefixMatch` replaces the matched prefix segment-wise: with prefix `/foo`,
/// `/foo/baz` becomes `/bar/baz` for `/bar` and `/baz` for `/`; `/foo` becomes `/bar` or `/`.
/// An Exact match is treated as a prefix equal to the whole path; with a RegularExpression
/// match (which compile rejects) the path is kept.
pub fn rewrite_path(modifier: &PathModifier, matched: &PathMatch, path: &str) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(full) => non_empty(full.clone()),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let prefix = match matched {
                PathMatch::Prefix(p) | PathMatch::Exact(p) => p,
                PathMatch::RegularExpression(_) => return path.to_string(),
            };
            let key = prefix_key(prefix);
            if !prefix_matches(key, path) {
                return path.to_string();
            }
            let rest = &path[key.len()..];
            if rest.is_empty() {
                return non_empty(replacement.clone());
            }
            let base = replacement.trim_end_matches('/');
            let mut out = String::with_capacity(base.len() + rest.len());
            out.push_str(base);
            out.push_str(rest);
            non_empty(out)
        }
    }
}

fn non_empty(path: String) -> String {
    if path.is_empty() {
        "/".to_string()
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.to_string())
    }

    fn redirect(
        scheme: Option<&str>,
        hostname: Option<&str>,
        port: Option<u16>,
        path: Option<PathModifier>,
    ) -> RequestRedirect {
        RequestRedirect {
            scheme: scheme.map(String::from),
            hostname: hostname.map(String::from),
            path,
            port,
            status_code: 302,
        }
    }

    fn target<'a>(scheme: &'a str, listener_port: u16, path: &'a str) -> RequestTarget<'a> {
        RequestTarget {
            scheme,
            host: "gw.example",
            listener_port,
            path,
            query: None,
        }
    }

    /// Every case of HTTPRouteRedirectPortAndScheme (listeners http:80, http:8080, https:443).
    #[test]
    fn redirect_port_and_scheme_conformance() {
        let h = Some("example.org");
        let cases = [
            (
                ("http", 80),
                redirect(None, h, None, None),
                "http://example.org/p",
            ),
            (
                ("http", 80),
                redirect(None, h, Some(80), None),
                "http://example.org/p",
            ),
            (
                ("http", 80),
                redirect(None, h, Some(8080), None),
                "http://example.org:8080/p",
            ),
            (
                ("http", 80),
                redirect(Some("https"), h, None, None),
                "https://example.org/p",
            ),
            (
                ("http", 80),
                redirect(Some("https"), h, Some(443), None),
                "https://example.org/p",
            ),
            (
                ("http", 80),
                redirect(Some("https"), h, Some(8443), None),
                "https://example.org:8443/p",
            ),
            (
                ("http", 8080),
                redirect(None, h, None, None),
                "http://example.org:8080/p",
            ),
            (
                ("http", 8080),
                redirect(None, h, Some(80), None),
                "http://example.org/p",
            ),
            (
                ("http", 8080),
                redirect(Some("https"), h, None, None),
                "https://example.org/p",
            ),
            (
                ("https", 443),
                redirect(None, h, None, None),
                "https://example.org/p",
            ),
            (
                ("https", 443),
                redirect(None, h, Some(443), None),
                "https://example.org/p",
            ),
            (
                ("https", 443),
                redirect(None, h, Some(8443), None),
                "https://example.org:8443/p",
            ),
            (
                ("https", 443),
                redirect(Some("http"), h, None, None),
                "http://example.org/p",
            ),
            (
                ("https", 443),
                redirect(Some("http"), h, Some(80), None),
                "http://example.org/p",
            ),
            (
                ("https", 443),
                redirect(Some("http"), h, Some(8080), None),
                "http://example.org:8080/p",
            ),
        ];
        for (i, ((scheme, port), r, want)) in cases.iter().enumerate() {
            let got = redirect_location(r, &target(scheme, *port, "/p"), &prefix("/p"));
            assert_eq!(&got, want, "case {i}");
        }
    }

    /// HTTPRouteRedirectPath / Port / Scheme / HostAndStatus and their Mesh variants
    /// (listener http:80, request host gw.example).
    #[test]
    fn redirect_path_port_scheme_host_conformance() {
        let full = |p: &str| Some(PathModifier::ReplaceFullPath(p.into()));
        let pre = |p: &str| Some(PathModifier::ReplacePrefixMatch(p.into()));
        let h = Some("example.org");
        let cases = [
            // HTTPRouteRedirectPath
            (
                "/original-prefix",
                "/original-prefix/lemon",
                redirect(None, None, None, pre("/replacement-prefix")),
                "http://gw.example/replacement-prefix/lemon",
            ),
            (
                "/full",
                "/full/path/original",
                redirect(None, None, None, full("/full-path-replacement")),
                "http://gw.example/full-path-replacement",
            ),
            (
                "/path-and-host",
                "/path-and-host",
                redirect(None, h, None, pre("/replacement-prefix")),
                "http://example.org/replacement-prefix",
            ),
            (
                "/path-and-status",
                "/path-and-status",
                redirect(None, None, None, pre("/replacement-prefix")),
                "http://gw.example/replacement-prefix",
            ),
            (
                "/full-path-and-host",
                "/full-path-and-host",
                redirect(None, h, None, full("/replacement-full")),
                "http://example.org/replacement-full",
            ),
            (
                "/full-path-and-status",
                "/full-path-and-status",
                redirect(None, None, None, full("/replacement-full")),
                "http://gw.example/replacement-full",
            ),
            // HTTPRouteRedirectPort
            (
                "/port",
                "/port",
                redirect(None, None, Some(8083), None),
                "http://gw.example:8083/port",
            ),
            (
                "/port-and-host",
                "/port-and-host",
                redirect(None, h, Some(8083), None),
                "http://example.org:8083/port-and-host",
            ),
            // HTTPRouteRedirectScheme
            (
                "/scheme",
                "/scheme",
                redirect(Some("https"), None, None, None),
                "https://gw.example/scheme",
            ),
            (
                "/scheme-and-host",
                "/scheme-and-host",
                redirect(Some("https"), h, None, None),
                "https://example.org/scheme-and-host",
            ),
            // HTTPRouteRedirectHostAndStatus
            (
                "/hostname-redirect",
                "/hostname-redirect",
                redirect(None, h, None, None),
                "http://example.org/hostname-redirect",
            ),
        ];
        for (i, (matched, path, r, want)) in cases.iter().enumerate() {
            let got = redirect_location(r, &target("http", 80, path), &prefix(matched));
            assert_eq!(&got, want, "case {i}");
        }
    }

    #[test]
    fn redirect_keeps_query_and_brackets_ipv6() {
        let r = redirect(None, Some("::1"), Some(8080), None);
        let t = RequestTarget {
            query: Some("a=1&b"),
            ..target("http", 80, "/x")
        };
        assert_eq!(
            redirect_location(&r, &t, &prefix("/")),
            "http://[::1]:8080/x?a=1&b"
        );
    }

    #[test]
    fn rewrite_path_cases() {
        let pre = |p: &str| PathModifier::ReplacePrefixMatch(p.into());
        let cases = [
            // HTTPRouteRewritePath
            (
                pre("/one"),
                prefix("/prefix/one"),
                "/prefix/one/two",
                "/one/two",
            ),
            (
                pre("/"),
                prefix("/strip-prefix"),
                "/strip-prefix/three",
                "/three",
            ),
            (pre("/"), prefix("/strip-prefix"), "/strip-prefix", "/"),
            (
                PathModifier::ReplaceFullPath("/one".into()),
                prefix("/full/one"),
                "/full/one/two",
                "/one",
            ),
            (
                PathModifier::ReplaceFullPath("/test".into()),
                prefix("/full/rewrite-path-and-modify-headers"),
                "/full/rewrite-path-and-modify-headers/test",
                "/test",
            ),
            (
                pre("/prefix"),
                prefix("/prefix/rewrite-path-and-modify-headers"),
                "/prefix/rewrite-path-and-modify-headers/one",
                "/prefix/one",
            ),
            // Segment-wise details
            (pre("/bar"), prefix("/foo"), "/foo/baz", "/bar/baz"),
            (pre("/bar"), prefix("/foo"), "/foo", "/bar"),
            (pre("/bar"), prefix("/foo/"), "/foo/baz", "/bar/baz"),
            (pre("/bar/"), prefix("/foo"), "/foo/baz", "/bar/baz"),
            (pre("/bar"), prefix("/foo"), "/foo/", "/bar/"),
            (pre("/new"), prefix("/"), "/abc", "/new/abc"),
            (pre("/"), prefix("/"), "/abc", "/abc"),
            (pre("/x"), PathMatch::Exact("/e".into()), "/e", "/x"),
            (
                pre("/x"),
                PathMatch::RegularExpression("/e.*".into()),
                "/eee",
                "/eee",
            ),
            (pre("/x"), prefix("/foo"), "/other", "/other"),
            (
                PathModifier::ReplaceFullPath(String::new()),
                prefix("/"),
                "/a",
                "/",
            ),
        ];
        for (i, (modifier, matched, path, want)) in cases.iter().enumerate() {
            assert_eq!(rewrite_path(modifier, matched, path), *want, "case {i}");
        }
    }
}

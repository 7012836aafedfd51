//! Listener/route hostname intersection (Gateway API hostname matching rules).
//!
//! A wildcard `*.example.com` matches any name with at least one more label in front of
//! `example.com` (so `a.b.example.com` too) but never `example.com` itself.

/// Whether `pattern` (exact or `*.` wildcard) matches the exact name `host`.
fn wildcard_covers(suffix: &str, host: &str) -> bool {
    // `suffix` is the wildcard without the leading `*`, e.g. `.example.com`.
    host.len() > suffix.len() && host.ends_with(suffix)
}

/// Intersects one listener hostname with one route hostname; returns the more specific name
/// when they overlap.
pub(crate) fn intersect_one(listener: &str, route: &str) -> Option<String> {
    let listener = listener.to_ascii_lowercase();
    let route = route.to_ascii_lowercase();
    match (listener.strip_prefix('*'), route.strip_prefix('*')) {
        (None, None) => (listener == route).then_some(route),
        (Some(ls), None) => wildcard_covers(ls, &route).then_some(route),
        (None, Some(rs)) => wildcard_covers(rs, &listener).then_some(listener),
        (Some(ls), Some(rs)) => {
            if rs.ends_with(ls) {
                Some(route)
            } else if ls.ends_with(rs) {
                Some(listener)
            } else {
                None
            }
        }
    }
}

/// Effective hostnames of a route on a listener: `None` when they do not intersect, `Some(vec![])`
/// when any host the listener accepts matches the route.
pub(crate) fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    if route.is_empty() {
        return Some(Vec::new());
    }
    let mut out: Vec<String> = match listener {
        None => route.iter().map(|h| h.to_ascii_lowercase()).collect(),
        Some(l) => route.iter().filter_map(|r| intersect_one(l, r)).collect(),
    };
    out.sort();
    out.dedup();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(listener hostname, route hostnames, expected effective hostnames)`.
    type Case = (
        Option<&'static str>,
        &'static [&'static str],
        Option<&'static [&'static str]>,
    );

    #[test]
    fn intersection_table() {
        let cases: &[Case] = &[
            (None, &[], Some(&[])),
            (Some("foo.com"), &[], Some(&[])),
            (None, &["a.com", "b.com"], Some(&["a.com", "b.com"])),
            (Some("foo.com"), &["foo.com"], Some(&["foo.com"])),
            (Some("foo.com"), &["bar.com"], None),
            (
                Some("*.example.com"),
                &["a.example.com"],
                Some(&["a.example.com"]),
            ),
            (
                Some("*.example.com"),
                &["a.b.example.com"],
                Some(&["a.b.example.com"]),
            ),
            (Some("*.example.com"), &["example.com"], None),
            (
                Some("a.example.com"),
                &["*.example.com"],
                Some(&["a.example.com"]),
            ),
            (Some("example.com"), &["*.example.com"], None),
            (
                Some("*.example.com"),
                &["*.a.example.com"],
                Some(&["*.a.example.com"]),
            ),
            (
                Some("*.a.example.com"),
                &["*.example.com"],
                Some(&["*.a.example.com"]),
            ),
            (Some("*.example.com"), &["*.example.net"], None),
            (
                Some("*.example.com"),
                &["x.example.com", "nope.net", "*.example.com"],
                Some(&["*.example.com", "x.example.com"]),
            ),
        ];
        for (listener, route, want) in cases {
            let route: Vec<String> = route.iter().map(|s| s.to_string()).collect();
            let got = intersect(*listener, &route);
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "listener {listener:?} route {route:?}");
        }
    }
}

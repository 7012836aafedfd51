//! Pure comparison of one response with a case's `expect` (INDEX.md, "Expectation semantics").

use std::collections::BTreeMap;

use serde_json::Value;

use crate::client::Received;
use crate::spec::{Expect, RedirectExpect, SeenByBackend};

/// What was actually sent (after placeholder substitution), for the default expectations.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    pub method: String,
    /// Path incl. query, as sent.
    pub path: String,
    /// The case's `host`, if it gave one.
    pub host: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub scheme: String,
    /// Substitution for `<uuid>` / `<fresh-uuid>` in expected paths.
    pub request_id: Option<String>,
}

/// The echo JSON as the checks see it.
#[derive(Clone, Debug, Default)]
pub struct Echo {
    pub path: String,
    pub host: String,
    pub method: String,
    pub namespace: String,
    pub pod: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub tls: Value,
}

impl Echo {
    /// Parses a body; a non-JSON content type yields an empty echo with the request's method.
    pub fn from_response(resp: &Received, request_method: &str) -> Echo {
        let json_type = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            == Some("application/json");
        let v: Value = if json_type {
            serde_json::from_slice(&resp.body).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        if v.is_null() {
            return Echo {
                method: request_method.to_string(),
                ..Echo::default()
            };
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        if let Some(h) = v.get("headers").and_then(Value::as_object) {
            for (k, vals) in h {
                let vals = vals
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                headers.insert(k.to_ascii_lowercase(), vals);
            }
        }
        Echo {
            path: s("path"),
            host: s("host"),
            method: s("method"),
            namespace: s("namespace"),
            pod: s("pod"),
            headers,
            tls: v.get("tls").cloned().unwrap_or(Value::Null),
        }
    }

    /// All values of a request header joined with ",", or `None` when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(|v| v.join(","))
    }
}

/// Whether `got` satisfies the expected status codes (408 and 504 interchangeable).
pub fn status_ok(expected: &[u16], got: u16) -> bool {
    let timeout = |c: u16| c == 408 || c == 504;
    expected
        .iter()
        .any(|&c| c == got || (timeout(c) && timeout(got)))
}

fn substitute(text: &str, sent: &Sent) -> String {
    match &sent.request_id {
        Some(id) => text.replace("<fresh-uuid>", id).replace("<uuid>", id),
        None => text.to_string(),
    }
}

/// Compares one response; `Err` explains the first mismatch.
pub fn check(expect: &Expect, sent: &Sent, resp: &Received) -> Result<(), String> {
    let expected = expect
        .status
        .as_ref()
        .map(|s| s.codes())
        .unwrap_or(vec![200]);
    if !status_ok(&expected, resp.status) {
        return Err(format!("status {}, want {expected:?}", resp.status));
    }
    if let Some(redirect) = &expect.redirect
        && (300..400).contains(&resp.status)
    {
        let location = resp
            .headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("redirect without Location")?;
        check_redirect(redirect, &sent.scheme, &sent.path, location)?;
    }
    if resp.status != 200 && resp.status != 204 {
        return Ok(());
    }
    let echo = Echo::from_response(resp, &sent.method);
    match &expect.request_seen_by_backend {
        Some(seen) => check_seen(seen, &echo, sent)?,
        None => {
            if echo.path != sent.path {
                return Err(format!(
                    "backend saw path {:?}, want {:?}",
                    echo.path, sent.path
                ));
            }
            if echo.method != sent.method {
                return Err(format!(
                    "backend saw method {}, want {}",
                    echo.method, sent.method
                ));
            }
            if let Some(host) = &sent.host
                && &echo.host != host
            {
                return Err(format!("backend saw host {:?}, want {host:?}", echo.host));
            }
            for (k, v) in &sent.headers {
                match echo.header(k) {
                    Some(got) if &got == v => {}
                    got => return Err(format!("backend saw header {k}={got:?}, want {v:?}")),
                }
            }
        }
    }
    let namespace = expect
        .namespace
        .clone()
        .or_else(|| {
            expect
                .request_seen_by_backend
                .as_ref()
                .and_then(|s| s.namespace.clone())
        })
        .unwrap_or_default();
    if echo.namespace != namespace {
        return Err(format!(
            "answered from namespace {:?}, want {namespace:?}",
            echo.namespace
        ));
    }
    if let Some(backend) = &expect.backend
        && !echo.pod.starts_with(backend.as_str())
    {
        return Err(format!("answered by pod {:?}, want {backend}-*", echo.pod));
    }
    if let Some(r) = &expect.response {
        let header = |name: &str| -> Option<String> {
            let vals: Vec<&str> = resp
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!vals.is_empty()).then(|| vals.join(","))
        };
        let norm = |s: &str| {
            if r.ignore_whitespace {
                s.chars().filter(|c| !c.is_whitespace()).collect()
            } else {
                s.to_string()
            }
        };
        for (k, v) in &r.headers {
            match header(k) {
                Some(got) if norm(&got) == norm(v) => {}
                got => return Err(format!("response header {k}={got:?}, want {v:?}")),
            }
        }
        for (k, options) in &r.headers_one_of {
            let got = header(k);
            if !got
                .as_deref()
                .is_some_and(|g| options.iter().any(|o| norm(o) == norm(g)))
            {
                return Err(format!(
                    "response header {k}={got:?}, want one of {options:?}"
                ));
            }
        }
        for k in &r.absent_headers {
            if let Some(got) = header(k) {
                return Err(format!("response header {k}={got:?} should be absent"));
            }
        }
    }
    Ok(())
}

fn check_seen(seen: &SeenByBackend, echo: &Echo, sent: &Sent) -> Result<(), String> {
    let path = substitute(seen.path.as_deref().unwrap_or(""), sent);
    if echo.path != path {
        return Err(format!("backend saw path {:?}, want {path:?}", echo.path));
    }
    let method = seen.method.as_deref().unwrap_or("GET");
    if echo.method != method {
        return Err(format!("backend saw method {}, want {method}", echo.method));
    }
    if let Some(host) = &seen.host
        && &echo.host != host
    {
        return Err(format!("backend saw host {:?}, want {host:?}", echo.host));
    }
    check_seen_headers(seen, echo)?;
    if let Some(tls) = &seen.tls {
        if let Some(sni) = &tls.server_name {
            let got = echo
                .tls
                .get("serverName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if got != sni {
                return Err(format!("backend saw SNI {got:?}, want {sni:?}"));
            }
        }
        if let Some(cert) = &tls.peer_certificates_contain {
            let certs = echo
                .tls
                .get("peerCertificates")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let norm = |s: &str| s.split_whitespace().collect::<String>();
            if !certs
                .iter()
                .filter_map(Value::as_str)
                .any(|c| norm(c) == norm(cert) || norm(c).contains(&norm(cert)))
            {
                return Err("backend did not see the expected client certificate".into());
            }
        }
    }
    Ok(())
}

/// Header, absent-header and header-count checks of `request_seen_by_backend`.
pub fn check_seen_headers(seen: &SeenByBackend, echo: &Echo) -> Result<(), String> {
    for (k, v) in &seen.headers {
        match echo.header(k) {
            Some(got) if &got == v => {}
            got => return Err(format!("backend saw header {k}={got:?}, want {v:?}")),
        }
    }
    for k in &seen.absent_headers {
        if let Some(got) = echo.header(k) {
            return Err(format!("backend saw header {k}={got:?}, want it absent"));
        }
    }
    for (k, n) in &seen.header_count {
        let got = echo
            .headers
            .get(&k.to_ascii_lowercase())
            .map_or(0, Vec::len);
        if got != *n {
            return Err(format!("backend saw {got} {k} headers, want {n}"));
        }
    }
    Ok(())
}

/// The parts of a Location header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: String,
}

/// Splits an absolute or relative Location; the query is dropped from `path`.
pub fn parse_location(location: &str) -> Location {
    let (scheme, rest) = match location.split_once("://") {
        Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
        None => (None, location),
    };
    let (authority, path) = if scheme.is_some() {
        match rest.find('/') {
            Some(i) => (Some(&rest[..i]), &rest[i..]),
            None => (Some(rest), ""),
        }
    } else {
        (None, rest)
    };
    let path = path.split(['?', '#']).next().unwrap_or("").to_string();
    let (host, port) = match authority {
        None => (None, None),
        Some(a) => match a.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || a.starts_with('[') => match p.parse() {
                Ok(port) => (Some(h.to_string()), Some(port)),
                Err(_) => (Some(a.to_string()), None),
            },
            _ => (Some(a.to_string()), None),
        },
    };
    Location {
        scheme,
        host,
        port,
        path,
    }
}

/// Compares a Location with `redirect` (omitted fields: see INDEX.md).
pub fn check_redirect(
    redirect: &RedirectExpect,
    request_scheme: &str,
    request_path: &str,
    location: &str,
) -> Result<(), String> {
    let loc = parse_location(location);
    let want_scheme = redirect.scheme.as_deref().unwrap_or(request_scheme);
    let got_scheme = loc.scheme.as_deref().unwrap_or(request_scheme);
    if got_scheme != want_scheme {
        return Err(format!(
            "Location {location}: scheme {got_scheme}, want {want_scheme}"
        ));
    }
    if let Some(host) = &redirect.host
        && loc.host.as_deref() != Some(host.as_str())
    {
        return Err(format!(
            "Location {location}: host {:?}, want {host}",
            loc.host
        ));
    }
    match redirect.port {
        Some(p) => {
            if loc.port != Some(p) {
                return Err(format!(
                    "Location {location}: port {:?}, want {p}",
                    loc.port
                ));
            }
        }
        None => {
            let default = if got_scheme == "https" { 443 } else { 80 };
            if loc.port.is_some_and(|p| p != default) {
                return Err(format!(
                    "Location {location}: unexpected port {:?}",
                    loc.port
                ));
            }
        }
    }
    let want_path = redirect
        .path
        .clone()
        .unwrap_or_else(|| request_path.split('?').next().unwrap_or("").to_string());
    if loc.path != want_path {
        return Err(format!(
            "Location {location}: path {:?}, want {want_path:?}",
            loc.path
        ));
    }
    Ok(())
}

/// Backend name of a pod: its name minus the two trailing `-xxx` segments.
pub fn backend_of_pod(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() <= 2 {
        return pod.to_string();
    }
    parts[..parts.len() - 2].join("-")
}

/// Checks observed counts against weights: each share within `tolerance`, zero-weight
/// backends unseen, and nothing unexpected.
pub fn check_distribution(
    counts: &BTreeMap<String, usize>,
    weights: &BTreeMap<String, f64>,
    tolerance: f64,
) -> Result<(), String> {
    let total: usize = counts.values().sum();
    if total == 0 {
        return Err("no successful requests".into());
    }
    let weight_sum: f64 = weights.values().sum();
    for backend in counts.keys() {
        if !weights.get(backend).is_some_and(|w| *w > 0.0) {
            return Err(format!(
                "backend {backend} got traffic but has no weight ({counts:?})"
            ));
        }
    }
    for (backend, w) in weights {
        let got = counts.get(backend).copied().unwrap_or(0);
        let share = got as f64 / total as f64;
        let want = if weight_sum > 0.0 {
            w / weight_sum
        } else {
            0.0
        };
        if *w == 0.0 && got > 0 {
            return Err(format!("zero-weight backend {backend} got {got} requests"));
        }
        if (share - want).abs() > tolerance {
            return Err(format!(
                "backend {backend} got {share:.3} of traffic, want {want:.3}±{tolerance} ({counts:?})"
            ));
        }
    }
    Ok(())
}

//! Header hygiene between client and backend.

use std::borrow::Cow;

use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue, header};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

// Which hop-by-hop headers a message carries, found in one pass over its names: most
// messages carry none or one, and each `HeaderMap` lookup hashes its name.
const CONNECTION: u8 = 1;
const KEEP_ALIVE_BIT: u8 = 1 << 1;
const PROXY_CONNECTION_BIT: u8 = 1 << 2;
const TRANSFER_ENCODING: u8 = 1 << 3;
const HTTP2_SETTINGS_BIT: u8 = 1 << 4;
const TE: u8 = 1 << 5;
const UPGRADE: u8 = 1 << 6;

/// The hop-by-hop headers present in a message (see [`HopByHop::scan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HopByHop(u8);

impl HopByHop {
    /// One pass over the header names; names are lower-case, so comparing by length first
    /// rejects almost every ordinary header with one integer comparison.
    pub(crate) fn scan(headers: &HeaderMap) -> HopByHop {
        let mut found = 0;
        for name in headers.keys() {
            let name = name.as_str();
            found |= match name.len() {
                2 if name == "te" => TE,
                7 if name == "upgrade" => UPGRADE,
                10 if name == "connection" => CONNECTION,
                10 if name == "keep-alive" => KEEP_ALIVE_BIT,
                14 if name == "http2-settings" => HTTP2_SETTINGS_BIT,
                16 if name == "proxy-connection" => PROXY_CONNECTION_BIT,
                17 if name == "transfer-encoding" => TRANSFER_ENCODING,
                _ => 0,
            };
        }
        HopByHop(found)
    }

    /// Whether the message has no hop-by-hop header at all.
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether the message has an `Upgrade` header at all.
    pub(crate) fn has_upgrade(self) -> bool {
        self.0 & UPGRADE != 0
    }
}

/// Removes hop-by-hop headers. When `upgrade` is set, `Upgrade` survives and `Connection`
/// is reduced to `upgrade`, so the upgrade can be forwarded.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let found = HopByHop::scan(headers);
    strip_scanned(headers, found, upgrade);
}

/// [`strip_hop_by_hop`] with the scan already done (nothing changed the headers since).
pub(crate) fn strip_scanned(headers: &mut HeaderMap, found: HopByHop, upgrade: bool) {
    let found = found.0;
    if found & CONNECTION != 0 {
        strip_connection_options(headers, upgrade);
    }
    for (bit, name) in [
        (KEEP_ALIVE_BIT, &KEEP_ALIVE),
        (PROXY_CONNECTION_BIT, &PROXY_CONNECTION),
        (TRANSFER_ENCODING, &header::TRANSFER_ENCODING),
        (HTTP2_SETTINGS_BIT, &HTTP2_SETTINGS),
    ] {
        if found & bit != 0 {
            headers.remove(name);
        }
    }
    if found & TE != 0 {
        // `TE: trailers` is the one TE value HTTP/2 (gRPC) relies on.
        let te_trailers = headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if found & UPGRADE != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Removes `Connection` and every header it names. The values are cheap `Bytes` clones, so the
/// names can be looked up as `&str` (no allocation) while the map is changed. `keep-alive`, the
/// option nearly every HTTP/1.1 message names, is left to the `Keep-Alive` header's own bit.
fn strip_connection_options(headers: &mut HeaderMap, upgrade: bool) {
    let mut values = headers.get_all(header::CONNECTION).iter();
    let first = values.next().cloned();
    // Empty (no allocation) for the usual single `Connection` header.
    let rest: Vec<HeaderValue> = values.cloned().collect();
    headers.remove(header::CONNECTION);
    for value in first.iter().chain(&rest) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for token in value.split(',') {
            let token = token.trim();
            if token.is_empty()
                || token.eq_ignore_ascii_case("keep-alive")
                || (upgrade && token.eq_ignore_ascii_case("upgrade"))
            {
                continue;
            }
            // An invalid name names no header: the lookup finds nothing.
            headers.remove(token);
        }
    }
}

/// True for an HTTP/1.1 `Upgrade: websocket` request.
pub(crate) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
}

/// Host without port, lower-cased (borrowed when already lower-case).
pub(crate) fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = if raw.starts_with('[') {
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(i) if raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// A client address as a header value: made once per connection, since formatting an address
/// costs more than the rest of the header handling of a request.
pub(crate) fn client_address(client: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Appends the client address ([`client_address`]) to `x-forwarded-for` and sets
/// `x-forwarded-proto`.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, https: bool) {
    // One lookup (the entry) rather than a get and an insert.
    match headers.entry(X_FORWARDED_FOR.clone()) {
        Entry::Vacant(vacant) => {
            vacant.insert(client.clone());
        }
        Entry::Occupied(mut occupied) => {
            // Field lines of one name are one list (RFC 9110, section 5.3): a hop the client
            // sent on a second line is kept, ahead of the client itself.
            let mut joined = Vec::new();
            for value in occupied.iter().filter(|value| !value.is_empty()) {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            let value = if joined.is_empty() {
                Some(client.clone())
            } else {
                joined.extend_from_slice(client.as_bytes());
                HeaderValue::from_bytes(&joined).ok()
            };
            if let Some(value) = value {
                occupied.insert(value);
            }
        }
    }
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a [&'a str]);
        let cases: &[Case<'_>] = &[
            (&[("connection", "close"), ("x-a", "1")], false, &["x-a"]),
            (
                &[
                    ("connection", "X-Foo, keep-alive"),
                    ("x-foo", "1"),
                    ("keep-alive", "5"),
                    ("x-b", "2"),
                ],
                false,
                &["x-b"],
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("te", "gzip"),
                    ("proxy-connection", "x"),
                    ("upgrade", "h2c"),
                ],
                false,
                &[],
            ),
            (&[("te", "trailers, deflate")], false, &["te"]),
            (
                &[
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-key", "k"),
                ],
                true,
                &["connection", "sec-websocket-key", "upgrade"],
            ),
        ];
        for (input, upgrade, want) in cases {
            let mut h = map(input);
            strip_hop_by_hop(&mut h, *upgrade);
            assert_eq!(
                names(&h),
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{input:?}"
            );
        }
        let mut h = map(&[("te", "trailers, deflate")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn connection_options_are_removed_by_name() {
        let mut h = map(&[
            ("connection", "close, X-Custom"),
            ("connection", "  , Keep-Alive,bad name"),
            ("x-custom", "1"),
            ("close", "odd but named"),
            ("keep-alive", "timeout=5"),
            ("bad", "kept"),
            ("x-other", "kept"),
        ]);
        let found = HopByHop::scan(&h);
        assert!(!found.has_upgrade());
        strip_scanned(&mut h, found, false);
        assert_eq!(names(&h), ["bad", "x-other"]);

        // Only `keep-alive` in Connection: the Keep-Alive header goes by its own bit.
        let mut h = map(&[("connection", "keep-alive"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["x-a"]);

        // An upgrade keeps Upgrade even when Connection names it.
        let mut h = map(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
        ]);
        let found = HopByHop::scan(&h);
        assert!(found.has_upgrade());
        strip_scanned(&mut h, found, true);
        assert_eq!(names(&h), ["connection", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_joins_every_line_and_the_client_into_one() {
        let ip: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", ""),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
        ]);
        add_forwarded(&mut h, &client_address(ip), false);
        let all: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["10.0.0.1, 10.0.0.2, 10.0.0.3, 2001:db8::1"]);
        let mut h = map(&[("x-forwarded-for", "")]);
        add_forwarded(&mut h, &client_address(ip), false);
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8::1");
    }

    #[test]
    fn host_normalization() {
        let cases = [
            ("Example.COM:8080", "example.com"),
            ("example.com", "example.com"),
            ("example.com.", "example.com"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("", ""),
            ("weird:port", "weird:port"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_host(raw), want, "{raw}");
        }
    }

    #[test]
    fn forwarded_headers() {
        let ip: std::net::IpAddr = "127.0.0.9".parse().unwrap();
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &client_address(ip), false);
        assert_eq!(h[&X_FORWARDED_FOR], "127.0.0.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "ftp"),
        ]);
        add_forwarded(&mut h, &client_address(ip), true);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn websocket_detection() {
        assert!(is_websocket_upgrade(&map(&[("upgrade", "WebSocket")])));
        assert!(is_websocket_upgrade(&map(&[("upgrade", "foo, websocket")])));
        assert!(!is_websocket_upgrade(&map(&[("upgrade", "h2c")])));
        assert!(!is_websocket_upgrade(&HeaderMap::new()));
    }
}

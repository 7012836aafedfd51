//! Hostname indexes: exact names, `*.` wildcard suffixes and a catch-all, looked up from the
//! most to the least specific without allocating.

// foldhash rather than SipHash: the request's host is hashed once per wildcard level on every
// request, and the keys come from config, so hash flooding through lookups is not a concern.
use foldhash::HashMap;

/// Values keyed by hostname pattern. Used both for listener selection (first hit wins) and for
/// route hostnames (every hit, in precedence order, so less specific hostnames still serve a
/// request that no rule of a more specific one matches).
#[derive(Debug)]
pub(crate) struct HostIndex<T> {
    exact: HashMap<String, T>,
    /// Keyed by the part after `*.`: `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, T>,
    catch_all: Option<T>,
}

impl<T> Default for HostIndex<T> {
    fn default() -> Self {
        HostIndex {
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            catch_all: None,
        }
    }
}

/// Which slot of a [`HostIndex`] a hostname pattern occupies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HostKey {
    Exact(String),
    Wildcard(String),
    Any,
}

impl HostKey {
    /// Classifies a hostname pattern (lower-cased; `None`, empty or `*` mean any host).
    pub(crate) fn parse(pattern: Option<&str>) -> HostKey {
        let Some(pattern) = pattern else {
            return HostKey::Any;
        };
        let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
        if pattern.is_empty() || pattern == "*" {
            HostKey::Any
        } else if let Some(suffix) = pattern.strip_prefix("*.") {
            HostKey::Wildcard(suffix.to_string())
        } else {
            HostKey::Exact(pattern)
        }
    }
}

impl<T> HostIndex<T> {
    /// The slot for `key`, created with `make` when missing.
    pub(crate) fn entry(&mut self, key: HostKey, make: impl FnOnce() -> T) -> &mut T {
        match key {
            HostKey::Exact(h) => self.exact.entry(h).or_insert_with(make),
            HostKey::Wildcard(s) => self.wildcard.entry(s).or_insert_with(make),
            HostKey::Any => self.catch_all.get_or_insert_with(make),
        }
    }

    /// Every value whose pattern matches `host`, most specific first: the exact name, then
    /// wildcards from the longest suffix to the shortest, then the catch-all.
    pub(crate) fn lookup<'a, 'h>(&'a self, host: &'h str) -> HostLookup<'a, 'h, T> {
        HostLookup {
            index: self,
            host,
            stage: Stage::Exact,
        }
    }

    /// The most specific value matching `host`.
    pub(crate) fn first<'a>(&'a self, host: &str) -> Option<&'a T> {
        self.lookup(host).next()
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.exact
            .values_mut()
            .chain(self.wildcard.values_mut())
            .chain(self.catch_all.iter_mut())
    }
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    Exact,
    /// Next byte offset of `host` to search a `.` from.
    Wildcard(usize),
    CatchAll,
    Done,
}

/// Iterator returned by [`HostIndex::lookup`].
pub(crate) struct HostLookup<'a, 'h, T> {
    index: &'a HostIndex<T>,
    host: &'h str,
    stage: Stage,
}

impl<'a, T> Iterator for HostLookup<'a, '_, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        loop {
            match self.stage {
                Stage::Exact => {
                    self.stage = Stage::Wildcard(0);
                    if !self.host.is_empty()
                        && let Some(v) = self.index.exact.get(self.host)
                    {
                        return Some(v);
                    }
                }
                Stage::Wildcard(from) => {
                    // A wildcard needs at least one non-empty label in front of the suffix.
                    let rest = self.host.get(from..).unwrap_or("");
                    match rest.find('.') {
                        Some(rel) if !self.index.wildcard.is_empty() => {
                            let dot = from + rel;
                            self.stage = Stage::Wildcard(dot + 1);
                            if dot == 0 {
                                continue;
                            }
                            let suffix = &self.host[dot + 1..];
                            if let Some(v) = self.index.wildcard.get(suffix) {
                                return Some(v);
                            }
                        }
                        _ => self.stage = Stage::CatchAll,
                    }
                }
                Stage::CatchAll => {
                    self.stage = Stage::Done;
                    if let Some(v) = &self.index.catch_all {
                        return Some(v);
                    }
                }
                Stage::Done => return None,
            }
        }
    }
}

/// Strips the port from an authority (`host:port`, `[v6]:port`) and a trailing dot. Lower-casing
/// is left to the caller, which may already own a buffer for it.
pub fn parse_host(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.rfind(':') {
            // More than one colon without brackets: a bare IPv6 address, keep it whole.
            Some(i) if !authority[..i].contains(':') => &authority[..i],
            _ => authority,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[&str]) -> HostIndex<String> {
        let mut idx = HostIndex::default();
        for p in patterns {
            let key = HostKey::parse(if p.is_empty() { None } else { Some(p) });
            idx.entry(key, || (*p).to_string());
        }
        idx
    }

    #[test]
    fn lookup_order_is_most_specific_first() {
        let idx = index(&[
            "",
            "*.com",
            "*.example.com",
            "a.example.com",
            "*.a.example.com",
        ]);
        let cases: &[(&str, &[&str])] = &[
            (
                "a.example.com",
                &["a.example.com", "*.example.com", "*.com", ""],
            ),
            (
                "b.a.example.com",
                &["*.a.example.com", "*.example.com", "*.com", ""],
            ),
            ("example.com", &["*.com", ""]),
            ("example.org", &[""]),
            ("", &[""]),
            (".example.com", &["*.com", ""]),
        ];
        for (host, want) in cases {
            let got: Vec<&str> = idx.lookup(host).map(String::as_str).collect();
            assert_eq!(&got, want, "host {host}");
        }
    }

    #[test]
    fn wildcard_does_not_match_its_own_suffix() {
        let idx = index(&["*.example.com"]);
        assert!(idx.first("example.com").is_none());
        assert_eq!(
            idx.first("x.y.example.com").map(String::as_str),
            Some("*.example.com")
        );
    }

    #[test]
    fn parse_host_strips_ports() {
        let cases = [
            ("example.com", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com.", "example.com"),
            ("example.com.:80", "example.com"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("::1", "::1"),
            ("127.0.0.1:443", "127.0.0.1"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(parse_host(input), want, "{input}");
        }
    }
}

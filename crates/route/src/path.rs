//! Per-hostname path index. Candidates are stored pre-sorted by the full precedence key, so the
//! first candidate whose remaining conditions hold is the winner.
//!
//! Path precedence (RegularExpression is implementation-specific in the spec): Exact, then
//! RegularExpression (longer pattern first), then PathPrefix (more characters first). Regexes sit
//! before prefixes because a regex is written to select specific paths, like an exact match.

// foldhash rather than SipHash: every request hashes its path once per prefix level, and the
// keys come from config, so hash flooding through lookups is not a concern.
use foldhash::HashMap;

use regex::Regex;

/// The key of a PathPrefix value in the index: no trailing slash, so `/foo/` and `/foo` share
/// `/foo` and `/` is the empty string.
pub(crate) fn prefix_key(prefix: &str) -> &str {
    prefix.strip_suffix('/').unwrap_or(prefix)
}

/// Whether `path` is matched segment-wise by the prefix whose key is `key`.
pub(crate) fn prefix_matches(key: &str, path: &str) -> bool {
    match path.strip_prefix(key) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Candidate rows (indexes into the listener's match table) for one route hostname.
#[derive(Debug, Default)]
pub(crate) struct PathIndex {
    exact: HashMap<String, Vec<u32>>,
    regex: Vec<(Regex, u32)>,
    prefix: HashMap<String, Vec<u32>>,
}

impl PathIndex {
    pub(crate) fn add_exact(&mut self, path: &str, row: u32) {
        self.exact.entry(path.to_string()).or_default().push(row);
    }

    pub(crate) fn add_regex(&mut self, re: Regex, row: u32) {
        self.regex.push((re, row));
    }

    pub(crate) fn add_prefix(&mut self, prefix: &str, row: u32) {
        self.prefix
            .entry(prefix_key(prefix).to_string())
            .or_default()
            .push(row);
    }

    /// Sorts every candidate list by `key` (rows compare by their precedence).
    pub(crate) fn sort_by_key<K: Ord>(&mut self, key: impl Fn(u32) -> K) {
        for rows in self.exact.values_mut().chain(self.prefix.values_mut()) {
            rows.sort_by_key(|r| key(*r));
        }
        self.regex.sort_by_key(|(_, r)| key(*r));
    }

    /// The first row, in precedence order, whose path matches and for which `accept` holds.
    pub(crate) fn find(&self, path: &str, mut accept: impl FnMut(u32) -> bool) -> Option<u32> {
        if let Some(rows) = self.exact.get(path)
            && let Some(r) = rows.iter().copied().find(|r| accept(*r))
        {
            return Some(r);
        }
        for (re, row) in &self.regex {
            if re.is_match(path) && accept(*row) {
                return Some(*row);
            }
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Longest candidate key first: the path itself, then the path cut at each `/`.
        if let Some(rows) = self.prefix.get(path)
            && let Some(r) = rows.iter().copied().find(|r| accept(*r))
        {
            return Some(r);
        }
        let mut end = path.len();
        while let Some(slash) = path[..end].rfind('/') {
            if let Some(rows) = self.prefix.get(&path[..slash])
                && let Some(r) = rows.iter().copied().find(|r| accept(*r))
            {
                return Some(r);
            }
            end = slash;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_segment_wise() {
        let cases = [
            ("/foo", "/foo", true),
            ("/foo", "/foo/", true),
            ("/foo", "/foo/bar", true),
            ("/foo", "/foobar", false),
            ("/foo/", "/foo", true),
            ("/foo/", "/foo/bar", true),
            ("/foo/", "/foobar", false),
            ("/", "/anything", true),
            ("/", "/", true),
            ("/foo/bar", "/foo", false),
        ];
        for (prefix, path, want) in cases {
            assert_eq!(
                prefix_matches(prefix_key(prefix), path),
                want,
                "{prefix} vs {path}"
            );
        }
    }

    #[test]
    fn find_walks_from_longest_prefix() {
        let mut idx = PathIndex::default();
        idx.add_prefix("/", 0);
        idx.add_prefix("/a", 1);
        idx.add_prefix("/a/b/", 2);
        idx.add_exact("/a/b", 3);
        let cases = [
            ("/a/b", Some(3)),
            ("/a/b/c", Some(2)),
            ("/a/bc", Some(1)),
            ("/a", Some(1)),
            ("/ab", Some(0)),
            ("/", Some(0)),
            // An empty path (never produced by hyper) is treated like `/`.
            ("", Some(0)),
        ];
        for (path, want) in cases {
            assert_eq!(idx.find(path, |_| true), want, "{path}");
        }
        // A rejected candidate falls through to the next shorter prefix.
        assert_eq!(idx.find("/a/b/c", |r| r != 2), Some(1));
    }
}

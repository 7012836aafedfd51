//! SPIFFE IDs of Kubernetes workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.

use std::fmt;
use std::str::FromStr;

/// URI scheme of SPIFFE IDs (lowercase only, per the SPIFFE ID specification).
const SCHEME: &str = "spiffe://";
/// Longest trust domain the SPIFFE specification allows.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest SPIFFE ID (URI) the SPIFFE specification allows.
const MAX_ID_LEN: usize = 2048;

/// The identity a workload proves with its certificate: a Kubernetes service account in a
/// namespace of a trust domain. Fields are validated on construction, so a value of this type
/// always renders to a valid SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a workload SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {reason}")]
pub struct SpiffeIdError {
    /// The rejected input (for [`SpiffeId::new`], the ID it would have formed).
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl SpiffeId {
    /// Builds and validates `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<SpiffeId, SpiffeIdError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        let fail = |reason: String| SpiffeIdError {
            input: id.to_string(),
            reason,
        };
        validate_trust_domain(&id.trust_domain).map_err(fail)?;
        validate_segment("namespace", &id.namespace).map_err(fail)?;
        validate_segment("service account", &id.service_account).map_err(fail)?;
        let len = id.to_string().len();
        if len > MAX_ID_LEN {
            return Err(fail(format!("longer than {MAX_ID_LEN} bytes ({len})")));
        }
        Ok(id)
    }

    /// The trust domain (`cluster.local`): which CA vouches for the identity.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace of the workload (what consumer routes key on).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account the workload runs as.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        let fail = |reason: &str| SpiffeIdError {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.len() > MAX_ID_LEN {
            return Err(fail("longer than 2048 bytes"));
        }
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| fail("must start with \"spiffe://\""))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| fail("missing path /ns/<namespace>/sa/<service-account>"))?;
        let mut segments = path.split('/');
        let (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(fail("path must be /ns/<namespace>/sa/<service-account>"));
        };
        SpiffeId::new(trust_domain, namespace, service_account).map_err(|e| SpiffeIdError {
            input: s.to_owned(),
            reason: e.reason,
        })
    }
}

/// Checks a SPIFFE trust domain: 1..=255 of lowercase letters, digits, `.`, `-`, `_`.
pub(crate) fn validate_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("empty trust domain".into());
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "trust domain longer than {MAX_TRUST_DOMAIN_LEN} bytes"
        ));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(format!(
            "trust domain {td:?} contains {c:?} (allowed: a-z 0-9 . - _)"
        ));
    }
    Ok(())
}

/// Checks one SPIFFE path segment: non-empty, not `.`/`..`, letters, digits, `.`, `-`, `_`.
fn validate_segment(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("empty {what}"));
    }
    if value == "." || value == ".." {
        return Err(format!("{what} cannot be {value:?}"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(format!(
            "{what} {value:?} contains {c:?} (allowed: A-Z a-z 0-9 . - _)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = SpiffeId::new("cluster.local", "shop", "cart").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
        let parsed: SpiffeId = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(parsed.trust_domain(), "cluster.local");
        assert_eq!(parsed.namespace(), "shop");
        assert_eq!(parsed.service_account(), "cart");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "http://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local:8080/ns/a/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#frag",
            "spiffe://cluster.local/ns/a%20b/sa/b",
        ] {
            let err = bad.parse::<SpiffeId>().unwrap_err();
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn new_validates_fields() {
        let err = SpiffeId::new("cluster.local", "shop", "a/b").unwrap_err();
        assert!(err.reason.contains("service account"), "{err}");
        let err = SpiffeId::new("", "shop", "cart").unwrap_err();
        assert!(err.reason.contains("trust domain"), "{err}");
        let long = "a".repeat(256);
        assert!(SpiffeId::new(long, "shop", "cart").is_err());
        let long = "a".repeat(2100);
        assert!(SpiffeId::new("td", "shop", long).is_err());
    }
}

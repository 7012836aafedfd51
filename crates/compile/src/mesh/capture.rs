//! Capture exclusions from pod annotations. Invalid entries are dropped (the rest still apply):
//! a typo in one entry must not stop the pod from joining the mesh.

use std::collections::BTreeMap;
use std::net::IpAddr;

use strait_config::mesh::{
    CaptureExclusions, EXCLUDE_INBOUND_PORTS_ANNOTATION, EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
    EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
};

/// The exclusions a pod's annotations ask for.
pub(crate) fn exclusions(annotations: Option<&BTreeMap<String, String>>) -> CaptureExclusions {
    let get = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .map_or("", String::as_str)
    };
    CaptureExclusions {
        outbound_ports: ports(get(EXCLUDE_OUTBOUND_PORTS_ANNOTATION)),
        outbound_cidrs: cidrs(get(EXCLUDE_OUTBOUND_CIDRS_ANNOTATION)),
        inbound_ports: ports(get(EXCLUDE_INBOUND_PORTS_ANNOTATION)),
    }
}

/// Comma-separated TCP ports (1-65535), sorted and deduplicated.
fn ports(value: &str) -> Vec<u16> {
    let mut out: Vec<u16> = value
        .split(',')
        .filter_map(|p| p.trim().parse::<u16>().ok())
        .filter(|&p| p != 0)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Comma-separated CIDRs in canonical form; a bare address becomes a host prefix (`/32`,
/// `/128`). First occurrence order, duplicates dropped.
fn cidrs(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some(cidr) = cidr(entry) else {
            continue;
        };
        if !out.contains(&cidr) {
            out.push(cidr);
        }
    }
    out
}

fn cidr(entry: &str) -> Option<String> {
    let (addr, len) = match entry.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (entry, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        // Digits only: `u8::from_str` would also take `+8`.
        Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => l.parse().ok()?,
        Some(_) => return None,
        None => max,
    };
    (len <= max).then(|| format!("{ip}/{len}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_table() {
        let cases: &[(&str, &[u16])] = &[
            ("", &[]),
            ("8080", &[8080]),
            (" 9090 , 22,8080 ", &[22, 8080, 9090]),
            ("22,22", &[22]),
            ("0,65535,65536,-1,abc,,80", &[80, 65535]),
            ("1-100", &[]),
        ];
        for (value, want) in cases {
            assert_eq!(ports(value), *want, "{value:?}");
        }
    }

    #[test]
    fn cidrs_table() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("10.0.0.0/8", &["10.0.0.0/8"]),
            (
                " 198.19.0.0/16 ,169.254.169.254",
                &["198.19.0.0/16", "169.254.169.254/32"],
            ),
            ("fd00::/8,::1", &["fd00::/8", "::1/128"]),
            ("10.0.0.0/8,10.0.0.0/8", &["10.0.0.0/8"]),
            (
                "10.0.0.0/33,10.0.0.0/,10.0.0.0/+8,10.0.0/8,fd00::/129,x,,192.0.2.0/24",
                &["192.0.2.0/24"],
            ),
        ];
        for (value, want) in cases {
            assert_eq!(cidrs(value), *want, "{value:?}");
        }
    }

    #[test]
    fn exclusions_from_annotations() {
        let annotations = BTreeMap::from([
            (
                EXCLUDE_OUTBOUND_PORTS_ANNOTATION.to_string(),
                "5432,x".to_string(),
            ),
            (
                EXCLUDE_OUTBOUND_CIDRS_ANNOTATION.to_string(),
                "198.18.5.0/24".to_string(),
            ),
            (
                EXCLUDE_INBOUND_PORTS_ANNOTATION.to_string(),
                "15090".to_string(),
            ),
            ("unrelated".to_string(), "1".to_string()),
        ]);
        assert_eq!(
            exclusions(Some(&annotations)),
            CaptureExclusions {
                outbound_ports: vec![5432],
                outbound_cidrs: vec!["198.18.5.0/24".into()],
                inbound_ports: vec![15090],
            }
        );
        assert_eq!(exclusions(None), CaptureExclusions::default());
    }
}

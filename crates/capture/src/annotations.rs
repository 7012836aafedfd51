//! Capture exclusions from pod annotations.
//!
//! Pods opt parts of their traffic out of capture with comma-separated annotations (for example a
//! database client that must keep its own TLS end to end). Values are parsed strictly: a typo is
//! reported with the annotation and the offending item rather than silently ignored, because an
//! ignored exclusion means traffic the owner expects to bypass the proxy goes through it.

use std::collections::BTreeMap;

use strait_config::mesh::{
    CaptureExclusions, EXCLUDE_INBOUND_PORTS_ANNOTATION, EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
    EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
};

use crate::CaptureError;
use crate::cidr::Cidr;

/// Reads the three exclusion annotations of a pod (`metadata.annotations`); absent annotations
/// mean no exclusion. Fails on the first malformed value, naming the annotation and the item.
pub fn exclusions_from_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<CaptureExclusions, CaptureError> {
    let get = |name: &str| annotations.get(name).map(String::as_str).unwrap_or("");
    Ok(CaptureExclusions {
        outbound_ports: parse_port_list(
            EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
            get(EXCLUDE_OUTBOUND_PORTS_ANNOTATION),
        )?,
        outbound_cidrs: parse_cidr_list(
            EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
            get(EXCLUDE_OUTBOUND_CIDRS_ANNOTATION),
        )?,
        inbound_ports: parse_port_list(
            EXCLUDE_INBOUND_PORTS_ANNOTATION,
            get(EXCLUDE_INBOUND_PORTS_ANNOTATION),
        )?,
    })
}

/// Parses a comma-separated port list (`"22, 3306"`); whitespace and empty items are ignored,
/// duplicates dropped. `annotation` names the source in errors.
pub fn parse_port_list(annotation: &str, value: &str) -> Result<Vec<u16>, CaptureError> {
    let mut ports = Vec::new();
    for item in items(value) {
        let port = item
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                bad(
                    annotation,
                    value,
                    format!("{item:?} is not a port from 1 to 65535"),
                )
            })?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// Parses a comma-separated CIDR list (`"10.0.0.0/8, 198.18.0.1"`); whitespace and empty items
/// are ignored, duplicates dropped. Items come back in canonical form (`198.18.0.1/32`).
/// `annotation` names the source in errors.
pub fn parse_cidr_list(annotation: &str, value: &str) -> Result<Vec<String>, CaptureError> {
    let mut cidrs = Vec::new();
    for item in items(value) {
        let cidr = Cidr::parse(item)
            .map_err(|reason| bad(annotation, value, format!("{item:?}: {reason}")))?
            .to_string();
        if !cidrs.contains(&cidr) {
            cidrs.push(cidr);
        }
    }
    Ok(cidrs)
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

fn bad(annotation: &str, value: &str, reason: String) -> CaptureError {
    CaptureError::InvalidAnnotation {
        annotation: annotation.to_string(),
        value: value.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn absent_annotations_exclude_nothing() {
        let exclusions = exclusions_from_annotations(&annotations(&[("other", "1")])).unwrap();
        assert_eq!(exclusions, CaptureExclusions::default());
    }

    #[test]
    fn reads_all_three_annotations() {
        let exclusions = exclusions_from_annotations(&annotations(&[
            (EXCLUDE_OUTBOUND_PORTS_ANNOTATION, "22, 3306,,22"),
            (
                EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
                " 10.0.0.0/8 ,198.18.0.1,fd00::/8",
            ),
            (EXCLUDE_INBOUND_PORTS_ANNOTATION, "9090"),
        ]))
        .unwrap();
        assert_eq!(exclusions.outbound_ports, vec![22, 3306]);
        assert_eq!(
            exclusions.outbound_cidrs,
            vec!["10.0.0.0/8", "198.18.0.1/32", "fd00::/8"]
        );
        assert_eq!(exclusions.inbound_ports, vec![9090]);
    }

    #[test]
    fn errors_name_the_annotation_and_the_bad_item() {
        for (name, value, item) in [
            (EXCLUDE_OUTBOUND_PORTS_ANNOTATION, "80,http", "\"http\""),
            (EXCLUDE_OUTBOUND_PORTS_ANNOTATION, "80,0", "\"0\""),
            (EXCLUDE_INBOUND_PORTS_ANNOTATION, "65536", "\"65536\""),
            (EXCLUDE_INBOUND_PORTS_ANNOTATION, "80-90", "\"80-90\""),
            (
                EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
                "10.0.0.0/8,10.1.0.0/33",
                "\"10.1.0.0/33\"",
            ),
            (
                EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
                "10.1.2.3/8",
                "\"10.1.2.3/8\"",
            ),
        ] {
            let err = exclusions_from_annotations(&annotations(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{err:?} should name {name}");
            assert!(err.contains(item), "{err:?} should name {item}");
        }
    }
}

//! Traffic capture rules for mesh pods.
//!
//! The node proxy serves every enrolled pod of its node from one process, with listeners bound
//! inside each pod's network namespace (see `strait-netns`). What makes the pod's traffic reach
//! those listeners without changing the application is a small set of iptables `nat` rules,
//! installed inside the pod's namespace:
//!
//! - outbound TCP is redirected to the outbound capture port (15001), except the proxy's own
//!   sockets (`SO_MARK` [`PROXY_MARK`]), loopback traffic, and configured exclusions;
//! - inbound TCP is redirected to the inbound capture port (15006), except HBONE (15008, which the
//!   proxy terminates itself), health probes from configured sources, and excluded ports.
//!
//! When the pod's IPv4 address is known, a few policy-routing rules (`routing`) also make the
//! pod's outbound TCP take loopback's route from its first lookup, so the application's socket
//! sizes its segments for the loopback hop it really crosses to reach the proxy.
//!
//! The rules come from the templates `iptables/capture.rules` and `iptables/routing.batch` at
//! the repository root (embedded at build time); `iptables/README.md` explains each rule.
//! [`apply`] converges any previous state (an older rule set, a crash half-way) to exactly one
//! copy of the current rules, the nat rules in one atomic `iptables-restore --noflush`
//! transaction, and [`remove`] takes every trace out again.
//!
//! Only IPv4 is captured: IPv6 traffic of a pod is left alone, so IPv6 entries in exclusion lists
//! are accepted (a dual-stack pod may carry them) but have nothing to exclude.
//!
//! The functions here run external programs and block; call them from `spawn_blocking` in async
//! code.

mod annotations;
mod cidr;
mod iptables;
mod program;
mod render;
mod routing;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use strait_config::mesh::CaptureExclusions;
use strait_netns::{NetNs, NetNsError};

pub use annotations::{exclusions_from_annotations, parse_cidr_list, parse_port_list};
pub use iptables::Iptables;
pub use render::{render, render_routing};
pub use routing::PolicyRouting;

/// `SO_MARK` carried by every socket the proxy opens inside a pod, so its own connections are not
/// captured again (which would loop).
pub const PROXY_MARK: u32 = 0x539;
/// The bits of the packet mark the capture rules look at. Only the low 12 bits, so CNI plugins and
/// other tools can use the remaining bits of the mark without defeating the exclusion.
pub const PROXY_MARK_MASK: u32 = 0xfff;
/// Where outbound TCP of a pod is redirected.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Where plaintext inbound TCP of a pod is redirected.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// HBONE (mutual TLS tunnel) port: reached directly, never redirected.
pub const HBONE_PORT: u16 = 15008;
/// Prefix of every chain this crate owns. Any `nat` chain with this prefix is considered ours:
/// chains of older rule sets are deleted by [`apply`] and all of them by [`remove`].
pub const CHAIN_PREFIX: &str = "STRAIT_";

/// What to capture in one pod and what to leave alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    /// Port of the proxy's outbound listener in the pod (15001).
    pub outbound_port: u16,
    /// Port of the proxy's plaintext inbound listener in the pod (15006).
    pub inbound_port: u16,
    /// HBONE port (15008); inbound connections to it are not redirected.
    pub hbone_port: u16,
    /// Mark of the proxy's own sockets (0x539); such traffic is not captured.
    pub mark: u32,
    /// Which bits of the packet mark are compared with `mark` (0xfff).
    pub mark_mask: u32,
    /// Destination ports whose outbound TCP is not captured.
    pub exclude_outbound_ports: Vec<u16>,
    /// Destination CIDRs (`10.0.0.0/8`, or a bare address) whose outbound traffic is not captured.
    pub exclude_outbound_cidrs: Vec<String>,
    /// Pod ports whose inbound TCP is not captured.
    pub exclude_inbound_ports: Vec<u16>,
    /// Source CIDRs of health probes (the kubelet connects from the node's address): delivered
    /// to the application directly, so probes keep working in strict mTLS mode.
    pub probe_sources: Vec<String>,
    /// The pod's IPv4 address. When given, the pod's outbound TCP is routed through loopback
    /// from its first route lookup (see the crate docs); without it, capture works the same
    /// with the application's segments sized for the pod's interface. Checked by
    /// [`render_routing`], not [`CaptureSpec::validate`]: an unusable address costs the routing,
    /// not the capture.
    pub pod_ip: Option<Ipv4Addr>,
}

impl Default for CaptureSpec {
    fn default() -> Self {
        CaptureSpec {
            outbound_port: OUTBOUND_CAPTURE_PORT,
            inbound_port: INBOUND_CAPTURE_PORT,
            hbone_port: HBONE_PORT,
            mark: PROXY_MARK,
            mark_mask: PROXY_MARK_MASK,
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            probe_sources: Vec::new(),
            pod_ip: None,
        }
    }
}

impl CaptureSpec {
    /// Adds a pod's exclusions (from its annotations) to this spec.
    pub fn with_exclusions(mut self, exclusions: &CaptureExclusions) -> Self {
        self.exclude_outbound_ports
            .extend_from_slice(&exclusions.outbound_ports);
        self.exclude_outbound_cidrs
            .extend(exclusions.outbound_cidrs.iter().cloned());
        self.exclude_inbound_ports
            .extend_from_slice(&exclusions.inbound_ports);
        self
    }

    /// Adds health-probe source addresses or CIDRs (usually the node's addresses).
    pub fn with_probe_sources<I, S>(mut self, sources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.probe_sources
            .extend(sources.into_iter().map(Into::into));
        self
    }

    /// Checks the spec before anything is rendered or installed: ports non-zero and distinct,
    /// the mark inside its mask, every CIDR well-formed (without host bits).
    pub fn validate(&self) -> Result<(), CaptureError> {
        for (field, port) in [
            ("outbound_port", self.outbound_port),
            ("inbound_port", self.inbound_port),
            ("hbone_port", self.hbone_port),
        ] {
            if port == 0 {
                return Err(invalid(field, port, "port 0 cannot be listened on"));
            }
        }
        if self.outbound_port == self.inbound_port
            || self.outbound_port == self.hbone_port
            || self.inbound_port == self.hbone_port
        {
            return Err(invalid(
                "outbound_port/inbound_port/hbone_port",
                format!(
                    "{}/{}/{}",
                    self.outbound_port, self.inbound_port, self.hbone_port
                ),
                "the three proxy ports must differ: the proxy tells the kinds of traffic apart by port",
            ));
        }
        if self.mark_mask == 0 {
            return Err(invalid(
                "mark_mask",
                "0x0",
                "an empty mask matches every packet",
            ));
        }
        if self.mark == 0 || self.mark & !self.mark_mask != 0 {
            return Err(invalid(
                "mark",
                format!("{:#x}", self.mark),
                format!(
                    "must be non-zero and inside mark_mask {:#x} (unmarked packets have mark 0)",
                    self.mark_mask
                ),
            ));
        }
        for (field, ports) in [
            ("exclude_outbound_ports", &self.exclude_outbound_ports),
            ("exclude_inbound_ports", &self.exclude_inbound_ports),
        ] {
            if ports.contains(&0) {
                return Err(invalid(field, 0, "port 0 is not a valid destination port"));
            }
        }
        for (field, cidrs) in [
            ("exclude_outbound_cidrs", &self.exclude_outbound_cidrs),
            ("probe_sources", &self.probe_sources),
        ] {
            for text in cidrs {
                cidr::Cidr::parse(text).map_err(|reason| invalid(field, text, reason))?;
            }
        }
        Ok(())
    }
}

pub(crate) fn invalid(
    field: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> CaptureError {
    CaptureError::InvalidSpec {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Why capture rules could not be rendered, installed, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A field of the [`CaptureSpec`] is unusable.
    #[error("capture spec field {field} = {value:?}: {reason}")]
    InvalidSpec {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// A pod annotation holds a value that cannot be parsed.
    #[error("annotation {annotation}: {value:?}: {reason}")]
    InvalidAnnotation {
        annotation: String,
        value: String,
        reason: String,
    },
    /// The rule template is malformed (a build defect, reported rather than panicking).
    #[error("rule template {template}: {reason}")]
    Template {
        template: &'static str,
        reason: String,
    },
    /// A program (of iptables or iproute2) is not installed.
    #[error("{binary} not found ({searched}): install the {package} package")]
    MissingBinary {
        binary: String,
        searched: String,
        package: &'static str,
    },
    /// The pod's network namespace could not be entered.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// A program could not be started or talked to.
    #[error("running {} in network namespace {}: {source}", binary.display(), netns.display())]
    Spawn {
        binary: PathBuf,
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A program ran and failed. An iptables restore changed nothing (restores are atomic); an
    /// `ip -batch` stopped at the failing line, which never leaves the capturing routing rule
    /// without its exemptions.
    #[error("{} in network namespace {} failed ({status}): {stderr}", binary.display(), netns.display())]
    Failed {
        binary: PathBuf,
        netns: PathBuf,
        status: String,
        stderr: String,
    },
}

/// Installs (or updates) the capture rules in `netns`, with the iptables and iproute2 programs
/// found on this host: the nat rules first ([`Iptables::apply`]), then the policy routing
/// ([`PolicyRouting::apply`]), whose route through `lo` would otherwise take connections that
/// nothing redirects.
///
/// The routing only makes captured connections faster: when it cannot be installed (iproute2
/// missing, or the pod's address not in the namespace), the failure is logged and the pod is
/// captured without it. Its batch adds the capturing rule last, so a failure never leaves that
/// rule without its exemptions.
pub fn apply(netns: &NetNs, spec: &CaptureSpec) -> Result<(), CaptureError> {
    Iptables::locate()?.apply(netns, spec)?;
    let applied = PolicyRouting::locate().and_then(|routing| routing.apply(netns, spec));
    if let Err(e) = applied {
        tracing::warn!(
            netns = %netns.path().display(),
            error = %e,
            "capture routing not installed: captured connections keep the interface's segment size"
        );
    }
    Ok(())
}

/// Removes every capture rule from `netns`: the policy routing first, then every capture chain
/// and jump. Without iproute2 only the nat rules are removed: [`apply`] installs the routing
/// with the same `ip`, so none of it can be there.
pub fn remove(netns: &NetNs) -> Result<(), CaptureError> {
    let iptables = Iptables::locate()?;
    if let Ok(routing) = PolicyRouting::locate() {
        routing.remove(netns)?;
    }
    iptables.remove(netns)
}

/// The capture rules currently in `netns`: the nat rules `iptables -S` style
/// ([`Iptables::installed`]), then the routing rules and routes ([`PolicyRouting::installed`]),
/// which are left out without iproute2 (see [`remove`]).
pub fn installed(netns: &NetNs) -> Result<Vec<String>, CaptureError> {
    let mut lines = Iptables::locate()?.installed(netns)?;
    if let Ok(routing) = PolicyRouting::locate() {
        lines.extend(routing.installed(netns)?);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_uses_the_standard_ports_and_mark() {
        let spec = CaptureSpec::default();
        assert_eq!(
            (spec.outbound_port, spec.inbound_port, spec.hbone_port),
            (15001, 15006, 15008)
        );
        assert_eq!((spec.mark, spec.mark_mask), (0x539, 0xfff));
        spec.validate().unwrap();
    }

    #[test]
    fn with_exclusions_appends() {
        let spec = CaptureSpec {
            exclude_outbound_ports: vec![22],
            ..CaptureSpec::default()
        }
        .with_exclusions(&CaptureExclusions {
            outbound_ports: vec![3306],
            outbound_cidrs: vec!["10.0.0.0/8".into()],
            inbound_ports: vec![9090],
        })
        .with_probe_sources(["198.18.0.1"]);
        assert_eq!(spec.exclude_outbound_ports, vec![22, 3306]);
        assert_eq!(spec.exclude_outbound_cidrs, vec!["10.0.0.0/8"]);
        assert_eq!(spec.exclude_inbound_ports, vec![9090]);
        assert_eq!(spec.probe_sources, vec!["198.18.0.1"]);
    }

    #[test]
    fn validate_names_the_bad_field_and_value() {
        let cases: Vec<(CaptureSpec, &str)> = vec![
            (
                CaptureSpec {
                    outbound_port: 0,
                    ..Default::default()
                },
                "outbound_port",
            ),
            (
                CaptureSpec {
                    inbound_port: 15001,
                    ..Default::default()
                },
                "15001/15001/15008",
            ),
            (
                CaptureSpec {
                    mark: 0x1539,
                    ..Default::default()
                },
                "0x1539",
            ),
            (
                CaptureSpec {
                    mark: 0,
                    ..Default::default()
                },
                "mark",
            ),
            (
                CaptureSpec {
                    mark_mask: 0,
                    ..Default::default()
                },
                "mark_mask",
            ),
            (
                CaptureSpec {
                    exclude_inbound_ports: vec![80, 0],
                    ..Default::default()
                },
                "exclude_inbound_ports",
            ),
            (
                CaptureSpec {
                    exclude_outbound_cidrs: vec!["10.0.0.0/33".into()],
                    ..Default::default()
                },
                "10.0.0.0/33",
            ),
            (
                CaptureSpec {
                    probe_sources: vec!["node-1".into()],
                    ..Default::default()
                },
                "probe_sources",
            ),
        ];
        for (spec, needle) in cases {
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn ipv6_cidrs_are_valid() {
        CaptureSpec {
            exclude_outbound_cidrs: vec!["fd00::/8".into()],
            probe_sources: vec!["fe80::1".into()],
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}

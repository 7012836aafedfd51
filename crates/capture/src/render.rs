//! Rendering the rule templates: the nat rules into iptables-restore input, the policy routing
//! into `ip -batch` input.

use std::net::Ipv4Addr;

use crate::cidr::Cidr;
use crate::routing::{CAPTURE_PRIORITY, END_PRIORITY, EXEMPT_PRIORITY, ROUTE_TABLE, usable_pod_ip};
use crate::{CHAIN_PREFIX, CaptureError, CaptureSpec, invalid};

/// Where the templates live in the repository (for error messages).
const TEMPLATE_NAME: &str = "iptables/capture.rules";
const ROUTING_TEMPLATE_NAME: &str = "iptables/routing.batch";
/// The capture rules, kept as a file next to their README so they can be reviewed as rules.
const TEMPLATE: &str = include_str!("../../../iptables/capture.rules");
/// The policy routing of captured TCP, likewise.
const ROUTING_TEMPLATE: &str = include_str!("../../../iptables/routing.batch");

/// A placeholder's value: one string, or a list that repeats its line once per item.
enum Value {
    One(String),
    Many(Vec<String>),
}

/// The `iptables-restore` input that installs the capture rules of `spec` into a namespace that
/// has none of them yet (`iptables-restore --noflush`). Re-running it where rules exist would
/// duplicate the jumps: [`crate::apply`] adds the clean-up needed to converge instead.
pub fn render(spec: &CaptureSpec) -> Result<String, CaptureError> {
    render_transaction(spec, Vec::new())
}

/// [`render`], with `cleanup` lines (deleting older state) placed after the chain declarations
/// (which flush our current chains) and before the new rules, all in one transaction.
pub(crate) fn render_transaction(
    spec: &CaptureSpec,
    cleanup: Vec<String>,
) -> Result<String, CaptureError> {
    spec.validate()?;
    let values = SpecValues::of(spec);
    let mut cleanup = Some(cleanup);
    fill(TEMPLATE_NAME, TEMPLATE, |name| match name {
        "cleanup" => Some(Value::Many(cleanup.take().unwrap_or_default())),
        name => values.value(name),
    })
}

/// The `ip -4 -batch` input that routes the TCP of a pod whose address is `pod_ip` through
/// loopback (see [`crate::routing`]), for a namespace that has none of these rules yet.
pub fn render_routing(spec: &CaptureSpec, pod_ip: Ipv4Addr) -> Result<String, CaptureError> {
    spec.validate()?;
    if !usable_pod_ip(pod_ip) {
        return Err(invalid(
            "pod_ip",
            pod_ip,
            "must be the pod's unicast address: connections take it as their source",
        ));
    }
    let values = SpecValues::of(spec);
    fill(ROUTING_TEMPLATE_NAME, ROUTING_TEMPLATE, |name| {
        let number = |n: u32| Some(Value::One(n.to_string()));
        match name {
            "pod_ip" => Some(Value::One(pod_ip.to_string())),
            "table" => number(ROUTE_TABLE),
            "exempt_priority" => number(EXEMPT_PRIORITY),
            "capture_priority" => number(CAPTURE_PRIORITY),
            "end_priority" => number(END_PRIORITY),
            name => values.value(name),
        }
    })
}

/// The placeholders both templates take from the spec: its ports and mark, and its lists,
/// deduplicated, with IPv6 blocks left out (IPv6 is not captured at all).
struct SpecValues<'a> {
    spec: &'a CaptureSpec,
    probe_sources: Vec<String>,
    outbound_cidrs: Vec<String>,
    inbound_ports: Vec<String>,
    outbound_ports: Vec<String>,
}

impl SpecValues<'_> {
    fn of(spec: &CaptureSpec) -> SpecValues<'_> {
        // Validated before rendering, so every text parses.
        let ipv4_blocks = |texts: &[String]| {
            distinct(texts.iter().filter_map(|text| {
                Cidr::parse(text)
                    .ok()
                    .filter(Cidr::is_ipv4)
                    .map(|cidr| cidr.to_string())
            }))
        };
        let ports = |ports: &[u16]| distinct(ports.iter().map(u16::to_string));
        SpecValues {
            spec,
            probe_sources: ipv4_blocks(&spec.probe_sources),
            outbound_cidrs: ipv4_blocks(&spec.exclude_outbound_cidrs),
            inbound_ports: ports(&spec.exclude_inbound_ports),
            outbound_ports: ports(&spec.exclude_outbound_ports),
        }
    }

    fn value(&self, name: &str) -> Option<Value> {
        let spec = self.spec;
        let list = match name {
            "outbound_port" => return Some(Value::One(spec.outbound_port.to_string())),
            "inbound_port" => return Some(Value::One(spec.inbound_port.to_string())),
            "hbone_port" => return Some(Value::One(spec.hbone_port.to_string())),
            "mark" => return Some(Value::One(format!("{:#x}", spec.mark))),
            "mark_mask" => return Some(Value::One(format!("{:#x}", spec.mark_mask))),
            "probe_source" => &self.probe_sources,
            "exclude_inbound_port" => &self.inbound_ports,
            "exclude_outbound_port" => &self.outbound_ports,
            "exclude_outbound_cidr" => &self.outbound_cidrs,
            _ => return None,
        };
        Some(Value::Many(list.clone()))
    }
}

/// Each item once, in order of first appearance.
fn distinct(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// The chains a rendered rule set declares (`:NAME - [0:0]`): the chains that are current.
pub(crate) fn declared_chains(rendered: &str) -> Vec<String> {
    rendered
        .lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| name.starts_with(CHAIN_PREFIX))
        .map(str::to_string)
        .collect()
}

/// Fills `template`: comment and blank lines are dropped, `{{name}}` is replaced with its value,
/// and a line holding a list placeholder is emitted once per item (not at all for none).
fn fill(
    template_name: &'static str,
    template: &str,
    mut lookup: impl FnMut(&str) -> Option<Value>,
) -> Result<String, CaptureError> {
    let error = |line: usize, reason: String| CaptureError::Template {
        template: template_name,
        reason: format!("line {line}: {reason}"),
    };
    let mut out = String::new();
    for (index, line) in template.lines().enumerate() {
        let number = index + 1;
        let line = line.trim_end();
        if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        // Split into literal text and placeholder names.
        let mut pieces: Vec<(bool, &str)> = Vec::new();
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| error(number, "unterminated {{".to_string()))?;
            pieces.push((false, &rest[..start]));
            pieces.push((true, after[..end].trim()));
            rest = &after[end + 2..];
        }
        pieces.push((false, rest));

        let mut scalars: Vec<Option<String>> = Vec::with_capacity(pieces.len());
        let mut list: Option<(usize, Vec<String>)> = None;
        for (position, (is_name, text)) in pieces.iter().enumerate() {
            if !is_name {
                scalars.push(Some((*text).to_string()));
                continue;
            }
            match lookup(text) {
                None => return Err(error(number, format!("unknown placeholder {{{{{text}}}}}"))),
                Some(Value::One(value)) => scalars.push(Some(value)),
                Some(Value::Many(items)) => {
                    if list.is_some() {
                        return Err(error(number, "more than one list placeholder".to_string()));
                    }
                    list = Some((position, items));
                    scalars.push(None);
                }
            }
        }
        let assemble = |item: Option<&str>| -> String {
            scalars
                .iter()
                .map(|piece| piece.as_deref().or(item).unwrap_or_default())
                .collect()
        };
        match &list {
            None => {
                out.push_str(&assemble(None));
                out.push('\n');
            }
            Some((_, items)) => {
                for item in items {
                    out.push_str(&assemble(Some(item)));
                    out.push('\n');
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_renders_the_standard_rules() {
        let rendered = render(&CaptureSpec::default()).unwrap();
        assert_eq!(
            rendered,
            "*nat\n\
             :STRAIT_INBOUND - [0:0]\n\
             :STRAIT_OUTBOUND - [0:0]\n\
             -I PREROUTING 1 -p tcp -j STRAIT_INBOUND\n\
             -I OUTPUT 1 -p tcp -j STRAIT_OUTBOUND\n\
             -A STRAIT_INBOUND -p tcp --dport 15008 -j RETURN\n\
             -A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 15006\n\
             -A STRAIT_OUTBOUND -m mark --mark 0x539/0xfff -j RETURN\n\
             -A STRAIT_OUTBOUND -m addrtype --dst-type LOCAL -j RETURN\n\
             -A STRAIT_OUTBOUND -d 127.0.0.0/8 -j RETURN\n\
             -A STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 15001\n\
             COMMIT\n"
        );
    }

    #[test]
    fn exclusions_render_one_rule_each_before_the_redirect() {
        let spec = CaptureSpec {
            outbound_port: 25001,
            inbound_port: 25006,
            hbone_port: 25008,
            mark: 0x42,
            mark_mask: 0xff,
            exclude_outbound_ports: vec![22, 3306, 22],
            exclude_outbound_cidrs: vec![
                "10.0.0.0/8".into(),
                "fd00::/8".into(),
                "198.18.0.9".into(),
            ],
            exclude_inbound_ports: vec![9090],
            probe_sources: vec!["198.18.0.1".into(), "198.18.0.1/32".into()],
            pod_ip: None,
        };
        let rendered = render(&spec).unwrap();
        let lines: Vec<&str> = rendered.lines().collect();
        let inbound: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("-A STRAIT_INBOUND"))
            .collect();
        assert_eq!(
            inbound,
            vec![
                "-A STRAIT_INBOUND -p tcp --dport 25008 -j RETURN",
                "-A STRAIT_INBOUND -s 198.18.0.1/32 -j RETURN",
                "-A STRAIT_INBOUND -p tcp --dport 9090 -j RETURN",
                "-A STRAIT_INBOUND -p tcp -j REDIRECT --to-ports 25006",
            ]
        );
        let outbound: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("-A STRAIT_OUTBOUND"))
            .collect();
        assert_eq!(
            outbound,
            vec![
                "-A STRAIT_OUTBOUND -m mark --mark 0x42/0xff -j RETURN",
                "-A STRAIT_OUTBOUND -m addrtype --dst-type LOCAL -j RETURN",
                "-A STRAIT_OUTBOUND -d 127.0.0.0/8 -j RETURN",
                "-A STRAIT_OUTBOUND -p tcp --dport 22 -j RETURN",
                "-A STRAIT_OUTBOUND -p tcp --dport 3306 -j RETURN",
                "-A STRAIT_OUTBOUND -d 10.0.0.0/8 -j RETURN",
                "-A STRAIT_OUTBOUND -d 198.18.0.9/32 -j RETURN",
                "-A STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 25001",
            ]
        );
        assert!(
            !rendered.contains("fd00"),
            "IPv6 is not captured: {rendered}"
        );
    }

    #[test]
    fn routing_exempts_what_must_keep_the_pod_routes_before_capturing() {
        let spec = CaptureSpec {
            exclude_outbound_ports: vec![22, 22],
            exclude_outbound_cidrs: vec!["10.0.0.0/8".into(), "fd00::/8".into()],
            exclude_inbound_ports: vec![9090],
            probe_sources: vec!["198.18.0.1".into()],
            ..CaptureSpec::default()
        };
        assert_eq!(
            render_routing(&spec, Ipv4Addr::new(198, 18, 0, 2)).unwrap(),
            "route replace 0.0.0.0/0 dev lo src 198.18.0.2 table 1337\n\
             rule add priority 1339 nop\n\
             rule add priority 1337 fwmark 0x539/0xfff goto 1339\n\
             rule add priority 1337 ipproto tcp sport 15006 goto 1339\n\
             rule add priority 1337 ipproto tcp sport 15008 goto 1339\n\
             rule add priority 1337 ipproto tcp sport 9090 goto 1339\n\
             rule add priority 1337 to 198.18.0.1/32 goto 1339\n\
             rule add priority 1337 to 10.0.0.0/8 goto 1339\n\
             rule add priority 1337 ipproto tcp dport 22 goto 1339\n\
             rule add priority 1338 iif lo ipproto tcp lookup 1337\n"
        );
    }

    #[test]
    fn routing_needs_a_unicast_pod_address() {
        for ip in [Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST] {
            let err = render_routing(&CaptureSpec::default(), ip).unwrap_err();
            assert!(
                matches!(
                    err,
                    CaptureError::InvalidSpec {
                        field: "pod_ip",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn cleanup_goes_between_declarations_and_rules() {
        let rendered = render_transaction(
            &CaptureSpec::default(),
            vec![
                "-D OUTPUT -p tcp -j STRAIT_OUTBOUND".into(),
                "-X STRAIT_OLD".into(),
            ],
        )
        .unwrap();
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[2], ":STRAIT_OUTBOUND - [0:0]");
        assert_eq!(lines[3], "-D OUTPUT -p tcp -j STRAIT_OUTBOUND");
        assert_eq!(lines[4], "-X STRAIT_OLD");
        assert_eq!(lines[5], "-I PREROUTING 1 -p tcp -j STRAIT_INBOUND");
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn template_declares_only_our_chains_and_one_table() {
        let rendered = render(&CaptureSpec::default()).unwrap();
        assert_eq!(
            declared_chains(&rendered),
            vec!["STRAIT_INBOUND", "STRAIT_OUTBOUND"]
        );
        let declared = rendered.lines().filter(|l| l.starts_with(':')).count();
        assert_eq!(
            declared, 2,
            "every declared chain must carry {CHAIN_PREFIX}"
        );
        assert_eq!(rendered.matches("*nat").count(), 1);
        assert_eq!(rendered.matches("COMMIT").count(), 1);
    }

    #[test]
    fn invalid_spec_is_not_rendered() {
        let spec = CaptureSpec {
            exclude_outbound_cidrs: vec!["10.0.0.1/8".into()],
            ..Default::default()
        };
        assert!(matches!(
            render(&spec),
            Err(CaptureError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn template_defects_are_errors() {
        let lookup = |name: &str| match name {
            "one" => Some(Value::One("1".into())),
            "many" => Some(Value::Many(vec!["a".into(), "b".into()])),
            _ => None,
        };
        assert_eq!(
            fill("t", "# c\n\nx {{one}} {{ many }}\n{{many}}y\n", lookup).unwrap(),
            "x 1 a\nx 1 b\nay\nby\n"
        );
        for (template, needle) in [
            ("x {{nope}}", "unknown placeholder {{nope}}"),
            ("x {{one", "unterminated"),
            ("{{many}} {{many}}", "more than one list"),
        ] {
            let err = fill("t", template, lookup).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
            assert!(err.contains("rule template t: line 1"), "{err}");
        }
    }
}

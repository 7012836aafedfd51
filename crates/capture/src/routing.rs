//! Policy routing that sends a pod's captured TCP through loopback from its first route lookup.
//!
//! The nat `REDIRECT` of the capture rules takes a connection to the proxy only after the
//! kernel has routed it out of the pod's interface, and the application's socket keeps that
//! route: it sizes its segments for the interface (1,460 bytes on a 1,500-byte MTU) although
//! every byte then crosses loopback. Loopback hands one send's segments to the receiving side
//! from whichever CPU sent them, so some arrive out of order; counted in 1,460-byte segments
//! that is past the reordering threshold, and the sender retransmits and shrinks its window for
//! data that was never lost. Measured on the benchmark's passthrough: about 7,500 such
//! retransmitted segments per 8-second transfer (about 60 with these rules), and throughput
//! below a proxy the client dials on 127.0.0.1.
//!
//! These rules make the lookup at `connect()` resolve through a route via `lo` in our table, so
//! the socket takes loopback's 64 KiB segments; the `REDIRECT` still decides where the
//! connection goes. The rules see every IPv4 route lookup in the pod, so everything that must
//! keep the pod's routes is exempted first: the proxy's own (marked) sockets, answers from the
//! ports that are not captured inbound (the proxy's inbound ports, excluded ports, health-probe
//! sources, which the kernel also answers with resets when nothing listens), and the outbound
//! exclusions. An exempted lookup jumps past our rules and continues with whatever rules of
//! other owners follow. Some incoming packets have their source checked with a lookup that
//! looks locally sent, and meets our route too: a loose or disabled reverse-path filter (the
//! default in a pod) accepts the answer, a strict one would drop the packet, so a pod with a
//! strict filter gets no routing. `iptables/README.md` explains each line of
//! `iptables/routing.batch`.

use std::net::Ipv4Addr;

use strait_netns::NetNs;

use crate::program::Program;
use crate::render::render_routing;
use crate::{CaptureError, CaptureSpec};

/// Our routing table (0x539, the proxy's mark).
pub const ROUTE_TABLE: u32 = 1337;
/// Priority of the exemptions, which jump to [`END_PRIORITY`].
pub const EXEMPT_PRIORITY: u32 = 1337;
/// Priority of the rule that routes the pod's TCP through [`ROUTE_TABLE`].
pub const CAPTURE_PRIORITY: u32 = 1338;
/// Priority of the `nop` rule that ends ours.
pub const END_PRIORITY: u32 = 1339;
/// Ours, in the order they are deleted: the capturing rule first, so that no moment has it
/// without its exemptions.
const PRIORITIES: [u32; 3] = [CAPTURE_PRIORITY, EXEMPT_PRIORITY, END_PRIORITY];

/// The `ip` program of iproute2, which installs and inspects the policy routing.
#[derive(Clone, Debug)]
pub struct PolicyRouting {
    ip: Program,
}

impl PolicyRouting {
    /// Finds `ip` in `PATH`, then in the usual `sbin` directories.
    pub fn locate() -> Result<PolicyRouting, CaptureError> {
        Ok(PolicyRouting {
            ip: Program::locate("ip", "iproute2")?,
        })
    }

    /// Uses the given `ip` program.
    pub fn with_binary(ip: impl Into<std::path::PathBuf>) -> PolicyRouting {
        PolicyRouting {
            ip: Program::at(ip, "iproute2"),
        }
    }

    /// Brings the namespace's policy routing to what `spec` asks: our rules and table when the
    /// spec names the pod's IPv4 address, none otherwise. Rules of other owners are kept.
    ///
    /// One `ip -batch` run deletes whatever of ours is there (the capturing rule first, the
    /// routes last), then adds the route, the exemptions and the capturing rule last. It stops
    /// at the first failure, which therefore never leaves the capturing rule without its
    /// exemptions; in the moment between the deletions and the additions, new connections take
    /// the pod's own routes and are still redirected, with interface-sized segments.
    pub fn apply(&self, netns: &NetNs, spec: &CaptureSpec) -> Result<(), CaptureError> {
        // Validate and render before touching the namespace.
        let fresh = wanted(netns, spec)?;
        let mut batch = self.state(netns)?.deletions();
        if let Some(fresh) = &fresh {
            batch.push_str(fresh);
        }
        if !batch.is_empty() {
            self.batch(netns, &batch)?;
        }
        tracing::debug!(netns = %netns.path().display(), pod_ip = ?spec.pod_ip, "capture routing applied");
        Ok(())
    }

    /// Deletes our rules and our table's route; nothing to remove is not an error.
    pub fn remove(&self, netns: &NetNs) -> Result<(), CaptureError> {
        let batch = self.state(netns)?.deletions();
        if !batch.is_empty() {
            self.batch(netns, &batch)?;
        }
        Ok(())
    }

    /// Our rules (`ip rule` style, `PRIORITY: selector action`) and our table's routes
    /// (`table 1337: route`) now in `netns`. Empty when none are installed.
    pub fn installed(&self, netns: &NetNs) -> Result<Vec<String>, CaptureError> {
        let state = self.state(netns)?;
        Ok(state
            .rules
            .iter()
            .map(|(priority, rule)| format!("{priority}: {rule}"))
            .chain(
                state
                    .routes
                    .iter()
                    .map(|route| format!("table {ROUTE_TABLE}: {route}")),
            )
            .collect())
    }

    /// Ours among the namespace's rules (`ip -4 rule show`) and routes
    /// (`ip -4 route show table all`).
    fn state(&self, netns: &NetNs) -> Result<RoutingState, CaptureError> {
        let list = |args: &[&str]| -> Result<String, CaptureError> {
            let output = self.ip.run(netns, args, None)?;
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        };
        Ok(RoutingState::parse(
            &list(&["-4", "rule", "show"])?,
            &list(&["-4", "route", "show", "table", "all"])?,
        ))
    }

    fn batch(&self, netns: &NetNs, batch: &str) -> Result<(), CaptureError> {
        tracing::debug!(netns = %netns.path().display(), %batch, "ip -batch");
        self.ip.run(netns, &["-4", "-batch", "-"], Some(batch))?;
        Ok(())
    }
}

/// What of ours `ip -4 rule show` and `ip -4 route show table all` list.
#[derive(Debug, Default, PartialEq)]
struct RoutingState {
    /// Our rules, `(priority, rest)`, in listing order.
    rules: Vec<(u32, String)>,
    /// Our table's routes, without the `table` word.
    routes: Vec<String>,
}

impl RoutingState {
    fn parse(rules: &str, routes: &str) -> RoutingState {
        let rules = rules
            .lines()
            .filter_map(|line| {
                let (priority, rest) = line.split_once(':')?;
                let priority: u32 = priority.trim().parse().ok()?;
                PRIORITIES
                    .contains(&priority)
                    .then(|| (priority, words(rest)))
            })
            .collect();
        let table = ROUTE_TABLE.to_string();
        let routes = routes
            .lines()
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let at = words
                    .windows(2)
                    .position(|pair| pair[0] == "table" && pair[1] == table)?;
                let mut route = words;
                route.drain(at..at + 2);
                Some(route.join(" "))
            })
            .collect();
        RoutingState { rules, routes }
    }

    /// `ip -batch` lines deleting every rule of ours (the capturing rule first), then our
    /// table's routes.
    fn deletions(&self) -> String {
        let mut batch = String::new();
        for priority in PRIORITIES {
            for _ in self.rules.iter().filter(|(p, _)| *p == priority) {
                batch.push_str(&format!("rule del priority {priority}\n"));
            }
        }
        if !self.routes.is_empty() {
            batch.push_str(&format!("route flush table {ROUTE_TABLE}\n"));
        }
        batch
    }
}

/// The batch that installs the routing `spec` asks for, or `None` when the pod gets none: no
/// address given, or a strict reverse-path filter that would drop the answers our route meets.
fn wanted(netns: &NetNs, spec: &CaptureSpec) -> Result<Option<String>, CaptureError> {
    let Some(pod_ip) = spec.pod_ip else {
        return Ok(None);
    };
    let fresh = render_routing(spec, pod_ip)?;
    let strict = strict_reverse_path(netns)?;
    if !strict.is_empty() {
        tracing::warn!(
            netns = %netns.path().display(),
            interfaces = ?strict,
            "strict reverse-path filtering (rp_filter=1): captured connections keep the \
             interface's segment size"
        );
        return Ok(None);
    }
    Ok(Some(fresh))
}

/// The pod's interfaces that filter by strict reverse path (`rp_filter` 1, the larger of the
/// interface's value and `all`). Our route answers a reverse-path lookup with loopback, which a
/// strict filter takes for a spoofed source and drops, so such a pod is left without our
/// routing.
fn strict_reverse_path(netns: &NetNs) -> Result<Vec<String>, CaptureError> {
    const CONF: &str = "/proc/sys/net/ipv4/conf";
    // /proc/sys/net shows the namespace of the thread that reads it.
    let strict = netns.run(|| {
        let rp_filter = |interface: &str| -> u8 {
            std::fs::read_to_string(format!("{CONF}/{interface}/rp_filter"))
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(0)
        };
        let all = rp_filter("all");
        let mut strict: Vec<String> = std::fs::read_dir(CONF)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !matches!(name.as_str(), "all" | "default" | "lo"))
            .filter(|name| all.max(rp_filter(name)) == 1)
            .collect();
        strict.sort();
        strict
    })?;
    Ok(strict)
}

/// `text` with runs of whitespace (the tab after the priority) as single spaces.
fn words(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The pod's address, when capture can route through loopback from it: a unicast IPv4
/// address.
pub(crate) fn usable_pod_ip(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "0:\tfrom all lookup local\n\
        1337:\tfrom all fwmark 0x539/0xfff goto 1339\n\
        1337:\tfrom all to 198.18.0.1 goto 1339\n\
        1338:\tfrom all iif lo ipproto tcp lookup 1337\n\
        1339:\tfrom all nop\n\
        2000:\tfrom all fwmark 0x1 lookup 7\n\
        32766:\tfrom all lookup main\n\
        32767:\tfrom all lookup default\n";
    const ROUTES: &str = "default via 198.18.0.1 dev eth0\n\
        default dev lo table 1337 scope link src 198.18.0.2\n\
        local 198.18.0.2 dev eth0 table local proto kernel scope host src 198.18.0.2\n\
        unicast 10.0.0.0/8 dev eth0 table 13370\n";

    #[test]
    fn parses_only_our_rules_and_table() {
        let state = RoutingState::parse(RULES, ROUTES);
        assert_eq!(
            state.rules,
            vec![
                (1337, "from all fwmark 0x539/0xfff goto 1339".to_string()),
                (1337, "from all to 198.18.0.1 goto 1339".to_string()),
                (1338, "from all iif lo ipproto tcp lookup 1337".to_string()),
                (1339, "from all nop".to_string()),
            ]
        );
        assert_eq!(
            state.routes,
            vec!["default dev lo scope link src 198.18.0.2"]
        );
        assert_eq!(
            RoutingState::parse(
                "0:\tfrom all lookup local\n",
                "default via 198.18.0.1 dev eth0\n"
            ),
            RoutingState::default()
        );
    }

    #[test]
    fn deletes_the_capturing_rule_first_and_each_rule_once() {
        let state = RoutingState::parse(RULES, ROUTES);
        assert_eq!(
            state.deletions(),
            "rule del priority 1338\n\
             rule del priority 1337\n\
             rule del priority 1337\n\
             rule del priority 1339\n\
             route flush table 1337\n"
        );
        assert_eq!(RoutingState::default().deletions(), "");
    }

    #[test]
    fn only_unicast_addresses_route_through_loopback() {
        assert!(usable_pod_ip(Ipv4Addr::new(198, 18, 0, 2)));
        for ip in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
        ] {
            assert!(!usable_pod_ip(ip), "{ip}");
        }
    }
}

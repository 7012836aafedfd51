//! Throw-away network namespaces for the capture tests (need root, iproute2 and iptables).
//!
//! Names are `strait-cap-<pid>-<n>`; every namespace is deleted when its guard drops (also when
//! a test panics), and namespaces left by a crashed earlier run (their PID is gone) are deleted
//! before the first new one is made.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use strait_netns::NetNs;

const PREFIX: &str = "strait-cap-";

/// Whether the tests can run here; prints why not when they cannot.
pub fn privileged() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() != Some("0") {
        eprintln!("SKIPPED: network namespace tests need root");
        return false;
    }
    true
}

/// A named network namespace, deleted on drop.
pub struct TestNs {
    pub name: String,
    pub ns: NetNs,
}

impl TestNs {
    /// A new namespace with `lo` up.
    pub fn new() -> TestNs {
        static CLEAN: Once = Once::new();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        CLEAN.call_once(remove_stale);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = match NetNs::named(&name) {
            Ok(ns) => ns,
            Err(err) => {
                delete(&name);
                panic!("opening {name}: {err}");
            }
        };
        let test_ns = TestNs { name, ns };
        test_ns.ip(&["link", "set", "lo", "up"]);
        test_ns
    }

    /// A new namespace with `lo` up and an `eth0` holding `address`, as a pod has (one end of a
    /// veth pair whose other end stays in the namespace, down).
    pub fn with_address(address: &str) -> TestNs {
        let test_ns = TestNs::new();
        test_ns.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0-peer",
        ]);
        test_ns.ip(&["addr", "add", address, "dev", "eth0"]);
        test_ns.ip(&["link", "set", "eth0", "up"]);
        test_ns
    }

    /// The IPv4 policy-routing rules and every IPv4 route of the namespace.
    pub fn routing(&self) -> String {
        self.ip(&["-4", "rule", "show"]) + &self.ip(&["-4", "route", "show", "table", "all"])
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// `ip netns exec NAME ARGS...` with `input` on stdin, which must succeed.
    pub fn exec_with_input(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning ip netns exec");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writing stdin");
        let output = child.wait_with_output().expect("waiting for ip netns exec");
        assert!(
            output.status.success(),
            "{args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The nat table without what changes by itself (comments with timestamps, counters).
    pub fn nat_table(&self) -> String {
        normalize(&self.exec_with_input(&["iptables-save", "-t", "nat"], ""))
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// `iptables-save` output without comment lines and with chain counters zeroed.
pub fn normalize(dump: &str) -> String {
    dump.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            if line.starts_with(':') {
                let mut words: Vec<&str> = line.split_whitespace().collect();
                if words.last().is_some_and(|w| w.starts_with('[')) {
                    words.pop();
                }
                words.join(" ")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `installed()` lines grouped by chain (`-N` lines under the chain they create), so rule sets
/// compare equal whatever order the backend lists chains in.
pub fn by_chain(lines: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let chain = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        map.entry(chain).or_default().push(line.clone());
    }
    map
}

fn run(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|err| panic!("running {args:?}: {err}"));
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn delete(name: &str) {
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => eprintln!(
            "deleting netns {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) => eprintln!("deleting netns {name}: {err}"),
    }
}

/// Deletes `strait-cap-<pid>-*` namespaces whose process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(strait_netns::NAMED_NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale netns {name}");
            delete(&name);
        }
    }
}

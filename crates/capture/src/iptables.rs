//! Running iptables inside a pod's network namespace, and reconciling what is there.

use strait_netns::NetNs;

use crate::program::Program;
use crate::render::{declared_chains, render_transaction};
use crate::{CHAIN_PREFIX, CaptureError, CaptureSpec};

const RESTORE: &str = "iptables-restore";
const SAVE: &str = "iptables-save";
const PACKAGE: &str = "iptables";
/// How long `iptables-restore` waits for the xtables lock (legacy backend; nf_tables ignores it)
/// before failing, instead of failing at once while another tool holds it.
const LOCK_WAIT: &str = "--wait=30";

/// The iptables programs used to install and inspect capture rules. The programs run inside the
/// pod's namespace (forked from a thread that entered it), so the node proxy process itself never
/// changes namespace.
#[derive(Clone, Debug)]
pub struct Iptables {
    restore: Program,
    save: Program,
}

impl Iptables {
    /// Finds `iptables-restore` and `iptables-save` in `PATH`, then in the usual `sbin`
    /// directories. Whichever backend they point to (nf_tables or legacy) is used.
    pub fn locate() -> Result<Iptables, CaptureError> {
        Ok(Iptables {
            restore: Program::locate(RESTORE, PACKAGE)?,
            save: Program::locate(SAVE, PACKAGE)?,
        })
    }

    /// Uses the given programs, for example `iptables-legacy-restore` and `iptables-legacy-save`
    /// on hosts whose pods use the legacy backend. A bare name is looked up in `PATH` when run.
    pub fn with_binaries(
        restore: impl Into<std::path::PathBuf>,
        save: impl Into<std::path::PathBuf>,
    ) -> Iptables {
        Iptables {
            restore: Program::at(restore, PACKAGE),
            save: Program::at(save, PACKAGE),
        }
    }

    /// Installs the capture rules of `spec` in `netns`, or brings existing ones up to date.
    ///
    /// Whatever the namespace holds from earlier runs (the same rules, an older rule set, or the
    /// remains of a crash, including duplicated jumps and chains of older versions) ends as
    /// exactly one copy of the current rules: the current `STRAIT_*` chains are flushed and
    /// refilled, every jump into a `STRAIT_*` chain is deleted and re-created first in
    /// `PREROUTING`/`OUTPUT`, and other `STRAIT_*` chains are deleted, all in one atomic
    /// `iptables-restore --noflush` transaction. Rules of other owners are kept. Connections
    /// already established keep the NAT decision they got at their first packet.
    pub fn apply(&self, netns: &NetNs, spec: &CaptureSpec) -> Result<(), CaptureError> {
        // Validate before touching the namespace.
        let fresh = render_transaction(spec, Vec::new())?;
        let current = declared_chains(&fresh);
        let state = NatState::parse(&self.save_nat(netns)?);
        let mut cleanup: Vec<String> = state
            .jumps
            .iter()
            .map(|rule| format!("-D {rule}"))
            .collect();
        let stale: Vec<&String> = state
            .chains
            .iter()
            .filter(|chain| !current.contains(chain))
            .collect();
        // Flush every stale chain before deleting any: they may refer to one another.
        cleanup.extend(stale.iter().map(|chain| format!("-F {chain}")));
        cleanup.extend(stale.iter().map(|chain| format!("-X {chain}")));
        let transaction = render_transaction(spec, cleanup)?;
        tracing::debug!(netns = %netns.path().display(), %transaction, "applying capture rules");
        self.restore(netns, &transaction)?;
        tracing::info!(
            netns = %netns.path().display(),
            replaced_jumps = state.jumps.len(),
            removed_chains = stale.len(),
            "capture rules applied"
        );
        Ok(())
    }

    /// Removes every `STRAIT_*` chain of the nat table in `netns` and every jump into one,
    /// atomically. Rules of other owners are kept; nothing to remove is not an error.
    pub fn remove(&self, netns: &NetNs) -> Result<(), CaptureError> {
        let state = NatState::parse(&self.save_nat(netns)?);
        if state.chains.is_empty() && state.jumps.is_empty() {
            return Ok(());
        }
        let mut transaction = String::from("*nat\n");
        for rule in &state.jumps {
            transaction.push_str(&format!("-D {rule}\n"));
        }
        for chain in &state.chains {
            transaction.push_str(&format!("-F {chain}\n"));
        }
        for chain in &state.chains {
            transaction.push_str(&format!("-X {chain}\n"));
        }
        transaction.push_str("COMMIT\n");
        self.restore(netns, &transaction)?;
        tracing::info!(netns = %netns.path().display(), "capture rules removed");
        Ok(())
    }

    /// The capture rules now in `netns`, as `iptables -S` prints them: `-N` for each `STRAIT_*`
    /// chain, then the jumps into them and their rules (`-A ...`, in iptables' canonical
    /// spelling, e.g. `-p tcp -m tcp --dport 15008`). Empty when capture is not installed.
    pub fn installed(&self, netns: &NetNs) -> Result<Vec<String>, CaptureError> {
        let state = NatState::parse(&self.save_nat(netns)?);
        Ok(state
            .chains
            .iter()
            .map(|chain| format!("-N {chain}"))
            .chain(state.rules.iter().map(|rule| format!("-A {rule}")))
            .collect())
    }

    /// The whole nat table of `netns` (`iptables-save -t nat`), for diagnostics.
    pub fn save_nat(&self, netns: &NetNs) -> Result<String, CaptureError> {
        let output = self.save.run(netns, &["-t", "nat"], None)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn restore(&self, netns: &NetNs, input: &str) -> Result<(), CaptureError> {
        self.restore
            .run(netns, &["--noflush", LOCK_WAIT], Some(input))?;
        Ok(())
    }
}

/// What of ours an `iptables-save -t nat` dump holds.
#[derive(Debug, Default, PartialEq)]
struct NatState {
    /// Our chains, in dump order.
    chains: Vec<String>,
    /// Rules of other chains that jump (or go) to one of ours, without the leading `-A `.
    jumps: Vec<String>,
    /// Jumps and the rules of our chains, in dump order, without the leading `-A `.
    rules: Vec<String>,
}

impl NatState {
    fn parse(dump: &str) -> NatState {
        let mut state = NatState::default();
        let mut in_nat = false;
        for line in dump.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(chain) = line.strip_prefix(':') {
                if let Some(name) = chain.split_whitespace().next()
                    && is_ours(name)
                {
                    state.chains.push(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let words = split_words(rule);
                let chain = words.first().map(String::as_str).unwrap_or_default();
                let target = words
                    .windows(2)
                    .find(|pair| matches!(pair[0].as_str(), "-j" | "--jump" | "-g" | "--goto"))
                    .map(|pair| pair[1].as_str())
                    .unwrap_or_default();
                if is_ours(chain) {
                    state.rules.push(rule.to_string());
                } else if is_ours(target) {
                    state.jumps.push(rule.to_string());
                    state.rules.push(rule.to_string());
                }
            }
        }
        state
    }
}

fn is_ours(chain: &str) -> bool {
    chain.starts_with(CHAIN_PREFIX)
}

/// Splits a saved rule into words the way iptables-restore does: whitespace-separated, with
/// double-quoted strings (comments) as one word and `\"` inside them.
fn split_words(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:STRAIT_FILTER - [0:0]
-A INPUT -j STRAIT_FILTER
COMMIT
*nat
:PREROUTING ACCEPT [3:180]
:OUTPUT ACCEPT [0:0]
:FOREIGN - [0:0]
:STRAIT_OLD - [0:0]
:STRAIT_OUTBOUND - [0:0]
-A PREROUTING -p udp -m udp --dport 53 -j RETURN
-A OUTPUT -p tcp -j STRAIT_OUTBOUND
-A OUTPUT -p tcp -j STRAIT_OUTBOUND
-A OUTPUT -m comment --comment \"not -j STRAIT_X\" -j FOREIGN
-A FOREIGN -g STRAIT_OLD
-A STRAIT_OLD -j RETURN
-A STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 15001
COMMIT
# Completed
";

    #[test]
    fn parses_our_chains_jumps_and_rules_from_the_nat_table_only() {
        let state = NatState::parse(DUMP);
        assert_eq!(state.chains, vec!["STRAIT_OLD", "STRAIT_OUTBOUND"]);
        assert_eq!(
            state.jumps,
            vec![
                "OUTPUT -p tcp -j STRAIT_OUTBOUND",
                "OUTPUT -p tcp -j STRAIT_OUTBOUND",
                "FOREIGN -g STRAIT_OLD",
            ]
        );
        assert_eq!(
            state.rules,
            vec![
                "OUTPUT -p tcp -j STRAIT_OUTBOUND",
                "OUTPUT -p tcp -j STRAIT_OUTBOUND",
                "FOREIGN -g STRAIT_OLD",
                "STRAIT_OLD -j RETURN",
                "STRAIT_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn empty_table_holds_nothing_of_ours() {
        let state =
            NatState::parse("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(state, NatState::default());
        assert_eq!(NatState::parse(""), NatState::default());
    }

    #[test]
    fn words_respect_quotes() {
        assert_eq!(
            split_words(r#"OUTPUT -m comment --comment "a \"b\" -j X"  -j Y"#),
            vec![
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                r#"a "b" -j X"#,
                "-j",
                "Y"
            ]
        );
        assert_eq!(
            split_words(r#"A --comment "" -j B"#),
            vec!["A", "--comment", "", "-j", "B"]
        );
    }
}

//! Running iptables inside a pod's network namespace, and reconciling what is there.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use strait_netns::NetNs;

use crate::render::{declared_chains, render_transaction};
use crate::{CHAIN_PREFIX, CaptureError, CaptureSpec};

/// Directories searched after `PATH`: the iptables programs live in `sbin`, which service
/// environments often leave out of `PATH`.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];
const RESTORE: &str = "iptables-restore";
const SAVE: &str = "iptables-save";
/// How long `iptables-restore` waits for the xtables lock (legacy backend; nf_tables ignores it)
/// before failing, instead of failing at once while another tool holds it.
const LOCK_WAIT: &str = "--wait=30";

/// The iptables programs used to install and inspect capture rules. The programs run inside the
/// pod's namespace (forked from a thread that entered it), so the node proxy process itself never
/// changes namespace.
#[derive(Clone, Debug)]
pub struct Iptables {
    restore: PathBuf,
    save: PathBuf,
}

impl Iptables {
    /// Finds `iptables-restore` and `iptables-save` in `PATH`, then in the usual `sbin`
    /// directories. Whichever backend they point to (nf_tables or legacy) is used.
    pub fn locate() -> Result<Iptables, CaptureError> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect())
            .unwrap_or_default();
        dirs.extend(SBIN_DIRS.iter().map(PathBuf::from));
        Ok(Iptables {
            restore: find(RESTORE, &dirs)?,
            save: find(SAVE, &dirs)?,
        })
    }

    /// Uses the given programs, for example `iptables-legacy-restore` and `iptables-legacy-save`
    /// on hosts whose pods use the legacy backend. A bare name is looked up in `PATH` when run.
    pub fn with_binaries(restore: impl Into<PathBuf>, save: impl Into<PathBuf>) -> Iptables {
        Iptables {
            restore: restore.into(),
            save: save.into(),
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
        let output = self.run(netns, &self.save, &["-t", "nat"], None)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn restore(&self, netns: &NetNs, input: &str) -> Result<(), CaptureError> {
        self.run(netns, &self.restore, &["--noflush", LOCK_WAIT], Some(input))?;
        Ok(())
    }

    /// Runs `binary` in `netns`: the child is forked from a thread that entered the namespace,
    /// so it starts there.
    fn run(
        &self,
        netns: &NetNs,
        binary: &Path,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<Output, CaptureError> {
        let spawn_error = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CaptureError::MissingBinary {
                    binary: binary.display().to_string(),
                    searched: "not executable or does not exist".to_string(),
                }
            } else {
                CaptureError::Spawn {
                    binary: binary.to_path_buf(),
                    netns: netns.path().to_path_buf(),
                    source,
                }
            }
        };
        let output = netns.run(|| -> Result<Output, std::io::Error> {
            let mut child = Command::new(binary)
                .args(args)
                .stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let stdin = child.stdin.take();
            // Feed the input from a second thread so a child that writes a lot before reading
            // everything cannot deadlock against us.
            let written = std::thread::scope(|scope| {
                let writer = scope.spawn(move || -> std::io::Result<()> {
                    if let (Some(mut stdin), Some(input)) = (stdin, input) {
                        stdin.write_all(input.as_bytes())?;
                    }
                    Ok(())
                });
                let output = child.wait_with_output();
                let written = writer
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked")));
                output.map(|output| (output, written))
            })?;
            let (output, written) = written;
            // A failed write (EPIPE) only matters if the program also reported success.
            if output.status.success() {
                written?;
            }
            Ok(output)
        })?;
        let output = output.map_err(spawn_error)?;
        if !output.status.success() {
            return Err(CaptureError::Failed {
                binary: binary.to_path_buf(),
                netns: netns.path().to_path_buf(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(output)
    }
}

/// The first executable file called `name` in `dirs`.
fn find(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, CaptureError> {
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| {
            path.metadata()
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| CaptureError::MissingBinary {
            binary: name.to_string(),
            searched: format!(
                "searched {}",
                std::env::join_paths(dirs)
                    .map(|joined| joined.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| format!("{dirs:?}"))
            ),
        })
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

    #[test]
    fn missing_programs_are_reported_by_name_and_search_path() {
        let empty =
            std::env::temp_dir().join(format!("strait-capture-empty-{}", std::process::id()));
        let err = find(RESTORE, std::slice::from_ref(&empty)).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CaptureError::MissingBinary { .. }));
        assert!(message.contains("iptables-restore not found"), "{message}");
        assert!(message.contains(&empty.display().to_string()), "{message}");
        assert!(
            message.contains("install the iptables package"),
            "{message}"
        );
    }
}

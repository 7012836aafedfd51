//! Host side effects: `ip` commands, namespace names that encode their owner, cleanup of
//! leftovers, and the hosts files `ip netns exec` mounts.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use strait_netns::{NAMED_NETNS_DIR, NetNs};

use crate::TestbedError;

/// Prefix of every network namespace (and `/etc/netns` directory) the testbed makes.
pub const NETNS_PREFIX: &str = "stb-";
/// Where `ip netns exec NAME` finds files to bind over `/etc` (hosts, resolv.conf).
pub const ETC_NETNS_DIR: &str = "/etc/netns";

/// The start time of process `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`):
/// with the PID, it names one process for good, even after the PID is reused.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: count after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `stb-<pid>-<start>-...` → (pid, start).
pub(crate) fn parse_owner(name: &str) -> Option<(u32, u64)> {
    let mut parts = name.strip_prefix(NETNS_PREFIX)?.split('-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    Some((pid, start))
}

/// Whether the process that made `name` is gone (a crashed run's leftover).
pub(crate) fn is_stale(name: &str) -> bool {
    match parse_owner(name) {
        Some((pid, start)) => process_start_time(pid) != Some(start),
        // Our prefix but not our format: not ours to judge.
        None => false,
    }
}

fn entries(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes namespaces and `/etc/netns` directories left by testbeds whose process died.
/// Returns the names removed.
pub(crate) fn clean_stale() -> Vec<String> {
    let mut names: Vec<String> = entries(NAMED_NETNS_DIR);
    names.extend(entries(ETC_NETNS_DIR));
    names.sort();
    names.dedup();
    names.retain(|n| is_stale(n));
    for name in &names {
        if let Err(e) = delete_netns(name) {
            tracing::warn!("removing stale testbed namespace: {e}");
        }
    }
    names
}

/// The argument list as a shell would show it, for messages.
fn render(args: &[&str]) -> String {
    format!("ip {}", args.join(" "))
}

fn check_status(
    args: &[&str],
    output: std::io::Result<std::process::Output>,
) -> Result<(), TestbedError> {
    let output = output.map_err(|e| TestbedError::Command {
        command: render(args),
        message: e.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(TestbedError::Command {
            command: render(args),
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// Runs `ip ARGS` (with `stdin` fed to it, for `-batch -`).
pub(crate) async fn ip(args: &[&str], stdin: Option<&str>) -> Result<(), TestbedError> {
    let mut command = tokio::process::Command::new("ip");
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match stdin {
        None => command.stdin(Stdio::null()).output().await,
        Some(input) => {
            command.stdin(Stdio::piped());
            match command.spawn() {
                Ok(mut child) => {
                    if let Some(mut pipe) = child.stdin.take() {
                        use tokio::io::AsyncWriteExt as _;
                        let written = pipe.write_all(input.as_bytes()).await;
                        drop(pipe);
                        if let Err(e) = written {
                            let _ = child.kill().await;
                            return Err(TestbedError::Command {
                                command: render(args),
                                message: format!("writing commands: {e}"),
                            });
                        }
                    }
                    child.wait_with_output().await
                }
                Err(e) => Err(e),
            }
        }
    };
    check_status(args, output).map_err(|e| match (e, stdin) {
        (TestbedError::Command { command, message }, Some(input)) => TestbedError::Command {
            command: format!("{command} <<< {:?}", input.trim()),
            message,
        },
        (e, _) => e,
    })
}

/// `ip ARGS`, blocking: for teardown, which also runs from `Drop`.
fn ip_blocking(args: &[&str]) -> Result<(), TestbedError> {
    let output = std::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    check_status(args, output)
}

pub(crate) fn netns_exists(name: &str) -> bool {
    Path::new(NAMED_NETNS_DIR).join(name).exists()
}

pub(crate) fn etc_dir(name: &str) -> PathBuf {
    Path::new(ETC_NETNS_DIR).join(name)
}

/// Removes the named namespace and its `/etc/netns` directory; missing ones are fine.
/// Blocking (a few milliseconds) so it can run from `Drop`.
pub(crate) fn delete_netns(name: &str) -> Result<(), TestbedError> {
    let mut result = Ok(());
    if netns_exists(name) {
        result = ip_blocking(&["netns", "del", name]);
    }
    let dir = etc_dir(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            if result.is_ok() {
                result = Err(TestbedError::Io { path: dir, source });
            }
        }
    }
    result
}

/// Writes `/etc/netns/<name>/hosts` (atomically) and a `resolv.conf` that keeps lookups off
/// the real network: names come from the hosts file only.
pub(crate) fn write_etc(name: &str, hosts: &str) -> Result<(), TestbedError> {
    let dir = etc_dir(name);
    std::fs::create_dir_all(&dir).map_err(|source| TestbedError::Io {
        path: dir.clone(),
        source,
    })?;
    write_atomic(&dir.join("hosts"), hosts)?;
    let resolv = dir.join("resolv.conf");
    if !resolv.exists() {
        write_atomic(
            &resolv,
            "# Written by strait-testbed: no DNS server; names come from /etc/hosts.\n\
             nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )?;
    }
    Ok(())
}

fn write_atomic(path: &Path, text: &str) -> Result<(), TestbedError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| TestbedError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// New interfaces in `ns` get no IPv6 (link-local chatter would fill every capture); the
/// loopback, which already exists, keeps `::1`. Best effort: a kernel without IPv6 is fine.
pub(crate) fn disable_ipv6_for_new_links(ns: &NetNs) {
    let _ = ns.run(|| {
        // /proc/sys/net reflects the network namespace of the thread that opens it.
        std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")
    });
}

/// Turns IPv4 forwarding on in `ns`.
pub(crate) fn enable_forwarding(ns: &NetNs) -> Result<(), TestbedError> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    ns.run(|| std::fs::write(path, "1"))?
        .map_err(|source| TestbedError::Io {
            path: format!("{path} in {}", ns.path().display()).into(),
            source,
        })
}

/// Whether this machine can host a testbed: root, and `ip` (iproute2) on the PATH. The error
/// says what is missing, for tests to print when they skip.
pub fn check_host() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        return Err(format!(
            "network namespaces need root (effective uid {euid:?})"
        ));
    }
    match std::process::Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`ip -V` failed ({s}); install iproute2")),
        Err(e) => Err(format!("`ip` (iproute2) is not runnable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_a_live_or_dead_owner() {
        let pid = std::process::id();
        let start = process_start_time(pid).expect("own start time");
        let mine = format!("{NETNS_PREFIX}{pid}-{start}-0-node");
        assert_eq!(parse_owner(&mine), Some((pid, start)));
        assert!(!is_stale(&mine));
        // Same PID, other start time: a previous process that had our PID.
        assert!(is_stale(&format!(
            "{NETNS_PREFIX}{pid}-{}-0-node",
            start + 1
        )));
        // A PID that cannot exist (above pid_max's hard limit).
        assert!(is_stale(&format!("{NETNS_PREFIX}4294967295-1-0-p0")));
        assert!(!is_stale("stb-not-ours"));
        assert_eq!(parse_owner("other-1-2"), None);
    }
}

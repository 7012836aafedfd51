//! `strait-perf rss-peak`: the highest resident set of some processes while a load generator
//! runs.
//!
//! This runs on the load generator's core during the measured test, so it must not disturb it:
//! a shell loop that forks `pgrep`, `awk` and `sleep` every half second stalled that core for a
//! few milliseconds each time, which added about a millisecond to every contender's p99 and
//! decided which of two close p99s came out ahead. This reads `/proc` from one process and
//! sleeps in between.

use std::path::Path;
use std::time::Duration;

/// The highest summed `VmRSS` (KiB) of `roots` and all their descendants, sampled every
/// `interval` for as long as `while_pid` runs (a zombie counts as ended).
pub fn run(while_pid: u32, roots: &[u32], interval: Duration) -> u64 {
    let mut peak = 0;
    while is_running(while_pid) {
        peak = peak.max(roots.iter().map(|&pid| tree_rss_kib(pid)).sum());
        std::thread::sleep(interval);
    }
    peak
}

fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_state(&stat).is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/PID/stat` line: the first field after the parenthesised
/// command name, which may itself hold spaces and parentheses.
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `VmRSS` (KiB) of `pid` and its descendants; 0 for a process that has gone.
fn tree_rss_kib(pid: u32) -> u64 {
    let proc_dir = format!("/proc/{pid}");
    let own = std::fs::read_to_string(format!("{proc_dir}/status"))
        .ok()
        .and_then(|status| vm_rss_kib(&status))
        .unwrap_or(0);
    own + children(Path::new(&proc_dir))
        .into_iter()
        .map(tree_rss_kib)
        .sum::<u64>()
}

/// The children of every thread of a process (`/proc/PID/task/TID/children`).
fn children(proc_dir: &Path) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_ascii_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_from_a_status_file() {
        let status =
            "Name:\tnginx\nVmPeak:\t   20000 kB\nVmRSS:\t   17544 kB\nRssAnon:\t 9000 kB\n";
        assert_eq!(vm_rss_kib(status), Some(17544));
        assert_eq!(vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn reads_the_state_after_a_command_name_with_parentheses() {
        assert_eq!(stat_state("42 (a) b) (c) S 1 42 42"), Some('S'));
        assert_eq!(stat_state("42 (wrk) Z 1"), Some('Z'));
        assert_eq!(stat_state("garbage"), None);
    }

    #[test]
    fn sums_a_process_tree_and_stops_when_the_watched_process_ends() {
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & wait"])
            .spawn()
            .expect("spawn sh");
        let mut watched = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .expect("spawn sleep");
        // Give the shell time to start its child, so the tree has two processes.
        std::thread::sleep(Duration::from_millis(100));
        let own = tree_rss_kib(parent.id());
        let shell_alone = std::fs::read_to_string(format!("/proc/{}/status", parent.id()))
            .ok()
            .and_then(|status| vm_rss_kib(&status))
            .expect("the shell's VmRSS");
        assert!(
            own > shell_alone,
            "the tree ({own} KiB) must include the shell's child"
        );

        let started = std::time::Instant::now();
        // `watched` becomes a zombie when it exits (nothing reaps it until `wait` below),
        // which must end the sampling as an exit does.
        let peak = run(watched.id(), &[parent.id()], Duration::from_millis(20));
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(peak >= shell_alone, "peak {peak} KiB");
        watched.wait().expect("reap sleep");
        for child in children(Path::new(&format!("/proc/{}", parent.id()))) {
            let _ = std::process::Command::new("kill")
                .arg(child.to_string())
                .status();
        }
        parent.wait().expect("reap sh");
        assert_eq!(
            run(watched.id(), &[parent.id()], Duration::from_millis(20)),
            0
        );
    }
}

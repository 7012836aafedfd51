//! How many runtime workers a proxy runs: the `--workers` flag, `STRAIT_WORKERS`, and the
//! `workers` key of a provisioned proxy's parameters ConfigMap all parse through [`Workers`],
//! so the controller rejects exactly what the proxy would.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;

/// How many worker threads a long-running command's runtime gets.
///
/// A multi-thread runtime pays for its reach at light load: a worker that wakes two tasks at
/// once (two sockets ready in one poll, or a task waking another while a third waits) also
/// wakes an idle worker to take one, and a request then crosses threads through futex waits and
/// wake-ups. Through the mesh bench at 4 connections, on two CPUs shared with the load, a node
/// proxy and a waypoint on two workers each spent 39-73% more CPU per request on the waypoint
/// path than on one (3-20% on the HBONE path) and served 2-31% fewer requests per second; at 64
/// connections one worker each was as fast. One worker is also a ceiling of one CPU, which is
/// what `--workers` raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One per CPU the process may use: its affinity and its cgroup's CPU quota.
    PerCpu,
    /// Exactly this many; one is a current-thread runtime.
    Fixed(NonZeroUsize),
}

impl Workers {
    /// A single worker: a current-thread runtime.
    pub const ONE: Workers = Workers::Fixed(NonZeroUsize::MIN);
}

impl FromStr for Workers {
    type Err = String;

    /// `auto` (one per CPU) or a number of workers, 1 or more.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("auto") {
            return Ok(Workers::PerCpu);
        }
        text.parse::<NonZeroUsize>()
            .map(Workers::Fixed)
            .map_err(|_| format!("`{text}` is not a number of workers (1 or more) nor `auto`"))
    }
}

/// The form [`FromStr`] reads back, as `STRAIT_WORKERS` carries it to a provisioned proxy.
impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::PerCpu => f.write_str("auto"),
            Workers::Fixed(count) => write!(f, "{count}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_parse_as_auto_or_a_positive_count_and_print_back() {
        assert_eq!("auto".parse(), Ok(Workers::PerCpu));
        assert_eq!("AUTO".parse(), Ok(Workers::PerCpu));
        assert_eq!("1".parse(), Ok(Workers::ONE));
        for text in ["auto", "1", "3", "64"] {
            let workers: Workers = text.parse().expect(text);
            assert_eq!(workers.to_string(), text);
        }
        for bad in ["0", "-1", "two", "", "1.5"] {
            let error = bad.parse::<Workers>().expect_err(bad);
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }
}

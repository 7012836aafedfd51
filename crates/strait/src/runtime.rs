//! The tokio runtime every long-running command runs on.

use std::num::NonZeroUsize;
use std::str::FromStr;
use std::time::Duration;

use crate::allocator;

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

    /// The number of workers this setting gives on this machine.
    pub fn count(self) -> usize {
        match self {
            Workers::PerCpu => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            Workers::Fixed(workers) => workers.get(),
        }
    }
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

/// The runtime of a long-running command, with `workers` worker threads.
pub fn build(workers: Workers) -> std::io::Result<tokio::runtime::Runtime> {
    build_for(workers.count())
}

/// A runtime with `workers` worker threads: one is a current-thread runtime, which does less
/// per wake-up than a multi-thread runtime with one worker (through the gateway on one CPU,
/// h2c served 4% more requests per second at 4% less CPU per request). The price is that the
/// command's own future (config watching, signal handling) shares that thread with the data
/// plane.
///
/// Each runtime thread gives its free memory back before it parks, at most once per
/// [`allocator::COLLECT_INTERVAL`] (see [`allocator`] for why that is needed).
pub fn build_for(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = builder
        .enable_all()
        .on_thread_park(allocator::collect_if_due)
        .build()?;
    tracing::info!(workers, flavor = ?runtime.handle().runtime_flavor(), "runtime started");
    runtime.spawn(collect_forever());
    Ok(runtime)
}

/// Collects on whichever runtime thread runs it, once per [`allocator::COLLECT_INTERVAL`]:
/// the park hook alone would leave a thread that sleeps through a quiet spell holding what
/// the last burst freed. A millisecond over the interval, so that timer jitter does not find
/// the previous collection a hair too recent.
async fn collect_forever() {
    let mut tick = tokio::time::interval(allocator::COLLECT_INTERVAL + Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        allocator::collect_if_due();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_parse_as_auto_or_a_positive_count() {
        assert_eq!("auto".parse(), Ok(Workers::PerCpu));
        assert_eq!("AUTO".parse(), Ok(Workers::PerCpu));
        assert_eq!("1".parse(), Ok(Workers::ONE));
        assert_eq!("3".parse::<Workers>().map(Workers::count), Ok(3));
        for bad in ["0", "-1", "two", ""] {
            let error = bad.parse::<Workers>().expect_err(bad);
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn one_worker_is_a_current_thread_runtime_and_more_are_as_many_multi_thread_workers() {
        use tokio::runtime::RuntimeFlavor;
        let one = build(Workers::ONE).expect("a runtime");
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        // One more than the CPUs, so that Tokio's own default (a worker per CPU) cannot pass.
        let wanted = Workers::PerCpu.count() + 1;
        let more = build(Workers::Fixed(
            NonZeroUsize::new(wanted).expect("a count over 0"),
        ))
        .expect("a runtime");
        assert_eq!(more.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(more.metrics().num_workers(), wanted);
    }
}

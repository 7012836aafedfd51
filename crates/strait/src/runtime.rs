//! The tokio runtime every long-running command runs on.

use std::time::Duration;

use crate::allocator;

/// A runtime sized to the CPUs this process may use (its affinity and its cgroup's CPU quota):
/// one worker per CPU, or, on one CPU, a current-thread runtime. With a single worker there is
/// nobody to share tasks with, and the current-thread scheduler does less per wake-up: through
/// the gateway, h2c served 4% more requests per second at 4% less CPU per request than on a
/// multi-thread runtime with one worker. The price is that the command's own future (config
/// watching, signal handling) shares that thread with the data plane, as it would share the
/// one CPU anyway.
///
/// Each runtime thread gives its free memory back before it parks, at most once per
/// [`allocator::COLLECT_INTERVAL`] (see [`allocator`] for why that is needed).
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    build_for(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// The runtime [`build`] makes for a process that may use `cpus` CPUs.
pub fn build_for(cpus: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if cpus <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .on_thread_park(allocator::collect_if_due)
        .build()?;
    tracing::info!(cpus, flavor = ?runtime.handle().runtime_flavor(), "runtime started");
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

//! The tokio runtime every long-running command runs on.

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::allocator;

pub use strait_config::Workers;

/// The number of workers `workers` gives on this machine.
fn worker_count(workers: Workers) -> usize {
    match workers {
        Workers::PerCpu => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        Workers::Fixed(workers) => workers.get(),
    }
}

/// The controller's runtime, with `workers` worker threads: Tokio's multi-thread runtime (a
/// current-thread one for one worker, see [`build_for`]), whose work stealing suits the
/// controller's many short tasks (watches, compiles, signing, config streams) better than
/// handing each a thread for good.
pub fn build(workers: Workers) -> std::io::Result<tokio::runtime::Runtime> {
    build_for(worker_count(workers))
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
    let runtime = if workers <= 1 {
        current_thread()?
    } else {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .on_thread_park(allocator::collect_if_due)
            .build()?;
        runtime.spawn(collect_forever());
        runtime
    };
    tracing::info!(workers, flavor = ?runtime.handle().runtime_flavor(), "runtime started");
    Ok(runtime)
}

/// A proxy's runtime: `workers` shared-nothing workers ([`strait_proxy::workers`]), each a
/// current-thread runtime on a thread of its own, among which accepted connections are spread.
/// The returned runtime is worker 0, on the calling thread, which also runs the command's own
/// future; the others run until the process exits.
pub fn build_proxy(workers: Workers) -> std::io::Result<tokio::runtime::Runtime> {
    let count = worker_count(workers);
    let main = current_thread()?;
    if count > 1 {
        let others = (1..count)
            .map(|_| current_thread())
            .collect::<std::io::Result<Vec<_>>>()?;
        let handles = std::iter::once(&main)
            .chain(&others)
            .map(|runtime| runtime.handle().clone());
        strait_proxy::workers::install(strait_proxy::workers::Workers::new(handles))
            .map_err(|_| std::io::Error::other("the proxy's workers were already started"))?;
        strait_proxy::workers::enter(0);
        for (index, runtime) in (1..).zip(others) {
            std::thread::Builder::new()
                .name(format!("strait-worker-{index}"))
                .spawn(move || {
                    strait_proxy::workers::enter(index);
                    runtime.block_on(std::future::pending::<()>());
                })?;
        }
    }
    tracing::info!(
        workers = count,
        "proxy runtime started, a current-thread runtime per worker"
    );
    Ok(main)
}

/// A current-thread runtime that collects its free memory (see [`build_for`]).
fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(allocator::collect_if_due)
        .build()?;
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
    fn a_fixed_count_is_that_many_workers() {
        assert_eq!(worker_count("3".parse().expect("a count")), 3);
        assert_eq!(worker_count(Workers::ONE), 1);
    }

    #[test]
    fn one_worker_is_a_current_thread_runtime_and_more_are_as_many_multi_thread_workers() {
        use tokio::runtime::RuntimeFlavor;
        let one = build(Workers::ONE).expect("a runtime");
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        // One more than the CPUs, so that Tokio's own default (a worker per CPU) cannot pass.
        let wanted = worker_count(Workers::PerCpu) + 1;
        let more = build(Workers::Fixed(
            NonZeroUsize::new(wanted).expect("a count over 0"),
        ))
        .expect("a runtime");
        assert_eq!(more.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(more.metrics().num_workers(), wanted);
    }
}

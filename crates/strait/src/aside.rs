//! Config work run beside the data plane.
//!
//! Loading a large config and building its routing tables takes tens of milliseconds (at
//! 10,000 routes, a standalone reload's compile takes over 100). A proxy with one CPU runs a
//! current-thread runtime, where that work on the runtime's thread would stall every
//! connection the proxy serves. On a blocking-pool thread of its own, the kernel shares the CPU
//! between it and the data plane instead.

use std::future::Future;

/// Runs the future `work` builds on a blocking-pool thread and returns its output, or an error
/// naming `what` when it panicked. What the future awaits (binding listeners, fetching
/// certificates, timers) is still driven by the runtime: `Handle::block_on` on a current-thread
/// runtime relies on the thread inside `Runtime::block_on` (the binary's `main`, or a test's)
/// to drive its I/O and timers, and that thread is free while this one works. Afterwards the
/// thread returns the memory the work freed ([`crate::allocator::collect`]).
pub(crate) async fn run_aside<F, W>(what: &str, work: W) -> Result<F::Output, String>
where
    W: FnOnce() -> F + Send + 'static,
    F: Future,
    F::Output: Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let output = runtime.block_on(work());
        // What the work freed (a replaced config's tables, the compile's scratch) sits in
        // this thread's heap, which no runtime thread collects: give it back before the
        // thread waits, possibly for a long while, for its next job.
        crate::allocator::collect();
        output
    })
    .await
    .map_err(|error| format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// On a current-thread runtime, slow work goes on while the runtime's tasks do, and what it
    /// awaits (timers, sockets) still works.
    #[tokio::test]
    async fn slow_work_does_not_stall_the_runtime() {
        slow_work_goes_aside().await;
    }

    /// The same on the multi-thread runtime, where the work must not block a worker either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn slow_work_does_not_stall_a_multi_thread_runtime() {
        slow_work_goes_aside().await;
    }

    async fn slow_work_goes_aside() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = ticks.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let runtime_thread = std::thread::current().id();
        let seen = ticks.clone();
        let outcome = run_aside("slow work", move || async move {
            let before = seen.load(Ordering::Relaxed);
            // Building large routing tables: the thread is busy, not awaiting.
            std::thread::sleep(Duration::from_millis(200));
            let during = seen.load(Ordering::Relaxed) - before;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            (std::thread::current().id(), during, listener.is_ok())
        })
        .await;
        ticker.abort();
        let (thread, during, bound) = outcome.unwrap();
        assert_ne!(thread, runtime_thread);
        assert!(during >= 10, "only {during} ticks while the work ran");
        assert!(bound, "the work's awaits are driven");
    }

    #[tokio::test]
    async fn a_panic_is_an_error_naming_the_work() {
        let outcome: Result<(), String> = run_aside("config version 7", || async {
            panic!("bug");
        })
        .await;
        let error = outcome.unwrap_err();
        assert!(error.starts_with("config version 7: "), "{error}");
    }
}

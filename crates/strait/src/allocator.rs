//! The allocator under every Strait process, and when it gives freed memory back.
//!
//! Every process that links this crate (the binary, its tests and benches) runs on mimalloc
//! (v2, linked in through the `mimalloc` crate), not glibc's malloc, for the shape of a
//! proxy's heap:
//! - **Size-segregated pages.** An idle keep-alive connection keeps its task (about 1 KiB) and
//!   frees its request state (about 2 KiB) once the response is sent. glibc carved both from
//!   one heap, so a burst of connections that went idle left the freed states as 2 KiB holes
//!   between live tasks: no whole page to return, 17 MB of the gateway's 41 MB while it held
//!   10,000 idle connections. mimalloc takes each size class from pages of its own; once the
//!   requests are done, their pages are wholly free and go back to the kernel.
//! - **Large buffers reused, not trimmed.** HBONE reads each 256 KiB HTTP/2 frame into a buffer
//!   of its own. glibc returned the heap's top whenever a few were freed and faulted it back
//!   in for the next frames, unless its trim threshold was raised and its heap scavenged by
//!   hand. mimalloc keeps a freed span for reuse and returns it only once it has stayed free
//!   for 10 ms (`purge_delay`).
//!
//! v2 rather than the crate's default v3: in one benchmark run each, before the collection
//! below was added, the gateway held 46.9 MB with 10,000 idle connections on v3 and 30.8 MB
//! on v2. Transparent huge pages are off (the `no_thp` feature): mimalloc would otherwise ask
//! for them on its arenas, and an idle gateway held 8 MB of huge pages for 1 MB of heap.
//!
//! mimalloc returns an expired span only when the thread that owns it next calls the
//! allocator: a proxy that goes quiet after a burst would keep the burst's memory for as long
//! as it stays quiet. [`collect_if_due`] has the calling thread's heap give back what it no
//! longer uses; [`crate::runtime`] calls it on each runtime thread before the thread parks,
//! and from a task that runs once per [`COLLECT_INTERVAL`], so that an idle process collects
//! too. A thread collects at most once per interval.

use std::cell::Cell;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often a thread may collect its heap: each collection walks the thread's pages and
/// returns every free span at once, including spans a busy thread would take again.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(1);

thread_local! {
    /// When this thread last collected its heap; `None` before its first collection.
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Returns the calling thread's free memory to the kernel, unless this thread already did so
/// within [`COLLECT_INTERVAL`]. Cheap when not due (a clock read), so it can run each time a
/// runtime thread parks.
pub fn collect_if_due() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| {
        let due = last
            .get()
            .is_none_or(|at| now.duration_since(at) >= COLLECT_INTERVAL);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
}

/// Frees the calling thread's empty pages and returns every free span of its heap (and of the
/// shared arenas) to the kernel now, whether or not its purge delay has passed.
pub fn collect() {
    // Reading the commit charge costs a `getrusage`: only when the log line will be written.
    let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| (committed(), Instant::now()));
    // SAFETY: mi_collect only frees pages the heap no longer uses; it may run at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
    if let Some((before, started)) = logged {
        let returned = before.saturating_sub(committed());
        if returned > 0 {
            let took = started.elapsed();
            tracing::debug!(returned, ?took, "returned free memory to the kernel");
        }
    }
}

/// Bytes mimalloc holds from the kernel, for the log line above.
fn committed() -> usize {
    let mut commit = 0usize;
    let mut ignored = 0usize;
    // SAFETY: mi_process_info writes each statistic through the pointer it is given; every
    // pointer is to a live local.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &raw mut ignored,
            &raw mut ignored,
            &raw mut ignored,
            &raw mut ignored,
            &raw mut ignored,
            &raw mut commit,
            &raw mut ignored,
            &raw mut ignored,
        );
    }
    commit
}

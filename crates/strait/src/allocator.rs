//! glibc malloc settings for a proxy's buffer churn.
//!
//! HBONE moves bulk data in 256 KiB HTTP/2 frames, and `h2` reads each frame into a buffer of
//! its own, freed once the frame is relayed. Under glibc's defaults the heap's top is returned
//! to the kernel whenever more than 128 KiB of it is free (a threshold glibc raises only after
//! freeing an `mmap`ped block), so nearly every frame grew the heap with `brk`, had its pages
//! faulted in and zeroed, and shrank it again: a node proxy relaying one HBONE stream made 250
//! `brk` calls and 10,000 page faults a second. Keeping up to [`TRIM_THRESHOLD`] free at the top
//! ends that churn (0 of either under the same load) for a bounded cost: that much heap stays
//! resident per malloc arena after a burst.
//!
//! Setting the trim threshold switches off glibc's adaptive `mmap` threshold, so that one is set
//! too, above the proxies' largest regular buffers: below it, blocks come from the heap and are
//! reused rather than mapped and unmapped one by one.
//!
//! The size of glibc's per-thread cache has no `mallopt` parameter: glibc reads it from
//! `GLIBC_TUNABLES` at start only, so the image sets it (see the `Dockerfile` and
//! docs/architecture.md).
//!
//! The trim threshold only governs the heap's top. Memory freed below a block still in use
//! stays resident, and glibc never returns it by itself: after 10,000 keep-alive connections to
//! the gateway closed, its heap held 3 MB in use and 38 MB resident, for good. [`scavenge_forever`]
//! checks each [`SCAVENGE_INTERVAL`] how much resident memory the heap holds unused, and when
//! that has grown by more than [`SCAVENGE_ABOVE`] has glibc give back the whole pages of its
//! free blocks (`malloc_trim`), as Go's and tcmalloc's scavengers do: the same gateway went
//! from 34 to 11 MB of anonymous memory within a second of those connections closing. Free
//! blocks smaller than a page stay: while the 10,000 connections were open and idle, 17 MB of
//! the heap was free in the ~2 KiB holes their request states left between their tasks, and a
//! trim returned 1.3 MB of it.

use std::time::Duration;

/// Free bytes the top of a heap may keep before glibc returns them to the kernel.
pub const TRIM_THRESHOLD: usize = 2 * 1024 * 1024;
/// Blocks this large or larger get their own mapping; smaller ones come from the heap.
pub const MMAP_THRESHOLD: usize = 1024 * 1024;

/// Applies the settings above, unless `GLIBC_TUNABLES` already sets malloc's thresholds (an
/// operator's choice wins). They apply to every thread; call it early, as blocks allocated
/// before it were placed under glibc's defaults.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let operator_set = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| {
            t.contains("malloc.trim_threshold") || t.contains("malloc.mmap_threshold")
        });
        if operator_set {
            return;
        }
        for (parameter, value) in [
            (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ] {
            let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only sets allocator parameters; it is safe to call at any time.
            if unsafe { libc::mallopt(parameter, value) } != 1 {
                tracing::warn!(parameter, value, "glibc rejected a malloc setting");
            }
        }
    }
}

/// How often [`scavenge_forever`] looks at the heap: a reading costs an `open`, a `read` and
/// a walk of malloc's free lists.
pub const SCAVENGE_INTERVAL: Duration = Duration::from_secs(1);
/// Free heap that stays resident without being given back. Well above what the data path
/// frees and takes again from one moment to the next (HBONE's frames, under
/// [`TRIM_THRESHOLD`]), so a proxy under steady load is not made to fault its pages in anew.
pub const SCAVENGE_ABOVE: usize = 8 * 1024 * 1024;

/// Gives free heap back to the kernel each [`SCAVENGE_INTERVAL`], for the life of the process
/// (or at once returns where there is no glibc malloc to read).
///
/// The trim itself runs on a blocking-pool thread: on a fragmented heap it takes milliseconds
/// (4-5 ms returning 24 MB after 10,000 connections closed), which a proxy on a single-thread
/// runtime would otherwise stall for.
pub async fn scavenge_forever() {
    let mut scavenger = Scavenger::default();
    let mut tick = tokio::time::interval(SCAVENGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(before) = HeapReading::now() else {
            return;
        };
        if !scavenger.should_trim(before.unused()) {
            continue;
        }
        let started = std::time::Instant::now();
        if tokio::task::spawn_blocking(release_free_heap)
            .await
            .is_err()
        {
            continue;
        }
        if let Some(released) = scavenger.after_trim(&before) {
            let took = started.elapsed();
            tracing::debug!(released, ?took, "returned free heap to the kernel");
        }
    }
}

/// Decides when trimming is worth its cost. Trimming cannot release a free block smaller than
/// a page, and what it releases still counts as free to malloc, so "free heap above a bound"
/// alone would trim in vain each time once fragments add up to the bound. The scavenger
/// remembers what was left after its last trim and waits for [`SCAVENGE_ABOVE`] more.
#[derive(Debug, Default)]
pub struct Scavenger {
    /// Unused resident heap just after the last trim: what trimming could not release.
    floor: usize,
}

impl Scavenger {
    /// Whether to trim, given the resident heap malloc holds unused; lowers the floor when
    /// that shrank (the fragments were taken again).
    fn should_trim(&mut self, unused: usize) -> bool {
        self.floor = self.floor.min(unused);
        unused > self.floor.saturating_add(SCAVENGE_ABOVE)
    }

    /// Records the unused resident heap left after a trim.
    fn trimmed(&mut self, unused_after: usize) {
        self.floor = unused_after;
    }

    /// Reads the heap and trims it if the [`Scavenger`]'s rule says so, on this thread; the bytes
    /// that became non-resident, or `None` when nothing was done (or this platform has no glibc).
    pub fn run_once(&mut self) -> Option<usize> {
        let before = HeapReading::now()?;
        if !self.should_trim(before.unused()) {
            return None;
        }
        release_free_heap();
        self.after_trim(&before)
    }

    /// Reads the heap again after a trim, records what it left, and returns what it released.
    fn after_trim(&mut self, before: &HeapReading) -> Option<usize> {
        let after = HeapReading::now()?;
        self.trimmed(after.unused());
        Some(before.resident.saturating_sub(after.resident))
    }
}

/// Anonymous resident memory against what malloc has handed out.
#[derive(Debug, Clone, Copy)]
pub struct HeapReading {
    /// Anonymous resident bytes of the process: the heap, plus thread stacks and the like.
    pub resident: usize,
    /// Bytes malloc has handed out and not had back (heap and mapped blocks).
    pub in_use: usize,
}

impl HeapReading {
    /// `None` where there is no glibc malloc or no `/proc`.
    pub fn now() -> Option<HeapReading> {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let resident = anonymous_resident()?;
            // SAFETY: mallinfo2 only reads the allocator's statistics.
            let info = unsafe { libc::mallinfo2() };
            Some(HeapReading {
                resident,
                in_use: info.uordblks.saturating_add(info.hblkhd),
            })
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        None
    }

    /// Resident memory malloc does not use: free heap, plus a fixed few hundred KiB of stacks.
    pub fn unused(&self) -> usize {
        self.resident.saturating_sub(self.in_use)
    }
}

/// Has glibc return every whole page of its free blocks, keeping [`TRIM_THRESHOLD`] at the top.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases pages of blocks that are free.
    unsafe {
        libc::malloc_trim(TRIM_THRESHOLD);
    }
}

/// Resident minus file-backed and shared pages, from `/proc/self/statm`, read into a stack
/// buffer so a reading allocates nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn anonymous_resident() -> Option<usize> {
    use std::io::Read;
    let mut buf = [0u8; 128];
    let n = std::fs::File::open("/proc/self/statm")
        .ok()?
        .read(&mut buf)
        .ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut fields = text.split_ascii_whitespace().skip(1);
    let resident: usize = fields.next()?.parse().ok()?;
    let shared: usize = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(resident.saturating_sub(shared).saturating_mul(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn trims_once_unused_heap_grows_past_the_bound() {
        let mut scavenger = Scavenger::default();
        assert!(!scavenger.should_trim(2 * MIB));
        assert!(!scavenger.should_trim(SCAVENGE_ABOVE));
        assert!(scavenger.should_trim(SCAVENGE_ABOVE + MIB));
    }

    #[test]
    fn fragments_a_trim_left_behind_do_not_trigger_it_again() {
        let mut scavenger = Scavenger::default();
        assert!(scavenger.should_trim(20 * MIB));
        // Trimming released only part: 12 MiB of sub-page fragments stay.
        scavenger.trimmed(12 * MIB);
        assert!(!scavenger.should_trim(12 * MIB));
        assert!(!scavenger.should_trim(12 * MIB + SCAVENGE_ABOVE));
        assert!(scavenger.should_trim(13 * MIB + SCAVENGE_ABOVE));
    }

    #[test]
    fn the_floor_follows_fragments_that_were_taken_again() {
        let mut scavenger = Scavenger::default();
        scavenger.trimmed(12 * MIB);
        // The fragments were reused: the next 8 MiB freed counts from the lower floor.
        assert!(!scavenger.should_trim(MIB));
        assert!(scavenger.should_trim(MIB + SCAVENGE_ABOVE + 1));
    }
}

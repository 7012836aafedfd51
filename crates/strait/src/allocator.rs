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

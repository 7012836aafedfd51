//! The malloc settings take effect: buffers of HBONE's frame size, a few in flight at a time,
//! are reused from the heap instead of being mapped, or faulted in anew after each burst. Its
//! own test binary, so no other test allocates meanwhile.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use strait::allocator::{MMAP_THRESHOLD, TRIM_THRESHOLD, tune};

const FRAME_BUFFER: usize = 256 * 1024;
const IN_FLIGHT: usize = 4;
const BURSTS: usize = 50;

fn thread_page_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    usage.ru_minflt + usage.ru_majflt
}

fn burst() {
    let buffers: Vec<Vec<u8>> = (0..IN_FLIGHT)
        .map(|_| std::hint::black_box(vec![1u8; FRAME_BUFFER]))
        .collect();
    drop(std::hint::black_box(buffers));
}

#[test]
fn bursts_of_frame_sized_buffers_reuse_the_heap() {
    tune();
    // The first burst may grow the heap; later ones must find it there.
    burst();
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let mapped_before = unsafe { libc::mallinfo2() }.hblkhd;
    let faults_before = thread_page_faults();
    for _ in 0..BURSTS {
        burst();
    }
    let faults = thread_page_faults() - faults_before;
    let mapped_after = unsafe { libc::mallinfo2() }.hblkhd;
    assert_eq!(
        mapped_before, mapped_after,
        "{FRAME_BUFFER}-byte buffers were mapped one by one (mmap threshold {MMAP_THRESHOLD})"
    );
    // Faulting each burst's megabyte in anew would be 256 faults a burst.
    let pages_per_burst = (IN_FLIGHT * FRAME_BUFFER / 4096) as i64;
    assert!(
        faults < pages_per_burst,
        "{faults} page faults in {BURSTS} bursts of {IN_FLIGHT} x {FRAME_BUFFER} bytes: the heap \
         was returned and regrown (trim threshold {TRIM_THRESHOLD})"
    );
}

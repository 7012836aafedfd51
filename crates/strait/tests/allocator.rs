//! What the allocator does with freed memory: reuses frame-sized buffers without faulting
//! them in anew, and gives a burst's memory back to the kernel once it is free. Its own test
//! binary, so no other test allocates meanwhile.
#![cfg(target_os = "linux")]

use std::time::Duration;

use strait::allocator;

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

fn frame_burst() {
    let buffers: Vec<Vec<u8>> = (0..IN_FLIGHT)
        .map(|_| std::hint::black_box(vec![1u8; FRAME_BUFFER]))
        .collect();
    drop(std::hint::black_box(buffers));
}

#[test]
fn bursts_of_frame_sized_buffers_reuse_memory() {
    // The first burst may take memory from the kernel; later ones must find it there.
    frame_burst();
    let faults_before = thread_page_faults();
    for _ in 0..BURSTS {
        frame_burst();
    }
    let faults = thread_page_faults() - faults_before;
    // Faulting each burst's megabyte in anew would be 256 faults a burst. A tenth of that
    // leaves room for a purge while this thread was descheduled for longer than the delay.
    let pages_per_burst = (IN_FLIGHT * FRAME_BUFFER / 4096) as i64;
    assert!(
        faults < BURSTS as i64 * pages_per_burst / 10,
        "{faults} page faults in {BURSTS} bursts of {IN_FLIGHT} x {FRAME_BUFFER} bytes: freed \
         buffers went back to the kernel between bursts"
    );
}

/// Per connection: a request state, freed when the connection goes idle.
const STATE: usize = 32 * 1024;
/// ...and the small task that outlives it, allocated right after.
const TASK: usize = 64;
const CONNECTIONS: usize = 2048;
const FREED: usize = STATE * CONNECTIONS;
/// What must go back: three quarters of the 64 MiB freed.
const RETURNED_AT_LEAST: usize = FREED / 4 * 3;

/// Anonymous resident bytes of this process.
fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("an RssAnon line");
    kib * 1024
}

/// A burst of connections that then go idle: their states freed, their tasks kept. Returns
/// the tasks, and the resident memory right after the states were freed.
fn connections_go_idle() -> (Vec<Vec<u8>>, usize) {
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    let mut states = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        states.push(std::hint::black_box(vec![i as u8; STATE]));
        tasks.push(std::hint::black_box(vec![i as u8; TASK]));
    }
    drop(std::hint::black_box(states));
    (tasks, resident())
}

fn assert_returned(what: &str, freed_at: usize, now: usize, tasks: &[Vec<u8>]) {
    let returned = freed_at.saturating_sub(now);
    assert!(
        returned >= RETURNED_AT_LEAST,
        "{what}: {returned} of the {FREED} freed bytes went back to the kernel"
    );
    for (i, task) in tasks.iter().enumerate() {
        assert!(
            task.iter().all(|&b| b == i as u8),
            "task {i} was overwritten"
        );
    }
}

/// One test, as both halves read the process's resident memory.
#[test]
fn a_burst_of_freed_memory_goes_back_to_the_kernel() {
    let baseline = resident();

    // Collecting by hand: the allocator itself keeps the freed pages...
    let (tasks, freed_at) = connections_go_idle();
    assert!(
        freed_at >= baseline + RETURNED_AT_LEAST,
        "the freed states should still be resident: {freed_at} bytes, {baseline} before"
    );
    // ...until the thread collects.
    allocator::collect();
    assert_returned("collect", freed_at, resident(), &tasks);
    drop(tasks);

    // A current-thread runtime (as on one CPU) that goes quiet after the burst gives it back
    // by itself, within two collect intervals. Read from another thread while the runtime's
    // sleeps: a thread collects when it wakes up, so a reading taken after this one woke would
    // not show that the quiet runtime did.
    let runtime = strait::runtime::build_for(1).expect("a runtime");
    runtime.block_on(async {
        // Past the runtime's first collection, which happens as it starts.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (tasks, freed_at) = connections_go_idle();
        let within = 2 * allocator::COLLECT_INTERVAL + Duration::from_millis(100);
        let reader = std::thread::spawn(move || {
            std::thread::sleep(within);
            resident()
        });
        tokio::time::sleep(within + Duration::from_millis(400)).await;
        let now = reader.join().expect("the reading thread");
        assert_returned("an idle runtime", freed_at, now, &tasks);
    });
}

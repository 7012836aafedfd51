//! Free heap scattered between blocks still in use is given back to the kernel: the state of
//! connections that went idle, freed between the tasks of those still open. Its own test
//! binary, so no other test allocates or trims meanwhile.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use strait::allocator::{HeapReading, SCAVENGE_ABOVE, Scavenger};

/// Large enough that each freed block holds whole pages, small enough to come from the heap.
const STATE: usize = 32 * 1024;
const CONNECTIONS: usize = 2048;

#[test]
fn scattered_free_heap_is_returned() {
    // A busy period: each connection's state, with the small task that outlives it allocated
    // right after, so no two freed states are adjacent.
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    let mut states = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        states.push(std::hint::black_box(vec![i as u8; STATE]));
        tasks.push(std::hint::black_box(vec![i as u8; 64]));
    }
    // Every connection goes idle: 64 MiB free, none of it at the heap's top.
    drop(std::hint::black_box(states));
    let before = HeapReading::now().expect("a reading on Linux with glibc");
    assert!(
        before.unused() > SCAVENGE_ABOVE,
        "the freed states should be resident and unused: {before:?}"
    );

    let mut scavenger = Scavenger::default();
    let released = scavenger
        .run_once()
        .expect("more than the bound was unused");
    let after = HeapReading::now().expect("a reading");
    // Each 32 KiB block holds at least seven whole pages, 7/8 of it; asked for is 3/4 of the
    // 64 MiB, as the rest of the process may touch pages of its own meanwhile.
    let freed = CONNECTIONS * STATE;
    assert!(
        released >= freed / 4 * 3,
        "released {released} of {freed} freed bytes ({before:?} -> {after:?})"
    );
    // What could be released was: a second pass right away finds nothing to do.
    assert_eq!(scavenger.run_once(), None);
    // The blocks still in use are untouched.
    assert!(
        tasks
            .iter()
            .enumerate()
            .all(|(i, t)| t.iter().all(|&b| b == i as u8))
    );
}

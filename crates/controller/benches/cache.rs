//! Memory the controller's caches hold per object, before and after pruning
//! (`strait_controller::prune`), for a Deployment's Pod as a kube-apiserver lists it and an
//! HTTPRoute applied with client-side `kubectl apply`.
//!
//! `cargo bench -p strait-controller --bench cache`. Heap bytes are counted by a wrapping
//! allocator, so the figures are exact for this build, not sampled.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Pod;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use strait_model::types::HttpRoute;

/// Counts the bytes live on the heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const OBJECTS: usize = 10_000;

/// Builds `OBJECTS` distinct copies of `fixture` (`vary` makes them so), then prunes them,
/// and prints the bytes each holds in both states: its heap bytes plus its own `size_of`.
fn report<K: DeserializeOwned>(
    what: &str,
    fixture: &str,
    prune: fn(&mut K),
    vary: impl Fn(&mut Value, usize),
) {
    let template: Value = serde_json::from_str(fixture).expect("fixture");
    let mut objects: Vec<K> = Vec::with_capacity(OBJECTS);
    let baseline = LIVE.load(Ordering::Relaxed);
    for i in 0..OBJECTS {
        let mut value = template.clone();
        vary(&mut value, i);
        objects.push(serde_json::from_value(value).expect("fixture object"));
    }
    let per_object = || (LIVE.load(Ordering::Relaxed) - baseline) / OBJECTS + size_of::<K>();
    let full = per_object();
    for object in &mut objects {
        prune(object);
    }
    let kept = per_object();
    let megabytes = |bytes: usize| (bytes * OBJECTS) as f64 / 1e6;
    println!(
        "{what}: {full} bytes each as listed, {kept} pruned ({:.1}x less; {OBJECTS} of them: \
         {:.1} MB -> {:.1} MB)",
        full as f64 / kept as f64,
        megabytes(full),
        megabytes(kept),
    );
}

fn main() {
    report::<Pod>(
        "Pod of a Deployment",
        include_str!("../testdata/pod.json"),
        strait_controller::prune::pod,
        |pod, i| {
            pod["metadata"]["name"] = json!(format!("cart-7c9f8d6b54-{i:05}"));
            let ip = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            pod["status"]["podIP"] = json!(ip);
            pod["status"]["podIPs"] = json!([{ "ip": ip }]);
        },
    );
    report::<HttpRoute>(
        "HTTPRoute applied with kubectl apply",
        include_str!("../testdata/httproute.json"),
        strait_controller::prune::metadata,
        |route, i| route["metadata"]["name"] = json!(format!("cart-{i:05}")),
    );
}

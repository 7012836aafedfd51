//! Shared-nothing workers: one current-thread runtime per thread, each connection served
//! from start to end by the worker it was handed to.
//!
//! Tokio's multi-thread runtime moves tasks between threads: a request whose tasks wake each
//! other (an HBONE connection and its tunnels, HTTP/2 inside a tunnel) crosses threads through
//! futex wake-ups and context switches, and idle workers are woken to steal work that was about
//! to run anyway. Through the mesh's waypoint path at 4 connections, two multi-thread workers
//! per proxy cost 80-107 µs of CPU per request; two shared-nothing workers 65-76 (one: 60).
//! Envoy, nginx and HAProxy split the work the same way: a connection belongs to one thread.
//!
//! The listeners stay where they are (accepting, rebinding and stopping stay one task each);
//! the accept loop they all share ([`crate::accept`]) hands each accepted socket, not yet
//! registered with any reactor, to [`spawn_connection`], which registers it with the worker
//! serving the fewest connections.
//! Per-endpoint connection state is kept per worker ([`PerWorker`]), so a request never drives
//! an upstream connection registered with another thread's reactor.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// The workers of this process; unset means one worker, the runtime the caller runs on.
static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// The index of the worker this thread runs; 0 on threads that run none.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// Makes `workers` the process's workers. Called once, before anything is served: a second
/// call is refused (connections and pools already sized by the first would be split anew).
pub fn install(workers: Workers) -> Result<(), Workers> {
    WORKERS.set(workers)
}

/// How many workers serve connections (1 until [`install`]ed).
pub fn count() -> usize {
    WORKERS.get().map_or(1, |workers| workers.workers.len())
}

/// The index of the worker the calling thread runs, below [`count`].
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// Marks the calling thread as running worker `index`. The runtime builder calls it on each
/// worker's thread.
pub fn enter(index: usize) {
    CURRENT.with(|current| current.set(index));
}

/// Serves `stream` with `serve` on the installed worker with the fewest connections, or on
/// the calling runtime when none are installed. The socket is registered with that worker's
/// reactor only, so it must not be registered with any yet (see [`crate::accept`]).
pub(crate) fn spawn_connection<F, Fut>(stream: std::net::TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match WORKERS.get() {
        Some(workers) => workers.spawn_connection(stream, serve),
        None => {
            tokio::spawn(register_and_serve(stream, serve, None, current()));
        }
    }
}

/// Registers an accepted socket with the reactor of the worker this runs on, then serves it,
/// counted in `open` (if any) until it ends. A failed registration (the reactor out of memory
/// or gone) loses that connection only.
async fn register_and_serve<F, Fut>(
    stream: std::net::TcpStream,
    serve: F,
    open: Option<Open>,
    worker: usize,
) where
    F: FnOnce(TcpStream) -> Fut,
    Fut: Future<Output = ()>,
{
    let _open = open;
    match TcpStream::from_std(stream) {
        Ok(stream) => serve(stream).await,
        Err(e) => tracing::warn!(worker, error = %e, "connection not registered"),
    }
}

struct Worker {
    handle: Handle,
    connections: Arc<AtomicUsize>,
}

/// The runtimes connections are spread over, by handle; index `i` is the runtime whose thread
/// called [`enter`]`(i)`.
pub struct Workers {
    workers: Box<[Worker]>,
}

impl Workers {
    /// `handles[i]` must be the runtime of the thread that runs worker `i`.
    pub fn new(handles: impl IntoIterator<Item = Handle>) -> Workers {
        let workers = handles
            .into_iter()
            .map(|handle| Worker {
                handle,
                connections: Arc::default(),
            })
            .collect();
        Workers { workers }
    }

    /// The worker a new connection goes to: the fewest open connections, the calling worker
    /// on a tie (no hand-over needed).
    fn choose(&self) -> usize {
        let here = current().min(self.workers.len().saturating_sub(1));
        let load = |index: usize| self.workers[index].connections.load(Ordering::Relaxed);
        let mut best = here;
        for index in 0..self.workers.len() {
            if load(index) < load(best) {
                best = index;
            }
        }
        best
    }

    /// See [`spawn_connection`].
    pub fn spawn_connection<F, Fut>(&self, stream: std::net::TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let here = current();
        if self.workers.is_empty() {
            tokio::spawn(register_and_serve(stream, serve, None, here));
            return;
        }
        let index = self.choose();
        let worker = &self.workers[index];
        worker.connections.fetch_add(1, Ordering::Relaxed);
        let open = Some(Open(worker.connections.clone()));
        let task = register_and_serve(stream, serve, open, index);
        // A socket is registered with the reactor of the runtime whose task wraps it.
        if index == here {
            tokio::spawn(task);
        } else {
            worker.handle.spawn(task);
        }
    }
}

/// One `T` per worker, each used by its own worker's thread only ([`PerWorker::get`]).
///
/// Per-endpoint connection state (keep-alive lists, multiplexed HTTP/2 connections, TLS
/// pools) is kept this way: a connection is registered with the reactor of the worker that
/// opened it, and a request on another worker would reach it only through a cross-thread
/// wake-up each way.
pub(crate) struct PerWorker<T>(Box<[T]>);

impl<T> PerWorker<T> {
    /// One `make()` for each of the [`count`] workers.
    pub(crate) fn new(make: impl FnMut() -> T) -> PerWorker<T> {
        PerWorker::with_count(count(), make)
    }

    /// One `make()` for each of `workers` workers (at least one); tests size it themselves.
    pub(crate) fn with_count(workers: usize, mut make: impl FnMut() -> T) -> PerWorker<T> {
        PerWorker((0..workers.max(1)).map(|_| make()).collect())
    }

    /// The calling worker's.
    pub(crate) fn get(&self) -> &T {
        &self.0[current() % self.0.len()]
    }

    /// Every worker's, for work that spans them (pruning, counting).
    pub(crate) fn all(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for PerWorker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// Counts one connection of a worker for as long as it is served.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// `count` current-thread runtimes, each on a thread that has [`enter`]ed its index (as the
    /// binary's runtime builder starts them); they stop when the senders are dropped.
    fn start_workers(count: usize) -> (Vec<Handle>, Vec<tokio::sync::oneshot::Sender<()>>) {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            handles.push(runtime.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("test-worker-{index}"))
                .spawn(move || {
                    enter(index);
                    let _ = runtime.block_on(stopped);
                })
                .expect("a thread");
        }
        (handles, stops)
    }

    /// Opens a connection, has it echo a line, and returns it with the worker and thread
    /// that served it.
    fn connect(
        addr: std::net::SocketAddr,
        served: &mpsc::Receiver<(usize, String)>,
    ) -> (std::net::TcpStream, usize) {
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (worker, thread) = served
            .recv_timeout(Duration::from_secs(5))
            .expect("the connection is served");
        assert_eq!(thread, format!("test-worker-{worker}"));
        client.write_all(b"ping\n").unwrap();
        let mut echoed = [0u8; 5];
        client.read_exact(&mut echoed).expect("an echo");
        assert_eq!(
            &echoed, b"ping\n",
            "the socket works on the worker it was handed to"
        );
        (client, worker)
    }

    fn wait_for_loads(workers: &Workers, expected: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let loads: Vec<usize> = workers
                .workers
                .iter()
                .map(|worker| worker.connections.load(Ordering::Relaxed))
                .collect();
            if loads == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "open connections {loads:?}, expected {expected:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn each_connection_goes_to_the_worker_with_the_fewest_and_stays_there() {
        let (handles, _stops) = start_workers(2);
        let workers = Arc::new(Workers::new(handles.clone()));
        let (served_tx, served) = mpsc::channel();
        let (addr_tx, addr_rx) = mpsc::channel();
        // The listener runs on worker 0, as every listener of a proxy does.
        let acceptor = workers.clone();
        handles[0].spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.expect("accept");
                let stream = stream.into_std().expect("deregistered");
                let served = served_tx.clone();
                acceptor.spawn_connection(stream, move |mut stream| async move {
                    let thread = std::thread::current().name().unwrap_or_default().to_owned();
                    let _ = served.send((current(), thread));
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("listening");

        // Ties stay on the accepting worker; otherwise the one with fewer goes first.
        let (first, on) = connect(addr, &served);
        assert_eq!(on, 0);
        let (second, on) = connect(addr, &served);
        assert_eq!(on, 1);
        let (_third, on) = connect(addr, &served);
        assert_eq!(on, 0);
        let (fourth, on) = connect(addr, &served);
        assert_eq!(on, 1);
        wait_for_loads(&workers, &[2, 2]);

        // A connection counts until it is served to its end.
        drop(second);
        drop(fourth);
        wait_for_loads(&workers, &[2, 0]);
        let (_fifth, on) = connect(addr, &served);
        assert_eq!(on, 1);
        drop(first);
        wait_for_loads(&workers, &[1, 1]);
    }
}

//! Write coalescing for HTTP/2 connections whose streams become ready one by one: HBONE
//! connections (a task per tunnel), h2c upstreams (a request task per stream) and client
//! HTTP/2 connections (whose streams the connection's task polls itself, woken by each
//! upstream answer as it arrives).
//!
//! Each such wake makes the connection's task write, and tokio's multi-thread scheduler runs a
//! task that was just woken next (its LIFO slot). Without help the connection therefore writes
//! each stream's frames on their own: one TLS record and one `writev` (and, across a veth, the
//! whole receive path of the peer's kernel) per request and hop. [`Coalesce`] holds small
//! writes, lets the other ready tasks run first, and then sends everything they queued with one
//! write. How long a flush waits is the caller's choice ([`FlushAt`]): one pass through the run
//! queue, or the rest of the scheduler's turn (until the worker runs out of tasks or does its
//! periodic maintenance), as an event loop proxy flushes once per loop.
//!
//! A single pass is only asked for on a runtime with one worker: elsewhere the task that wakes
//! itself lands in the run queue other workers steal from (see [`FlushAt::NextPass`]).

use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_write_buf;

/// A write at least this large fills TLS records on its own: it goes straight through (after
/// what is held back), so bulk transfers pay neither a copy nor a wait.
const WORTH_WAITING_BELOW: usize = 16 * 1024;
/// Most bytes held back at once; a write that would exceed it sends what is held first.
const HOLD_LIMIT: usize = 64 * 1024;

/// When a flush writes what is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushAt {
    /// After one pass through the run queue: the first flush wakes its own task and returns
    /// `Pending`, and tokio puts a task that wakes itself behind the tasks that are ready now.
    /// Suits connections in a chain of proxies (HBONE), where each hop's wait adds up.
    ///
    /// On a runtime with more than one worker it means [`FlushAt::DriverTurn`]: the queue a
    /// task that wakes itself lands in is the one idle workers steal from, and a thief whose
    /// CPU was busy with other processes held flushes for milliseconds (with two workers, the
    /// HBONE path's p99 at 4 connections went from 0.8 to 4 ms). A deferred wake stays with
    /// the worker that deferred it.
    NextPass,
    /// At the end of the worker's turn: tokio wakes the wakers `yield_now` deferred when the
    /// worker runs out of tasks, or at its maintenance every `event_interval` (61) scheduler
    /// ticks, after polling for I/O (when it holds the driver). Frames queued by tasks that
    /// other tasks wake meanwhile join the same write. Suits a client's connection with many
    /// concurrent streams. When the run queue empties, the wait costs one extra non-blocking
    /// park.
    ///
    /// A `current_thread` runtime drops deferred wakers when its `block_on` returns, so a
    /// connection spawned there must not outlive the `block_on` with bytes held (a proxy on
    /// one CPU runs on one whose `block_on` lasts as long as the process).
    DriverTurn,
}

/// Passes reads through. Small writes are copied and held until a flush, which writes them
/// all with one write once the wait [`FlushAt`] names is over.
///
/// Holding the bytes (rather than making the write wait) is what lets h2 go on: h2 keeps a
/// DATA payload of 256 bytes or more aside instead of copying it, accepts no further frame
/// until that one is written, and flushes after it. Copied here, it no longer blocks the
/// frames behind it.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    /// Bytes written by the caller and not yet to `inner`.
    held: BytesMut,
    /// A flush has begun to wait; the next flush checks whether the wait is over.
    waiting: bool,
    /// Set for [`FlushAt::DriverTurn`].
    turn: Option<TurnWaiter>,
}

#[derive(Debug)]
struct TurnWaiter {
    signal: Arc<DriverTurn>,
    /// `signal` as a waker, built once rather than per flush.
    waker: Waker,
}

/// Tells a waiting flush that the worker's turn has ended since the wait began.
#[derive(Debug, Default)]
struct DriverTurn {
    passed: AtomicBool,
    /// The connection's task, woken when the turn has passed.
    task: AtomicWaker,
}

impl Wake for DriverTurn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.passed.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<T> Coalesce<T> {
    /// Wraps a connection's transport; `flush_at` says how long its flushes wait.
    pub fn new(inner: T, flush_at: FlushAt) -> Coalesce<T> {
        let flush_at = match flush_at {
            FlushAt::NextPass if !on_single_worker() => FlushAt::DriverTurn,
            flush_at => flush_at,
        };
        let turn = (flush_at == FlushAt::DriverTurn).then(|| {
            let signal = Arc::new(DriverTurn::default());
            TurnWaiter {
                waker: Waker::from(signal.clone()),
                signal,
            }
        });
        Coalesce {
            inner,
            held: BytesMut::new(),
            waiting: false,
            turn,
        }
    }

    /// `Ready` once the wait [`FlushAt`] names is over; the first call of a cycle begins it.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(turn) = &self.turn else {
            if self.waiting {
                return Poll::Ready(());
            }
            self.waiting = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        turn.signal.task.register(cx.waker());
        if !self.waiting {
            self.waiting = true;
            turn.signal.passed.store(false, Ordering::Relaxed);
            // `yield_now` hands the waker of the context it is polled in to the scheduler,
            // which wakes it at the end of the worker's turn (at once outside a runtime); the
            // future itself is of no further use.
            let _ = pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&turn.waker));
            return Poll::Pending;
        }
        // Checked after registering, so a wake between the two is not lost.
        if turn.signal.passed.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Whether no other worker can take tasks from this thread's run queue (also true outside a
/// runtime, where nothing is queued).
fn on_single_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .map_or(true, |runtime| runtime.metrics().num_workers() == 1)
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes everything held to `inner`.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            if ready!(poll_write_buf(
                Pin::new(&mut self.inner),
                cx,
                &mut self.held
            ))? == 0
            {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes; `Ready(false)` when they are too large to hold and
    /// must go straight to `inner` (everything held before them is written by then).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if len >= WORTH_WAITING_BELOW || self.held.len() + len > HOLD_LIMIT {
            ready!(self.poll_send_held(cx))?;
        }
        Poll::Ready(Ok(len < WORTH_WAITING_BELOW))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !ready!(self.poll_room(cx, buf.len()))? {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|buf| buf.len()).sum();
        if !ready!(self.poll_room(cx, len))? {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    /// Small slices are copied, so h2 should hand them over together rather than copy them
    /// into its own buffer first.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.held.is_empty() {
            ready!(self.poll_wait(cx));
            ready!(self.poll_send_held(cx))?;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.waiting = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_held(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    /// Records every write that reaches the transport (pair it with a reader through
    /// `tokio::io::join`).
    struct RecordWrites<T> {
        inner: T,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for RecordWrites<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
            let mut writes = self.writes.lock().expect("writes");
            writes.push(buf[..written].to_vec());
            Poll::Ready(Ok(written))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// How many of `writes` (an HTTP/2 client's output, preface first) start a DATA frame:
    /// the writes the payloads took, whatever else (SETTINGS, WINDOW_UPDATE) went out.
    fn writes_with_data(writes: &[Vec<u8>]) -> usize {
        const PREFACE: usize = 24;
        let mut starts = Vec::new();
        let mut offset = 0;
        for (index, write) in writes.iter().enumerate() {
            starts.push((offset, index));
            offset += write.len();
        }
        let stream: Vec<u8> = writes.concat();
        let mut with_data = std::collections::BTreeSet::new();
        let mut at = PREFACE;
        while at + 9 <= stream.len() {
            let len = usize::from(stream[at]) << 16
                | usize::from(stream[at + 1]) << 8
                | usize::from(stream[at + 2]);
            let frame_type = stream[at + 3];
            if frame_type == 0 && len > 0 {
                let write = starts.partition_point(|&(start, _)| start <= at) - 1;
                with_data.insert(starts[write].1);
            }
            at += 9 + len;
        }
        with_data.len()
    }

    const TUNNELS: usize = 8;

    /// How the tunnels' tasks become ready.
    #[derive(Clone, Copy)]
    enum Wakeups {
        /// All in the same scheduler turn, as when one epoll wake-up makes many sockets
        /// readable.
        Together,
        /// Each tunnel's task sends, goes to the back of the run queue, and then wakes the next
        /// one: tasks that become ready while the connection waits, behind it in the queue.
        Chained,
    }

    /// Wakes its own task and yields once: tokio queues a task that wakes itself at the back.
    async fn to_back_of_run_queue() {
        let mut yielded = false;
        std::future::poll_fn(|cx| {
            if yielded {
                return Poll::Ready(());
            }
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
    }

    /// Opens `TUNNELS` streams from a client whose transport is `Coalesce`d, has each
    /// stream's own task send `payload` as `wakeups` says, and returns the writes the payloads
    /// took.
    ///
    /// A single worker makes the order deterministic: tokio's multi-thread scheduler runs the
    /// task a running task wakes next (its LIFO slot), so without coalescing the connection
    /// would write after each tunnel.
    async fn writes_for(payload: &'static [u8], flush_at: FlushAt, wakeups: Wakeups) -> usize {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (client_reader, client_writer) = tokio::io::split(client_io);
        let client_io = Coalesce::new(
            tokio::io::join(
                client_reader,
                RecordWrites {
                    inner: client_writer,
                    writes: writes.clone(),
                },
            ),
            flush_at,
        );
        let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut connection = h2::server::handshake(server_io).await.expect("handshake");
            while let Some(Ok((request, _respond))) = connection.accept().await {
                let received_tx = received_tx.clone();
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    while let Some(Ok(data)) = body.data().await {
                        let _ = body.flow_control().release_capacity(data.len());
                        let _ = received_tx.send(data);
                    }
                });
            }
        });
        let (mut sender, connection) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(connection);
        let mut streams = Vec::new();
        for _ in 0..TUNNELS {
            let request = http::Request::post("http://tunnel.test/")
                .body(())
                .expect("request");
            let (_response, stream) = sender.send_request(request, false).expect("stream");
            streams.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;

        tokio::spawn(async move {
            let mut previous: Option<tokio::sync::oneshot::Receiver<()>> = None;
            for mut stream in streams {
                let (next_tx, next_rx) = tokio::sync::oneshot::channel();
                let after = match wakeups {
                    Wakeups::Together => None,
                    Wakeups::Chained => previous.replace(next_rx),
                };
                tokio::spawn(async move {
                    if let Some(after) = after {
                        let _ = after.await;
                    }
                    stream
                        .send_data(Bytes::from_static(payload), false)
                        .expect("send");
                    if matches!(wakeups, Wakeups::Chained) {
                        to_back_of_run_queue().await;
                    }
                    let _ = next_tx.send(());
                    // Keep the stream open until the test ends.
                    std::future::pending::<()>().await;
                });
            }
        });
        let mut bytes = 0;
        while bytes < TUNNELS * payload.len() {
            let data = tokio::time::timeout(Duration::from_secs(5), received.recv())
                .await
                .expect("every payload arrives")
                .expect("server running");
            assert!(payload.starts_with(&data), "payloads arrive intact");
            bytes += data.len();
        }
        let writes = writes.lock().expect("writes");
        writes_with_data(&writes)
    }

    /// The case it exists for: small frames of many tunnels leave in one write.
    /// (The worker's periodic maintenance may end a turn while the tunnels run, so waiting for
    /// the end of the turn may take two writes.)
    #[test]
    fn small_frames_queued_in_one_turn_leave_in_one_write() {
        for runtime in single_worker_runtimes() {
            runtime.block_on(async {
                let writes = writes_for(b"request", FlushAt::NextPass, Wakeups::Together).await;
                assert_eq!(writes, 1);
                let writes = writes_for(b"request", FlushAt::DriverTurn, Wakeups::Together).await;
                assert!(writes <= 2, "{writes} writes for {TUNNELS} frames");
            });
        }
    }

    /// The runtimes a proxy on one CPU may run on: the current-thread one `strait` starts
    /// there, and a multi-thread one with one worker (an embedder's choice).
    fn single_worker_runtimes() -> [tokio::runtime::Runtime; 2] {
        let current_thread = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let one_worker = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        [current_thread, one_worker]
    }

    /// The production runtime has several workers: every frame still arrives, in fewer writes
    /// than frames.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_workers_deliver_every_frame() {
        for wakeups in [Wakeups::Together, Wakeups::Chained] {
            let writes = writes_for(b"request", FlushAt::NextPass, wakeups).await;
            assert!(writes < TUNNELS, "{writes} writes for {TUNNELS} frames");
        }
    }

    type Writes = Arc<Mutex<Vec<Vec<u8>>>>;
    type Recorded = Coalesce<RecordWrites<tokio::io::DuplexStream>>;

    /// A `Coalesce` over a pipe that records its writes; the pipe's other end is returned too.
    fn recorded(flush_at: FlushAt) -> (Recorded, tokio::io::DuplexStream, Writes) {
        let writes = Writes::default();
        let (io, peer) = tokio::io::duplex(1 << 20);
        let io = Coalesce::new(
            RecordWrites {
                inner: io,
                writes: writes.clone(),
            },
            flush_at,
        );
        (io, peer, writes)
    }

    /// Writes `bytes`, which must be taken at once (held, or accepted by the pipe).
    fn write_now(io: &mut Recorded, bytes: &[u8]) {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(io).poll_write(&mut cx, bytes) {
            Poll::Ready(Ok(written)) => assert_eq!(written, bytes.len()),
            other => panic!("write of {} bytes: {other:?}", bytes.len()),
        }
    }

    /// Polls one flush with a no-op waker.
    fn flush_now(io: &mut Recorded) -> Poll<io::Result<()>> {
        Pin::new(io).poll_flush(&mut Context::from_waker(Waker::noop()))
    }

    /// A write too large to hold sends what is held while a flush waits; the next flush then
    /// has nothing to wait for, and the one after begins a new wait.
    #[test]
    fn a_wait_ends_when_a_large_write_sends_what_is_held() {
        let (mut io, _peer, writes) = recorded(FlushAt::NextPass);
        write_now(&mut io, b"small");
        assert!(flush_now(&mut io).is_pending(), "the flush waits");
        write_now(&mut io, &[b'L'; WORTH_WAITING_BELOW]);
        let recorded = writes.lock().expect("writes").len();
        assert_eq!(recorded, 2, "held bytes, then the large write");
        assert!(flush_now(&mut io).is_ready(), "nothing left to wait for");
        write_now(&mut io, b"again");
        assert!(flush_now(&mut io).is_pending(), "a new cycle waits again");
        assert!(flush_now(&mut io).is_ready());
        assert_eq!(writes.lock().expect("writes").len(), 3);
    }

    /// Waiting for the end of the turn also collects the frames of tasks that become ready only
    /// while the connection waits, where one pass through the run queue does not. (The worker
    /// ends a turn at least every 61 ticks; the chain takes about 24, so it may straddle one.)
    #[test]
    fn driver_turn_collects_frames_of_tasks_woken_meanwhile() {
        for runtime in single_worker_runtimes() {
            runtime.block_on(async {
                let per_turn = writes_for(b"request", FlushAt::DriverTurn, Wakeups::Chained).await;
                assert!(per_turn <= 2, "{per_turn} writes for {TUNNELS} frames");
                let per_pass = writes_for(b"request", FlushAt::NextPass, Wakeups::Chained).await;
                assert!(per_pass > 2, "{per_pass} writes for {TUNNELS} frames");
            });
        }
    }

    /// Where other workers could steal the task that wakes itself, a single pass is not used.
    #[test]
    fn several_workers_wait_for_the_driver_turn() {
        for (workers, waits_for_turn) in [(1, false), (2, true)] {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .build()
                .expect("runtime");
            let (io, _peer) = tokio::io::duplex(64);
            let coalesce = runtime.block_on(async { Coalesce::new(io, FlushAt::NextPass) });
            assert_eq!(coalesce.turn.is_some(), waits_for_turn, "{workers} workers");
        }
        let current_thread = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (io, _peer) = tokio::io::duplex(64);
        let coalesce = current_thread.block_on(async { Coalesce::new(io, FlushAt::NextPass) });
        assert!(
            coalesce.turn.is_none(),
            "a current-thread runtime has one worker"
        );
    }

    /// h2 keeps payloads of 256 bytes or more aside and writes each before the next frame;
    /// holding their bytes lets at least two share each write.
    #[test]
    fn larger_frames_share_writes_too() {
        static KIB: [u8; 1024] = [b'x'; 1024];
        for runtime in single_worker_runtimes() {
            runtime.block_on(async {
                for flush_at in [FlushAt::NextPass, FlushAt::DriverTurn] {
                    let writes = writes_for(&KIB, flush_at, Wakeups::Together).await;
                    assert!(
                        writes <= TUNNELS / 2,
                        "{flush_at:?}: {writes} writes for {TUNNELS} frames"
                    );
                }
            });
        }
    }

    /// Writes of 16 KiB or more are not held: they reach the transport as they are, after
    /// what was held before them.
    #[tokio::test]
    async fn large_writes_go_through_in_order() {
        let (mut io, mut peer, writes) = recorded(FlushAt::NextPass);
        let large = vec![b'L'; WORTH_WAITING_BELOW];
        write_now(&mut io, b"small");
        assert!(
            writes.lock().expect("writes").is_empty(),
            "small write held"
        );
        write_now(&mut io, &large);
        let recorded = writes.lock().expect("writes").clone();
        assert_eq!(recorded, vec![b"small".to_vec(), large.clone()]);
        drop(io);
        let mut received = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut received)
            .await
            .expect("read");
        assert_eq!(received.len(), 5 + large.len());
    }

    /// Shutting down writes what is held first, without a flush.
    #[tokio::test]
    async fn shutdown_sends_what_is_held() {
        let (io, mut peer) = tokio::io::duplex(1024);
        let mut io = Coalesce::new(io, FlushAt::DriverTurn);
        tokio::io::AsyncWriteExt::write_all(&mut io, b"held")
            .await
            .expect("write");
        tokio::io::AsyncWriteExt::shutdown(&mut io)
            .await
            .expect("shutdown");
        let mut received = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut received)
            .await
            .expect("read");
        assert_eq!(received, b"held");
    }
}

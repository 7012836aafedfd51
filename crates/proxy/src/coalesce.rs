//! Write coalescing for HTTP/2 connections, which many tasks share: HBONE connections (a task
//! per tunnel), client HTTP/2 connections (hyper runs a task per stream) and h2c upstreams (a
//! request task per stream).
//!
//! Each of those tasks wakes the connection's task when it queues a frame. tokio runs a task
//! that was just woken next (its LIFO slot), so without help the connection flushes each
//! stream's frames on their own: one TLS record and one `writev` (and, across a veth, the whole
//! receive path of the peer's kernel) per request and hop. Under load most of those streams'
//! tasks are already in the run queue. [`Coalesce`] lets them go first: the first small write
//! of a flush cycle reschedules the writer behind the tasks that are ready now and returns
//! `Pending`; when it runs again, the frames they queued in the meantime leave with it. An idle
//! connection pays one extra poll per flush, and no waiting, since a task that wakes itself is
//! simply run again after what is already queued.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A write at least this large fills a TLS record on its own: waiting for more gains nothing,
/// and bulk transfers should not pay the extra poll.
const WORTH_WAITING_BELOW: usize = 16 * 1024;

/// Passes reads through; holds back the first small write after each completed flush by one
/// scheduler turn.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    /// This flush cycle has already yielded once: write through until it completes.
    yielded: bool,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Coalesce<T> {
        Coalesce {
            inner,
            yielded: false,
        }
    }

    /// `Ready` once this cycle has yielded; otherwise reschedules the task and returns
    /// `Pending`.
    fn poll_turn(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<()> {
        if self.yielded || len >= WORTH_WAITING_BELOW {
            return Poll::Ready(());
        }
        self.yielded = true;
        // A task woken while it runs is put at the back of the run queue, behind the tasks
        // that are ready now.
        cx.waker().wake_by_ref();
        Poll::Pending
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
        std::task::ready!(self.poll_turn(cx, buf.len()));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|buf| buf.len()).sum();
        std::task::ready!(self.poll_turn(cx, len));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.yielded = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    /// Counts the writes that reach the transport.
    struct CountWrites<T> {
        inner: T,
        writes: Arc<AtomicUsize>,
    }

    impl<T: AsyncRead + Unpin> AsyncRead for CountWrites<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for CountWrites<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, buf);
            if written.is_ready() {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            written
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    const TUNNELS: usize = 8;

    /// The case it exists for: tunnels of one HTTP/2 connection that each send a frame in the
    /// same scheduler turn (as when one epoll wake-up makes many sockets readable) share one
    /// write, where the connection task would otherwise run, and write, after each of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn frames_queued_in_one_turn_leave_in_one_write() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let client_io = Coalesce::new(CountWrites {
            inner: client_io,
            writes: writes.clone(),
        });
        let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut connection = h2::server::handshake(server_io).await.expect("handshake");
            while let Some(Ok((request, _respond))) = connection.accept().await {
                let _ = accepted_tx.send(());
                let received_tx = received_tx.clone();
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    while let Some(Ok(data)) = body.data().await {
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
        // The handshake and the streams' HEADERS are out; let the settings exchange settle.
        for _ in 0..TUNNELS {
            tokio::time::timeout(Duration::from_secs(5), accepted.recv())
                .await
                .expect("every stream is accepted");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = writes.load(Ordering::SeqCst);

        // Every tunnel task becomes ready in the same turn, on the connection task's worker.
        tokio::spawn(async move {
            for mut stream in streams {
                tokio::spawn(async move {
                    stream
                        .send_data(Bytes::from_static(b"request"), false)
                        .expect("send");
                    // Keep the stream open until the test ends.
                    std::future::pending::<()>().await;
                });
            }
        });
        for _ in 0..TUNNELS {
            let data = tokio::time::timeout(Duration::from_secs(5), received.recv())
                .await
                .expect("every frame arrives")
                .expect("server running");
            assert_eq!(&data[..], b"request");
        }
        assert_eq!(writes.load(Ordering::SeqCst) - before, 1);
    }
}

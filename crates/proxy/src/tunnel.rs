//! One HBONE tunnel as a byte stream: the two halves of an HTTP/2 `CONNECT` stream.
//!
//! The tunnel drives h2's stream handles directly. hyper's upgraded HTTP/2 stream copies every
//! write into a boxed buffer and hands it through a channel to a task of its own, which then
//! passes it to h2: a task wake-up, an allocation and a copy per write, on every hop of every
//! mesh request. Here a write goes straight to h2, under h2's flow control.
//!
//! [`relay`] joins a tunnel to a socket without copying payload in user space beyond what the
//! socket read itself needs: received DATA frames are written to the socket as h2 hands them
//! over, and large socket reads are handed to h2 as they are.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// First read buffer of a relay direction: an idle or chatty connection stays cheap.
const READ_BUF_MIN: usize = 16 * 1024;
/// Largest read buffer: a read that fills the buffer doubles it up to this, so bulk transfers
/// move large chunks (fewer frames, TLS records and syscalls per byte).
const READ_BUF_MAX: usize = 256 * 1024;
/// Reads smaller than this (or than half the buffer) are copied out so the buffer is reused;
/// larger ones are handed to h2 as they are and the next read gets a fresh buffer. Handing over
/// a small read would pin the whole buffer for as long as h2 queues it.
const HAND_OVER_AT: usize = 8 * 1024;
/// Largest write handed to h2 at once: h2 queues what exceeds the peer's window, and bounding
/// each write bounds that queue.
const MAX_WRITE: usize = READ_BUF_MAX;

/// An established tunnel: what the peer sends is read, what is written reaches the peer.
/// Shutting down the write side ends the stream in that direction (a half-close); dropping the
/// tunnel before that resets the stream.
#[derive(Debug)]
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received but not yet read.
    unread: Bytes,
    /// END_STREAM was sent.
    write_closed: bool,
}

impl Tunnel {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Tunnel {
        Tunnel {
            send,
            recv,
            unread: Bytes::new(),
            write_closed: false,
        }
    }

    /// The next received bytes; `None` at the end of the peer's stream, an error when the peer
    /// reset it. Call [`Self::release`] once they are consumed.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, h2::Error>> {
        if !self.unread.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.unread))));
        }
        loop {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(None)),
                Some(Ok(data)) if data.is_empty() => {}
                Some(Ok(data)) => return Poll::Ready(Ok(Some(data))),
                Some(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reopens the peer's window by `n` consumed bytes, so a slow consumer holds the peer back
    /// instead of buffering without bound.
    fn release(&mut self, n: usize) {
        let _ = self.recv.flow_control().release_capacity(n);
    }

    /// Sends END_STREAM: the half-close of a socket.
    fn finish(&mut self) -> io::Result<()> {
        if !self.write_closed {
            self.send
                .send_data(Bytes::new(), true)
                .map_err(write_error)?;
            self.write_closed = true;
        }
        Ok(())
    }

    /// Ready with an error once the peer resets the stream or the connection is lost: what a
    /// relay waiting only on its socket would otherwise not notice.
    fn poll_aborted(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match ready!(self.send.poll_reset(cx)) {
            Ok(reason) => Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("tunnel reset by the peer ({reason:?})"),
            )),
            Err(e) => Poll::Ready(read_error(e)),
        }
    }

    /// Waits until h2 may take more data on this stream. At most one write beyond the flow
    /// control window is ever buffered, so a slow peer slows the writer instead of growing
    /// memory.
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.send.capacity() > 0 {
            return Poll::Ready(Ok(()));
        }
        // Reserve only with data in hand: capacity reserved by an idle stream would be held
        // back from the other streams of the connection.
        self.send.reserve_capacity(1);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => {}
                Some(Ok(_)) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(write_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// Sends `data` as it is (no copy); the caller must have seen [`Self::poll_send_capacity`]
    /// ready.
    fn send_bytes(&mut self, data: Bytes) -> io::Result<()> {
        self.send.send_data(data, false).map_err(write_error)
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let mut chunk = match ready!(this.poll_chunk(cx)) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Poll::Ready(Ok(())),
            // A byte stream can only tell a cancel from a clean end by an error; an HTTP
            // server reading the tunnel treats a cancelled request as the end of input.
            Err(e) => return Poll::Ready(read_result(e)),
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..n]);
        chunk.advance(n);
        this.unread = chunk;
        this.release(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(self.poll_send_capacity(cx))?;
        let n = buf.len().min(MAX_WRITE);
        self.send_bytes(Bytes::copy_from_slice(&buf[..n]))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes queued frames as soon as it runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}

/// Relays between a socket and a tunnel until both directions finish, and returns the bytes
/// moved each way (socket to tunnel, tunnel to socket). An end of stream on one side
/// half-closes the other while the reverse direction keeps flowing; an error on either side
/// ends the relay. Each direction holds at most one read buffer, of up to 256 KiB.
pub async fn relay<S>(mut socket: S, mut tunnel: Tunnel) -> io::Result<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut outbound = SocketToTunnel::default();
    let mut inbound = TunnelToSocket::default();
    std::future::poll_fn(|cx| {
        let sent = outbound.poll(cx, &mut socket, &mut tunnel)?;
        let received = inbound.poll(cx, &mut tunnel, &mut socket)?;
        if sent.is_pending()
            && received.is_ready()
            && let Poll::Ready(e) = tunnel.poll_aborted(cx)
        {
            // The peer finished sending, then reset or vanished: an idle socket would never
            // tell.
            return Poll::Ready(Err(e));
        }
        match (sent, received) {
            (Poll::Ready(sent), Poll::Ready(received)) => Poll::Ready(Ok((sent, received))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Socket reads become DATA frames.
struct SocketToTunnel {
    buf: BytesMut,
    /// How much the next read asks for.
    read_size: usize,
    /// Read, waiting for h2 to take it.
    pending: Option<Bytes>,
    done: bool,
    moved: u64,
}

impl Default for SocketToTunnel {
    fn default() -> Self {
        SocketToTunnel {
            buf: BytesMut::new(),
            read_size: READ_BUF_MIN,
            pending: None,
            done: false,
            moved: 0,
        }
    }
}

impl SocketToTunnel {
    fn poll<S>(
        &mut self,
        cx: &mut Context<'_>,
        socket: &mut S,
        tunnel: &mut Tunnel,
    ) -> Poll<io::Result<u64>>
    where
        S: AsyncRead + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.moved));
            }
            if let Some(chunk) = self.pending.take() {
                if tunnel.poll_send_capacity(cx)?.is_pending() {
                    self.pending = Some(chunk);
                    return Poll::Pending;
                }
                self.moved += chunk.len() as u64;
                tunnel.send_bytes(chunk)?;
            }
            if self.buf.capacity() < self.read_size {
                self.buf.reserve(self.read_size);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *socket),
                cx,
                &mut self.buf
            ))?;
            if n == 0 {
                tunnel.finish()?;
                self.done = true;
                // The buffer is not needed any more; the reverse direction may run for long.
                self.buf = BytesMut::new();
                continue;
            }
            if n >= self.read_size && self.read_size < READ_BUF_MAX {
                // The read filled the buffer: more is waiting, read bigger chunks.
                self.read_size = (self.read_size * 2).min(READ_BUF_MAX);
            }
            self.pending = Some(if n < HAND_OVER_AT || n * 2 < self.buf.capacity() {
                let chunk = Bytes::copy_from_slice(&self.buf);
                self.buf.clear();
                chunk
            } else {
                self.buf.split().freeze()
            });
        }
    }
}

/// DATA frames are written to the socket as received.
#[derive(Default)]
struct TunnelToSocket {
    chunk: Bytes,
    need_flush: bool,
    state: Closing,
    moved: u64,
}

#[derive(Default)]
enum Closing {
    #[default]
    Open,
    ShuttingDown,
    Done,
}

impl TunnelToSocket {
    fn poll<S>(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut Tunnel,
        socket: &mut S,
    ) -> Poll<io::Result<u64>>
    where
        S: AsyncWrite + Unpin,
    {
        loop {
            match self.state {
                Closing::Done => return Poll::Ready(Ok(self.moved)),
                Closing::ShuttingDown => {
                    ready!(Pin::new(&mut *socket).poll_shutdown(cx))?;
                    self.state = Closing::Done;
                    continue;
                }
                Closing::Open => {}
            }
            if self.chunk.is_empty() {
                match tunnel.poll_chunk(cx) {
                    // A reset is an abort, never a half-close: the relay ends and the socket
                    // is dropped.
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(read_error(e))),
                    Poll::Ready(Ok(Some(chunk))) => self.chunk = chunk,
                    Poll::Ready(Ok(None)) => {
                        self.state = Closing::ShuttingDown;
                        continue;
                    }
                    Poll::Pending => {
                        // Nothing more to write for now: push out what was written.
                        if self.need_flush {
                            ready!(Pin::new(&mut *socket).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            let n = ready!(Pin::new(&mut *socket).poll_write(cx, &self.chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.chunk.advance(n);
            tunnel.release(n);
            self.moved += n as u64;
            self.need_flush = true;
        }
    }
}

/// How a failed read looks to a byte-stream reader: a peer that cancelled or closed cleanly is
/// an end of stream, anything else an error.
fn read_result(e: h2::Error) -> io::Result<()> {
    match e.reason() {
        Some(Reason::NO_ERROR) | Some(Reason::CANCEL) => Ok(()),
        _ => Err(read_error(e)),
    }
}

fn read_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::ConnectionReset.into());
    }
    match e.reason() {
        Some(Reason::STREAM_CLOSED) => io::Error::new(io::ErrorKind::BrokenPipe, e),
        Some(_) => io::Error::new(io::ErrorKind::ConnectionReset, e),
        None => io::Error::other(e),
    }
}

fn write_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into());
    }
    match e.reason() {
        Some(_) => io::Error::new(io::ErrorKind::BrokenPipe, e),
        None => io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Both ends of one `CONNECT` stream over an in-memory HTTP/2 connection (no TLS: the
    /// tunnel does not care what carries the frames). `window` is the peer's stream window.
    async fn tunnel_pair(window: u32) -> (Tunnel, Tunnel) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut connection = h2::server::Builder::new()
                .initial_window_size(window)
                .handshake::<DuplexStream, Bytes>(server_io)
                .await
                .unwrap();
            let (request, mut respond) = connection.accept().await.unwrap().unwrap();
            assert_eq!(request.method(), Method::CONNECT);
            let send = respond.send_response(Response::new(()), false).unwrap();
            tokio::spawn(async move { while connection.accept().await.is_some() {} });
            Tunnel::new(send, request.into_body())
        });
        let (mut sender, connection) = h2::client::Builder::new()
            .initial_window_size(window)
            .handshake::<DuplexStream, Bytes>(client_io)
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri("198.18.0.10:80")
            .body(())
            .unwrap();
        let (response, send) = sender.send_request(request, false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let client = Tunnel::new(send, response.into_body());
        (client, server.await.unwrap())
    }

    /// Fails the test instead of hanging it.
    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .expect("stalled")
    }

    /// Bytes in a pattern that shows loss, duplication or reordering.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn relay_moves_bulk_both_ways_intact_and_propagates_half_close() {
        // A window smaller than the transfer, so the writers wait for the reader.
        let (mut client, server) = tunnel_pair(256 * 1024).await;
        let (mut app, socket) = tokio::io::duplex(32 * 1024);
        let relayed = tokio::spawn(relay(socket, server));
        let upload = pattern(3 * READ_BUF_MAX + 12_345);
        let download = pattern(2 * READ_BUF_MAX + 777);

        // Client → tunnel → socket, then the client half-closes.
        let uploader = {
            let upload = upload.clone();
            tokio::spawn(async move {
                client.write_all(&upload).await.unwrap();
                client.shutdown().await.unwrap();
                client
            })
        };
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 7_000];
        loop {
            let n = within(app.read(&mut chunk)).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        assert!(received == upload, "upload arrives intact and in order");

        // The socket side still sends after the tunnel side half-closed.
        let downloader = tokio::spawn(async move {
            let mut client = uploader.await.unwrap();
            let mut downloaded = Vec::new();
            client.read_to_end(&mut downloaded).await.unwrap();
            downloaded
        });
        within(app.write_all(&download)).await.unwrap();
        app.shutdown().await.unwrap();
        let downloaded = within(downloader).await.unwrap();
        assert!(
            downloaded == download,
            "download arrives intact and in order"
        );

        let (sent, back) = within(relayed).await.unwrap().unwrap();
        assert_eq!(sent, download.len() as u64, "socket to tunnel");
        assert_eq!(back, upload.len() as u64, "tunnel to socket");
    }

    #[tokio::test]
    async fn small_writes_are_delivered_one_by_one_without_waiting_for_more() {
        let (mut client, server) = tunnel_pair(65_535).await;
        let (mut app, socket) = tokio::io::duplex(1024);
        tokio::spawn(relay(socket, server));
        for i in 0..50u8 {
            client.write_all(&[i; 3]).await.unwrap();
            let mut got = [0u8; 3];
            app.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [i; 3]);
            app.write_all(&[i, i]).await.unwrap();
            let mut echoed = [0u8; 2];
            client.read_exact(&mut echoed).await.unwrap();
            assert_eq!(echoed, [i, i]);
        }
    }

    #[tokio::test]
    async fn a_reset_tunnel_ends_the_relay_and_closes_the_socket() {
        let (client, server) = tunnel_pair(65_535).await;
        let (mut app, socket) = tokio::io::duplex(1024);
        let relayed = tokio::spawn(relay(socket, server));
        // Dropping an unfinished stream resets it.
        drop(client);
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            app.read_to_end(&mut rest),
        )
        .await
        .expect("the socket is closed, not left hanging")
        .unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), relayed)
            .await
            .expect("the relay ends");
        assert!(ended.is_ok());
    }

    #[tokio::test]
    async fn a_reset_after_the_peer_finished_sending_ends_a_relay_on_an_idle_socket() {
        let (mut client, server) = tunnel_pair(65_535).await;
        let (mut app, socket) = tokio::io::duplex(1024);
        let relayed = tokio::spawn(relay(socket, server));
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        within(app.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"last words", "the half-close reaches the socket");
        // The socket stays open and silent; the peer now aborts its half.
        drop(client);
        let ended = within(relayed).await.unwrap();
        assert!(ended.is_err(), "the relay ends with the reset: {ended:?}");
        drop(app);
    }

    #[tokio::test]
    async fn tunnel_reads_and_writes_as_a_byte_stream() {
        let (mut client, mut server) = tunnel_pair(65_535).await;
        let data = pattern(300_000);
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                client.write_all(&data).await.unwrap();
                client.shutdown().await.unwrap();
                client
            })
        };
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert!(received == data);
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        let mut client = writer.await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"done");
        // Writing after the half-close is an error, not silently lost data.
        assert!(client.write_all(b"late").await.is_err());
    }
}

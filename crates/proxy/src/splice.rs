//! Zero-copy relay between two plain TCP sockets with Linux `splice(2)`.
//!
//! A plain passthrough relay spends most of its time copying bytes into user space and back
//! (`copy_bidirectional`). With splice, each direction moves pages from the source socket into
//! a pipe and from the pipe into the destination socket without the bytes ever leaving the
//! kernel. Readiness comes from Tokio's own registration of the sockets (`poll_*_ready` +
//! `try_io`), so the relay costs no extra epoll registration.
//!
//! A direction creates its pipe lazily, on the first readable event, so idle connections hold
//! no pipe descriptors; the pipe is closed as soon as the direction finishes. When a pipe cannot
//! be created (descriptor limits) or the kernel refuses to splice these descriptors (`EINVAL`,
//! `ENOSYS`, `EOPNOTSUPP`), that direction falls back to a user-space copy without losing any
//! byte already in its pipe.
//!
//! Semantics are those of [`tokio::io::copy_bidirectional`]: an end of stream on one side is
//! forwarded as `shutdown(Write)` on the other once every byte before it was delivered, the
//! other direction keeps running, an error on either side ends both, and the result is the
//! number of bytes written in each direction.

use std::fs::File;
use std::future::poll_fn;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::task::{Context, Poll};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe capacity asked for each direction. The bytes in a pipe have left the source socket's
/// receive window but not reached the destination's send buffer, so a large pipe takes bursts
/// the destination cannot take at once, and the relay then sleeps until that buffer drains.
/// Measured on the node's passthrough (bulk, captured client pod to a server pod): 64 KiB
/// moved 10.3-14.1 Gbit/s, 512 KiB 8.2-10.8 (128 KiB in between); the larger pipe spent less
/// CPU per byte only because the relay sat idle more. Asked explicitly, as the default is 16
/// pages, which is 1 MiB on kernels with 64 KiB pages. The kernel may refuse it (per-user pipe
/// quota); its default is then kept.
const PIPE_BYTES: usize = 64 * 1024;

/// User-space buffer of a direction that fell back to copying.
const COPY_BYTES: usize = 64 * 1024;

/// Relays bytes between `a` and `b` in both directions until both directions reach end of
/// stream, moving them through kernel pipes with `splice(2)` (falling back to a user-space
/// copy per direction when splice is unavailable). Returns the bytes written `(a -> b, b -> a)`.
///
/// Half-closes are propagated (`shutdown(Write)` once the pipe is drained); an error or reset on
/// either side ends the relay with that error.
pub async fn relay(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64)> {
    relay_with(a, b, Pipe::new)
        .await
        .map(|report| (report.a_to_b.written, report.b_to_a.written))
}

/// What one direction did (tests assert on the path taken).
#[derive(Clone, Copy, Debug, Default)]
struct HalfReport {
    written: u64,
    /// Bytes moved through a pipe.
    spliced: u64,
    /// Whether the direction ended up copying through user space.
    copied: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Report {
    a_to_b: HalfReport,
    b_to_a: HalfReport,
}

/// [`relay`] with a pipe factory (tests inject failing or unusable pipes).
async fn relay_with(
    a: &TcpStream,
    b: &TcpStream,
    new_pipe: fn() -> io::Result<Pipe>,
) -> io::Result<Report> {
    let mut a_to_b = Half::new();
    let mut b_to_a = Half::new();
    poll_fn(|cx| {
        let forward = a_to_b.poll(cx, a, b, new_pipe)?;
        let backward = b_to_a.poll(cx, b, a, new_pipe)?;
        match (forward, backward) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok::<(), io::Error>(())),
            _ => Poll::Pending,
        }
    })
    .await?;
    Ok(Report {
        a_to_b: a_to_b.report,
        b_to_a: b_to_a.report,
    })
}

/// A non-blocking pipe owned by one direction. Both ends close on drop, on every path.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Largest splice asked from the source socket.
    capacity: usize,
    /// Bytes in the pipe, not yet written to the destination.
    buffered: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // A refused size keeps the default capacity (64 KiB): slower, still correct.
        let capacity = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as i32))
            .or_else(|_| fcntl(&write, FcntlArg::F_GETPIPE_SZ))
            .map_or(64 * 1024, |size| size.max(4096) as usize);
        Ok(Pipe {
            read,
            write,
            capacity,
            buffered: 0,
        })
    }
}

/// The user-space fallback buffer: `data[start..end]` is waiting to be written.
struct CopyBuf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl CopyBuf {
    fn new(pending: Vec<u8>) -> CopyBuf {
        let end = pending.len();
        let mut data = pending;
        data.resize(end.max(COPY_BYTES), 0);
        CopyBuf {
            data: data.into_boxed_slice(),
            start: 0,
            end,
        }
    }
}

enum Mode {
    /// Nothing read yet: no pipe.
    Idle,
    Splice(Pipe),
    Copy(CopyBuf),
}

/// One direction (`src` -> `dst`) of the relay.
struct Half {
    mode: Mode,
    /// `src` reached end of stream.
    eof: bool,
    /// The last splice into the pipe found no room: drain before reading again.
    pipe_full: bool,
    /// Splice from `src` is refused: switch to copying once the pipe is empty.
    splice_refused: bool,
    /// `dst` was shut down; nothing more to do.
    done: bool,
    report: HalfReport,
}

/// What a splice from the source socket did.
enum Fill {
    Bytes(usize),
    /// The pipe has no room (the socket may still hold data: its readiness is kept).
    PipeFull,
    /// The kernel cannot splice these descriptors.
    Refused(Errno),
}

fn refused(errno: Errno) -> bool {
    matches!(errno, Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)
}

impl Half {
    fn new() -> Half {
        Half {
            mode: Mode::Idle,
            eof: false,
            pipe_full: false,
            splice_refused: false,
            done: false,
            report: HalfReport::default(),
        }
    }

    fn pending(&self) -> usize {
        match &self.mode {
            Mode::Idle => 0,
            Mode::Splice(pipe) => pipe.buffered,
            Mode::Copy(buf) => buf.end - buf.start,
        }
    }

    fn can_read(&self) -> bool {
        !self.eof
            && match &self.mode {
                Mode::Idle => true,
                Mode::Splice(_) => !self.pipe_full && !self.splice_refused,
                Mode::Copy(buf) => buf.start == buf.end,
            }
    }

    fn switch_to_copy(&mut self, pending: Vec<u8>) {
        self.mode = Mode::Copy(CopyBuf::new(pending));
        self.report.copied = true;
    }

    /// Drives the direction as far as it goes; `Ready` once `dst` was shut down after the last
    /// byte. Returns `Pending` only with a waker registered on a socket this direction waits
    /// for.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        new_pipe: fn() -> io::Result<Pipe>,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut progress = false;
            if self.splice_refused && self.pending() == 0 {
                tracing::debug!("splice refused: relaying through user space");
                self.splice_refused = false;
                self.switch_to_copy(Vec::new());
            }
            if self.can_read() {
                match src.poll_read_ready(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        progress = self.fill(src, new_pipe)?;
                    }
                }
            }
            if self.pending() > 0 {
                match dst.poll_write_ready(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        progress |= self.drain(dst)?;
                    }
                }
            }
            if self.eof && self.pending() == 0 {
                // Every byte before the end of stream was delivered: forward it.
                shutdown(dst.as_raw_fd(), Shutdown::Write)?;
                self.mode = Mode::Idle;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Reads from a readable `src`. `Ok(true)`: loop again (bytes moved, or readiness cleared
    /// and to be polled again so a waker is registered).
    fn fill(&mut self, src: &TcpStream, new_pipe: fn() -> io::Result<Pipe>) -> io::Result<bool> {
        if matches!(self.mode, Mode::Idle) {
            match new_pipe() {
                Ok(pipe) => self.mode = Mode::Splice(pipe),
                Err(e) => {
                    tracing::debug!(error = %e, "no pipe: relaying through user space");
                    self.switch_to_copy(Vec::new());
                }
            }
        }
        match &mut self.mode {
            Mode::Idle => Ok(true),
            Mode::Splice(pipe) => {
                let result = src.try_io(Interest::READABLE, || {
                    match nix::fcntl::splice(
                        src.as_fd(),
                        None,
                        &pipe.write,
                        None,
                        pipe.capacity,
                        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
                    ) {
                        Ok(n) => Ok(Fill::Bytes(n)),
                        // EAGAIN means "socket empty" or "pipe full"; only an empty pipe
                        // proves the former, so only then is the socket's readiness cleared.
                        Err(Errno::EAGAIN) if pipe.buffered > 0 => Ok(Fill::PipeFull),
                        Err(errno) if refused(errno) => Ok(Fill::Refused(errno)),
                        Err(errno) => Err(io::Error::from(errno)),
                    }
                });
                match result {
                    Ok(Fill::Bytes(0)) => {
                        self.eof = true;
                        Ok(true)
                    }
                    Ok(Fill::Bytes(n)) => {
                        pipe.buffered += n;
                        self.report.spliced += n as u64;
                        Ok(true)
                    }
                    Ok(Fill::PipeFull) => {
                        self.pipe_full = true;
                        Ok(false)
                    }
                    Ok(Fill::Refused(errno)) => {
                        tracing::debug!(error = %errno, "splice from socket refused");
                        self.splice_refused = true;
                        Ok(true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
                    Err(e) => Err(e),
                }
            }
            Mode::Copy(buf) => match src.try_read(&mut buf.data) {
                Ok(0) => {
                    self.eof = true;
                    Ok(true)
                }
                Ok(n) => {
                    buf.start = 0;
                    buf.end = n;
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
                Err(e) => Err(e),
            },
        }
    }

    /// Writes pending bytes to a writable `dst`. `Ok(true)`: loop again.
    fn drain(&mut self, dst: &TcpStream) -> io::Result<bool> {
        match &mut self.mode {
            Mode::Idle => Ok(false),
            Mode::Splice(pipe) => {
                let result = dst.try_io(Interest::WRITABLE, || {
                    // The pipe holds data, so EAGAIN can only mean a full socket buffer.
                    nix::fcntl::splice(
                        &pipe.read,
                        None,
                        dst.as_fd(),
                        None,
                        pipe.buffered,
                        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
                    )
                    .map_err(|errno| match errno {
                        errno if refused(errno) => {
                            io::Error::new(io::ErrorKind::Unsupported, errno)
                        }
                        errno => io::Error::from(errno),
                    })
                });
                match result {
                    Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        pipe.buffered -= n;
                        self.report.written += n as u64;
                        self.pipe_full = false;
                        Ok(true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        // Move what the pipe holds into user space and go on copying.
                        tracing::debug!(error = %e, "splice to socket refused: relaying through user space");
                        let mut pending = vec![0; pipe.buffered];
                        File::from(pipe.read.try_clone()?).read_exact(&mut pending)?;
                        self.splice_refused = false;
                        self.pipe_full = false;
                        self.switch_to_copy(pending);
                        Ok(true)
                    }
                    Err(e) => Err(e),
                }
            }
            Mode::Copy(buf) => match dst.try_write(&buf.data[buf.start..buf.end]) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf.start += n;
                    self.report.written += n as u64;
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
                Err(e) => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::task::JoinHandle;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    /// `client <-> a | relay | b <-> server`, all on loopback.
    struct Relayed {
        client: TcpStream,
        server: TcpStream,
        relay: JoinHandle<io::Result<Report>>,
    }

    async fn relayed(new_pipe: fn() -> io::Result<Pipe>) -> Relayed {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (a, _) = front.accept().await.unwrap();
        let b = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = back.accept().await.unwrap();
        let relay = tokio::spawn(async move { relay_with(&a, &b, new_pipe).await });
        Relayed {
            client,
            server,
            relay,
        }
    }

    /// Pseudo-random bytes (splitmix64): incompressible, and any reordering or loss shows.
    fn random_bytes(len: usize, seed: u64) -> Arc<Vec<u8>> {
        let mut state = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        Arc::new(out)
    }

    /// Writes `data` in uneven chunks, then half-closes.
    async fn send(mut w: OwnedWriteHalf, data: Arc<Vec<u8>>) {
        for chunk in data.chunks(100_003) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    }

    /// Reads to end of stream and checks every byte against `expected`.
    async fn receive(mut r: OwnedReadHalf, expected: Arc<Vec<u8>>) {
        let mut buf = vec![0; 7_001];
        let mut at = 0;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(at + n <= expected.len(), "more bytes than were sent");
            assert!(buf[..n] == expected[at..at + n], "corrupted at byte {at}");
            at += n;
        }
        assert_eq!(at, expected.len(), "bytes lost");
    }

    /// Both directions at once, `len` bytes each; returns the relay's report.
    async fn both_ways(new_pipe: fn() -> io::Result<Pipe>, len: usize) -> Report {
        let Relayed {
            client,
            server,
            relay,
        } = relayed(new_pipe).await;
        let up = random_bytes(len, 1);
        let down = random_bytes(len, 2);
        let (client_r, client_w) = client.into_split();
        let (server_r, server_w) = server.into_split();
        let run = async {
            tokio::join!(
                send(client_w, up.clone()),
                receive(server_r, up.clone()),
                send(server_w, down.clone()),
                receive(client_r, down.clone()),
            );
            relay.await.unwrap().unwrap()
        };
        let report = tokio::time::timeout(LIMIT, run).await.expect("relay hung");
        assert_eq!(report.a_to_b.written, len as u64);
        assert_eq!(report.b_to_a.written, len as u64);
        report
    }

    #[tokio::test]
    async fn large_transfer_both_ways_goes_through_pipes() {
        let len = 64 << 20;
        let report = both_ways(Pipe::new, len).await;
        for half in [report.a_to_b, report.b_to_a] {
            assert_eq!(half.spliced, len as u64);
            assert!(!half.copied);
        }
    }

    /// `first` half-closes after a short message; the other side then sends a large answer
    /// through the still-open direction and half-closes too.
    async fn half_close(client_first: bool) {
        let Relayed {
            client,
            server,
            relay,
        } = relayed(Pipe::new).await;
        let (mut first, mut second) = if client_first {
            (client, server)
        } else {
            (server, client)
        };
        let request = random_bytes(300_000, 3);
        let answer = random_bytes(8 << 20, 4);
        // Each side reads while the other writes, as peers do: writing all of the 8 MiB answer
        // before reading any relied on the sockets' buffers holding it, which they do not
        // always (the relay's pipe holds 64 KiB).
        let run = async {
            let (mut first_read, mut first_write) = first.split();
            let (mut second_read, mut second_write) = second.split();
            let mut got = Vec::new();
            tokio::join!(
                async {
                    first_write.write_all(&request).await.unwrap();
                    first_write.shutdown().await.unwrap();
                },
                // The end of stream arrives after every byte, and the other way stays open.
                async { second_read.read_to_end(&mut got).await.unwrap() },
            );
            assert!(got == *request);
            let mut got = Vec::new();
            tokio::join!(
                async {
                    second_write.write_all(&answer).await.unwrap();
                    second_write.shutdown().await.unwrap();
                },
                async { first_read.read_to_end(&mut got).await.unwrap() },
            );
            assert!(got == *answer);
            relay.await.unwrap().unwrap()
        };
        let report = tokio::time::timeout(LIMIT, run).await.expect("relay hung");
        let (to_second, to_first) = if client_first {
            (report.a_to_b, report.b_to_a)
        } else {
            (report.b_to_a, report.a_to_b)
        };
        assert_eq!(to_second.written, request.len() as u64);
        assert_eq!(to_first.written, answer.len() as u64);
        assert_eq!(to_first.spliced, answer.len() as u64);
    }

    #[tokio::test]
    async fn client_half_close_is_forwarded_after_the_data() {
        half_close(true).await;
    }

    #[tokio::test]
    async fn server_half_close_is_forwarded_after_the_data() {
        half_close(false).await;
    }

    #[tokio::test]
    async fn public_relay_returns_bytes_per_direction() {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(front.local_addr().unwrap())
            .await
            .unwrap();
        let (mut a, _) = front.accept().await.unwrap();
        let mut b = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = back.accept().await.unwrap();
        let relay = tokio::spawn(async move { relay(&mut a, &mut b).await });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        server.write_all(b"pong!").await.unwrap();
        drop(server);
        got.clear();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong!");
        let counts = tokio::time::timeout(LIMIT, relay).await.unwrap().unwrap();
        assert_eq!(counts.unwrap(), (4, 5));
    }

    #[tokio::test]
    async fn peer_reset_ends_the_relay_with_an_error() {
        let Relayed {
            mut client,
            mut server,
            relay,
        } = relayed(Pipe::new).await;
        client.write_all(&[7; 100_000]).await.unwrap();
        let mut got = vec![0; 100_000];
        server.read_exact(&mut got).await.unwrap();
        server.set_zero_linger().unwrap();
        drop(server);
        let result = tokio::time::timeout(LIMIT, relay)
            .await
            .expect("relay hung after a reset")
            .unwrap();
        let error = result.expect_err("a reset must end the relay with an error");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
        // The relay's sockets are closed: the client sees the end, not silence.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(LIMIT, client.read_to_end(&mut rest))
            .await
            .expect("client not told");
    }

    fn no_pipe() -> io::Result<Pipe> {
        Err(Errno::EMFILE.into())
    }

    #[tokio::test]
    async fn without_pipes_the_relay_copies() {
        let report = both_ways(no_pipe, 8 << 20).await;
        for half in [report.a_to_b, report.b_to_a] {
            assert_eq!(half.spliced, 0);
            assert!(half.copied);
        }
    }

    /// A "pipe" whose write end is not a pipe: the kernel refuses the splice (`EINVAL`).
    fn unusable_pipe() -> io::Result<Pipe> {
        let (read, _) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let write = OwnedFd::from(std::fs::OpenOptions::new().write(true).open("/dev/null")?);
        Ok(Pipe {
            read,
            write,
            capacity: 65536,
            buffered: 0,
        })
    }

    #[tokio::test]
    async fn refused_splice_falls_back_to_copying() {
        let report = both_ways(unusable_pipe, 8 << 20).await;
        for half in [report.a_to_b, report.b_to_a] {
            assert_eq!(half.spliced, 0);
            assert!(half.copied);
        }
    }
}

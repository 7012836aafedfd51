//! Zero-copy relay between two plain TCP sockets with Linux `splice(2)`.
//!
//! A plain passthrough relay spends most of its time copying bytes into user space and back
//! (`copy_bidirectional`). With splice, each direction moves pages from the source socket into
//! a pipe and from the pipe into the destination socket without the bytes ever leaving the
//! kernel.
//!
//! The relay takes the sockets out of Tokio's hands and registers each with the runtime for
//! just the readiness it waits for (`AsyncFd`), instead of Tokio's both-for-life. When the
//! destination is the bottleneck, a direction cannot read, yet every segment arriving on its
//! source would wake the runtime's thread for nothing: measured on the node's passthrough bulk,
//! such wake-ups made the relay's thread sleep and wake four times as often as HAProxy's, which
//! stops polling a source in that state too. So a source is watched for readability only while
//! its direction waits for it; otherwise it is read at once, and watched again only after a
//! read finds it empty. A destination, once watched for room, stays watched: it wakes the
//! runtime only after a write found it full.
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
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
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
/// either side ends the relay with that error. Both sockets are closed when it returns.
pub async fn relay(a: TcpStream, b: TcpStream) -> io::Result<(u64, u64)> {
    relay_with(a.into_std()?, b.into_std()?, Pipe::new)
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
    /// Times its source stopped being watched because the direction waited for its
    /// destination alone.
    source_unwatched: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Report {
    a_to_b: HalfReport,
    b_to_a: HalfReport,
}

/// [`relay`] with a pipe factory (tests inject failing or unusable pipes). The sockets must be
/// non-blocking, as [`TcpStream::into_std`] leaves them.
async fn relay_with(
    a: StdTcpStream,
    b: StdTcpStream,
    new_pipe: fn() -> io::Result<Pipe>,
) -> io::Result<Report> {
    let mut a = Watched::new(a);
    let mut b = Watched::new(b);
    let mut a_to_b = Half::new();
    let mut b_to_a = Half::new();
    poll_fn(|cx| {
        loop {
            let forward = a_to_b.poll(cx, &a, &b, new_pipe)?;
            let backward = b_to_a.poll(cx, &b, &a, new_pipe)?;
            if forward.is_ready() && backward.is_ready() {
                return Poll::Ready(Ok::<(), io::Error>(()));
            }
            // Watch each socket for what the directions now wait for on it.
            let on_a = a.watch(a_to_b.waits_for_source, b_to_a.waits_for_destination)?;
            let on_b = b.watch(b_to_a.waits_for_source, a_to_b.waits_for_destination)?;
            if on_a.stopped_reading && a_to_b.waits_for_destination {
                a_to_b.report.source_unwatched += 1;
            }
            if on_b.stopped_reading && b_to_a.waits_for_destination {
                b_to_a.report.source_unwatched += 1;
            }
            if !on_a.changed && !on_b.changed {
                return Poll::Pending;
            }
            // A new registration holds no waker yet: drive the directions again through it.
        }
    })
    .await?;
    Ok(Report {
        a_to_b: a_to_b.report,
        b_to_a: b_to_a.report,
    })
}

/// A relayed socket, registered with the runtime for exactly the readiness the relay waits for.
struct Watched {
    /// Declared before `socket`, so it is dropped (deregistered) while the descriptor is open.
    registration: Option<AsyncFd<Descriptor>>,
    socket: StdTcpStream,
    /// What `registration` watches.
    interest: Option<Interest>,
    /// The socket was once watched for room to write: it stays so (see the module doc).
    keeps_writable: bool,
}

/// The socket's descriptor as the registration sees it; the socket itself stays in
/// [`Watched`], so that a registration can be replaced without moving the socket.
struct Descriptor(RawFd);

impl AsRawFd for Descriptor {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// What [`Watched::watch`] changed.
struct WatchChange {
    /// The socket's registration was replaced: wakers must be registered anew.
    changed: bool,
    /// It was watched for readability and no longer is.
    stopped_reading: bool,
}

impl Watched {
    fn new(socket: StdTcpStream) -> Watched {
        Watched {
            registration: None,
            socket,
            interest: None,
            keeps_writable: false,
        }
    }

    fn watches(&self, interest: Interest) -> bool {
        self.interest.is_some_and(|watched| {
            (interest.is_readable() && watched.is_readable())
                || (interest.is_writable() && watched.is_writable())
        })
    }

    /// Registers the socket for `read` and `write` readiness as asked (room to write, once
    /// asked, for good), replacing its registration when that differs.
    fn watch(&mut self, read: bool, write: bool) -> io::Result<WatchChange> {
        self.keeps_writable |= write;
        let wanted = match (read, self.keeps_writable) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        };
        if wanted == self.interest {
            return Ok(WatchChange {
                changed: false,
                stopped_reading: false,
            });
        }
        let stopped_reading = self.watches(Interest::READABLE) && !read;
        self.registration = None;
        self.interest = None;
        if let Some(interest) = wanted {
            let descriptor = Descriptor(self.socket.as_raw_fd());
            // SAFETY: the descriptor belongs to `self.socket`, which outlives the registration
            // (dropped first, or replaced here) and is never closed or swapped while it lives.
            let registration = unsafe { AsyncFd::register_with_interest(descriptor, interest) }
                .map_err(|refused| refused.into_parts().1)?;
            self.registration = Some(registration);
            self.interest = wanted;
        }
        Ok(WatchChange {
            changed: true,
            stopped_reading,
        })
    }

    /// The runtime's readiness for `interest`; `None` when the socket is not watched for it.
    fn poll_guard(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
    ) -> Option<Poll<io::Result<AsyncFdReadyGuard<'_, Descriptor>>>> {
        let registration = self
            .registration
            .as_ref()
            .filter(|_| self.watches(interest))?;
        Some(if interest.is_readable() {
            registration.poll_read_ready(cx)
        } else {
            registration.poll_write_ready(cx)
        })
    }

    /// Whether the runtime reports the socket ready for `interest`; it must be watched for it.
    fn poll_ready(&self, cx: &mut Context<'_>, interest: Interest) -> Poll<io::Result<()>> {
        match self.poll_guard(cx, interest) {
            Some(ready) => ready.map_ok(drop),
            None => Poll::Pending,
        }
    }

    /// Runs `op` on the socket: at once when it is not watched for `interest` (a `WouldBlock`
    /// then asks the caller to watch it), else once the runtime reports it ready, forgetting
    /// that readiness when `op` finds otherwise. `None`: wait for `interest`.
    fn attempt<R>(
        &self,
        cx: &mut Context<'_>,
        interest: Interest,
        mut op: impl FnMut(&StdTcpStream) -> io::Result<R>,
    ) -> Option<io::Result<R>> {
        if !self.watches(interest) {
            return match op(&self.socket) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                result => Some(result),
            };
        }
        loop {
            let mut guard = match self.poll_guard(cx, interest)? {
                Poll::Pending => return None,
                Poll::Ready(Err(e)) => return Some(Err(e)),
                Poll::Ready(Ok(guard)) => guard,
            };
            if let Ok(result) = guard.try_io(|_| op(&self.socket)) {
                return Some(result);
            }
        }
    }
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
    /// Why the last `poll` returned `Pending`.
    waits_for_source: bool,
    waits_for_destination: bool,
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

/// What one step of a direction came to.
enum Step {
    Moved,
    /// Waits for the socket's readiness.
    Wait,
    /// Can go no further on this side (a full pipe): the other side decides.
    Stalled,
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
            waits_for_source: false,
            waits_for_destination: false,
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
    /// byte. On `Pending`, `waits_for_source` / `waits_for_destination` say what for; a waker
    /// is registered only where that socket is watched (the relay watches it, then polls again).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &Watched,
        dst: &Watched,
        new_pipe: fn() -> io::Result<Pipe>,
    ) -> Poll<io::Result<()>> {
        self.waits_for_source = false;
        self.waits_for_destination = false;
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut progress = false;
            let mut waits_for_source = false;
            let mut waits_for_destination = false;
            if self.splice_refused && self.pending() == 0 {
                tracing::debug!("splice refused: relaying through user space");
                self.splice_refused = false;
                self.switch_to_copy(Vec::new());
            }
            if self.can_read() {
                match self.fill(cx, src, new_pipe)? {
                    Step::Moved => progress = true,
                    Step::Wait => waits_for_source = true,
                    Step::Stalled => {}
                }
            }
            if self.pending() > 0 {
                match self.drain(cx, dst)? {
                    Step::Moved => progress = true,
                    Step::Wait => waits_for_destination = true,
                    Step::Stalled => {}
                }
            }
            if self.eof && self.pending() == 0 {
                // Every byte before the end of stream was delivered: forward it.
                dst.socket.shutdown(Shutdown::Write)?;
                self.mode = Mode::Idle;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if !progress {
                self.waits_for_source = waits_for_source;
                self.waits_for_destination = waits_for_destination;
                return Poll::Pending;
            }
        }
    }

    /// Reads from `src` into the pipe (or the copy buffer).
    fn fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &Watched,
        new_pipe: fn() -> io::Result<Pipe>,
    ) -> io::Result<Step> {
        if matches!(self.mode, Mode::Idle) {
            // No pipe before the first readable event, so an idle connection holds none.
            match src.poll_ready(cx, Interest::READABLE) {
                Poll::Pending => return Ok(Step::Wait),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => {}
            }
            match new_pipe() {
                Ok(pipe) => self.mode = Mode::Splice(pipe),
                Err(e) => {
                    tracing::debug!(error = %e, "no pipe: relaying through user space");
                    self.switch_to_copy(Vec::new());
                }
            }
        }
        match &mut self.mode {
            Mode::Idle => Ok(Step::Moved),
            Mode::Splice(pipe) => {
                let attempt = src.attempt(cx, Interest::READABLE, |socket| {
                    match nix::fcntl::splice(
                        socket.as_fd(),
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
                match attempt {
                    None => Ok(Step::Wait),
                    Some(Ok(Fill::Bytes(0))) => {
                        self.eof = true;
                        Ok(Step::Moved)
                    }
                    Some(Ok(Fill::Bytes(n))) => {
                        pipe.buffered += n;
                        self.report.spliced += n as u64;
                        Ok(Step::Moved)
                    }
                    Some(Ok(Fill::PipeFull)) => {
                        self.pipe_full = true;
                        Ok(Step::Stalled)
                    }
                    Some(Ok(Fill::Refused(errno))) => {
                        tracing::debug!(error = %errno, "splice from socket refused");
                        self.splice_refused = true;
                        Ok(Step::Moved)
                    }
                    Some(Err(e)) => Err(e),
                }
            }
            Mode::Copy(buf) => {
                match src.attempt(cx, Interest::READABLE, |mut socket| {
                    socket.read(&mut buf.data)
                }) {
                    None => Ok(Step::Wait),
                    Some(Ok(0)) => {
                        self.eof = true;
                        Ok(Step::Moved)
                    }
                    Some(Ok(n)) => {
                        buf.start = 0;
                        buf.end = n;
                        Ok(Step::Moved)
                    }
                    Some(Err(e)) => Err(e),
                }
            }
        }
    }

    /// Writes pending bytes to `dst`.
    fn drain(&mut self, cx: &mut Context<'_>, dst: &Watched) -> io::Result<Step> {
        match &mut self.mode {
            Mode::Idle => Ok(Step::Stalled),
            Mode::Splice(pipe) => {
                let attempt = dst.attempt(cx, Interest::WRITABLE, |socket| {
                    // The pipe holds data, so EAGAIN can only mean a full socket buffer.
                    nix::fcntl::splice(
                        &pipe.read,
                        None,
                        socket.as_fd(),
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
                match attempt {
                    None => Ok(Step::Wait),
                    Some(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
                    Some(Ok(n)) => {
                        pipe.buffered -= n;
                        self.report.written += n as u64;
                        self.pipe_full = false;
                        Ok(Step::Moved)
                    }
                    Some(Err(e)) if e.kind() == io::ErrorKind::Unsupported => {
                        // Move what the pipe holds into user space and go on copying.
                        tracing::debug!(error = %e, "splice to socket refused: relaying through user space");
                        let mut pending = vec![0; pipe.buffered];
                        File::from(pipe.read.try_clone()?).read_exact(&mut pending)?;
                        self.splice_refused = false;
                        self.pipe_full = false;
                        self.switch_to_copy(pending);
                        Ok(Step::Moved)
                    }
                    Some(Err(e)) => Err(e),
                }
            }
            Mode::Copy(buf) => {
                let attempt = dst.attempt(cx, Interest::WRITABLE, |mut socket| {
                    socket.write(&buf.data[buf.start..buf.end])
                });
                match attempt {
                    None => Ok(Step::Wait),
                    Some(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
                    Some(Ok(n)) => {
                        buf.start += n;
                        self.report.written += n as u64;
                        Ok(Step::Moved)
                    }
                    Some(Err(e)) => Err(e),
                }
            }
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
        let (a, b) = (a.into_std().unwrap(), b.into_std().unwrap());
        let relay = tokio::spawn(relay_with(a, b, new_pipe));
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

    /// While the server reads nothing, the client's bulk fills the pipe and the direction waits
    /// for the server alone: it must stop watching the client's socket (whose every segment
    /// would otherwise wake the runtime). Once the server has caught up and the client's socket
    /// is empty, it must watch it again, or a five-byte message would never be relayed.
    #[tokio::test]
    async fn a_direction_waiting_for_its_destination_unwatches_its_source_then_watches_it_again() {
        let Relayed {
            client,
            server,
            relay,
        } = relayed(Pipe::new).await;
        let (_client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let bulk = random_bytes(8 << 20, 11);
        let writer = tokio::spawn({
            let bulk = bulk.clone();
            async move {
                client_write.write_all(&bulk).await.unwrap();
                client_write
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = vec![0; bulk.len()];
        tokio::time::timeout(LIMIT, server_read.read_exact(&mut got))
            .await
            .expect("bulk not relayed")
            .unwrap();
        assert!(got == *bulk, "bulk corrupted");
        let mut client_write = writer.await.unwrap();

        // The relay has found the client's socket empty and waits for it again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client_write.write_all(b"tail!").await.unwrap();
        let mut tail = [0; 5];
        tokio::time::timeout(Duration::from_secs(5), server_read.read_exact(&mut tail))
            .await
            .expect("a short message after the bulk was not relayed")
            .unwrap();
        assert_eq!(&tail, b"tail!");

        client_write.shutdown().await.unwrap();
        server_write.shutdown().await.unwrap();
        let report = tokio::time::timeout(LIMIT, relay)
            .await
            .expect("relay did not finish")
            .unwrap()
            .unwrap();
        assert_eq!(report.a_to_b.written, bulk.len() as u64 + 5);
        assert!(
            report.a_to_b.source_unwatched > 0,
            "the direction kept watching its source while it waited for its destination: {report:?}"
        );
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
        let (a, _) = front.accept().await.unwrap();
        let b = TcpStream::connect(back.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = back.accept().await.unwrap();
        let relay = tokio::spawn(relay(a, b));
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

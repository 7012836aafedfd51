//! The HTTP/1.1 server side of client connections (gateway listeners and waypoint tunnels).
//!
//! Our own rather than hyper's for these reasons, all measured (docs/performance.md):
//! - **Idle connections hold no buffers.** A keep-alive connection idle for more than one to
//!   two [`IDLE_GRACE`] owns only its socket and its task; the read buffer is allocated when the
//!   next request arrives and the write buffer when its response is written. hyper keeps about
//!   24 KiB per connection for the connection's life.
//! - **Idle connections are small tasks.** The state of a request in flight (its head, the
//!   handler's response, the body being relayed) is most of a connection's future: about
//!   2 KiB. It lives in a box allocated when a connection becomes busy and freed when it has
//!   been idle as long, so a parked plaintext keep-alive connection's whole task
//!   is under 1 KiB. Under load a connection stays busy and allocates the box once.
//! - **Less work per request.** The head is parsed once into a `Request` whose header values
//!   share one buffer, a small response goes out in one write with its head, and no timer is
//!   armed per request ([`head_clock`]).
//!
//! The request body is pulled from the socket only when the handler asks for it
//! ([`body`]); `Expect: 100-continue` is answered at that moment. A client that closes its
//! side while its request is being handled cancels the request. A WebSocket upgrade hands the
//! socket, with any bytes read past the request, to the handler through [`OnUpgrade`].
//! HTTP/2 with prior knowledge is recognised by its preface and handed back to the caller.

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod date;
mod decode;
pub(crate) mod head;
mod head_clock;
pub(crate) mod rewind;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::header::{self, Entry, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as HttpBody, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch};

use crate::body::{Body, Inbound};
use crate::h1::body::BodySender;
use crate::h1::decode::{DecodeError, Decoded, Decoder};
use crate::h1::head::{Framing, HeadError, RequestHead, ResponseContext, ResponseFraming};
use crate::h1::head_clock::{HeadClock, Tick};
use crate::h1::rewind::Rewind;

/// A request head must arrive within this long of the connection starting to wait for it
/// (including the time an idle keep-alive connection waits for its next request; to within
/// one [`IDLE_GRACE`], see [`head_clock`]).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection keeps its buffers this long (to twice this long) after a request: under load
/// the next request follows within milliseconds and reuses them instead of allocating anew;
/// a connection idle for longer gives them back. Also the interval of a busy connection's
/// timer ([`head_clock`]), and so how long a stop may take to close a connection that has
/// just gone idle. Short, because connections opened together are all busy for this long:
/// the benchmark's 10,000 idle connections, opened 200 at a time, left the gateway at 55.5 MB
/// with 250 ms (idle after 250-500 ms) and at 45.0 MB with 125 ms.
const IDLE_GRACE: Duration = Duration::from_millis(125);
/// Free space wanted in the read buffer while a request head arrives. Most heads fit in one
/// allocation this small, which the allocator serves from its per-thread cache; larger heads
/// grow the buffer, up to `head::MAX_HEAD`.
const HEAD_SPARE: usize = 1024;
/// Free space wanted while a request body streams.
const BODY_SPARE: usize = 32 * 1024;
/// Free space wanted while only watching for the client closing (or pipelining).
const WATCH_SPARE: usize = 256;
/// The per-thread buffer an idle connection reads into before it has one of its own.
const SCRATCH_SIZE: usize = 16 * 1024;
/// The write buffer a response head starts with (grown when the head is larger).
const OUT_BUF: usize = 512;
/// Response data up to this size is copied next to its head, so both leave in one write.
const COPY_LIMIT: usize = 16 * 1024;
/// Buffered output above this is written before more of the response body is taken.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// After a response, an unread request body of up to this many bytes is read and dropped so
/// the connection can be reused; a larger one closes it.
const DRAIN_LIMIT: u64 = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// After closing with input unread: how long, and how much, to keep reading and dropping.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER_LIMIT: usize = 1024 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection's transport must offer.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The client's side of an accepted WebSocket upgrade.
pub(crate) type Upgraded = Rewind<Box<dyn Io>>;

/// Request extension on an upgrade request: resolves once the 101 answer has been written.
/// (Extensions must be `Clone`; the first [`OnUpgrade::wait`] takes the connection.)
#[derive(Clone)]
pub(crate) struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    pub(crate) async fn wait(self) -> Result<Upgraded, UpgradeError> {
        let receiver = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        receiver
            .ok_or(UpgradeError)?
            .await
            .map_err(|_| UpgradeError)
    }
}

/// The connection ended before the upgrade answer could be written.
#[derive(Debug, thiserror::Error)]
#[error("client connection closed before the upgrade completed")]
pub(crate) struct UpgradeError;

/// Handles one request; never fails (errors are responses).
pub(crate) type Service =
    Box<dyn FnMut(Request<Inbound>) -> BoxFuture<'static, Response<Body>> + Send>;

/// How a connection ended.
pub(crate) enum Ended<I> {
    Closed,
    /// The client opened with the HTTP/2 preface: serve HTTP/2 on this (preface included),
    /// with the same service.
    Http2(Rewind<I>, Service),
}

/// Serves HTTP/1.x requests on `io` until the client or `stop` ends the connection.
///
/// Not an `async fn`: the future would keep room for its arguments after they have moved
/// into the connection, and every idle connection's task would carry them twice.
pub(crate) fn serve<I: Io>(
    io: I,
    service: Service,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = Ended<I>> + Send {
    let mut conn = Conn {
        io,
        service,
        stop,
        read_buf: BytesMut::new(),
        out: Output::default(),
        cached_headers: None,
        head_deadline: None,
        heads: 0,
        read_closed: false,
        linger: false,
    };
    async move {
        let finish = loop {
            // Boxed while busy, dropped while parked: see the module documentation.
            match Box::pin(conn.run()).await {
                Ok(Finish::Idle) => {}
                other => break other,
            }
            if !conn.wait_while_idle().await {
                break Ok(Finish::Close);
            }
        };
        match finish {
            Ok(Finish::Http2) => {
                let Conn {
                    io,
                    read_buf,
                    service,
                    ..
                } = conn;
                return Ended::Http2(Rewind::new(read_buf.freeze(), io), service);
            }
            Ok(Finish::Upgrade(handover)) => {
                let Conn { io, read_buf, .. } = conn;
                let io: Box<dyn Io> = Box::new(io);
                // The handler may have given up in the meantime; the connection then just closes.
                let _ = handover.send(Rewind::new(read_buf.freeze(), io));
            }
            // (The loop above never ends with `Idle`; closing is the safe reading of it.)
            Ok(Finish::Close | Finish::Idle) => {
                let _ = poll_fn(|cx| Pin::new(&mut conn.io).poll_shutdown(cx)).await;
                if conn.linger {
                    conn.linger().await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "client connection ended with error"),
        }
        Ended::Closed
    }
}

/// How `Conn::run` ended.
enum Finish {
    Close,
    Http2,
    Upgrade(oneshot::Sender<Upgraded>),
    /// Idle for one to two [`IDLE_GRACE`] with nothing buffered: to be parked until bytes
    /// arrive.
    Idle,
}

/// What follows a request.
enum After {
    NextRequest,
    Close,
    Upgrade(oneshot::Sender<Upgraded>),
}

struct Conn<I> {
    io: I,
    service: Service,
    stop: watch::Receiver<bool>,
    read_buf: BytesMut,
    out: Output,
    /// The last response's header map, emptied: the next request's headers go into it.
    cached_headers: Option<HeaderMap>,
    /// When the next request head is due, carried over while the connection is parked (the
    /// time a keep-alive connection waits idle counts against [`HEAD_TIMEOUT`]).
    head_deadline: Option<tokio::time::Instant>,
    /// Request heads read. The HTTP/2 preface is only looked for before the first, however
    /// long the client waits (and is parked) before sending it.
    heads: u64,
    /// The client has closed its side (read returned end of stream).
    read_closed: bool,
    /// The connection closes with client bytes possibly still on the way (a refused head, a
    /// body left unread): they are read and dropped for a moment after the answer, since
    /// closing a socket with unread data resets it and the client could lose the answer.
    linger: bool,
}

/// The request body still to be read from the socket.
struct Pump {
    decoder: Decoder,
    /// `None` once the handler's body is complete or dropped.
    sender: Option<BodySender>,
    send_continue: bool,
}

/// How a wait for request bytes ended.
enum Wait {
    /// Bytes arrived (they are in the read buffer).
    Bytes,
    /// The client closed its side, the read failed, or the proxy stopped.
    Closed,
    /// The deadline passed first.
    Elapsed,
}

// Returned once per request and never stored: boxing the head would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(RequestHead),
    Http2,
    Closed,
    Idle,
}

impl<I: Io> Conn<I> {
    /// Serves requests until the connection ends or has been idle for one to two
    /// [`IDLE_GRACE`].
    async fn run(&mut self) -> io::Result<Finish> {
        // The busy period's one timer (see `head_clock`).
        let now = tokio::time::Instant::now();
        let due_in = self.head_deadline.take().map_or(HEAD_TIMEOUT, |deadline| {
            deadline.saturating_duration_since(now)
        });
        let mut clock = HeadClock::new(self.heads, due_in);
        let mut timer = pin!(tokio::time::sleep_until(now + IDLE_GRACE));
        loop {
            let head = match self.next_head(&mut clock, timer.as_mut()).await {
                Ok(Next::Head(head)) => head,
                Ok(Next::Http2) => return Ok(Finish::Http2),
                Ok(Next::Closed) => return Ok(Finish::Close),
                Ok(Next::Idle) => return Ok(Finish::Idle),
                Err(e) => {
                    tracing::debug!(error = %e, "bad request head");
                    self.out.clear();
                    head::encode_error(e.status(), &mut self.out.buf);
                    poll_fn(|cx| self.poll_flush(cx)).await?;
                    self.linger = true;
                    return Ok(Finish::Close);
                }
            };
            self.heads += 1;
            match self.exchange(head).await? {
                After::NextRequest => {}
                After::Close => return Ok(Finish::Close),
                After::Upgrade(handover) => return Ok(Finish::Upgrade(handover)),
            }
        }
    }

    /// Waits for the next request head. An idle connection (nothing buffered) gives up its
    /// buffers and returns [`Next::Idle`] once `clock` finds it idle, and closes then if the
    /// proxy has stopped. Until the first head, the HTTP/2 preface is looked for too.
    async fn next_head(
        &mut self,
        clock: &mut HeadClock,
        mut timer: Pin<&mut tokio::time::Sleep>,
    ) -> Result<Next, HeadError> {
        loop {
            if !self.read_buf.is_empty() {
                let n = self.read_buf.len().min(H2_PREFACE.len());
                if self.heads == 0 && self.read_buf[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Ok(Next::Http2);
                    }
                } else if let Some(head) =
                    head::parse_request(&mut self.read_buf, &mut self.cached_headers)?
                {
                    return Ok(Next::Head(head));
                }
            }
            if self.read_closed {
                return Ok(Next::Closed);
            }
            // A head begun is not cut short by the proxy stopping.
            match self.wait_for_bytes(timer.as_mut(), false).await {
                Wait::Bytes => continue,
                Wait::Closed => return Ok(Next::Closed),
                Wait::Elapsed => {}
            }
            let idle = self.read_buf.is_empty();
            match clock.fired(self.heads, !idle) {
                Tick::Overdue => {
                    tracing::debug!("request head timed out");
                    return Ok(Next::Closed);
                }
                _ if idle && *self.stop.borrow() => return Ok(Next::Closed),
                Tick::Idle => {
                    self.release_buffers();
                    self.head_deadline = Some(tokio::time::Instant::now() + clock.remaining());
                    return Ok(Next::Idle);
                }
                Tick::Waiting => timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + IDLE_GRACE),
            }
        }
    }

    /// A parked connection: waits, without buffers, for the next request's first bytes (read
    /// into the read buffer; true), or for the client to close, the proxy to stop or the head
    /// to be overdue (false).
    async fn wait_while_idle(&mut self) -> bool {
        let deadline = self
            .head_deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + HEAD_TIMEOUT);
        let timer = pin!(tokio::time::sleep_until(deadline));
        matches!(self.wait_for_bytes(timer, true).await, Wait::Bytes)
    }

    /// Reads what the client sends next into the read buffer, unless `timer` fires first or
    /// (with `watch_stop`) the proxy stops.
    async fn wait_for_bytes(
        &mut self,
        timer: Pin<&mut tokio::time::Sleep>,
        watch_stop: bool,
    ) -> Wait {
        let (io, read_buf, stop) = (&mut self.io, &mut self.read_buf, &mut self.stop);
        let read = poll_fn(|cx| poll_read_more(io, read_buf, cx, HEAD_SPARE));
        let stopped = async {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::select! {
            // Bytes first: a request that has arrived is served, whatever else happened.
            biased;
            result = read => match result {
                Ok(0) => {
                    self.read_closed = true;
                    Wait::Closed
                }
                Ok(_) => Wait::Bytes,
                Err(e) => {
                    tracing::debug!(error = %e, "client connection read failed");
                    Wait::Closed
                }
            },
            () = stopped, if watch_stop => Wait::Closed,
            () = timer => Wait::Elapsed,
        }
    }

    /// An idle connection gives its buffers back (see the module documentation).
    fn release_buffers(&mut self) {
        self.read_buf = BytesMut::new();
        self.out.release();
        self.cached_headers = None;
    }

    /// Serves one request.
    async fn exchange(&mut self, head: RequestHead) -> io::Result<After> {
        let RequestHead {
            request,
            framing,
            mut keep_alive,
            expect_continue,
            wants_upgrade,
            accepts_trailers,
        } = head;
        let connect = request.method() == Method::CONNECT;
        let context = ResponseContext {
            head_request: request.method() == Method::HEAD,
            connect,
            http10: request.version() == Version::HTTP_10,
        };
        let (mut pump, body) = match framing {
            Framing::Empty => (None, Inbound::Empty),
            Framing::Length(_) | Framing::Chunked => {
                let size = match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                };
                let (sender, body) = body::channel(size);
                let pump = Pump {
                    decoder: Decoder::new(framing),
                    sender: Some(sender),
                    send_continue: expect_continue,
                };
                (Some(pump), Inbound::H1(body))
            }
        };
        let mut request = request.map(|()| body);
        // An upgrade request with a body is not handed over: the body is not forwarded, and its
        // bytes must not reach the backend as tunnel data (a known smuggling pattern).
        let upgrade = (wants_upgrade && pump.is_none()).then(|| {
            let (tx, rx) = oneshot::channel();
            request
                .extensions_mut()
                .insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
            tx
        });
        let mut handling = (self.service)(request);

        // The handler runs while the request body streams in; a client that goes away
        // cancels it.
        let response = poll_fn(|cx| {
            if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                return Poll::Ready(Ok(response));
            }
            self.poll_request_side(cx, &mut pump).map(Err)
        })
        .await?;
        drop(handling);

        let (parts, mut body) = response.into_parts();
        let mut response = Response::from_parts(parts, ());
        let upgrading = response.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
        if response.status().is_informational() && !upgrading {
            // An interim status cannot end an exchange: the client would wait for the answer.
            tracing::debug!(status = %response.status(), "interim status as the final answer: 502");
            *response.status_mut() = StatusCode::BAD_GATEWAY;
        }
        let status = response.status();
        let exact_size = body.size_hint().exact();
        let framing = if upgrading {
            ResponseFraming::None
        } else {
            head::response_framing(&response, context, exact_size)
        };
        if context.head_request && status.is_success() {
            // A HEAD answer tells the length a GET would have had. (A backend's answer to
            // HEAD has an empty body: zero says nothing.)
            if let (Some(length @ 1..), Entry::Vacant(entry)) = (
                exact_size,
                response.headers_mut().entry(header::CONTENT_LENGTH),
            ) {
                entry.insert(HeaderValue::from(length));
            }
        }
        if framing == ResponseFraming::UntilClose
            || (connect && status.is_success())
            || *self.stop.borrow()
            || pump.as_ref().is_some_and(Pump::rules_out_reuse)
        {
            keep_alive = false;
        }
        self.out.reserve_head();
        head::encode_response(
            &response,
            framing,
            keep_alive,
            context.http10,
            &mut self.out.buf,
        );
        let mut headers = std::mem::take(response.headers_mut());
        headers.clear();
        self.cached_headers = Some(headers);
        if let Some(pump) = &mut pump {
            // The final answer is on its way: a 100 Continue may no longer precede it.
            pump.send_continue = false;
        }

        let mut writer = BodyWriter {
            framing,
            remaining: match framing {
                ResponseFraming::Length(n) => n,
                _ => 0,
            },
            trailers: accepts_trailers && framing == ResponseFraming::Chunked,
            done: framing == ResponseFraming::None,
            failed: false,
        };
        let complete = poll_fn(|cx| {
            // A client that goes away mid-response stops it, so the backend exchange is
            // abandoned at once rather than at the next failed write.
            if let Poll::Ready(e) = self.poll_request_side(cx, &mut pump) {
                return Poll::Ready(Err(e));
            }
            self.poll_response(cx, &mut body, &mut writer)
        })
        .await?;
        drop(body);
        // Input the client may still be sending must not reset the connection on close.
        self.linger = pump.is_some();
        if !complete {
            // The response could not be framed as declared: the client must see it end.
            return Ok(After::Close);
        }
        if let Some(handover) = upgrade.filter(|_| upgrading) {
            return Ok(After::Upgrade(handover));
        }
        if let Some(pump) = pump.take()
            && (!keep_alive || !self.drain(pump).await?)
        {
            self.linger = true;
            return Ok(After::Close);
        }
        // Any body was read to its end.
        self.linger = false;
        if keep_alive && !self.read_closed {
            Ok(After::NextRequest)
        } else {
            Ok(After::Close)
        }
    }

    /// Feeds the request body to the handler as it asks, or watches for the client closing.
    /// Ready only with an error that ends the connection.
    fn poll_request_side(
        &mut self,
        cx: &mut Context<'_>,
        pump: &mut Option<Pump>,
    ) -> Poll<io::Error> {
        let Some(active) = pump else {
            return self.poll_watch_close(cx);
        };
        loop {
            if let Some(sender) = &mut active.sender {
                match sender.poll_want(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(())) => active.sender = None,
                    Poll::Pending => return Poll::Pending,
                }
            }
            let Some(sender) = &mut active.sender else {
                // Nobody reads the rest: it is drained after the response.
                return Poll::Pending;
            };
            if active.send_continue {
                if self.out.is_empty() {
                    self.out
                        .buf
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                if let Err(e) = ready!(self.poll_flush(cx)) {
                    return Poll::Ready(e);
                }
                active.send_continue = false;
            }
            match active.decoder.decode(&mut self.read_buf) {
                Ok(Decoded::Data(data)) => {
                    sender.send(data);
                    if active.decoder.remaining() == Some(0) {
                        // Complete: the handler may not poll again (its end is known from the
                        // length), so the socket is watched for the client leaving from now on.
                        if let Some(sender) = active.sender.take() {
                            sender.finish();
                        }
                        *pump = None;
                        return self.poll_watch_close(cx);
                    }
                }
                Ok(Decoded::Done) => {
                    if let Some(sender) = active.sender.take() {
                        sender.finish();
                    }
                    *pump = None;
                    return self.poll_watch_close(cx);
                }
                Ok(Decoded::NeedMore) if self.read_closed => {
                    if let Some(sender) = active.sender.take() {
                        sender.fail(DecodeError::Incomplete);
                    }
                    return Poll::Pending;
                }
                Ok(Decoded::NeedMore) => {
                    match ready!(poll_read_more(
                        &mut self.io,
                        &mut self.read_buf,
                        cx,
                        BODY_SPARE
                    )) {
                        Ok(0) => self.read_closed = true,
                        Ok(_) => {}
                        Err(e) => {
                            if let Some(sender) = active.sender.take() {
                                sender.fail(DecodeError::Incomplete);
                            }
                            return Poll::Ready(e);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "bad request body");
                    if let Some(sender) = active.sender.take() {
                        sender.fail(e);
                    }
                    // The framing is lost: nothing after this can be read as a request.
                    self.read_closed = true;
                    return Poll::Pending;
                }
            }
        }
    }

    /// With the request read, the socket is still watched so a client that disconnects
    /// cancels its request; pipelined bytes are kept for the next request.
    fn poll_watch_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.read_closed || self.read_buf.len() >= head::MAX_HEAD {
                return Poll::Pending;
            }
            match ready!(poll_read_more(
                &mut self.io,
                &mut self.read_buf,
                cx,
                WATCH_SPARE
            )) {
                Ok(0) => {
                    self.read_closed = true;
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "client closed its connection while its request was being handled",
                    ));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(e),
            }
        }
    }

    /// Writes the response body; `Ok(false)` when it could not be completed as framed.
    fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut Body,
        writer: &mut BodyWriter,
    ) -> Poll<io::Result<bool>> {
        loop {
            if writer.failed {
                // Sticky: the body is never polled again, so a later clean end cannot make
                // a cut-off answer look complete. What was written before goes out first.
                let _ = ready!(self.poll_flush(cx));
                return Poll::Ready(Ok(false));
            }
            if writer.done {
                ready!(self.poll_flush(cx))?;
                return Poll::Ready(Ok(true));
            }
            if self.out.len() >= OUTPUT_HIGH_WATER {
                ready!(self.poll_flush(cx))?;
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => writer.write(frame, &mut self.out),
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "response body failed: closing the connection");
                    writer.failed = true;
                }
                Poll::Ready(None) => writer.finish(&mut self.out),
                Poll::Pending => {
                    ready!(self.poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        }
    }

    /// Reads and drops the rest of an unread request body, within limits. `Ok(true)`: the
    /// connection is positioned at the next request.
    async fn drain(&mut self, mut pump: Pump) -> io::Result<bool> {
        // The handler is done with the body: anything it did not take is dropped.
        if let Some(sender) = pump.sender.take() {
            sender.fail(DecodeError::Incomplete);
        }
        let mut drained = 0u64;
        let drain = poll_fn(|cx| {
            loop {
                match pump.decoder.decode(&mut self.read_buf) {
                    Ok(Decoded::Data(data)) => {
                        drained += data.len() as u64;
                        if drained > DRAIN_LIMIT {
                            return Poll::Ready(Ok(false));
                        }
                    }
                    Ok(Decoded::Done) => return Poll::Ready(Ok(true)),
                    Ok(Decoded::NeedMore) if self.read_closed => return Poll::Ready(Ok(false)),
                    Ok(Decoded::NeedMore) => {
                        let read = poll_read_more(&mut self.io, &mut self.read_buf, cx, BODY_SPARE);
                        if ready!(read)? == 0 {
                            self.read_closed = true;
                        }
                    }
                    Err(_) => return Poll::Ready(Ok(false)),
                }
            }
        });
        tokio::time::timeout(DRAIN_TIMEOUT, drain)
            .await
            .unwrap_or(Ok(false))
    }

    /// Reads and drops what the client still sends, for a bounded time and amount.
    async fn linger(&mut self) {
        let mut dropped = 0;
        let drop_input = poll_fn(|cx| {
            loop {
                self.read_buf.clear();
                match ready!(poll_read_more(
                    &mut self.io,
                    &mut self.read_buf,
                    cx,
                    BODY_SPARE
                )) {
                    Ok(n) if n > 0 && dropped < LINGER_LIMIT => dropped += n,
                    _ => return Poll::Ready(()),
                }
            }
        });
        let _ = tokio::time::timeout(LINGER_TIMEOUT, drop_input).await;
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out.poll_write_to(&mut self.io, cx)
    }
}

/// Reads what the socket has into `buf`, first making room for about `spare` bytes. With no
/// buffer (an idle connection), reads into a per-thread scratch buffer, so a buffer is
/// allocated only once data is there, and sized to it.
fn poll_read_more<I: Io>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    spare: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        return SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n > 0 {
                // Room to watch the socket while the request is handled, without growing.
                *buf = BytesMut::with_capacity((n + WATCH_SPARE).max(spare));
                buf.extend_from_slice(read.filled());
            }
            Poll::Ready(Ok(n))
        });
    }
    if buf.capacity() - buf.len() < spare / 4 {
        buf.reserve(spare);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

impl Pump {
    /// Whether the connection must close after the response rather than skip the rest of
    /// the body: it is too large or of unknown size, or the client awaits a 100 Continue that
    /// was never sent and so may never send it.
    fn rules_out_reuse(&self) -> bool {
        self.send_continue || self.decoder.remaining().is_none_or(|r| r > DRAIN_LIMIT)
    }
}

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// Encodes response body frames for the chosen framing.
struct BodyWriter {
    framing: ResponseFraming,
    remaining: u64,
    trailers: bool,
    done: bool,
    /// The body failed or broke its framing: the connection must close without an end marker.
    failed: bool,
}

impl BodyWriter {
    fn new(framing: ResponseFraming, trailers: bool) -> BodyWriter {
        BodyWriter {
            framing,
            remaining: match framing {
                ResponseFraming::Length(length) => length,
                _ => 0,
            },
            trailers,
            done: framing == ResponseFraming::None,
            failed: false,
        }
    }

    /// Sets `failed` when the body breaks its declared length.
    fn write(&mut self, frame: Frame<Bytes>, out: &mut Output) {
        let frame = match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    return;
                }
                match self.framing {
                    ResponseFraming::None => {}
                    ResponseFraming::Length(_) => {
                        if data.len() as u64 > self.remaining {
                            tracing::debug!("response body longer than its Content-Length");
                            self.failed = true;
                            return;
                        }
                        self.remaining -= data.len() as u64;
                        out.push_data(data);
                    }
                    ResponseFraming::Chunked => {
                        let mut size = [0u8; 18];
                        let len = hex_size(data.len(), &mut size);
                        out.buf.extend_from_slice(&size[..len]);
                        out.push_data(data);
                        out.buf.extend_from_slice(b"\r\n");
                    }
                    ResponseFraming::UntilClose => out.push_data(data),
                }
                return;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers()
            && self.trailers
        {
            out.buf.extend_from_slice(b"0\r\n");
            head::encode_trailers(&trailers, &mut out.buf);
            out.buf.extend_from_slice(b"\r\n");
            self.done = true;
        }
    }

    /// Ends the body; sets `failed` when it ended short of its declared length or can only
    /// end with the connection.
    fn finish(&mut self, out: &mut Output) {
        if self.done {
            return;
        }
        match self.framing {
            ResponseFraming::Length(_) if self.remaining > 0 => {
                tracing::debug!(
                    missing = self.remaining,
                    "response body shorter than its Content-Length"
                );
                self.failed = true;
            }
            ResponseFraming::Chunked => {
                out.buf.extend_from_slice(b"0\r\n\r\n");
                self.done = true;
            }
            // The end is the connection's close.
            ResponseFraming::UntilClose => self.failed = true,
            _ => self.done = true,
        }
    }
}

/// Writes `n` as a chunk-size line (`1f\r\n`) into `dst`; returns its length.
fn hex_size(n: usize, dst: &mut [u8; 18]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        dst[digits - 1 - i] = DIGITS[(n >> (4 * i)) & 0xf];
    }
    dst[digits] = b'\r';
    dst[digits + 1] = b'\n';
    digits + 2
}

/// Bytes waiting to be written: small pieces copied into `buf`, large body chunks queued as
/// they are and written with vectored writes.
#[derive(Default)]
struct Output {
    /// Sealed pieces, written before `buf`.
    queue: VecDeque<Bytes>,
    buf: Vec<u8>,
    /// How much of `buf` has been written.
    written: usize,
}

impl Output {
    fn len(&self) -> usize {
        self.queue.iter().map(Bytes::len).sum::<usize>() + self.buf.len() - self.written
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.buf.len() == self.written
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.buf.clear();
        self.written = 0;
    }

    /// Gives the buffers back while the connection is idle.
    fn release(&mut self) {
        *self = Output::default();
    }

    /// Room for a typical response head, so encoding it does not grow the buffer step by step.
    fn reserve_head(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf.reserve(OUT_BUF);
        }
    }

    fn push_data(&mut self, data: Bytes) {
        if data.len() <= COPY_LIMIT {
            self.buf.extend_from_slice(&data);
            return;
        }
        if self.buf.len() > self.written {
            let mut pending = std::mem::take(&mut self.buf);
            pending.drain(..self.written);
            self.queue.push_back(Bytes::from(pending));
        } else {
            self.buf.clear();
        }
        self.written = 0;
        self.queue.push_back(data);
    }

    fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let n = if io.is_write_vectored() && !self.queue.is_empty() {
                let mut slices = [IoSlice::new(&[]); 16];
                let mut count = 0;
                for piece in self.queue.iter().take(slices.len() - 1) {
                    slices[count] = IoSlice::new(piece);
                    count += 1;
                }
                if count == self.queue.len() && self.buf.len() > self.written {
                    slices[count] = IoSlice::new(&self.buf[self.written..]);
                    count += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?
            } else if let Some(piece) = self.queue.front() {
                ready!(Pin::new(&mut *io).poll_write(cx, piece))?
            } else {
                ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.written..]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        self.buf.clear();
        self.written = 0;
        Pin::new(&mut *io).poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                self.written += n;
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests;

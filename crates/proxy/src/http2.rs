//! HTTP/2 for clients (h2c, ALPN `h2`, and HTTP/2 inside a waypoint's tunnels): the `h2` crate's
//! server, with every request's future polled inside the connection's own task.
//!
//! hyper's HTTP/2 server spawns a task per stream. For a proxy whose request futures mostly wait
//! on an upstream, that task costs more than the work: an aligned allocation, a trip through the
//! scheduler per wake, and a wake of the connection task for each frame the stream queues.
//! Polled here, the streams of a connection share its task (and so its core), as they share a
//! worker thread in Envoy and HAProxy, and the frames they queue in one poll go out in one write.
//!
//! What hyper's server did around `h2` is kept: its settings, the `Date` and `Content-Length` it
//! adds to responses, the connection-specific headers it strips, body flow control with
//! backpressure, reset propagation both ways, a graceful `GOAWAY` on stop, and a panic in one
//! request costing that stream only.
//!
//! Added to it, as the HTTP/1.1 server has them: a connection that has no stream open for
//! [`IDLE_TIMEOUT`] is closed, and one whose client stops answering PINGs while streams are open
//! is dropped with them (a vanished client would otherwise hold its upstream exchanges forever).

use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use h2::server::SendResponse;
use h2::{Ping, PingPong};
use h2::{Reason, RecvStream, SendStream};
use http::header;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::{Duration, Instant, Sleep};

use crate::body::{Body, BodyError, Inbound};
use crate::h1::{self, Service};
// While streams are open, the client is PINGed and dropped if it does not answer, on the
// schedule HBONE connections keep.
use crate::hbone::{KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT};
use crate::headers::{self, HopByHop};

/// hyper's server defaults, which clients and the conformance suite have been served with.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 200;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The client preface must be read (and the server's SETTINGS written) within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no stream open for this long is closed with `GOAWAY(NO_ERROR)`, which
/// clients (gRPC's included) take as a cue to reconnect when next needed. Longer than the
/// HTTP/1.1 server's 30 s: one HTTP/2 connection carries all of a client's requests, and costs
/// a handshake to reopen.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the `GOAWAY` of an idle close may take to be written before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves HTTP/2 on `io` (its first bytes are the client preface) until the client closes or
/// `stop` flips; on stop, streams already open are finished after a `GOAWAY`.
pub(crate) async fn serve<I: h1::Io>(
    io: I,
    mut service: Service,
    mut stop: watch::Receiver<bool>,
) -> Result<(), h2::Error> {
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .handshake::<_, Bytes>(io);
    let stopped = async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(stopped);
    let timer = tokio::time::sleep(HANDSHAKE_TIMEOUT);
    tokio::pin!(timer);
    // A handshake that can complete does (the client may have sent requests with it); a stop
    // before that drops a connection that has not yet asked for anything.
    let mut conn = tokio::select! {
        biased;
        conn = handshake => conn?,
        () = stopped.as_mut() => return Ok(()),
        () = timer.as_mut() => {
            tracing::debug!("HTTP/2 handshake timed out");
            return Ok(());
        }
    };
    timer.as_mut().reset(Instant::now() + KEEP_ALIVE_INTERVAL);
    let mut liveness = Liveness::new(conn.ping_pong());
    let mut streams = FuturesUnordered::new();
    let mut stopping = false;
    poll_fn(|cx| {
        if !stopping && stopped.as_mut().poll(cx).is_ready() {
            stopping = true;
            conn.graceful_shutdown();
        }
        loop {
            // Streams first: the frames they queue are written by the connection's poll below.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    if let Some(stream) = Stream::start(request, respond, &mut service) {
                        streams.push(stream);
                        liveness.busy();
                    }
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // Closed: every stream has ended, or the client is gone and so are they.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {}
            }
            let open = !streams.is_empty();
            if !open {
                liveness.idle();
            }
            match ready!(liveness.poll_expiry(timer.as_mut(), cx, open)) {
                Expiry::Idle => {
                    tracing::debug!("idle HTTP/2 connection closed");
                    // No stream is open or waiting to be accepted, so the GOAWAY's last stream
                    // is the last one served: the client may safely retry any newer one.
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                }
                Expiry::Unresponsive => {
                    tracing::debug!("HTTP/2 client stopped answering pings: connection dropped");
                    return Poll::Ready(Ok(()));
                }
                Expiry::CloseStalled => return Poll::Ready(Ok(())),
            }
        }
    })
    .await
}

/// Why the connection's timer ends it.
enum Expiry {
    /// No stream has been open for [`IDLE_TIMEOUT`]: close it with a `GOAWAY`.
    Idle,
    /// A PING went unanswered while streams were open: drop it.
    Unresponsive,
    /// The idle close's `GOAWAY` could not be written in time: drop it.
    CloseStalled,
}

/// What the connection's single timer is waiting for. The timer is reset only when it fires
/// (or a PING is answered), so requests cost no timer work: a connection becoming idle reads
/// the clock, and the timer checks the time when it next fires.
struct Liveness {
    ping: Option<PingPong>,
    phase: Phase,
    /// When the last stream ended (or the connection started), while none is open.
    idle_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Watching,
    AwaitingPong,
    Closing,
}

impl Liveness {
    fn new(ping: Option<PingPong>) -> Liveness {
        Liveness {
            ping,
            phase: Phase::Watching,
            idle_since: None,
        }
    }

    fn busy(&mut self) {
        self.idle_since = None;
    }

    fn idle(&mut self) {
        if self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
        }
    }

    fn poll_expiry(
        &mut self,
        mut timer: Pin<&mut Sleep>,
        cx: &mut Context<'_>,
        open: bool,
    ) -> Poll<Expiry> {
        if self.phase == Phase::AwaitingPong
            && let Some(ping) = &mut self.ping
            && ping.poll_pong(cx).is_ready()
        {
            // An error here means the connection is ending, which its own poll reports.
            self.phase = Phase::Watching;
            timer.as_mut().reset(Instant::now() + KEEP_ALIVE_INTERVAL);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            let now = Instant::now();
            match self.phase {
                Phase::AwaitingPong => return Poll::Ready(Expiry::Unresponsive),
                Phase::Closing => return Poll::Ready(Expiry::CloseStalled),
                Phase::Watching if open => {
                    let sent = self
                        .ping
                        .as_mut()
                        .is_some_and(|ping| ping.send_ping(Ping::opaque()).is_ok());
                    if sent {
                        self.phase = Phase::AwaitingPong;
                        timer.as_mut().reset(now + KEEP_ALIVE_TIMEOUT);
                    } else {
                        timer.as_mut().reset(now + KEEP_ALIVE_INTERVAL);
                    }
                }
                Phase::Watching => {
                    let closes_at = self.idle_since.unwrap_or(now) + IDLE_TIMEOUT;
                    if closes_at <= now {
                        self.phase = Phase::Closing;
                        timer.as_mut().reset(now + CLOSE_TIMEOUT);
                        return Poll::Ready(Expiry::Idle);
                    }
                    // Keep firing at the ping interval, so pings start soon after streams do.
                    timer
                        .as_mut()
                        .reset(closes_at.min(now + KEEP_ALIVE_INTERVAL));
                }
            }
        }
    }
}

/// One request, from the handler's future to the last frame of its response.
struct Stream {
    state: State,
}

enum State {
    Handling {
        respond: SendResponse<Bytes>,
        response: BoxFuture<'static, Response<Body>>,
    },
    Sending(ResponseBody),
    Done,
}

impl Stream {
    fn start(
        request: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        service: &mut Service,
    ) -> Option<Stream> {
        let (parts, recv) = request.into_parts();
        let length = content_length(&parts.headers);
        let body = if recv.is_end_stream() {
            Inbound::Empty
        } else if parts.method == Method::CONNECT {
            // A CONNECT stream would be a tunnel, which the proxy does not offer over HTTP/2 (nor
            // did it with hyper's server, whose upgrade it never took): one with a body is reset,
            // an empty one is routed like any request.
            if length.is_some_and(|n| n != 0) {
                respond.send_reset(Reason::INTERNAL_ERROR);
                return None;
            }
            Inbound::Empty
        } else {
            Inbound::H2(RequestBody::new(recv, length))
        };
        let response = service(Request::from_parts(parts, body));
        Some(Stream {
            state: State::Handling { respond, response },
        })
    }
}

impl Future for Stream {
    type Output = ();

    /// A panic resets its own stream only: the connection's other streams share this task.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let state = &mut self.state;
        match panic::catch_unwind(AssertUnwindSafe(|| Stream::poll_state(state, cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!("an HTTP/2 request panicked; its stream is reset");
                match state {
                    State::Handling { respond, .. } => respond.send_reset(Reason::INTERNAL_ERROR),
                    State::Sending(body) => body.send.send_reset(Reason::INTERNAL_ERROR),
                    State::Done => {}
                }
                *state = State::Done;
                Poll::Ready(())
            }
        }
    }
}

impl Stream {
    fn poll_state(state: &mut State, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match state {
                State::Handling { respond, response } => {
                    let Poll::Ready(response) = response.as_mut().poll(cx) else {
                        // A client that resets the stream cancels the request.
                        if let Poll::Ready(reason) = respond.poll_reset(cx) {
                            tracing::debug!(?reason, "client reset an HTTP/2 stream");
                            *state = State::Done;
                            return Poll::Ready(());
                        }
                        return Poll::Pending;
                    };
                    let (mut parts, body) = response.into_parts();
                    let end_stream = body.is_end_stream();
                    prepare_headers(&mut parts.headers, end_stream, &body);
                    match respond.send_response(Response::from_parts(parts, ()), end_stream) {
                        Ok(send) if !end_stream => {
                            *state = State::Sending(ResponseBody::new(send, body));
                        }
                        Ok(_) => {
                            *state = State::Done;
                            return Poll::Ready(());
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "sending an HTTP/2 response failed");
                            respond.send_reset(Reason::INTERNAL_ERROR);
                            *state = State::Done;
                            return Poll::Ready(());
                        }
                    }
                }
                State::Sending(body) => {
                    if let Err(e) = ready!(body.poll_send(cx)) {
                        tracing::debug!(error = %e, "HTTP/2 response body ended early");
                    }
                    *state = State::Done;
                    return Poll::Ready(());
                }
                State::Done => return Poll::Ready(()),
            }
        }
    }
}

/// What hyper's server did to a response head before `h2` saw it: hop-by-hop headers have no
/// meaning in HTTP/2 and `h2` would refuse the response. Relayed HTTP/1 responses have lost them
/// already, so the usual case is one pass over the names that finds none.
fn prepare_headers(headers: &mut HeaderMap, end_stream: bool, body: &Body) {
    let hop_by_hop = HopByHop::scan(headers);
    if !hop_by_hop.is_empty() {
        headers::strip_scanned(headers, hop_by_hop, false);
        // The shared strip keeps `TE: trailers`, which requests need; a response has no use
        // for it.
        headers.remove(header::TE);
    }
    let (mut has_date, mut has_length) = (false, false);
    for name in headers.keys() {
        has_date |= name == header::DATE;
        has_length |= name == header::CONTENT_LENGTH;
    }
    if !has_date && let Some(date) = h1::date::header_value() {
        headers.insert(header::DATE, date);
    }
    if !end_stream
        && !has_length
        && let Some(length) = body.size_hint().exact()
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// A response body on its way to the client, at the pace the client's window allows.
struct ResponseBody {
    send: SendStream<Bytes>,
    body: Body,
    /// A chunk read from `body` that waits for send capacity (and whether it ends the body).
    waiting: Option<(Bytes, bool)>,
}

impl ResponseBody {
    fn new(send: SendStream<Bytes>, body: Body) -> ResponseBody {
        ResponseBody {
            send,
            body,
            waiting: None,
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        let result = ready!(self.poll_send_inner(cx));
        if let Err(e) = &result {
            self.send.send_reset(reset_reason(e.as_ref()));
        }
        Poll::Ready(result)
    }

    fn poll_send_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        loop {
            if let Poll::Ready(reason) = self.send.poll_reset(cx) {
                return Poll::Ready(Err(format!("client reset the stream: {reason:?}").into()));
            }
            if let Some((chunk, end_stream)) = self.waiting.take() {
                // Wait for the previous chunk to be given capacity before sending this one, so a
                // slow reader holds back the upstream instead of filling memory.
                while self.send.capacity() == 0 {
                    match self.send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                        Poll::Ready(None) => {
                            return Poll::Ready(Err("stream closed while sending".into()));
                        }
                        Poll::Pending => {
                            self.waiting = Some((chunk, end_stream));
                            return Poll::Pending;
                        }
                    }
                }
                self.send.send_data(chunk, end_stream)?;
                if end_stream {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let Some(frame) = ready!(Pin::new(&mut self.body).poll_frame(cx)) else {
                self.send.send_data(Bytes::new(), true)?;
                return Poll::Ready(Ok(()));
            };
            match frame?.into_data() {
                Ok(chunk) => {
                    let end_stream = self.body.is_end_stream();
                    if end_stream || chunk.is_empty() {
                        // Nothing follows (or nothing to pace): `h2` queues it until the
                        // window opens.
                        self.send.send_data(chunk, end_stream)?;
                        if end_stream {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // A claim of one byte, not the chunk: `h2` grows it to what is buffered, and
                    // a large claim would hold connection window from other streams.
                    self.send.reserve_capacity(1);
                    self.waiting = Some((chunk, false));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.send.reserve_capacity(0);
                        self.send.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

/// The reset a failed response body sends: the upstream's own HTTP/2 reason when there is one.
fn reset_reason(error: &(dyn StdError + 'static)) -> Reason {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        source = e.source();
    }
    Reason::INTERNAL_ERROR
}

/// The announced length, if every `Content-Length` value states the same one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let n = h1::head::parse_content_length(value.as_bytes().trim_ascii())?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// A request body from an HTTP/2 client. Window is given back as soon as a chunk is read:
/// the proxy's own backpressure is that it reads only as fast as the upstream takes.
#[derive(Debug)]
pub(crate) struct RequestBody {
    recv: RecvStream,
    data_done: bool,
    /// Bytes still announced by `Content-Length`.
    remaining: Option<u64>,
}

impl RequestBody {
    fn new(recv: RecvStream, remaining: Option<u64>) -> RequestBody {
        RequestBody {
            recv,
            data_done: false,
            remaining,
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = this.recv.flow_control().release_capacity(chunk.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(chunk.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // A client may end its stream with NO_ERROR once the answer has come; one that
                // cancels (CANCEL, or any other reason) cut the body short, and the upstream must
                // see an error rather than a shorter body.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => {
                    this.data_done = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::sync::{Notify, oneshot};
    use tokio::time::timeout;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Starts `serve` on one end of an in-memory pipe and an HTTP/2 client on the other, whose
    /// stream window is `window`. Returns the client and the server's stop switch and task.
    async fn start(
        service: Service,
        window: u32,
    ) -> (
        h2::client::SendRequest<Bytes>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ) {
        // A dropped switch never freezes: the client's connection is driven until it ends.
        let (client, _, stop, server) = start_freezable(service, window).await;
        (client, stop, server)
    }

    /// As [`start`], with a switch that stops the client's connection from being driven (it
    /// stays open, but reads nothing and answers nothing), as a client that vanished.
    async fn start_freezable(
        service: Service,
        window: u32,
    ) -> (
        h2::client::SendRequest<Bytes>,
        oneshot::Sender<()>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(server_io, service, stop_rx));
        let (client, mut connection) = h2::client::Builder::new()
            .initial_window_size(window)
            .handshake::<_, Bytes>(client_io)
            .await
            .unwrap();
        let (freeze_tx, freeze_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                _ = &mut connection => return,
                Ok(()) = freeze_rx => {}
            }
            std::future::pending::<()>().await;
            drop(connection);
        });
        (client, freeze_tx, stop_tx, server)
    }

    /// A service whose requests never finish; `dropped` resolves (with an error) once the
    /// request's future is dropped.
    fn never_answers() -> (Service, oneshot::Receiver<()>) {
        let (dropped_tx, dropped) = oneshot::channel::<()>();
        let mut dropped_tx = Some(dropped_tx);
        let service: Service = Box::new(move |_req: Request<Inbound>| {
            // Dropped with the request's future: the receiver then sees the sender gone.
            let guard = dropped_tx.take();
            Box::pin(async move {
                let _guard = guard;
                std::future::pending::<Response<Body>>().await
            })
        });
        (service, dropped)
    }

    fn echo() -> Service {
        Box::new(|req: Request<Inbound>| {
            Box::pin(async move {
                let (parts, body) = req.into_parts();
                let mut response = Response::new(Body::Stream(body));
                if let Some(kind) = parts.headers.get("content-type") {
                    response.headers_mut().insert("content-type", kind.clone());
                }
                response
            })
        })
    }

    fn get(path: &str) -> Request<()> {
        Request::get(format!("http://example.com{path}"))
            .body(())
            .unwrap()
    }

    async fn read_all(body: &mut RecvStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            out.extend_from_slice(&chunk);
        }
        out
    }

    #[tokio::test]
    async fn request_bodies_and_trailers_reach_the_service_and_come_back() {
        let (mut client, _stop, _server) = start(echo(), 1 << 20).await;
        let request = Request::post("http://example.com/echo")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(Bytes::from_static(b"hello, "), false)
            .unwrap();
        send.send_data(Bytes::from_static(b"world"), false).unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        send.send_trailers(trailers).unwrap();

        let response = timeout(LIMIT, response).await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/plain");
        let mut body = response.into_body();
        assert_eq!(read_all(&mut body).await, b"hello, world");
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[tokio::test]
    async fn response_heads_lose_connection_headers_and_gain_date_and_length() {
        let service: Service = Box::new(|req: Request<Inbound>| {
            Box::pin(async move {
                // A bodiless request arrives with an empty body.
                assert!(matches!(req.body(), Inbound::Empty));
                let mut response = Response::new(Body::full(Bytes::from_static(b"hello")));
                let headers = response.headers_mut();
                // Naming `Content-Length` removes the backend's, and the body's own is added.
                headers.insert(
                    "connection",
                    HeaderValue::from_static("close, x-hop, content-length"),
                );
                headers.insert("content-length", HeaderValue::from_static("5"));
                headers.insert("x-hop", HeaderValue::from_static("1"));
                headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
                headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
                headers.insert("te", HeaderValue::from_static("trailers"));
                headers.insert("x-kept", HeaderValue::from_static("yes"));
                response
            })
        });
        let (mut client, _stop, _server) = start(service, 1 << 20).await;
        let (response, _) = client.send_request(get("/"), true).unwrap();
        let response = timeout(LIMIT, response).await.unwrap().unwrap();
        let headers = response.headers();
        for gone in [
            "connection",
            "x-hop",
            "keep-alive",
            "transfer-encoding",
            "te",
        ] {
            assert!(!headers.contains_key(gone), "{gone} was relayed");
        }
        assert_eq!(headers["x-kept"], "yes");
        assert_eq!(headers["content-length"], "5");
        assert!(httpdate::parse_http_date(headers["date"].to_str().unwrap()).is_ok());
        assert_eq!(read_all(&mut response.into_body()).await, b"hello");
    }

    #[tokio::test]
    async fn a_client_reset_cancels_the_request() {
        let (service, dropped_rx) = never_answers();
        let (mut client, _stop, _server) = start(service, 1 << 20).await;
        let (response, mut send) = client.send_request(get("/slow"), false).unwrap();
        // Let the request reach the service before resetting it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        send.send_reset(Reason::CANCEL);
        drop(response);
        assert!(timeout(LIMIT, dropped_rx).await.unwrap().is_err());
        // The connection serves on.
        let (response, _) = client.send_request(get("/slow"), true).unwrap();
        assert!(timeout(Duration::from_millis(100), response).await.is_err());
    }

    #[tokio::test]
    async fn a_body_the_client_cancels_midway_fails_rather_than_ending_short() {
        let (result_tx, result_rx) = oneshot::channel();
        let mut result_tx = Some(result_tx);
        let service: Service = Box::new(move |req: Request<Inbound>| {
            let result_tx = result_tx.take();
            Box::pin(async move {
                let read = req.into_body().collect().await.map(|body| body.to_bytes());
                if let Some(tx) = result_tx {
                    let _ = tx.send(read);
                }
                Response::new(Body::empty())
            })
        });
        let (mut client, _stop, _server) = start(service, 1 << 20).await;
        let request = Request::post("http://example.com/upload").body(()).unwrap();
        let (_response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(Bytes::from_static(b"the first half"), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        send.send_reset(Reason::CANCEL);
        let read = timeout(LIMIT, result_rx).await.unwrap().unwrap();
        assert!(read.is_err(), "a cancelled body read as complete: {read:?}");
    }

    #[tokio::test]
    async fn a_panicking_request_resets_its_stream_only() {
        let service: Service = Box::new(|req: Request<Inbound>| {
            Box::pin(async move {
                if req.uri().path() == "/panic" {
                    panic!("a handler bug");
                }
                Response::new(Body::full(Bytes::from_static(b"fine")))
            })
        });
        let (mut client, _stop, _server) = start(service, 1 << 20).await;
        let (panicking, _) = client.send_request(get("/panic"), true).unwrap();
        let error = timeout(LIMIT, panicking).await.unwrap().unwrap_err();
        assert_eq!(error.reason(), Some(Reason::INTERNAL_ERROR));
        let (fine, _) = client.send_request(get("/fine"), true).unwrap();
        let fine = timeout(LIMIT, fine).await.unwrap().unwrap();
        assert_eq!(read_all(&mut fine.into_body()).await, b"fine");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_holds_back_the_body_it_is_sent() {
        let (mut client, _stop, _server) = start(echo(), 64 * 1024).await;
        let request = Request::post("http://example.com/echo").body(()).unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let payload = Bytes::from(payload);

        // Send as the server's window allows while not reading the echo: the echo stalls at
        // the client's window, the server stops reading, and its window closes.
        let mut sent = 0;
        send.reserve_capacity(payload.len());
        while sent < payload.len() {
            let granted = match timeout(
                Duration::from_millis(500),
                poll_fn(|cx| send.poll_capacity(cx)),
            )
            .await
            {
                Ok(Some(Ok(n))) => n,
                Ok(other) => panic!("capacity: {other:?}"),
                Err(_) => break,
            };
            let n = granted.min(payload.len() - sent);
            send.send_data(payload.slice(sent..sent + n), false)
                .unwrap();
            sent += n;
        }
        assert!(
            sent < payload.len() / 2,
            "the client sent {sent} of {} bytes without reading the echo",
            payload.len()
        );

        // Reading the echo frees everything, and it comes back intact.
        let reader = tokio::spawn(async move {
            let response = response.await.unwrap();
            read_all(&mut response.into_body()).await
        });
        while sent < payload.len() {
            let granted = timeout(LIMIT, poll_fn(|cx| send.poll_capacity(cx)))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let n = granted.min(payload.len() - sent);
            send.send_data(payload.slice(sent..sent + n), false)
                .unwrap();
            sent += n;
        }
        send.send_data(Bytes::new(), true).unwrap();
        let echoed = timeout(LIMIT, reader).await.unwrap().unwrap();
        assert_eq!(echoed.len(), payload.len());
        assert!(echoed == payload, "the echo differs from what was sent");
    }

    #[tokio::test]
    async fn stop_sends_goaway_and_finishes_the_streams_already_open() {
        let release = Arc::new(Notify::new());
        let service: Service = {
            let release = release.clone();
            Box::new(move |_req: Request<Inbound>| {
                let release = release.clone();
                Box::pin(async move {
                    release.notified().await;
                    Response::new(Body::full(Bytes::from_static(b"done")))
                })
            })
        };
        let (mut client, stop, server) = start(service, 1 << 20).await;
        let (first, _) = client.send_request(get("/first"), true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        // After the GOAWAY, a new stream is refused; the open one is still answered.
        let refused = match client.send_request(get("/second"), true) {
            Ok((second, _)) => timeout(LIMIT, second).await.unwrap().is_err(),
            Err(_) => true,
        };
        assert!(refused, "a stream opened after GOAWAY was served");
        release.notify_one();
        let first = timeout(LIMIT, first).await.unwrap().unwrap();
        assert_eq!(read_all(&mut first.into_body()).await, b"done");
        timeout(LIMIT, server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_idle_for_the_idle_timeout_is_closed_with_goaway() {
        let service: Service = Box::new(|_req: Request<Inbound>| {
            Box::pin(async { Response::new(Body::full(Bytes::from_static(b"hi"))) })
        });
        let (mut client, _stop, mut server) = start(service, 1 << 20).await;
        let margin = Duration::from_secs(5);
        for _ in 0..2 {
            // Each request restarts the idle clock.
            let (response, _) = client.send_request(get("/"), true).unwrap();
            let response = timeout(LIMIT, response).await.unwrap().unwrap();
            assert_eq!(read_all(&mut response.into_body()).await, b"hi");
            tokio::time::sleep(IDLE_TIMEOUT - margin).await;
            assert!(!server.is_finished(), "closed before the idle timeout");
        }
        let ended = timeout(margin * 2, &mut server).await;
        assert!(ended.is_ok(), "still open past the idle timeout");
        ended.unwrap().unwrap().unwrap();
        // The client was told with a GOAWAY (not just cut off), so it opens no stream here.
        let refused = match client.send_request(get("/"), true) {
            Ok((response, _)) => response.await.unwrap_err(),
            Err(e) => e,
        };
        assert!(
            refused.is_go_away() && refused.reason() == Some(Reason::NO_ERROR),
            "{refused:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_pings_keeps_its_long_requests() {
        let (service, mut dropped) = never_answers();
        let (mut client, _stop, server) = start(service, 1 << 20).await;
        let (_response, _send) = client.send_request(get("/long-poll"), false).unwrap();
        // Past several ping intervals, and past the idle timeout (a stream is open throughout).
        tokio::time::sleep(IDLE_TIMEOUT * 3).await;
        assert!(
            dropped
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
        assert!(!server.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_answering_pings_is_dropped_with_its_requests() {
        let (service, mut dropped) = never_answers();
        let (mut client, freeze, _stop, server) = start_freezable(service, 1 << 20).await;
        let (_response, _send) = client.send_request(get("/long-poll"), false).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        freeze.send(()).unwrap();
        // The first PING goes out after an interval and is given its timeout to be answered.
        let before = KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT - Duration::from_secs(1);
        assert!(
            timeout(before, &mut dropped).await.is_err(),
            "dropped too soon"
        );
        let result = timeout(Duration::from_secs(2), &mut dropped).await;
        assert!(result.is_ok(), "the request outlived an unanswered PING");
        timeout(LIMIT, server).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_silent_after_connecting_is_dropped_after_the_handshake_timeout() {
        let (service, _dropped) = never_answers();
        let (_client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(server_io, service, stop_rx));
        let slack = Duration::from_secs(1);
        let ended = timeout(HANDSHAKE_TIMEOUT + slack, server).await;
        ended
            .expect("still waiting for a preface")
            .unwrap()
            .unwrap();
    }
}

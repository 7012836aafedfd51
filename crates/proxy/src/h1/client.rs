//! The HTTP/1.1 client side: one exchange at a time on a pooled backend connection.
//!
//! There is no task per connection. The request's own task writes the request, reads the
//! response head, and — through [`ResponseBody`] — reads the body straight off the socket as
//! the client side consumes it. A request body still being sent when the answer arrives keeps
//! being sent from the same polls (full duplex). hyper's client runs a task per connection and
//! hands every head and body chunk across it; that hand-over was the largest cost left on the
//! proxy's request path (docs/performance.md).
//!
//! An idle connection holds only its socket and its (small) buffers. Since no task watches it,
//! a connection the backend closed while idle is noticed when it is next taken from the pool
//! ([`ClientConn::is_idle_usable`]) or pruned. Closing races the check can still lose are
//! covered by [`Failure::Retry`]: a reused connection that ends before any byte of an answer
//! gives back an idempotent request with a replayable body for another connection.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Response, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use crate::body::{Body, BodyError};
use crate::dial::BoxIo;
use crate::h1::decode::{Decoded, Decoder};
use crate::h1::head::{self, Framing, ResponseFraming};
use crate::h1::{BodyWriter, Output, poll_read_more};
use crate::pool::Checkin;

/// Free space wanted in the read buffer while a response head arrives: a small answer comes in
/// the same read as its head.
const HEAD_SPARE: usize = 8 * 1024;
/// Free space wanted while a response body streams.
const BODY_SPARE: usize = 32 * 1024;
/// Buffers larger than this are not kept while a connection is idle in its pool.
const IDLE_KEEP: usize = 16 * 1024;
/// Request body bytes queued for the socket before the body is polled again.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// A backend connection and the buffers it keeps between exchanges.
pub(crate) struct ClientConn {
    io: BoxIo,
    read_buf: BytesMut,
    out: Output,
    /// The most the read buffer could hold since the connection was last parked: its
    /// allocation may outlive what `capacity()` shows once pieces are split off.
    read_peak: usize,
    /// Has carried an exchange before: an end before any answer may be a close race.
    reused: bool,
}

impl std::fmt::Debug for ClientConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConn")
            .field("reused", &self.reused)
            .finish()
    }
}

impl ClientConn {
    /// Boxed: the connection moves into the response body and back into the pool on every
    /// exchange, and a box is one pointer wide.
    pub(crate) fn new(io: BoxIo) -> Box<ClientConn> {
        Box::new(ClientConn {
            io,
            read_buf: BytesMut::new(),
            out: Output::default(),
            read_peak: 0,
            reused: false,
        })
    }

    /// Whether an idle connection can carry a request: the backend has neither closed it nor
    /// sent anything unasked (either makes the connection unusable).
    pub(crate) fn is_idle_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Reads what the socket has, making room for about `spare` bytes first.
    fn poll_read(&mut self, cx: &mut Context<'_>, spare: usize) -> Poll<io::Result<usize>> {
        let read = ready!(poll_read_more(&mut self.io, &mut self.read_buf, cx, spare));
        self.read_peak = self.read_peak.max(self.read_buf.capacity());
        Poll::Ready(read)
    }

    #[cfg(test)]
    pub(crate) fn read_capacity(&self) -> usize {
        self.read_buf.capacity()
    }

    /// Readies the connection for its pool after a clean exchange.
    fn park(&mut self) {
        self.reused = true;
        if self.read_peak > IDLE_KEEP {
            self.read_buf = BytesMut::new();
            self.read_peak = 0;
        }
        self.out.clear();
        if self.out.buf.capacity() > IDLE_KEEP {
            self.out.release();
        }
    }
}

/// The request line and headers, borrowed: a retry sends them again.
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    /// Origin form: path and query.
    pub(crate) target: &'a str,
    pub(crate) host: &'a [u8],
    pub(crate) headers: &'a HeaderMap,
}

/// Why an exchange produced no response.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A reused connection ended before any byte of an answer, most likely closed by the
    /// backend while idle; the request is idempotent and its body buffered, so it may go out
    /// once more (RFC 9112 §9.3.1), on a new connection: here is its body.
    Retry(Body),
    Failed(BodyError),
}

/// Why a backend connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("backend closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("backend closed the connection mid-body")]
    ClosedMidBody,
    #[error("invalid response from backend: {0}")]
    InvalidResponse(head::HeadError),
    #[error("backend answered 101 to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("request body does not match its length")]
    RequestBodyLength,
    #[error("backend connection: {0}")]
    Io(#[from] io::Error),
}

fn failed(error: impl Into<BodyError>) -> Failure {
    Failure::Failed(error.into())
}

/// RFC 9110 §9.2.2: sending these twice has the effect of sending them once.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The request body on its way out.
struct Sending {
    body: Body,
    writer: BodyWriter,
    /// The body has ended and is encoded into the output.
    ended: bool,
    /// The socket refused a write: nothing more goes out, and the connection is not reused.
    broken: bool,
    /// Written but not yet flushed.
    unflushed: bool,
}

impl Sending {
    /// Pulls the body into the output and writes it, until the socket or the body has to
    /// wait. The body is pulled first so a small request leaves in one write with its head.
    /// `Err` only for a body that failed or broke its declared length. A write error marks the
    /// connection broken but is not returned: the answer may still be readable (a backend may
    /// refuse a request and close without reading all of it).
    fn poll_send(&mut self, conn: &mut ClientConn, cx: &mut Context<'_>) -> Result<(), BodyError> {
        while !self.broken {
            while !self.ended && conn.out.len() < OUTPUT_HIGH_WATER {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.writer.write(frame, &mut conn.out),
                    Poll::Ready(Some(Err(e))) => return Err(e),
                    Poll::Ready(None) => {
                        self.writer.finish(&mut conn.out);
                        self.ended = true;
                    }
                    Poll::Pending => break,
                }
                if self.writer.failed {
                    return Err(ClientError::RequestBodyLength.into());
                }
            }
            if conn.out.is_empty() && !self.unflushed {
                break; // all sent, or the body is waiting
            }
            self.unflushed = true;
            match conn.out.poll_write_to(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "backend stopped taking the request");
                    self.broken = true;
                }
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// All of the request went out.
    fn sent(&self, conn: &ClientConn) -> bool {
        self.ended && !self.broken && !self.unflushed && conn.out.is_empty()
    }
}

/// Where the request stands once the answer's head has arrived.
enum Outbound {
    /// All of it went out.
    Sent,
    /// Part of it could not be written: the connection cannot be reused.
    Broken,
    /// Still going out, alongside the answer.
    Sending(Box<Sending>),
}

/// Sends one request on `conn` and reads the answer's head. `home` takes the connection back
/// when the answer has been read to its end.
pub(crate) async fn send(
    mut conn: Box<ClientConn>,
    request: RequestHead<'_>,
    body: Body,
    home: Checkin,
) -> Result<Response<ResponseBody>, Failure> {
    let framing = if body.is_end_stream() {
        ResponseFraming::None
    } else {
        match body.size_hint().exact() {
            Some(0) => ResponseFraming::None,
            Some(length) => ResponseFraming::Length(length),
            None => ResponseFraming::Chunked,
        }
    };
    // A complete body can be sent again if the connection turns out to be dead.
    let mut replay = match (&body, conn.reused && idempotent(request.method)) {
        (Body::Full(bytes), true) => Some(bytes.clone()),
        _ => None,
    };
    conn.out.clear();
    head::encode_request(
        request.method,
        request.target,
        request.host,
        request.headers,
        framing,
        &mut conn.out.buf,
    );
    let mut sending = Sending {
        body,
        writer: BodyWriter::new(framing, framing == ResponseFraming::Chunked),
        ended: framing == ResponseFraming::None,
        broken: false,
        unflushed: false,
    };
    let head_request = *request.method == Method::HEAD;
    let mut answered = false;
    let head = poll_fn(|cx| {
        if let Err(e) = sending.poll_send(&mut conn, cx) {
            return Poll::Ready(Err(failed(e)));
        }
        loop {
            match head::parse_response(&mut conn.read_buf, head_request) {
                Ok(Some(head)) if head.response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    return Poll::Ready(Err(failed(ClientError::UnaskedUpgrade)));
                }
                // 100 Continue and other interim answers are this hop's.
                Ok(Some(head)) if head.response.status().is_informational() => continue,
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(failed(ClientError::InvalidResponse(e)))),
            }
            let error = match ready!(conn.poll_read(cx, HEAD_SPARE)) {
                Ok(0) => ClientError::ClosedBeforeAnswer,
                Ok(_) => {
                    answered = true;
                    continue;
                }
                Err(e) => ClientError::Io(e),
            };
            return Poll::Ready(Err(match replay.take() {
                Some(bytes) if !answered => {
                    tracing::debug!(%error, "reused backend connection failed: retrying");
                    Failure::Retry(Body::Full(bytes))
                }
                _ => failed(error),
            }));
        }
    })
    .await?;
    let outbound = if sending.broken {
        Outbound::Broken
    } else if sending.sent(&conn) {
        Outbound::Sent
    } else {
        Outbound::Sending(Box::new(sending))
    };
    let (parts, ()) = head.response.into_parts();
    let reading = match head.framing {
        ResponseFraming::None => Reading::Decoder(Decoder::new(Framing::Empty)),
        ResponseFraming::Length(length) => Reading::Decoder(Decoder::new(Framing::Length(length))),
        ResponseFraming::Chunked => Reading::Decoder(Decoder::new(Framing::Chunked)),
        ResponseFraming::UntilClose => Reading::UntilClose,
    };
    let mut body = ResponseBody {
        conn: Some(conn),
        reading,
        outbound,
        keep_alive: head.keep_alive,
        home: Some(home),
    };
    if body.is_end_stream() {
        body.end();
    }
    Ok(Response::from_parts(parts, body))
}

/// How the answer's body is delimited.
#[derive(Debug)]
enum Reading {
    Decoder(Decoder),
    /// Until the backend closes the connection, which then cannot be reused.
    UntilClose,
    Ended,
}

/// A response body read from its backend connection as it is polled. Read to its end, it
/// hands the connection back to its pool; dropped before that, it closes the connection.
pub(crate) struct ResponseBody {
    /// `None` once the body has ended or failed.
    conn: Option<Box<ClientConn>>,
    reading: Reading,
    outbound: Outbound,
    keep_alive: bool,
    home: Option<Checkin>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("reading", &self.reading)
            .finish()
    }
}

impl ResponseBody {
    /// The answer has been read: the connection goes home if it can carry another exchange.
    fn end(&mut self) {
        self.reading = Reading::Ended;
        let (Some(mut conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        // Taken, so a request body that will never go out is dropped now.
        let request_sent = match std::mem::replace(&mut self.outbound, Outbound::Broken) {
            Outbound::Sent => true,
            Outbound::Broken => false,
            Outbound::Sending(sending) => sending.sent(&conn),
        };
        // Bytes past the answer were never asked for: the connection's framing is in doubt.
        if self.keep_alive && request_sent && conn.read_buf.is_empty() {
            conn.park();
            home.finish(conn);
        }
    }

    /// Reads the next piece of the answer from `conn`.
    fn poll_answer(
        reading: &mut Reading,
        conn: &mut ClientConn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, BodyError>> {
        loop {
            let decoded = match reading {
                Reading::Ended => return Poll::Ready(Ok(None)),
                Reading::Decoder(decoder) => decoder.decode(&mut conn.read_buf)?,
                Reading::UntilClose if conn.read_buf.is_empty() => Decoded::NeedMore,
                Reading::UntilClose => Decoded::Data(conn.read_buf.split().freeze()),
            };
            match decoded {
                Decoded::Data(data) => return Poll::Ready(Ok(Some(data))),
                Decoded::Done => return Poll::Ready(Ok(None)),
                Decoded::NeedMore => {}
            }
            match ready!(conn.poll_read(cx, BODY_SPARE))? {
                0 if matches!(reading, Reading::UntilClose) => return Poll::Ready(Ok(None)),
                0 => return Poll::Ready(Err(ClientError::ClosedMidBody.into())),
                _ => {}
            }
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_deref_mut() else {
            return Poll::Ready(None);
        };
        if let Outbound::Sending(sending) = &mut this.outbound
            && let Err(e) = sending.poll_send(conn, cx)
        {
            this.reading = Reading::Ended;
            this.conn = None;
            return Poll::Ready(Some(Err(e)));
        }
        match ready!(Self::poll_answer(&mut this.reading, conn, cx)) {
            Ok(Some(data)) => {
                if this.is_end_stream() {
                    this.end();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.end();
                Poll::Ready(None)
            }
            Err(e) => {
                this.reading = Reading::Ended;
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.reading {
            Reading::Ended => true,
            Reading::Decoder(decoder) => decoder.remaining() == Some(0),
            Reading::UntilClose => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reading {
            Reading::Ended => SizeHint::with_exact(0),
            Reading::Decoder(decoder) => match decoder.remaining() {
                Some(remaining) => SizeHint::with_exact(remaining),
                None => SizeHint::default(),
            },
            Reading::UntilClose => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;

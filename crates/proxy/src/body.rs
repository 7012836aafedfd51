//! The one body type the proxy sends both ways.
//!
//! A request body is either buffered (small: replayable for retries and mirrors), streamed from
//! the client, or — when buffering gave up at the size limit — the buffered prefix followed by
//! the rest of the stream. A response body from a pooled HTTP/1.1 connection is read off that
//! connection as it is polled, and hands the connection back to its pool when it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::h1::body::RecvBody;
use crate::h1::client::ResponseBody;
use crate::http2::RequestBody;

/// Errors of any body the proxy relays: hyper's, or the HTTP/1 server's.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A body arriving from a peer.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// No body (an HTTP/1 request without framing headers).
    Empty,
    /// Responses through hyper's clients: TLS and h2c upstreams, WebSocket upgrade attempts.
    Hyper(Incoming),
    /// HTTP/1 clients.
    H1(RecvBody),
    /// HTTP/2 clients.
    H2(RequestBody),
}

impl HttpBody for Inbound {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Inbound::Empty => Poll::Ready(None),
            Inbound::Hyper(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(BodyError::from))),
            Inbound::H1(body) => Pin::new(body).poll_frame(cx),
            Inbound::H2(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Empty => true,
            Inbound::Hyper(incoming) => incoming.is_end_stream(),
            Inbound::H1(body) => body.is_end_stream(),
            Inbound::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Empty => SizeHint::with_exact(0),
            Inbound::Hyper(incoming) => incoming.size_hint(),
            Inbound::H1(body) => body.size_hint(),
            Inbound::H2(body) => body.size_hint(),
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) enum Body {
    /// A complete body (`None` once sent).
    Full(Option<Bytes>),
    /// Straight from the peer.
    Stream(Inbound),
    /// Already-read chunks, then the rest of the stream.
    Prefixed(std::collections::VecDeque<Bytes>, Inbound),
    /// A response from a pooled HTTP/1.1 upstream connection.
    Upstream(ResponseBody),
}

impl Body {
    pub(crate) fn empty() -> Body {
        Body::Full(None)
    }

    pub(crate) fn full(bytes: Bytes) -> Body {
        if bytes.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(bytes))
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Every variant is Unpin.
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(incoming) => Pin::new(incoming).poll_frame(cx),
            Body::Prefixed(prefix, incoming) => match prefix.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Pin::new(incoming).poll_frame(cx),
            },
            Body::Upstream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Stream(inbound) => inbound.is_end_stream(),
            Body::Upstream(body) => body.is_end_stream(),
            Body::Prefixed(prefix, inbound) => prefix.is_empty() && inbound.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(inbound) => inbound.size_hint(),
            Body::Upstream(body) => body.size_hint(),
            Body::Prefixed(prefix, incoming) => {
                let buffered: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let rest = incoming.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(buffered));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(buffered));
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn full_body_yields_its_bytes_once() {
        let body = Body::full(Bytes::from_static(b"abc"));
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        let empty = Body::full(Bytes::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }
}

//! A request body handed from the connection task to the request handler.
//!
//! The connection reads the socket only when the handler asks for more (`want`), so a slow
//! backend pushes back on the client through TCP instead of through memory, and
//! `Expect: 100-continue` is answered only when the body is actually wanted. One chunk is in
//! flight at a time; the lock is taken once per chunk by two parties and never contended
//! for long.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::BodyError;
use crate::h1::decode::DecodeError;

#[derive(Default)]
struct State {
    chunk: Option<Bytes>,
    /// `Some(Ok)`: ended cleanly; `Some(Err)`: the connection failed mid-body.
    end: Option<Result<(), DecodeError>>,
    wants: bool,
    receiver_gone: bool,
    receiver: Option<Waker>,
    sender: Option<Waker>,
}

fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Creates a body of `size` bytes (when known) and the connection's end of it.
pub(crate) fn channel(size: Option<u64>) -> (BodySender, RecvBody) {
    let shared = Arc::new(Mutex::new(State::default()));
    (
        BodySender {
            shared: shared.clone(),
            ended: false,
        },
        RecvBody {
            shared,
            size,
            ended: false,
        },
    )
}

/// The connection's end.
pub(crate) struct BodySender {
    shared: Arc<Mutex<State>>,
    ended: bool,
}

impl BodySender {
    /// Ready when the handler waits for the next chunk; `Err` once it dropped the body.
    pub(crate) fn poll_want(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let mut state = lock(&self.shared);
        if state.receiver_gone {
            return Poll::Ready(Err(()));
        }
        if state.wants && state.chunk.is_none() {
            return Poll::Ready(Ok(()));
        }
        state.sender = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(crate) fn send(&mut self, data: Bytes) {
        let mut state = lock(&self.shared);
        state.chunk = Some(data);
        state.wants = false;
        if let Some(waker) = state.receiver.take() {
            waker.wake();
        }
    }

    pub(crate) fn finish(mut self) {
        self.end(Ok(()));
    }

    pub(crate) fn fail(mut self, error: DecodeError) {
        self.end(Err(error));
    }

    fn end(&mut self, result: Result<(), DecodeError>) {
        self.ended = true;
        let mut state = lock(&self.shared);
        state.end = Some(result);
        if let Some(waker) = state.receiver.take() {
            waker.wake();
        }
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Err(DecodeError::Incomplete));
        }
    }
}

/// The handler's end: a request body read from an HTTP/1 connection.
pub(crate) struct RecvBody {
    shared: Arc<Mutex<State>>,
    size: Option<u64>,
    ended: bool,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl HttpBody for RecvBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut state = lock(&this.shared);
        if let Some(data) = state.chunk.take() {
            if let Some(size) = &mut this.size {
                *size = size.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match state.end.take() {
            Some(Ok(())) => {
                drop(state);
                this.ended = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                drop(state);
                this.ended = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                state.wants = true;
                state.receiver = Some(cx.waker().clone());
                if let Some(waker) = state.sender.take() {
                    waker.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.size == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.size {
            Some(size) => SizeHint::with_exact(size),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        state.receiver_gone = true;
        if let Some(waker) = state.sender.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn chunks_flow_only_when_wanted() {
        let (mut tx, mut rx) = channel(Some(6));
        assert_eq!(rx.size_hint().exact(), Some(6));
        let mut cx = Context::from_waker(Waker::noop());
        // Nobody asked yet.
        assert!(tx.poll_want(&mut cx).is_pending());
        assert!(Pin::new(&mut rx).poll_frame(&mut cx).is_pending());
        assert_eq!(tx.poll_want(&mut cx), Poll::Ready(Ok(())));
        tx.send(Bytes::from_static(b"abc"));
        // One chunk at a time.
        assert!(tx.poll_want(&mut cx).is_pending());
        let reader = tokio::spawn(async move { rx.collect().await.map(|b| b.to_bytes()) });
        std::future::poll_fn(|cx| tx.poll_want(cx)).await.unwrap();
        tx.send(Bytes::from_static(b"def"));
        std::future::poll_fn(|cx| tx.poll_want(cx)).await.unwrap();
        tx.finish();
        assert_eq!(reader.await.unwrap().unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn a_lost_connection_is_an_error_and_a_dropped_body_is_noticed() {
        let (tx, rx) = channel(None);
        drop(tx);
        let err = rx.collect().await.unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
        let (mut tx, rx) = channel(None);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(tx.poll_want(&mut cx).is_pending());
        drop(rx);
        assert_eq!(tx.poll_want(&mut cx), Poll::Ready(Err(())));
    }
}

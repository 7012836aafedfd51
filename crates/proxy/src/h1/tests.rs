//! The HTTP/1 server against raw bytes on an in-memory connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::*;
use crate::body::{Body, Inbound};

const WAIT: Duration = Duration::from_secs(5);

/// A response with a fixed `date`, so heads compare byte for byte.
fn reply(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("date", HeaderValue::from_static("d"));
    response
}

/// Answers `METHOD PATH` and, for POST, the request body it read.
fn echo() -> Service {
    Box::new(|req: Request<Inbound>| {
        Box::pin(async move {
            let line = format!("{} {}", req.method(), req.uri());
            let body = req.into_body().collect().await;
            match body {
                Ok(body) => {
                    let mut text = line.into_bytes();
                    let bytes = body.to_bytes();
                    if !bytes.is_empty() {
                        text.extend_from_slice(b" ");
                        text.extend_from_slice(&bytes);
                    }
                    reply(StatusCode::OK, Body::full(Bytes::from(text)))
                }
                Err(_) => reply(StatusCode::BAD_REQUEST, Body::empty()),
            }
        })
    })
}

/// Answers with `abc` streamed, of a length not known up front.
fn unknown_length() -> Service {
    Box::new(|_req: Request<Inbound>| {
        let (mut tx, rx) = body::channel(None);
        tx.send(Bytes::from_static(b"abc"));
        tx.finish();
        Box::pin(async move { reply(StatusCode::OK, Body::Stream(Inbound::H1(rx))) })
    })
}

struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
    server: JoinHandle<Ended<DuplexStream>>,
    stop: watch::Sender<bool>,
}

fn start(service: Service) -> Client {
    start_with_buffer(service, 64 * 1024)
}

/// `buffer`: how much each direction holds before writes wait for the reader.
fn start_with_buffer(service: Service, buffer: usize) -> Client {
    let (client, server) = tokio::io::duplex(buffer);
    let (stop, stop_rx) = watch::channel(false);
    Client {
        io: client,
        buf: Vec::new(),
        server: tokio::spawn(serve(server, service, stop_rx)),
        stop,
    }
}

/// One parsed response: status, lower-case header lines, and the body (de-chunked).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout(WAIT, self.io.read(&mut chunk))
            .await
            .expect("server answered in time")
            .unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response; `head_request` suppresses the body as HEAD does.
    async fn response_to(&mut self, head_request: bool) -> Reply {
        let (status, headers, len) = loop {
            let mut raw = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut raw);
            if let httparse::Status::Complete(len) = parsed.parse(&self.buf).unwrap() {
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (parsed.code.unwrap(), headers, len);
            }
            assert!(
                self.fill().await,
                "connection closed before a response head"
            );
        };
        self.buf.drain(..len);
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 204 || status == 304 || status < 200 {
            return reply;
        }
        if let Some(length) = reply.header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.buf.len() < length {
                assert!(self.fill().await, "connection closed inside a body");
            }
            reply.body = self.buf.drain(..length).collect();
        } else if reply.header("transfer-encoding") == Some("chunked") {
            let mut decoder = Decoder::new(Framing::Chunked);
            let mut buf = BytesMut::from(&self.buf[..]);
            self.buf.clear();
            loop {
                match decoder.decode(&mut buf).unwrap() {
                    Decoded::Data(data) => reply.body.extend_from_slice(&data),
                    Decoded::Done => break,
                    Decoded::NeedMore => {
                        assert!(self.fill().await, "connection closed inside a chunked body");
                        buf.extend_from_slice(&self.buf);
                        self.buf.clear();
                    }
                }
            }
            self.buf = buf.to_vec();
        } else {
            while self.fill().await {}
            reply.body = std::mem::take(&mut self.buf);
        }
        reply
    }

    async fn response(&mut self) -> Reply {
        self.response_to(false).await
    }

    /// Whether the server closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

#[tokio::test]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let mut c = start(echo());
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let first = c.response().await;
    assert_eq!((first.status, &first.body[..]), (200, &b"GET /a"[..]));
    assert_eq!(first.header("content-length"), Some("6"));
    assert_eq!(first.header("connection"), None);
    let second = c.response().await;
    assert_eq!(second.body, b"GET /b");
    c.send(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let third = c.response().await;
    assert_eq!(third.body, b"GET /c");
    assert_eq!(third.header("connection"), Some("close"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn request_bodies_by_length_and_chunked() {
    let mut c = start(echo());
    c.send(b"POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.response().await.body, b"POST /l hello");
    c.send(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.send(b"2;ext=1\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n").await;
    assert_eq!(c.response().await.body, b"POST /c abcde");
    // A body that breaks its chunking never reaches the backend whole.
    c.send(b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    let bad = c.response().await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("connection"), Some("close"));
    assert!(c.closed().await);
}

#[tokio::test]
async fn streamed_bodies_of_unknown_length_are_chunked_and_close_delimited_for_http10() {
    let service: Service = Box::new(|req: Request<Inbound>| {
        Box::pin(async move { reply(StatusCode::OK, Body::Stream(req.into_body())) })
    });
    let mut c = start(service);
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"wxyz");
    let mut c = start(unknown_length());
    c.send(b"GET /old HTTP/1.0\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
    // Read to the close: the body is everything until then.
    assert_eq!(r.body, b"abc");
    let mut c = start(echo());
    c.send(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /again HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(c.response().await.body, b"GET /again");
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_wanted() {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = std::sync::Mutex::new(Some(released));
    let service: Service = Box::new(move |req: Request<Inbound>| {
        let gate = released.lock().unwrap().take();
        Box::pin(async move {
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            reply(StatusCode::OK, Body::full(body))
        })
    });
    let mut c = start(service);
    c.send(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .await;
    // The handler has not asked for the body yet: no 100.
    let early = tokio::time::timeout(Duration::from_millis(100), c.io.read_u8()).await;
    assert!(
        early.is_err(),
        "100 Continue sent before the body was wanted"
    );
    release.send(()).unwrap();
    let interim = c.response().await;
    assert_eq!(interim.status, 100);
    c.send(b"ok").await;
    let r = c.response().await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn bad_heads_get_their_status_and_a_close() {
    for (raw, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], 400),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
        (b"G\x01T / HTTP/1.1\r\n\r\n", 400),
    ] {
        let mut c = start(echo());
        c.send(raw).await;
        let r = c.response().await;
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(raw));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed().await);
    }
    let mut c = start(echo());
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n",
        "a".repeat(head::MAX_HEAD)
    );
    c.send(huge.as_bytes()).await;
    // The client keeps sending after the refusal; the answer still arrives.
    c.send(&[b'a'; 4096]).await;
    assert_eq!(c.response().await.status, 431);
    assert!(c.closed().await);
}

#[tokio::test]
async fn unread_bodies_are_drained_when_small_and_close_the_connection_when_large() {
    let ignore: fn() -> Service = || {
        Box::new(|_req: Request<Inbound>| {
            Box::pin(async move { reply(StatusCode::NOT_FOUND, Body::empty()) })
        })
    };
    let mut c = start(ignore());
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection"), None);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.status, 404);

    let mut c = start(ignore());
    let big = DRAIN_LIMIT + 1;
    c.send(format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\n\r\n").as_bytes())
        .await;
    let r = c.response().await;
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);

    // Refused before the 100 Continue: the client may never send the body.
    let mut c = start(ignore());
    c.send(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!((r.status, r.header("connection")), (404, Some("close")));
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request() {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let seen = cancelled.clone();
    let service: Service = Box::new(move |_req: Request<Inbound>| {
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let guard = Guard(seen.clone());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            reply(StatusCode::OK, Body::empty())
        })
    });
    let mut c = start(service);
    c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(cancelled.load(Ordering::SeqCst), 0);
    drop(c.io);
    let ended = tokio::time::timeout(WAIT, c.server).await.unwrap().unwrap();
    assert!(matches!(ended, Ended::Closed));
    assert_eq!(cancelled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn head_and_bodiless_statuses_carry_no_body() {
    let service: Service = Box::new(|req: Request<Inbound>| {
        Box::pin(async move {
            match req.uri().path() {
                "/empty" => reply(
                    StatusCode::NO_CONTENT,
                    Body::full(Bytes::from_static(b"12345")),
                ),
                "/nothing" => reply(StatusCode::OK, Body::empty()),
                _ => reply(StatusCode::OK, Body::full(Bytes::from_static(b"12345"))),
            }
        })
    });
    let mut c = start(service);
    c.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response_to(true).await;
    assert_eq!(r.header("content-length"), Some("5"));
    assert_eq!(r.header("transfer-encoding"), None);
    // An empty body (as a backend's answer to HEAD has) says nothing about the length.
    c.send(b"HEAD /nothing HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response_to(true).await;
    assert_eq!(r.header("content-length"), None);
    c.send(b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-length"), None);
    // Nothing of either body was written: the next answer follows directly.
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.body, b"12345");
}

#[tokio::test]
async fn a_body_shorter_than_its_length_closes_the_connection() {
    let service: Service = Box::new(|_req: Request<Inbound>| {
        Box::pin(async move {
            let mut r = reply(StatusCode::OK, Body::full(Bytes::from_static(b"abc")));
            r.headers_mut()
                .insert("content-length", HeaderValue::from_static("10"));
            r
        })
    });
    let mut c = start(service);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    while c.fill().await {}
    let text = String::from_utf8(c.buf.clone()).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nabc"), "{text}");
}

#[tokio::test]
async fn an_upgrade_hands_over_the_connection_with_early_bytes() {
    let service: Service = Box::new(|mut req: Request<Inbound>| {
        let upgrade = req.extensions_mut().remove::<OnUpgrade>();
        Box::pin(async move {
            let upgrade = upgrade.expect("upgrade requests carry OnUpgrade");
            tokio::spawn(async move {
                let mut io = upgrade.wait().await.unwrap();
                let mut got = [0; 5];
                io.read_exact(&mut got).await.unwrap();
                io.write_all(&got).await.unwrap();
            });
            let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, Body::empty());
            r.headers_mut()
                .insert("connection", HeaderValue::from_static("upgrade"));
            r.headers_mut()
                .insert("upgrade", HeaderValue::from_static("websocket"));
            r
        })
    });
    let mut c = start(service);
    // Bytes sent right behind the request belong to the upgraded protocol.
    c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nhel")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 101);
    assert_eq!(r.header("connection"), Some("upgrade"));
    c.send(b"lo").await;
    while c.buf.len() < 5 {
        assert!(c.fill().await);
    }
    assert_eq!(&c.buf[..], b"hello");
}

#[tokio::test]
async fn stopping_closes_idle_connections_and_finishes_busy_ones() {
    let mut c = start(echo());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    c.response().await;
    c.stop.send(true).unwrap();
    assert!(c.closed().await);

    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = std::sync::Mutex::new(Some(released));
    let service: Service = Box::new(move |_req: Request<Inbound>| {
        let gate = released.lock().unwrap().take();
        Box::pin(async move {
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            reply(StatusCode::OK, Body::empty())
        })
    });
    let mut c = start(service);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.stop.send(true).unwrap();
    release.send(()).unwrap();
    let r = c.response().await;
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(c.closed().await);
}

#[tokio::test(start_paused = true)]
async fn a_parked_connection_serves_its_next_request() {
    let mut c = start(echo());
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.body, b"GET /a");
    // Idle past the grace: parked, without its request state.
    tokio::time::sleep(IDLE_GRACE * 4).await;
    // The next request arrives in pieces; the first wakes the parked connection.
    c.send(b"GET /b HT").await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    c.send(b"TP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.body, b"GET /b");
    tokio::time::sleep(IDLE_GRACE * 4).await;
    c.stop.send(true).unwrap();
    assert!(c.closed().await);
}

#[tokio::test(start_paused = true)]
async fn a_first_request_after_a_park_is_still_checked_for_http2() {
    // A client that waits past the grace before its first bytes: parked before any request.
    let mut c = start(echo());
    tokio::time::sleep(IDLE_GRACE * 4).await;
    c.send(H2_PREFACE).await;
    let ended = tokio::time::timeout(WAIT, c.server).await.unwrap().unwrap();
    assert!(
        matches!(ended, Ended::Http2(..)),
        "HTTP/2 preface not recognised"
    );

    let mut c = start(echo());
    tokio::time::sleep(IDLE_GRACE * 4).await;
    c.send(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.body, b"GET /late");
}

#[tokio::test(start_paused = true)]
async fn a_client_closing_while_parked_ends_the_connection() {
    let mut c = start(echo());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    c.response().await;
    tokio::time::sleep(IDLE_GRACE * 4).await;
    c.io.shutdown().await.unwrap();
    let ended = tokio::time::timeout(WAIT, c.server).await.unwrap().unwrap();
    assert!(matches!(ended, Ended::Closed));
}

/// Asserts that the server closes the connection for a head due [`HEAD_TIMEOUT`] after
/// `waiting_since`: to within one [`IDLE_GRACE`] (see `head_clock`), not before.
async fn assert_closed_when_head_due(c: &mut Client, waiting_since: tokio::time::Instant) {
    let margin = Duration::from_millis(50);
    let mut byte = [0; 1];
    let early = tokio::time::timeout_at(
        waiting_since + HEAD_TIMEOUT - IDLE_GRACE - margin,
        c.io.read(&mut byte),
    );
    assert!(early.await.is_err(), "closed before its head was due");
    let due = tokio::time::timeout_at(waiting_since + HEAD_TIMEOUT + margin, c.io.read(&mut byte));
    assert_eq!(due.await.expect("open after its head was due").unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_closes_when_its_next_head_is_overdue() {
    let mut c = start(echo());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    c.response().await;
    // Counted from when it went idle, not from when it was parked (one to two IDLE_GRACE
    // later).
    let idle_since = tokio::time::Instant::now();
    assert_closed_when_head_due(&mut c, idle_since).await;
}

#[tokio::test(start_paused = true)]
async fn a_head_begun_and_never_finished_is_overdue() {
    let mut c = start(echo());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    c.response().await;
    let waiting_since = tokio::time::Instant::now();
    // Trickled in slowly enough to span many firings of the connection's timer, never whole.
    for _ in 0..4 {
        c.send(b"X").await;
        tokio::time::sleep(IDLE_GRACE * 3).await;
    }
    assert_closed_when_head_due(&mut c, waiting_since).await;
}

#[test]
fn an_idle_connection_task_is_small() {
    let (_client, server) = tokio::io::duplex(1024);
    let (_stop, stop_rx) = watch::channel(false);
    let serving = serve(server, echo(), stop_rx);
    // A request's state is boxed while the connection is busy (see the module documentation);
    // held inline, it makes this future about 1.8 KiB.
    let size = std::mem::size_of_val(&serving);
    assert!(size <= 768, "the connection future is {size} bytes");
}

#[tokio::test]
async fn the_http2_preface_is_handed_back_with_what_was_read() {
    let mut c = start(echo());
    c.send(H2_PREFACE).await;
    c.send(b"frames").await;
    let ended = tokio::time::timeout(WAIT, c.server).await.unwrap().unwrap();
    let Ended::Http2(mut io, _) = ended else {
        panic!("HTTP/2 preface not recognised");
    };
    let mut got = vec![0; H2_PREFACE.len() + 6];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..H2_PREFACE.len()], H2_PREFACE);
    assert_eq!(&got[H2_PREFACE.len()..], b"frames");
}

#[tokio::test]
async fn an_idle_connection_reads_without_a_buffer_of_its_own() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    let mut buf = BytesMut::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(poll_read_more(&mut server, &mut buf, &mut cx, HEAD_SPARE).is_pending());
    assert_eq!(buf.capacity(), 0);
    client.write_all(b"GET").await.unwrap();
    let read = poll_read_more(&mut server, &mut buf, &mut cx, HEAD_SPARE);
    assert!(matches!(read, Poll::Ready(Ok(3))));
    assert_eq!(&buf[..], b"GET");
    assert!(buf.capacity() >= HEAD_SPARE);
}

#[tokio::test]
async fn requests_split_at_any_byte_are_read_the_same() {
    let requests: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
PUT /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n1;x=y\r\nf\r\n0\r\n\r\n\
HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n\
GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
    for step in [1, 2, 3, 5, 8, 13, 64] {
        let mut c = start(echo());
        // Each piece is read by the server before the next is written.
        for piece in requests.chunks(step) {
            c.send(piece).await;
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(c.response().await.body, b"POST /a abc", "step {step}");
        assert_eq!(c.response().await.body, b"PUT /b def", "step {step}");
        let head = c.response_to(true).await;
        assert_eq!(head.header("content-length"), Some("7"), "step {step}");
        assert_eq!(c.response().await.body, b"GET /d", "step {step}");
    }
}

#[tokio::test]
async fn no_100_continue_follows_a_final_answer() {
    // The answer streams the request body back, so the body is wanted only after the head.
    let service: Service = Box::new(|req: Request<Inbound>| {
        Box::pin(async move { reply(StatusCode::OK, Body::Stream(req.into_body())) })
    });
    let mut c = start(service);
    c.send(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"ok").await;
    let r = c.response().await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    // The connection closes (the client was not told to continue), with nothing after.
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await, "unexpected bytes: {:?}", c.buf);
}

#[tokio::test]
async fn a_body_that_fails_behind_a_slow_client_never_looks_complete() {
    // The client reads slowly (a small pipe), so writes wait while the body fails.
    let service: Service = Box::new(|_req: Request<Inbound>| {
        let (mut tx, rx) = body::channel(None);
        tx.send(Bytes::from(vec![b'x'; 4096]));
        drop(tx);
        Box::pin(async move { reply(StatusCode::OK, Body::Stream(Inbound::H1(rx))) })
    });
    let mut c = start_with_buffer(service, 64);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    while c.fill().await {}
    let text = String::from_utf8(c.buf.clone()).unwrap();
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    // The chunk that was sent, then the close: no last-chunk marker.
    assert!(text.ends_with("xxxx\r\n"), "{text:?}");
    assert!(!text.ends_with("0\r\n\r\n"), "cut off with an end marker");
}

#[tokio::test]
async fn an_upgrade_request_with_a_body_is_not_handed_over() {
    let service: Service = Box::new(|req: Request<Inbound>| {
        let offered = req.extensions().get::<OnUpgrade>().is_some();
        Box::pin(async move {
            assert!(!offered, "upgrade offered for a request with a body");
            let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, Body::empty());
            r.headers_mut()
                .insert("upgrade", HeaderValue::from_static("websocket"));
            r
        })
    });
    let mut c = start(service);
    c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 18\r\n\r\nGET /x HTTP/1.1\r\n\r\n")
        .await;
    // An interim answer cannot end the exchange.
    assert_eq!(c.response().await.status, 502);
    // The body was skipped as a body: only the next real request gets an answer.
    c.send(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.response().await.status, 502);
    let more = tokio::time::timeout(Duration::from_millis(100), c.fill()).await;
    assert!(
        more.is_err() && c.buf.is_empty(),
        "a third answer: {:?}",
        c.buf
    );
}

#[tokio::test]
async fn a_client_that_leaves_after_its_body_cancels_the_request() {
    let (cancelled_tx, cancelled) = tokio::sync::oneshot::channel::<()>();
    let cancelled_tx = std::sync::Mutex::new(Some(cancelled_tx));
    let service: Service = Box::new(move |req: Request<Inbound>| {
        struct Guard(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        let guard = Guard(cancelled_tx.lock().unwrap().take());
        Box::pin(async move {
            let _guard = guard;
            // Read exactly the body's length, as an HTTP client does, and no further.
            let mut body = req.into_body();
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "abc");
            assert!(body.is_end_stream());
            std::future::pending::<()>().await;
            reply(StatusCode::OK, Body::empty())
        })
    });
    let mut c = start(service);
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(c.io);
    tokio::time::timeout(WAIT, cancelled)
        .await
        .expect("request cancelled when the client left")
        .unwrap();
}

#[tokio::test]
async fn a_connect_answer_carries_no_body_framing() {
    let service: Service = Box::new(|_req: Request<Inbound>| {
        Box::pin(async move { reply(StatusCode::OK, Body::full(Bytes::from_static(b"abc"))) })
    });
    let mut c = start(service);
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await;
    while c.fill().await {}
    let text = String::from_utf8(c.buf.clone()).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        !text.contains("content-length") && !text.contains("transfer-encoding"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n"), "{text}");
}

//! The client against scripted backends speaking raw HTTP/1.1 over loopback TCP.

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use strait_config::{AppProtocol, Cluster, ClusterKey, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::body::{Body, Inbound};
use crate::h1::body::channel;
use crate::upstream::{Endpoint, Outgoing, Runtime, SendError, send};

/// What the backend does with the next request it reads.
#[derive(Clone, Copy)]
enum Step {
    /// Reads the whole request, answers, keeps the connection.
    Reply(&'static str),
    /// Reads the whole request, answers, closes.
    ReplyAndClose(&'static str),
    /// Reads only the request head, answers, keeps the connection (without reading on).
    ReplyToHead(&'static str),
    /// Reads the whole request and closes without answering.
    Drop,
}

/// A request as the backend saw it: which connection (in accept order) and the raw bytes.
type Seen = (usize, String);

async fn backend(steps: Vec<Step>) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let steps = Arc::new(Mutex::new(VecDeque::from(steps)));
    let (seen, requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for index in 0.. {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, index, steps.clone(), seen.clone()));
        }
    });
    (addr, requests)
}

async fn serve(
    mut stream: TcpStream,
    index: usize,
    steps: Arc<Mutex<VecDeque<Step>>>,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_until(&mut stream, &mut buf, b"\r\n\r\n", 0).await else {
            return;
        };
        let Some(step) = steps.lock().unwrap().pop_front() else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let mut end = head_end;
        if !matches!(step, Step::ReplyToHead(_)) {
            if let Some(length) = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
            {
                end += length.trim().parse::<usize>().unwrap();
                while buf.len() < end {
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "request body cut short");
                    buf.extend_from_slice(&chunk[..n]);
                }
            } else if head.contains("transfer-encoding: chunked") {
                end = read_until(&mut stream, &mut buf, b"0\r\n\r\n", head_end)
                    .await
                    .unwrap();
            }
        }
        let _ = seen.send((index, String::from_utf8_lossy(&buf[..end]).into_owned()));
        buf.drain(..end);
        match step {
            Step::Reply(answer) | Step::ReplyToHead(answer) => {
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
            Step::ReplyAndClose(answer) => {
                stream.write_all(answer.as_bytes()).await.unwrap();
                return;
            }
            Step::Drop => return,
        }
    }
}

/// Reads into `buf` until `marker` appears at or after `from`; the index just past it.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    marker: &[u8],
    from: usize,
) -> Option<usize> {
    loop {
        if let Some(at) = buf[from..]
            .windows(marker.len())
            .position(|window| window == marker)
        {
            return Some(from + at + marker.len());
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An endpoint whose backend follows `steps`, and what the backend saw.
async fn scripted(steps: Vec<Step>) -> (Arc<Endpoint>, mpsc::UnboundedReceiver<Seen>) {
    let (addr, seen) = backend(steps).await;
    (endpoint(&Runtime::new(), addr), seen)
}

fn endpoint(runtime: &Runtime, addr: SocketAddr) -> Arc<Endpoint> {
    let key = ClusterKey {
        namespace: "ns".into(),
        name: "backend".into(),
        port: addr.port(),
    };
    let cluster = Cluster {
        protocol: AppProtocol::Http1,
        endpoints: vec![addr],
        tls: None,
    };
    let config = ProxyConfig {
        version: 1,
        gateways: vec![],
        clusters: BTreeMap::from([(key.clone(), cluster)]),
    };
    runtime.clusters(&config)[&key].endpoints[0].clone()
}

fn outgoing(method: Method, path: &'static str) -> Outgoing {
    Outgoing {
        method,
        path_and_query: http::uri::PathAndQuery::from_static(path),
        headers: HeaderMap::new(),
        host: Some(HeaderValue::from_static("example.com")),
    }
}

/// A GET's answer, its body still to be read.
async fn get_response(endpoint: &Arc<Endpoint>) -> Result<http::Response<Body>, SendError> {
    within(send(
        AppProtocol::Http1,
        endpoint,
        outgoing(Method::GET, "/"),
        Body::empty(),
    ))
    .await
}

async fn get(endpoint: &Arc<Endpoint>) -> Result<(StatusCode, Bytes), SendError> {
    exchange(endpoint, outgoing(Method::GET, "/"), Body::empty()).await
}

async fn exchange(
    endpoint: &Arc<Endpoint>,
    outgoing: Outgoing,
    body: Body,
) -> Result<(StatusCode, Bytes), SendError> {
    within(async {
        let response = send(AppProtocol::Http1, endpoint, outgoing, body).await?;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok((status, body))
    })
    .await
}

/// A client waiting for bytes that never come fails the test instead of hanging it.
async fn within<T>(work: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("the exchange hung")
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

#[tokio::test]
async fn answers_framed_by_length_leave_the_connection_for_the_next_request() {
    let (endpoint, mut seen) = scripted(vec![Step::Reply(OK), Step::Reply(OK)]).await;
    for _ in 0..2 {
        let (status, body) = get(&endpoint).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        assert_eq!(endpoint.h1.len(), 1, "the connection is back in its pool");
    }
    let (first, raw) = seen.recv().await.unwrap();
    assert_eq!(raw, "GET / HTTP/1.1\r\nhost: example.com\r\n\r\n");
    let (second, _) = seen.recv().await.unwrap();
    assert_eq!((first, second), (0, 0), "one connection carried both");
}

#[tokio::test]
async fn chunked_answers_are_decoded_and_their_trailers_dropped() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
    let (endpoint, _seen) = scripted(vec![Step::Reply(chunked), Step::Reply(OK)]).await;
    let response = get_response(&endpoint).await.unwrap();
    let collected = within(response.into_body().collect()).await.unwrap();
    assert!(collected.trailers().is_none(), "trailers are this hop's");
    assert_eq!(&collected.to_bytes()[..], b"hello world");
    assert_eq!(endpoint.h1.len(), 1);
    assert_eq!(&get(&endpoint).await.unwrap().1[..], b"hello");
}

#[tokio::test]
async fn an_answer_without_framing_ends_with_the_connection() {
    let (endpoint, _seen) = scripted(vec![Step::ReplyAndClose(
        "HTTP/1.1 200 OK\r\n\r\nuntil close",
    )])
    .await;
    let (_, body) = get(&endpoint).await.unwrap();
    assert_eq!(&body[..], b"until close");
    assert_eq!(
        endpoint.h1.len(),
        0,
        "a close-delimited answer uses the connection up"
    );
}

#[tokio::test]
async fn head_and_no_content_answers_carry_no_body_whatever_their_length_says() {
    let (endpoint, _seen) = scripted(vec![
        Step::Reply("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
        Step::Reply("HTTP/1.1 204 No Content\r\n\r\n"),
        Step::Reply("HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
        Step::Reply(OK),
    ])
    .await;
    let (status, body) = exchange(&endpoint, outgoing(Method::HEAD, "/"), Body::empty())
        .await
        .unwrap();
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    let (status, body) = get(&endpoint).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    let (status, body) = get(&endpoint).await.unwrap();
    assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0));
    assert_eq!(&get(&endpoint).await.unwrap().1[..], b"hello");
}

#[tokio::test]
async fn interim_answers_are_skipped_and_an_unasked_upgrade_fails() {
    let (endpoint, _seen) = scripted(vec![
        Step::Reply("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        Step::Reply("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"),
    ])
    .await;
    let (status, body) = get(&endpoint).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert!(matches!(get(&endpoint).await, Err(SendError::Other(_))));
    assert_eq!(endpoint.h1.len(), 0);
}

#[tokio::test]
async fn answers_the_proxy_could_not_frame_faithfully_fail() {
    for answer in [
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nab",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nab",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let (endpoint, _seen) = scripted(vec![Step::Reply(answer)]).await;
        let failed = match get_response(&endpoint).await {
            Err(_) => true,
            Ok(response) => within(response.into_body().collect()).await.is_err(),
        };
        assert!(failed, "{answer:?} must fail");
        assert_eq!(endpoint.h1.len(), 0, "{answer:?}");
    }
}

#[tokio::test]
async fn request_bodies_go_out_by_length_or_chunked() {
    let (endpoint, mut seen) =
        scripted(vec![Step::Reply(OK), Step::Reply(OK), Step::Reply(OK)]).await;

    exchange(
        &endpoint,
        outgoing(Method::POST, "/a?b"),
        Body::full(Bytes::from_static(b"abc")),
    )
    .await
    .unwrap();
    let (_, raw) = seen.recv().await.unwrap();
    assert_eq!(
        raw,
        "POST /a?b HTTP/1.1\r\nhost: example.com\r\ncontent-length: 3\r\n\r\nabc"
    );

    exchange(&endpoint, outgoing(Method::POST, "/"), Body::empty())
        .await
        .unwrap();
    let (_, raw) = seen.recv().await.unwrap();
    assert!(raw.ends_with("content-length: 0\r\n\r\n"), "{raw:?}");

    let (mut sender, receiver) = channel(None);
    let feed = tokio::spawn(async move {
        for piece in [&b"ab"[..], b"cde"] {
            poll_fn(|cx| sender.poll_want(cx)).await.unwrap();
            sender.send(Bytes::from_static(piece));
        }
        poll_fn(|cx| sender.poll_want(cx)).await.unwrap();
        sender.finish();
    });
    let mut request = outgoing(Method::PUT, "/");
    request
        .headers
        .insert("content-length", HeaderValue::from_static("99"));
    let body = Body::Stream(Inbound::H1(receiver));
    exchange(&endpoint, request, body).await.unwrap();
    feed.await.unwrap();
    let (_, raw) = seen.recv().await.unwrap();
    assert_eq!(
        raw,
        "PUT / HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n\
         2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
        "the body's own framing, not a stale Content-Length"
    );
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_not_used() {
    // No `connection: close`: only the socket says the connection is gone.
    let (endpoint, mut seen) = scripted(vec![Step::ReplyAndClose(OK), Step::Reply(OK)]).await;
    get(&endpoint).await.unwrap();
    assert_eq!(endpoint.h1.len(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Not idempotent, so only the check at checkout can save it.
    let post = exchange(
        &endpoint,
        outgoing(Method::POST, "/"),
        Body::full(Bytes::from_static(b"x")),
    );
    assert_eq!(post.await.unwrap().0, StatusCode::OK);
    assert_eq!(seen.recv().await.unwrap().0, 0);
    assert_eq!(seen.recv().await.unwrap().0, 1, "sent on a new connection");
}

#[tokio::test]
async fn a_reused_connection_that_ends_before_answering_retries_only_idempotent_requests() {
    let (endpoint, mut seen) = scripted(vec![
        Step::Reply(OK),
        Step::Drop,
        Step::Reply(OK),
        Step::Reply(OK),
        Step::Drop,
        // Would answer a retry.
        Step::Reply(OK),
    ])
    .await;
    get(&endpoint).await.unwrap();
    assert_eq!(get(&endpoint).await.unwrap().0, StatusCode::OK, "retried");
    let connections: Vec<usize> = [
        seen.recv().await.unwrap(),
        seen.recv().await.unwrap(),
        seen.recv().await.unwrap(),
    ]
    .iter()
    .map(|(index, _)| *index)
    .collect();
    assert_eq!(connections, [0, 0, 1]);

    get(&endpoint).await.unwrap();
    let post = exchange(
        &endpoint,
        outgoing(Method::POST, "/"),
        Body::full(Bytes::from_static(b"x")),
    );
    assert!(
        matches!(post.await, Err(SendError::Other(_))),
        "a POST is never sent twice"
    );
}

#[tokio::test]
async fn an_answer_before_the_whole_request_leaves_the_connection_unused() {
    let (endpoint, _seen) = scripted(vec![Step::ReplyToHead(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
    )])
    .await;
    let (sender, receiver) = channel(None);
    let body = Body::Stream(Inbound::H1(receiver));
    let (status, _) = exchange(&endpoint, outgoing(Method::POST, "/"), body)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(endpoint.h1.len(), 0, "half a request is still on the wire");
    drop(sender);
}

#[tokio::test]
async fn a_body_dropped_midway_closes_its_connection() {
    let (endpoint, _seen) = scripted(vec![Step::Reply(
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
    )])
    .await;
    let response = get_response(&endpoint).await.unwrap();
    let mut body = response.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "hello");
    drop(body);
    assert_eq!(endpoint.h1.len(), 0);
}

#[tokio::test]
async fn host_is_the_given_one_or_the_endpoint_address_never_the_client_header() {
    let (endpoint, mut seen) = scripted(vec![Step::Reply(OK), Step::Reply(OK)]).await;
    let mut request = outgoing(Method::GET, "/p?q");
    request
        .headers
        .insert("host", HeaderValue::from_static("client.example"));
    request.headers.insert("x-a", HeaderValue::from_static("1"));
    request.host = Some(HeaderValue::from_static("rewritten.example"));
    exchange(&endpoint, request.clone(), Body::empty())
        .await
        .unwrap();
    let (_, raw) = seen.recv().await.unwrap();
    assert_eq!(
        raw,
        "GET /p?q HTTP/1.1\r\nhost: rewritten.example\r\nx-a: 1\r\n\r\n"
    );
    request.host = None;
    exchange(&endpoint, request, Body::empty()).await.unwrap();
    let (_, raw) = seen.recv().await.unwrap();
    assert_eq!(
        raw,
        format!(
            "GET /p?q HTTP/1.1\r\nhost: {}\r\nx-a: 1\r\n\r\n",
            endpoint.addr
        )
    );
}

#[tokio::test]
async fn answers_that_rule_out_another_exchange_close_the_connection() {
    for answer in [
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        // Both framings: read as chunked, never trusted again.
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        // Bytes nobody asked for after the answer.
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n",
    ] {
        let (endpoint, _seen) = scripted(vec![Step::Reply(answer)]).await;
        let (status, body) = get(&endpoint).await.unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"hello"[..]),
            "{answer:?}"
        );
        assert_eq!(endpoint.h1.len(), 0, "{answer:?}");
    }
    // HTTP/1.0 that asks to be kept alive is.
    let (endpoint, _seen) = scripted(vec![Step::Reply(
        "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 5\r\n\r\nhello",
    )])
    .await;
    get(&endpoint).await.unwrap();
    assert_eq!(endpoint.h1.len(), 1);
}

#[tokio::test]
async fn a_retry_goes_out_once_and_on_a_new_connection() {
    let (endpoint, mut seen) = scripted(vec![
        Step::Reply(OK),
        Step::Reply(OK),
        Step::Drop,
        Step::Reply(OK),
        Step::Drop,
    ])
    .await;
    let (first, second) = tokio::join!(get(&endpoint), get(&endpoint));
    first.unwrap();
    second.unwrap();
    assert_eq!(endpoint.h1.len(), 2, "two pooled connections");
    get(&endpoint).await.unwrap();
    let connections: Vec<usize> = [(); 4]
        .iter()
        .map(|()| seen.try_recv().unwrap().0)
        .collect();
    assert_eq!(
        connections[3], 2,
        "the retry dialled anew instead of taking the other pooled one"
    );
    assert_eq!(endpoint.h1.len(), 2);
}

#[tokio::test]
async fn a_retry_that_fails_as_well_is_the_end() {
    let (endpoint, mut seen) = scripted(vec![
        Step::Reply(OK),
        Step::Drop,
        Step::Drop,
        Step::Reply(OK),
    ])
    .await;
    get(&endpoint).await.unwrap();
    assert!(matches!(get(&endpoint).await, Err(SendError::Other(_))));
    let attempts = [(); 3].iter().filter(|()| seen.try_recv().is_ok()).count();
    assert_eq!(attempts, 3, "the first exchange, the request and one retry");
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn a_streamed_body_of_known_size_goes_out_with_its_length() {
    let (endpoint, mut seen) = scripted(vec![Step::Reply(OK)]).await;
    let (mut sender, receiver) = channel(Some(4));
    let feed = tokio::spawn(async move {
        poll_fn(|cx| sender.poll_want(cx)).await.unwrap();
        sender.send(Bytes::from_static(b"abcd"));
        sender.finish();
    });
    let body = Body::Stream(Inbound::H1(receiver));
    exchange(&endpoint, outgoing(Method::POST, "/"), body)
        .await
        .unwrap();
    feed.await.unwrap();
    let (_, raw) = seen.recv().await.unwrap();
    assert!(raw.ends_with("content-length: 4\r\n\r\nabcd"), "{raw:?}");
    assert_eq!(endpoint.h1.len(), 1);
}

#[tokio::test]
async fn an_idle_connection_does_not_keep_a_large_read_buffer() {
    const SMALL: &str = concat!(
        "HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n",
        "0123456789abcdefghij"
    );
    let big_answer: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n{}",
            "x".repeat(200_000)
        )
        .into_boxed_str(),
    );
    let (endpoint, _seen) = scripted(vec![Step::Reply(SMALL), Step::Reply(big_answer)]).await;
    get(&endpoint).await.unwrap();
    assert!(
        endpoint.h1.read_capacity() > 0,
        "a small buffer is kept for the next answer"
    );
    let (_, body) = get(&endpoint).await.unwrap();
    assert_eq!(body.len(), 200_000);
    assert_eq!(endpoint.h1.len(), 1);
    assert_eq!(endpoint.h1.read_capacity(), 0, "the large buffer went back");
}

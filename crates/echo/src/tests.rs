use super::*;
use http_body_util::Empty;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

static NEXT_IP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

fn ip() -> IpAddr {
    let n = NEXT_IP.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    IpAddr::from([127, 77, 1, n])
}

fn identity() -> Identity {
    Identity {
        namespace: "ns1".into(),
        service: "svc1".into(),
        pod: "svc1-abc-def".into(),
        ingress: String::new(),
    }
}

async fn start() -> EchoServer {
    let mut options = EchoOptions::new(ip());
    options.http_port = 0;
    options.h2c_port = Some(0);
    EchoServer::start(options, identity()).await.unwrap()
}

/// Sends raw HTTP/1.1 and returns (status, headers text, body).
async fn raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n{extra}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn echoes_request_as_json() {
    let s = start().await;
    let (status, head, body) = raw(
        s.addrs()[0],
        &get("/a/b?x=1", "x-header-set: one\r\nX-Header-Set: two\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/a/b?x=1");
    assert_eq!(v["host"], "example.com");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["proto"], "HTTP/1.1");
    assert_eq!(v["namespace"], "ns1");
    assert_eq!(v["pod"], "svc1-abc-def");
    assert_eq!(v["service"], "svc1");
    assert_eq!(
        v["headers"]["X-Header-Set"],
        serde_json::json!(["one", "two"])
    );
    assert!(v["headers"].get("Host").is_none());
    assert!(v.get("tls").is_none());
    assert!(s.saw_request("/a/b?x=1"), "{:?}", s.log());
    assert!(!s.saw_request("/a/b"));
}

#[tokio::test]
async fn special_paths() {
    let s = start().await;
    let a = s.addrs()[0];
    let table = [
        ("/status/503", 503),
        ("/status/204", 204),
        ("/health", 200),
        ("/anything", 200),
    ];
    for (path, want) in table {
        let (status, _, _) = raw(a, &get(path, "")).await;
        assert_eq!(status, want, "{path}");
    }
    let (_, _, body) = raw(a, &get("//x//y?q=a//b", "")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/x/y?q=a//b");
}

#[tokio::test]
async fn set_header_and_delay() {
    let s = start().await;
    let started = std::time::Instant::now();
    let (status, head, _) = raw(
        s.addrs()[0],
        &get("/d?delay=300ms", "X-Echo-Set-Header: X-A:1,x-b:2,X-A:3\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-a: 1,3"), "{head}");
    assert!(head.contains("x-b: 2"), "{head}");
}

#[tokio::test]
async fn retry_simulator() {
    let s = start().await;
    let a = s.addrs()[0];
    let path = "/retry/x?uuid=u1&succeedAfter=2&responseCode=503";
    assert_eq!(raw(a, &get(path, "")).await.0, 503);
    assert_eq!(raw(a, &get(path, "")).await.0, 503);
    assert_eq!(raw(a, &get(path, "")).await.0, 200);
    // Without responseCode the connection is dropped: no status line at all.
    let path = "/retry/x?uuid=u2&succeedAfter=1";
    assert_eq!(raw(a, &get(path, "")).await.0, 0);
    assert_eq!(raw(a, &get(path, "")).await.0, 200);
}

#[tokio::test]
async fn h2c_port_requires_http2() {
    let s = start().await;
    let h2c = s.addrs()[1];
    assert_eq!(raw(h2c, &get("/", "")).await.0, 400);
    let stream = TcpStream::connect(h2c).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://h2.example/p?q=1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["proto"], "HTTP/2.0");
    assert_eq!(v["host"], "h2.example");
    assert_eq!(v["path"], "/p?q=1");
}

#[tokio::test]
async fn websocket_echo() {
    use tokio_tungstenite::tungstenite::Message;
    let s = start().await;
    let url = format!("ws://{}/ws", s.addrs()[0]);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
}

#[tokio::test]
async fn tls_reports_sni_and_alpn() {
    let cert = rcgen::generate_simple_self_signed(vec!["abc.example.com".into()]).unwrap();
    let mut options = EchoOptions::new(ip());
    options.http_port = 0;
    options.h2c_port = None;
    options.tls = Some((
        0,
        TlsSettings {
            cert_pem: cert.cert.pem(),
            key_pem: cert.signing_key.serialize_pem(),
            client_ca_pem: None,
        },
    ));
    let s = EchoServer::start(options, identity()).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(s.addrs()[1]).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("abc.example.com").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(get("/t", "").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["tls"]["serverName"], "abc.example.com");
    assert_eq!(v["tls"]["negotiatedProtocol"], "http/1.1");
    assert_eq!(v["tls"]["version"], "TLSv1.3");
}

#[test]
fn helpers() {
    let durations = [
        ("1s", Some(Duration::from_secs(1))),
        ("500ms", Some(Duration::from_millis(500))),
        ("1m30s", Some(Duration::from_secs(90))),
        ("1.5s", Some(Duration::from_millis(1500))),
        ("0", Some(Duration::ZERO)),
        ("abc", None),
        ("5", None),
        ("", None),
    ];
    for (text, want) in durations {
        assert_eq!(parse_duration(text), want, "{text}");
    }
    assert_eq!(canonical_header_name("x-header-SET"), "X-Header-Set");
    assert_eq!(canonical_header_name("accept"), "Accept");
    assert_eq!(
        parse_set_header("a:1, B:2,bad"),
        vec![("a".into(), "1".into()), ("B".into(), "2".into())]
    );
    for data in [
        &b""[..],
        b"a",
        b"ab",
        b"abc",
        b"abcd",
        &[0u8, 255, 17, 3, 200][..],
    ] {
        let pem = to_pem("X", data);
        assert_eq!(pem_blocks(&pem, "X"), vec![data.to_vec()]);
    }
    assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
}

#[tokio::test]
async fn dropping_the_server_closes_open_connections() {
    let s = start().await;
    let mut conn = TcpStream::connect(s.addrs()[0]).await.unwrap();
    conn.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    // The keep-alive connection is closed instead of answering for a deleted pod.
    let _ = conn.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection still answered after drop");
}

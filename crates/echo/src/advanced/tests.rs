use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn identity() -> Identity {
    Identity {
        namespace: "mesh".into(),
        version: "v1".into(),
        pod: "echo-v1-5d8f9c7b6a-x2k4q".into(),
        cluster: String::new(),
    }
}

async fn start(options: AdvancedOptions) -> AdvancedEcho {
    AdvancedEcho::start_in(None, options, identity())
        .await
        .expect("starting echo")
}

fn http_only() -> AdvancedOptions {
    AdvancedOptions {
        bind: LOCAL,
        http_ports: vec![0],
        ..AdvancedOptions::default()
    }
}

async fn client(request: &ClientRequest) -> (usize, String) {
    let mut out = Vec::new();
    let failed = run_client(request, &mut out).await.expect("writing output");
    (failed, String::from_utf8(out).expect("utf-8 output"))
}

#[test]
fn parses_the_mesh_suite_container_args() {
    let args = [
        "--tcp=9090",
        "--port=8080",
        "--grpc=7070",
        "--port=8443",
        "--tls=8443",
        "--crt=/cert.crt",
        "--key=/cert.key",
    ];
    let parsed = EchoArgs::parse(&args).unwrap();
    assert_eq!(parsed.options.http_ports, vec![8080]);
    assert_eq!(parsed.options.tls_ports, vec![8443]);
    assert_eq!(parsed.options.tcp_ports, vec![9090]);
    assert_eq!(parsed.grpc_ports, vec![7070]);
    assert_eq!(
        parsed.cert_file.as_deref(),
        Some(std::path::Path::new("/cert.crt"))
    );
    assert!(parsed.ignored.is_empty());

    let none: [&str; 0] = [];
    assert_eq!(
        EchoArgs::parse(&none).unwrap().options.http_ports,
        vec![8080]
    );

    let spaced = EchoArgs::parse(&[
        "--port",
        "80,81",
        "--version",
        "v2",
        "--bind-ip",
        "--istio-version",
        "1.2",
    ])
    .unwrap();
    assert_eq!(spaced.options.http_ports, vec![80, 81]);
    assert_eq!(spaced.version.as_deref(), Some("v2"));
    assert_eq!(spaced.ignored, vec!["--bind-ip", "--istio-version"]);
    let id = spaced.identity(identity());
    assert_eq!(id.version, "v2");
    assert_eq!(id.pod, identity().pod);

    let err = EchoArgs::parse(&["--port=http"]).unwrap_err().to_string();
    assert!(err.contains("--port=http"), "{err}");
    assert!(EchoArgs::parse(&["--port"]).is_err());
    assert!(EchoArgs::parse(&["8080"]).is_err());
}

#[tokio::test]
async fn client_reports_what_the_server_saw() {
    let echo = start(http_only()).await;
    let addr = echo.addrs_of(EchoPort::Http)[0];
    let mut request = ClientRequest::new(format!("http://{addr}/some/path?x=1"));
    request.method = "PUT".into();
    request.headers = vec![
        ("x-multi".into(), "a".into()),
        ("X-Multi".into(), "b".into()),
        ("x-other".into(), " spaced ".into()),
    ];
    let (failed, text) = client(&request).await;
    assert_eq!(failed, 0, "{text}");
    let responses = parse_client_output(&text);
    assert_eq!(responses.len(), 1, "{text}");
    let r = &responses[0];
    assert_eq!(r.status, 200);
    assert_eq!(r.field("ServiceVersion"), Some("v1"));
    assert_eq!(
        r.field("ServicePort"),
        Some(addr.port().to_string().as_str())
    );
    assert_eq!(r.field("Host"), Some(addr.to_string().as_str()));
    assert_eq!(r.field("URL"), Some("/some/path?x=1"));
    assert_eq!(r.field("Method"), Some("PUT"));
    assert_eq!(r.field("Proto"), Some("HTTP/1.1"));
    assert_eq!(r.field("IP"), Some("127.0.0.1"));
    assert_eq!(r.field("Alpn"), Some(""));
    assert_eq!(r.field("Hostname"), Some("echo-v1-5d8f9c7b6a-x2k4q"));
    assert_eq!(r.field("Namespace"), Some("mesh"));
    assert_eq!(r.request_header("x-multi").as_deref(), Some("a,b"));
    assert_eq!(r.request_header("X-Other").as_deref(), Some("spaced"));
    assert_eq!(r.request_header("Host"), None, "Host is reported as Host=");
    assert_eq!(
        r.response_header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(
        text.contains("RequestHeader=X-Multi:a\nRequestHeader=X-Multi:b\n"),
        "{text}"
    );
    assert!(echo.saw_request("/some/path?x=1"), "{:?}", echo.log());
}

#[tokio::test]
async fn explicit_host_header_wins() {
    let echo = start(http_only()).await;
    let addr = echo.addrs_of(EchoPort::Http)[0];
    let mut request = ClientRequest::new(format!("http://{addr}"));
    request.headers = vec![("Host".into(), "echo-v1:8080".into())];
    let (_, text) = client(&request).await;
    let r = &parse_client_output(&text)[0];
    assert_eq!(r.field("Host"), Some("echo-v1:8080"), "{text}");
    assert_eq!(r.field("URL"), Some("/"));
}

#[tokio::test]
async fn many_requests_share_one_connection() {
    let echo = start(http_only()).await;
    let addr = echo.addrs_of(EchoPort::Http)[0];
    let mut request = ClientRequest::new(format!("http://{addr}/n"));
    request.count = 500;
    let started = Instant::now();
    let (failed, text) = client(&request).await;
    let elapsed = started.elapsed();
    assert_eq!(failed, 0);
    let responses = parse_client_output(&text);
    assert_eq!(responses.len(), 500);
    assert!(responses.iter().all(|r| r.status == 200));
    assert!(
        elapsed < Duration::from_secs(10),
        "500 requests took {elapsed:?}"
    );
    // Blocks are separated by exactly one blank line.
    assert_eq!(text.matches("\n\nStatusCode=").count(), 499);
    let clients: HashSet<String> = echo
        .log()
        .iter()
        .filter_map(|l| l.rsplit_once('(').map(|(_, c)| c.to_string()))
        .collect();
    assert_eq!(
        clients.len(),
        1,
        "expected one kept-alive connection: {clients:?}"
    );
}

/// A server that answers one request per connection and closes it without saying so.
async fn one_shot_server() -> SocketAddr {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 12\r\n\r\nHostname=one")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn reconnects_when_the_server_closes_and_never_follows_redirects() {
    let addr = one_shot_server().await;
    let mut request = ClientRequest::new(format!("http://{addr}/r"));
    request.count = 5;
    let (failed, text) = client(&request).await;
    assert_eq!(failed, 0, "{text}");
    let responses = parse_client_output(&text);
    assert_eq!(responses.len(), 5);
    for r in &responses {
        assert_eq!(r.status, 302);
        assert_eq!(r.response_header("Location"), Some("/elsewhere"));
        assert_eq!(r.field("Hostname"), Some("one"));
    }
}

#[tokio::test]
async fn failures_are_reported_per_request() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut request = ClientRequest::new(format!("http://{addr}/"));
    request.count = 3;
    let (failed, text) = client(&request).await;
    assert_eq!(failed, 3);
    let responses = parse_client_output(&text);
    assert_eq!(responses.len(), 3, "{text}");
    for r in &responses {
        assert_eq!(r.status, 0);
        let error = r.field("Error").unwrap_or_default();
        assert!(error.contains(&addr.to_string()), "{error}");
    }

    let (failed, text) = client(&ClientRequest::new("grpc://echo:7070")).await;
    assert_eq!(failed, 1);
    assert!(text.contains("not supported"), "{text}");
    // Resolution goes through the system resolver; `localhost` comes from /etc/hosts.
    let echo = start(http_only()).await;
    let port = echo.addrs_of(EchoPort::Http)[0].port();
    let (failed, text) = client(&ClientRequest::new(format!("http://localhost:{port}/"))).await;
    assert_eq!(failed, 0, "{text}");
    assert!(text.contains(&format!("Host=localhost:{port}")), "{text}");
}

#[tokio::test]
async fn timeouts_fail_the_request() {
    // Accepts and never answers.
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut request = ClientRequest::new(format!("http://{addr}/"));
    request.timeout = Duration::from_millis(200);
    let (failed, text) = client(&request).await;
    assert_eq!(failed, 1);
    assert!(text.contains("Error=request timed out"), "{text}");
}

#[tokio::test]
async fn h2c_on_http_ports() {
    let echo = start(http_only()).await;
    let stream = TcpStream::connect(echo.addrs_of(EchoPort::Http)[0])
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://echo.mesh:80/h2?y")
        .header("x-h2", "yes")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let fields = parse_fields(&String::from_utf8_lossy(&body));
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("Proto"), Some("HTTP/2.0"));
    assert_eq!(get("Host"), Some("echo.mesh:80"));
    assert_eq!(get("URL"), Some("/h2?y"));
    assert_eq!(get("RequestHeader"), Some("X-H2:yes"));
}

#[tokio::test]
async fn tls_ports_report_alpn() {
    let cert = rcgen::generate_simple_self_signed(vec!["echo.mesh".into()]).unwrap();
    let options = AdvancedOptions {
        bind: LOCAL,
        http_ports: vec![],
        tls_ports: vec![0],
        tls: Some(crate::TlsSettings {
            cert_pem: cert.cert.pem(),
            key_pem: cert.signing_key.serialize_pem(),
            client_ca_pem: None,
        }),
        ..AdvancedOptions::default()
    };
    let echo = start(options).await;
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
    let tcp = TcpStream::connect(echo.addrs_of(EchoPort::Tls)[0])
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("echo.mesh").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /t HTTP/1.1\r\nHost: echo.mesh\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("\nAlpn=http/1.1\n"), "{text}");
    assert!(text.contains("\nURL=/t\n"), "{text}");
}

#[tokio::test]
async fn self_signed_certificate_when_none_given() {
    let options = AdvancedOptions {
        bind: LOCAL,
        http_ports: vec![],
        tls_ports: vec![0],
        ..AdvancedOptions::default()
    };
    let echo = start(options).await;
    assert_eq!(echo.addrs_of(EchoPort::Tls).len(), 1);
    // The handshake starts: the server answers a ClientHello with a ServerHello record.
    let mut tcp = TcpStream::connect(echo.addrs_of(EchoPort::Tls)[0])
        .await
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    tcp.write_all(&hello).await.unwrap();
    let mut first = [0u8; 1];
    tcp.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], 0x16, "expected a TLS handshake record");
}

#[tokio::test]
async fn tcp_ports_echo_bytes() {
    let options = AdvancedOptions {
        bind: LOCAL,
        http_ports: vec![],
        tcp_ports: vec![0],
        ..AdvancedOptions::default()
    };
    let echo = start(options).await;
    let mut s = TcpStream::connect(echo.addrs_of(EchoPort::Tcp)[0])
        .await
        .unwrap();
    s.write_all(b"hello\x00world").await.unwrap();
    let mut buf = [0u8; 11];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello\x00world");
    assert!(echo.log()[0].starts_with("Echoing back TCP connection"));
}

#[tokio::test]
async fn listens_inside_a_given_namespace() {
    let here = strait_netns::NetNs::current().unwrap();
    let echo = AdvancedEcho::start_in(Some(&here), http_only(), identity())
        .await
        .unwrap();
    let addr = echo.addrs_of(EchoPort::Http)[0];
    let (failed, text) = client(&ClientRequest::new(format!("http://{addr}/ns"))).await;
    assert_eq!(failed, 0, "{text}");
    // Binding a busy port names the pod and the address.
    let err = AdvancedEcho::start_in(
        Some(&here),
        AdvancedOptions {
            bind: LOCAL,
            http_ports: vec![addr.port()],
            ..AdvancedOptions::default()
        },
        identity(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("echo-v1-5d8f9c7b6a-x2k4q"), "{err}");
    assert!(err.contains(&addr.port().to_string()), "{err}");
}

#[tokio::test]
async fn shutdown_frees_the_ports() {
    let echo = start(http_only()).await;
    let addr = echo.addrs_of(EchoPort::Http)[0];
    echo.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    let again = AdvancedEcho::start_in(
        None,
        AdvancedOptions {
            bind: LOCAL,
            http_ports: vec![addr.port()],
            ..AdvancedOptions::default()
        },
        identity(),
    )
    .await;
    assert!(again.is_ok(), "{again:?}");
}

#[tokio::test]
async fn stopping_closes_open_connections() {
    let echo = start(http_only()).await;
    let mut conn = TcpStream::connect(echo.addrs_of(EchoPort::Http)[0])
        .await
        .unwrap();
    conn.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    echo.stop();
    let _ = conn.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection still answered after stop");
}

#[test]
fn parses_client_output() {
    let text = "StatusCode=200\nResponseHeader=X-A:1\nResponseHeader=x-a:2\n\
                Hostname=echo-v1-abc-def\nRequestHeader=X-B:1\nRequestHeader=x-b:2\n\n\
                StatusCode=0\nError=dial tcp: refused\n\n\
                [2] StatusCode=503\n[2 body] Hostname=v2-x-y\n[x] odd\n";
    let responses = parse_client_output(text);
    assert_eq!(responses.len(), 3);
    let first = &responses[0];
    assert_eq!(first.status, 200);
    assert_eq!(first.response_header("X-A"), Some("2"));
    assert_eq!(first.request_header("x-b").as_deref(), Some("1,2"));
    assert_eq!(first.request_header("x-c"), None);
    assert_eq!(first.field("Hostname"), Some("echo-v1-abc-def"));
    assert_eq!(responses[1].status, 0);
    assert_eq!(responses[1].field("Error"), Some("dial tcp: refused"));
    assert_eq!(responses[2].status, 503);
    assert_eq!(responses[2].field("Hostname"), Some("v2-x-y"));
    assert_eq!(
        responses[2].fields.len(),
        1,
        "non Key=Value lines are skipped"
    );

    let bare = parse_client_output("Hostname=p\nURL=/\n");
    assert_eq!(bare.len(), 1);
    assert_eq!(bare[0].status, 0);
    assert_eq!(bare[0].field("URL"), Some("/"));
    assert!(parse_client_output("\n\n").is_empty());
}

#[test]
fn timeouts_parse() {
    assert_eq!(parse_timeout("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_timeout("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_timeout("3"), Some(Duration::from_secs(3)));
    assert_eq!(parse_timeout("soon"), None);
    assert_eq!(parse_timeout("-1"), None);
}

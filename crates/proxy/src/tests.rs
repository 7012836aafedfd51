//! End-to-end tests on loopback: a real Proxy in front of tiny in-test backends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_config::*;
use tokio::net::{TcpListener, TcpStream};

use super::*;

// ---------------------------------------------------------------------------------------------
// Config builders

fn gateway_ref() -> ObjectRef {
    ObjectRef {
        namespace: "gw-ns".into(),
        name: "gw".into(),
    }
}

fn key(name: &str) -> ClusterKey {
    ClusterKey {
        namespace: "app".into(),
        name: name.into(),
        port: 80,
    }
}

fn to(name: &str) -> WeightedBackend {
    WeightedBackend {
        weight: 1,
        target: BackendTarget::Cluster(key(name)),
        filters: vec![],
    }
}

fn rule(prefix: &str, backends: Vec<WeightedBackend>) -> HttpRule {
    HttpRule {
        name: None,
        matches: vec![HttpMatch {
            path: PathMatch::Prefix(prefix.into()),
            headers: vec![],
            query_params: vec![],
            method: None,
        }],
        filters: vec![],
        backends,
        timeouts: Timeouts::default(),
        retry: None,
    }
}

fn route(name: &str, hostnames: &[&str], rules: Vec<HttpRule>) -> HttpRoute {
    HttpRoute {
        route: RouteRef {
            kind: "HTTPRoute".into(),
            namespace: "app".into(),
            name: name.into(),
        },
        creation_timestamp: "2026-01-01T00:00:00Z".into(),
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        rules,
    }
}

fn http_port(port: u16, rules: Vec<HttpRule>) -> PortConfig {
    PortConfig {
        port,
        protocol: ListenerProtocol::Http,
        listeners: vec![ListenerConfig {
            name: "http".into(),
            hostname: None,
            tls: None,
            http_routes: vec![route("r", &[], rules)],
        }],
    }
}

fn config(
    ports: Vec<PortConfig>,
    clusters: &[(&str, AppProtocol, Vec<SocketAddr>)],
) -> Arc<ProxyConfig> {
    Arc::new(ProxyConfig {
        version: 1,
        gateways: vec![GatewayConfig {
            gateway: gateway_ref(),
            addresses: vec!["127.0.0.1".parse().unwrap()],
            ports,
            backend_client_certificate: None,
        }],
        clusters: clusters
            .iter()
            .map(|(name, protocol, endpoints)| {
                (
                    key(name),
                    Cluster {
                        protocol: *protocol,
                        endpoints: endpoints.clone(),
                        tls: None,
                    },
                )
            })
            .collect(),
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(config: Arc<ProxyConfig>) -> Proxy {
    let proxy = Proxy::new(ProxyOptions { port_offset: 0 });
    let errors = proxy.apply(config).await;
    assert!(errors.is_empty(), "{errors:?}");
    proxy
}

// ---------------------------------------------------------------------------------------------
// Test backend

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone)]
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Backend {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening and kills every open connection (a crashed backend).
    fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// An HTTP/1.1 + h2c backend. `/delay/<ms>` sleeps, `/status/<code>` answers that code,
/// `/flaky/<n>` answers 500 to its first n requests. Every response names the backend and echoes
/// what it saw in `x-seen-*` headers.
async fn backend(name: &'static str) -> Backend {
    backend_at(name, "127.0.0.1:0".parse().unwrap()).await
}

async fn backend_at(name: &'static str, addr: SocketAddr) -> Backend {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tasks = Arc::new(Mutex::new(Vec::new()));
    let flaky = Arc::new(AtomicUsize::new(0));
    let record = seen.clone();
    let conn_tasks = tasks.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            let flaky = flaky.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let record = record.clone();
                let flaky = flaky.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let host = parts
                        .headers
                        .get("host")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                        .unwrap_or_default();
                    let path = parts.uri.path().to_owned();
                    record.lock().unwrap().push(Seen {
                        method: parts.method.to_string(),
                        uri: parts
                            .uri
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        version: parts.version,
                        headers: parts.headers.clone(),
                        body: body.clone(),
                    });
                    let mut code = 200;
                    if let Some((_, ms)) = path.split_once("/delay/") {
                        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
                    } else if let Some((_, c)) = path.split_once("/status/") {
                        code = c.parse().unwrap_or(200);
                    } else if let Some((_, n)) = path.split_once("/flaky/")
                        && flaky.fetch_add(1, Ordering::SeqCst) < n.parse().unwrap_or(0)
                    {
                        code = 500;
                    }
                    let response = Response::builder()
                        .status(code)
                        .header("x-backend", name)
                        .header("x-seen-host", host)
                        .header(
                            "x-seen-uri",
                            parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
                        )
                        .header("x-seen-version", format!("{:?}", parts.version))
                        .header("x-original", "from-backend")
                        .header("connection", "x-secret")
                        .header("x-secret", "hop")
                        .body(Full::new(body))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let conn = tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
            conn_tasks.lock().unwrap().push(conn.abort_handle());
        }
    });
    tasks.lock().unwrap().push(accept.abort_handle());
    Backend { addr, seen, tasks }
}

// ---------------------------------------------------------------------------------------------
// Test clients

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn collect(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// One HTTP/1.1 request on a fresh connection.
async fn get(port: u16, host: &str, path: &str) -> Reply {
    request(
        port,
        Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

async fn request(port: u16, req: Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    collect(sender.send_request(req).await.unwrap()).await
}

/// One HTTP/2 prior-knowledge request.
async fn get_h2c(port: u16, host: &str, path: &str) -> Reply {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let uri = format!("http://{host}{path}");
    let req = Request::get(uri)
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    collect(sender.send_request(req).await.unwrap()).await
}

// ---------------------------------------------------------------------------------------------
// Pure parts

#[test]
fn listener_diffing() {
    let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
    let b: SocketAddr = "127.0.0.2:80".parse().unwrap();
    let c: SocketAddr = "127.0.0.1:443".parse().unwrap();
    let cases: [(&[SocketAddr], &[SocketAddr], &[SocketAddr]); 4] = [
        (&[a, b], &[a, b], &[]),
        (&[a, b, c], &[a], &[b, c]),
        (&[], &[a], &[]),
        (&[a], &[], &[a]),
    ];
    for (existing, desired, want) in cases {
        let existing = existing.iter().copied().collect();
        let desired: HashMap<SocketAddr, ()> = desired.iter().map(|a| (*a, ())).collect();
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(removed(&existing, &desired), want);
    }
}

#[tokio::test]
async fn invalid_certificate_is_reported_with_gateway_and_port() {
    let proxy = Proxy::new(ProxyOptions::default());
    let port = free_port();
    let bad = CertificatePem {
        source: ObjectRef {
            namespace: "gw-ns".into(),
            name: "bad-secret".into(),
        },
        cert_chain_pem: "not a pem".into(),
        private_key_pem: "nope".into(),
    };
    let mut port_config = http_port(port, vec![rule("/", vec![to("a")])]);
    port_config.protocol = ListenerProtocol::Https;
    port_config.listeners[0].tls = Some(ListenerTls {
        certificates: vec![bad],
        client_validation: None,
    });
    let errors = proxy.apply(config(vec![port_config], &[])).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let message = errors[0].to_string();
    assert!(
        message.contains("gw-ns/gw") && message.contains(&format!("port {port}")),
        "{message}"
    );
    assert!(
        matches!(
            errors[0],
            ApplyError::Tls { .. } | ApplyError::Routes { .. }
        ),
        "{message}"
    );
    assert!(
        proxy.listeners().await.is_empty(),
        "nothing bound for a broken port"
    );
}

#[tokio::test]
async fn bind_failure_is_reported() {
    // A listening socket without SO_REUSEADDR blocks the address.
    let blocker = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = blocker.local_addr().unwrap().port();
    let proxy = Proxy::new(ProxyOptions::default());
    let errors = proxy
        .apply(config(vec![http_port(port, vec![])], &[]))
        .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0], ApplyError::Bind { port: p, .. } if *p == port),
        "{errors:?}"
    );
}

#[tokio::test]
async fn port_offset_is_applied() {
    let local = free_port();
    let proxy = Proxy::new(ProxyOptions {
        port_offset: local - 80,
    });
    let errors = proxy.apply(config(vec![http_port(80, vec![])], &[])).await;
    assert!(errors.is_empty(), "{errors:?}");
    let bound = proxy.listeners().await;
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0].port, 80);
    assert_eq!(
        bound[0].local_addr,
        SocketAddr::new("127.0.0.1".parse().unwrap(), local)
    );
    assert_eq!(bound[0].gateway, gateway_ref());
}

// ---------------------------------------------------------------------------------------------
// Routing and forwarding

#[tokio::test]
async fn routes_to_backends_and_404s() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let port = free_port();
    let cfg = config(
        vec![http_port(
            port,
            vec![rule("/one", vec![to("b1")]), rule("/two", vec![to("b2")])],
        )],
        &[
            ("b1", AppProtocol::Http1, vec![b1.addr]),
            ("b2", AppProtocol::Http1, vec![b2.addr]),
        ],
    );
    let _proxy = start(cfg).await;
    let cases = [
        ("/one", 200, "b1"),
        ("/one/x?q=1", 200, "b1"),
        ("/two", 200, "b2"),
        ("/three", 404, ""),
    ];
    for (path, code, name) in cases {
        let reply = get(port, "Example.com", path).await;
        assert_eq!(reply.status, code, "{path}");
        assert_eq!(reply.header("x-backend"), name, "{path}");
        if code == 200 {
            assert_eq!(reply.header("x-seen-uri"), path);
        }
    }
}

#[tokio::test]
async fn request_hygiene_host_and_forwarded_headers() {
    let b = backend("b").await;
    let port = free_port();
    let cfg = config(
        vec![http_port(port, vec![rule("/", vec![to("b")])])],
        &[("b", AppProtocol::Http1, vec![b.addr])],
    );
    let _proxy = start(cfg).await;
    let req = Request::post("/submit")
        .header("host", "Foo.Example:1234")
        .header("connection", "x-private, keep-alive")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let reply = request(port, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "payload");
    assert!(
        reply.headers.get("x-secret").is_none(),
        "response hop-by-hop header leaked"
    );
    let seen = b.seen();
    let seen = seen.last().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.headers["host"], "Foo.Example:1234");
    assert_eq!(seen.headers["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-kept"], "yes");
    assert!(seen.headers.get("x-private").is_none());
    assert!(seen.headers.get("keep-alive").is_none());
    assert_eq!(seen.body, "payload");
}

#[tokio::test]
async fn header_modifiers() {
    let b = backend("b").await;
    let port = free_port();
    let mut r = rule("/", vec![to("b")]);
    r.filters = vec![
        HttpFilter::RequestHeaderModifier(HeaderModifier {
            set: vec![("X-Set".into(), "set-value".into())],
            add: vec![("X-Add".into(), "added".into())],
            remove: vec!["X-Remove".into()],
        }),
        HttpFilter::ResponseHeaderModifier(HeaderModifier {
            set: vec![("X-Original".into(), "overwritten".into())],
            add: vec![("X-Resp-Add".into(), "r".into())],
            remove: vec!["x-seen-version".into()],
        }),
    ];
    let cfg = config(
        vec![http_port(port, vec![r])],
        &[("b", AppProtocol::Http1, vec![b.addr])],
    );
    let _proxy = start(cfg).await;
    let req = Request::get("/")
        .header("host", "h")
        .header("x-set", "old")
        .header("x-add", "first")
        .header("x-remove", "gone")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = request(port, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-original"), "overwritten");
    assert_eq!(reply.header("x-resp-add"), "r");
    assert!(reply.headers.get("x-seen-version").is_none());
    let seen = b.seen().pop().unwrap();
    assert_eq!(seen.headers["x-set"], "set-value");
    let added: Vec<_> = seen
        .headers
        .get_all("x-add")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(added.join(","), "first,added");
    assert!(seen.headers.get("x-remove").is_none());
}

#[tokio::test]
async fn redirect_answers_without_backend() {
    let port = free_port();
    let mut r = rule("/", vec![]);
    r.filters = vec![HttpFilter::RequestRedirect(RequestRedirect {
        scheme: None,
        hostname: Some("elsewhere.example".into()),
        path: None,
        port: None,
        status_code: 301,
    })];
    let _proxy = start(config(vec![http_port(port, vec![r])], &[])).await;
    let reply = get(port, "example.com", "/a/b?x=1").await;
    assert_eq!(reply.status, 301);
    let location = reply.header("location");
    assert!(
        location.starts_with("http://elsewhere.example"),
        "{location}"
    );
    assert!(location.contains("/a/b"), "{location}");
}

#[tokio::test]
async fn url_rewrite_host_and_path() {
    let b = backend("b").await;
    let port = free_port();
    let mut r = rule("/prefix", vec![to("b")]);
    r.filters = vec![HttpFilter::UrlRewrite(UrlRewrite {
        hostname: Some("rewritten.example".into()),
        path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
    })];
    let cfg = config(
        vec![http_port(port, vec![r])],
        &[("b", AppProtocol::Http1, vec![b.addr])],
    );
    let _proxy = start(cfg).await;
    let reply = get(port, "example.com", "/prefix/rest?q=1").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-seen-host"), "rewritten.example");
    assert_eq!(reply.header("x-seen-uri"), "/new/rest?q=1");
}

#[tokio::test]
async fn error_statuses() {
    let dead = free_port();
    let port = free_port();
    let invalid = WeightedBackend {
        weight: 1,
        target: BackendTarget::Invalid {
            reason: "missing Service".into(),
        },
        filters: vec![],
    };
    let mut zero = to("b");
    zero.weight = 0;
    let cfg = config(
        vec![http_port(
            port,
            vec![
                rule("/invalid", vec![invalid]),
                rule("/none", vec![]),
                rule("/zero", vec![zero]),
                rule("/empty", vec![to("empty")]),
                rule("/dead", vec![to("dead")]),
            ],
        )],
        &[
            ("empty", AppProtocol::Http1, vec![]),
            (
                "dead",
                AppProtocol::Http1,
                vec![SocketAddr::from(([127, 0, 0, 1], dead))],
            ),
        ],
    );
    let _proxy = start(cfg).await;
    for (path, code) in [
        ("/invalid", 500),
        ("/none", 500),
        ("/zero", 500),
        ("/empty", 503),
        ("/dead", 502),
    ] {
        assert_eq!(get(port, "h", path).await.status, code, "{path}");
    }
}

#[tokio::test]
async fn timeouts_give_504() {
    let b = backend("b").await;
    let port = free_port();
    let mut per_try = rule("/backend", vec![to("b")]);
    per_try.timeouts.backend_request = Some(Duration::from_millis(200));
    let mut whole = rule("/request", vec![to("b")]);
    whole.timeouts.request = Some(Duration::from_millis(200));
    let mut disabled = rule("/disabled", vec![to("b")]);
    disabled.timeouts.request = Some(Duration::ZERO);
    let cfg = config(
        vec![http_port(port, vec![per_try, whole, disabled])],
        &[("b", AppProtocol::Http1, vec![b.addr])],
    );
    let _proxy = start(cfg).await;
    let cases = [
        ("/backend/delay/1000", 504),
        ("/backend/delay/0", 200),
        ("/request/delay/1000", 504),
        ("/disabled/delay/400", 200),
    ];
    for (path, code) in cases {
        // The backend sees the path after the rule prefix, which it ignores except for /delay.
        let reply = get(port, "h", path).await;
        assert_eq!(reply.status, code, "{path}");
    }
}

#[tokio::test]
async fn retries_on_listed_codes() {
    let port = free_port();
    let mut r = rule("/", vec![to("b")]);
    r.retry = Some(strait_config::Retry {
        codes: vec![500],
        attempts: 2,
        backoff: Some(Duration::from_millis(5)),
    });
    let b = backend("b").await;
    let cfg = config(
        vec![http_port(port, vec![r.clone()])],
        &[("b", AppProtocol::Http1, vec![b.addr])],
    );
    let _proxy = start(cfg).await;
    let reply = get(port, "h", "/flaky/2").await;
    assert_eq!(reply.status, 200, "succeeds on the 3rd attempt");
    assert_eq!(b.seen().len(), 3);

    // A fresh backend that needs more attempts than allowed surfaces its last answer.
    let port = free_port();
    let b = backend("b").await;
    let cfg = config(
        vec![http_port(port, vec![r.clone()])],
        &[("b", AppProtocol::Http1, vec![b.addr])],
    );
    let _proxy2 = start(cfg).await;
    assert_eq!(get(port, "h", "/flaky/3").await.status, 500);
    assert_eq!(b.seen().len(), 3);
    // Codes not listed are not retried.
    assert_eq!(get(port, "h", "/status/503").await.status, 503);
    assert_eq!(b.seen().len(), 4);

    // Connection errors are retried: one dead endpoint among live ones never fails a request.
    let port = free_port();
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let b = backend("b").await;
    let mut r = rule("/", vec![to("b")]);
    r.retry = Some(strait_config::Retry {
        codes: vec![],
        attempts: 3,
        backoff: None,
    });
    let cfg = config(
        vec![http_port(port, vec![r])],
        &[("b", AppProtocol::Http1, vec![dead, b.addr])],
    );
    let _proxy3 = start(cfg).await;
    for _ in 0..10 {
        assert_eq!(get(port, "h", "/").await.status, 200);
    }
}

#[tokio::test]
async fn h2c_clients_and_upstreams() {
    let b = backend("b").await;
    let port = free_port();
    let cfg = config(
        vec![http_port(
            port,
            vec![rule("/h1", vec![to("h1")]), rule("/h2", vec![to("h2")])],
        )],
        &[
            ("h1", AppProtocol::Http1, vec![b.addr]),
            ("h2", AppProtocol::H2c, vec![b.addr]),
        ],
    );
    let _proxy = start(cfg).await;
    let cases = [
        (true, "/h2", "HTTP/2.0"),
        (false, "/h2", "HTTP/2.0"),
        (true, "/h1", "HTTP/1.1"),
        (false, "/h1", "HTTP/1.1"),
    ];
    for (h2_client, path, upstream_version) in cases {
        let reply = if h2_client {
            get_h2c(port, "svc.example", path).await
        } else {
            get(port, "svc.example", path).await
        };
        assert_eq!(reply.status, 200, "{h2_client} {path}");
        assert_eq!(
            reply.header("x-seen-version"),
            upstream_version,
            "{h2_client} {path}"
        );
        assert_eq!(
            reply.header("x-seen-host"),
            "svc.example",
            "{h2_client} {path}"
        );
    }
    // The h2c upstream connection is shared.
    let h2_requests = b
        .seen()
        .iter()
        .filter(|s| s.version == Version::HTTP_2)
        .count();
    assert_eq!(h2_requests, 2);
}

#[tokio::test]
async fn mirror_copies_request() {
    let (primary, mirror) = (backend("primary").await, backend("mirror").await);
    let port = free_port();
    let mut r = rule("/", vec![to("primary")]);
    r.filters = vec![HttpFilter::RequestMirror(strait_config::RequestMirror {
        backend: BackendTarget::Cluster(key("mirror")),
        percent: 100.0,
    })];
    let cfg = config(
        vec![http_port(port, vec![r])],
        &[
            ("primary", AppProtocol::Http1, vec![primary.addr]),
            ("mirror", AppProtocol::Http1, vec![mirror.addr]),
        ],
    );
    let _proxy = start(cfg).await;
    let req = Request::post("/m?id=7")
        .header("host", "h")
        .body(Full::new(Bytes::from_static(b"copy me")))
        .unwrap();
    let reply = request(port, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-backend"), "primary");
    for _ in 0..100 {
        if !mirror.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = mirror.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/m?id=7");
    assert_eq!(seen[0].body, "copy me");
}

// ---------------------------------------------------------------------------------------------
// Config changes

#[tokio::test]
async fn config_swap_keeps_keep_alive_connection() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let port = free_port();
    let clusters = [
        ("b1", AppProtocol::Http1, vec![b1.addr]),
        ("b2", AppProtocol::Http1, vec![b2.addr]),
    ];
    let proxy = start(config(
        vec![http_port(port, vec![rule("/", vec![to("b1")])])],
        &clusters,
    ))
    .await;
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = || {
        Request::get("/")
            .header("host", "h")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let first = collect(sender.send_request(req()).await.unwrap()).await;
    assert_eq!(first.header("x-backend"), "b1");
    let errors = proxy
        .apply(config(
            vec![http_port(port, vec![rule("/", vec![to("b2")])])],
            &clusters,
        ))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    sender.ready().await.unwrap();
    let second = collect(sender.send_request(req()).await.unwrap()).await;
    assert_eq!(
        second.header("x-backend"),
        "b2",
        "same connection, new config"
    );
}

#[tokio::test]
async fn removed_port_stops_accepting() {
    let b = backend("b").await;
    let (keep, drop_port) = (free_port(), free_port());
    let clusters = [("b", AppProtocol::Http1, vec![b.addr])];
    let both = vec![
        http_port(keep, vec![rule("/", vec![to("b")])]),
        http_port(drop_port, vec![rule("/", vec![to("b")])]),
    ];
    let proxy = start(config(both, &clusters)).await;
    assert_eq!(get(drop_port, "h", "/").await.status, 200);
    let errors = proxy
        .apply(config(
            vec![http_port(keep, vec![rule("/", vec![to("b")])])],
            &clusters,
        ))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(("127.0.0.1", drop_port)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "removed port still accepts");
    assert_eq!(get(keep, "h", "/").await.status, 200);
    assert_eq!(proxy.listeners().await.len(), 1);
    proxy.shutdown(Duration::from_secs(1)).await;
    assert!(
        TcpStream::connect(("127.0.0.1", keep)).await.is_err(),
        "shutdown stops accepting"
    );
}

#[tokio::test]
async fn route_table_build_failure_keeps_previous_state() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let port = free_port();
    let clusters = [
        ("b1", AppProtocol::Http1, vec![b1.addr]),
        ("b2", AppProtocol::Http1, vec![b2.addr]),
    ];
    let proxy = start(config(
        vec![http_port(port, vec![rule("/", vec![to("b1")])])],
        &clusters,
    ))
    .await;
    let mut bad = rule("/", vec![to("b2")]);
    bad.matches[0].path = PathMatch::RegularExpression("(".into());
    let errors = proxy
        .apply(config(vec![http_port(port, vec![bad])], &clusters))
        .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(matches!(errors[0], ApplyError::Routes { .. }));
    assert_eq!(get(port, "h", "/").await.header("x-backend"), "b1");
}

// ---------------------------------------------------------------------------------------------
// HTTPS

struct Pki {
    roots: rustls::RootCertStore,
    certs: HashMap<&'static str, (CertificatePem, Vec<u8>)>,
}

fn pki(hosts: &[&'static str]) -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let mut certs = HashMap::new();
    for host in hosts {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let pem = CertificatePem {
            source: ObjectRef {
                namespace: "gw-ns".into(),
                name: format!("cert-{host}"),
            },
            cert_chain_pem: cert.pem(),
            private_key_pem: key.serialize_pem(),
        };
        certs.insert(*host, (pem, cert.der().to_vec()));
    }
    Pki { roots, certs }
}

/// Opens a TLS connection with `sni`, returns the served leaf certificate and an HTTP sender.
async fn tls_connect(
    port: u16,
    roots: &rustls::RootCertStore,
    sni: &str,
    h2: bool,
) -> (Vec<u8>, Sender) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    client.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(if h2 { &b"h2"[..] } else { &b"http/1.1"[..] })
    );
    let sender = if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Sender::H1(sender)
    };
    (leaf, sender)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn get(&mut self, host: &str, path: &str) -> Reply {
        match self {
            Sender::H1(s) => {
                let req = Request::get(path)
                    .header("host", host)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                collect(s.send_request(req).await.unwrap()).await
            }
            Sender::H2(s) => {
                let req = Request::get(format!("https://{host}{path}"))
                    .version(Version::HTTP_2)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                collect(s.send_request(req).await.unwrap()).await
            }
        }
    }
}

#[tokio::test]
async fn https_selects_certificate_by_sni_and_detects_misdirected() {
    let (ba, bb) = (backend("a").await, backend("b").await);
    let pki = pki(&["a.example.com", "b.example.com"]);
    let port = free_port();
    let listener = |name: &str, host: &'static str, backend: &str| ListenerConfig {
        name: name.into(),
        hostname: Some(host.into()),
        tls: Some(ListenerTls {
            certificates: vec![pki.certs[host].0.clone()],
            client_validation: None,
        }),
        http_routes: vec![route(name, &[host], vec![rule("/", vec![to(backend)])])],
    };
    let port_config = PortConfig {
        port,
        protocol: ListenerProtocol::Https,
        listeners: vec![
            listener("la", "a.example.com", "a"),
            listener("lb", "b.example.com", "b"),
        ],
    };
    let cfg = config(
        vec![port_config],
        &[
            ("a", AppProtocol::Http1, vec![ba.addr]),
            ("b", AppProtocol::Http1, vec![bb.addr]),
        ],
    );
    let _proxy = start(cfg).await;
    for h2 in [false, true] {
        for host in ["a.example.com", "b.example.com"] {
            let (leaf, mut sender) = tls_connect(port, &pki.roots, host, h2).await;
            assert_eq!(leaf, pki.certs[host].1, "certificate for {host}");
            let reply = sender.get(host, "/").await;
            assert_eq!(reply.status, 200, "{host} h2={h2}");
            assert_eq!(reply.header("x-backend"), &host[..1]);
            let seen = if host.starts_with('a') {
                ba.seen()
            } else {
                bb.seen()
            };
            assert_eq!(seen.last().unwrap().headers["x-forwarded-proto"], "https");
        }
        let (_, mut sender) = tls_connect(port, &pki.roots, "a.example.com", h2).await;
        let reply = sender.get("b.example.com", "/").await;
        assert_eq!(
            reply.status, 421,
            "Host of another listener over SNI a (h2={h2})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket

#[tokio::test]
async fn websocket_upgrade_round_trip() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let port = free_port();
    let cfg = config(
        vec![http_port(
            port,
            vec![
                rule("/ws", vec![to("ws")]),
                rule("/plain", vec![to("plain")]),
            ],
        )],
        &[
            ("ws", AppProtocol::WebSocket, vec![ws_addr]),
            ("plain", AppProtocol::Http1, vec![ws_addr]),
        ],
    );
    let _proxy = start(cfg).await;
    for path in ["/ws", "/plain"] {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut ws, response) =
            tokio_tungstenite::client_async(format!("ws://ws.example{path}"), stream)
                .await
                .unwrap();
        assert_eq!(response.status(), 101);
        ws.send(tokio_tungstenite::tungstenite::Message::text("hello"))
            .await
            .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.to_text().unwrap(), "hello");
        ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1u8, 2, 3,
        ]))
        .await
        .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_data().as_ref(), &[1u8, 2, 3]);
    }
}

// ---------------------------------------------------------------------------------------------
// Frontend client-certificate validation

struct ClientIdentity {
    ca_pem: String,
    cert: rustls_pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn client_identity() -> ClientIdentity {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client.example".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    ClientIdentity {
        ca_pem: ca.pem(),
        cert: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

/// A GET over HTTPS, optionally presenting a client certificate; `Err` when the connection or
/// the request fails (TLS 1.3 reports a rejected client certificate after the handshake).
async fn https_get_with_client(
    port: u16,
    roots: &rustls::RootCertStore,
    sni: &str,
    client: Option<&ClientIdentity>,
) -> Result<StatusCode, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone());
    let config = match client {
        Some(id) => {
            let key = rustls_pki_types::PrivateKeyDer::Pkcs8(id.key_der.clone().into());
            builder
                .with_client_auth_cert(vec![id.cert.clone()], key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", sni)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(response.status())
}

#[tokio::test]
async fn frontend_client_certificate_validation() {
    let b = backend("b").await;
    let pki = pki(&["a.example.com"]);
    let (trusted, untrusted) = (client_identity(), client_identity());
    for fallback in [false, true] {
        let port = free_port();
        let port_config = PortConfig {
            port,
            protocol: ListenerProtocol::Https,
            listeners: vec![ListenerConfig {
                name: "https".into(),
                hostname: Some("a.example.com".into()),
                tls: Some(ListenerTls {
                    certificates: vec![pki.certs["a.example.com"].0.clone()],
                    client_validation: Some(ClientValidation {
                        ca_certificates_pem: vec![trusted.ca_pem.clone()],
                        allow_insecure_fallback: fallback,
                    }),
                }),
                http_routes: vec![route("r", &[], vec![rule("/", vec![to("b")])])],
            }],
        };
        let cfg = config(
            vec![port_config],
            &[("b", AppProtocol::Http1, vec![b.addr])],
        );
        let _proxy = start(cfg).await;
        let sni = "a.example.com";
        let ok = https_get_with_client(port, &pki.roots, sni, Some(&trusted)).await;
        assert_eq!(
            ok,
            Ok(StatusCode::OK),
            "trusted client cert, fallback={fallback}"
        );
        let bad = https_get_with_client(port, &pki.roots, sni, Some(&untrusted)).await;
        let none = https_get_with_client(port, &pki.roots, sni, None).await;
        if fallback {
            assert_eq!(
                bad,
                Ok(StatusCode::OK),
                "untrusted cert accepted with fallback"
            );
            assert_eq!(none, Ok(StatusCode::OK), "no cert accepted with fallback");
        } else {
            assert!(bad.is_err(), "untrusted client cert must fail: {bad:?}");
            assert!(none.is_err(), "missing client cert must fail: {none:?}");
        }
    }
}

#[tokio::test]
async fn upstream_connections_recover_after_backend_restart() {
    for protocol in [AppProtocol::H2c, AppProtocol::Http1] {
        let b = backend("before").await;
        let port = free_port();
        let cfg = config(
            vec![http_port(port, vec![rule("/", vec![to("b")])])],
            &[("b", protocol, vec![b.addr])],
        );
        let _proxy = start(cfg).await;
        assert_eq!(get(port, "h", "/").await.header("x-backend"), "before");
        b.kill();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            get(port, "h", "/").await.status,
            502,
            "{protocol:?} backend down"
        );
        let restarted = backend_at("after", b.addr).await;
        let reply = get(port, "h", "/").await;
        assert_eq!(reply.status, 200, "{protocol:?}");
        assert_eq!(reply.header("x-backend"), "after");
        restarted.kill();
    }
}

#[tokio::test]
async fn cors_preflight_and_simple_requests() {
    let b = backend("b").await;
    let port = free_port();
    let mut r = rule("/", vec![to("b")]);
    r.filters = vec![HttpFilter::Cors(Cors {
        allow_origins: vec!["https://app.example".into()],
        allow_methods: vec!["GET".into(), "PUT".into()],
        allow_headers: vec!["x-custom".into()],
        expose_headers: vec!["x-backend".into()],
        allow_credentials: false,
        max_age: 60,
    })];
    let cfg = config(
        vec![http_port(port, vec![r])],
        &[("b", AppProtocol::Http1, vec![b.addr])],
    );
    let _proxy = start(cfg).await;
    let preflight = Request::options("/")
        .header("host", "h")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = request(port, preflight).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        "https://app.example"
    );
    assert!(reply.header("access-control-allow-methods").contains("PUT"));
    assert!(b.seen().is_empty(), "preflight answered by the proxy");
    let simple = Request::get("/")
        .header("host", "h")
        .header("origin", "https://app.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = request(port, simple).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-backend"), "b");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(b.seen().len(), 1);
    let plain = get(port, "h", "/").await;
    assert!(plain.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn redirect_uses_gateway_listener_port_not_local_port() {
    let local = free_port();
    let proxy = Proxy::new(ProxyOptions {
        port_offset: local - 8080,
    });
    let mut r = rule("/", vec![]);
    r.filters = vec![HttpFilter::RequestRedirect(RequestRedirect {
        scheme: None,
        hostname: Some("other.example".into()),
        path: None,
        port: None,
        status_code: 302,
    })];
    let errors = proxy
        .apply(config(vec![http_port(8080, vec![r])], &[]))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    let reply = get(local, "h", "/x").await;
    assert_eq!(reply.status, 302);
    assert_eq!(reply.header("location"), "http://other.example:8080/x");
}

#[tokio::test]
async fn backend_level_filters_follow_the_chosen_backend() {
    let (b1, b2) = (backend("b1").await, backend("b2").await);
    let port = free_port();
    let with_header = |name: &str| {
        let mut backend = to(name);
        backend.filters = vec![HttpFilter::RequestHeaderModifier(HeaderModifier {
            set: vec![("x-chosen".into(), name.into())],
            ..HeaderModifier::default()
        })];
        backend
    };
    let cfg = config(
        vec![http_port(
            port,
            vec![rule("/", vec![with_header("b1"), with_header("b2")])],
        )],
        &[
            ("b1", AppProtocol::Http1, vec![b1.addr]),
            ("b2", AppProtocol::Http1, vec![b2.addr]),
        ],
    );
    let _proxy = start(cfg).await;
    for _ in 0..20 {
        get(port, "h", "/").await;
    }
    let (seen1, seen2) = (b1.seen(), b2.seen());
    assert!(!seen1.is_empty() && !seen2.is_empty(), "both backends used");
    assert_eq!(seen1.len() + seen2.len(), 20);
    assert!(seen1.iter().all(|s| s.headers["x-chosen"] == "b1"));
    assert!(seen2.iter().all(|s| s.headers["x-chosen"] == "b2"));
}

#[tokio::test]
async fn refused_connections_try_another_endpoint_without_policy() {
    let b = backend("b").await;
    let port = free_port();
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = config(
        vec![http_port(port, vec![rule("/", vec![to("b")])])],
        &[("b", AppProtocol::Http1, vec![dead, b.addr])],
    );
    let _proxy = start(cfg).await;
    for _ in 0..20 {
        assert_eq!(get(port, "h", "/").await.status, 200);
    }
    // A body of unknown length is not replayable: it is streamed, so a dead endpoint surfaces.
    let mut statuses = std::collections::HashSet::new();
    for _ in 0..30 {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let chunks = vec![Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
            Bytes::from_static(b"chunk"),
        ))];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        let req = Request::post("/").header("host", "h").body(body).unwrap();
        let response = sender.send_request(req).await.unwrap();
        statuses.insert(response.status().as_u16());
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&502),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_closes_idle_connections() {
    let b = backend("b").await;
    let port = free_port();
    let cfg = config(
        vec![http_port(port, vec![rule("/", vec![to("b")])])],
        &[("b", AppProtocol::Http1, vec![b.addr])],
    );
    let proxy = Arc::new(start(cfg).await);
    // An idle keep-alive connection must not hold shutdown for the whole grace period.
    let idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut idle_sender, idle_conn) = hyper::client::conn::http1::handshake(TokioIo::new(idle))
        .await
        .unwrap();
    tokio::spawn(idle_conn);
    let req = Request::get("/")
        .header("host", "h")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(idle_sender.send_request(req).await.unwrap().status(), 200);

    let slow = tokio::spawn(async move { get(port, "h", "/delay/300").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    proxy.shutdown(Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert_eq!(slow.await.unwrap(), 200, "in-flight request finished");
    assert!(
        took < Duration::from_secs(2),
        "shutdown waited for idle connections: {took:?}"
    );
    assert!(
        took >= Duration::from_millis(100),
        "shutdown did not wait for in-flight: {took:?}"
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

/// A POST whose body has no declared length (chunked), split in `chunks` pieces.
async fn post_chunked(port: u16, path: &str, chunks: Vec<Bytes>) -> Reply {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let frames: Vec<Result<_, std::convert::Infallible>> = chunks
        .into_iter()
        .map(|c| Ok(hyper::body::Frame::data(c)))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post(path).header("host", "h").body(body).unwrap();
    collect(sender.send_request(req).await.unwrap()).await
}

#[tokio::test]
async fn chunked_bodies_are_replayed_when_small_and_streamed_when_large() {
    let b = backend("b").await;
    let port = free_port();
    let mut r = rule("/", vec![to("b")]);
    r.retry = Some(strait_config::Retry {
        codes: vec![500],
        attempts: 2,
        backoff: None,
    });
    let cfg = config(
        vec![http_port(port, vec![r])],
        &[("b", AppProtocol::Http1, vec![b.addr])],
    );
    let _proxy = start(cfg).await;
    let small = vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
    let reply = post_chunked(port, "/flaky/1", small).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "hello world");
    let seen = b.seen();
    assert_eq!(seen.len(), 2, "retried once");
    assert!(
        seen.iter().all(|s| s.body == "hello world"),
        "both attempts carry the body"
    );

    // Larger than the replay limit: streamed intact (prefix + rest), no retry possible.
    let big: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; 4096])).collect();
    let expected: Vec<u8> = big.iter().flat_map(|c| c.iter().copied()).collect();
    let reply = post_chunked(port, "/big", big).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), expected.len());
    assert_eq!(reply.body.as_ref(), expected.as_slice());
}

#[test]
fn proxy_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let proxy = Proxy::new(ProxyOptions::default());
    send_sync(&proxy);
    // The futures are Send, so callers can drive them from spawned tasks.
    send(proxy.apply(Arc::new(ProxyConfig::default())));
    send(proxy.shutdown(Duration::ZERO));
}

// ---------------------------------------------------------------------------------------------
// Upstream HTTP/1.1 connection pool

/// How [`raw_backend`] treats a connection after its first response.
#[derive(Clone, Copy, PartialEq)]
enum AfterResponse {
    KeepAlive,
    /// Close without saying so (as a backend's idle timeout does).
    Close,
}

/// A hand-written HTTP/1.1 backend that counts the connections it accepts. `/slow` sends half
/// of its 10-byte body, then the rest once `release` is notified; anything else answers `ok`.
async fn raw_backend(
    after: AfterResponse,
    release: Arc<tokio::sync::Notify>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let release = release.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 1024];
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let slow = head.split(' ').nth(1).is_some_and(|p| p == "/slow");
                    let sent = if slow {
                        let first = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234";
                        if stream.write_all(first).await.is_err() {
                            return;
                        }
                        release.notified().await;
                        stream.write_all(b"56789").await
                    } else {
                        stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                    };
                    if sent.is_err() || after == AfterResponse::Close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn proxy_to_raw_backend(
    after: AfterResponse,
) -> (Proxy, u16, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
    let release = Arc::new(tokio::sync::Notify::new());
    let (addr, accepted) = raw_backend(after, release.clone()).await;
    let port = free_port();
    let cfg = config(
        vec![http_port(port, vec![rule("/", vec![to("b")])])],
        &[("b", AppProtocol::Http1, vec![addr])],
    );
    (start(cfg).await, port, accepted, release)
}

fn assert_ok(reply: Reply) {
    assert_eq!(
        (reply.status, &reply.body[..]),
        (StatusCode::OK, &b"ok"[..])
    );
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let (_proxy, port, accepted, _) = proxy_to_raw_backend(AfterResponse::KeepAlive).await;
    for _ in 0..5 {
        assert_ok(get(port, "h", "/").await);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one keep-alive connection"
    );
}

#[tokio::test]
async fn a_connection_still_streaming_a_body_is_not_handed_out() {
    let (_proxy, port, accepted, release) = proxy_to_raw_backend(AfterResponse::KeepAlive).await;
    // Warm the pool with one idle connection, then occupy it with a half-sent body.
    assert_eq!(get(port, "h", "/").await.status, 200);
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let slow = Request::get("/slow")
        .header("host", "h")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut slow = sender.send_request(slow).await.unwrap().into_body();
    let first = slow.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"01234");
    // Meanwhile another request needs a connection of its own.
    let reply = tokio::time::timeout(Duration::from_secs(5), get(port, "h", "/"))
        .await
        .expect("not queued behind the streaming connection");
    assert_eq!(reply.body, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    release.notify_one();
    let rest = slow.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"56789");
    // Both connections are idle again: no third one is needed.
    for _ in 0..3 {
        assert_eq!(get(port, "h", "/").await.status, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connection_closed_by_the_backend_is_replaced() {
    let (_proxy, port, accepted, _) = proxy_to_raw_backend(AfterResponse::Close).await;
    for round in 1..=3 {
        let reply = get(port, "h", "/").await;
        assert_eq!(reply.status, 200, "round {round}");
        // Let the proxy notice the close before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_client_leaving_mid_body_does_not_poison_the_pool() {
    let (_proxy, port, accepted, release) = proxy_to_raw_backend(AfterResponse::KeepAlive).await;
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let slow = Request::get("/slow")
        .header("host", "h")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = sender.send_request(slow).await.unwrap().into_body();
    assert!(body.frame().await.is_some());
    // The client goes away with half the body unread.
    drop(body);
    drop(sender);
    driver.abort();
    release.notify_one();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        assert_ok(get(port, "h", "/").await);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the half-read connection was closed, one new connection serves the rest"
    );
}

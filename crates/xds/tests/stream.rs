//! End-to-end tests of the config stream over real tonic on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strait_proto::config::v1 as pb;
use strait_xds::server::{Subscriber, serve, serve_with_auth};
use strait_xds::{AckRecord, ConfigHub, Hello, Scope, Subscription, SubscriptionHandle};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

type Applied = mpsc::UnboundedReceiver<(u64, Vec<u8>)>;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `hub` on `addr` (port 0: any), rebinding a port a previous server used.
    async fn start(hub: ConfigHub, addr: SocketAddr) -> Server {
        Server::start_with(addr, move |listener, shutdown| {
            tokio::spawn(async move { serve(hub, listener, shutdown).await.unwrap() })
        })
        .await
    }

    async fn start_with(
        addr: SocketAddr,
        run: impl FnOnce(
            tokio::net::TcpListener,
            std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
        ) -> JoinHandle<()>,
    ) -> Server {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = run(
            listener,
            Box::pin(async move {
                let _ = stopped.await;
            }),
        );
        Server {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown; must finish although subscriptions are open.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("server shuts down despite open subscriptions")
            .unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A subscription whose apply callback accepts everything not starting with `bad` and reports
/// what it applied.
fn subscribe(endpoint: String, hello: Hello) -> (SubscriptionHandle, Applied) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = Subscription::new(endpoint, hello)
        .backoff(Duration::from_millis(10), Duration::from_millis(200))
        .start(move |version, payload| {
            std::future::ready(if payload.starts_with(b"bad") {
                Err(format!(
                    "invalid config: {}",
                    String::from_utf8_lossy(&payload)
                ))
            } else {
                let _ = tx.send((version, payload.to_vec()));
                Ok(())
            })
        });
    (handle, rx)
}

async fn next_applied(applied: &mut Applied) -> (u64, Vec<u8>) {
    tokio::time::timeout(WAIT, applied.recv())
        .await
        .expect("an update is applied in time")
        .expect("subscription alive")
}

async fn assert_quiet(applied: &mut Applied, what: &str) {
    if let Ok(update) = tokio::time::timeout(Duration::from_millis(300), applied.recv()).await {
        panic!("{what}: unexpected update {update:?}");
    }
}

async fn wait_ack(hub: &ConfigHub, proxy: &str, version: u64) -> AckRecord {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(ack) = hub.last_ack(proxy)
                && ack.version == version
            {
                return ack;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("ack of version {version} from {proxy}"))
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn subscriber_gets_current_config_then_changes_only() {
    let hub = ConfigHub::new();
    let scope = Scope::gateway("infra", "public");
    let v1 = hub.publish(&scope, &b"{\"routes\":1}"[..]);
    let server = Server::start(hub.clone(), any_port()).await;
    let (handle, mut applied) = subscribe(server.endpoint(), Hello::new(scope.clone(), "gw-0"));

    assert_eq!(
        next_applied(&mut applied).await,
        (v1, b"{\"routes\":1}".to_vec())
    );
    let ack = wait_ack(&hub, "gw-0", v1).await;
    assert_eq!(ack.result, Ok(()));
    assert_eq!(ack.scope, scope);

    let v2 = hub.publish(&scope, &b"{\"routes\":2}"[..]);
    assert!(v2 > v1);
    assert_eq!(
        next_applied(&mut applied).await,
        (v2, b"{\"routes\":2}".to_vec())
    );
    wait_ack(&hub, "gw-0", v2).await;
    assert!(
        hub.acks()
            .iter()
            .any(|a| a.version == v2 && a.proxy_id == "gw-0" && a.result.is_ok())
    );

    // Unchanged content: same version, nothing pushed.
    assert_eq!(hub.publish(&scope, &b"{\"routes\":2}"[..]), v2);
    assert_quiet(&mut applied, "unchanged publish").await;
    // Removal leaves the proxy on what it has.
    assert!(hub.remove(&scope));
    assert_quiet(&mut applied, "removed scope").await;

    let status = handle.status();
    assert!(status.connected);
    assert_eq!(status.last_version, Some(v2));
    assert_eq!(status.last_error, None);
    handle.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn subscriber_already_on_current_version_gets_nothing_until_a_change() {
    let hub = ConfigHub::new();
    let scope = Scope::node("node-a");
    let v1 = hub.publish(&scope, &b"mesh-1"[..]);
    let server = Server::start(hub.clone(), any_port()).await;
    let mut hello = Hello::new(scope.clone(), "node-a-proxy");
    hello.last_version = Some(v1);
    let (handle, mut applied) = subscribe(server.endpoint(), hello);
    let mut status = handle.watch_status();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.connected))
        .await
        .unwrap()
        .unwrap();
    assert_quiet(&mut applied, "subscriber already has the current version").await;

    let v2 = hub.publish(&scope, &b"mesh-2"[..]);
    assert_eq!(next_applied(&mut applied).await, (v2, b"mesh-2".to_vec()));
    server.stop().await;
}

#[tokio::test]
async fn rejected_version_is_reported_and_next_good_one_applied() {
    let hub = ConfigHub::new();
    let scope = Scope::waypoint("shop", "waypoint");
    let good = hub.publish(&scope, &b"good-1"[..]);
    let server = Server::start(hub.clone(), any_port()).await;
    let (handle, mut applied) = subscribe(server.endpoint(), Hello::new(scope.clone(), "wp-0"));
    assert_eq!(next_applied(&mut applied).await.0, good);

    let bad = hub.publish(&scope, &b"bad-2"[..]);
    let ack = wait_ack(&hub, "wp-0", bad).await;
    assert_eq!(ack.result, Err("invalid config: bad-2".to_string()));
    let status = handle.status();
    assert_eq!(
        status.last_version,
        Some(good),
        "rejected version is not applied"
    );
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("invalid config: bad-2") && e.contains(&bad.to_string())),
        "{status:?}"
    );

    let fixed = hub.publish(&scope, &b"good-3"[..]);
    assert_eq!(
        next_applied(&mut applied).await,
        (fixed, b"good-3".to_vec())
    );
    assert_eq!(wait_ack(&hub, "wp-0", fixed).await.result, Ok(()));
    let acks: Vec<_> = hub
        .acks()
        .into_iter()
        .filter(|a| a.proxy_id == "wp-0")
        .map(|a| (a.version, a.result.is_ok()))
        .collect();
    assert_eq!(acks, [(good, true), (bad, false), (fixed, true)]);
    server.stop().await;
}

#[tokio::test]
async fn proxy_keeps_last_version_and_resubscribes_after_controller_restart() {
    let hub = ConfigHub::new();
    let scope = Scope::gateway("infra", "edge");
    let v1 = hub.publish(&scope, &b"edge-1"[..]);
    let server = Server::start(hub.clone(), any_port()).await;
    let addr = server.addr;
    let (handle, mut applied) = subscribe(server.endpoint(), Hello::new(scope.clone(), "edge-0"));
    assert_eq!(next_applied(&mut applied).await.0, v1);
    let mut status = handle.watch_status();

    // Controller goes away: the proxy notices, keeps its version, applies nothing.
    server.stop().await;
    tokio::time::timeout(WAIT, status.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let down = handle.status();
    assert_eq!(down.last_version, Some(v1));
    assert!(down.last_error.is_some());
    assert_quiet(&mut applied, "controller down").await;

    // Back with the same config: the reconnect announces v1, so nothing is re-applied.
    let server = Server::start(hub.clone(), addr).await;
    tokio::time::timeout(WAIT, status.wait_for(|s| s.connected))
        .await
        .unwrap()
        .unwrap();
    assert_quiet(&mut applied, "reconnect with unchanged config").await;
    server.stop().await;

    // Changed while down: the reconnect delivers the latest.
    hub.publish(&scope, &b"edge-2"[..]);
    let latest = hub.publish(&scope, &b"edge-3"[..]);
    let server = Server::start(hub.clone(), addr).await;
    assert_eq!(
        next_applied(&mut applied).await,
        (latest, b"edge-3".to_vec())
    );
    assert_eq!(wait_ack(&hub, "edge-0", latest).await.result, Ok(()));

    // A controller restarted with a fresh hub hands out higher versions.
    server.stop().await;
    let fresh = ConfigHub::new();
    let restarted = fresh.publish(&scope, &b"edge-4"[..]);
    assert!(restarted > latest);
    let server = Server::start(fresh.clone(), addr).await;
    assert_eq!(
        next_applied(&mut applied).await,
        (restarted, b"edge-4".to_vec())
    );
    server.stop().await;
}

#[tokio::test]
async fn scopes_are_isolated() {
    let hub = ConfigHub::new();
    let gateway = Scope::gateway("infra", "public");
    let node = Scope::node("node-a");
    let other_node = Scope::node("node-b");
    let server = Server::start(hub.clone(), any_port()).await;
    let (_gw, mut gw_applied) = subscribe(server.endpoint(), Hello::new(gateway.clone(), "gw"));
    let (node_handle, mut node_applied) =
        subscribe(server.endpoint(), Hello::new(node.clone(), "node-a"));
    let mut node_status = node_handle.watch_status();
    tokio::time::timeout(WAIT, node_status.wait_for(|s| s.connected))
        .await
        .unwrap()
        .unwrap();

    let g = hub.publish(&gateway, &b"gateway-config"[..]);
    hub.publish(&other_node, &b"node-b-config"[..]);
    assert_eq!(
        next_applied(&mut gw_applied).await,
        (g, b"gateway-config".to_vec())
    );
    assert_quiet(&mut node_applied, "node subscriber, other scopes published").await;

    let n = hub.publish(&node, &b"node-a-config"[..]);
    assert_eq!(
        next_applied(&mut node_applied).await,
        (n, b"node-a-config".to_vec())
    );
    assert_quiet(&mut gw_applied, "gateway subscriber, node scope published").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_gets_the_latest_not_a_backlog() {
    const PUBLISHES: usize = 100;
    let hub = ConfigHub::new();
    let scope = Scope::gateway("infra", "busy");
    let server = Server::start(hub.clone(), any_port()).await;
    let applied_count = Arc::new(AtomicUsize::new(0));
    let (tx, mut applied) = mpsc::unbounded_channel();
    let count = applied_count.clone();
    let handle = Subscription::spawn(
        server.endpoint(),
        Hello::new(scope.clone(), "slow"),
        move |version, payload| {
            let (count, tx, len) = (count.clone(), tx.clone(), payload.len());
            async move {
                // A proxy that takes a while to build its routing tables.
                tokio::time::sleep(Duration::from_millis(40)).await;
                count.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send((version, len));
                Ok(())
            }
        },
    );
    let mut status = handle.watch_status();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.connected))
        .await
        .unwrap()
        .unwrap();

    // 100 distinct 256 KiB snapshots, published back to back.
    let mut last = 0;
    for i in 0..PUBLISHES {
        let mut payload = vec![b'x'; 256 * 1024];
        payload[..8].copy_from_slice(&(i as u64).to_be_bytes());
        last = hub.publish(&scope, payload);
    }
    let mut versions = Vec::new();
    loop {
        let (version, len) = tokio::time::timeout(WAIT, applied.recv())
            .await
            .expect("the latest version arrives")
            .unwrap();
        assert_eq!(len, 256 * 1024);
        versions.push(version);
        if version == last {
            break;
        }
    }
    eprintln!(
        "slow subscriber applied {} of {PUBLISHES} versions",
        versions.len()
    );
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert!(
        versions.len() < PUBLISHES / 2,
        "slow subscriber received {} of {PUBLISHES} versions: not coalesced",
        versions.len()
    );
    assert_quiet_count(&applied_count, versions.len()).await;
    server.stop().await;
}

async fn assert_quiet_count(count: &AtomicUsize, expected: usize) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        expected,
        "nothing after the latest"
    );
}

#[tokio::test]
async fn unauthorized_subscriber_is_refused_and_gets_nothing() {
    let hub = ConfigHub::new();
    let node = Scope::node("node-a");
    hub.publish(&node, &b"secret"[..]);
    let server = Server::start_with(any_port(), {
        let hub = hub.clone();
        move |listener, shutdown| {
            tokio::spawn(async move {
                let auth = |s: &Subscriber<'_>| match (&s.hello.scope, s.bearer_token()) {
                    (Scope::Node { name }, Some(token)) if *name == token => Ok(()),
                    (scope, _) => Err(tonic::Status::permission_denied(format!(
                        "{scope}: token does not grant this scope"
                    ))),
                };
                serve_with_auth(hub, auth, listener, shutdown)
                    .await
                    .unwrap();
            })
        }
    })
    .await;
    let (handle, mut applied) = subscribe(server.endpoint(), Hello::new(node.clone(), "intruder"));
    let mut status = handle.watch_status();
    let refused = tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(!refused.connected);
    let error = refused.last_error.unwrap();
    assert!(
        error.contains("PermissionDenied") || error.contains("permission"),
        "{error}"
    );
    assert!(error.contains("node/node-a"), "{error}");
    assert_quiet(&mut applied, "refused subscriber").await;
    assert!(hub.acks().is_empty());
    drop(handle);

    // The same scope with a token granting it.
    let token = TempFile::new("node-a\n");
    let (tx, mut applied) = mpsc::unbounded_channel();
    let _handle = Subscription::new(server.endpoint(), Hello::new(node.clone(), "node-a"))
        .bearer_token_file(&token.0)
        .start(move |version, payload| {
            let _ = tx.send((version, payload.to_vec()));
            std::future::ready(Ok(()))
        });
    assert_eq!(next_applied(&mut applied).await.1, b"secret".to_vec());
    server.stop().await;
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(contents: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "strait-xds-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn protocol_violations_are_invalid_argument() {
    let hub = ConfigHub::new();
    let server = Server::start(hub.clone(), any_port()).await;
    let mut client = pb::config_service_client::ConfigServiceClient::connect(server.endpoint())
        .await
        .unwrap();

    let ack_first = pb::ClientMessage {
        message: Some(pb::client_message::Message::Ack(pb::Ack {
            version: 1,
            ok: true,
            error: String::new(),
        })),
    };
    let status = client
        .subscribe(futures_util::stream::iter([ack_first]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

    let bad_scope = pb::ClientMessage {
        message: Some(pb::client_message::Message::Hello(pb::Hello {
            scope: Some(pb::Scope {
                kind: pb::scope::Kind::Gateway.into(),
                name: "no-namespace".into(),
            }),
            proxy_id: "p".into(),
            last_version: 0,
        })),
    };
    let status = client
        .subscribe(futures_util::stream::iter([bad_scope]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("no-namespace"), "{status}");
    server.stop().await;
}

#[tokio::test]
async fn invalid_endpoint_is_reported_in_status() {
    let (handle, _applied) = subscribe("not a uri".into(), Hello::new(Scope::node("n"), "p"));
    let mut status = handle.watch_status();
    let status = tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(
        status.last_error.unwrap().contains("not a uri"),
        "error names the endpoint"
    );
}

#[tokio::test]
async fn unreadable_token_file_is_reported_in_status() {
    let handle = Subscription::new("http://127.0.0.1:9", Hello::new(Scope::node("n"), "p"))
        .bearer_token_file("/nonexistent/strait-token")
        .start(|_, _| std::future::ready(Ok(())));
    let mut status = handle.watch_status();
    let status = tokio::time::timeout(WAIT, status.wait_for(|s| s.last_error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    let error = status.last_error.unwrap();
    assert!(error.contains("/nonexistent/strait-token"), "{error}");
}

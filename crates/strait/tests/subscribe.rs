//! A gateway fed by the controller's config stream, on a current-thread runtime (the one a
//! proxy limited to one CPU runs on): versions are applied, served and acked, and a version
//! that cannot be read is rejected while the previous one keeps serving. And the same stream
//! served by `strait standalone --config-listen` from YAML files.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use strait::standalone::{Standalone, StandaloneOptions};
use strait::subscribe::{self, ControlPlane};
use strait_xds::client::SubscriptionStatus;
use strait_xds::{ConfigHub, Scope};
use tokio::sync::watch;

mod common;
use common::{TempDir, backend_yaml, echo, gateway_yaml, route_yaml};

const WAIT: Duration = Duration::from_secs(10);
const BACKEND: &str = "127.0.0.1:39201";
const LISTENER_PORT: u16 = 39280;
const FED_BACKEND: &str = "127.0.0.1:39203";
const FED_LISTENER_PORT: u16 = 39283;

/// Gateway `t/gw` listening on `port`, with one route sending everything to `backend`.
fn one_route(name: &str, port: u16, backend: &str) -> TempDir {
    let dir = TempDir::new(name);
    dir.write("gateway.yaml", &gateway_yaml(port));
    dir.write(
        "backend.yaml",
        &backend_yaml("app", backend.parse().unwrap()),
    );
    dir.write("route.yaml", &route_yaml("r", "/", "app"));
    dir
}

/// The config a controller would send for one Gateway routing everything to [`BACKEND`],
/// compiled from YAML by a standalone that is stopped again (freeing its port).
async fn compiled_gateway_config() -> Vec<u8> {
    let dir = one_route("subscribe", LISTENER_PORT, BACKEND);
    // A port offset keeps the standalone's own listener off the port the subscriber binds.
    let standalone = Standalone::start(StandaloneOptions::gateways_only(dir.0.clone(), 1, false))
        .await
        .unwrap();
    let config = standalone.config();
    standalone.shutdown().await;
    assert_eq!(config.gateways.len(), 1, "compiled config: {config:?}");
    serde_json::to_vec(&*config).unwrap()
}

/// GET / with `Host: example.com` on a new connection; the answer's status.
async fn get(addr: SocketAddr) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/")
        .header("host", "example.com")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

/// The status once `done` holds for it, or `None` after [`WAIT`].
async fn wait_for(
    status: &mut watch::Receiver<SubscriptionStatus>,
    done: impl FnMut(&SubscriptionStatus) -> bool,
) -> Option<SubscriptionStatus> {
    let seen = tokio::time::timeout(WAIT, status.wait_for(done))
        .await
        .ok()?;
    seen.ok().map(|status| status.clone())
}

/// `tokio::test` runs on a current-thread runtime: the subscription must apply configs without
/// a second thread to block on (it once used `block_in_place`, which panics there).
#[tokio::test]
async fn a_gateway_applies_acks_and_rejects_versions_on_a_current_thread_runtime() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _backend = echo(BACKEND, "app").await;
    let payload = compiled_gateway_config().await;

    let hub = ConfigHub::new();
    let scope = Scope::gateway("t", "gw");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(strait_xds::server::serve(
        hub.clone(),
        listener,
        std::future::pending(),
    ));
    let control_plane = ControlPlane {
        endpoint,
        token_file: None,
        tls_root: None,
    };

    let good = hub.publish(&scope, payload);
    let subscription = subscribe::gateway(&control_plane, "t", "gw");
    let mut status = subscription.watch_status();
    let applied = wait_for(&mut status, |s| s.last_version == Some(good)).await;
    assert!(
        applied.is_some(),
        "not applied: {:?}",
        subscription.status()
    );
    let gateway = SocketAddr::from(([127, 0, 0, 1], LISTENER_PORT));
    assert_eq!(get(gateway).await, 200);

    let bad = hub.publish(&scope, &b"{\"gateways\": 7}"[..]);
    let rejected = wait_for(&mut status, |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("rejected"))
    })
    .await
    .expect("the unreadable version is rejected");
    let error = rejected.last_error.unwrap();
    assert!(
        error.contains(&format!("config version {bad}")),
        "the rejection names the version: {error}"
    );
    assert_eq!(rejected.last_version, Some(good));
    assert_eq!(
        get(gateway).await,
        200,
        "the previous version keeps serving"
    );

    subscription.stop().await;
    server.abort();
}

/// A standalone with a config stream compiles for others: it serves no Gateway itself (here),
/// and a gateway subscribed to its stream serves the routes and follows its reloads.
#[tokio::test]
async fn a_gateway_fed_by_a_standalones_config_stream_follows_its_reloads() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _backend = echo(FED_BACKEND, "app").await;
    let dir = one_route("config-stream", FED_LISTENER_PORT, FED_BACKEND);
    let standalone = Standalone::start(StandaloneOptions {
        gateways: false,
        config_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..StandaloneOptions::gateways_only(dir.0.clone(), 0, false)
    })
    .await
    .unwrap();
    let stream = standalone
        .config_stream_addr()
        .expect("serving a config stream");
    let gateway = SocketAddr::from(([127, 0, 0, 1], FED_LISTENER_PORT));
    assert!(
        tokio::net::TcpStream::connect(gateway).await.is_err(),
        "the standalone serves the Gateway itself"
    );

    let control_plane = ControlPlane {
        endpoint: format!("http://{stream}"),
        token_file: None,
        tls_root: None,
    };
    let subscription = subscribe::gateway(&control_plane, "t", "gw");
    let mut status = subscription.watch_status();
    let first = wait_for(&mut status, |s| s.last_version.is_some())
        .await
        .unwrap_or_else(|| panic!("no config applied: {:?}", subscription.status()))
        .last_version;
    assert_eq!(get(gateway).await, 200);

    // The route moves off `/`: after the reload, the subscribed gateway answers 404 there.
    dir.write("route.yaml", &route_yaml("r", "/elsewhere", "app"));
    standalone.reload().await.unwrap();
    let applied = wait_for(&mut status, |s| s.last_version != first).await;
    assert!(
        applied.is_some(),
        "the reload never reached the gateway: {:?}",
        subscription.status()
    );
    assert_eq!(get(gateway).await, 404);

    subscription.stop().await;
    standalone.shutdown().await;
}

/// The stream is unauthenticated and carries private keys: it is not offered beyond loopback.
#[tokio::test]
async fn a_config_stream_is_refused_on_a_non_loopback_address() {
    let dir = TempDir::new("config-stream-public");
    dir.write("gateway.yaml", &gateway_yaml(FED_LISTENER_PORT));
    let started = Standalone::start(StandaloneOptions {
        gateways: false,
        config_listen: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
        ..StandaloneOptions::gateways_only(dir.0.clone(), 0, false)
    })
    .await;
    let Err(error) = started else {
        panic!("a config stream on 0.0.0.0 was started");
    };
    assert!(
        format!("{error:#}").contains("not a loopback address"),
        "{error:#}"
    );
}

//! The binary sizes its runtime: the gateways to the CPUs they may use (limited to one CPU, a
//! gateway serves HTTP/1.1 and h2c on a current-thread runtime; given more, on a multi-thread
//! one), the node proxy and waypoints to one worker, and `--workers` / `STRAIT_WORKERS` to a
//! count of the user's.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

mod common;
use common::{TempDir, backend_yaml, echo, gateway_yaml, route_yaml};

const BACKEND: &str = "127.0.0.1:39202";
const LISTENER: &str = "127.0.0.1:39291";

/// The tests share the backend's and the listener's ports: one at a time.
static PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A child process killed on drop, also when the test fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config_dir() -> TempDir {
    let dir = TempDir::new("runtime");
    let listener: SocketAddr = LISTENER.parse().unwrap();
    dir.write("gateway.yaml", &gateway_yaml(listener.port()));
    dir.write(
        "backend.yaml",
        &backend_yaml("app", BACKEND.parse().unwrap()),
    );
    dir.write("route.yaml", &route_yaml("r", "/", "app"));
    dir
}

/// `strait standalone` on `dir` (run under `taskset -c 0` if `one_cpu`), and the runtime it
/// reported starting.
fn start(dir: &TempDir, one_cpu: bool) -> (Running, String) {
    start_with(&standalone(dir.0.to_str().unwrap()), &[], one_cpu)
}

/// The arguments of a gateway-only `strait standalone` serving `dir` on 127.0.0.1.
fn standalone(dir: &str) -> [&str; 6] {
    [
        "standalone",
        dir,
        "--no-mesh",
        "--no-watch",
        "--address",
        "127.0.0.1",
    ]
}

/// `strait ARGS` with the environment `env` (under `taskset -c 0` if `one_cpu`), and the
/// runtime it reported starting.
fn start_with(args: &[&str], env: &[(&str, &str)], one_cpu: bool) -> (Running, String) {
    let strait = env!("CARGO_BIN_EXE_strait");
    let mut command = if one_cpu {
        let mut command = Command::new("taskset");
        command.args(["-c", "0", strait]);
        command
    } else {
        Command::new(strait)
    };
    let child = command
        .args(args)
        .env_remove("STRAIT_WORKERS")
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strait (and taskset) run");
    let mut running = Running(child);
    let stderr = running.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let runtime = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("runtime started"))
        .expect("strait logs the runtime it starts");
    // Keep draining stderr so the process never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (running, runtime)
}

/// GET / with `Host: example.com` over HTTP/1.1, or over h2c with prior knowledge.
async fn get(h2c: bool) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(LISTENER).await.ok()?;
    let request = http::Request::get(format!("http://{LISTENER}/"))
        .header("host", "example.com")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = if h2c {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(connection);
        sender.send_request(request).await.ok()?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        sender.send_request(request).await.ok()?
    };
    let status = response.status().as_u16();
    response.into_body().collect().await.ok()?;
    Some(status)
}

/// The first answer within 10 s (the listener opens shortly after the process starts).
async fn first_answer(h2c: bool) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = get(h2c).await {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_follows_the_cpus_the_process_may_use() {
    let _ports = PORTS.lock().await;
    let _backend = echo(BACKEND, "app").await;
    let dir = config_dir();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for one_cpu in [true, false] {
        let (_strait, runtime) = start(&dir, one_cpu);
        let expected = if one_cpu || cpus == 1 {
            "CurrentThread"
        } else {
            "MultiThread"
        };
        assert!(runtime.contains(expected), "one CPU: {one_cpu}: {runtime}");
        assert_eq!(
            first_answer(false).await,
            Some(200),
            "HTTP/1.1, one CPU: {one_cpu}"
        );
        assert_eq!(
            first_answer(true).await,
            Some(200),
            "h2c, one CPU: {one_cpu}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_proxies_run_one_worker_unless_told_otherwise() {
    let _ports = PORTS.lock().await;
    let dir = config_dir();
    let dir = dir.0.to_str().unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Neither needs its CA or a pod to start its runtime, which is all this test reads.
    let node = [
        "node",
        dir,
        "--ca",
        "http://127.0.0.1:9",
        "--no-watch",
        "--health-listen",
        "127.0.0.1:0",
    ];
    let waypoint = [
        "waypoint",
        dir,
        "--namespace",
        "default",
        "--ca",
        "http://127.0.0.1:9",
        "--no-watch",
        "--health-listen",
        "127.0.0.1:0",
    ];
    for args in [&node[..], &waypoint[..]] {
        let (_proxy, runtime) = start_with(args, &[], false);
        assert!(
            runtime.contains("workers=1") && runtime.contains("CurrentThread"),
            "{}: {runtime}",
            args[0]
        );
    }
    let (_node, runtime) = start_with(&[&node[..], &["--workers", "auto"]].concat(), &[], false);
    assert!(runtime.contains(&format!("workers={cpus}")), "{runtime}");

    // A count from the environment, above the CPUs: that many workers, and the gateway serves.
    let _backend = echo(BACKEND, "app").await;
    let wanted = (cpus + 1).to_string();
    let (_strait, runtime) = start_with(&standalone(dir), &[("STRAIT_WORKERS", &wanted)], false);
    assert!(
        runtime.contains(&format!("workers={wanted}")) && runtime.contains("MultiThread"),
        "{runtime}"
    );
    assert_eq!(first_answer(false).await, Some(200));
}

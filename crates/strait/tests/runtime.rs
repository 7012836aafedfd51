//! The binary sizes its runtime: the gateways to the CPUs they may use, the node proxy and
//! waypoints to one worker, and `--workers` / `STRAIT_WORKERS` to a count of the user's. A
//! proxy runs a current-thread runtime per worker, each on a thread of its own. A gateway out of
//! file descriptors keeps its clients waiting instead of refusing them or spinning.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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

/// A child process killed on drop, also when the test fails, with its log lines.
struct Running {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Running {
    /// The first log line from now on that contains `text`, within `limit`.
    fn wait_for_log(&self, text: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.log.recv_timeout(left).ok()?;
            if line.contains(text) {
                return Some(line);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    start_with(
        &standalone(dir.0.to_str().unwrap()),
        &[],
        one_cpu_wrapper(one_cpu),
    )
}

/// The command that confines a process to CPU 0, or none.
fn one_cpu_wrapper(one_cpu: bool) -> &'static [&'static str] {
    if one_cpu {
        &["taskset", "-c", "0"]
    } else {
        &[]
    }
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

/// `strait ARGS` with the environment `env`, run by `wrapper` (a command that runs the rest of
/// its command line, such as `taskset` or `prlimit`) if any, and the runtime it reported
/// starting.
fn start_with(args: &[&str], env: &[(&str, &str)], wrapper: &[&str]) -> (Running, String) {
    let strait = env!("CARGO_BIN_EXE_strait");
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command.args(wrapper_args).arg(strait);
            command
        }
        None => Command::new(strait),
    };
    let mut child = command
        .args(args)
        .env_remove("STRAIT_WORKERS")
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strait (and its wrapper) run");
    let stderr = child.stderr.take().unwrap();
    // Read all along, so the process never blocks on a full pipe.
    let (lines, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let running = Running { child, log };
    let runtime = running
        .wait_for_log("runtime started", Duration::from_secs(10))
        .expect("strait logs the runtime it starts");
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
        let expected = if one_cpu { 1 } else { cpus };
        assert!(
            runtime.contains(&format!("workers={expected}")),
            "one CPU: {one_cpu}: {runtime}"
        );
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
        let (_proxy, runtime) = start_with(args, &[], &[]);
        assert!(runtime.contains("workers=1"), "{}: {runtime}", args[0]);
    }
    let (_node, runtime) = start_with(&[&node[..], &["--workers", "auto"]].concat(), &[], &[]);
    assert!(runtime.contains(&format!("workers={cpus}")), "{runtime}");

    // A count from the environment, above the CPUs: that many workers, and the gateway serves.
    let _backend = echo(BACKEND, "app").await;
    let wanted = (cpus + 1).to_string();
    let (strait, runtime) = start_with(&standalone(dir), &[("STRAIT_WORKERS", &wanted)], &[]);
    assert!(runtime.contains(&format!("workers={wanted}")), "{runtime}");
    assert_eq!(first_answer(false).await, Some(200));
    // Worker 0 is the main thread; each other worker has a thread of its own.
    let expected: BTreeSet<String> = (1..=cpus).map(|i| format!("strait-worker-{i}")).collect();
    assert_eq!(worker_threads(strait.child.id(), cpus), expected);
    // Connections open at once are spread over the workers, and each is answered.
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..2 * (cpus + 1) {
        requests.spawn(get(false));
    }
    let answers = requests.join_all().await;
    assert!(
        answers.iter().all(|answer| *answer == Some(200)),
        "{answers:?}"
    );
}

/// The names of a process's threads that serve as proxy workers, once there are `expected`
/// of them (a thread names itself when it starts) or 5 s have passed.
fn worker_threads(pid: u32, expected: usize) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let names: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("the process's threads")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .filter(|name| name.starts_with("strait-worker-"))
            .collect();
        if names.len() >= expected || Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_proxy_runs_a_current_thread_runtime_per_worker_and_starts_them_once() {
    use strait::runtime::{Workers, build_proxy};
    let main = build_proxy("3".parse::<Workers>().expect("a count")).expect("the runtimes");
    assert_eq!(
        main.handle().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread
    );
    assert_eq!(strait_proxy::workers::count(), 3);
    assert_eq!(
        strait_proxy::workers::current(),
        0,
        "the caller runs worker 0"
    );
    let threads = worker_threads(std::process::id(), 2);
    assert_eq!(
        threads,
        BTreeSet::from(["strait-worker-1".to_owned(), "strait-worker-2".to_owned()])
    );
    assert!(
        build_proxy("2".parse::<Workers>().expect("a count")).is_err(),
        "a second set of workers would split connections the first already holds"
    );
}

/// The descriptors the gateway may hold in the shortage test (it starts with about 16).
const DESCRIPTOR_LIMIT: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_out_of_descriptors_keeps_waiting_clients_and_serves_them_once_some_free_up() {
    let _ports = PORTS.lock().await;
    let _backend = echo(BACKEND, "app").await;
    let dir = config_dir();
    let limit = format!("--nofile={DESCRIPTOR_LIMIT}:{DESCRIPTOR_LIMIT}");
    let (mut strait, _) = start_with(
        &standalone(dir.0.to_str().unwrap()),
        &[],
        &["prlimit", &limit],
    );
    assert_eq!(first_answer(false).await, Some(200));

    // More idle connections than the gateway has descriptors: the kernel completes them all,
    // the gateway accepts until its table is full.
    let mut idle = Vec::new();
    for _ in 0..DESCRIPTOR_LIMIT + 16 {
        let connection = tokio::net::TcpStream::connect(LISTENER).await;
        idle.push(connection.expect("the listen backlog takes the connection"));
    }
    let warning = strait.wait_for_log("accept failed", Duration::from_secs(10));
    assert!(
        warning
            .as_ref()
            .is_some_and(|line| line.contains("Too many open files")),
        "{warning:?}"
    );

    // Out of descriptors, it neither exits nor spins.
    let pid = strait.child.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks(pid) - before;
    // SAFETY: sysconf reads a constant of the system.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    assert!(
        spent * 4 < ticks_per_second,
        "{spent} of {ticks_per_second} ticks of CPU in the second it was out of descriptors"
    );
    assert!(matches!(strait.child.try_wait(), Ok(None)), "strait exited");

    // A new client waits in the backlog, neither answered nor refused, until descriptors free
    // up; then it is served.
    let waiting = tokio::spawn(get(false));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    drop(idle);
    assert!(
        strait
            .wait_for_log("accepting again", Duration::from_secs(10))
            .is_some()
    );
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    assert!(matches!(answer, Ok(Ok(Some(200)))), "{answer:?}");
}

/// User plus system CPU time of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's stat");
    // Fields 14 and 15, counted after the parenthesised command name (which may hold spaces).
    let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

//! The `strait-echo` binary as the mesh tests run it.

use std::net::{IpAddr, Ipv4Addr};

use strait_echo::advanced::{
    AdvancedEcho, AdvancedOptions, EchoPort, Identity, parse_client_output,
};

const BIN: &str = env!("CARGO_BIN_EXE_strait-echo");

async fn echo() -> AdvancedEcho {
    AdvancedEcho::start_in(
        None,
        AdvancedOptions {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            http_ports: vec![0],
            ..AdvancedOptions::default()
        },
        Identity {
            namespace: "gateway-conformance-mesh".into(),
            version: "v2".into(),
            pod: "echo-v2-7c9d8b6f5a-qz2xw".into(),
            cluster: String::new(),
        },
    )
    .await
    .expect("starting echo")
}

async fn run(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("running strait-echo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_subcommand_prints_parsable_responses() {
    let echo = echo().await;
    let addr = echo.addrs_of(EchoPort::Http)[0];
    let url = format!("http://{addr}/cli?q=1");
    let out = run(&[
        "client",
        &url,
        "--method=POST",
        "-H",
        "X-Header-Set:one",
        "-H",
        "Host: echo-v2.gateway-conformance-mesh",
        "--count=3",
        "--timeout=5s",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let responses = parse_client_output(&stdout);
    assert_eq!(responses.len(), 3, "{stdout}");
    for r in &responses {
        assert_eq!(r.status, 200);
        assert_eq!(r.field("Hostname"), Some("echo-v2-7c9d8b6f5a-qz2xw"));
        assert_eq!(r.field("ServiceVersion"), Some("v2"));
        assert_eq!(r.field("Method"), Some("POST"));
        assert_eq!(r.field("URL"), Some("/cli?q=1"));
        assert_eq!(r.field("Host"), Some("echo-v2.gateway-conformance-mesh"));
        assert_eq!(r.request_header("X-Header-Set").as_deref(), Some("one"));
    }
    assert_eq!(echo.log().len(), 3);
}

#[tokio::test]
async fn client_subcommand_fails_but_reports_every_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/");
    let out = run(&["client", &url, "--count", "2"]).await;
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let responses = parse_client_output(&stdout);
    assert_eq!(responses.len(), 2, "{stdout}");
    assert!(
        responses
            .iter()
            .all(|r| r.status == 0 && r.field("Error").is_some())
    );
}

#[tokio::test]
async fn bad_arguments_are_rejected() {
    let out = run(&["client", "http://127.0.0.1:1/", "-H", "no-colon"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-colon"));
    let out = run(&["server", "--port=notaport"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port=notaport"));
}

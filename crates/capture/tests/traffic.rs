//! Real connections through the capture rules.
//!
//! Topology: a "pod" namespace (198.18.200.2/24 on a veth) and a "peer" namespace on the other
//! end of the veth (198.18.200.1, .3 and .4). The pod's traffic to the peer leaves through the
//! veth as pod-to-pod traffic does, so only the capture rules decide whether it is redirected.

mod common;

use std::future::poll_fn;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::task::Poll;
use std::time::Duration;

use common::{TestNs, privileged};
use nix::sys::socket::getsockopt;
use nix::sys::socket::sockopt::{OriginalDst, TcpMaxSeg};
use socket2::SockAddr;
use strait_capture::{CaptureSpec, PROXY_MARK, apply, installed, remove};
use strait_netns::NetNs;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const POD: &str = "198.18.200.2";
const PEER: &str = "198.18.200.1";
const EXCLUDED_PEER: &str = "198.18.200.3";
const PROBE_SOURCE: &str = "198.18.200.4";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

struct Topology {
    pod: TestNs,
    peer: TestNs,
}

fn topology() -> Topology {
    let pod = TestNs::new();
    let peer = TestNs::new();
    pod.ip(&[
        "link", "add", "cap0", "type", "veth", "peer", "name", "cap1", "netns", &peer.name,
    ]);
    pod.ip(&["addr", "add", &format!("{POD}/24"), "dev", "cap0"]);
    pod.ip(&["link", "set", "cap0", "up"]);
    for ip in [PEER, EXCLUDED_PEER, PROBE_SOURCE] {
        peer.ip(&["addr", "add", &format!("{ip}/24"), "dev", "cap1"]);
    }
    peer.ip(&["link", "set", "cap1", "up"]);
    Topology { pod, peer }
}

/// Which of `listeners` accepts the connection `client` made (matched by the client's address).
async fn accepted_by(
    listeners: &[(&'static str, TcpListener)],
    client: &TcpStream,
) -> (&'static str, TcpStream) {
    let source = client.local_addr().unwrap();
    let accept = poll_fn(|cx| {
        for (name, listener) in listeners {
            if let Poll::Ready(result) = listener.poll_accept(cx) {
                return Poll::Ready((*name, result));
            }
        }
        Poll::Pending
    });
    let (name, result) = timeout(Duration::from_secs(5), accept)
        .await
        .expect("no listener accepted the connection");
    let (stream, peer) = result.unwrap();
    assert_eq!(peer, source, "{name} accepted someone else's connection");
    (name, stream)
}

async fn connect(ns: &NetNs, to: SocketAddr, mark: Option<u32>) -> TcpStream {
    timeout(Duration::from_secs(5), ns.connect(to, mark))
        .await
        .unwrap_or_else(|_| panic!("connecting to {to}: timed out"))
        .unwrap_or_else(|err| panic!("connecting to {to}: {err}"))
}

async fn connect_from(ns: &NetNs, from: &str, to: SocketAddr) -> TcpStream {
    let socket = ns.tcp_socket(false, None).unwrap();
    socket.bind(&SockAddr::from(addr(from, 0))).unwrap();
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .unwrap_or_else(|_| panic!("connecting to {to}: timed out"))
        .unwrap()
}

fn original_dst(stream: &TcpStream) -> SocketAddr {
    let raw = getsockopt(stream, OriginalDst).expect("SO_ORIGINAL_DST");
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
        u16::from_be(raw.sin_port),
    ))
}

/// The segment size the kernel uses on `stream` (`TCP_MAXSEG`).
fn segment_size(stream: &TcpStream) -> u32 {
    getsockopt(stream, TcpMaxSeg).expect("TCP_MAXSEG")
}

#[tokio::test]
async fn capture_redirects_and_exclusions_hold() {
    if !privileged() {
        return;
    }
    capture_holds(None, false).await;
}

/// With the pod's address, capture also routes the pod's TCP through loopback from the first
/// lookup: everything above holds the same (every exemption is exercised: each kind of answer
/// that must leave through the pod's interface), and a captured connection's segments are sized
/// for loopback, not for the veth.
#[tokio::test]
async fn capture_routed_through_loopback_holds() {
    if !privileged() {
        return;
    }
    capture_holds(Some(POD.parse().unwrap()), false).await;
}

/// Strict reverse-path filtering would drop every answer whose reverse route is our loopback
/// route: such a pod gets no routing, and capture works as without it.
#[tokio::test]
async fn strict_reverse_path_filtering_keeps_the_pod_routes() {
    if !privileged() {
        return;
    }
    capture_holds(Some(POD.parse().unwrap()), true).await;
}

async fn capture_holds(pod_ip: Option<Ipv4Addr>, strict_rp_filter: bool) {
    let Topology { pod, peer } = topology();
    if strict_rp_filter {
        pod.exec_with_input(&["sysctl", "-w", "net.ipv4.conf.all.rp_filter=1"], "");
    }
    let routed = pod_ip.is_some() && !strict_rp_filter;
    let listen = |ns: &TestNs, name: &'static str, at: SocketAddr| {
        (name, ns.ns.tcp_listener(at, 16).unwrap())
    };
    // The proxy's listeners and the application, inside the pod.
    let pod_side = [
        listen(&pod, "outbound", addr("0.0.0.0", 15001)),
        listen(&pod, "inbound", addr("0.0.0.0", 15006)),
        listen(&pod, "hbone", addr("0.0.0.0", 15008)),
        listen(&pod, "app", addr(POD, 8080)),
        listen(&pod, "app-excluded-port", addr(POD, 9090)),
        listen(&pod, "app-loopback", addr("127.0.0.1", 7070)),
    ];
    // Servers the pod talks to.
    let peer_side = [
        listen(&peer, "peer", addr("0.0.0.0", 8080)),
        listen(&peer, "peer-excluded-port", addr("0.0.0.0", 9091)),
    ];

    // Without capture, everything goes where it is addressed.
    let client = connect(&pod.ns, addr(PEER, 8080), None).await;
    assert_eq!(accepted_by(&peer_side, &client).await.0, "peer");
    let client = connect(&peer.ns, addr(POD, 8080), None).await;
    assert_eq!(accepted_by(&pod_side, &client).await.0, "app");

    let spec = CaptureSpec {
        exclude_outbound_ports: vec![9091],
        exclude_outbound_cidrs: vec![format!("{EXCLUDED_PEER}/32")],
        exclude_inbound_ports: vec![9090],
        probe_sources: vec![PROBE_SOURCE.to_string()],
        pod_ip,
        ..CaptureSpec::default()
    };
    apply(&pod.ns, &spec).unwrap();
    assert_eq!(
        installed(&pod.ns)
            .unwrap()
            .iter()
            .any(|line| line.starts_with("1338: ")),
        routed
    );

    // Outbound: redirected to 15001, and the proxy learns where the connection was going.
    let client = connect(&pod.ns, addr(PEER, 8080), None).await;
    let (name, stream) = accepted_by(&pod_side, &client).await;
    assert_eq!(name, "outbound");
    assert_eq!(original_dst(&stream), addr(PEER, 8080));
    // The application sees its own address as the source, either way.
    assert_eq!(client.local_addr().unwrap().ip(), addr(POD, 0).ip());
    // The veth's MTU is 1500: segments of at most 1460 bytes unless routed through loopback.
    let segment = segment_size(&client);
    if routed {
        assert!(
            segment > 1500,
            "loopback-sized segments expected: {segment}"
        );
    } else {
        assert!(
            segment <= 1460,
            "interface-sized segments expected: {segment}"
        );
    }

    // The proxy's own (marked) connection goes straight to the server.
    let client = connect(&pod.ns, addr(PEER, 8080), Some(PROXY_MARK)).await;
    let (name, stream) = accepted_by(&peer_side, &client).await;
    assert_eq!(name, "peer");
    assert_eq!(stream.local_addr().unwrap(), addr(PEER, 8080));

    // Other bits of the mark do not matter (the rule compares the masked bits only).
    let client = connect(&pod.ns, addr(PEER, 8080), Some(PROXY_MARK | 0x10000)).await;
    assert_eq!(accepted_by(&peer_side, &client).await.0, "peer");

    // Excluded destination port and CIDR are not redirected.
    let client = connect(&pod.ns, addr(PEER, 9091), None).await;
    assert_eq!(
        accepted_by(&peer_side, &client).await.0,
        "peer-excluded-port"
    );
    let client = connect(&pod.ns, addr(EXCLUDED_PEER, 8080), None).await;
    let (name, stream) = accepted_by(&peer_side, &client).await;
    assert_eq!(name, "peer");
    assert_eq!(stream.local_addr().unwrap(), addr(EXCLUDED_PEER, 8080));

    // Loopback traffic inside the pod (to 127/8 or to its own address) is not captured.
    let client = connect(&pod.ns, addr("127.0.0.1", 7070), None).await;
    assert_eq!(accepted_by(&pod_side, &client).await.0, "app-loopback");
    let client = connect(&pod.ns, addr(POD, 8080), None).await;
    assert_eq!(accepted_by(&pod_side, &client).await.0, "app");

    // Inbound: redirected to 15006 with the original destination.
    let client = connect(&peer.ns, addr(POD, 8080), None).await;
    let (name, stream) = accepted_by(&pod_side, &client).await;
    assert_eq!(name, "inbound");
    assert_eq!(original_dst(&stream), addr(POD, 8080));

    // HBONE reaches the proxy's 15008 listener directly.
    let client = connect(&peer.ns, addr(POD, 15008), None).await;
    assert_eq!(accepted_by(&pod_side, &client).await.0, "hbone");

    // Excluded inbound port and health-probe source reach the application directly.
    let client = connect(&peer.ns, addr(POD, 9090), None).await;
    assert_eq!(accepted_by(&pod_side, &client).await.0, "app-excluded-port");
    let client = connect_from(&peer.ns, PROBE_SOURCE, addr(POD, 8080)).await;
    assert_eq!(accepted_by(&pod_side, &client).await.0, "app");

    // After removal, new connections are no longer redirected.
    remove(&pod.ns).unwrap();
    let client = connect(&pod.ns, addr(PEER, 8080), None).await;
    assert_eq!(accepted_by(&peer_side, &client).await.0, "peer");
    assert!(segment_size(&client) <= 1460);
    let client = connect(&peer.ns, addr(POD, 8080), None).await;
    assert_eq!(accepted_by(&pod_side, &client).await.0, "app");
}

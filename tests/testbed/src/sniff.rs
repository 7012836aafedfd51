//! Recording the frames that cross the node: proof of what is (not) on the wire.

use std::os::fd::{AsRawFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType, recvfrom, setsockopt, socket,
    sockopt,
};
use nix::sys::time::TimeVal;
use strait_netns::NetNs;

use crate::TestbedError;

/// `sll_pkttype` of a frame the namespace itself sends.
const PACKET_OUTGOING: u8 = 4;
/// Large enough for a GSO super-frame (veth passes them up to 64 KiB).
const FRAME_BUFFER: usize = 256 * 1024;

/// A packet capture on every interface of the node namespace, running on its own thread.
///
/// Each frame is recorded once: as it enters the node from a pod's veth, or as the node's own
/// bridge address sends it (a frame also seen leaving through another port, or delivered up to
/// the bridge, is not recorded again).
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Sniffer {
    /// Opens an `AF_PACKET` socket in `node` (where `bridge` is the pod bridge) and starts
    /// recording.
    pub(crate) fn start(node: &NetNs, bridge: &str) -> Result<Sniffer, TestbedError> {
        let bridge_name = bridge.to_string();
        let opened = node.run(move || -> Result<(OwnedFd, usize), String> {
            let fd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
            .map_err(|e| format!("AF_PACKET socket: {e}"))?;
            let bridge = nix::net::if_::if_nametoindex(bridge_name.as_str())
                .map_err(|e| format!("interface {bridge_name}: {e}"))?;
            Ok((fd, bridge as usize))
        })?;
        let (fd, bridge) = opened.map_err(|message| TestbedError::Sniff {
            netns: node.path().display().to_string(),
            message,
        })?;
        // A larger queue so a burst is not dropped while the thread copies; best effort.
        if setsockopt(&fd, sockopt::RcvBufForce, &(8 << 20)).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &(8 << 20));
        }
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000)).map_err(|e| {
            TestbedError::Sniff {
                netns: node.path().display().to_string(),
                message: format!("SO_RCVTIMEO: {e}"),
            }
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("testbed-sniff".into())
            .spawn(move || record(fd, bridge, &stopping))
            .map_err(|e| TestbedError::Sniff {
                netns: node.path().display().to_string(),
                message: format!("starting the capture thread: {e}"),
            })?;
        Ok(Sniffer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops recording and returns every frame (Ethernet header included), in order.
    pub fn stop_frames(mut self) -> Vec<Vec<u8>> {
        self.finish()
    }

    /// Stops recording and returns all frames concatenated: search it for bytes that must (not)
    /// have crossed the wire.
    pub fn stop(self) -> Vec<u8> {
        self.stop_frames().concat()
    }

    fn finish(&mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn record(fd: OwnedFd, bridge: usize, stop: &AtomicBool) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; FRAME_BUFFER];
    loop {
        match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
            Ok((len, addr)) => {
                let keep = addr.is_none_or(|a| {
                    let outgoing = a.pkttype() == PACKET_OUTGOING;
                    let on_bridge = a.ifindex() == bridge;
                    outgoing == on_bridge
                });
                if keep {
                    frames.push(buf[..len.min(buf.len())].to_vec());
                }
            }
            // Queue drained: leave once asked to, having kept everything queued before.
            Err(Errno::EAGAIN | Errno::EINTR) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!("packet capture stopped: {e}");
                break;
            }
        }
        if stop.load(Ordering::SeqCst) {
            // Drain what is already queued without waiting for more.
            let _ = nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
        }
    }
    frames
}

/// Whether `needle` occurs in `haystack` (e.g. a plaintext marker in captured frames).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

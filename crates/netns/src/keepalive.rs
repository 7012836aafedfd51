//! TCP keep-alive for every connection the data plane accepts or dials.
//!
//! A peer that vanishes without closing (its node lost power, a NAT or firewall forgot the
//! flow) leaves a connection that nothing reads or writes: an idle keep-alive connection, an
//! L4 tunnel, a pooled upstream connection. Without keep-alive the proxy holds it, and the
//! other half it pairs it with, until the process restarts. With it, the kernel probes a
//! connection idle for [`IDLE`] and resets it after [`PROBES`] unanswered probes, [`INTERVAL`]
//! apart: a dead peer is noticed within two minutes of going quiet, at the cost of one small
//! packet per idle connection per minute. The probes never reach the application, so unlike
//! HTTP/2 PINGs they cannot trip a backend's ping-abuse limits (by default, a gRPC server
//! closes the connection of a client that PINGs more often than every five minutes).
//!
//! Keep-alive probes only go out on a connection with nothing in flight. A peer that vanishes
//! while data to it is unacknowledged (a write to a dead node) would instead be retransmitted
//! to for the kernel's `tcp_retries2` (about 15 minutes). [`USER_TIMEOUT`] bounds that to the
//! same two minutes: a connection whose sent data goes unacknowledged for that long, with
//! nothing heard from the peer, is reset. A live peer that is only slow (a zero window) keeps
//! answering, and keeps its connection.
//!
//! Set on listening sockets, the options are inherited by every connection accepted from
//! them, which costs no system call per connection.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// How long a connection may be silent before it is probed.
pub const IDLE: Duration = Duration::from_secs(60);
/// Time between unanswered probes.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the kernel resets the connection.
pub const PROBES: u32 = 6;

/// How long sent data may go unacknowledged, the peer silent, before the kernel resets the
/// connection (`TCP_USER_TIMEOUT`): as long as an idle connection's probes take to fail, so a
/// dead peer is noticed in the same time either way.
pub const USER_TIMEOUT: Duration = IDLE.saturating_add(INTERVAL.saturating_mul(PROBES));

/// Enables keep-alive and the user timeout with the values above on a connected or listening
/// TCP socket.
pub fn enable(socket: &impl AsFd) -> io::Result<()> {
    let socket = SockRef::from(socket);
    socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(IDLE)
            .with_interval(INTERVAL)
            .with_retries(PROBES),
    )?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_enabled(socket: SockRef<'_>) {
        assert!(socket.keepalive().unwrap(), "SO_KEEPALIVE is off");
        assert_eq!(socket.tcp_keepalive_time().unwrap(), IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), PROBES);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    }

    #[tokio::test]
    async fn a_listener_passes_keepalive_to_the_connections_it_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        enable(&listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (accepted, _) = accepted.unwrap();
        assert_enabled(SockRef::from(&accepted));
        // The other end was not touched.
        let client = client.unwrap();
        assert!(!SockRef::from(&client).keepalive().unwrap());
        assert_eq!(SockRef::from(&client).tcp_user_timeout().unwrap(), None);
    }
}

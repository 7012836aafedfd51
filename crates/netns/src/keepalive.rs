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

/// Enables keep-alive with the values above on a connected or listening TCP socket.
pub fn enable(socket: &impl AsFd) -> io::Result<()> {
    SockRef::from(socket).set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(IDLE)
            .with_interval(INTERVAL)
            .with_retries(PROBES),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_enabled(socket: SockRef<'_>) {
        assert!(socket.keepalive().unwrap(), "SO_KEEPALIVE is off");
        assert_eq!(socket.tcp_keepalive_time().unwrap(), IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), PROBES);
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
        assert!(!SockRef::from(&client.unwrap()).keepalive().unwrap());
    }
}

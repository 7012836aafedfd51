//! How the proxy reaches an endpoint address.
//!
//! Ingress Gateways dial plain TCP. A waypoint dials an HBONE tunnel when the endpoint is a
//! meshed pod, and the node proxy dials from inside a pod's network namespace with the proxy
//! mark. The request pipeline does not care which: it asks a [`Dialer`] for a byte stream.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use strait_netns::keepalive;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream to a peer: TCP, TLS or an HBONE tunnel.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// An owned, type-erased [`Io`].
pub type BoxIo = Box<dyn Io>;

/// Opens byte streams to endpoint addresses.
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `addr`. Callers bound the time it may take.
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>>;
}

/// Plain TCP from the process's own network namespace, with TCP keep-alive on.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let stream = connect(addr).await?;
            Ok(Box::new(stream) as BoxIo)
        })
    }
}

/// A TCP connection from the process's own network namespace, set up as every upstream
/// connection is: `TCP_NODELAY` and keep-alive.
pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    keepalive::enable(&stream)?;
    Ok(stream)
}

/// Dials with a deadline.
pub(crate) async fn dial_within(
    dialer: &dyn Dialer,
    addr: SocketAddr,
    limit: Duration,
) -> io::Result<BoxIo> {
    match tokio::time::timeout(limit, dialer.dial(addr)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::sys::socket::{getsockopt, sockopt};

    use super::*;

    fn assert_keepalive(socket: &impl AsFd) {
        assert!(
            getsockopt(socket, sockopt::KeepAlive).unwrap(),
            "SO_KEEPALIVE is off"
        );
        let idle = getsockopt(socket, sockopt::TcpKeepIdle).unwrap();
        assert_eq!(u64::from(idle), keepalive::IDLE.as_secs());
        let interval = getsockopt(socket, sockopt::TcpKeepInterval).unwrap();
        assert_eq!(u64::from(interval), keepalive::INTERVAL.as_secs());
        assert_eq!(
            getsockopt(socket, sockopt::TcpKeepCount).unwrap(),
            keepalive::PROBES
        );
        let user_timeout = getsockopt(socket, sockopt::TcpUserTimeout).unwrap();
        assert_eq!(
            u128::from(user_timeout),
            keepalive::USER_TIMEOUT.as_millis()
        );
    }

    #[tokio::test]
    async fn upstream_and_listener_connections_have_keepalive() {
        let listener = crate::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(connect(addr), listener.accept());
        let (accepted, _) = accepted.unwrap();
        assert_keepalive(&dialed.unwrap());
        assert_keepalive(&accepted);
    }
}

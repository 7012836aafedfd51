//! How the proxy reaches an endpoint address.
//!
//! Ingress Gateways dial plain TCP. A waypoint dials an HBONE tunnel when the endpoint is a
//! meshed pod, and the node proxy dials from inside a pod's network namespace with the proxy
//! mark. The request pipeline does not care which: it asks a [`Dialer`] for a byte stream.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
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

/// Plain TCP from the process's own network namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as BoxIo)
        })
    }
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

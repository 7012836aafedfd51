//! How the proxy reaches an endpoint address.
//!
//! Ingress Gateways dial plain TCP. A waypoint dials an HBONE tunnel when the endpoint is a
//! meshed pod, and the node proxy dials from inside a pod's network namespace with the proxy
//! mark. The request pipeline does not care which: it asks a [`Dialer`] for a byte stream.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
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

/// Adapts a [`Dialer`] to hyper-util's pooled client, which keys its pool by the request
/// authority (always the endpoint `ip:port` here).
#[derive(Clone)]
pub(crate) struct DialConnector {
    pub(crate) dialer: Arc<dyn Dialer>,
    pub(crate) timeout: Duration,
}

impl tower_service::Service<Uri> for DialConnector {
    type Response = DialedIo;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<DialedIo>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.dialer.clone();
        let limit = self.timeout;
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("upstream authority of {uri} is not ip:port"),
                    )
                })?;
            let io = dial_within(dialer.as_ref(), addr, limit).await?;
            Ok(DialedIo(TokioIo::new(io)))
        })
    }
}

/// A dialed stream as hyper-util's client wants it.
pub(crate) struct DialedIo(TokioIo<BoxIo>);

impl hyper::rt::Read for DialedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for DialedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for DialedIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

//! Listeners and client connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use strait_netns::keepalive;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::coalesce::{Coalesce, FlushAt};
use crate::h1;
use crate::handler::{self, ConnInfo, PortState};
use crate::http2;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by a listener and its connections; `state` is swapped on every config apply.
pub(crate) struct ListenerShared {
    pub(crate) state: ArcSwap<PortState>,
}

/// Binds with SO_REUSEADDR so a restarted proxy can rebind while old connections linger, and
/// with TCP keep-alive, which every accepted connection inherits.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    keepalive::enable(&socket)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts until `stop` flips; each connection holds a clone of `tracker` so the owner can wait
/// for all of them to finish.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    stop: watch::Receiver<bool>,
    tracker: mpsc::Sender<()>,
) {
    let serve_stop = stop.clone();
    crate::accept::accept_until_stopped(listener, stop, |peer| {
        let (shared, stop, tracker) = (shared.clone(), serve_stop.clone(), tracker.clone());
        move |stream| serve_connection(shared, stream, peer, stop, tracker)
    })
    .await;
}

async fn serve_connection(
    shared: Arc<ListenerShared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    _tracker: mpsc::Sender<()>,
) {
    let state = shared.state.load_full();
    if state.tls.is_none() {
        drop(state);
        let conn = ConnInfo::new(peer, false, None);
        serve_http(shared, stream, conn, stop).await;
        return;
    }
    // The TLS path's state (handshake, rustls connection) is several kilobytes: boxed, so the
    // task of every plaintext connection (most idle keep-alive connections) does not carry it.
    Box::pin(serve_tls(shared, state, stream, peer, stop)).await;
}

async fn serve_tls(
    shared: Arc<ListenerShared>,
    state: Arc<PortState>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let Some(tls) = &state.tls else {
        return;
    };
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS ClientHello failed");
            return;
        }
        Err(_) => return,
    };
    let sni = start
        .client_hello()
        .server_name()
        .map(|s| s.to_ascii_lowercase());
    let Some(config) = tls.select(sni.as_deref()).cloned() else {
        tracing::debug!(%peer, ?sni, "no certificate for SNI");
        return;
    };
    drop(state);
    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, start.into_stream(config)).await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let conn = ConnInfo::new(peer, true, sni);
    serve_http(shared, stream, conn, stop).await;
}

/// Serves HTTP/1.x with our own server, or HTTP/2 (prior knowledge, or ALPN `h2` on TLS)
/// when the client opens with the HTTP/2 preface.
///
/// Not an `async fn`, for the reason given on [`h1::serve`]: this future is most of an idle
/// connection's task.
pub(crate) fn serve_http<I: h1::Io>(
    shared: Arc<ListenerShared>,
    io: I,
    conn: ConnInfo,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    let conn = Arc::new(conn);
    let peer = conn.peer;
    let service: h1::Service = Box::new(move |req| {
        pin_in_place(|| handler::handle(shared.state.load_full(), conn.clone(), req))
    });
    // `then` rather than an async block, which would keep room for the HTTP/1.1 future twice
    // (once as the block's capture, once as the future it awaits).
    h1::serve(io, service, stop.clone()).then(move |ended| async move {
        // Streams finishing in the same scheduler turn share a flush. Boxed: an HTTP/2
        // connection is larger than an idle HTTP/1.1 connection's whole task.
        if let h1::Ended::Http2(io, service) = ended {
            let io = Coalesce::new(io, FlushAt::DriverTurn);
            if let Err(e) = Box::pin(http2::serve(io, service, stop)).await {
                tracing::debug!(%peer, error = %e, "HTTP/2 client connection ended with error");
            }
        }
    })
}

/// Boxes the future `make` returns. Writing into an allocated box lets the optimiser build
/// the future in place, where `Box::pin(make())` copied a request's whole future (a few KiB)
/// twice on its way to the heap (callgrind: two `memcpy` calls per request gone).
fn pin_in_place<F>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

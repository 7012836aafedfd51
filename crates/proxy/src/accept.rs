//! The accept loop every listener of the data plane shares.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Accepts until `stop` flips (or its sender is gone). Each connection, with `TCP_NODELAY`
/// set, is served by what `serve` makes for its peer, on the worker
/// [`crate::workers::spawn_connection`] picks. Accept errors (typically EMFILE) back off
/// briefly instead of spinning. Connections already handed over are not affected by the stop.
pub async fn accept_until_stopped<F, Fut>(
    listener: &TcpListener,
    mut stop: watch::Receiver<bool>,
    mut serve: impl FnMut(SocketAddr) -> F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    crate::workers::spawn_connection(stream, serve(peer));
                }
                Err(e) => {
                    tracing::warn!(addr = ?listener.local_addr().ok(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracing::debug!(addr = ?listener.local_addr().ok(), "listener stopped");
}

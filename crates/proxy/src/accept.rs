//! The accept loop every listener of the data plane shares.
//!
//! The listener waits for readiness on the runtime it runs on, but the sockets it accepts are
//! not registered there: each is registered once, with the reactor of the worker that serves
//! it ([`crate::workers::spawn_connection`]). Accepting through Tokio's `TcpListener` would
//! register every socket with the accepting worker first, and a hand-over would then take it
//! out and register it again: two more `epoll_ctl` calls for each connection another worker
//! serves.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::socket::SockFlag;
use socket2::Socket;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Accepts on `listener` until `stop` flips (or its sender is gone). Each connection, with
/// `TCP_NODELAY` set, is served by what `serve` makes for its peer, on the worker
/// [`crate::workers::spawn_connection`] picks. An error that belongs to one pending peer (it
/// left, or a firewall refused it) is skipped at once; one that says the process or the
/// system is out of something (typically EMFILE) backs off briefly instead of spinning, and
/// is logged once per streak, not once per retry. Connections already handed over are not
/// affected by the stop.
pub async fn accept_until_stopped<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    mut serve: impl FnMut(SocketAddr) -> F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().ok();
    let registered = listener.into_std().and_then(|listener| {
        // SAFETY: the socket owns its descriptor and the `AsyncFd` owns the socket, which is
        // neither replaced nor closed while registered.
        unsafe { AsyncFd::register_with_interest(Socket::from(listener), Interest::READABLE) }
            .map_err(std::io::Error::from)
    });
    let listener = match registered {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(?addr, error = %e, "listener not watched; it accepts nothing");
            return;
        }
    };
    // Non-blocking as Tokio requires of the sockets it registers; not inherited from the
    // listener on Linux.
    let flags = (SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC).bits();
    let mut failed_in_a_row = 0u64;
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
            ready = listener.readable() => {
                let accepted = match ready {
                    Ok(mut guard) => {
                        let Ok(accepted) = guard.try_io(|socket| socket.get_ref().accept4(flags))
                        else {
                            // Would block: the readiness is cleared; wait for the next.
                            continue;
                        };
                        accepted
                    }
                    Err(e) => Err(e),
                };
                match accepted {
                    Ok((socket, peer)) => {
                        if failed_in_a_row > 0 {
                            tracing::info!(?addr, failed = failed_in_a_row, "accepting again");
                            failed_in_a_row = 0;
                        }
                        // Not a TCP peer address: cannot happen on a TCP listener; dropped.
                        let Some(peer) = peer.as_socket() else { continue };
                        let _ = socket.set_tcp_nodelay(true);
                        crate::workers::spawn_connection(socket.into(), serve(peer));
                    }
                    Err(e) if is_one_peers_error(&e) => {
                        tracing::debug!(?addr, error = %e, "pending connection dropped");
                    }
                    Err(e) => {
                        if failed_in_a_row == 0 {
                            tracing::warn!(
                                ?addr,
                                error = %e,
                                "accept failed; retrying every {} ms until it succeeds",
                                ACCEPT_BACK_OFF.as_millis()
                            );
                        }
                        failed_in_a_row += 1;
                        tokio::time::sleep(ACCEPT_BACK_OFF).await;
                    }
                }
            }
        }
    }
    tracing::debug!(?addr, "listener stopped");
}

/// How long the loop waits after an error that retrying at once would only repeat: long
/// enough not to spin on a full descriptor table, short enough that clients waiting in the
/// backlog barely notice once descriptors free up.
const ACCEPT_BACK_OFF: Duration = Duration::from_millis(50);

/// Whether `error` concerns only the connection `accept` was handing over (or the call, if
/// a signal interrupted it), so the next one can be accepted at once. Linux reports a pending
/// connection's network errors (and a firewall's refusal, EPERM) from `accept` itself, and
/// accept(2) asks callers to retry them as they would EAGAIN. Everything else (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM, ...) is a shortage that an immediate retry would hit again.
fn is_one_peers_error(error: &std::io::Error) -> bool {
    use nix::errno::Errno;
    let Some(code) = error.raw_os_error() else {
        return false;
    };
    matches!(
        Errno::from_raw(code),
        Errno::ECONNABORTED
            | Errno::EINTR
            | Errno::EPERM
            | Errno::EPROTO
            | Errno::ENOPROTOOPT
            | Errno::EHOSTDOWN
            | Errno::ENONET
            | Errno::EHOSTUNREACH
            | Errno::EOPNOTSUPP
            | Errno::ENETDOWN
            | Errno::ENETUNREACH
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use nix::errno::Errno;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// On a current-thread runtime, as a proxy's worker: a socket handed over in blocking mode
    /// would stall the worker's only thread on the first read with nothing to read, and no other
    /// connection would be served.
    #[tokio::test]
    async fn serves_each_peer_non_blocking_with_nodelay_until_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let (peers_tx, mut peers) = tokio::sync::mpsc::unbounded_channel();
        let accepting = tokio::spawn(accept_until_stopped(listener, stop_rx, move |peer| {
            let peers = peers_tx.clone();
            move |mut stream: TcpStream| async move {
                let _ = peers.send((peer, stream.nodelay().unwrap_or(false)));
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }));

        // The client runs on its own thread: if the runtime's thread is stuck, the echo times
        // out, and closing the connections then frees the thread, so the test fails, not hangs.
        let client = tokio::task::spawn_blocking(move || {
            let silent = std::net::TcpStream::connect(addr).expect("connect");
            std::thread::sleep(Duration::from_millis(50));
            let mut talking = std::net::TcpStream::connect(addr).expect("connect");
            talking
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            talking.write_all(b"ping").unwrap();
            let mut echoed = [0u8; 4];
            let result = talking.read_exact(&mut echoed).map(|()| echoed);
            let ends = [silent.local_addr().unwrap(), talking.local_addr().unwrap()];
            (result.map_err(|e| e.kind()), ends, talking)
        });
        let (echoed, ends, mut talking) = client.await.unwrap();
        assert_eq!(
            echoed,
            Ok(*b"ping"),
            "a silent connection must not stall the others"
        );
        let mut served = Vec::new();
        for _ in ends {
            let (peer, nodelay) = peers.recv().await.expect("served");
            assert!(nodelay, "TCP_NODELAY set on {peer}");
            served.push(peer);
        }
        served.sort();
        let mut ends = ends.to_vec();
        ends.sort();
        assert_eq!(served, ends, "each connection served once, with its peer");

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), accepting)
            .await
            .expect("the loop ends when stopped")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "a stopped listener is closed"
        );
        // Connections already handed over outlive the stop.
        tokio::task::spawn_blocking(move || {
            talking.write_all(b"pong").unwrap();
            let mut echoed = [0u8; 4];
            talking.read_exact(&mut echoed).unwrap();
            assert_eq!(&echoed, b"pong");
        })
        .await
        .unwrap();
    }

    /// A peer's own failure must not pause the listener for everyone else, and a shortage
    /// must not be retried in a busy loop.
    #[test]
    fn skips_one_peers_errors_and_backs_off_on_shortages() {
        let error = |errno: Errno| std::io::Error::from_raw_os_error(errno as i32);
        for errno in [
            Errno::ECONNABORTED,
            Errno::EPERM,
            Errno::EPROTO,
            Errno::ENETUNREACH,
        ] {
            assert!(is_one_peers_error(&error(errno)), "{errno} skipped at once");
        }
        for errno in [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM] {
            assert!(!is_one_peers_error(&error(errno)), "{errno} backs off");
        }
        let not_from_the_kernel = std::io::Error::other("reactor gone");
        assert!(!is_one_peers_error(&not_from_the_kernel));
    }
}

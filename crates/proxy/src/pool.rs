//! Idle keep-alive HTTP/1.1 connections of one endpoint.
//!
//! A connection leaves the pool for one request and comes back when that request's response
//! body has been read to its end ([`Checkin`], carried by the response body), so a connection
//! that is still streaming is never handed out. Most recently used first: the hot connections
//! stay warm and the rest age out. No timer task and no per-request spawn: expired and closed
//! connections are dropped when the pool is touched and by [`IdlePool::prune`], which the
//! owner calls periodically.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::h1::client::ClientConn;
use crate::upstream::Endpoint;
use crate::workers::PerWorker;

/// How long a connection may sit idle before it is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint and worker; more are closed on return.
const MAX_IDLE: usize = 512;

struct Idle {
    conn: Box<ClientConn>,
    since: Instant,
}

impl Idle {
    /// Within its idle timeout and still open at the peer.
    fn usable(&mut self, now: Instant) -> bool {
        now.duration_since(self.since) < IDLE_TIMEOUT && self.conn.is_idle_usable()
    }
}

/// See the module documentation. One list per worker ([`crate::workers`]): a connection is
/// registered with the reactor of the worker that opened it, and is only ever handed out on
/// that worker again.
pub(crate) struct IdlePool {
    idle: PerWorker<Mutex<Vec<Idle>>>,
}

impl Default for IdlePool {
    fn default() -> IdlePool {
        IdlePool {
            idle: PerWorker::new(Mutex::default),
        }
    }
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self.idle.all().map(|list| lock(list).len()).sum();
        f.debug_struct("IdlePool").field("idle", &idle).finish()
    }
}

fn lock(list: &Mutex<Vec<Idle>>) -> MutexGuard<'_, Vec<Idle>> {
    // A panic while holding the lock cannot leave the Vec inconsistent.
    list.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl IdlePool {
    /// The calling worker's list.
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        lock(self.idle.get())
    }

    /// The most recently returned live connection, if any.
    pub(crate) fn checkout(&self) -> Option<Box<ClientConn>> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(mut entry) = idle.pop() {
            if entry.usable(now) {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub(crate) fn checkin(&self, conn: Box<ClientConn>) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] or closed by the peer.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        for list in self.idle.all() {
            lock(list).retain_mut(|entry| entry.usable(now));
        }
    }

    /// Idle connections held, on every worker.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.idle.all().map(|list| lock(list).len()).sum()
    }

    /// Read buffer capacity held by the idle connections, on every worker.
    #[cfg(test)]
    pub(crate) fn read_capacity(&self) -> usize {
        let capacity = |list| -> usize {
            lock(list)
                .iter()
                .map(|entry| entry.conn.read_capacity())
                .sum()
        };
        self.idle.all().map(capacity).sum()
    }
}

/// Where a connection goes back when the response body it carries has ended. A body dropped
/// before that (the client went away mid-body) closes the connection instead: a connection
/// with unread response bytes cannot serve another request.
pub(crate) struct Checkin {
    endpoint: Arc<Endpoint>,
}

impl std::fmt::Debug for Checkin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checkin")
    }
}

impl Checkin {
    pub(crate) fn new(endpoint: Arc<Endpoint>) -> Checkin {
        Checkin { endpoint }
    }

    /// The exchange ended cleanly: the connection may serve the next request.
    pub(crate) fn finish(self, conn: Box<ClientConn>) {
        self.endpoint.h1.checkin(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own marked as running worker `worker`.
    fn on_worker<T: Send>(worker: usize, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    crate::workers::enter(worker);
                    f()
                })
                .join()
                .expect("no panic")
        })
    }

    #[tokio::test]
    async fn a_connection_is_handed_out_only_on_the_worker_that_returned_it() {
        let pool = IdlePool {
            idle: PerWorker::with_count(2, Mutex::default),
        };
        // The peer stays open and silent: the connection is usable.
        let (io, _peer) = tokio::io::duplex(64);
        let conn = ClientConn::new(Box::new(io));
        on_worker(1, || pool.checkin(conn));
        assert_eq!(pool.len(), 1);
        assert!(on_worker(0, || pool.checkout()).is_none(), "not worker 0's");
        let conn = on_worker(1, || pool.checkout()).expect("worker 1's connection");
        assert_eq!(pool.len(), 0);
        on_worker(1, || pool.checkin(conn));
        pool.prune();
        assert_eq!(
            pool.len(),
            1,
            "pruning keeps every worker's live connections"
        );
    }
}

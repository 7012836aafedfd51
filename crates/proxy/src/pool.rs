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

use hyper::client::conn::http1::SendRequest;

use crate::body::Body;
use crate::upstream::Endpoint;

/// How long a connection may sit idle before it is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint; more are closed on return.
const MAX_IDLE: usize = 512;

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Idle {
    /// Still open at the peer and within its idle timeout.
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct IdlePool {
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool")
            .field("idle", &self.lock().len())
            .finish()
    }
}

impl IdlePool {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently returned live connection, if any. It may still be finishing its
    /// previous exchange: callers wait for `ready()` before sending.
    pub(crate) fn checkout(&self) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if entry.usable(now) {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to the end.
    pub(crate) fn checkin(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] or closed by the peer.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        self.lock().retain(|entry| entry.usable(now));
    }
}

/// Returns a connection to its pool when the response body it carries has ended. Dropped
/// before that (the client went away mid-body), it closes the connection instead: a connection
/// with unread response bytes cannot serve another request.
pub(crate) struct Checkin {
    endpoint: Arc<Endpoint>,
    sender: SendRequest<Body>,
}

impl std::fmt::Debug for Checkin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checkin")
    }
}

impl Checkin {
    pub(crate) fn new(endpoint: Arc<Endpoint>, sender: SendRequest<Body>) -> Checkin {
        Checkin { endpoint, sender }
    }

    /// The response ended cleanly: the connection may serve the next request.
    pub(crate) fn finish(self) {
        self.endpoint.h1.checkin(self.sender);
    }
}

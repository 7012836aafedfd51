//! The controller side: [`ConfigHub`] holds the latest snapshot of every scope and serves it to
//! subscribed proxies.
//!
//! Each scope's snapshot lives in a `tokio::sync::watch` channel, so a subscriber always reads the
//! *latest* value when it is ready for the next one: a slow proxy skips intermediate versions
//! instead of building a backlog, and publishing never waits for subscribers.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;
use strait_proto::config::v1 as pb;
use strait_proto::config::v1::client_message::Message;
use strait_proto::config::v1::config_service_server::ConfigServiceServer;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use crate::{Hello, Scope, XdsError};

/// How long a new stream may take to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest client message accepted (acks with an error text; hellos).
const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest rejection reason kept in an [`AckRecord`].
const MAX_ACK_ERROR_BYTES: usize = 4 * 1024;
/// How many acks [`ConfigHub::acks`] remembers.
const ACK_HISTORY: usize = 1024;

/// One version of a scope's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Increases with every change of any scope of the hub; never 0.
    pub version: u64,
    /// The serialized config, shared by every subscriber.
    pub payload: Bytes,
}

/// A proxy's verdict on one version it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckRecord {
    /// The scope the proxy subscribed to.
    pub scope: Scope,
    /// The proxy's self-declared id (from its `Hello`).
    pub proxy_id: String,
    /// The version acknowledged or rejected.
    pub version: u64,
    /// `Err` carries the proxy's reason for rejecting the version (it keeps its previous config).
    pub result: Result<(), String>,
}

/// The latest config of every scope, shared by the publisher (the controller) and every subscriber
/// stream. Cheap to clone; all clones are the same hub.
#[derive(Clone, Debug)]
pub struct ConfigHub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    state: Mutex<HubState>,
    acks: Mutex<AckLog>,
    next_stream: AtomicU64,
}

#[derive(Debug)]
struct HubState {
    /// The last version handed out.
    version: u64,
    /// `None` while a scope has subscribers but no config (not published yet, or removed).
    scopes: HashMap<Scope, watch::Sender<Option<Snapshot>>>,
}

#[derive(Debug, Default)]
struct AckLog {
    recent: VecDeque<AckRecord>,
    /// Last ack of every connected proxy, with the stream that delivered it.
    by_proxy: HashMap<String, (u64, AckRecord)>,
}

impl Default for ConfigHub {
    fn default() -> Self {
        ConfigHub::new()
    }
}

impl ConfigHub {
    /// An empty hub. Versions start from the current time in microseconds, so a restarted
    /// controller's versions are higher than the ones its predecessor handed out and never
    /// collide with the `last_version` a reconnecting proxy reports.
    pub fn new() -> ConfigHub {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        ConfigHub::with_version_base(now)
    }

    /// An empty hub whose first version is `base + 1` (for deterministic tests, or a controller
    /// that persists its version counter).
    pub fn with_version_base(base: u64) -> ConfigHub {
        ConfigHub {
            inner: Arc::new(HubInner {
                state: Mutex::new(HubState {
                    version: base,
                    scopes: HashMap::new(),
                }),
                acks: Mutex::new(AckLog::default()),
                next_stream: AtomicU64::new(1),
            }),
        }
    }

    /// Makes `payload` the config of `scope` and returns its version. A payload equal to the
    /// current one changes nothing (same version, nothing pushed); anything else gets a new,
    /// higher version and reaches every subscriber of the scope.
    pub fn publish(&self, scope: &Scope, payload: impl Into<Bytes>) -> u64 {
        let payload = payload.into();
        let mut state = self.state();
        let next = state.version.saturating_add(1);
        let sender = state
            .scopes
            .entry(scope.clone())
            .or_insert_with(|| watch::channel(None).0);
        if let Some(current) = sender.borrow().as_ref()
            && current.payload == payload
        {
            return current.version;
        }
        let len = payload.len();
        sender.send_replace(Some(Snapshot {
            version: next,
            payload,
        }));
        state.version = next;
        tracing::debug!(%scope, version = next, bytes = len, "published config");
        next
    }

    /// Forgets the config of `scope`; returns whether it had one. Subscribers keep what they
    /// have and receive nothing until the scope is published again (publish an empty config to
    /// make proxies drop theirs).
    pub fn remove(&self, scope: &Scope) -> bool {
        let mut state = self.state();
        let Some(sender) = state.scopes.get(scope) else {
            return false;
        };
        let had = sender.send_replace(None).is_some();
        if sender.receiver_count() == 0 {
            state.scopes.remove(scope);
        }
        if had {
            tracing::debug!(%scope, "removed config");
        }
        had
    }

    /// The current snapshot of `scope`, if it has one.
    pub fn current(&self, scope: &Scope) -> Option<Snapshot> {
        self.state()
            .scopes
            .get(scope)
            .and_then(|sender| sender.borrow().clone())
    }

    /// The most recent acks (up to 1024), oldest first.
    pub fn acks(&self) -> Vec<AckRecord> {
        self.ack_log().recent.iter().cloned().collect()
    }

    /// The last ack of the connected proxy `proxy_id` (forgotten when its stream ends).
    pub fn last_ack(&self, proxy_id: &str) -> Option<AckRecord> {
        self.ack_log()
            .by_proxy
            .get(proxy_id)
            .map(|(_, record)| record.clone())
    }

    /// The gRPC service over this hub, admitting every subscriber. Its streams only end when
    /// clients leave: prefer [`serve`] (or [`ConfigService::closing_on`]) so a graceful shutdown
    /// does not wait for them forever.
    pub fn service(&self) -> ConfigServiceServer<ConfigService<AllowAll>> {
        ConfigService::new(self.clone(), AllowAll).into_server()
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn ack_log(&self) -> MutexGuard<'_, AckLog> {
        self.inner
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn watch(&self, scope: &Scope) -> watch::Receiver<Option<Snapshot>> {
        self.state()
            .scopes
            .entry(scope.clone())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    fn record_ack(&self, stream: u64, record: AckRecord) {
        let mut log = self.ack_log();
        if log.recent.len() >= ACK_HISTORY {
            log.recent.pop_front();
        }
        log.recent.push_back(record.clone());
        log.by_proxy
            .insert(record.proxy_id.clone(), (stream, record));
    }

    /// Drops what a finished stream left behind: its proxy's last ack (unless a newer stream of
    /// the same proxy owns it) and the scope's entry if nobody watches it and it has no config.
    fn unsubscribe(&self, stream: u64, hello: &Hello, rx: watch::Receiver<Option<Snapshot>>) {
        drop(rx);
        {
            let mut state = self.state();
            if let Some(sender) = state.scopes.get(&hello.scope)
                && sender.receiver_count() == 0
                && sender.borrow().is_none()
            {
                state.scopes.remove(&hello.scope);
            }
        }
        let mut log = self.ack_log();
        if log
            .by_proxy
            .get(&hello.proxy_id)
            .is_some_and(|(owner, _)| *owner == stream)
        {
            log.by_proxy.remove(&hello.proxy_id);
        }
    }
}

/// Who is subscribing, as far as the transport and the `Hello` tell.
#[derive(Debug)]
#[non_exhaustive]
pub struct Subscriber<'a> {
    /// Request metadata (headers): where credentials such as a service-account token travel.
    pub metadata: &'a MetadataMap,
    /// The peer's address, when the transport knows it.
    pub remote_addr: Option<SocketAddr>,
    /// The scope and proxy id asked for.
    pub hello: &'a Hello,
}

impl<'a> Subscriber<'a> {
    /// Subscriber information as the service builds it (also for exercising authorizers).
    pub fn new(
        metadata: &'a MetadataMap,
        remote_addr: Option<SocketAddr>,
        hello: &'a Hello,
    ) -> Subscriber<'a> {
        Subscriber {
            metadata,
            remote_addr,
            hello,
        }
    }

    /// The token of an `authorization: Bearer <token>` header, if any.
    pub fn bearer_token(&self) -> Option<&str> {
        let value = self.metadata.get("authorization")?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }
}

/// Decides whether a subscriber may read a scope's config (configs carry private keys of
/// Gateway listeners, so not every proxy may read every scope). The controller checks the
/// caller's service-account token (TokenReview) against the scope.
pub trait SubscriberAuth: Send + Sync + 'static {
    /// `Ok(())` to admit; otherwise the status the subscriber receives (typically
    /// `permission_denied` or `unauthenticated`).
    fn authorize(
        &self,
        subscriber: &Subscriber<'_>,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

/// Admits every subscriber. For standalone mode and tests, where the listener is reachable by
/// trusted processes only.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl SubscriberAuth for AllowAll {
    async fn authorize(&self, _subscriber: &Subscriber<'_>) -> Result<(), Status> {
        Ok(())
    }
}

/// A synchronous check, e.g. a closure comparing the scope with a static allow-list.
impl<F> SubscriberAuth for F
where
    F: Fn(&Subscriber<'_>) -> Result<(), Status> + Send + Sync + 'static,
{
    async fn authorize(&self, subscriber: &Subscriber<'_>) -> Result<(), Status> {
        self(subscriber)
    }
}

/// The tonic implementation of `ConfigService` over a [`ConfigHub`].
#[derive(Debug)]
pub struct ConfigService<A> {
    hub: ConfigHub,
    auth: Arc<A>,
    closing: Option<watch::Receiver<bool>>,
}

impl<A: SubscriberAuth> ConfigService<A> {
    /// Serves `hub` to subscribers `auth` admits.
    pub fn new(hub: ConfigHub, auth: A) -> ConfigService<A> {
        ConfigService {
            hub,
            auth: Arc::new(auth),
            closing: None,
        }
    }

    /// Ends every stream (with `UNAVAILABLE`, so proxies reconnect) once `closing` turns true:
    /// subscriptions never end on their own, and a graceful server shutdown waits for them.
    pub fn closing_on(mut self, closing: watch::Receiver<bool>) -> ConfigService<A> {
        self.closing = Some(closing);
        self
    }

    /// The tonic server wrapper, to add to a `tonic::transport::Server` router.
    pub fn into_server(self) -> ConfigServiceServer<ConfigService<A>> {
        ConfigServiceServer::new(self)
            .max_decoding_message_size(MAX_CLIENT_MESSAGE_BYTES)
            .max_encoding_message_size(usize::MAX)
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::ConfigUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl<A: SubscriberAuth> pb::config_service_server::ConfigService for ConfigService<A> {
    type SubscribeStream = UpdateStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let remote_addr = request.remote_addr();
        let (metadata, _, mut inbound) = request.into_parts();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no hello within {}s of opening the stream",
                    HELLO_TIMEOUT.as_secs()
                ))
            })??;
        let hello = match first.and_then(|m| m.message) {
            Some(Message::Hello(hello)) => hello,
            Some(Message::Ack(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of a subscription must be a hello, got an ack",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "the stream ended (or sent an empty message) before its hello",
                ));
            }
        };
        let hello = Hello::from_proto(&hello).map_err(|err| {
            Status::invalid_argument(format!("hello of proxy {:?}: {err}", hello.proxy_id))
        })?;
        let subscriber = Subscriber::new(&metadata, remote_addr, &hello);
        if let Err(status) = self.auth.authorize(&subscriber).await {
            tracing::warn!(scope = %hello.scope, proxy = %hello.proxy_id, ?remote_addr, %status, "config subscription refused");
            return Err(status);
        }
        let stream = self.hub.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        tracing::info!(scope = %hello.scope, proxy = %hello.proxy_id, ?remote_addr, last_version = ?hello.last_version, "proxy subscribed");
        let rx = self.hub.watch(&hello.scope);
        let (ended_tx, ended_rx) = oneshot::channel();
        let reader = tokio::spawn(read_acks(
            self.hub.clone(),
            stream,
            hello.clone(),
            inbound,
            ended_tx,
        ));
        let outbound = Outbound {
            rx: Some(rx),
            last_sent: hello.last_version,
            ended: ended_rx,
            closing: self.closing.clone(),
            done: false,
            reader,
            hub: self.hub.clone(),
            stream,
            hello,
        };
        Ok(Response::new(Box::pin(futures_util::stream::unfold(
            outbound,
            next_update,
        ))))
    }
}

/// The sending half of one subscription. Pulled by tonic only when the connection can take more,
/// so what it yields is always the latest snapshot.
struct Outbound {
    rx: Option<watch::Receiver<Option<Snapshot>>>,
    last_sent: Option<u64>,
    /// Fires when the client's half ends; carries a status if it broke the protocol.
    ended: oneshot::Receiver<Option<Status>>,
    closing: Option<watch::Receiver<bool>>,
    done: bool,
    reader: JoinHandle<()>,
    hub: ConfigHub,
    stream: u64,
    hello: Hello,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(rx) = self.rx.take() {
            self.hub.unsubscribe(self.stream, &self.hello, rx);
        }
        tracing::info!(scope = %self.hello.scope, proxy = %self.hello.proxy_id, last_sent = ?self.last_sent, "proxy unsubscribed");
    }
}

async fn next_update(mut out: Outbound) -> Option<(Result<pb::ConfigUpdate, Status>, Outbound)> {
    if out.done {
        return None;
    }
    loop {
        let rx = out.rx.as_mut()?;
        let snapshot = rx.borrow_and_update().clone();
        if let Some(snapshot) = snapshot
            && out.last_sent != Some(snapshot.version)
        {
            out.last_sent = Some(snapshot.version);
            tracing::debug!(scope = %out.hello.scope, proxy = %out.hello.proxy_id, version = snapshot.version, "sending config");
            let update = pb::ConfigUpdate {
                version: snapshot.version,
                payload_json: snapshot.payload,
            };
            return Some((Ok(update), out));
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            ended = &mut out.ended => {
                out.done = true;
                return match ended {
                    Ok(Some(status)) => Some((Err(status), out)),
                    _ => None,
                };
            }
            () = wait_closing(&mut out.closing) => {
                out.done = true;
                return Some((Err(Status::unavailable("config server is shutting down")), out));
            }
        }
    }
}

async fn wait_closing(closing: &mut Option<watch::Receiver<bool>>) {
    match closing {
        Some(rx) => {
            if rx.wait_for(|closing| *closing).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Records the client's acks until its half of the stream ends.
async fn read_acks(
    hub: ConfigHub,
    stream: u64,
    hello: Hello,
    mut inbound: Streaming<pb::ClientMessage>,
    ended: oneshot::Sender<Option<Status>>,
) {
    let verdict = loop {
        match inbound.message().await {
            Ok(Some(pb::ClientMessage {
                message: Some(Message::Ack(ack)),
            })) => {
                let result = if ack.ok {
                    Ok(())
                } else {
                    let mut error = ack.error;
                    truncate(&mut error, MAX_ACK_ERROR_BYTES);
                    tracing::warn!(scope = %hello.scope, proxy = %hello.proxy_id, version = ack.version, %error, "proxy rejected config");
                    Err(error)
                };
                if result.is_ok() {
                    tracing::debug!(scope = %hello.scope, proxy = %hello.proxy_id, version = ack.version, "proxy applied config");
                }
                hub.record_ack(
                    stream,
                    AckRecord {
                        scope: hello.scope.clone(),
                        proxy_id: hello.proxy_id.clone(),
                        version: ack.version,
                        result,
                    },
                );
            }
            Ok(Some(pb::ClientMessage {
                message: Some(Message::Hello(_)),
            })) => {
                break Some(Status::invalid_argument(format!(
                    "proxy {:?} sent a second hello on its {} subscription",
                    hello.proxy_id, hello.scope
                )));
            }
            Ok(Some(pb::ClientMessage { message: None })) => {
                break Some(Status::invalid_argument(format!(
                    "proxy {:?} sent an empty message on its {} subscription",
                    hello.proxy_id, hello.scope
                )));
            }
            Ok(None) => break None,
            Err(status) => {
                tracing::debug!(scope = %hello.scope, proxy = %hello.proxy_id, %status, "subscription stream broke");
                break None;
            }
        }
    };
    // The receiver is gone when the response stream already ended; nothing left to tell.
    let _ = ended.send(verdict);
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
}

/// Serves `hub` on `listener` to every subscriber until `shutdown` completes, then ends the
/// subscriptions (proxies reconnect elsewhere or later) and returns. Bind `listener` to an address
/// only trusted proxies reach, or use [`serve_with_auth`].
pub async fn serve(
    hub: ConfigHub,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), XdsError> {
    serve_with_auth(hub, AllowAll, listener, shutdown).await
}

/// [`serve`] for subscribers `auth` admits.
pub async fn serve_with_auth<A: SubscriberAuth>(
    hub: ConfigHub,
    auth: A,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), XdsError> {
    serve_with_auth_tls(hub, auth, listener, None, shutdown).await
}

/// [`serve_with_auth`] over TLS with the serving certificate `tls` (when given): subscribers
/// send bearer tokens and receive Gateway private keys, so across a network the stream must
/// be encrypted.
pub async fn serve_with_auth_tls<A: SubscriberAuth>(
    hub: ConfigHub,
    auth: A,
    listener: tokio::net::TcpListener,
    tls: Option<tonic::transport::Identity>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), XdsError> {
    let addr = listener
        .local_addr()
        .map_err(|source| XdsError::Listener { source })?;
    tracing::info!(%addr, tls = tls.is_some(), "serving config stream");
    let (closing_tx, closing_rx) = watch::channel(false);
    let service = ConfigService::new(hub, auth)
        .closing_on(closing_rx)
        .into_server();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = tls {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|source| XdsError::Serve { addr, source })?;
    }
    builder
        // Detect proxies that vanished without closing their connection.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            closing_tx.send_replace(true);
        })
        .await
        .map_err(|source| XdsError::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_assigns_versions_only_on_change() {
        let hub = ConfigHub::with_version_base(100);
        let scope = Scope::gateway("ns", "gw");
        assert_eq!(hub.publish(&scope, &b"a"[..]), 101);
        assert_eq!(hub.publish(&scope, &b"a"[..]), 101);
        assert_eq!(hub.publish(&Scope::node("n"), &b"a"[..]), 102);
        assert_eq!(hub.publish(&scope, &b"b"[..]), 103);
        assert_eq!(
            hub.current(&scope),
            Some(Snapshot {
                version: 103,
                payload: Bytes::from_static(b"b")
            })
        );
        assert!(hub.remove(&scope));
        assert!(!hub.remove(&scope));
        assert_eq!(hub.current(&scope), None);
        // Re-publishing the same bytes after a removal is a change.
        assert_eq!(hub.publish(&scope, &b"b"[..]), 104);
    }

    #[test]
    fn default_versions_grow_across_hubs() {
        let first = ConfigHub::new().publish(&Scope::node("n"), &b"x"[..]);
        let second = ConfigHub::new().publish(&Scope::node("n"), &b"x"[..]);
        assert!(first > 1_000_000, "time-based version base, got {first}");
        assert!(second >= first);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let mut text = "ééé".to_string();
        truncate(&mut text, 3);
        assert_eq!(text, "é…");
        let mut short = "ok".to_string();
        truncate(&mut short, 3);
        assert_eq!(short, "ok");
    }
}

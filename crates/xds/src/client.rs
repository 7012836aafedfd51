//! The proxy side: [`Subscription`] keeps a proxy subscribed to its scope, hands every snapshot to
//! the proxy's apply callback, and reports the verdict to the controller.
//!
//! A proxy that loses the controller keeps serving what it last applied (the callback is simply
//! not called) and resubscribes with jittered exponential backoff, announcing the version it has
//! so an unchanged config is not sent again.

use std::error::Error as _;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use strait_proto::config::v1 as pb;
use strait_proto::config::v1::client_message::Message;
use strait_proto::config::v1::config_service_client::ConfigServiceClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::{Hello, MAX_PAYLOAD_BYTES};

/// Longest rejection reason sent back to the controller.
const MAX_ACK_ERROR_BYTES: usize = 4 * 1024;
/// How long opening a stream (TCP, HTTP/2, the server's answer to the hello) may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream that stayed up this long counts as healthy: the next failure retries quickly again.
const HEALTHY_STREAM: Duration = Duration::from_secs(1);

/// Where the subscription stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionStatus {
    /// A stream to the controller is open (it accepted the hello).
    pub connected: bool,
    /// The last version the apply callback accepted.
    pub last_version: Option<u64>,
    /// The most recent failure (connection, stream or rejected version), kept for diagnostics
    /// until a newer failure replaces it.
    pub last_error: Option<String>,
}

/// How to reach the controller and retry; [`start`](Subscription::start) runs it.
#[derive(Clone, Debug)]
pub struct Subscription {
    endpoint: String,
    hello: Hello,
    min_backoff: Duration,
    max_backoff: Duration,
    connect_timeout: Duration,
    token_file: Option<PathBuf>,
    tls_root: Option<String>,
}

impl Subscription {
    /// A subscription of `hello.scope` at `endpoint` (e.g. `http://10.0.0.1:15012`), retrying
    /// after 100 ms, doubling up to 5 s.
    pub fn new(endpoint: impl Into<String>, hello: Hello) -> Subscription {
        Subscription {
            endpoint: endpoint.into(),
            hello,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            token_file: None,
            tls_root: None,
        }
    }

    /// Sends the token in `path` as `authorization: Bearer <token>` with every subscription, for
    /// the controller's [`SubscriberAuth`](crate::SubscriberAuth). The file is re-read on each
    /// reconnect, so a rotated (projected service-account) token is picked up.
    pub fn bearer_token_file(mut self, path: impl Into<PathBuf>) -> Subscription {
        self.token_file = Some(path.into());
        self
    }

    /// Verifies the controller's serving certificate against `root_pem` (for an `https://`
    /// endpoint): the subscription carries a bearer token and receives private keys, neither of
    /// which may cross the network in cleartext.
    pub fn tls_root(mut self, root_pem: impl Into<String>) -> Subscription {
        self.tls_root = Some(root_pem.into());
        self
    }

    /// Overrides the retry delays: the first retry waits about `min`, each further one twice as
    /// long, up to `max` (each delay is jittered down by up to half so proxies do not reconnect in
    /// lockstep after a controller restart).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Subscription {
        self.min_backoff = min.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.min_backoff);
        self
    }

    /// Overrides how long establishing the TCP connection may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Subscription {
        self.connect_timeout = timeout;
        self
    }

    /// Shorthand for `Subscription::new(endpoint, hello).start(apply)`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn<F, A>(endpoint: String, hello: Hello, apply: F) -> SubscriptionHandle
    where
        F: FnMut(u64, Bytes) -> A + Send + 'static,
        A: Future<Output = Result<(), String>> + Send + 'static,
    {
        Subscription::new(endpoint, hello).start(apply)
    }

    /// Subscribes in a background task until the handle is stopped or dropped. `apply` receives
    /// each new version and its payload (shared, not copied) and returns the future that
    /// applies it; `Err` rejects the version (the proxy keeps its previous config, the reason
    /// goes to the controller). The version is acked once that future is done, and the next one
    /// is not read before. It runs on the subscription task, so it should not block for long: a
    /// proxy on one CPU runs its data plane on the same thread.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn start<F, A>(self, apply: F) -> SubscriptionHandle
    where
        F: FnMut(u64, Bytes) -> A + Send + 'static,
        A: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (status_tx, status_rx) = watch::channel(SubscriptionStatus {
            last_version: self.hello.last_version,
            ..SubscriptionStatus::default()
        });
        let task = tokio::spawn(self.run(apply, status_tx));
        SubscriptionHandle {
            status: status_rx,
            task,
        }
    }

    async fn run<F, A>(self, mut apply: F, status: watch::Sender<SubscriptionStatus>)
    where
        F: FnMut(u64, Bytes) -> A + Send + 'static,
        A: Future<Output = Result<(), String>> + Send + 'static,
    {
        let endpoint = match Endpoint::from_shared(self.endpoint.clone()) {
            Ok(endpoint) => endpoint,
            Err(err) => {
                let error = format!("config endpoint {:?}: {err}", self.endpoint);
                tracing::error!(scope = %self.hello.scope, %error, "cannot subscribe");
                status.send_modify(|s| s.last_error = Some(error));
                return;
            }
        };
        let endpoint = match &self.tls_root {
            None => endpoint,
            Some(root) => {
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(root));
                match endpoint.tls_config(tls) {
                    Ok(endpoint) => endpoint,
                    Err(err) => {
                        let error = format!("config endpoint {:?}: TLS: {err}", self.endpoint);
                        tracing::error!(scope = %self.hello.scope, %error, "cannot subscribe");
                        status.send_modify(|s| s.last_error = Some(error));
                        return;
                    }
                }
            }
        };
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let mut session = Session {
            channel,
            token_file: self.token_file.as_deref(),
            hello: self.hello.clone(),
            endpoint: &self.endpoint,
            status: &status,
        };
        let mut delay = self.min_backoff;
        loop {
            let started = Instant::now();
            let (error, applied_any) = session.run(&mut apply).await;
            let healthy = applied_any || started.elapsed() >= HEALTHY_STREAM;
            if healthy {
                delay = self.min_backoff;
            }
            let wait = jitter(delay);
            tracing::warn!(scope = %self.hello.scope, endpoint = %self.endpoint, %error, retry_in = ?wait, "config subscription interrupted");
            status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(error);
            });
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(self.max_backoff);
        }
    }
}

/// A delay between `base / 2` and `base`.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// One stream to the controller.
struct Session<'a> {
    channel: Channel,
    token_file: Option<&'a std::path::Path>,
    /// `last_version` tracks what the proxy applied, for the next hello.
    hello: Hello,
    endpoint: &'a str,
    status: &'a watch::Sender<SubscriptionStatus>,
}

impl Session<'_> {
    /// Runs one stream until it fails; returns why, and whether anything arrived.
    async fn run<F, A>(&mut self, apply: &mut F) -> (String, bool)
    where
        F: FnMut(u64, Bytes) -> A,
        A: Future<Output = Result<(), String>>,
    {
        let mut received = false;
        let error = self.stream(apply, &mut received).await;
        (error, received)
    }

    async fn stream<F, A>(&mut self, apply: &mut F, received: &mut bool) -> String
    where
        F: FnMut(u64, Bytes) -> A,
        A: Future<Output = Result<(), String>>,
    {
        let scope = &self.hello.scope;
        let (tx, mut rx) = mpsc::channel::<pb::ClientMessage>(8);
        let hello = pb::ClientMessage {
            message: Some(Message::Hello(self.hello.to_proto())),
        };
        if tx.send(hello).await.is_err() {
            return "internal: subscription request stream closed before the hello".into();
        }
        let mut request =
            tonic::Request::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        if let Some(path) = self.token_file {
            let token = match tokio::fs::read_to_string(path).await {
                Ok(token) => token,
                Err(err) => return format!("token file {}: {err}", path.display()),
            };
            match format!("Bearer {}", token.trim()).parse() {
                Ok(value) => {
                    request.metadata_mut().insert("authorization", value);
                }
                Err(_) => {
                    return format!("token file {}: not a valid header value", path.display());
                }
            }
        }
        let mut client = ConfigServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_PAYLOAD_BYTES);
        let response =
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, client.subscribe(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(status)) => {
                    return format!(
                        "subscribing to {scope} at {}: {}",
                        self.endpoint,
                        describe(&status)
                    );
                }
                Err(_) => {
                    return format!(
                        "subscribing to {scope} at {}: no answer within {}s",
                        self.endpoint,
                        SUBSCRIBE_TIMEOUT.as_secs()
                    );
                }
            };
        tracing::info!(%scope, endpoint = %self.endpoint, last_version = ?self.hello.last_version, "subscribed to config");
        self.status.send_modify(|s| s.connected = true);
        let mut updates = response.into_inner();
        loop {
            let update = match updates.message().await {
                Ok(Some(update)) => update,
                Ok(None) => {
                    return format!(
                        "config stream of {scope} from {} ended by the server",
                        self.endpoint
                    );
                }
                Err(status) => {
                    return format!(
                        "config stream of {scope} from {}: {}",
                        self.endpoint,
                        describe(&status)
                    );
                }
            };
            *received = true;
            let version = update.version;
            let result = if self.hello.last_version == Some(version) {
                Ok(())
            } else {
                apply(version, update.payload_json.clone()).await
            };
            let ack = match result {
                Ok(()) => {
                    tracing::debug!(%scope, version, bytes = update.payload_json.len(), "applied config");
                    self.hello.last_version = Some(version);
                    self.status.send_modify(|s| s.last_version = Some(version));
                    pb::Ack {
                        version,
                        ok: true,
                        error: String::new(),
                    }
                }
                Err(mut error) => {
                    tracing::warn!(%scope, version, %error, "rejected config; keeping the previous one");
                    self.status.send_modify(|s| {
                        s.last_error = Some(format!("{scope} version {version} rejected: {error}"));
                    });
                    truncate(&mut error, MAX_ACK_ERROR_BYTES);
                    pb::Ack {
                        version,
                        ok: false,
                        error,
                    }
                }
            };
            let ack = pb::ClientMessage {
                message: Some(Message::Ack(ack)),
            };
            if tx.send(ack).await.is_err() {
                return format!(
                    "config stream of {scope} from {}: request stream closed",
                    self.endpoint
                );
            }
        }
    }
}

/// A status with its underlying causes (tonic hides connection errors behind "transport error").
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
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

/// Controls a running [`Subscription`]; dropping it stops the subscription.
#[derive(Debug)]
pub struct SubscriptionHandle {
    status: watch::Receiver<SubscriptionStatus>,
    task: JoinHandle<()>,
}

impl SubscriptionHandle {
    /// The current status.
    pub fn status(&self) -> SubscriptionStatus {
        self.status.borrow().clone()
    }

    /// A receiver notified on every status change (connect, disconnect, applied or rejected
    /// version), e.g. to drive a readiness probe.
    pub fn watch_status(&self) -> watch::Receiver<SubscriptionStatus> {
        self.status.clone()
    }

    /// Stops the subscription and waits until its task (and the apply callback) is gone.
    pub async fn stop(mut self) {
        self.task.abort();
        // The task ends by cancellation; its result carries nothing more.
        let _ = (&mut self.task).await;
    }
}

impl Drop for SubscriptionHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_full_delay() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(200));
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        }
    }

    #[test]
    fn backoff_bounds_are_sane() {
        let hello = Hello::new(crate::Scope::node("n"), "p");
        let sub = Subscription::new("http://127.0.0.1:1", hello)
            .backoff(Duration::from_secs(2), Duration::from_millis(10));
        assert_eq!(sub.min_backoff, Duration::from_secs(2));
        assert_eq!(sub.max_backoff, Duration::from_secs(2));
    }
}

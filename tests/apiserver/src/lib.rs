//! An in-process Kubernetes API server for controller tests.
//!
//! There is no cluster on the test machines, so the controller's Kubernetes side runs
//! against this server. It speaks the real REST protocol over plain HTTP/1.1 — list,
//! watch (with resourceVersion semantics, bookmarks, 410 Gone after compaction),
//! create/replace with optimistic concurrency, the `/status` subresource, the four
//! patch types, deletion with finalizers and background garbage collection, and
//! `Status` error bodies — so a stock `kube::Client` cannot tell it from a real one
//! for everything a controller does.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = strait_test_apiserver::TestApiServer::start().await?;
//! let client = server.kube_client()?;
//! server.create(serde_json::json!({
//!     "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}
//! }))?;
//! # drop(client);
//! # Ok(()) }
//! ```

mod error;
mod http;
mod registry;
mod selector;
mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::ApiError;
pub use hyper::Method;
pub use registry::{Registry, ResourceKind, split_api_version};
pub use selector::{FieldSelector, LabelSelector};
pub use store::{EventType, StoreConfig, Subresource};

use store::{Filter, Store};

/// The identity a TokenReview reports for an accepted token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenIdentity {
    /// `system:serviceaccount:NS:SA` for service account tokens.
    pub username: String,
    /// The service account's uid, when known.
    pub uid: Option<String>,
    /// Groups the user belongs to.
    pub groups: Vec<String>,
    /// `status.user.extra` (pod name/uid for projected tokens).
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl TokenIdentity {
    /// The identity the real server reports for a projected service account token,
    /// optionally bound to a pod (`authentication.kubernetes.io/pod-name` / `pod-uid`).
    pub fn service_account(namespace: &str, name: &str, pod: Option<(&str, &str)>) -> Self {
        let mut extra = std::collections::BTreeMap::new();
        if let Some((pod_name, pod_uid)) = pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_string(),
                vec![pod_name.to_string()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".to_string(),
                vec![pod_uid.to_string()],
            );
        }
        Self {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            uid: None,
            groups: vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_string(),
            ],
            extra,
        }
    }
}

/// Decides TokenReviews: token → identity, or `None` to reject.
pub type TokenReviewHandler = dyn Fn(&str) -> Option<TokenIdentity> + Send + Sync;

/// Sees every request before it is served (method and path); see
/// [`TestApiServer::set_request_hook`].
pub type RequestHook = dyn Fn(&Method, &str) + Send + Sync;

pub(crate) struct Shared {
    store: Mutex<Store>,
    changed: watch::Sender<u64>,
    tokenreview: RwLock<Option<Arc<TokenReviewHandler>>>,
    request_hook: RwLock<Option<Arc<RequestHook>>>,
    bookmark_interval: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the store consistent (every write
        // finishes before it mutates), so a poisoned lock is still usable.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a store operation and wakes watchers if it wrote anything.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.lock();
        let before = store.current_rv();
        let out = f(&mut store);
        let after = store.current_rv();
        drop(store);
        if after != before {
            self.changed.send_replace(after);
        }
        out
    }

    fn kind_of(&self, api_version: &str, kind: &str) -> Result<ResourceKind, ApiError> {
        self.lock()
            .registry
            .by_kind(api_version, kind)
            .cloned()
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no kind {kind:?} is registered for version {api_version:?}"
                ))
            })
    }
}

/// Configures a [`TestApiServer`] before starting it.
#[derive(Debug, Clone)]
pub struct Builder {
    registry: Registry,
    config: StoreConfig,
    bookmark_interval: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            registry: Registry::standard(),
            config: StoreConfig::default(),
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

impl Builder {
    /// Serves an additional resource type (e.g. a project CRD).
    pub fn register(mut self, kind: ResourceKind) -> Self {
        self.registry.register(kind);
        self
    }

    /// Size of the watch event history; watches from older resourceVersions get 410.
    pub fn history_size(mut self, events: usize) -> Self {
        self.config.history_size = events.max(1);
        self
    }

    /// How often watches with `allowWatchBookmarks=true` receive a BOOKMARK (the real
    /// server uses about a minute; tests want it short).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// Range for Service cluster IPs (default 198.19.0.0/16, the test topology's VIP range).
    pub fn service_cidr(mut self, base: std::net::Ipv4Addr, prefix: u8) -> Self {
        self.config.service_cidr = (base, prefix.clamp(8, 30));
        self
    }

    /// Binds 127.0.0.1 on an ephemeral port and starts serving on the current tokio runtime.
    pub async fn start(self) -> std::io::Result<TestApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let store = Store::new(self.registry, self.config);
        let (changed, _) = watch::channel(store.current_rv());
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            changed,
            tokenreview: RwLock::new(None),
            request_hook: RwLock::new(None),
            bookmark_interval: self.bookmark_interval,
            shutdown: shutdown_rx,
        });
        let accept = tokio::spawn(http::serve(listener, shared.clone()));
        Ok(TestApiServer {
            handle: ApiHandle { shared },
            addr,
            shutdown: shutdown_tx,
            accept,
        })
    }
}

/// A running in-process API server; stops (closing every connection and watch) on drop.
pub struct TestApiServer {
    handle: ApiHandle,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl TestApiServer {
    /// Starts a server with the standard kinds and defaults.
    pub async fn start() -> std::io::Result<Self> {
        Builder::default().start().await
    }

    /// A builder for non-default kinds, history size or bookmark interval.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `kube::Config` pointing at this server (no auth, default namespace `default`).
    pub fn kube_config(&self) -> kube::Config {
        let uri = hyper::Uri::try_from(self.url())
            .unwrap_or_else(|_| hyper::Uri::from_static("http://127.0.0.1"));
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".to_string();
        config
    }

    /// A `kube::Client` for this server.
    pub fn kube_client(&self) -> Result<kube::Client, kube::Error> {
        kube::Client::try_from(self.kube_config())
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().current_rv()
    }

    /// Forgets the watch event history, as an etcd compaction does, and ends every
    /// open watch with a 410 `Expired` ERROR event (as when a watch falls behind the
    /// compaction): watches resuming from an older resourceVersion must relist.
    pub fn compact(&self) {
        let rv = {
            let mut store = self.shared.lock();
            store.compact();
            store.current_rv()
        };
        self.shared.changed.send_replace(rv);
    }

    /// A cloneable handle on the object operations (for request hooks).
    pub fn handle(&self) -> ApiHandle {
        self.handle.clone()
    }

    /// Calls `hook` with every request's method and path before serving it, outside the
    /// store lock, so it may itself read or write objects through an [`ApiHandle`]: how tests
    /// make a concurrent writer win a race deterministically (e.g. bump an object between the
    /// controller's read and its patch, so the patch gets a genuine 409).
    pub fn set_request_hook(&self, hook: impl Fn(&Method, &str) + Send + Sync + 'static) {
        let mut slot = self
            .shared
            .request_hook
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *slot = Some(Arc::new(hook));
    }

    /// Sets who answers `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn set_tokenreview_handler(
        &self,
        handler: impl Fn(&str) -> Option<TokenIdentity> + Send + Sync + 'static,
    ) {
        let mut slot = self
            .shared
            .tokenreview
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *slot = Some(Arc::new(handler));
    }
}

/// The object operations of a [`TestApiServer`], cloneable so a request hook can act on the
/// store (e.g. play a concurrent writer) while a request is in flight.
#[derive(Clone)]
pub struct ApiHandle {
    shared: Arc<Shared>,
}

impl ApiHandle {
    /// Creates an object (its `apiVersion`/`kind` pick the resource), with the same
    /// semantics as `POST`: `.status` is dropped for kinds with a status subresource.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let (kind, ns, _) = self.locate(&obj)?;
        self.shared.write(|s| s.create(&kind, ns.as_deref(), obj))
    }

    /// Reads one object.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let kind = self.shared.kind_of(api_version, kind)?;
        self.shared.lock().get(&kind, namespace, name)
    }

    /// Replaces an object like `PUT` (honours `metadata.resourceVersion` if set).
    pub fn update(&self, obj: Value) -> Result<Value, ApiError> {
        let (kind, ns, name) = self.locate(&obj)?;
        self.shared
            .write(|s| s.update(&kind, ns.as_deref(), &name, obj, Subresource::Main))
    }

    /// Replaces only `.status`, like `PUT .../status`.
    pub fn update_status(&self, obj: Value) -> Result<Value, ApiError> {
        let (kind, ns, name) = self.locate(&obj)?;
        self.shared
            .write(|s| s.update(&kind, ns.as_deref(), &name, obj, Subresource::Status))
    }

    /// Deletes an object; returns it (with `deletionTimestamp` set if finalizers hold it).
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let kind = self.shared.kind_of(api_version, kind)?;
        self.shared
            .write(|s| s.delete(&kind, namespace, name, &Value::Null))
            .map(|(_, obj)| obj)
    }

    /// Lists objects of a kind, in one namespace or (with `None`) all of them.
    pub fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<Value>, ApiError> {
        let kind = self.shared.kind_of(api_version, kind)?;
        let filter = Filter {
            kind,
            namespace: namespace.map(String::from),
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
        };
        Ok(self.shared.lock().snapshot(&filter))
    }

    fn locate(&self, obj: &Value) -> Result<(ResourceKind, Option<String>, String), ApiError> {
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind_name = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let kind = self.shared.kind_of(api_version, kind_name)?;
        let ns = store::meta_str(obj, "namespace");
        let ns = if kind.namespaced {
            Some(if ns.is_empty() {
                "default".to_string()
            } else {
                ns
            })
        } else {
            None
        };
        Ok((kind, ns, store::meta_str(obj, "name")))
    }
}

impl std::ops::Deref for TestApiServer {
    type Target = ApiHandle;

    fn deref(&self) -> &ApiHandle {
        &self.handle
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.accept.abort();
    }
}

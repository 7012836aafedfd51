//! `strait standalone DIR`: the controller's logic and the gateway proxy in one process, fed from
//! YAML files instead of an API server.
//!
//! Every reload runs the same pipeline a cluster would: load → stamp (generation, creation time)
//! → compile → swap the proxy config atomically. In-flight requests finish on the config they
//! started with; open connections are kept.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use strait_compile::{CONTROLLER_NAME, CompileInput, ObjectStatus, StatusJson, compile};
use strait_config::ProxyConfig;
use strait_config::mesh::MeshConfig;
use strait_controller::publish::Publisher;
use strait_model::{Snapshot, load_paths, yaml_files};
use strait_proxy::{Proxy, ProxyOptions};
use tokio::sync::Mutex;

use crate::addresses::{AddressAllocator, AddressMode};
use crate::aside::run_aside;
use crate::mesh::{MeshOptions, MeshRuntime};
use crate::stoppable::spawn_until_stopped;
use crate::store::ObjectStore;
use strait_compile::status_merge::keep_transition_times;

/// How to run standalone.
#[derive(Clone, Debug)]
pub struct StandaloneOptions {
    /// Directory of YAML manifests (read recursively).
    pub dir: PathBuf,
    /// Listener port P is served on local port P + `port_offset`.
    pub port_offset: u16,
    /// Reload when files under `dir` change.
    pub watch: bool,
    /// Serve the ingress Gateways (off for `strait node` / `strait waypoint`).
    pub gateways: bool,
    /// Mesh components to run; `None` runs none.
    pub mesh: Option<MeshOptions>,
    /// Also serve every compiled config over the gRPC config stream here, scoped as the
    /// controller scopes it, so that `strait gateway`, `waypoint` and `node` with
    /// `--control-plane` run as deployed, fed from YAML files instead of a cluster. Loopback
    /// addresses only: the stream is unauthenticated and carries Gateways' private keys.
    pub config_listen: Option<SocketAddr>,
}

impl StandaloneOptions {
    /// Gateways only, no mesh components: what ingress tests want.
    pub fn gateways_only(dir: PathBuf, port_offset: u16, watch: bool) -> StandaloneOptions {
        StandaloneOptions {
            dir,
            port_offset,
            watch,
            gateways: true,
            mesh: None,
            config_listen: None,
        }
    }
}

/// A running standalone instance.
pub struct Standalone {
    inner: Arc<Inner>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

struct Inner {
    dir: PathBuf,
    proxy: Proxy,
    gateways: bool,
    mesh: Option<MeshRuntime>,
    config_stream: Option<ConfigStream>,
    /// Reloads run one at a time; this also owns the state that carries across reloads.
    reloader: Mutex<Reloader>,
    published: ArcSwap<Published>,
}

/// What the last reload produced, readable without taking the reload lock.
#[derive(Default)]
struct Published {
    snapshot: Snapshot,
    statuses: BTreeMap<(String, String, String), ObjectStatus>,
    config: Arc<ProxyConfig>,
    mesh: Arc<MeshConfig>,
    load_errors: Vec<String>,
}

struct Reloader {
    store: ObjectStore,
    addresses: AddressAllocator,
    version: u64,
    mesh_version: u64,
    /// Each file's objects as of its last load without errors.
    last_good: HashMap<PathBuf, Snapshot>,
}

impl Reloader {
    /// Loads every file under `dir`. A file with a bad document keeps serving the objects of its
    /// last good version that it no longer yields, as `kubectl apply` of a broken manifest
    /// leaves the existing objects alone: a half-saved edit never deletes anything. Removing the
    /// file removes its objects.
    fn load(&mut self, dir: &Path) -> (Snapshot, Vec<String>) {
        let (files, listing) = yaml_files(dir);
        let mut errors: Vec<String> = listing.errors.iter().map(ToString::to_string).collect();
        self.last_good.retain(|file, _| files.contains(file));
        let mut snapshot = Snapshot::default();
        for file in files {
            let report = load_paths(std::slice::from_ref(&file));
            let mut objects = report.snapshot;
            if report.errors.is_empty() {
                self.last_good.insert(file.clone(), objects.clone());
            } else {
                errors.extend(report.errors.iter().map(ToString::to_string));
                if let Some(previous) = self.last_good.get(&file) {
                    let kept = previous.clone();
                    // Objects still loading from the file win over their previous versions.
                    let _ = objects.absorb(kept);
                }
            }
            for clash in snapshot.absorb(objects) {
                let first = snapshot
                    .sources
                    .get(&clash)
                    .map_or_else(String::new, ToString::to_string);
                errors.push(format!(
                    "{}: {clash}: duplicate of the object at {first}",
                    file.display()
                ));
            }
        }
        (snapshot, errors)
    }
}

impl Standalone {
    /// Loads the directory, starts serving, and (with `watch`) follows file changes.
    pub async fn start(options: StandaloneOptions) -> anyhow::Result<Standalone> {
        Self::start_with(options, AddressMode::PerGateway).await
    }

    /// As [`Standalone::start`], choosing how Gateway addresses are assigned.
    pub async fn start_with(
        options: StandaloneOptions,
        address_mode: AddressMode,
    ) -> anyhow::Result<Standalone> {
        anyhow::ensure!(
            options.dir.is_dir(),
            "{}: not a directory",
            options.dir.display()
        );
        // First: a refused address then leaves nothing started to undo.
        let config_stream = match options.config_listen {
            Some(listen) => Some(ConfigStream::start(listen).await?),
            None => None,
        };
        let mesh = match options.mesh.clone() {
            Some(mesh_options) => Some(MeshRuntime::start(mesh_options).await?),
            None => None,
        };
        let inner = Arc::new(Inner {
            dir: options.dir.clone(),
            proxy: Proxy::new(ProxyOptions {
                port_offset: options.port_offset,
            }),
            gateways: options.gateways,
            mesh,
            config_stream,
            reloader: Mutex::new(Reloader {
                store: ObjectStore::default(),
                addresses: AddressAllocator::new(address_mode),
                version: 0,
                mesh_version: 0,
                last_good: HashMap::new(),
            }),
            published: ArcSwap::from_pointee(Published::default()),
        });
        // Nothing is served yet, so the first load has nothing to stall: it runs here.
        inner.reload_here().await?;
        let watcher = if options.watch {
            Some(spawn_watcher(inner.clone())?)
        } else {
            None
        };
        Ok(Standalone { inner, watcher })
    }

    /// Re-reads the directory now and applies it; returns when the new config is serving.
    pub async fn reload(&self) -> anyhow::Result<()> {
        self.inner.reload().await
    }

    /// Current status of every object Strait writes status for.
    pub fn statuses(&self) -> Vec<ObjectStatus> {
        self.inner
            .published
            .load()
            .statuses
            .values()
            .cloned()
            .collect()
    }

    /// The stored object as the API server would return it, with its current status.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let published = self.inner.published.load();
        let mut object = find_object(&published.snapshot, kind, namespace, name)?;
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        if let (Some(status), Some(map)) = (published.statuses.get(&key), object.as_object_mut()) {
            match status.status.value() {
                Ok(value) => {
                    map.insert("status".into(), value);
                }
                Err(e) => {
                    tracing::error!(kind, namespace, name, error = %e, "computed status unreadable")
                }
            }
        }
        Some(object)
    }

    /// The config the proxy is serving.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.inner.published.load().config.clone()
    }

    /// The mesh config the node proxy and waypoints are serving.
    pub fn mesh_config(&self) -> Arc<MeshConfig> {
        self.inner.published.load().mesh.clone()
    }

    /// The address the config stream is served on, when it is.
    pub fn config_stream_addr(&self) -> Option<SocketAddr> {
        self.inner.config_stream.as_ref().map(|stream| stream.addr)
    }

    /// The address the workload CA serves gRPC on, when it does.
    pub fn ca_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.mesh.as_ref().and_then(MeshRuntime::ca_addr)
    }

    /// Documents of the last reload that could not be loaded.
    pub fn load_errors(&self) -> Vec<String> {
        self.inner.published.load().load_errors.clone()
    }

    /// Stops watching and serving; open connections get a short grace period.
    pub async fn shutdown(self) {
        self.stop(Duration::from_secs(5), true).await;
    }

    /// Stops as a crashed or restarted process would look to the pods: listeners close, the
    /// capture rules stay (so pods fail closed until a new process takes over).
    pub async fn stop_keeping_rules(self) {
        self.stop(Duration::from_secs(1), false).await;
    }

    /// Stops watching, the config stream and the proxies (open connections get `grace`); the
    /// mesh's capture rules are removed when `remove_rules` is set.
    async fn stop(self, grace: Duration, remove_rules: bool) {
        if let Some(watcher) = self.watcher {
            watcher.abort();
        }
        if let Some(stream) = &self.inner.config_stream {
            stream.stop();
        }
        self.inner.proxy.shutdown(grace).await;
        if let Some(mesh) = &self.inner.mesh {
            mesh.shutdown(remove_rules).await;
        }
    }
}

impl Inner {
    /// Reloads beside the data plane ([`crate::aside`]): at 10,000 routes the compile alone
    /// takes over 100 ms, which on a proxy with one CPU would stall every connection it serves.
    /// (Only for reloads: the first load, before anything is served, runs in place.)
    async fn reload(self: &Arc<Self>) -> anyhow::Result<()> {
        let inner = self.clone();
        run_aside("reload", move || async move { inner.reload_here().await })
            .await
            .map_err(anyhow::Error::msg)?
    }

    /// Load → stamp → compile → apply, on the calling thread.
    async fn reload_here(&self) -> anyhow::Result<()> {
        let mut reloader = self.reloader.lock().await;
        let (mut snapshot, load_errors) = reloader.load(&self.dir);
        for error in &load_errors {
            tracing::warn!("{error}");
        }
        let now = Timestamp::now();
        reloader.store.stamp(&mut snapshot, now);
        let gateway_addresses = reloader.addresses.assign(&snapshot.gateways);
        let now_text = now.to_string();
        let output = compile(&CompileInput {
            snapshot: &snapshot,
            controller_name: CONTROLLER_NAME,
            gateway_addresses: &gateway_addresses,
            now: &now_text,
        });
        if let Some(stream) = &self.config_stream {
            stream.publish(&output);
        }

        let previous = self.published.load_full();
        let mut statuses = BTreeMap::new();
        for mut status in output.statuses {
            let key = (
                status.kind.clone(),
                status.namespace.clone(),
                status.name.clone(),
            );
            if let Some(old) = previous.statuses.get(&key) {
                if old.status.fingerprint() == status.status.fingerprint() {
                    // Nothing but transition times differs: every condition keeps its old one.
                    status.status = old.status.clone();
                } else if let (Ok(old), Ok(mut new)) = (old.status.value(), status.status.value()) {
                    keep_transition_times(&old, &mut new);
                    status.status = StatusJson::new(&new);
                }
            }
            statuses.insert(key, status);
        }

        let mesh = self
            .apply_mesh(&mut reloader, output.mesh, &previous.mesh)
            .await;
        let mut config = output.config;
        if !self.gateways {
            config.gateways.clear();
        }
        let unchanged = {
            let mut old = (*previous.config).clone();
            old.version = 0;
            config.version = 0;
            old == config && reloader.version > 0
        };
        let config = if unchanged {
            previous.config.clone()
        } else {
            reloader.version += 1;
            config.version = reloader.version;
            let config = Arc::new(config);
            for error in self.proxy.apply(config.clone()).await {
                tracing::error!("{error}");
            }
            tracing::info!(
                version = config.version,
                gateways = config.gateways.len(),
                "config applied"
            );
            config
        };
        self.published.store(Arc::new(Published {
            snapshot,
            statuses,
            config,
            mesh,
            load_errors,
        }));
        Ok(())
    }
}

impl Inner {
    /// Versions and applies the mesh config when it changed.
    async fn apply_mesh(
        &self,
        reloader: &mut Reloader,
        mut mesh: MeshConfig,
        previous: &Arc<MeshConfig>,
    ) -> Arc<MeshConfig> {
        mesh.version = previous.version;
        if reloader.mesh_version > 0 && mesh == **previous {
            return previous.clone();
        }
        reloader.mesh_version += 1;
        mesh.version = reloader.mesh_version;
        let mesh = Arc::new(mesh);
        if let Some(runtime) = &self.mesh {
            for error in runtime.apply(mesh.clone()).await {
                tracing::error!("{error}");
            }
            tracing::info!(
                version = mesh.version,
                workloads = mesh.workloads.len(),
                services = mesh.services.len(),
                waypoints = mesh.waypoints.len(),
                "mesh config applied"
            );
        }
        mesh
    }
}

/// The controller's config stream, served from this process's compiles. Dropped, it stops
/// serving (see [`spawn_until_stopped`]).
struct ConfigStream {
    addr: SocketAddr,
    /// Publishing is synchronous and reloads run one at a time: the lock is never contended.
    publisher: std::sync::Mutex<Publisher>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl ConfigStream {
    async fn start(listen: SocketAddr) -> anyhow::Result<ConfigStream> {
        anyhow::ensure!(
            listen.ip().is_loopback(),
            "config stream: {listen} is not a loopback address (the stream is unauthenticated \
             and carries Gateways' private keys)"
        );
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("config stream: cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let hub = strait_xds::server::ConfigHub::new();
        let serving = hub.clone();
        let stop = spawn_until_stopped("config stream server", |shutdown| {
            strait_xds::server::serve(serving, listener, shutdown)
        });
        tracing::info!(%addr, "serving the config stream");
        Ok(ConfigStream {
            addr,
            publisher: std::sync::Mutex::new(Publisher::new(hub)),
            stop,
        })
    }

    fn publish(&self, output: &strait_compile::CompileOutput) {
        // A panic while publishing poisons the lock; the publisher's state (which scopes it
        // published) is still sound, so later reloads go on publishing.
        let mut publisher = self
            .publisher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        publisher.publish(output);
    }

    /// Ends the subscriptions (proxies keep their configs and reconnect) and the server.
    fn stop(&self) {
        self.stop.send_replace(true);
    }
}

/// Follows changes under the directory; bursts of events (an editor's save, a `cp -r`) are
/// coalesced into one reload.
fn spawn_watcher(inner: Arc<Inner>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use notify::Watcher as _;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .context("starting the file watcher")?;
    watcher
        .watch(&inner.dir, notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", inner.dir.display()))?;
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped: keep it in this task.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            if let Err(error) = inner.reload().await {
                tracing::error!("reload failed: {error:#}");
            }
        }
    }))
}

fn find_object(snapshot: &Snapshot, kind: &str, namespace: &str, name: &str) -> Option<Value> {
    fn find<T: kube::Resource + serde::Serialize>(
        list: &[Arc<T>],
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        list.iter()
            .find(|o| {
                o.meta().name.as_deref() == Some(name)
                    && o.meta().namespace.as_deref().unwrap_or("") == namespace
            })
            .and_then(|o| serde_json::to_value(&**o).ok())
    }
    match kind {
        "GatewayClass" => find(&snapshot.gateway_classes, namespace, name),
        "Gateway" => find(&snapshot.gateways, namespace, name),
        "HTTPRoute" => find(&snapshot.http_routes, namespace, name),
        "GRPCRoute" => find(&snapshot.grpc_routes, namespace, name),
        "TCPRoute" => find(&snapshot.tcp_routes, namespace, name),
        "TLSRoute" => find(&snapshot.tls_routes, namespace, name),
        "ReferenceGrant" => find(&snapshot.reference_grants, namespace, name),
        "ListenerSet" => find(&snapshot.listener_sets, namespace, name),
        "BackendTLSPolicy" => find(&snapshot.backend_tls_policies, namespace, name),
        "Service" => find(&snapshot.services, namespace, name),
        "EndpointSlice" => find(&snapshot.endpoint_slices, namespace, name),
        "Namespace" => find(&snapshot.namespaces, namespace, name),
        "Secret" => find(&snapshot.secrets, namespace, name),
        "ConfigMap" => find(&snapshot.config_maps, namespace, name),
        "Pod" => find(&snapshot.pods, namespace, name),
        _ => None,
    }
}

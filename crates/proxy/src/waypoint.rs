//! The per-namespace waypoint: HBONE in, the ingress route engine, HBONE out.
//!
//! The `:authority` of each tunnel is the Service VIP and port the client dialled, which picks
//! the Service port. HTTP ports run the same request pipeline as ingress Gateways, over the
//! routes whose parentRef is that Service: consumer routes for callers whose certificate names
//! their namespace, else producer routes, else (no route attached) straight to the Service's
//! endpoints. Endpoints are chosen per request, so one client connection spreads over all of
//! them. TCP ports pick an endpoint per connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use http::StatusCode;
use strait_config::mesh::{MeshConfig, WaypointPort};
use strait_config::{
    BackendTarget, ClusterKey, HttpMatch, HttpRoute, HttpRule, ListenerConfig, ListenerProtocol,
    ObjectRef, PathMatch, PortConfig, RouteRef, Timeouts, WeightedBackend,
};
use strait_identity::{Certificates, SpiffeId, WorkloadCertificate};
use strait_netns::NetNs;
use strait_route::RouteTable;
use tokio::sync::watch;

use crate::dial::{Dialer, TcpDialer, dial_within};
use crate::handler::{ConnInfo, PortState};
use crate::hbone::{self, HboneClient, ServerIdentity, TunnelHandler, TunnelRequest, TunnelTask};
use crate::mesh::{MeshDialer, MeshView};
use crate::server::{ListenerShared, serve_http};
use crate::upstream::{Clusters, Runtime};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a waypoint could not start or apply a config.
#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    #[error("waypoint {gateway}: cannot listen on {addr}: {source}")]
    Bind {
        gateway: ObjectRef,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("waypoint {gateway}: Service {service} port {port}: route table: {source}")]
    Routes {
        gateway: ObjectRef,
        service: ObjectRef,
        port: u16,
        #[source]
        source: strait_route::BuildError,
    },
    #[error("waypoint {gateway}: identity: {source}")]
    Identity {
        gateway: ObjectRef,
        #[source]
        source: strait_identity::SpiffeIdError,
    },
}

/// How a waypoint runs.
pub struct WaypointOptions {
    /// The waypoint Gateway (`namespace/name`).
    pub gateway: ObjectRef,
    /// The service account its pods run as (its HBONE identity).
    pub service_account: String,
    /// Usually `0.0.0.0:15008`.
    pub listen: SocketAddr,
    /// Bind and dial inside this network namespace (standalone runs each waypoint in its
    /// pod's namespace); `None` = the process's own.
    pub netns: Option<NetNs>,
    pub certs: Arc<Certificates>,
}

/// A Service port as the waypoint serves it.
struct ServicePort {
    protocol_http: bool,
    cluster: ClusterKey,
    producer: Arc<ListenerShared>,
    consumers: HashMap<String, Arc<ListenerShared>>,
}

impl ServicePort {
    fn shared_for(&self, caller_namespace: Option<&str>) -> Arc<ListenerShared> {
        caller_namespace
            .and_then(|ns| self.consumers.get(ns))
            .unwrap_or(&self.producer)
            .clone()
    }
}

/// Everything one config version gives the waypoint.
#[derive(Default)]
struct State {
    ports: HashMap<(IpAddr, u16), Arc<ServicePort>>,
    clusters: Arc<Clusters>,
}

/// Which route table a [`ListenerShared`] runs, to keep it across config versions (so open
/// connections see new routes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TableKey {
    service: ObjectRef,
    port: u16,
    consumer: Option<String>,
}

struct Inner {
    gateway: ObjectRef,
    identity: SpiffeId,
    certs: Arc<Certificates>,
    view: MeshView,
    rt: Arc<Runtime>,
    state: ArcSwap<State>,
    tables: Mutex<HashMap<TableKey, Arc<ListenerShared>>>,
    stop: watch::Receiver<bool>,
}

/// A running waypoint.
pub struct Waypoint {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    local_addr: SocketAddr,
}

struct NetnsDialer(Option<NetNs>);

impl Dialer for NetnsDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<crate::dial::BoxIo>> {
        match &self.0 {
            None => TcpDialer.dial(addr),
            Some(netns) => {
                let netns = netns.clone();
                Box::pin(async move {
                    let stream = netns.connect(addr, None).await?;
                    Ok(Box::new(stream) as crate::dial::BoxIo)
                })
            }
        }
    }
}

impl Waypoint {
    /// Binds the HBONE listener and starts serving `mesh`.
    pub async fn start(
        options: WaypointOptions,
        mesh: Arc<MeshConfig>,
    ) -> Result<(Waypoint, Vec<WaypointError>), WaypointError> {
        let gateway = options.gateway.clone();
        let listener = match &options.netns {
            Some(netns) => netns
                .tcp_listener(options.listen, 1024)
                .map_err(|e| std::io::Error::other(e.to_string())),
            None => crate::server::bind(options.listen),
        }
        .map_err(|source| WaypointError::Bind {
            gateway: gateway.clone(),
            addr: options.listen,
            source,
        })?;
        let local_addr = listener.local_addr().unwrap_or(options.listen);
        let identity = SpiffeId::new(
            mesh.trust_domain.as_str(),
            gateway.namespace.as_str(),
            options.service_account.as_str(),
        )
        .map_err(|source| WaypointError::Identity {
            gateway: gateway.clone(),
            source,
        })?;
        let view: MeshView = Arc::new(ArcSwap::new(mesh.clone()));
        let base: Arc<dyn Dialer> = Arc::new(NetnsDialer(options.netns.clone()));
        let hbone = Arc::new(HboneClient::new(base.clone()));
        let dialer = MeshDialer {
            view: view.clone(),
            hbone,
            certs: options.certs.clone(),
            local: identity.clone(),
            base,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            gateway,
            identity,
            certs: options.certs,
            view,
            rt: Arc::new(Runtime::with_dialer(Arc::new(dialer))),
            state: ArcSwap::from_pointee(State::default()),
            tables: Mutex::new(HashMap::new()),
            stop: stop_rx.clone(),
        });
        let errors = inner.apply(mesh);
        let identity_source: Arc<dyn ServerIdentity> = inner.clone();
        let handler: Arc<dyn TunnelHandler> = Arc::new(Handler(inner.clone()));
        tokio::spawn(hbone::serve(listener, identity_source, handler, stop_rx));
        tracing::info!(waypoint = %inner.gateway, %local_addr, "waypoint serving HBONE");
        Ok((
            Waypoint {
                inner,
                stop: stop_tx,
                local_addr,
            },
            errors,
        ))
    }

    /// Swaps in a new config; Service ports whose routes fail to build keep their previous
    /// tables.
    pub fn apply(&self, mesh: Arc<MeshConfig>) -> Vec<WaypointError> {
        self.inner.apply(mesh)
    }

    /// The bound HBONE address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting; open tunnels finish on their own.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Waypoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Inner {
    fn apply(&self, mesh: Arc<MeshConfig>) -> Vec<WaypointError> {
        self.view.store(mesh.clone());
        let mut errors = Vec::new();
        let clusters = Arc::new(self.rt.build_clusters(&mesh.clusters, None));
        let previous = self.state.load_full();
        let mut tables = match self.tables.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut used = HashMap::new();
        let mut ports = HashMap::new();
        if let Some(waypoint) = mesh.waypoint(&self.gateway) {
            for service in &waypoint.services {
                for port in &service.ports {
                    let mut table = |consumer: Option<&str>, config: &PortConfig| {
                        let key = TableKey {
                            service: service.service.clone(),
                            port: port.port,
                            consumer: consumer.map(str::to_string),
                        };
                        let built =
                            RouteTable::build(config).map_err(|source| WaypointError::Routes {
                                gateway: self.gateway.clone(),
                                service: service.service.clone(),
                                port: port.port,
                                source,
                            });
                        let state = match built {
                            Ok(table) => Some(Arc::new(PortState {
                                gateway: self.gateway.clone(),
                                listener_port: port.port,
                                table,
                                clusters: clusters.clone(),
                                tls: None,
                            })),
                            Err(e) => {
                                errors.push(e);
                                None
                            }
                        };
                        let shared = match (tables.get(&key), state) {
                            (Some(existing), Some(state)) => {
                                existing.state.store(state);
                                existing.clone()
                            }
                            (Some(existing), None) => existing.clone(),
                            (None, Some(state)) => Arc::new(ListenerShared {
                                state: ArcSwap::new(state),
                            }),
                            (None, None) => return None,
                        };
                        used.insert(key, shared.clone());
                        Some(shared)
                    };
                    let direct;
                    let producer_config = match &port.producer {
                        Some(config) => config,
                        None => {
                            direct = direct_routes(service.service.clone(), port);
                            &direct
                        }
                    };
                    let Some(producer) = table(None, producer_config) else {
                        continue;
                    };
                    let mut consumers = HashMap::new();
                    for (namespace, config) in &port.consumers {
                        if let Some(shared) = table(Some(namespace), config) {
                            consumers.insert(namespace.clone(), shared);
                        }
                    }
                    let entry = Arc::new(ServicePort {
                        protocol_http: port.protocol.is_http(),
                        cluster: port.cluster.clone(),
                        producer,
                        consumers,
                    });
                    for vip in &service.vips {
                        ports.insert((*vip, port.port), entry.clone());
                    }
                }
            }
        } else {
            tracing::warn!(waypoint = %self.gateway, "config has no entry for this waypoint: serving nothing");
        }
        *tables = used;
        drop(tables);
        drop(previous);
        self.state.store(Arc::new(State { ports, clusters }));
        errors
    }
}

/// The table used when no route is attached: every request to the Service's endpoints.
fn direct_routes(service: ObjectRef, port: &WaypointPort) -> PortConfig {
    PortConfig {
        port: port.port,
        protocol: ListenerProtocol::Http,
        listeners: vec![ListenerConfig {
            name: port.port.to_string(),
            hostname: None,
            tls: None,
            http_routes: vec![HttpRoute {
                route: RouteRef {
                    kind: "Service".into(),
                    namespace: service.namespace,
                    name: service.name,
                },
                creation_timestamp: String::new(),
                hostnames: Vec::new(),
                rules: vec![HttpRule {
                    name: None,
                    matches: vec![HttpMatch {
                        path: PathMatch::Prefix("/".into()),
                        headers: Vec::new(),
                        query_params: Vec::new(),
                        method: None,
                    }],
                    filters: Vec::new(),
                    backends: vec![WeightedBackend {
                        weight: 1,
                        target: BackendTarget::Cluster(port.cluster.clone()),
                        filters: Vec::new(),
                    }],
                    timeouts: Timeouts::default(),
                    retry: None,
                }],
            }],
        }],
    }
}

impl ServerIdentity for Inner {
    fn certificate(&self) -> BoxFuture<'_, Option<Arc<WorkloadCertificate>>> {
        Box::pin(async move {
            match self.certs.get(&self.identity).await {
                Ok(certificate) => Some(certificate),
                Err(e) => {
                    tracing::warn!(waypoint = %self.gateway, error = %e, "no waypoint certificate");
                    None
                }
            }
        })
    }
}

struct Handler(Arc<Inner>);

impl TunnelHandler for Handler {
    fn open(&self, request: TunnelRequest) -> BoxFuture<'static, Result<TunnelTask, StatusCode>> {
        let inner = self.0.clone();
        Box::pin(async move {
            let state = inner.state.load_full();
            let Some(entry) = state
                .ports
                .get(&(request.target.ip(), request.target.port()))
                .cloned()
            else {
                tracing::debug!(waypoint = %inner.gateway, target = %request.target, "no Service behind this waypoint at that address");
                return Err(StatusCode::NOT_FOUND);
            };
            let client = SocketAddr::new(request.source.unwrap_or(request.peer_addr.ip()), 0);
            if entry.protocol_http {
                let caller = request
                    .peer_id
                    .as_ref()
                    .map(|id| id.namespace().to_string());
                let shared = entry.shared_for(caller.as_deref());
                let stop = inner.stop.clone();
                let conn = ConnInfo::new(client, false, None);
                return Ok(Box::new(move |tunnel: hbone::Tunnel| {
                    Box::pin(serve_http(shared, tunnel, conn, stop)) as BoxFuture<'static, ()>
                }) as TunnelTask);
            }
            // Opaque TCP: one endpoint per connection.
            let Some(cluster) = state.clusters.get(&entry.cluster).cloned() else {
                return Err(StatusCode::SERVICE_UNAVAILABLE);
            };
            let Some(endpoint) = cluster.pick().cloned() else {
                return Err(StatusCode::SERVICE_UNAVAILABLE);
            };
            let upstream = dial_within(inner.rt.dialer(), endpoint.addr, CONNECT_TIMEOUT)
                .await
                .map_err(|e| {
                    tracing::debug!(waypoint = %inner.gateway, endpoint = %endpoint.addr, error = %e, "TCP endpoint unreachable");
                    StatusCode::SERVICE_UNAVAILABLE
                })?;
            Ok(Box::new(move |tunnel: hbone::Tunnel| {
                Box::pin(async move {
                    let _in_flight = crate::upstream::InFlight::new(&endpoint);
                    if let Err(e) = hbone::relay(upstream, tunnel).await {
                        tracing::debug!(error = %e, "waypoint TCP tunnel ended");
                    }
                }) as BoxFuture<'static, ()>
            }) as TunnelTask)
        })
    }
}

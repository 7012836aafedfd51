//! The data-plane runtime for ingress Gateways: listeners, HTTP/1.1 + h2c, HTTPS (rustls),
//! routing through `strait-route`, filters, upstream pools, timeouts, retries, mirrors and
//! WebSocket.
//!
//! Config changes are applied with [`Proxy::apply`]: every port's state (route table, TLS
//! configs, clusters) is built first, then swapped atomically (`ArcSwap`), so in-flight requests
//! finish on the config they started with and open connections survive.

pub mod accept;
mod backend_tls;
mod body;
mod coalesce;
pub mod dial;
mod h1;
mod handler;
pub mod hbone;
mod headers;
mod http2;
pub mod mesh;
mod pool;
mod server;
pub mod splice;
mod tls;
mod tunnel;
mod upstream;
pub mod waypoint;
pub mod workers;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use strait_config::{GatewayConfig, ListenerProtocol, ObjectRef, PortConfig, ProxyConfig};
use strait_route::RouteTable;
use tokio::sync::{Mutex, mpsc, watch};

use crate::handler::PortState;
use crate::server::ListenerShared;
use crate::tls::PortTls;
use crate::upstream::{Clusters, Runtime};

/// Process-level knobs.
#[derive(Clone, Debug, Default)]
pub struct ProxyOptions {
    /// Local port = listener port + port_offset (lets non-root users run port-80 Gateways on 8080...).
    pub port_offset: u16,
}

/// Why (part of) a config could not be applied. Each names the Gateway and its listener port.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The local address could not be bound (in use, not a local address, privileged port).
    #[error("Gateway {gateway} port {port}: cannot listen on {addr}: {source}")]
    Bind {
        gateway: ObjectRef,
        port: u16,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `port + port_offset` does not fit in a port number.
    #[error("Gateway {gateway} port {port}: local port overflows with offset {offset}")]
    PortOverflow {
        gateway: ObjectRef,
        port: u16,
        offset: u16,
    },
    /// Two Gateways (or two ports of one) claim the same local address.
    #[error("Gateway {gateway} port {port}: address {addr} is already used by Gateway {other}")]
    AddressConflict {
        gateway: ObjectRef,
        port: u16,
        addr: SocketAddr,
        other: ObjectRef,
    },
    /// The route engine rejected the port's routes; the port keeps its previous state.
    #[error("Gateway {gateway} port {port}: route table: {source}")]
    Routes {
        gateway: ObjectRef,
        port: u16,
        #[source]
        source: strait_route::BuildError,
    },
    /// A listener's certificate or client-validation CA is unusable; the port keeps its
    /// previous state.
    #[error("Gateway {gateway} port {port} listener {listener}: TLS: {reason}")]
    Tls {
        gateway: ObjectRef,
        port: u16,
        listener: String,
        reason: String,
    },
}

/// A bound listener as seen from outside (for tests, admin and status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundListener {
    pub gateway: ObjectRef,
    /// The Gateway listener port.
    pub port: u16,
    /// The actual local address (port resolved when the configured one was 0).
    pub local_addr: SocketAddr,
}

struct ListenerEntry {
    gateway: ObjectRef,
    port: u16,
    local_addr: SocketAddr,
    shared: Arc<ListenerShared>,
    stop: watch::Sender<bool>,
    /// Yields `None` once the accept loop and every connection it accepted are gone.
    done: mpsc::Receiver<()>,
}

/// The data-plane runtime of one proxy process.
pub struct Proxy {
    options: ProxyOptions,
    rt: Arc<Runtime>,
    listeners: Mutex<HashMap<SocketAddr, ListenerEntry>>,
}

impl Proxy {
    /// A proxy serving nothing until the first [`apply`](Self::apply). Needs a Tokio runtime
    /// only once `apply` is called.
    pub fn new(options: ProxyOptions) -> Proxy {
        Proxy {
            options,
            rt: Arc::new(Runtime::new()),
            listeners: Mutex::new(HashMap::new()),
        }
    }

    /// Applies a config atomically: builds RouteTables and TLS configs first; binds listeners for
    /// new (gateway address, port) pairs, stops accepting on removed ones (their open connections
    /// drain), and swaps the per-port state with ArcSwap so in-flight requests finish on the
    /// config they started with and no connection is dropped. A port whose tables cannot be built
    /// keeps its previous state. Returns one error per failing gateway/port.
    pub async fn apply(&self, config: Arc<ProxyConfig>) -> Vec<ApplyError> {
        let mut listeners = self.listeners.lock().await;
        let clusters = Arc::new(self.rt.clusters(&config));
        let mut errors = Vec::new();
        let mut desired: HashMap<SocketAddr, ObjectRef> = HashMap::new();
        for gateway in &config.gateways {
            // A Gateway presenting its own backend client certificate sees its own clusters.
            let gateway_clusters = if gateway.backend_client_certificate.is_some() {
                Arc::new(self.rt.clusters_for(&config, Some(gateway)))
            } else {
                clusters.clone()
            };
            for port in &gateway.ports {
                let Some(local_port) = port.port.checked_add(self.options.port_offset) else {
                    errors.push(ApplyError::PortOverflow {
                        gateway: gateway.gateway.clone(),
                        port: port.port,
                        offset: self.options.port_offset,
                    });
                    continue;
                };
                let built = build_port_state(gateway, port, &gateway_clusters).map(Arc::new);
                let built = match built {
                    Ok(state) => Some(state),
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping previous state for port");
                        errors.push(e);
                        None
                    }
                };
                for ip in bind_addresses(gateway) {
                    let addr = SocketAddr::new(ip, local_port);
                    if let Some(other) = desired.get(&addr) {
                        errors.push(ApplyError::AddressConflict {
                            gateway: gateway.gateway.clone(),
                            port: port.port,
                            addr,
                            other: other.clone(),
                        });
                        continue;
                    }
                    desired.insert(addr, gateway.gateway.clone());
                    let Some(state) = &built else { continue };
                    if let Some(entry) = listeners.get_mut(&addr) {
                        entry.shared.state.store(state.clone());
                        entry.gateway = gateway.gateway.clone();
                        entry.port = port.port;
                        continue;
                    }
                    match self.start_listener(addr, state.clone()) {
                        Ok(entry) => {
                            tracing::info!(gateway = %gateway.gateway, port = port.port, addr = %entry.local_addr, "listening");
                            listeners.insert(addr, entry);
                        }
                        Err(source) => errors.push(ApplyError::Bind {
                            gateway: gateway.gateway.clone(),
                            port: port.port,
                            addr,
                            source,
                        }),
                    }
                }
            }
        }
        let existing: HashSet<SocketAddr> = listeners.keys().copied().collect();
        for addr in removed(&existing, &desired) {
            if let Some(entry) = listeners.remove(&addr) {
                tracing::info!(gateway = %entry.gateway, port = entry.port, %addr, "listener removed");
                // Stop accepting; open connections finish their requests and close.
                let _ = entry.stop.send(true);
            }
        }
        errors
    }

    /// Stops accepting and waits up to `grace` for open connections.
    pub async fn shutdown(&self, grace: Duration) {
        let mut listeners = self.listeners.lock().await;
        let entries: Vec<ListenerEntry> = listeners.drain().map(|(_, entry)| entry).collect();
        drop(listeners);
        for entry in &entries {
            let _ = entry.stop.send(true);
        }
        let wait_all = async {
            for mut entry in entries {
                while entry.done.recv().await.is_some() {}
            }
        };
        if tokio::time::timeout(grace, wait_all).await.is_err() {
            tracing::warn!(
                ?grace,
                "connections still open after the shutdown grace period"
            );
        }
    }

    /// The listeners currently accepting connections, with their real local addresses (tests and
    /// admin endpoints use it to find ports bound as 0).
    pub async fn listeners(&self) -> Vec<BoundListener> {
        let listeners = self.listeners.lock().await;
        let mut out: Vec<BoundListener> = listeners
            .values()
            .map(|entry| BoundListener {
                gateway: entry.gateway.clone(),
                port: entry.port,
                local_addr: entry.local_addr,
            })
            .collect();
        out.sort_by_key(|l| l.local_addr);
        out
    }

    fn start_listener(
        &self,
        addr: SocketAddr,
        state: Arc<PortState>,
    ) -> std::io::Result<ListenerEntry> {
        let listener = server::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let gateway = state.gateway.clone();
        let port = state.listener_port;
        let shared = Arc::new(ListenerShared {
            state: ArcSwap::new(state),
        });
        let (stop, stop_rx) = watch::channel(false);
        let (tracker, done) = mpsc::channel(1);
        tokio::spawn(server::accept_loop(
            listener,
            shared.clone(),
            stop_rx,
            tracker,
        ));
        Ok(ListenerEntry {
            gateway,
            port,
            local_addr,
            shared,
            stop,
            done,
        })
    }
}

/// Addresses a Gateway binds: its own, or every interface when it has none.
fn bind_addresses(gateway: &GatewayConfig) -> Vec<IpAddr> {
    if gateway.addresses.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
    } else {
        gateway.addresses.clone()
    }
}

/// Local addresses that are bound but no longer wanted.
fn removed<V>(existing: &HashSet<SocketAddr>, desired: &HashMap<SocketAddr, V>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = existing
        .iter()
        .filter(|addr| !desired.contains_key(addr))
        .copied()
        .collect();
    out.sort();
    out
}

// Private and called once per port per apply: the error size does not matter.
#[allow(clippy::result_large_err)]
fn build_port_state(
    gateway: &GatewayConfig,
    port: &PortConfig,
    clusters: &Arc<Clusters>,
) -> Result<PortState, ApplyError> {
    let table = RouteTable::build(port).map_err(|source| ApplyError::Routes {
        gateway: gateway.gateway.clone(),
        port: port.port,
        source,
    })?;
    let tls = match port.protocol {
        ListenerProtocol::Http => None,
        ListenerProtocol::Https => Some(PortTls::build(port).map_err(|e| ApplyError::Tls {
            gateway: gateway.gateway.clone(),
            port: port.port,
            listener: e.listener,
            reason: e.reason,
        })?),
    };
    Ok(PortState {
        gateway: gateway.gateway.clone(),
        listener_port: port.port,
        table,
        clusters: clusters.clone(),
        tls,
    })
}

#[cfg(test)]
mod tests;

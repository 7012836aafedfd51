//! The mesh components a process runs next to (or instead of) the ingress proxy: the workload
//! CA, the node proxy and waypoints, all fed the compiled [`MeshConfig`].
//!
//! `strait standalone` runs all of them in one process (the CA in memory; node proxy and
//! waypoints bind inside the network namespaces named by the pods' `strait.dev/netns`
//! annotation). `strait node` and `strait waypoint` run one component each, with certificates
//! from a CA over gRPC.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use strait_config::ObjectRef;
use strait_config::mesh::{DEFAULT_TRUST_DOMAIN, MeshConfig};
use strait_identity::{AllowAll, CertificateAuthority, CertificateClient, Certificates};
use strait_netns::NetNs;
use strait_node::{NodeOptions, NodeProxy};
use strait_proxy::hbone::HBONE_PORT;
use strait_proxy::waypoint::{Waypoint, WaypointOptions};
use tokio::sync::{Mutex, watch};

use crate::stoppable::spawn_until_stopped;

/// Where workload certificates come from.
#[derive(Clone, Debug)]
pub enum CaSource {
    /// A CA in this process; served over gRPC on `listen` when given (loopback only: it
    /// signs for any identity asked).
    Local { listen: Option<SocketAddr> },
    /// A CA elsewhere (`http://127.0.0.1:15012`), reached lazily so a proxy may start before
    /// it; `token_file` is the projected service-account token presented to it (re-read for
    /// every request, as the kubelet rotates it).
    Remote {
        endpoint: String,
        token_file: Option<PathBuf>,
        /// The trust anchor of the CA's serving certificate, for an `https://` endpoint.
        tls_root: Option<String>,
    },
}

/// Which waypoints this process runs.
#[derive(Clone, Debug)]
pub enum WaypointSelection {
    None,
    /// Every waypoint pod that has a network namespace here.
    All,
    /// One waypoint, bound in `netns` (or the process's own namespace).
    One {
        gateway: ObjectRef,
        netns: Option<String>,
    },
}

/// Mesh components to run.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub ca: CaSource,
    pub node: bool,
    /// Serve only pods scheduled on this node.
    pub node_name: Option<String>,
    pub waypoints: WaypointSelection,
    /// Inbound sources never captured (health probes).
    pub probe_sources: Vec<String>,
    /// Find the network namespace of pods the config does not name among the namespace files
    /// of this directory, by pod IP (`/run/netns` on a node); `None` when every pod's
    /// namespace is named (standalone, tests).
    pub netns_dir: Option<PathBuf>,
}

impl MeshOptions {
    /// Everything in one process, CA in memory and not served.
    pub fn all_in_one() -> MeshOptions {
        MeshOptions {
            ca: CaSource::Local { listen: None },
            node: true,
            node_name: None,
            waypoints: WaypointSelection::All,
            probe_sources: Vec::new(),
            netns_dir: None,
        }
    }
}

/// Running mesh components.
pub struct MeshRuntime {
    options: MeshOptions,
    certs: Arc<Certificates>,
    node: Option<NodeProxy>,
    waypoints: Mutex<HashMap<(ObjectRef, Option<IpAddr>), Waypoint>>,
    ca_addr: Option<SocketAddr>,
    ca_stop: Option<watch::Sender<bool>>,
}

impl MeshRuntime {
    pub async fn start(options: MeshOptions) -> anyhow::Result<MeshRuntime> {
        let mut ca_addr = None;
        let mut ca_stop = None;
        let certs = match &options.ca {
            CaSource::Local { listen } => {
                let ca = Arc::new(
                    CertificateAuthority::new_self_signed(DEFAULT_TRUST_DOMAIN)
                        .context("creating the workload CA")?,
                );
                if let Some(listen) = listen {
                    let listener = tokio::net::TcpListener::bind(listen)
                        .await
                        .with_context(|| format!("CA: cannot listen on {listen}"))?;
                    ca_addr = Some(listener.local_addr()?);
                    let server_ca = ca.clone();
                    ca_stop = Some(spawn_until_stopped("CA server", |shutdown| {
                        strait_identity::serve(server_ca, AllowAll, listener, shutdown)
                    }));
                    tracing::info!(addr = ?ca_addr, "workload CA serving");
                }
                Arc::new(Certificates::from_ca(ca))
            }
            CaSource::Remote {
                endpoint,
                token_file,
                tls_root,
            } => {
                let client = match tls_root {
                    Some(root) => CertificateClient::connect_lazy_tls(endpoint, root),
                    None => CertificateClient::connect_lazy(endpoint),
                };
                let mut client = client.with_context(|| format!("the CA at {endpoint}"))?;
                if let Some(path) = token_file {
                    client = client.with_bearer_token_file(path);
                }
                Arc::new(Certificates::new(client))
            }
        };
        let node = options.node.then(|| {
            NodeProxy::new(NodeOptions {
                node_name: options.node_name.clone(),
                certs: certs.clone(),
                probe_sources: options.probe_sources.clone(),
                manage_rules: true,
                netns_dir: options.netns_dir.clone(),
            })
        });
        Ok(MeshRuntime {
            options,
            certs,
            node,
            waypoints: Mutex::new(HashMap::new()),
            ca_addr,
            ca_stop,
        })
    }

    /// The address the CA serves gRPC on, when it does.
    pub fn ca_addr(&self) -> Option<SocketAddr> {
        self.ca_addr
    }

    /// Applies a mesh config to every component. Returns the problems, each naming its
    /// pod or waypoint.
    pub async fn apply(&self, mesh: Arc<MeshConfig>) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(node) = &self.node {
            errors.extend(
                node.apply(mesh.clone())
                    .await
                    .iter()
                    .map(ToString::to_string),
            );
        }
        errors.extend(self.apply_waypoints(&mesh).await);
        errors
    }

    async fn apply_waypoints(&self, mesh: &Arc<MeshConfig>) -> Vec<String> {
        // (gateway, pod IP) -> where to bind.
        let mut desired: HashMap<(ObjectRef, Option<IpAddr>), (String, Option<String>)> =
            HashMap::new();
        match &self.options.waypoints {
            WaypointSelection::None => {}
            WaypointSelection::All => {
                for waypoint in &mesh.waypoints {
                    for ip in &waypoint.addresses {
                        let netns = mesh.workload(*ip).and_then(|w| w.netns.clone());
                        if let Some(netns) = netns {
                            desired.insert(
                                (waypoint.gateway.clone(), Some(*ip)),
                                (waypoint.service_account.clone(), Some(netns)),
                            );
                        }
                    }
                }
            }
            WaypointSelection::One { gateway, netns } => {
                let service_account = mesh
                    .waypoint(gateway)
                    .map_or_else(|| gateway.name.clone(), |w| w.service_account.clone());
                desired.insert((gateway.clone(), None), (service_account, netns.clone()));
            }
        }
        let mut errors = Vec::new();
        let mut running = self.waypoints.lock().await;
        running.retain(|key, waypoint| {
            let keep = desired.contains_key(key);
            if !keep {
                waypoint.shutdown();
            }
            keep
        });
        for (key, (service_account, netns)) in desired {
            if let Some(waypoint) = running.get(&key) {
                errors.extend(waypoint.apply(mesh.clone()).iter().map(ToString::to_string));
                continue;
            }
            let netns_handle = match netns.as_deref().map(NetNs::named).transpose() {
                Ok(handle) => handle,
                Err(e) => {
                    errors.push(format!("waypoint {}: {e}", key.0));
                    continue;
                }
            };
            let options = WaypointOptions {
                gateway: key.0.clone(),
                service_account,
                listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, HBONE_PORT)),
                netns: netns_handle,
                certs: self.certs.clone(),
            };
            match Waypoint::start(options, mesh.clone()).await {
                Ok((waypoint, apply_errors)) => {
                    errors.extend(apply_errors.iter().map(ToString::to_string));
                    running.insert(key, waypoint);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    }

    /// Stops every component. The node proxy removes its capture rules only when
    /// `remove_rules` (a restart keeps them so pods fail closed meanwhile).
    pub async fn shutdown(&self, remove_rules: bool) {
        if let Some(node) = &self.node {
            node.shutdown(remove_rules).await;
        }
        for (_, waypoint) in self.waypoints.lock().await.drain() {
            waypoint.shutdown();
        }
        if let Some(stop) = &self.ca_stop {
            let _ = stop.send(true);
        }
    }
}

//! Proxies fed by the controller's config stream (`--control-plane URL`): an ingress gateway,
//! a waypoint or a node proxy subscribes with its scope, applies each version, and acks it or
//! rejects it with the error. Losing the controller keeps the last good config; the
//! subscription reconnects with backoff.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use strait_config::ProxyConfig;
use strait_config::mesh::MeshConfig;
use strait_proxy::{Proxy, ProxyOptions};
use strait_xds::client::{Subscription, SubscriptionHandle};
use strait_xds::{Hello, Scope};

use crate::mesh::{MeshOptions, MeshRuntime};

/// This process's id in acks (the pod name when the downward API provides it).
fn proxy_id() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| format!("strait-{}", std::process::id()))
}

/// How a proxy reaches the controller's config stream.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// `https://strait-controller.strait-system.svc:15010` (or `http://` on loopback).
    pub endpoint: String,
    /// A projected service-account token, re-read on every reconnect: the controller admits
    /// each proxy to its own scope only.
    pub token_file: Option<PathBuf>,
    /// The trust anchor the controller's serving certificate chains to (`https://` only).
    pub tls_root: Option<String>,
}

impl ControlPlane {
    fn subscription(&self, hello: Hello) -> Subscription {
        let mut subscription = Subscription::new(self.endpoint.clone(), hello);
        if let Some(path) = &self.token_file {
            subscription = subscription.bearer_token_file(path);
        }
        if let Some(root) = &self.tls_root {
            subscription = subscription.tls_root(root.clone());
        }
        subscription
    }
}

/// An ingress gateway: serves one Gateway's listeners on every address of this pod.
pub fn gateway(control_plane: &ControlPlane, namespace: &str, name: &str) -> SubscriptionHandle {
    let proxy = Arc::new(Proxy::new(ProxyOptions::default()));
    let hello = Hello::new(Scope::gateway(namespace, name), proxy_id());
    control_plane
        .subscription(hello)
        .start(move |version, bytes| {
            let parsed = serde_json::from_slice::<ProxyConfig>(bytes)
                .map_err(|e| format!("config version {version}: {e}"));
            let proxy = proxy.clone();
            async move {
                let mut config = parsed?;
                config.version = version;
                // The Gateway's addresses are its Service's; inside the pod, listen on all of them.
                for gateway in &mut config.gateways {
                    gateway.addresses.clear();
                }
                let errors = proxy.apply(Arc::new(config)).await;
                if errors.is_empty() {
                    tracing::info!(version, "config applied");
                    Ok(())
                } else {
                    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    Err(text.join("; "))
                }
            }
        })
}

/// A node proxy or waypoint: mesh components fed the mesh config of `scope`.
pub async fn mesh(
    control_plane: &ControlPlane,
    scope: Scope,
    options: MeshOptions,
) -> anyhow::Result<(Arc<MeshRuntime>, SubscriptionHandle)> {
    let runtime = Arc::new(
        MeshRuntime::start(options)
            .await
            .context("starting mesh components")?,
    );
    let applier = runtime.clone();
    let hello = Hello::new(scope, proxy_id());
    let handle = control_plane
        .subscription(hello)
        .start(move |version, bytes| {
            let parsed = serde_json::from_slice::<MeshConfig>(bytes)
                .map_err(|e| format!("mesh config version {version}: {e}"));
            let applier = applier.clone();
            async move {
                let mut mesh = parsed?;
                mesh.version = version;
                let errors = applier.apply(Arc::new(mesh)).await;
                if errors.is_empty() {
                    tracing::info!(version, "mesh config applied");
                    Ok(())
                } else {
                    Err(errors.join("; "))
                }
            }
        });
    Ok((runtime, handle))
}

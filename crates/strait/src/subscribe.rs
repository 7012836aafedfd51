//! Proxies fed by the controller's config stream (`--control-plane URL`): an ingress gateway,
//! a waypoint or a node proxy subscribes with its scope, applies each version, and acks it or
//! rejects it with the error. Losing the controller keeps the last good config; the
//! subscription reconnects with backoff.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use strait_config::ProxyConfig;
use strait_config::mesh::MeshConfig;
use strait_proxy::{Proxy, ProxyOptions};
use strait_xds::client::{Subscription, SubscriptionHandle};
use strait_xds::{Hello, Scope};

use crate::aside::run_aside;
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

/// Parses and applies a version (of the `what` config) beside the data plane (see
/// [`crate::aside`]), and returns its outcome: an unreadable payload, a failed apply and a
/// panicking one each reject the version by name.
fn apply_aside<T, F, A>(
    what: &'static str,
    version: u64,
    bytes: Bytes,
    apply: F,
) -> impl Future<Output = Result<(), String>> + Send + use<T, F, A>
where
    T: serde::de::DeserializeOwned,
    F: FnOnce(T) -> A + Send + 'static,
    A: Future<Output = Result<(), String>>,
{
    let failed = format!("{what} version {version}: applying it failed");
    let work = move || async move {
        let parsed = serde_json::from_slice::<T>(&bytes)
            .map_err(|e| format!("{what} version {version}: {e}"))?;
        apply(parsed).await
    };
    async move { run_aside(&failed, work).await.unwrap_or_else(Err) }
}

/// An ingress gateway: serves one Gateway's listeners on every address of this pod.
pub fn gateway(control_plane: &ControlPlane, namespace: &str, name: &str) -> SubscriptionHandle {
    let proxy = Arc::new(Proxy::new(ProxyOptions::default()));
    let hello = Hello::new(Scope::gateway(namespace, name), proxy_id());
    control_plane
        .subscription(hello)
        .start(move |version, bytes| {
            let proxy = proxy.clone();
            let apply = move |mut config: ProxyConfig| async move {
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
            };
            apply_aside("config", version, bytes, apply)
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
            let applier = applier.clone();
            let apply = move |mut mesh: MeshConfig| async move {
                mesh.version = version;
                let errors = applier.apply(Arc::new(mesh)).await;
                if errors.is_empty() {
                    tracing::info!(version, "mesh config applied");
                    Ok(())
                } else {
                    Err(errors.join("; "))
                }
            };
            apply_aside("mesh config", version, bytes, apply)
        });
    Ok((runtime, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload that cannot be read, or an apply that panics, rejects the version by name.
    #[tokio::test]
    async fn unreadable_or_panicking_versions_are_rejected() {
        let unread = apply_aside("mesh config", 4, Bytes::from_static(b"{"), |_: u32| async {
            Ok(())
        })
        .await;
        let error = unread.unwrap_err();
        assert!(error.starts_with("mesh config version 4: "), "{error}");
        let panicked = apply_aside("config", 5, Bytes::from_static(b"1"), |_: u32| async {
            panic!("bug")
        })
        .await;
        let error = panicked.unwrap_err();
        assert!(
            error.starts_with("config version 5: applying it failed"),
            "{error}"
        );
    }
}

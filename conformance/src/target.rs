//! The system under test: Strait's standalone mode, in-process. The only module that touches the
//! `strait` crate, so the rest of the harness is independent of its API.

use std::path::Path;

use serde_json::Value;
use strait::standalone::{Standalone, StandaloneOptions};

use crate::status::World;

/// A running Strait serving one test's manifests directory.
pub struct Target {
    inner: Standalone,
}

impl Target {
    /// Loads `dir` and starts serving its Gateways (listener ports unshifted).
    pub async fn start(dir: &Path) -> anyhow::Result<Target> {
        let inner = Standalone::start(StandaloneOptions::gateways_only(
            dir.to_path_buf(),
            0,
            false,
        ))
        .await?;
        Ok(Target { inner })
    }

    /// Applies the current content of the directory.
    pub async fn reload(&self) -> anyhow::Result<()> {
        self.inner.reload().await
    }

    pub async fn shutdown(self) {
        self.inner.shutdown().await;
    }
}

impl World for Target {
    fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.inner.object(kind, namespace, name)
    }

    fn names(&self, kind: &str) -> Vec<(String, String)> {
        self.inner
            .statuses()
            .into_iter()
            .filter(|s| s.kind == kind)
            .map(|s| (s.namespace, s.name))
            .collect()
    }
}

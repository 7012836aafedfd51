//! The built-in demo: the manifests of `examples/`, embedded in the binary, and echo backends
//! standing in for the Services' pods.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

const EXAMPLES: &[(&str, &str)] = &[
    (
        "gateway.yaml",
        include_str!("../../../examples/gateway.yaml"),
    ),
    ("store.yaml", include_str!("../../../examples/store.yaml")),
    ("routes.yaml", include_str!("../../../examples/routes.yaml")),
];

/// Writes the embedded examples to a fresh directory (so they can be edited live) and returns it.
pub fn write_embedded_examples() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("strait-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in EXAMPLES {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// An endpoint the demo should answer on, with the identity its echo replies report.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DemoEndpoint {
    pub address: SocketAddr,
    pub namespace: String,
    pub service: String,
}

/// Every loopback endpoint of the EndpointSlices under `dir`.
pub fn loopback_endpoints(dir: &Path) -> Vec<DemoEndpoint> {
    let snapshot = strait_model::load_dir(dir).snapshot;
    let mut endpoints = BTreeSet::new();
    for slice in &snapshot.endpoint_slices {
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
            .unwrap_or_default();
        let ports = slice.ports.iter().flatten().filter_map(|p| p.port);
        for port in ports {
            for endpoint in slice.endpoints.iter().flatten() {
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue;
                    };
                    let Ok(port) = u16::try_from(port) else {
                        continue;
                    };
                    if ip.is_loopback() {
                        endpoints.insert(DemoEndpoint {
                            address: SocketAddr::new(ip, port),
                            namespace: namespace.clone(),
                            service: service.clone(),
                        });
                    }
                }
            }
        }
    }
    endpoints.into_iter().collect()
}

/// Starts an echo server on every loopback endpoint under `dir`; they stop when dropped.
pub async fn start_echo_backends(dir: &Path) -> anyhow::Result<Vec<strait_echo::EchoServer>> {
    let mut servers = Vec::new();
    for endpoint in loopback_endpoints(dir) {
        let pod = format!("{}-demo-{}", endpoint.service, endpoint.address.port());
        let server = strait_echo::EchoServer::start_http(
            endpoint.address,
            strait_echo::Identity {
                namespace: endpoint.namespace.clone(),
                service: endpoint.service.clone(),
                pod,
                ingress: String::new(),
            },
        )
        .await
        .with_context(|| format!("starting an echo backend on {}", endpoint.address))?;
        eprintln!(
            "demo: echo backend for {}/{} on {}",
            endpoint.namespace, endpoint.service, endpoint.address
        );
        servers.push(server);
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_examples_load_cleanly_and_have_backends() {
        let dir = write_embedded_examples().unwrap();
        let report = strait_model::load_dir(&dir);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let endpoints = loopback_endpoints(&dir);
        let services: Vec<&str> = endpoints.iter().map(|e| e.service.as_str()).collect();
        assert_eq!(services, vec!["store-v1", "store-v2"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

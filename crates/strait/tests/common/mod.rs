//! Fixtures shared by the standalone, runtime, subscription and mesh tests: a temp dir, and the
//! YAML of a Gateway, a Service with its endpoints, and an HTTPRoute.
#![allow(dead_code)] // each test binary uses its own share of these

use std::net::SocketAddr;
use std::path::PathBuf;

use strait_echo::{EchoServer, Identity};

/// A temp dir removed on drop, also when the test fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("strait-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn write(&self, file: &str, text: &str) {
        std::fs::write(self.0.join(file), text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GatewayClass `strait` and Gateway `t/gw` with one HTTP listener on `port`.
pub fn gateway_yaml(port: u16) -> String {
    format!(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: strait}}
spec: {{controllerName: strait.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: t}}
spec:
  gatewayClassName: strait
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
"
    )
}

/// Service `t/{name}` (port 80) and an EndpointSlice whose one endpoint is `addr`.
pub fn backend_yaml(name: &str, addr: SocketAddr) -> String {
    format!(
        "
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: t}}
spec: {{ports: [{{name: http, port: 80, targetPort: {port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints: [{{addresses: [\"{ip}\"]}}]
",
        port = addr.port(),
        ip = addr.ip()
    )
}

/// HTTPRoute `t/{name}` on `gw`: PathPrefix `path` to Service `backend`, port 80.
pub fn route_yaml(name: &str, path: &str, backend: &str) -> String {
    format!(
        "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: t}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: {backend}, port: 80}}]
"
    )
}

/// An HTTP echo backend at `addr` answering as pod `{service}-pod` of Service `t/{service}`.
pub async fn echo(addr: &str, service: &str) -> EchoServer {
    EchoServer::start_http(
        addr.parse().unwrap(),
        Identity {
            namespace: "t".into(),
            service: service.into(),
            pod: format!("{service}-pod"),
            ingress: String::new(),
        },
    )
    .await
    .unwrap()
}

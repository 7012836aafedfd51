//! The mesh suite's `echo-advanced` backend (the Istio echo app) and its client.
//!
//! The Gateway API mesh conformance tests do not send requests from the test process: they exec
//! into an echo pod and run its `client` command, then read `Key=Value` lines back. This module
//! provides the three pieces of that contract:
//!
//! - [`AdvancedEcho`]: the server, started inside a pod's network namespace, answering every HTTP
//!   request with Istio-echo style lines (`ServiceVersion=`, `Host=`, `RequestHeader=...`,
//!   `Hostname=`) and echoing raw bytes on its TCP ports;
//! - [`run_client`]: what `strait-echo client URL ...` does (one keep-alive connection, no
//!   redirects, one block of lines per response);
//! - [`parse_client_output`]: reads that output back into [`EchoResponse`]s for assertions.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

mod client;
mod output;
mod server;

pub use client::{ClientRequest, parse_timeout, run_client};
pub use output::{EchoResponse, parse_client_output, parse_fields};
pub use server::AdvancedEcho;

use crate::TlsSettings;

/// Who the echo pod is; reported in every reply so tests can tell which backend answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// `Namespace=`: the pod's namespace.
    pub namespace: String,
    /// `ServiceVersion=`: the Istio echo `--version` (the `version` label of the mesh suite's
    /// Deployments).
    pub version: String,
    /// `Hostname=`: the pod name; the suite derives the backend from it.
    pub pod: String,
    /// `Cluster=`: the Istio echo `--cluster`, empty in a single-cluster mesh.
    pub cluster: String,
}

/// What an echo pod listens on. Ports may be 0 (tests): the bound ports are in
/// [`AdvancedEcho::addrs`].
#[derive(Clone, Debug)]
pub struct AdvancedOptions {
    /// Address to bind inside the namespace; `0.0.0.0` like a container.
    pub bind: IpAddr,
    /// Plaintext HTTP/1.1 + h2c (prior knowledge) ports.
    pub http_ports: Vec<u16>,
    /// HTTP over TLS ports (ALPN `h2`, `http/1.1`).
    pub tls_ports: Vec<u16>,
    /// Raw TCP ports: every byte received is written back.
    pub tcp_ports: Vec<u16>,
    /// Certificate of the TLS ports; a fresh self-signed one when `None`.
    pub tls: Option<TlsSettings>,
}

impl Default for AdvancedOptions {
    /// The echo pod started without arguments: HTTP on 8080.
    fn default() -> Self {
        AdvancedOptions {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            http_ports: vec![8080],
            tls_ports: Vec::new(),
            tcp_ports: Vec::new(),
            tls: None,
        }
    }
}

/// Which kind of listener a bound address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EchoPort {
    Http,
    Tls,
    Tcp,
}

/// Failures of the advanced echo server and its argument parser.
#[derive(Debug, thiserror::Error)]
pub enum AdvancedError {
    /// A port could not be bound (in use, or the namespace is gone).
    #[error("echo {pod}: binding {addr}: {source}")]
    Bind {
        pod: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The namespace could not be entered to create a listener.
    #[error("echo {pod}: {source}")]
    NetNs {
        pod: String,
        #[source]
        source: strait_netns::NetNsError,
    },
    /// The configured certificate was unusable, or a self-signed one could not be made.
    #[error("echo {pod}: TLS: {reason}")]
    Tls { pod: String, reason: String },
    /// A container argument could not be understood.
    #[error("echo arguments: {arg}: {reason}")]
    Args { arg: String, reason: String },
}

/// The container arguments of an echo-advanced pod (`--port=8080 --tls=8443 --tcp=9090 ...`),
/// as the Istio echo app reads them.
#[derive(Clone, Debug, Default)]
pub struct EchoArgs {
    /// Listeners: `--port` ports are HTTP unless also named by `--tls`; `--tcp` ports echo bytes.
    pub options: AdvancedOptions,
    /// `--grpc` ports: accepted for compatibility, not served.
    pub grpc_ports: Vec<u16>,
    /// `--crt` / `--key`: certificate files inside the container, if given.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `--version` (`ServiceVersion=`) and `--cluster` (`Cluster=`).
    pub version: Option<String>,
    pub cluster: Option<String>,
    /// `--namespace` / `--hostname`: identity overrides for running outside a pod.
    pub namespace: Option<String>,
    pub hostname: Option<String>,
    /// Flags this implementation does not know; ignored like unsupported features.
    pub ignored: Vec<String>,
}

impl EchoArgs {
    /// Parses `--name=value` and `--name value` forms; list flags may repeat or hold
    /// comma-separated values. With no listener flag at all the pod serves HTTP on 8080.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<EchoArgs, AdvancedError> {
        let mut out = EchoArgs::default();
        let mut ports = Vec::new();
        let mut tls = Vec::new();
        let mut tcp = Vec::new();
        let mut iter = args.iter().map(AsRef::as_ref).peekable();
        while let Some(arg) = iter.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                return Err(AdvancedError::Args {
                    arg: arg.to_string(),
                    reason: "expected a flag".into(),
                });
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            let takes_value = matches!(
                name,
                "port"
                    | "tls"
                    | "tcp"
                    | "grpc"
                    | "crt"
                    | "key"
                    | "version"
                    | "cluster"
                    | "namespace"
                    | "hostname"
            );
            let value = match inline {
                Some(v) => Some(v),
                None if takes_value => Some(
                    iter.next()
                        .ok_or_else(|| AdvancedError::Args {
                            arg: arg.to_string(),
                            reason: "missing value".into(),
                        })?
                        .to_string(),
                ),
                // An unknown flag swallows a following value, as Go's flag package would for a
                // non-boolean flag.
                None => iter
                    .next_if(|next| !next.starts_with('-'))
                    .map(str::to_string),
            };
            let value = value.unwrap_or_default();
            match name {
                "port" => ports.extend(parse_ports(arg, &value)?),
                "tls" => tls.extend(parse_ports(arg, &value)?),
                "tcp" => tcp.extend(parse_ports(arg, &value)?),
                "grpc" => out.grpc_ports.extend(parse_ports(arg, &value)?),
                "crt" => out.cert_file = Some(PathBuf::from(value)),
                "key" => out.key_file = Some(PathBuf::from(value)),
                "version" => out.version = Some(value),
                "cluster" => out.cluster = Some(value),
                "namespace" => out.namespace = Some(value),
                "hostname" => out.hostname = Some(value),
                _ => out.ignored.push(arg.to_string()),
            }
        }
        let tls_ports: Vec<u16> = tls
            .iter()
            .copied()
            .filter(|p| !out.grpc_ports.contains(p) && !tcp.contains(p))
            .collect();
        let http_ports: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| !tls_ports.contains(p))
            .collect();
        let no_listeners = ports.is_empty() && tls.is_empty() && tcp.is_empty();
        out.options = AdvancedOptions {
            http_ports: if no_listeners && out.grpc_ports.is_empty() {
                vec![8080]
            } else {
                dedup(http_ports)
            },
            tls_ports: dedup(tls_ports),
            tcp_ports: dedup(tcp),
            ..AdvancedOptions::default()
        };
        Ok(out)
    }

    /// The identity these arguments describe, over `base` (from the pod object).
    pub fn identity(&self, base: Identity) -> Identity {
        Identity {
            namespace: self.namespace.clone().unwrap_or(base.namespace),
            version: self.version.clone().unwrap_or(base.version),
            pod: self.hostname.clone().unwrap_or(base.pod),
            cluster: self.cluster.clone().unwrap_or(base.cluster),
        }
    }
}

fn parse_ports(arg: &str, value: &str) -> Result<Vec<u16>, AdvancedError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<u16>().map_err(|e| AdvancedError::Args {
                arg: arg.to_string(),
                reason: format!("port {v:?}: {e}"),
            })
        })
        .collect()
}

fn dedup(mut ports: Vec<u16>) -> Vec<u16> {
    let mut seen = std::collections::HashSet::new();
    ports.retain(|p| seen.insert(*p));
    ports
}

#[cfg(test)]
mod tests;

//! The control-plane config stream (`strait.config.v1.ConfigService`).
//!
//! Proxies subscribe with their identity and [`Scope`]; the controller streams versioned, complete
//! snapshots of that scope; the proxy acknowledges or rejects (with the error) each version. A proxy
//! that loses the controller keeps its last good config and resubscribes with backoff.
//!
//! - [`server`]: [`ConfigHub`] holds the latest snapshot of every scope and
//!   serves it to subscribers, coalescing changes for slow ones.
//! - [`client`]: [`Subscription`] keeps a proxy subscribed and hands each
//!   snapshot to the proxy's apply callback.
//!
//! The crate moves opaque payload bytes (by convention the serde_json of
//! `strait_config::ProxyConfig` for gateways, `strait_config::mesh::MeshConfig` for waypoints and
//! nodes); decoding and validating them is the proxy's business.

use std::fmt;
use std::str::FromStr;

use strait_proto::config::v1 as pb;

pub mod client;
pub mod server;

pub use client::{Subscription, SubscriptionHandle, SubscriptionStatus};
pub use server::{AckRecord, ConfigHub, SubscriberAuth};

/// Largest config snapshot a subscriber accepts. Generous: a big cluster's gateway config is a
/// few megabytes; the limit only stops a runaway payload from exhausting the proxy's memory.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// What a proxy serves; the unit the controller publishes configs for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// An ingress Gateway (payload: `strait_config::ProxyConfig`).
    Gateway { namespace: String, name: String },
    /// A mesh waypoint (payload: `strait_config::mesh::MeshConfig`).
    Waypoint { namespace: String, name: String },
    /// The node proxy of one node (payload: `strait_config::mesh::MeshConfig`).
    Node { name: String },
}

impl Scope {
    /// The scope of the Gateway `namespace/name`.
    pub fn gateway(namespace: impl Into<String>, name: impl Into<String>) -> Scope {
        Scope::Gateway {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The scope of the waypoint `namespace/name`.
    pub fn waypoint(namespace: impl Into<String>, name: impl Into<String>) -> Scope {
        Scope::Waypoint {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The scope of the node proxy on node `name`.
    pub fn node(name: impl Into<String>) -> Scope {
        Scope::Node { name: name.into() }
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::Scope {
        let (kind, name) = match self {
            Scope::Gateway { namespace, name } => {
                (pb::scope::Kind::Gateway, format!("{namespace}/{name}"))
            }
            Scope::Waypoint { namespace, name } => {
                (pb::scope::Kind::Waypoint, format!("{namespace}/{name}"))
            }
            Scope::Node { name } => (pb::scope::Kind::Node, name.clone()),
        };
        pb::Scope {
            kind: kind.into(),
            name,
        }
    }

    /// Parses and validates the wire form (`namespace/name` for gateways and waypoints, a bare
    /// node name for nodes).
    pub fn from_proto(scope: &pb::Scope) -> Result<Scope, ScopeError> {
        let kind = pb::scope::Kind::try_from(scope.kind).map_err(|_| ScopeError {
            scope: scope.name.clone(),
            reason: format!("unknown scope kind {}", scope.kind),
        })?;
        match kind {
            pb::scope::Kind::Unspecified => Err(ScopeError {
                scope: scope.name.clone(),
                reason: "scope kind is unspecified".into(),
            }),
            pb::scope::Kind::Gateway => {
                let (namespace, name) = namespaced(&scope.name)?;
                Ok(Scope::gateway(namespace, name))
            }
            pb::scope::Kind::Waypoint => {
                let (namespace, name) = namespaced(&scope.name)?;
                Ok(Scope::waypoint(namespace, name))
            }
            pb::scope::Kind::Node => {
                check_segment(&scope.name, &scope.name, "node name")?;
                Ok(Scope::node(scope.name.clone()))
            }
        }
    }
}

/// `gateway/ns/name`, `waypoint/ns/name` or `node/name`: the form used in logs and by
/// [`FromStr`].
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Gateway { namespace, name } => write!(f, "gateway/{namespace}/{name}"),
            Scope::Waypoint { namespace, name } => write!(f, "waypoint/{namespace}/{name}"),
            Scope::Node { name } => write!(f, "node/{name}"),
        }
    }
}

/// Parses the [`Display`](fmt::Display) form, e.g. from a command-line flag.
impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        let Some((kind, rest)) = s.split_once('/') else {
            return Err(ScopeError {
                scope: s.into(),
                reason: "expected gateway/<namespace>/<name>, waypoint/<namespace>/<name> or node/<name>".into(),
            });
        };
        match kind {
            "gateway" => namespaced(rest).map(|(ns, n)| Scope::gateway(ns, n)),
            "waypoint" => namespaced(rest).map(|(ns, n)| Scope::waypoint(ns, n)),
            "node" => check_segment(s, rest, "node name").map(|()| Scope::node(rest)),
            other => Err(ScopeError {
                scope: s.into(),
                reason: format!(
                    "unknown scope kind {other:?} (expected gateway, waypoint or node)"
                ),
            }),
        }
        .map_err(|mut err| {
            err.scope = s.into();
            err
        })
    }
}

fn namespaced(value: &str) -> Result<(&str, &str), ScopeError> {
    let Some((namespace, name)) = value.split_once('/') else {
        return Err(ScopeError {
            scope: value.into(),
            reason: "expected <namespace>/<name>".into(),
        });
    };
    check_segment(value, namespace, "namespace")?;
    check_segment(value, name, "name")?;
    Ok((namespace, name))
}

fn check_segment(scope: &str, segment: &str, what: &str) -> Result<(), ScopeError> {
    if segment.is_empty() || segment.contains('/') {
        return Err(ScopeError {
            scope: scope.into(),
            reason: format!("{what} {segment:?} must be non-empty and contain no '/'"),
        });
    }
    Ok(())
}

/// A scope that is malformed on the wire or in text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scope {scope:?}: {reason}")]
pub struct ScopeError {
    /// The offending scope as given.
    pub scope: String,
    /// What is wrong with it.
    pub reason: String,
}

/// How a proxy introduces itself when it subscribes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The scope whose config the proxy wants.
    pub scope: Scope,
    /// Identifies the proxy instance (e.g. `namespace/pod`) in the controller's ack records.
    pub proxy_id: String,
    /// The version the proxy already serves, if any, so it is not sent again.
    pub last_version: Option<u64>,
}

impl Hello {
    /// A first subscription (no config yet) of `proxy_id` to `scope`.
    pub fn new(scope: Scope, proxy_id: impl Into<String>) -> Hello {
        Hello {
            scope,
            proxy_id: proxy_id.into(),
            last_version: None,
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::Hello {
        pb::Hello {
            scope: Some(self.scope.to_proto()),
            proxy_id: self.proxy_id.clone(),
            last_version: self.last_version.unwrap_or(0),
        }
    }

    /// Parses and validates the wire form.
    pub fn from_proto(hello: &pb::Hello) -> Result<Hello, ScopeError> {
        let scope = hello.scope.as_ref().ok_or_else(|| ScopeError {
            scope: String::new(),
            reason: format!("hello of proxy {:?} carries no scope", hello.proxy_id),
        })?;
        Ok(Hello {
            scope: Scope::from_proto(scope)?,
            proxy_id: hello.proxy_id.clone(),
            last_version: (hello.last_version != 0).then_some(hello.last_version),
        })
    }
}

/// Why the config service could not be served.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The listener is unusable.
    #[error("config stream listener: {source}")]
    Listener {
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("config stream server on {addr}: {source}")]
    Serve {
        addr: std::net::SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_display_and_parse_round_trip() {
        for (scope, text) in [
            (Scope::gateway("ns", "gw"), "gateway/ns/gw"),
            (Scope::waypoint("ns", "wp"), "waypoint/ns/wp"),
            (Scope::node("node-1"), "node/node-1"),
        ] {
            assert_eq!(scope.to_string(), text);
            assert_eq!(text.parse::<Scope>().unwrap(), scope);
            assert_eq!(Scope::from_proto(&scope.to_proto()).unwrap(), scope);
        }
    }

    #[test]
    fn malformed_scopes_are_rejected_with_the_scope_named() {
        for text in [
            "gateway/ns",
            "gateway//gw",
            "gateway/ns/gw/extra",
            "node/",
            "node/a/b",
            "pod/x",
            "gateway",
        ] {
            let err = text.parse::<Scope>().unwrap_err();
            assert_eq!(err.scope, text, "{err}");
        }
        let unspecified = pb::Scope {
            kind: 0,
            name: "x".into(),
        };
        assert!(Scope::from_proto(&unspecified).is_err());
        let unknown = pb::Scope {
            kind: 42,
            name: "x".into(),
        };
        assert!(Scope::from_proto(&unknown).is_err());
        let gateway_without_namespace = pb::Scope {
            kind: pb::scope::Kind::Gateway.into(),
            name: "gw".into(),
        };
        assert!(Scope::from_proto(&gateway_without_namespace).is_err());
    }

    #[test]
    fn hello_maps_zero_to_no_version() {
        let mut hello = Hello::new(Scope::node("n"), "p");
        assert_eq!(hello.to_proto().last_version, 0);
        hello.last_version = Some(7);
        let back = Hello::from_proto(&hello.to_proto()).unwrap();
        assert_eq!(back, hello);
        let none = Hello::from_proto(&Hello::new(Scope::node("n"), "p").to_proto()).unwrap();
        assert_eq!(none.last_version, None);
    }
}

//! The compiled data-plane configuration: what `compile` produces and what proxies and the
//! route engine consume.
//!
//! These types are plain data (serde-serialisable) so the same value can be built in-process
//! (standalone), streamed over the control-plane connection, or dumped on the admin port. Every
//! Gateway API semantic decision (attachment, hostname intersection, ReferenceGrant, invalid
//! references) is already taken when a value of this crate exists: the data plane only executes.
//! Matchers are *not* precompiled here; the route engine builds its own indexes from this data
//! once per config version.
//!
//! A field at its default (`None`, an empty list, unset timeouts) is left out of the serialized
//! form and read back as that default. The controller serializes a config on each change and
//! every proxy parses it: for 10,000 single-match routes that left out 34% of the bytes (22%
//! when each route also has a header match and a filter).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod mesh;
mod workers;

pub use workers::Workers;

/// Everything one proxy process serves, versioned as a whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// Monotonic version, bumped by the producer on every change.
    pub version: u64,
    /// Ingress Gateways to serve.
    pub gateways: Vec<GatewayConfig>,
    /// Every backend a route of this config may reach, by [`ClusterKey`]. Routes refer to clusters
    /// by key so an endpoint change does not rewrite the routes.
    #[serde(with = "cluster_map")]
    pub clusters: BTreeMap<ClusterKey, Cluster>,
}

/// `namespace/name` of a Kubernetes object.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One Gateway's data plane: where it listens and what it routes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayConfig {
    pub gateway: ObjectRef,
    /// Addresses the Gateway's listeners bind (also what its `status.addresses` reports).
    pub addresses: Vec<IpAddr>,
    /// One entry per distinct listener port; listeners sharing a port are merged here.
    pub ports: Vec<PortConfig>,
    /// Client certificate presented when this Gateway originates TLS to a backend
    /// (`spec.tls.backend.clientCertificateRef`). Per Gateway because a cluster may be shared
    /// by Gateways with different certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_client_certificate: Option<CertificatePem>,
}

/// All listeners that share one port of a Gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortConfig {
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// Accepted listeners on this port. The route engine picks the most specific listener whose
    /// hostname matches the request (listener isolation): exact hostname, then longest wildcard,
    /// then a listener without hostname.
    pub listeners: Vec<ListenerConfig>,
}

/// The protocol a port speaks to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListenerProtocol {
    /// Cleartext HTTP/1.1, and HTTP/2 with prior knowledge (h2c).
    Http,
    /// TLS-terminated HTTP/1.1 and HTTP/2 (ALPN).
    Https,
}

/// One Gateway listener with the routes attached to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerConfig {
    /// `sectionName` of the listener.
    pub name: String,
    /// Listener hostname (`foo.example.com` or `*.example.com`); `None` matches any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Present for HTTPS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// HTTPRoutes attached to this listener, hostnames already intersected with the listener's.
    pub http_routes: Vec<HttpRoute>,
}

/// Certificates served by an HTTPS listener (selected by SNI).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerTls {
    pub certificates: Vec<CertificatePem>,
    /// Frontend client-certificate validation, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<ClientValidation>,
}

/// A PEM certificate chain with its private key, from a `kubernetes.io/tls` Secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificatePem {
    /// `namespace/name` of the Secret it came from (for error messages).
    pub source: ObjectRef,
    pub cert_chain_pem: String,
    pub private_key_pem: String,
}

impl std::fmt::Debug for CertificatePem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private keys in logs or config dumps.
        f.debug_struct("CertificatePem")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Frontend mTLS: which CAs client certificates must chain to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientValidation {
    pub ca_certificates_pem: Vec<String>,
    /// `AllowInsecureFallback`: accept connections without a valid client certificate.
    pub allow_insecure_fallback: bool,
}

/// Identifies an attached route, for precedence ties and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// An HTTPRoute as attached to one listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    pub route: RouteRef,
    /// `metadata.creationTimestamp` as RFC 3339 (lexically ordered); older routes win ties.
    pub creation_timestamp: String,
    /// Effective hostnames (route ∩ listener). Empty means "any host the listener accepts".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRule>,
}

/// One rule of an HTTPRoute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ORed matches. Compile guarantees at least one (the default `PathPrefix /`).
    pub matches: Vec<HttpMatch>,
    /// Rule-level filters, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpFilter>,
    /// Weighted backends. Empty means the rule has no backends: answer 500 unless a filter
    /// (redirect) answers first.
    pub backends: Vec<WeightedBackend>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// ANDed conditions of one HTTPRouteMatch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpMatch {
    pub path: PathMatch,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
    /// Upper-case method name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// Path match. Values are as written in the route (validated by compile).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatch {
    Exact(String),
    /// Segment-wise prefix: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    /// A full-match regular expression (RE2-like syntax of the `regex` crate).
    RegularExpression(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StringMatch {
    Exact(String),
    RegularExpression(String),
}

/// Header match; `name` is compared case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    pub value: StringMatch,
}

/// Query parameter match; `name` is compared exactly (case-sensitive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryParamMatch {
    pub name: String,
    pub value: StringMatch,
}

/// A filter, at rule or backend level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HttpFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(RequestRedirect),
    UrlRewrite(UrlRewrite),
    RequestMirror(RequestMirror),
    Cors(Cors),
}

/// Set/add/remove of headers. Names keep the case they were written with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part of the path matched by the rule's `PathPrefix` match.
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRedirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status_code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestMirror {
    pub backend: BackendTarget,
    /// Share of requests mirrored, 0.0..=100.0 (`percent`, or `fraction` converted).
    pub percent: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cors {
    /// Origins as written: `*`, exact `scheme://host[:port]`, or with a `*.` wildcard host.
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    /// Seconds; the spec default is 5.
    pub max_age: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Whole-request timeout, from the gateway receiving the request to the response start.
    pub request: Option<Duration>,
    /// Per attempt to a backend.
    pub backend_request: Option<Duration>,
}

/// GEP-1731 retry policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Response codes that make an attempt retriable (connection errors always are).
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    pub attempts: u32,
    pub backoff: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightedBackend {
    /// 0 means never chosen.
    pub weight: u32,
    pub target: BackendTarget,
    /// Backend-level filters, applied after rule-level ones when this backend is chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpFilter>,
}

/// Where a backendRef leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendTarget {
    /// A resolvable Service port.
    Cluster(ClusterKey),
    /// An unresolvable reference (unknown kind, missing Service, no ReferenceGrant). Requests
    /// that pick it get 500; the reason is kept for logs.
    Invalid { reason: String },
}

/// `namespace/name:port` of a Service port, the key of a [`Cluster`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterKey {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

impl std::fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// A Service port and its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub protocol: AppProtocol,
    /// Ready endpoint addresses with the resolved target port.
    pub endpoints: Vec<SocketAddr>,
    /// Present when a BackendTLSPolicy targets this Service port: the proxy must originate TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
}

/// TLS origination to a backend, from an accepted BackendTLSPolicy (GEP-1897).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTls {
    /// SNI sent to the backend (`validation.hostname`).
    pub server_name: String,
    /// Trust anchors (`validation.caCertificateRefs`), PEM.
    pub ca_certificates_pem: Vec<String>,
    /// `wellKnownCACertificates: System`: trust the Mozilla root set (`webpki-root-certs`).
    pub system_roots: bool,
    /// When non-empty, the backend certificate must carry one of these SANs instead of
    /// `server_name`.
    pub subject_alt_names: Vec<SubjectAltName>,
    /// Set when the policy is invalid (for example an unresolvable CA reference): requests to
    /// the cluster must fail rather than fall back to cleartext. The text is kept for logs.
    pub invalid: Option<String>,
}

/// A subjectAltName a backend certificate may present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubjectAltName {
    /// A DNS name (may be a `*.` wildcard in the certificate).
    Hostname(String),
    /// A URI, such as a SPIFFE id.
    Uri(String),
}

/// How to speak to a backend, from the Service port's `appProtocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppProtocol {
    /// HTTP/1.1 (upgrades such as WebSocket are passed through).
    #[default]
    Http1,
    /// `kubernetes.io/h2c`: HTTP/2 with prior knowledge.
    H2c,
    /// `kubernetes.io/ws`: WebSocket over HTTP/1.1.
    WebSocket,
}

/// Whether a field holds its type's default, which its serialized form leaves out.
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// JSON maps need string keys; clusters travel as a list of `(key, cluster)` pairs instead.
mod cluster_map {
    use super::{Cluster, ClusterKey};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub(super) fn serialize<S: Serializer>(
        map: &BTreeMap<ClusterKey, Cluster>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<ClusterKey, Cluster>, D::Error> {
        Ok(Vec::<(ClusterKey, Cluster)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::mesh::{CaptureExclusions, MeshConfig, MtlsMode, Workload};
    use super::*;

    /// `items` when every optional field is to be set, else none.
    fn only_if<T>(all_set: bool, items: Vec<T>) -> Vec<T> {
        if all_set { items } else { Vec::new() }
    }

    fn rule(all_set: bool) -> HttpRule {
        let filters = || {
            vec![HttpFilter::RequestHeaderModifier(HeaderModifier {
                set: vec![("x-a".into(), "b".into())],
                ..HeaderModifier::default()
            })]
        };
        HttpRule {
            name: all_set.then(|| "rule".into()),
            matches: vec![HttpMatch {
                path: PathMatch::Prefix("/api".into()),
                headers: only_if(
                    all_set,
                    vec![HeaderMatch {
                        name: "x-r".into(),
                        value: StringMatch::Exact("v".into()),
                    }],
                ),
                query_params: only_if(
                    all_set,
                    vec![QueryParamMatch {
                        name: "q".into(),
                        value: StringMatch::RegularExpression("^a".into()),
                    }],
                ),
                method: all_set.then(|| "GET".into()),
            }],
            filters: only_if(all_set, filters()),
            backends: vec![WeightedBackend {
                weight: 1,
                target: BackendTarget::Cluster(ClusterKey {
                    namespace: "shop".into(),
                    name: "cart".into(),
                    port: 80,
                }),
                filters: only_if(all_set, filters()),
            }],
            timeouts: Timeouts {
                request: all_set.then(|| Duration::from_secs(10)),
                backend_request: None,
            },
            retry: all_set.then(|| Retry {
                codes: vec![503],
                attempts: 2,
                backoff: None,
            }),
        }
    }

    fn config(all_set: bool) -> ProxyConfig {
        ProxyConfig {
            version: 7,
            gateways: vec![GatewayConfig {
                gateway: ObjectRef {
                    namespace: "shop".into(),
                    name: "web".into(),
                },
                addresses: vec![IpAddr::from([127, 0, 0, 1])],
                ports: vec![PortConfig {
                    port: 80,
                    protocol: ListenerProtocol::Http,
                    listeners: vec![ListenerConfig {
                        name: "http".into(),
                        hostname: all_set.then(|| "*.example.com".into()),
                        tls: None,
                        http_routes: vec![HttpRoute {
                            route: RouteRef {
                                kind: "HTTPRoute".into(),
                                namespace: "shop".into(),
                                name: "r".into(),
                            },
                            creation_timestamp: "2026-01-01T00:00:00Z".into(),
                            hostnames: only_if(all_set, vec!["a.example.com".into()]),
                            rules: vec![rule(all_set)],
                        }],
                    }],
                }],
                backend_client_certificate: None,
            }],
            clusters: BTreeMap::new(),
        }
    }

    #[test]
    fn defaults_are_left_out_and_read_back() {
        let sparse = serde_json::to_string(&config(false)).unwrap();
        for absent in [
            "\"hostname\"",
            "\"tls\"",
            "\"hostnames\"",
            "\"name\":null",
            "\"headers\"",
            "\"query_params\"",
            "\"method\"",
            "\"filters\"",
            "\"timeouts\"",
            "\"retry\"",
            "\"backend_client_certificate\"",
        ] {
            assert!(!sparse.contains(absent), "{absent} in {sparse}");
        }
        for all_set in [false, true] {
            let config = config(all_set);
            let json = serde_json::to_vec(&config).unwrap();
            let decoded: ProxyConfig = serde_json::from_slice(&json).unwrap();
            assert_eq!(decoded, config, "all_set: {all_set}");
        }
        let full = serde_json::to_string(&config(true)).unwrap();
        assert!(full.contains("\"query_params\"") && full.contains("\"retry\""));
    }

    #[test]
    fn mesh_defaults_are_left_out_and_read_back() {
        let workload = |all_set: bool| Workload {
            pod: ObjectRef {
                namespace: "shop".into(),
                name: "cart-0".into(),
            },
            ip: IpAddr::from([198, 18, 0, 2]),
            service_account: "default".into(),
            node: all_set.then(|| "node-a".into()),
            netns: all_set.then(|| "pod-cart".into()),
            captured: true,
            mtls: MtlsMode::Strict,
            capture: CaptureExclusions {
                outbound_ports: only_if(all_set, vec![5432]),
                ..CaptureExclusions::default()
            },
        };
        let mesh = MeshConfig {
            version: 3,
            trust_domain: "cluster.local".into(),
            workloads: vec![workload(false), workload(true)],
            ..MeshConfig::default()
        };
        let json = serde_json::to_string(&mesh).unwrap();
        assert_eq!(json.matches("\"node\"").count(), 1, "{json}");
        assert_eq!(json.matches("\"capture\"").count(), 1, "{json}");
        let decoded: MeshConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, mesh);
    }
}

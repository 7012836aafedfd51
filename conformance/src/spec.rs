//! The `cases.yaml` format of the corpus (see INDEX.md), as typed data.
//!
//! Unknown fields are ignored on purpose: the corpus carries prose (`note`, `status_notes`) and
//! fields for profiles this harness does not drive; every field the harness acts on is typed here.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// One test folder's `cases.yaml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TestSpec {
    pub test: String,
    pub profile: String,
    pub profiles_matching: Vec<String>,
    pub level: String,
    pub provisional: bool,
    pub features: Vec<String>,
    pub description: String,
    pub gateway: Option<GatewayRef>,
    pub extra_gateways: Vec<GatewayRef>,
    pub status_expectations: Vec<Check>,
    pub actions: Vec<Action>,
    pub cases: Vec<Case>,
}

/// `{name, namespace}` plus the primary Gateway's first listener port.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct GatewayRef {
    pub name: String,
    pub namespace: String,
    pub first_listener_port: Option<u16>,
}

/// `{kind, name, namespace}` (namespace absent for cluster-scoped objects).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ObjRef {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub group: Option<String>,
}

/// `{type, status, reason}`; omitted status/reason match anything.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: Option<String>,
    pub reason: Option<String>,
}

/// An expected listener entry of `gateway_listeners` / `listenerset_listeners`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListenerExpect {
    pub name: String,
    #[serde(rename = "supportedKinds")]
    pub supported_kinds: Option<Vec<String>>,
    #[serde(rename = "attachedRoutes")]
    pub attached_routes: Option<i64>,
    pub conditions: Vec<Condition>,
}

/// An expected `status.parents` entry of `route_parents`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ParentExpect {
    #[serde(rename = "parentRef")]
    pub parent_ref: ObjRef,
    #[serde(rename = "controllerName")]
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

/// One `status_expectations` entry; which fields apply depends on `check`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Check {
    pub check: String,
    pub after_action: Option<usize>,
    pub after_step: Option<usize>,
    pub namespaces: Vec<String>,
    pub gateway: Option<ObjRef>,
    pub listenerset: Option<ObjRef>,
    pub routes: Vec<ObjRef>,
    /// A listener name or a list of names.
    pub listener: Option<Value>,
    pub use_port: Option<bool>,
    pub listeners_ready: Option<bool>,
    pub route: Option<ObjRef>,
    pub parent: Option<ObjRef>,
    pub condition: Option<Condition>,
    pub namespace_required: Option<bool>,
    pub contains: Vec<ParentExpect>,
    pub exact: bool,
    pub listeners: Vec<ListenerExpect>,
    pub min: Option<u32>,
    pub count: Option<i64>,
    pub include_spec_addresses: Vec<usize>,
    pub exclude_spec_addresses: Vec<usize>,
    pub gatewayclass: Option<String>,
    pub object: Option<ObjRef>,
    pub immediate: bool,
    pub generation_changed: bool,
    pub policy: Option<ObjRef>,
    pub ancestor: Option<ObjRef>,
    pub field: Option<String>,
    pub kinds: Vec<String>,
}

/// A mutation performed mid-test.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Action {
    pub after_case: Option<usize>,
    pub after_step: Option<usize>,
    pub patch: Option<Patch>,
    pub delete: Option<ObjRef>,
    /// Prose setup step (e.g. filling manual EndpointSlices with pod IPs).
    pub setup: Option<String>,
    pub name: Option<String>,
    pub steps: Vec<String>,
}

/// A patch of one object.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Patch {
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// Dotted path → new value.
    pub set: BTreeMap<String, Value>,
    pub append_listener: Option<Value>,
    pub keep_only_listeners: Option<Vec<String>>,
    pub remove_address: Option<String>,
}

/// One request/expectation entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Case {
    /// `distribution`, `repeated`, `websocket`; absent = a plain request.
    pub kind: Option<String>,
    pub count: Option<u32>,
    pub name: Option<String>,
    pub group: Option<String>,
    /// Overrides the target Gateway: `{name, namespace}` or just a name.
    pub gateway: Option<CaseGateway>,
    pub request: Request,
    pub expect: Expect,
}

/// A per-case Gateway: a full reference or a bare name.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum CaseGateway {
    Name(String),
    Ref(GatewayRef),
}

impl TestSpec {
    /// Resolves a per-case Gateway; a bare name takes the namespace of the test's Gateway of
    /// that name (primary or extra), else the primary Gateway's namespace.
    pub fn case_gateway(&self, case: &Case) -> Option<GatewayRef> {
        match &case.gateway {
            None => self.gateway.clone(),
            Some(CaseGateway::Ref(r)) => Some(r.clone()),
            Some(CaseGateway::Name(name)) => {
                let known = self
                    .gateway
                    .iter()
                    .chain(self.extra_gateways.iter())
                    .find(|g| &g.name == name);
                let namespace = known
                    .or(self.gateway.as_ref())
                    .map(|g| g.namespace.clone())
                    .unwrap_or_else(|| "gateway-conformance-infra".into());
                Some(GatewayRef {
                    name: name.clone(),
                    namespace,
                    first_listener_port: None,
                })
            }
        }
    }
}

/// What to send.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Request {
    /// Mesh cases: the client pod, e.g. `echo-v1 pod (app=echo,version=v1) in NAMESPACE`.
    pub from: Option<String>,
    pub path: String,
    pub host: Option<String>,
    pub method: Option<String>,
    pub port: Option<u16>,
    pub scheme: Option<String>,
    pub protocol: Option<String>,
    pub sni: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub echo_set_response_headers: BTreeMap<String, String>,
    pub trust_ca_secret: Option<String>,
    pub trust_ca_configmap: Option<String>,
    pub client_cert_secret: Option<String>,
    pub follow_redirects: Option<bool>,
    pub add_request_id_query: bool,
    pub fresh_uuid_per_attempt: bool,
    pub entropy: Option<String>,
    pub origin: Option<String>,
}

/// What must come back.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Expect {
    pub status: Option<StatusSet>,
    pub backend: Option<String>,
    pub namespace: Option<String>,
    pub answered_by_gateway: bool,
    pub request_seen_by_backend: Option<SeenByBackend>,
    pub response: Option<ResponseExpect>,
    pub redirect: Option<RedirectExpect>,
    pub expect_failure: bool,
    pub connection_fails: bool,
    pub connection_rejected: bool,
    pub client_cert_requested: bool,
    pub mirrored_to: Vec<MirrorExpect>,
    pub weights: BTreeMap<String, f64>,
    pub distribution: Option<DistributionSpec>,
    pub websocket_exchange: Vec<WsStep>,
    pub pod_name_starts_with_header: Option<String>,
    pub grpc_code: Option<Value>,
}

/// `status: 200` or `status: [500, 502]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum StatusSet {
    One(u16),
    Any(Vec<u16>),
}

impl StatusSet {
    pub fn codes(&self) -> Vec<u16> {
        match self {
            StatusSet::One(c) => vec![*c],
            StatusSet::Any(c) => c.clone(),
        }
    }
}

/// `request_seen_by_backend`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SeenByBackend {
    pub path: Option<String>,
    pub host: Option<String>,
    pub method: Option<String>,
    pub namespace: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub absent_headers: Vec<String>,
    pub header_count: BTreeMap<String, usize>,
    pub tls: Option<TlsExpect>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TlsExpect {
    pub server_name: Option<String>,
    pub peer_certificates_contain: Option<String>,
}

/// `response` header checks.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ResponseExpect {
    pub headers: BTreeMap<String, String>,
    pub headers_one_of: BTreeMap<String, Vec<String>>,
    pub absent_headers: Vec<String>,
    pub ignore_whitespace: bool,
}

/// `redirect` Location checks.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RedirectExpect {
    pub status: Option<u16>,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct MirrorExpect {
    pub backend: String,
    pub namespace: String,
    pub percent: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DistributionSpec {
    pub total_requests: Option<usize>,
    pub concurrency: Option<usize>,
    pub tolerance: Option<f64>,
    pub tolerance_stddevs: Option<f64>,
    pub max_attempts: Option<usize>,
    pub attempts: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct WsStep {
    pub send_text: Option<String>,
    pub receive_text: Option<String>,
    pub send_binary: Option<Vec<u8>>,
    pub receive_binary: Option<Vec<u8>>,
}

/// Parses one `cases.yaml` text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> anyhow::Result<TestSpec> {
    serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
}

/// Reads `<dir>/cases.yaml`.
pub fn load(dir: &Path) -> anyhow::Result<TestSpec> {
    let path = dir.join("cases.yaml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    parse(&text, &path.display().to_string())
}

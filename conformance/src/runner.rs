//! Runs one test folder: manifests → pods/EndpointSlices → Strait → status checks, actions and
//! request cases, with the timing rules of INDEX.md.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::Value;

use crate::client::{self, Outgoing, Protocol, TlsClient};
use crate::cluster::{self, Cluster, DataStore};
use crate::expect::{self, Echo, Sent};
use crate::spec::{Action, Case, Check, TestSpec};
use crate::status::{self, CheckState, World};
use crate::target::Target;

/// Features a test may need for it to run: what Strait claims in `GatewayClass.status.supportedFeatures`
/// (one list, owned by the compiler, as the upstream suite infers features from that status).
pub const SUPPORTED_FEATURES: &[&str] = strait_compile::SUPPORTED_FEATURES;

const CONSECUTIVE: usize = 3;
const MAX_TIME_TO_CONSISTENCY: Duration = Duration::from_secs(30);
const MISS_PAUSE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(100);

/// The result of one test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

/// Shared across tests of one run.
pub struct Run {
    pub corpus: PathBuf,
    pub work: PathBuf,
    pub generated: Vec<Value>,
    pub cluster: Cluster,
    pub features: Vec<String>,
}

/// Why `spec` cannot run here, if it cannot.
pub fn skip_reason(spec: &TestSpec, features: &[String]) -> Option<String> {
    if let Some(reason) = missing_features(spec, features) {
        return Some(reason);
    }
    if spec.profile.starts_with("MESH") {
        return Some("mesh tests run on the netns topology (crate::mesh)".into());
    }
    for c in &spec.status_expectations {
        if !status::SUPPORTED_CHECKS.contains(&c.check.as_str()) {
            return Some(format!("status check `{}` is not supported", c.check));
        }
    }
    for a in &spec.actions {
        if !a.steps.is_empty() {
            return Some("actions described only as prose steps".into());
        }
    }
    for c in &spec.cases {
        if let Some(p) = &c.request.protocol
            && !matches!(p.as_str(), "H2C_PRIOR_KNOWLEDGE" | "H2")
        {
            return Some(format!("request protocol {p} is not supported"));
        }
        if let Some(k) = &c.kind
            && !matches!(k.as_str(), "distribution" | "repeated" | "websocket")
        {
            return Some(format!("case kind {k} is not supported"));
        }
    }
    None
}

/// The features `spec` needs that are not supported, as a skip reason.
pub fn missing_features(spec: &TestSpec, features: &[String]) -> Option<String> {
    let missing: Vec<&String> = spec
        .features
        .iter()
        .filter(|f| !features.contains(f))
        .collect();
    (!missing.is_empty()).then(|| format!("unsupported features {missing:?}"))
}

impl Run {
    /// Runs one test folder.
    pub async fn run_test(&mut self, spec: &TestSpec, dir: &Path) -> Outcome {
        if let Some(reason) = skip_reason(spec, &self.features) {
            return Outcome::Skip(reason);
        }
        match self.run_inner(spec, dir).await {
            Ok(()) => Outcome::Pass,
            Err(e) => Outcome::Fail(format!("{e:#}")),
        }
    }

    async fn run_inner(&mut self, spec: &TestSpec, dir: &Path) -> anyhow::Result<()> {
        let mut docs = Vec::new();
        if spec.profile.starts_with("GATEWAY") {
            let base = self.corpus.join("base/gateway/manifests.yaml");
            let text = std::fs::read_to_string(&base)
                .map_err(|e| anyhow::anyhow!("{}: {e}", base.display()))?;
            docs.extend(cluster::parse_docs(&text, &base.display().to_string())?);
        }
        let own = dir.join("manifests.yaml");
        if own.exists() {
            let text = std::fs::read_to_string(&own)?;
            docs.extend(cluster::parse_docs(&text, &own.display().to_string())?);
        }
        for g in &self.generated {
            let exists = docs.iter().any(|d| {
                cluster::kind(d) == cluster::kind(g)
                    && cluster::name(d) == cluster::name(g)
                    && cluster::namespace(d) == cluster::namespace(g)
            });
            if !exists {
                docs.push(g.clone());
            }
        }
        if !docs.iter().any(|d| {
            cluster::kind(d) == "GatewayClass" && cluster::name(d) == cluster::GATEWAY_CLASS
        }) {
            docs.push(cluster::gateway_class());
        }
        cluster::substitute(&mut docs);

        let work = self.work.join(&spec.test);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let mut store = DataStore::default();
        store.absorb(&docs);
        self.cluster.sync(&docs, &store).await?;

        let mut state = TestState {
            applied: docs.clone(),
            docs,
            store,
            work,
            done: vec![false; spec.actions.len()],
            gen_before: HashMap::new(),
        };
        state.write(&self.cluster)?;
        let target = Target::start(&state.work).await?;
        let result = self.drive(spec, &mut state, &target).await;
        target.shutdown().await;
        match result {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&state.work);
                Ok(())
            }
            // Keep the manifests for debugging.
            Err(e) => Err(anyhow::anyhow!(
                "{e:#} (manifests kept in {})",
                state.work.display()
            )),
        }
    }

    async fn drive(
        &self,
        spec: &TestSpec,
        st: &mut TestState,
        target: &Target,
    ) -> anyhow::Result<()> {
        for check in spec
            .status_expectations
            .iter()
            .filter(|c| c.after_action.is_none())
        {
            run_check(check, target, None, &st.applied).await?;
        }
        // Checks after actions that are not tied to a case.
        for check in spec.status_expectations.iter() {
            let Some(k) = check.after_action else {
                continue;
            };
            if spec
                .actions
                .get(k - 1)
                .is_some_and(|a| a.after_case.is_some())
            {
                continue;
            }
            for i in 0..k.min(spec.actions.len()) {
                if !st.done[i] && spec.actions[i].after_case.is_none() {
                    self.perform(spec, i, st, target).await?;
                }
            }
            let before = check_object_key(check).and_then(|key| st.gen_before.get(&key).copied());
            run_check(check, target, before, &st.applied).await?;
        }
        for i in 0..spec.actions.len() {
            if !st.done[i] && spec.actions[i].after_case.is_none() {
                self.perform(spec, i, st, target).await?;
            }
        }
        for (n, case) in spec.cases.iter().enumerate() {
            self.run_case(spec, case, st, target)
                .await
                .map_err(|e| anyhow::anyhow!("case {} ({}): {e}", n + 1, case_label(case)))?;
            for i in 0..spec.actions.len() {
                if spec.actions[i].after_case == Some(n + 1) && !st.done[i] {
                    self.perform(spec, i, st, target).await?;
                    for check in spec
                        .status_expectations
                        .iter()
                        .filter(|c| c.after_action == Some(i + 1))
                    {
                        let before = check_object_key(check)
                            .and_then(|key| st.gen_before.get(&key).copied());
                        run_check(check, target, before, &st.applied).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn perform(
        &self,
        spec: &TestSpec,
        index: usize,
        st: &mut TestState,
        target: &Target,
    ) -> anyhow::Result<()> {
        // Remember generations the checks after this action compare against.
        for check in spec
            .status_expectations
            .iter()
            .filter(|c| c.after_action == Some(index + 1))
        {
            if let Some(key) = check_object_key(check)
                && let Some(obj) = target.object(&key.0, &key.1, &key.2)
            {
                let generation = obj
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                st.gen_before.insert(key, generation);
            }
        }
        apply_action(&spec.actions[index], &mut st.docs, &self.cluster)
            .map_err(|e| anyhow::anyhow!("action {}: {e}", index + 1))?;
        st.done[index] = true;
        st.write(&self.cluster)?;
        target.reload().await
    }

    async fn run_case(
        &self,
        spec: &TestSpec,
        case: &Case,
        st: &TestState,
        target: &Target,
    ) -> Result<(), String> {
        let gw = spec.case_gateway(case).ok_or("case has no gateway")?;
        let ip = gateway_ip(target, &gw.namespace, &gw.name).await?;
        let port = match case.request.port {
            Some(p) => p,
            None => default_port(spec, target, &gw.namespace, &gw.name)
                .ok_or("cannot tell which port to use")?,
        };
        let ctx = CaseCtx {
            ip,
            port,
            case,
            store: &st.store,
        };
        let expect = &case.expect;
        match case.kind.as_deref() {
            Some("websocket") => {
                let host = case
                    .request
                    .host
                    .clone()
                    .unwrap_or_else(|| host_with_port(&ip.to_string(), port, "http"));
                eventually(|| async {
                    client::websocket(
                        ip,
                        port,
                        &host,
                        &case.request.path,
                        case.request.origin.as_deref(),
                        &expect.websocket_exchange,
                    )
                    .await
                })
                .await
            }
            Some("distribution") => self.distribution(&ctx).await,
            Some("repeated") => repeated(&ctx).await,
            _ if expect.connection_fails => match ctx.send(None).await {
                Err(e) if client::is_client_side_rejection(&e) => {
                    Err(format!("the harness refused the server certificate: {e}"))
                }
                Err(_) => Ok(()),
                Ok((_, r)) => Err(format!("expected the connection to fail, got {}", r.status)),
            },
            _ if expect.connection_rejected => {
                let tls = ctx.tls()?.ok_or("connection_rejected needs TLS")?;
                eventually(|| async {
                    match client::handshake(ip, port, &tls).await {
                        Err(e) if client::is_client_side_rejection(&e) => Err(e),
                        Err(_) => Ok(()),
                        Ok(_) => Err("TLS handshake succeeded".into()),
                    }
                })
                .await
            }
            _ if expect.client_cert_requested => {
                let tls = ctx.tls()?.ok_or("client_cert_requested needs TLS")?;
                eventually(|| async {
                    match client::handshake(ip, port, &tls).await {
                        Ok(true) => Ok(()),
                        Ok(false) => Err("server did not request a client certificate".into()),
                        Err(e) => Err(e),
                    }
                })
                .await
            }
            _ if expect.expect_failure => expect_failure(&ctx).await,
            _ => {
                let expect = resolve_secret_pems(expect, target)?;
                let request_id = uuid::Uuid::new_v4().to_string();
                eventually(|| async {
                    let id = if case.request.fresh_uuid_per_attempt {
                        uuid::Uuid::new_v4().to_string()
                    } else {
                        request_id.clone()
                    };
                    let (sent, resp) = ctx.send(Some(&id)).await?;
                    expect::check(&expect, &sent, &resp)
                })
                .await?;
                if !expect.mirrored_to.is_empty() {
                    self.check_mirrors(&ctx, &request_id).await?;
                }
                Ok(())
            }
        }
    }

    async fn check_mirrors(&self, ctx: &CaseCtx<'_>, request_id: &str) -> Result<(), String> {
        let expect = &ctx.case.expect;
        let path = ctx.path(Some(request_id));
        if expect.mirrored_to.iter().any(|m| m.percent.is_some()) {
            return self.percentage_mirror(ctx).await;
        }
        let deadline = Instant::now() + MAX_TIME_TO_CONSISTENCY;
        for m in &expect.mirrored_to {
            loop {
                let seen = self
                    .cluster
                    .pods_of_app(&m.namespace, &m.backend)
                    .any(|p| p.server.as_ref().is_some_and(|s| s.saw_request(&path)));
                if seen {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "request {path} was not mirrored to {}/{}",
                        m.namespace, m.backend
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    fn mirror_count(&self, ns: &str, app: &str, path: &str) -> usize {
        let needle = format!("Echoing back request made to {path} to client");
        self.cluster
            .pods_of_app(ns, app)
            .filter_map(|p| p.server.as_ref())
            .map(|s| s.log().iter().filter(|l| l.starts_with(&needle)).count())
            .sum()
    }

    async fn percentage_mirror(&self, ctx: &CaseCtx<'_>) -> Result<(), String> {
        let expect = &ctx.case.expect;
        let dist = expect.distribution.clone().unwrap_or_default();
        let total = dist.total_requests.unwrap_or(500);
        let attempts = dist.attempts.or(dist.max_attempts).unwrap_or(5);
        let stddevs = dist.tolerance_stddevs.unwrap_or(3.0);
        let path = ctx.path(None);
        let mut last = String::new();
        for _ in 0..attempts {
            let before: Vec<usize> = expect
                .mirrored_to
                .iter()
                .map(|m| self.mirror_count(&m.namespace, &m.backend, &path))
                .collect();
            let results = ctx
                .burst(total, dist.concurrency.unwrap_or(10), false)
                .await;
            let failures = results.iter().filter(|r| r.is_err()).count();
            if failures > 0 {
                last = format!("{failures} of {total} requests failed");
                continue;
            }
            // Mirrors are asynchronous: give them a moment to land.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut ok = true;
            for (m, b) in expect.mirrored_to.iter().zip(before) {
                let got = self.mirror_count(&m.namespace, &m.backend, &path) - b;
                let p = m.percent.unwrap_or(100.0) / 100.0;
                let mean = total as f64 * p;
                let sd = (total as f64 * p * (1.0 - p)).sqrt();
                if (got as f64 - mean).abs() > stddevs * sd.max(1.0) {
                    ok = false;
                    last = format!(
                        "{got} of {total} mirrored to {}, want about {mean:.0}",
                        m.backend
                    );
                }
            }
            if ok {
                return Ok(());
            }
        }
        Err(last)
    }

    async fn distribution(&self, ctx: &CaseCtx<'_>) -> Result<(), String> {
        let expect = &ctx.case.expect;
        let dist = expect.distribution.clone().unwrap_or_default();
        let total = dist.total_requests.unwrap_or(500);
        let attempts = dist.max_attempts.or(dist.attempts).unwrap_or(10);
        let tolerance = dist.tolerance.unwrap_or(0.05);
        let mut last = String::new();
        for _ in 0..attempts {
            let results = ctx.burst(total, dist.concurrency.unwrap_or(10), true).await;
            let mut counts = BTreeMap::new();
            let mut failed = None;
            for r in results {
                match r {
                    Ok(pod) => *counts.entry(expect::backend_of_pod(&pod)).or_insert(0) += 1,
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                last = e;
                tokio::time::sleep(MISS_PAUSE).await;
                continue;
            }
            match expect::check_distribution(&counts, &expect.weights, tolerance) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

struct TestState {
    docs: Vec<Value>,
    /// The manifests as first applied (placeholders substituted), before any action.
    applied: Vec<Value>,
    store: DataStore,
    work: PathBuf,
    done: Vec<bool>,
    gen_before: HashMap<(String, String, String), i64>,
}

impl TestState {
    /// Writes manifests plus controller-made EndpointSlices.
    fn write(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let mut all = self.docs.clone();
        all.extend(cluster.endpoint_slices(&self.docs));
        cluster::write_dir(&self.work, &all)
    }
}

fn case_label(case: &Case) -> String {
    case.name.clone().unwrap_or_else(|| {
        format!(
            "{} {}{}",
            case.request.method.as_deref().unwrap_or("GET"),
            case.request.host.as_deref().unwrap_or(""),
            case.request.path
        )
    })
}

/// `gateway_addresses` compares against `spec.addresses` as first applied (the suite reads them
/// before its patches remove entries).
fn applied_spec_addresses(check: &Check, applied: &[Value]) -> Option<Vec<Value>> {
    let gateway = check.gateway.as_ref()?;
    let doc = applied.iter().find(|d| {
        cluster::kind(d) == "Gateway"
            && cluster::name(d) == gateway.name
            && cluster::namespace(d) == gateway.namespace
    })?;
    doc.pointer("/spec/addresses")?.as_array().cloned()
}

fn check_object_key(check: &Check) -> Option<(String, String, String)> {
    let o = check.object.as_ref()?;
    Some((o.kind.clone(), o.namespace.clone(), o.name.clone()))
}

/// Polls `check` every 100 ms until it passes or its timeout expires.
pub async fn run_check(
    check: &Check,
    world: &dyn World,
    generation_before: Option<i64>,
    applied: &[Value],
) -> anyhow::Result<()> {
    let mut state = CheckState {
        generation_before,
        applied_spec_addresses: applied_spec_addresses(check, applied),
        ..CheckState::default()
    };
    let deadline = Instant::now() + status::timeout(check);
    loop {
        match status::evaluate(check, world, &mut state) {
            Ok(()) => return Ok(()),
            Err(e) => {
                if status::is_single_read(check) || Instant::now() > deadline {
                    anyhow::bail!("status check {}: {e}", check.check);
                }
            }
        }
        // Upstream polls this one every second and needs two empty reads in a row.
        let interval = if check.check == "route_no_accepted_parents" {
            Duration::from_secs(1)
        } else {
            POLL
        };
        tokio::time::sleep(interval).await;
    }
}

/// Applies one action to the in-memory manifests.
pub fn apply_action(
    action: &Action,
    docs: &mut Vec<Value>,
    cluster: &Cluster,
) -> Result<(), String> {
    if let Some(p) = &action.patch {
        let doc = docs
            .iter_mut()
            .find(|d| {
                cluster::kind(d) == p.kind
                    && cluster::name(d) == p.name
                    && p.namespace
                        .as_deref()
                        .is_none_or(|ns| cluster::namespace(d) == ns)
            })
            .ok_or_else(|| format!("{} {} not found", p.kind, p.name))?;
        for (path, value) in &p.set {
            set_path(doc, path, value.clone())
                .map_err(|e| format!("{} {}: {e}", p.kind, p.name))?;
        }
        if let Some(l) = &p.append_listener {
            match doc
                .pointer_mut("/spec/listeners")
                .and_then(Value::as_array_mut)
            {
                Some(list) => list.push(l.clone()),
                None => return Err(format!("{} {} has no spec.listeners", p.kind, p.name)),
            }
        }
        if let Some(which) = &p.remove_address {
            let list = doc
                .pointer_mut("/spec/addresses")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| format!("{} {} has no spec.addresses", p.kind, p.name))?;
            let index = cluster::address_to_remove(which, list)
                .ok_or_else(|| format!("cannot tell which address {which:?} means"))?;
            list.remove(index);
        }
        if let Some(keep) = &p.keep_only_listeners
            && let Some(list) = doc
                .pointer_mut("/spec/listeners")
                .and_then(Value::as_array_mut)
        {
            list.retain(|l| {
                l.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| keep.iter().any(|k| k == n))
            });
        }
    }
    if let Some(d) = &action.delete {
        let before = docs.len();
        docs.retain(|x| {
            !(cluster::kind(x) == d.kind
                && cluster::name(x) == d.name
                && cluster::namespace(x) == d.namespace)
        });
        if docs.len() == before {
            return Err(format!("{} {}/{} not found", d.kind, d.namespace, d.name));
        }
    }
    if let Some(setup) = &action.setup {
        let deployment = setup
            .split(" of the ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| format!("cannot interpret setup step: {setup}"))?;
        if cluster::fill_manual_slices(docs, cluster, deployment) == 0 {
            return Err(format!("no EndpointSlice to fill with {deployment} pods"));
        }
    }
    Ok(())
}

/// Sets a dotted path such as `spec.rules[0].backendRefs[0].name`.
pub fn set_path(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let mut cur = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (
                k,
                Some(
                    rest.trim_end_matches(']')
                        .parse::<usize>()
                        .map_err(|_| format!("bad index in {path}"))?,
                ),
            ),
            None => (*part, None),
        };
        let last = i + 1 == parts.len();
        let obj = cur
            .as_object_mut()
            .ok_or_else(|| format!("{path}: not an object at {key}"))?;
        if last && index.is_none() {
            obj.insert(key.to_string(), value);
            return Ok(());
        }
        let next = obj
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
        cur = match index {
            Some(n) => {
                let arr = next
                    .as_array_mut()
                    .ok_or_else(|| format!("{path}: {key} is not a list"))?;
                let item = arr
                    .get_mut(n)
                    .ok_or_else(|| format!("{path}: index {n} out of range"))?;
                if last {
                    *item = value;
                    return Ok(());
                }
                item
            }
            None => next,
        };
    }
    Ok(())
}

async fn gateway_ip(world: &Target, ns: &str, name: &str) -> Result<IpAddr, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(addr) = world
            .object("Gateway", ns, name)
            .as_ref()
            .and_then(status::gateway_address)
            && let Ok(ip) = addr.parse()
        {
            return Ok(ip);
        }
        if Instant::now() > deadline {
            return Err(format!("Gateway {ns}/{name} has no usable address"));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The port a case without `port` uses for this Gateway.
fn default_port(spec: &TestSpec, world: &Target, ns: &str, name: &str) -> Option<u16> {
    let gw = world.object("Gateway", ns, name)?;
    let listeners = gw.pointer("/spec/listeners")?.as_array()?.clone();
    let port_of = |l: &Value| l.get("port").and_then(Value::as_u64).map(|p| p as u16);
    for check in &spec.status_expectations {
        if check.check != "gateway_and_routes_accepted" && check.check != "gateway_addresses" {
            continue;
        }
        let Some(g) = &check.gateway else { continue };
        if g.name != name || g.namespace != ns {
            continue;
        }
        let listener = match &check.listener {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(String::from),
            _ => None,
        };
        if let Some(l) = listener
            && let Some(entry) = listeners
                .iter()
                .find(|x| x.get("name").and_then(Value::as_str) == Some(l.as_str()))
        {
            return port_of(entry);
        }
    }
    if let Some(g) = &spec.gateway
        && g.name == name
        && g.namespace == ns
        && let Some(p) = g.first_listener_port
    {
        return Some(p);
    }
    listeners.first().and_then(port_of)
}

fn host_with_port(host: &str, port: u16, scheme: &str) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    if port == default {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

struct CaseCtx<'a> {
    ip: IpAddr,
    port: u16,
    case: &'a Case,
    store: &'a DataStore,
}

impl CaseCtx<'_> {
    fn scheme(&self) -> &str {
        self.case.request.scheme.as_deref().unwrap_or("http")
    }

    /// The path to send, with the request id added/substituted.
    fn path(&self, id: Option<&str>) -> String {
        let r = &self.case.request;
        let mut path = r.path.clone();
        if let Some(id) = id {
            path = path.replace("<fresh-uuid>", id).replace("<uuid>", id);
            if r.add_request_id_query {
                let sep = if path.contains('?') { '&' } else { '?' };
                path = format!("{path}{sep}gateway-api-conformance-request-id={id}");
            }
        }
        path
    }

    fn tls(&self) -> Result<Option<TlsClient>, String> {
        let r = &self.case.request;
        let https = self.scheme() == "https"
            || r.protocol.as_deref() == Some("H2")
            || r.sni.is_some()
            || r.trust_ca_secret.is_some();
        if !https {
            return Ok(None);
        }
        let mut trust = Vec::new();
        let pem = |kind: &str, reference: &str, key: &str| -> Result<String, String> {
            let (ns, name) = reference
                .split_once('/')
                .ok_or_else(|| format!("bad reference {reference}"))?;
            self.store
                .get(kind, ns, name, key)
                .ok_or_else(|| format!("{kind} {reference} has no {key}"))
        };
        if let Some(s) = &r.trust_ca_secret {
            trust.extend(strait_echo::pem_blocks(
                &pem("Secret", s, "tls.crt")?,
                "CERTIFICATE",
            ));
        }
        if let Some(c) = &r.trust_ca_configmap {
            trust.extend(strait_echo::pem_blocks(
                &pem("ConfigMap", c, "ca.crt")?,
                "CERTIFICATE",
            ));
        }
        let client_cert = match &r.client_cert_secret {
            Some(s) => {
                let chain = strait_echo::pem_blocks(&pem("Secret", s, "tls.crt")?, "CERTIFICATE")
                    .into_iter()
                    .map(rustls::pki_types::CertificateDer::from)
                    .collect();
                let key_pem = pem("Secret", s, "tls.key")?;
                let key = ["PRIVATE KEY", "EC PRIVATE KEY"]
                    .iter()
                    .find_map(|l| strait_echo::pem_blocks(&key_pem, l).into_iter().next())
                    .ok_or_else(|| format!("Secret {s}: no private key"))?;
                let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
                Some((chain, Arc::new(key)))
            }
            None => None,
        };
        let sni = r
            .sni
            .clone()
            .or_else(|| r.host.clone())
            .unwrap_or_else(|| self.ip.to_string());
        Ok(Some(TlsClient {
            sni,
            trust: trust.into_iter().map(Into::into).collect(),
            client_cert,
        }))
    }

    fn outgoing(&self, id: Option<&str>, jitter: bool) -> Result<(Sent, Outgoing), String> {
        let r = &self.case.request;
        let scheme = self.scheme().to_string();
        let path = self.path(id);
        let method = r.method.clone().unwrap_or_else(|| "GET".into());
        let host_header = r
            .host
            .clone()
            .unwrap_or_else(|| host_with_port(&self.ip.to_string(), self.port, &scheme));
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let set: Vec<String> = r
            .echo_set_response_headers
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        headers.push(("X-Echo-Set-Header".into(), set.join(",")));
        if jitter && rand::rng().random_bool(0.5) {
            headers.push((
                "X-Jitter".into(),
                rand::rng().random_range(0..10000).to_string(),
            ));
        }
        let protocol = match r.protocol.as_deref() {
            Some("H2C_PRIOR_KNOWLEDGE") => Protocol::H2cPriorKnowledge,
            Some("H2") => Protocol::H2,
            _ => Protocol::Http1,
        };
        let sent = Sent {
            method: method.clone(),
            path: path.clone(),
            host: r.host.clone(),
            headers: r.headers.clone(),
            scheme,
            request_id: id.map(String::from),
        };
        let out = Outgoing {
            ip: self.ip,
            port: self.port,
            host_header,
            path,
            method,
            headers,
            protocol,
            tls: self.tls()?,
        };
        Ok((sent, out))
    }

    async fn send(&self, id: Option<&str>) -> Result<(Sent, client::Received), String> {
        let (sent, out) = self.outgoing(id, false)?;
        let resp = client::send(&out).await?;
        Ok((sent, resp))
    }

    /// `total` requests, `concurrency` at a time; each result is the answering pod or an error.
    async fn burst(
        &self,
        total: usize,
        concurrency: usize,
        jitter: bool,
    ) -> Vec<Result<String, String>> {
        let (sent, _) = match self.outgoing(None, false) {
            Ok(x) => x,
            Err(e) => return vec![Err(e)],
        };
        let mut outs = Vec::with_capacity(total);
        for _ in 0..total {
            match self.outgoing(None, jitter) {
                Ok((_, o)) => outs.push(o),
                Err(e) => return vec![Err(e)],
            }
        }
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let expect = Arc::new(self.case.expect.clone());
        let sent = Arc::new(sent);
        let mut handles = Vec::with_capacity(total);
        for out in outs {
            let sem = sem.clone();
            let expect = expect.clone();
            let sent = sent.clone();
            handles.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
                let resp = client::send(&out).await?;
                // The weights are checked on the aggregate, the rest per response.
                let mut single = (*expect).clone();
                single.backend = None;
                expect::check(&single, &sent, &resp)?;
                Ok(Echo::from_response(&resp, &sent.method).pod)
            }));
        }
        let mut results = Vec::with_capacity(total);
        for h in handles {
            results.push(h.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        results
    }
}

/// Retries `attempt` until it succeeds 3 times in a row, within 30 s, pausing 1 s after a miss.
async fn eventually<F, Fut>(mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + MAX_TIME_TO_CONSISTENCY;
    let mut streak = 0;
    loop {
        match attempt().await {
            Ok(()) => {
                streak += 1;
                if streak >= CONSECUTIVE {
                    return Ok(());
                }
            }
            Err(e) => {
                streak = 0;
                if Instant::now() + MISS_PAUSE > deadline {
                    return Err(e);
                }
                tokio::time::sleep(MISS_PAUSE).await;
            }
        }
    }
}

async fn expect_failure(ctx: &CaseCtx<'_>) -> Result<(), String> {
    let deadline = Instant::now() + MAX_TIME_TO_CONSISTENCY;
    let mut streak = 0;
    let mut last;
    while streak < 5 {
        match ctx.send(None).await {
            Ok((_, r)) if r.status == 200 => return Err("got 200, expected failures".into()),
            Ok((_, r)) if r.status == 408 || r.status == 504 => {
                streak = 0;
                last = format!("status {}", r.status);
            }
            Ok(_) => {
                streak += 1;
                continue;
            }
            Err(e) => {
                streak = 0;
                last = e;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no 5 consecutive failures: {last}"));
        }
        tokio::time::sleep(MISS_PAUSE).await;
    }
    Ok(())
}

async fn repeated(ctx: &CaseCtx<'_>) -> Result<(), String> {
    let count = ctx.case.count.unwrap_or(1);
    let expect = &ctx.case.expect;
    for i in 0..count {
        let (sent, resp) = ctx.send(None).await?;
        let codes = expect
            .status
            .as_ref()
            .map(|s| s.codes())
            .unwrap_or(vec![200]);
        if !expect::status_ok(&codes, resp.status) {
            return Err(format!(
                "request {}: status {}, want {codes:?}",
                i + 1,
                resp.status
            ));
        }
        let echo = Echo::from_response(&resp, &sent.method);
        if let Some(seen) = &expect.request_seen_by_backend {
            expect::check_seen_headers(seen, &echo)
                .map_err(|e| format!("request {}: {e}", i + 1))?;
        }
        if let Some(h) = &expect.pod_name_starts_with_header {
            let want = echo.header(h).unwrap_or_default();
            if want.is_empty() || !echo.pod.starts_with(&want) {
                return Err(format!(
                    "request {}: pod {} does not start with {h}={want:?}",
                    i + 1,
                    echo.pod
                ));
            }
        }
    }
    Ok(())
}

/// Cases name generated material in prose ("PEM of tls.crt in Secret NS/NAME"), since the suite
/// generates fresh keys each run: replace such a reference with the PEM the harness generated.
fn resolve_secret_pems(
    expect: &crate::spec::Expect,
    target: &Target,
) -> Result<crate::spec::Expect, String> {
    let mut expect = expect.clone();
    let Some(wanted) = expect
        .request_seen_by_backend
        .as_mut()
        .and_then(|seen| seen.tls.as_mut())
        .and_then(|tls| tls.peer_certificates_contain.as_mut())
    else {
        return Ok(expect);
    };
    let Some(reference) = wanted.strip_prefix("PEM of ") else {
        return Ok(expect);
    };
    let (key, secret) = reference
        .split_once(" in Secret ")
        .ok_or_else(|| format!("cannot read certificate reference {wanted:?}"))?;
    let (namespace, name) = secret
        .split_once('/')
        .ok_or_else(|| format!("cannot read Secret name in {wanted:?}"))?;
    let object = target
        .object("Secret", namespace, name)
        .ok_or_else(|| format!("Secret {namespace}/{name} not found"))?;
    let encoded = object["data"][key]
        .as_str()
        .ok_or_else(|| format!("Secret {namespace}/{name} has no {key}"))?;
    let pem = strait_echo::base64_decode(encoded)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| format!("Secret {namespace}/{name}: {key} is not base64 PEM"))?;
    *wanted = pem;
    Ok(expect)
}

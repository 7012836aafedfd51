//! Mesh profiles: the corpus replayed on a network-namespace topology.
//!
//! The mesh base manifests become pods in network namespaces ([`strait_testbed`]), both mesh
//! namespaces are enrolled, and each gets a waypoint pod. One `strait standalone` (CA, node
//! proxy, waypoints, in process) serves the whole run; each test adds its manifests, reloads,
//! runs its cases from inside the client pod's namespace with the echo client (as the upstream
//! suite execs into the pod), then removes them again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use strait::mesh::MeshOptions;
use strait::standalone::{Standalone, StandaloneOptions};
use strait_echo::advanced::{EchoResponse, parse_client_output};
use strait_testbed::{Pod, PodSpec, Testbed, TestbedOptions};

use crate::cluster;
use crate::runner::Outcome;
use crate::spec::{Case, TestSpec};

/// The namespaces the base manifests create; both are enrolled.
const MESH_NAMESPACES: &[&str] = &[
    "gateway-conformance-mesh",
    "gateway-conformance-mesh-consumer",
];
const CONSECUTIVE: usize = 3;
const MAX_TIME_TO_CONSISTENCY: Duration = Duration::from_secs(30);
const MISS_PAUSE: Duration = Duration::from_millis(500);

/// The topology and control plane shared by every mesh test of a run.
pub struct MeshWorld {
    testbed: Testbed,
    standalone: Option<Standalone>,
    dir: PathBuf,
}

impl MeshWorld {
    /// Builds the topology from `corpus/base/mesh/manifests.yaml` and starts Strait on it.
    pub async fn start(corpus: &Path, work: &Path) -> anyhow::Result<MeshWorld> {
        let base = corpus.join("base/mesh/manifests.yaml");
        let text = std::fs::read_to_string(&base).with_context(|| format!("{}", base.display()))?;
        let docs = cluster::parse_docs(&text, &base.display().to_string())?;
        let testbed = Testbed::build(
            &docs,
            TestbedOptions {
                enroll: MESH_NAMESPACES.iter().map(|s| s.to_string()).collect(),
                ..TestbedOptions::default()
            },
        )
        .await
        .context("building the mesh topology")?;
        anyhow::ensure!(
            testbed.options().echo_binary.is_some(),
            "the echo client is missing: run `cargo build -p strait-echo` first"
        );
        for namespace in MESH_NAMESPACES {
            testbed
                .add_pod(waypoint_pod(namespace))
                .await
                .with_context(|| format!("waypoint pod in {namespace}"))?;
        }
        let dir = work.join("mesh");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("base.yaml"),
            cluster::write_docs(&testbed.objects())?,
        )?;
        let standalone = Standalone::start(StandaloneOptions {
            dir: dir.clone(),
            port_offset: 0,
            watch: false,
            gateways: false,
            mesh: Some(MeshOptions::all_in_one()),
            config_listen: None,
        })
        .await
        .context("starting strait standalone on the mesh topology")?;
        if let Some(error) = standalone.load_errors().first() {
            anyhow::bail!("mesh base manifests: {error}");
        }
        Ok(MeshWorld {
            testbed,
            standalone: Some(standalone),
            dir,
        })
    }

    /// Runs one mesh test.
    pub async fn run_test(&mut self, spec: &TestSpec, test_dir: &Path) -> Outcome {
        if let Some(reason) = skip_reason(spec) {
            return Outcome::Skip(reason);
        }
        let result = self.run_inner(spec, test_dir).await;
        // Remove the test's manifests whatever happened.
        let _ = std::fs::remove_file(self.dir.join("test.yaml"));
        if let Some(standalone) = &self.standalone {
            let _ = standalone.reload().await;
        }
        match result {
            Ok(()) => Outcome::Pass,
            Err(e) => Outcome::Fail(e),
        }
    }

    async fn run_inner(&mut self, spec: &TestSpec, test_dir: &Path) -> Result<(), String> {
        let own = test_dir.join("manifests.yaml");
        if own.exists() {
            let text =
                std::fs::read_to_string(&own).map_err(|e| format!("{}: {e}", own.display()))?;
            std::fs::write(self.dir.join("test.yaml"), text).map_err(|e| e.to_string())?;
        }
        let standalone = self.standalone.as_ref().ok_or("no control plane")?;
        standalone.reload().await.map_err(|e| format!("{e:#}"))?;
        let errors = standalone.load_errors();
        if !errors.is_empty() {
            return Err(format!("manifests did not load: {}", errors.join("; ")));
        }
        for (i, case) in spec.cases.iter().enumerate() {
            let label = case
                .name
                .clone()
                .unwrap_or_else(|| format!("case {i} {}", case.request.path));
            let result = match case.kind.as_deref() {
                Some("distribution") => self.distribution(case).await,
                _ => self.eventually(case).await,
            };
            result.map_err(|e| format!("{label}: {e}"))?;
        }
        Ok(())
    }

    /// The upstream rule: the expectation must hold for several requests in a row within the
    /// consistency window.
    async fn eventually(&self, case: &Case) -> Result<(), String> {
        let started = Instant::now();
        let mut streak = 0;
        let mut last = String::new();
        while started.elapsed() < MAX_TIME_TO_CONSISTENCY {
            match self.send(case, 1).await.and_then(|r| check(case, &r)) {
                Ok(()) => {
                    streak += 1;
                    if streak >= CONSECUTIVE {
                        return Ok(());
                    }
                }
                Err(e) => {
                    streak = 0;
                    last = e;
                    tokio::time::sleep(MISS_PAUSE).await;
                }
            }
        }
        Err(format!(
            "not consistent within {MAX_TIME_TO_CONSISTENCY:?}: {last}"
        ))
    }

    async fn distribution(&self, case: &Case) -> Result<(), String> {
        let spec = case.expect.distribution.clone().unwrap_or_default();
        let total = spec.total_requests.unwrap_or(500);
        let tolerance = spec.tolerance.unwrap_or(0.05);
        let attempts = spec.max_attempts.unwrap_or(10);
        let mut last = String::new();
        for _ in 0..attempts {
            let responses = match self.send(case, total).await {
                Ok(r) => r,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for response in &responses {
                let host = response.field("Hostname").unwrap_or_default();
                *counts.entry(backend_of_pod(host)).or_default() += 1;
            }
            let n = responses.len().max(1) as f64;
            let mut ok = responses.len() == total;
            for (backend, weight) in &case.expect.weights {
                let seen = counts.get(backend).copied().unwrap_or(0) as f64 / n;
                if (seen - weight).abs() > tolerance {
                    ok = false;
                }
            }
            if counts.keys().any(|b| !case.expect.weights.contains_key(b)) {
                ok = false;
            }
            if ok {
                return Ok(());
            }
            last = format!("distribution {counts:?} of {} responses", responses.len());
        }
        Err(last)
    }

    /// Runs the echo client in the client pod's namespace.
    async fn send(&self, case: &Case, count: usize) -> Result<Vec<EchoResponse>, String> {
        let client = self.client_pod(case)?;
        let host = self.resolve_host(case.request.host.as_deref().unwrap_or("echo"))?;
        let scheme = case.request.scheme.as_deref().unwrap_or("http");
        let scheme = if scheme == "https" { "http" } else { scheme };
        let url = format!("{scheme}://{host}{}", case.request.path);
        let mut argv: Vec<String> = vec![
            "strait-echo".into(),
            "client".into(),
            url,
            "--timeout".into(),
            "5s".into(),
        ];
        if let Some(method) = &case.request.method {
            argv.push("--method".into());
            argv.push(method.clone());
        }
        for (name, value) in &case.request.headers {
            argv.push("-H".into());
            argv.push(format!("{name}:{value}"));
        }
        if count > 1 {
            argv.push("--count".into());
            argv.push(count.to_string());
        }
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let output = self
            .testbed
            .exec(&client, &args)
            .await
            .map_err(|e| format!("exec in {}: {e}", client.name))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let responses = parse_client_output(&text);
        if responses.is_empty() {
            return Err(format!(
                "no response: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(responses)
    }

    /// The first pod labelled app=echo,version=v1 in the namespace named by `from`.
    fn client_pod(&self, case: &Case) -> Result<Pod, String> {
        let from = case.request.from.as_deref().unwrap_or("");
        let namespace = from
            .rsplit(" in ")
            .next()
            .filter(|ns| !ns.is_empty() && *ns != from)
            .unwrap_or("gateway-conformance-mesh");
        self.testbed
            .pods_matching(namespace, &[("app", "echo"), ("version", "v1")])
            .into_iter()
            .next()
            .ok_or_else(|| format!("no client pod in {namespace}"))
    }

    /// Replaces `<... echo-v2 pod IP ...>` placeholders with the pod's address.
    fn resolve_host(&self, host: &str) -> Result<String, String> {
        let Some(start) = host.find('<') else {
            return Ok(host.to_string());
        };
        let end = host[start..]
            .find('>')
            .map(|e| start + e)
            .ok_or("bad placeholder")?;
        let placeholder = &host[start..=end];
        let version = ["v1", "v2"]
            .into_iter()
            .find(|v| {
                placeholder.contains(&format!("echo-{v}"))
                    || placeholder.contains(&format!("version={v}"))
            })
            .ok_or_else(|| format!("cannot resolve {placeholder}"))?;
        let pod = self
            .testbed
            .pods_matching(
                "gateway-conformance-mesh",
                &[("app", "echo"), ("version", version)],
            )
            .into_iter()
            .next()
            .ok_or_else(|| format!("no pod for {placeholder}"))?;
        Ok(format!("{}{}{}", &host[..start], pod.ip, &host[end + 1..]))
    }

    /// Stops Strait (removing the capture rules) and tears the topology down.
    pub async fn shutdown(mut self) {
        if let Some(standalone) = self.standalone.take() {
            standalone.shutdown().await;
        }
        if let Err(e) = self.testbed.teardown() {
            eprintln!("mesh topology teardown: {e}");
        }
    }
}

/// Why a mesh test cannot run here.
fn skip_reason(spec: &TestSpec) -> Option<String> {
    if spec.profile != "MESH-HTTP" {
        return Some(format!("profile {} needs a gRPC echo client", spec.profile));
    }
    None
}

/// The checks of INDEX.md "How mesh tests send requests": status, request and response headers
/// (present or absent) and the answering backend; paths and redirect targets are not asserted.
fn check(case: &Case, responses: &[EchoResponse]) -> Result<(), String> {
    let response = responses.first().ok_or("no response")?;
    let expect = &case.expect;
    if let Some(status) = &expect.status
        && !status.codes().contains(&response.status)
    {
        return Err(format!(
            "status {} (want {:?}){}",
            response.status,
            status.codes(),
            response
                .field("Error")
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    if let Some(backend) = &expect.backend {
        let host = response.field("Hostname").unwrap_or_default();
        if !host.starts_with(backend.as_str()) {
            return Err(format!("answered by {host:?}, want {backend}"));
        }
    }
    if let Some(seen) = &expect.request_seen_by_backend {
        for (name, want) in &seen.headers {
            let got = response.request_header(name);
            if got.as_deref() != Some(want.as_str()) {
                return Err(format!("request header {name}: {got:?}, want {want:?}"));
            }
        }
        for name in &seen.absent_headers {
            if let Some(got) = response.request_header(name) {
                return Err(format!(
                    "request header {name} should be absent, got {got:?}"
                ));
            }
        }
    }
    if let Some(r) = &expect.response {
        for (name, want) in &r.headers {
            let got = response.response_header(name);
            if got != Some(want.as_str()) {
                return Err(format!("response header {name}: {got:?}, want {want:?}"));
            }
        }
        for name in &r.absent_headers {
            if let Some(got) = response.response_header(name) {
                return Err(format!(
                    "response header {name} should be absent, got {got:?}"
                ));
            }
        }
    }
    Ok(())
}

/// `echo-v1-5d8f7c9b4d-x2k9p` → `echo-v1`.
fn backend_of_pod(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() > 2 {
        parts[..parts.len() - 2].join("-")
    } else {
        pod.to_string()
    }
}

/// The waypoint pod of a namespace, as the controller's provisioner would create it.
fn waypoint_pod(namespace: &str) -> PodSpec {
    PodSpec {
        namespace: namespace.to_string(),
        name: "waypoint-7d9c5b8f6c-w4ypt".into(),
        labels: [(
            strait_config::mesh::GATEWAY_NAME_LABEL.to_string(),
            strait_config::mesh::DEFAULT_WAYPOINT.to_string(),
        )]
        .into_iter()
        .collect(),
        service_account: strait_config::mesh::DEFAULT_WAYPOINT.into(),
        ..PodSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_name_drops_replica_set_and_pod_suffixes() {
        assert_eq!(backend_of_pod("echo-v1-5d8f7c9b4d-x2k9p"), "echo-v1");
        assert_eq!(backend_of_pod("solo"), "solo");
    }
}

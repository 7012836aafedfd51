//! Kubernetes manifests turned into network namespaces on this machine.
//!
//! There is no cluster on the test machines, yet the mesh data plane must be tested on real
//! sockets, real interception and real wires. A [`Testbed`] plays the cluster's part:
//!
//! - a **node** namespace with a bridge (`198.18.0.1/16`) and no route anywhere else;
//! - one namespace per **pod** (each Deployment replica, plus pods added by the test) with a
//!   veth to the bridge, an address from `198.18.0.0/16`, and a route for the Service range
//!   `198.19.0.0/16` via the node (VIPs only exist as capture targets);
//! - **Services** with cluster IPs, **EndpointSlices** as the endpointslice controller writes
//!   them, and **Pod** objects as the API server reports them (with the `strait.dev/netns`
//!   annotation), all from [`Testbed::objects`] to feed a control plane;
//! - per-pod name resolution: `/etc/netns/<netns>/hosts`, which `ip netns exec` mounts;
//! - `echo-advanced` pods served in this process, inside their namespace.
//!
//! Everything is removed by [`Testbed::teardown`] or on drop (also when a test panics), and
//! names encode the owning process so that concurrent runs never collide and leftovers of a
//! crashed run are removed by the next [`Testbed::build`].
//!
//! Needs root and iproute2 ([`check_host`]). Tests exec the `strait-echo` client inside pods:
//! run `cargo build -p strait-echo` first ([`find_echo_binary`] locates it).

mod host;
mod model;
mod sniff;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};
use strait_config::mesh::{MESH_LABEL, NETNS_ANNOTATION};
use strait_echo::advanced::{AdvancedEcho, AdvancedError, EchoArgs, Identity};
use strait_netns::{NetNs, NetNsError};

pub use host::{ETC_NETNS_DIR, NETNS_PREFIX, check_host};
pub use model::{CLUSTER_DOMAIN, NODE_ADDRESS, POD_NETWORK, Pod, SERVICE_NETWORK};
pub use sniff::{Sniffer, contains};
pub use strait_echo::advanced::AdvancedOptions;

/// The bridge in the node namespace that every pod's veth is plugged into.
pub const BRIDGE: &str = "br0";
/// The interface name of the pod side of each veth.
pub const POD_INTERFACE: &str = "eth0";
/// `argv[0]` that [`Testbed::exec`] replaces with [`TestbedOptions::echo_binary`].
pub const ECHO_COMMAND: &str = "strait-echo";

/// Why the testbed could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// The machine cannot host network namespaces (see [`check_host`]).
    #[error("testbed unsupported here: {0}")]
    Unsupported(String),
    /// A command (`ip ...`, an exec) failed.
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// A manifest the testbed cannot turn into pods or Services.
    #[error("{object}: {reason}")]
    Manifest { object: String, reason: String },
    /// An echo server of a pod could not start.
    #[error("pod {namespace}/{name}: {source}")]
    Echo {
        namespace: String,
        name: String,
        #[source]
        source: Box<AdvancedError>,
    },
    /// The packet capture could not start.
    #[error("capture in {netns}: {message}")]
    Sniff { netns: String, message: String },
    /// A pod name is taken, an address range exhausted, ...
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("the testbed was torn down")]
    TornDown,
}

pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

/// How to build a testbed.
#[derive(Clone, Debug)]
pub struct TestbedOptions {
    /// Namespaces to label `strait.dev/mesh=enabled` (created when no manifest defines them).
    pub enroll: Vec<String>,
    /// Run the echo-advanced server of pods whose image contains `echo-advanced`.
    pub start_echo: bool,
    /// `spec.nodeName` of every pod (the node proxy serves the pods of its node).
    pub node_name: String,
    /// The `strait-echo` binary used by `exec(pod, ["strait-echo", ...])`.
    pub echo_binary: Option<PathBuf>,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        TestbedOptions {
            enroll: Vec::new(),
            start_echo: true,
            node_name: "strait-node".into(),
            echo_binary: find_echo_binary(),
        }
    }
}

/// Locates the `strait-echo` binary: `$STRAIT_ECHO_BIN`, else next to the running executable's
/// target directory (`target/<profile>/strait-echo`, which `cargo build -p strait-echo` makes;
/// a test binary cannot build it itself).
pub fn find_echo_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("STRAIT_ECHO_BIN") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join(ECHO_COMMAND))
        .find(|candidate| candidate.is_file())
}

/// A pod the test adds by hand: a waypoint, an out-of-mesh client, ...
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName`; `default` when empty.
    pub service_account: String,
    /// Extra annotations (the netns annotation is added by the testbed).
    pub annotations: BTreeMap<String, String>,
    /// Run an echo-advanced server in the pod (its `ServiceVersion` is the `version` label).
    pub echo: Option<AdvancedOptions>,
}

struct State {
    /// The input documents: Namespaces labelled, Services with their cluster IPs, plus
    /// Namespaces and Services added since.
    docs: Vec<Value>,
    pods: Vec<Pod>,
    echoes: HashMap<(String, String), AdvancedEcho>,
    /// Pod namespaces that exist (deleted on teardown).
    netns: Vec<String>,
    next_pod: u32,
    next_vip: u32,
    used_vips: HashSet<Ipv4Addr>,
}

/// A running topology. See the crate documentation.
pub struct Testbed {
    options: TestbedOptions,
    tag: String,
    node: String,
    state: Mutex<State>,
    torn_down: AtomicBool,
}

static INSTANCES: AtomicU32 = AtomicU32::new(0);

impl Testbed {
    /// Builds the node, a pod per Deployment replica (starting their echo servers), Service
    /// cluster IPs and the hosts files. On error everything made so far is removed.
    pub async fn build(docs: &[Value], options: TestbedOptions) -> Result<Testbed> {
        check_host().map_err(TestbedError::Unsupported)?;
        for name in host::clean_stale() {
            tracing::info!("removed leftover testbed namespace {name}");
        }
        let pid = std::process::id();
        let start = host::process_start_time(pid).unwrap_or(0);
        let instance = INSTANCES.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{NETNS_PREFIX}{pid}-{start}-{instance}");
        let testbed = Testbed {
            node: format!("{tag}-node"),
            tag,
            state: Mutex::new(State {
                docs: Vec::new(),
                pods: Vec::new(),
                echoes: HashMap::new(),
                netns: Vec::new(),
                next_pod: 0,
                next_vip: 0,
                used_vips: HashSet::new(),
            }),
            torn_down: AtomicBool::new(false),
            options,
        };
        testbed.make_node().await?;
        testbed.load(docs)?;
        for d in docs.iter().filter(|d| model::kind(d) == "Deployment") {
            let template = model::deployment_template(d)?;
            let hash = model::random_suffix(10);
            let replica_set = (
                format!("{}-{hash}", template.deployment),
                uuid::Uuid::new_v4().to_string(),
            );
            let mut labels = template.labels.clone();
            labels.insert("pod-template-hash".into(), hash);
            for _ in 0..template.replicas {
                let name = format!("{}-{}", replica_set.0, model::random_suffix(5));
                let pod = testbed
                    .make_pod(NewPod {
                        namespace: template.namespace.clone(),
                        name,
                        labels: labels.clone(),
                        annotations: template.annotations.clone(),
                        service_account: template.service_account.clone(),
                        spec: template.spec.clone(),
                        deployment: Some(template.deployment.clone()),
                        replica_set: Some(replica_set.clone()),
                    })
                    .await?;
                if testbed.options.start_echo
                    && let Some(args) = pod.echo_args()
                {
                    let parsed = EchoArgs::parse(&args).map_err(|source| TestbedError::Echo {
                        namespace: pod.namespace.clone(),
                        name: pod.name.clone(),
                        source: Box::new(source),
                    })?;
                    let identity = parsed.identity(echo_identity(&pod));
                    testbed.start_echo(&pod, parsed.options, identity).await?;
                }
            }
        }
        testbed.write_hosts()?;
        Ok(testbed)
    }

    /// The options the testbed was built with.
    pub fn options(&self) -> &TestbedOptions {
        &self.options
    }

    /// The name stem shared by every namespace of this testbed (`stb-<pid>-<start>-<n>`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Every object a control plane should see: the input documents (Namespaces labelled as
    /// asked, Services with cluster IPs, Deployments kept), then Pods and EndpointSlices
    /// computed from the current pods.
    pub fn objects(&self) -> Vec<Value> {
        let state = self.lock();
        let mut out = state.docs.clone();
        out.extend(state.pods.iter().map(Pod::object));
        out.extend(model::endpoint_slices(&services(&state.docs), &state.pods));
        out
    }

    /// Every pod, in creation order.
    pub fn pods(&self) -> Vec<Pod> {
        self.lock().pods.clone()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.lock()
            .pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
    }

    /// Pods of `namespace` carrying every label of `selector`, in creation order.
    pub fn pods_matching(&self, namespace: &str, selector: &[(&str, &str)]) -> Vec<Pod> {
        self.lock()
            .pods
            .iter()
            .filter(|p| p.matches(namespace, selector))
            .cloned()
            .collect()
    }

    /// The Services as stored (with `spec.clusterIP`).
    pub fn services(&self) -> Vec<Value> {
        services(&self.lock().docs)
    }

    /// The cluster IP of Service `namespace/name` (`None`: unknown or headless).
    pub fn service_vip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        services(&self.lock().docs)
            .iter()
            .find(|s| model::namespace(s) == namespace && model::name(s) == name)
            .and_then(model::vip_of)
    }

    /// Adds or replaces a Service (e.g. one a controller provisioned): it keeps its cluster IP
    /// across replacements, and every pod's hosts file learns its names.
    pub async fn add_service(&self, service: Value) -> Result<Option<Ipv4Addr>> {
        self.check_alive()?;
        if model::kind(&service) != "Service" || model::name(&service).is_empty() {
            return Err(TestbedError::Manifest {
                object: model::describe(&service),
                reason: "not a named Service".into(),
            });
        }
        let vip = {
            let mut state = self.lock();
            let (ns, name) = (
                model::namespace(&service).to_string(),
                model::name(&service).to_string(),
            );
            ensure_namespace(&mut state.docs, &ns, &self.options.enroll);
            let existing = state.docs.iter().position(|d| {
                model::kind(d) == "Service" && model::namespace(d) == ns && model::name(d) == name
            });
            let old_vip = existing.and_then(|i| model::vip_of(&state.docs[i]));
            let vip = if model::wants_vip(&service) {
                match old_vip {
                    Some(vip) => Some(vip),
                    None => Some(allocate_vip(&mut state, &service)?),
                }
            } else {
                if let Some(old) = old_vip {
                    state.used_vips.remove(&old);
                }
                None
            };
            let stored = model::service_object(&service, vip);
            match existing {
                Some(i) => state.docs[i] = stored,
                None => state.docs.push(stored),
            }
            vip
        };
        self.write_hosts()?;
        Ok(vip)
    }

    /// Creates a pod by hand, with its namespace, veth and address, and its echo server when
    /// asked.
    pub async fn add_pod(&self, spec: PodSpec) -> Result<Pod> {
        self.check_alive()?;
        if spec.namespace.is_empty() || spec.name.is_empty() {
            return Err(TestbedError::Invalid(format!(
                "pod {:?}/{:?}: namespace and name are required",
                spec.namespace, spec.name
            )));
        }
        let image = if spec.echo.is_some() {
            "strait-testbed/echo-advanced"
        } else {
            "strait-testbed/pod"
        };
        let pod = self
            .make_pod(NewPod {
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                annotations: spec.annotations.clone(),
                service_account: if spec.service_account.is_empty() {
                    "default".into()
                } else {
                    spec.service_account.clone()
                },
                spec: json!({"containers": [{"name": "main", "image": image}]}),
                deployment: None,
                replica_set: None,
            })
            .await?;
        {
            let mut state = self.lock();
            ensure_namespace(&mut state.docs, &spec.namespace, &self.options.enroll);
        }
        if let Some(options) = spec.echo {
            self.start_echo(&pod, options, echo_identity(&pod)).await?;
        }
        self.write_hosts()?;
        Ok(pod)
    }

    /// Deletes a pod: its echo server stops, its namespace (and so its veth) goes away.
    pub async fn remove_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let (pod, echo) = {
            let mut state = self.lock();
            let index = state
                .pods
                .iter()
                .position(|p| p.namespace == namespace && p.name == name)
                .ok_or_else(|| TestbedError::NotFound(format!("pod {namespace}/{name}")))?;
            let pod = state.pods.remove(index);
            let echo = state
                .echoes
                .remove(&(namespace.to_string(), name.to_string()));
            (pod, echo)
        };
        if let Some(echo) = echo {
            echo.shutdown().await;
        }
        host::ip(&["netns", "del", &pod.netns], None).await?;
        if let Err(e) = std::fs::remove_dir_all(host::etc_dir(&pod.netns))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(TestbedError::Io {
                path: host::etc_dir(&pod.netns),
                source: e,
            });
        }
        self.lock().netns.retain(|n| *n != pod.netns);
        self.write_hosts()
    }

    /// The log of a pod's echo server (empty if it runs none).
    pub fn echo_log(&self, pod: &Pod) -> Vec<String> {
        self.lock()
            .echoes
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .map(AdvancedEcho::log)
            .unwrap_or_default()
    }

    /// `ip netns exec <pod netns> argv...`, ready to spawn (killed when dropped). An `argv[0]`
    /// of `strait-echo` runs [`TestbedOptions::echo_binary`].
    pub fn command<S: AsRef<OsStr>>(&self, pod: &Pod, argv: &[S]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", &pod.netns]);
        if let Some((program, rest)) = argv.split_first() {
            match (&self.options.echo_binary, program.as_ref() == ECHO_COMMAND) {
                (Some(binary), true) => command.arg(binary),
                _ => command.arg(program),
            };
            command.args(rest);
        }
        command.kill_on_drop(true);
        command
    }

    /// Runs `argv` inside the pod's namespace (with its hosts file) and waits for it.
    pub async fn exec<S: AsRef<OsStr>>(
        &self,
        pod: &Pod,
        argv: &[S],
    ) -> Result<std::process::Output> {
        let shown = || {
            argv.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        if argv.is_empty() {
            return Err(TestbedError::Invalid(format!(
                "exec in pod {}/{}: empty command",
                pod.namespace, pod.name
            )));
        }
        if argv[0].as_ref() == ECHO_COMMAND && self.options.echo_binary.is_none() {
            return Err(TestbedError::Invalid(
                "no strait-echo binary: run `cargo build -p strait-echo` or set STRAIT_ECHO_BIN"
                    .into(),
            ));
        }
        self.command(pod, argv)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| TestbedError::Command {
                command: format!("exec in pod {}/{}: {}", pod.namespace, pod.name, shown()),
                message: e.to_string(),
            })
    }

    /// A handle on the pod's network namespace (for in-pod sockets).
    pub fn netns(&self, pod: &Pod) -> Result<NetNs> {
        Ok(NetNs::named(&pod.netns)?)
    }

    /// A handle on the node namespace (the bridge lives there).
    pub fn node_netns(&self) -> Result<NetNs> {
        Ok(NetNs::named(&self.node)?)
    }

    /// The name of the node namespace under `/run/netns`.
    pub fn node_netns_name(&self) -> &str {
        &self.node
    }

    /// Every namespace name this testbed currently owns (node first).
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![self.node.clone()];
        names.extend(self.lock().netns.iter().cloned());
        names
    }

    /// Starts recording every frame that crosses the node.
    pub fn sniff(&self) -> Result<Sniffer> {
        self.check_alive()?;
        Sniffer::start(&self.node_netns()?, BRIDGE)
    }

    /// Stops every echo server and deletes every namespace and `/etc/netns` directory of the
    /// testbed. Idempotent; also run on drop. Blocks for a few milliseconds per pod.
    pub fn teardown(&self) -> Result<()> {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let (echoes, netns) = {
            let mut state = self.lock();
            state.pods.clear();
            (
                std::mem::take(&mut state.echoes),
                std::mem::take(&mut state.netns),
            )
        };
        drop(echoes);
        let mut result = Ok(());
        for name in netns.iter().chain(std::iter::once(&self.node)) {
            if let Err(e) = host::delete_netns(name) {
                tracing::warn!("testbed teardown: {e}");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_alive(&self) -> Result<()> {
        if self.torn_down.load(Ordering::SeqCst) {
            Err(TestbedError::TornDown)
        } else {
            Ok(())
        }
    }

    async fn make_node(&self) -> Result<()> {
        host::ip(&["netns", "add", &self.node], None).await?;
        let node = self.node_netns()?;
        host::disable_ipv6_for_new_links(&node);
        // Connections to a VIP that nothing captures fail at once (ICMP unreachable from the
        // node) instead of timing out: that needs forwarding on, with nowhere to forward to.
        host::enable_forwarding(&node)?;
        let prefix = POD_NETWORK.1;
        let (service_net, service_prefix) = SERVICE_NETWORK;
        host::ip(
            &["-n", &self.node, "-batch", "-"],
            Some(&format!(
                "link set lo up\n\
                 link add {BRIDGE} type bridge\n\
                 addr add {NODE_ADDRESS}/{prefix} dev {BRIDGE}\n\
                 link set {BRIDGE} up\n\
                 route add unreachable {service_net}/{service_prefix}\n"
            )),
        )
        .await
    }

    /// Takes in the input documents: labels Namespaces, gives Services their cluster IPs.
    fn load(&self, docs: &[Value]) -> Result<()> {
        let mut state = self.lock();
        let enroll = &self.options.enroll;
        // Cluster IPs the manifests pin are reserved before any is handed out.
        for d in docs.iter().filter(|d| model::kind(d) == "Service") {
            if let Some(vip) = model::requested_vip(d).filter(|_| model::wants_vip(d))
                && !state.used_vips.insert(vip)
            {
                return Err(TestbedError::Manifest {
                    object: model::describe(d),
                    reason: format!("clusterIP {vip} is already allocated"),
                });
            }
        }
        for d in docs {
            let stored = match model::kind(d) {
                "Namespace" => label_namespace(d.clone(), enroll),
                "Service" => {
                    let vip = if model::wants_vip(d) {
                        Some(match model::requested_vip(d) {
                            Some(vip) => vip,
                            None => allocate_vip(&mut state, d)?,
                        })
                    } else {
                        None
                    };
                    model::service_object(d, vip)
                }
                _ => d.clone(),
            };
            state.docs.push(stored);
        }
        let mut wanted: Vec<String> = enroll.clone();
        for d in docs {
            if matches!(model::kind(d), "Service" | "Deployment") {
                wanted.push(model::namespace(d).to_string());
            }
        }
        for ns in wanted {
            ensure_namespace(&mut state.docs, &ns, enroll);
        }
        Ok(())
    }

    async fn make_pod(&self, new: NewPod) -> Result<Pod> {
        self.check_alive()?;
        let (index, ip, netns) = {
            let mut state = self.lock();
            if state
                .pods
                .iter()
                .any(|p| p.namespace == new.namespace && p.name == new.name)
            {
                return Err(TestbedError::Invalid(format!(
                    "pod {}/{} already exists",
                    new.namespace, new.name
                )));
            }
            let index = state.next_pod;
            let ip = model::nth_address(POD_NETWORK, index).ok_or_else(|| {
                TestbedError::Invalid("the pod network 198.18.0.0/16 is exhausted".into())
            })?;
            state.next_pod += 1;
            let netns = format!("{}-p{index}", self.tag);
            // Recorded before it exists, so a half-made pod is still removed on teardown.
            state.netns.push(netns.clone());
            (index, ip, netns)
        };
        host::ip(&["netns", "add", &netns], None).await?;
        host::disable_ipv6_for_new_links(&NetNs::named(&netns)?);
        let host_side = format!("v{index}");
        host::ip(
            &["-n", &self.node, "-batch", "-"],
            Some(&format!(
                "link add {host_side} type veth peer name {POD_INTERFACE} netns {netns}\n\
                 link set {host_side} master {BRIDGE} up\n"
            )),
        )
        .await?;
        let (service_net, service_prefix) = SERVICE_NETWORK;
        host::ip(
            &["-n", &netns, "-batch", "-"],
            Some(&format!(
                "link set lo up\n\
                 addr add {ip}/{} dev {POD_INTERFACE}\n\
                 link set {POD_INTERFACE} up\n\
                 route add {service_net}/{service_prefix} via {NODE_ADDRESS} dev {POD_INTERFACE}\n",
                POD_NETWORK.1
            )),
        )
        .await?;
        let mut annotations = new.annotations;
        annotations.insert(NETNS_ANNOTATION.to_string(), netns.clone());
        let pod = Pod {
            namespace: new.namespace,
            name: new.name,
            uid: uuid::Uuid::new_v4().to_string(),
            ip,
            labels: new.labels,
            annotations,
            service_account: new.service_account,
            node_name: self.options.node_name.clone(),
            netns,
            deployment: new.deployment,
            spec: new.spec,
            replica_set: new.replica_set,
        };
        let mut state = self.lock();
        if self.torn_down.load(Ordering::SeqCst) {
            return Err(TestbedError::TornDown);
        }
        state.pods.push(pod.clone());
        Ok(pod)
    }

    async fn start_echo(
        &self,
        pod: &Pod,
        options: AdvancedOptions,
        identity: Identity,
    ) -> Result<()> {
        let netns = self.netns(pod)?;
        let echo = AdvancedEcho::start_in(Some(&netns), options, identity)
            .await
            .map_err(|source| TestbedError::Echo {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                source: Box::new(source),
            })?;
        self.lock()
            .echoes
            .insert((pod.namespace.clone(), pod.name.clone()), echo);
        Ok(())
    }

    /// Rewrites every pod's hosts file from the current Services and pods.
    fn write_hosts(&self) -> Result<()> {
        let state = self.lock();
        let services = services(&state.docs);
        for pod in &state.pods {
            host::write_etc(&pod.netns, &model::hosts_file(pod, &services, &state.pods))?;
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("testbed {}: teardown: {e}", self.tag);
        }
    }
}

impl std::fmt::Debug for Testbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testbed")
            .field("tag", &self.tag)
            .field("pods", &self.lock().pods.len())
            .finish_non_exhaustive()
    }
}

struct NewPod {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    service_account: String,
    spec: Value,
    deployment: Option<String>,
    replica_set: Option<(String, String)>,
}

/// What an echo pod reports: its namespace, name and `version` label.
fn echo_identity(pod: &Pod) -> Identity {
    Identity {
        namespace: pod.namespace.clone(),
        version: pod.labels.get("version").cloned().unwrap_or_default(),
        pod: pod.name.clone(),
        cluster: String::new(),
    }
}

fn services(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .filter(|d| model::kind(d) == "Service")
        .cloned()
        .collect()
}

fn allocate_vip(state: &mut State, service: &Value) -> Result<Ipv4Addr> {
    loop {
        let vip = model::nth_address(SERVICE_NETWORK, state.next_vip).ok_or_else(|| {
            TestbedError::Manifest {
                object: model::describe(service),
                reason: "the Service network 198.19.0.0/16 is exhausted".into(),
            }
        })?;
        state.next_vip += 1;
        if state.used_vips.insert(vip) {
            return Ok(vip);
        }
    }
}

fn label_namespace(mut ns: Value, enroll: &[String]) -> Value {
    if enroll.iter().any(|e| e == model::name(&ns))
        && let Some(meta) = ns.get_mut("metadata").and_then(Value::as_object_mut)
    {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        labels[MESH_LABEL] = json!("enabled");
    }
    ns
}

/// Adds a Namespace document for `ns` unless one exists (a real cluster would have it).
fn ensure_namespace(docs: &mut Vec<Value>, ns: &str, enroll: &[String]) {
    if docs
        .iter()
        .any(|d| model::kind(d) == "Namespace" && model::name(d) == ns)
    {
        return;
    }
    let doc = label_namespace(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        enroll,
    );
    // Namespaces first, as they would be applied.
    docs.insert(0, doc);
}

/// Parses multi-document YAML (a manifests file) into JSON values; empty documents dropped.
pub fn parse_manifests(text: &str, origin: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| TestbedError::Manifest {
            object: origin.to_string(),
            reason: e.to_string(),
        })?;
    Ok(docs.into_iter().filter(Value::is_object).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_labelled_and_created() {
        let enroll = vec!["mesh".to_string()];
        let labelled = label_namespace(
            json!({"kind": "Namespace", "metadata": {"name": "mesh", "labels": {"a": "b"}}}),
            &enroll,
        );
        assert_eq!(labelled["metadata"]["labels"][MESH_LABEL], "enabled");
        assert_eq!(labelled["metadata"]["labels"]["a"], "b");
        let untouched = label_namespace(
            json!({"kind": "Namespace", "metadata": {"name": "other"}}),
            &enroll,
        );
        assert!(untouched["metadata"].get("labels").is_none());
        let mut docs = vec![json!({"kind": "Service", "metadata": {"name": "s"}})];
        ensure_namespace(&mut docs, "mesh", &enroll);
        ensure_namespace(&mut docs, "mesh", &enroll);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["metadata"]["labels"][MESH_LABEL], "enabled");
    }

    #[test]
    fn manifests_parse() {
        let docs = parse_manifests("---\nkind: A\n---\n---\nkind: B\n", "x.yaml").unwrap();
        assert_eq!(docs.len(), 2);
        let err = parse_manifests("kind: [", "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.yaml"), "{err}");
    }
}

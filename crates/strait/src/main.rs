//! `strait`: one binary, one subcommand per role.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use strait::AddressMode;
use strait::mesh::{CaSource, MeshOptions, WaypointSelection};
use strait::runtime::Workers;
use strait::standalone::{Standalone, StandaloneOptions};
use strait::subscribe::ControlPlane;
use strait_config::ObjectRef;

mod capture_wait;

#[derive(Parser)]
#[command(
    name = "strait",
    version,
    about = "Gateway API gateway and service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every Gateway of class `strait` found in DIR (YAML manifests), reloading on change.
    /// Without DIR, runs the built-in demo (examples/ plus echo backends) on 127.0.0.1.
    Standalone {
        /// Directory of manifests; omit for the built-in demo.
        dir: Option<PathBuf>,
        /// Serve listener port P on local port P + OFFSET (e.g. 8000 to run port-80 Gateways unprivileged).
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
        /// Serve every Gateway on this address instead of one loopback address per Gateway.
        #[arg(long)]
        address: Option<IpAddr>,
        /// Do not reload when files change.
        #[arg(long)]
        no_watch: bool,
        /// Also start echo backends for every loopback endpoint in the EndpointSlices of DIR.
        #[arg(long)]
        echo_backends: bool,
        /// Run no mesh components (CA, node proxy, waypoints).
        #[arg(long)]
        no_mesh: bool,
        /// Serve the workload CA over gRPC here (loopback only: it signs any identity asked).
        #[arg(long)]
        ca_listen: Option<SocketAddr>,
        /// Also serve the compiled configs over the controller's gRPC config stream here, for
        /// `strait gateway`, `waypoint` and `node` with `--control-plane http://ADDR` (loopback
        /// only: the stream is unauthenticated and carries Gateways' private keys).
        #[arg(long)]
        config_listen: Option<SocketAddr>,
        /// Node proxy: serve only pods with this spec.nodeName.
        #[arg(long)]
        node_name: Option<String>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// The node proxy alone: captures and serves the enrolled pods of DIR that have a network
    /// namespace here, with certificates from the CA at --ca.
    Node {
        /// Directory of manifests (the mesh's Namespaces, Pods, Services, EndpointSlices,
        /// routes), compiled locally; or use --control-plane.
        #[arg(required_unless_present = "control_plane")]
        dir: Option<PathBuf>,
        /// The controller's config stream, e.g. http://strait-controller.strait-system:15010.
        #[arg(long, conflicts_with = "dir")]
        control_plane: Option<String>,
        /// CA endpoint, e.g. http://127.0.0.1:15012.
        #[arg(long)]
        ca: String,
        /// Serve only pods with this spec.nodeName.
        #[arg(long)]
        node_name: Option<String>,
        /// Inbound sources never captured (health probes), as CIDRs.
        #[arg(long = "probe-source")]
        probe_sources: Vec<String>,
        /// Where the container runtime keeps pod network namespace files: pods the config does
        /// not name a namespace for are found here by their IP.
        #[arg(long, default_value = strait_node::DEFAULT_NETNS_DIR)]
        netns_dir: PathBuf,
        #[command(flatten)]
        access: ProxyAccess,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Do not reload when files change.
        #[arg(long)]
        no_watch: bool,
    },
    /// Run as the first init container of an enrolled pod: exit 0 once the node proxy
    /// captures this pod (its HBONE listener answers on 127.0.0.1:15008), so the application
    /// never starts with uncaptured traffic; exit 1 on timeout.
    WaitForCapture {
        /// Give up after this long (`120s`, `2m`).
        #[arg(long, default_value = "120s", value_parser = capture_wait::parse_duration)]
        timeout: std::time::Duration,
    },
    /// One waypoint: HBONE on 15008, routes whose parentRef is a Service of NAMESPACE.
    Waypoint {
        /// Directory of manifests, compiled locally; or use --control-plane.
        #[arg(required_unless_present = "control_plane")]
        dir: Option<PathBuf>,
        /// The controller's config stream.
        #[arg(long, conflicts_with = "dir")]
        control_plane: Option<String>,
        /// The waypoint's namespace.
        #[arg(long)]
        namespace: String,
        /// The waypoint Gateway's name.
        #[arg(long, default_value = "waypoint")]
        name: String,
        /// CA endpoint, e.g. http://127.0.0.1:15012.
        #[arg(long)]
        ca: String,
        /// Bind inside this named network namespace (the waypoint pod's).
        #[arg(long)]
        netns: Option<String>,
        #[command(flatten)]
        access: ProxyAccess,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Do not reload when files change.
        #[arg(long)]
        no_watch: bool,
    },
    /// An ingress gateway for one Gateway, fed by the controller's config stream (what the
    /// provisioned Deployments run).
    Gateway {
        /// The controller's config stream.
        #[arg(long)]
        control_plane: String,
        /// The Gateway, as NAMESPACE/NAME.
        #[arg(long)]
        gateway: String,
        #[command(flatten)]
        access: ProxyAccess,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// The Kubernetes controller: watches the API server, compiles, streams config to proxies,
    /// writes status (as the holder of the `strait-controller` Lease).
    Controller(strait::controller::ControllerArgs),
    /// Install or remove the traffic-capture rules in a pod's network namespace.
    Iptables {
        #[command(subcommand)]
        action: IptablesAction,
    },
    /// Print the status every object in the given files/directories would get; exit 1 on errors.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum IptablesAction {
    /// Install (or converge) the capture rules.
    Apply {
        /// Named network namespace (`ip netns`).
        #[arg(long)]
        netns: String,
        /// Outbound TCP ports never captured.
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_ports: Vec<u16>,
        /// Outbound CIDRs never captured.
        #[arg(long, value_delimiter = ',')]
        exclude_outbound_cidrs: Vec<String>,
        /// Inbound TCP ports never captured.
        #[arg(long, value_delimiter = ',')]
        exclude_inbound_ports: Vec<u16>,
        /// Inbound sources never captured (health probes), as CIDRs.
        #[arg(long = "probe-source")]
        probe_sources: Vec<String>,
        /// The pod's IPv4 address: also route its outbound TCP through loopback from the first
        /// lookup, so the application's segments fit the hop to the proxy (iptables/README.md).
        #[arg(long)]
        pod_ip: Option<std::net::Ipv4Addr>,
        /// Print the rules instead of installing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove every capture rule and chain.
    Remove {
        #[arg(long)]
        netns: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a pod's log (`kubectl logs`) would show them raw.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Exactly one crypto provider is compiled in; make it the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { paths } => Ok(run_check(&paths)),
        Command::Iptables { action } => run_iptables(action).map(|()| ExitCode::SUCCESS),
        Command::WaitForCapture { timeout } => run_wait_for_capture(timeout),
        Command::Controller(args) => block_on(
            strait::runtime::build(Workers::PerCpu),
            strait::controller::run(args, wait_for_signal()),
        ),
        Command::Gateway {
            control_plane,
            gateway,
            access,
            runtime,
        } => block_on(
            strait::runtime::build_proxy(runtime.or(Workers::PerCpu)),
            run_gateway(control_plane, gateway, access),
        ),
        Command::Standalone {
            dir,
            port_offset,
            address,
            no_watch,
            echo_backends,
            no_mesh,
            ca_listen,
            config_listen,
            node_name,
            runtime,
        } => {
            let mesh = (!no_mesh).then(|| MeshOptions {
                ca: CaSource::Local { listen: ca_listen },
                node_name,
                ..MeshOptions::all_in_one()
            });
            block_on(
                strait::runtime::build_proxy(runtime.or(Workers::PerCpu)),
                run_standalone(
                    dir,
                    port_offset,
                    address,
                    !no_watch,
                    echo_backends,
                    mesh,
                    config_listen,
                ),
            )
        }
        Command::Node {
            dir,
            control_plane,
            ca,
            node_name,
            probe_sources,
            netns_dir,
            access,
            runtime,
            no_watch,
        } => {
            let scope = node_name.clone().map(strait_xds::Scope::node);
            let mesh = MeshOptions {
                ca: match access.remote_ca(ca) {
                    Ok(ca) => ca,
                    Err(error) => return fail(error),
                },
                node: true,
                node_name,
                waypoints: WaypointSelection::None,
                probe_sources,
                netns_dir: Some(netns_dir),
            };
            block_on(
                strait::runtime::build_proxy(runtime.or(Workers::ONE)),
                run_mesh_component(dir, control_plane, scope, !no_watch, access, mesh),
            )
        }
        Command::Waypoint {
            dir,
            control_plane,
            namespace,
            name,
            ca,
            netns,
            access,
            runtime,
            no_watch,
        } => {
            let scope = Some(strait_xds::Scope::waypoint(&namespace, &name));
            let mesh = MeshOptions {
                ca: match access.remote_ca(ca) {
                    Ok(ca) => ca,
                    Err(error) => return fail(error),
                },
                node: false,
                node_name: None,
                waypoints: WaypointSelection::One {
                    gateway: ObjectRef { namespace, name },
                    netns,
                },
                probe_sources: Vec::new(),
                netns_dir: None,
            };
            block_on(
                strait::runtime::build_proxy(runtime.or(Workers::ONE)),
                run_mesh_component(dir, control_plane, scope, !no_watch, access, mesh),
            )
        }
    };
    result.unwrap_or_else(fail)
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

/// How a proxy proves itself to the controller and checks the controller: where provisioned
/// proxies and the node DaemonSet mount their token and the mesh's trust anchor.
#[derive(clap::Args, Clone, Debug)]
struct ProxyAccess {
    /// Projected service-account token (audience strait-ca) presented to the config stream
    /// and the CA; sent only if the file exists.
    #[arg(long, default_value = "/var/run/secrets/strait.dev/tokens/strait-ca")]
    token_file: PathBuf,
    /// Trust anchor of the controller's serving certificate, for https:// endpoints.
    #[arg(long, default_value = "/var/run/secrets/strait.dev/ca-root/root.crt")]
    ca_root: PathBuf,
    /// Serve `/healthz/ready` here (with --control-plane: ready once a config is applied).
    #[arg(long, default_value = "0.0.0.0:15021")]
    health_listen: SocketAddr,
}

/// How many threads serve traffic.
#[derive(clap::Args, Clone, Copy, Debug)]
struct RuntimeArgs {
    /// Worker threads: a number, or `auto` for one per CPU the process may use. Each worker
    /// serves its share of the connections on a thread of its own. Default: 1 for `node` and
    /// `waypoint`, whose light-load requests cost least when one thread batches them; `auto`
    /// for the gateways, which also terminate TLS from many clients. One worker can use one
    /// CPU at most.
    #[arg(long, env = "STRAIT_WORKERS", value_name = "N|auto")]
    workers: Option<Workers>,
}

impl RuntimeArgs {
    fn or(self, default: Workers) -> Workers {
        self.workers.unwrap_or(default)
    }
}

impl ProxyAccess {
    /// The token file, when there is one (standalone and development runs have none).
    fn token(&self) -> Option<PathBuf> {
        self.token_file.exists().then(|| self.token_file.clone())
    }

    /// The trust anchor for `endpoint`: required for https://, unused for http://.
    fn tls_root(&self, endpoint: &str) -> anyhow::Result<Option<String>> {
        if !endpoint.starts_with("https://") {
            return Ok(None);
        }
        std::fs::read_to_string(&self.ca_root)
            .map(Some)
            .with_context(|| {
                format!(
                    "{endpoint}: reading the trust anchor {} (--ca-root)",
                    self.ca_root.display()
                )
            })
    }

    fn control_plane(&self, endpoint: &str) -> anyhow::Result<ControlPlane> {
        Ok(ControlPlane {
            endpoint: endpoint.to_string(),
            token_file: self.token(),
            tls_root: self.tls_root(endpoint)?,
        })
    }

    fn remote_ca(&self, endpoint: String) -> anyhow::Result<CaSource> {
        let tls_root = self.tls_root(&endpoint)?;
        Ok(CaSource::Remote {
            endpoint,
            token_file: self.token(),
            tls_root,
        })
    }
}

/// Runs a long-running command on `runtime` (see [`strait::runtime`]).
fn block_on(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    job: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<ExitCode> {
    let runtime = runtime.context("starting the runtime")?;
    runtime.block_on(job).map(|()| ExitCode::SUCCESS)
}

/// `strait node` / `strait waypoint`: from DIR (compiled here) or from the controller.
async fn run_mesh_component(
    dir: Option<PathBuf>,
    control_plane: Option<String>,
    scope: Option<strait_xds::Scope>,
    watch: bool,
    access: ProxyAccess,
    mesh: MeshOptions,
) -> anyhow::Result<()> {
    match (dir, control_plane) {
        (Some(dir), _) => run_component(dir, watch, mesh).await,
        (None, Some(control_plane)) => {
            let scope = scope.context("--node-name is required with --control-plane")?;
            let control_plane = access.control_plane(&control_plane)?;
            let (runtime, subscription) =
                strait::subscribe::mesh(&control_plane, scope, mesh).await?;
            serve_health(access.health_listen, &subscription).await?;
            wait_for_signal().await?;
            eprintln!("shutting down");
            subscription.stop().await;
            runtime.shutdown(false).await;
            Ok(())
        }
        (None, None) => anyhow::bail!("give DIR or --control-plane"),
    }
}

/// Readiness of a proxy fed by the config stream: it has applied a config (and keeps serving
/// it while the controller is away, so losing the stream does not make it unready).
async fn serve_health(
    listen: SocketAddr,
    subscription: &strait_xds::client::SubscriptionHandle,
) -> anyhow::Result<()> {
    let status = subscription.watch_status();
    strait::health::spawn(listen, move || status.borrow().last_version.is_some()).await?;
    Ok(())
}

async fn run_gateway(
    control_plane: String,
    gateway: String,
    access: ProxyAccess,
) -> anyhow::Result<()> {
    let (namespace, name) = gateway
        .split_once('/')
        .context("--gateway must be NAMESPACE/NAME")?;
    let control_plane = access.control_plane(&control_plane)?;
    let subscription = strait::subscribe::gateway(&control_plane, namespace, name);
    serve_health(access.health_listen, &subscription).await?;
    wait_for_signal().await?;
    eprintln!("shutting down");
    subscription.stop().await;
    Ok(())
}

fn run_iptables(action: IptablesAction) -> anyhow::Result<()> {
    match action {
        IptablesAction::Apply {
            netns,
            exclude_outbound_ports,
            exclude_outbound_cidrs,
            exclude_inbound_ports,
            probe_sources,
            pod_ip,
            dry_run,
        } => {
            let spec = strait_capture::CaptureSpec {
                exclude_outbound_ports,
                exclude_outbound_cidrs,
                exclude_inbound_ports,
                probe_sources,
                pod_ip,
                ..strait_capture::CaptureSpec::default()
            };
            if dry_run {
                print!("{}", strait_capture::render(&spec)?);
                if let Some(pod_ip) = pod_ip {
                    println!("# ip -4 -batch -");
                    print!("{}", strait_capture::render_routing(&spec, pod_ip)?);
                }
                return Ok(());
            }
            let handle = strait_netns::NetNs::named(&netns)?;
            strait_capture::apply(&handle, &spec)
                .with_context(|| format!("network namespace {netns}"))?;
            eprintln!("capture rules installed in {netns}");
        }
        IptablesAction::Remove { netns } => {
            let handle = strait_netns::NetNs::named(&netns)?;
            strait_capture::remove(&handle)
                .with_context(|| format!("network namespace {netns}"))?;
            eprintln!("capture rules removed from {netns}");
        }
    }
    Ok(())
}

/// `strait node` / `strait waypoint`: one mesh component fed from DIR, until Ctrl-C or
/// SIGTERM. A stop leaves the capture rules in place so pods fail closed until the next start.
async fn run_component(dir: PathBuf, watch: bool, mesh: MeshOptions) -> anyhow::Result<()> {
    let standalone = Standalone::start(StandaloneOptions {
        dir,
        port_offset: 0,
        watch,
        gateways: false,
        mesh: Some(mesh),
        config_listen: None,
    })
    .await?;
    for error in standalone.load_errors() {
        eprintln!("{error}");
    }
    wait_for_signal().await?;
    eprintln!("shutting down");
    standalone.stop_keeping_rules().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// `strait wait-for-capture`: a current-thread runtime is plenty for one socket.
fn run_wait_for_capture(timeout: std::time::Duration) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let options = capture_wait::WaitOptions {
        timeout,
        ..capture_wait::WaitOptions::default()
    };
    let waited = runtime.block_on(capture_wait::wait_for_capture(&options))?;
    eprintln!(
        "pod captured by the mesh (waited {} ms)",
        waited.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_check(paths: &[PathBuf]) -> ExitCode {
    let report = strait::check::check(paths);
    print!("{}", report.yaml);
    for problem in &report.problems {
        eprintln!("{problem}");
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} problem(s)", report.problems.len());
        ExitCode::FAILURE
    }
}

async fn run_standalone(
    dir: Option<PathBuf>,
    port_offset: u16,
    address: Option<IpAddr>,
    watch: bool,
    echo_backends: bool,
    mesh: Option<MeshOptions>,
    config_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let (dir, address, echo_backends) = match dir {
        Some(dir) => (dir, address, echo_backends),
        None => {
            let dir = strait::demo::write_embedded_examples()?;
            eprintln!("demo: serving the built-in examples from {}", dir.display());
            (
                dir,
                Some(address.unwrap_or(IpAddr::from([127, 0, 0, 1]))),
                true,
            )
        }
    };
    let _backends = if echo_backends {
        strait::demo::start_echo_backends(&dir).await?
    } else {
        Vec::new()
    };
    let mode = address.map_or(AddressMode::PerGateway, AddressMode::Shared);
    let standalone = Standalone::start_with(
        StandaloneOptions {
            dir,
            port_offset,
            watch,
            gateways: true,
            mesh,
            config_listen,
        },
        mode,
    )
    .await?;
    for error in standalone.load_errors() {
        eprintln!("{error}");
    }
    for gateway in &standalone.config().gateways {
        for port in &gateway.ports {
            for address in &gateway.addresses {
                let local = port.port.saturating_add(port_offset);
                eprintln!(
                    "gateway {}: listener port {} on {address}:{local}",
                    gateway.gateway, port.port
                );
            }
        }
    }
    if let Some(addr) = standalone.ca_addr() {
        eprintln!("workload CA: http://{addr}");
    }
    wait_for_signal().await?;
    eprintln!("shutting down");
    standalone.shutdown().await;
    Ok(())
}

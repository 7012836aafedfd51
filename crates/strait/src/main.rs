//! `strait`: one binary, one subcommand per role.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use strait::AddressMode;
use strait::mesh::{CaSource, MeshOptions, WaypointSelection};
use strait::standalone::{Standalone, StandaloneOptions};
use strait_config::ObjectRef;

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
        /// Node proxy: serve only pods with this spec.nodeName.
        #[arg(long)]
        node_name: Option<String>,
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
        /// Do not reload when files change.
        #[arg(long)]
        no_watch: bool,
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
    },
    /// The Kubernetes controller: watches the API server, compiles, streams config to proxies,
    /// writes status (as the holder of the `strait-controller` Lease).
    Controller {
        /// Serve the config stream here.
        #[arg(long, default_value = "0.0.0.0:15010")]
        config_listen: SocketAddr,
        /// Kubeconfig to use instead of the in-cluster configuration.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Namespace of the leader-election Lease.
        #[arg(long, default_value = "strait-system")]
        lease_namespace: String,
        /// This replica's identity in the Lease (the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Write status without leader election (a single replica, development).
        #[arg(long)]
        no_leader_election: bool,
    },
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
        .init();
    // Exactly one crypto provider is compiled in; make it the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { paths } => Ok(run_check(&paths)),
        Command::Iptables { action } => run_iptables(action).map(|()| ExitCode::SUCCESS),
        Command::Controller {
            config_listen,
            kubeconfig,
            lease_namespace,
            identity,
            no_leader_election,
        } => block_on(run_controller(
            config_listen,
            kubeconfig,
            lease_namespace,
            identity,
            no_leader_election,
        )),
        Command::Gateway {
            control_plane,
            gateway,
        } => block_on(run_gateway(control_plane, gateway)),
        Command::Standalone {
            dir,
            port_offset,
            address,
            no_watch,
            echo_backends,
            no_mesh,
            ca_listen,
            node_name,
        } => {
            let mesh = (!no_mesh).then(|| MeshOptions {
                ca: CaSource::Local { listen: ca_listen },
                node_name,
                ..MeshOptions::all_in_one()
            });
            block_on(run_standalone(
                dir,
                port_offset,
                address,
                !no_watch,
                echo_backends,
                mesh,
            ))
        }
        Command::Node {
            dir,
            control_plane,
            ca,
            node_name,
            probe_sources,
            no_watch,
        } => {
            let scope = node_name.clone().map(strait_xds::Scope::node);
            let mesh = MeshOptions {
                ca: CaSource::Remote(ca),
                node: true,
                node_name,
                waypoints: WaypointSelection::None,
                probe_sources,
            };
            block_on(run_mesh_component(
                dir,
                control_plane,
                scope,
                !no_watch,
                mesh,
            ))
        }
        Command::Waypoint {
            dir,
            control_plane,
            namespace,
            name,
            ca,
            netns,
            no_watch,
        } => {
            let scope = Some(strait_xds::Scope::waypoint(&namespace, &name));
            let mesh = MeshOptions {
                ca: CaSource::Remote(ca),
                node: false,
                node_name: None,
                waypoints: WaypointSelection::One {
                    gateway: ObjectRef { namespace, name },
                    netns,
                },
                probe_sources: Vec::new(),
            };
            block_on(run_mesh_component(
                dir,
                control_plane,
                scope,
                !no_watch,
                mesh,
            ))
        }
    };
    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

fn block_on(job: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(job)
        .map(|()| ExitCode::SUCCESS)
}

/// `strait node` / `strait waypoint`: from DIR (compiled here) or from the controller.
async fn run_mesh_component(
    dir: Option<PathBuf>,
    control_plane: Option<String>,
    scope: Option<strait_xds::Scope>,
    watch: bool,
    mesh: MeshOptions,
) -> anyhow::Result<()> {
    match (dir, control_plane) {
        (Some(dir), _) => run_component(dir, watch, mesh).await,
        (None, Some(control_plane)) => {
            let scope = scope.context("--node-name is required with --control-plane")?;
            let (runtime, subscription) =
                strait::subscribe::mesh(&control_plane, scope, mesh).await?;
            wait_for_signal().await?;
            eprintln!("shutting down");
            subscription.stop().await;
            runtime.shutdown(false).await;
            Ok(())
        }
        (None, None) => anyhow::bail!("give DIR or --control-plane"),
    }
}

async fn run_gateway(control_plane: String, gateway: String) -> anyhow::Result<()> {
    let (namespace, name) = gateway
        .split_once('/')
        .context("--gateway must be NAMESPACE/NAME")?;
    let subscription = strait::subscribe::gateway(&control_plane, namespace, name);
    wait_for_signal().await?;
    eprintln!("shutting down");
    subscription.stop().await;
    Ok(())
}

async fn run_controller(
    config_listen: SocketAddr,
    kubeconfig: Option<PathBuf>,
    lease_namespace: String,
    identity: Option<String>,
    no_leader_election: bool,
) -> anyhow::Result<()> {
    let config = match &kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster configuration (use --kubeconfig)")?,
    };
    let client = kube::Client::try_from(config).context("building the API client")?;
    let lease = (!no_leader_election).then(|| strait_controller::lease::LeaseOptions {
        namespace: lease_namespace,
        name: "strait-controller".into(),
        identity: identity.unwrap_or_else(|| format!("strait-{}", std::process::id())),
        duration: std::time::Duration::from_secs(15),
        renew: std::time::Duration::from_secs(5),
    });
    let options = strait_controller::ControllerOptions {
        lease,
        ..strait_controller::ControllerOptions::default()
    };
    let hub = strait_xds::server::ConfigHub::new();
    let listener = tokio::net::TcpListener::bind(config_listen)
        .await
        .with_context(|| format!("config stream: cannot listen on {config_listen}"))?;
    let serving = hub.clone();
    tokio::spawn(async move {
        if let Err(e) = strait_xds::server::serve(serving, listener, std::future::pending()).await {
            tracing::error!(error = %e, "config stream server failed");
        }
    });
    tracing::info!(%config_listen, "serving the config stream");
    let mut publisher = strait_controller::publish::Publisher::new(hub);
    let controller = strait_controller::run(client, options, move |output| {
        publisher.publish(output);
    });
    tokio::select! {
        () = controller => Ok(()),
        result = wait_for_signal() => result,
    }
}

fn run_iptables(action: IptablesAction) -> anyhow::Result<()> {
    match action {
        IptablesAction::Apply {
            netns,
            exclude_outbound_ports,
            exclude_outbound_cidrs,
            exclude_inbound_ports,
            probe_sources,
            dry_run,
        } => {
            let spec = strait_capture::CaptureSpec {
                exclude_outbound_ports,
                exclude_outbound_cidrs,
                exclude_inbound_ports,
                probe_sources,
                ..strait_capture::CaptureSpec::default()
            };
            if dry_run {
                print!("{}", strait_capture::render(&spec)?);
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

//! `strait`: one binary, one subcommand per role.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use strait::AddressMode;
use strait::standalone::{Standalone, StandaloneOptions};

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
    },
    /// Print the status every object in the given files/directories would get; exit 1 on errors.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
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
        Command::Standalone {
            dir,
            port_offset,
            address,
            no_watch,
            echo_backends,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| {
                rt.block_on(run_standalone(
                    dir,
                    port_offset,
                    address,
                    !no_watch,
                    echo_backends,
                ))
            })
            .map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
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
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    eprintln!("shutting down");
    standalone.shutdown().await;
    Ok(())
}

//! `strait-echo`: the echo-advanced client the mesh tests exec inside pods, and the server for
//! manual use.
//!
//! ```text
//! strait-echo client http://echo/path --method GET -H X-Name:value --count 10 --timeout 5s
//! strait-echo server --port=8080 --tls=8443 --port=8443 --tcp=9090 --version=v1
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser};
use strait_echo::TlsSettings;
use strait_echo::advanced::{self, AdvancedEcho, ClientRequest, EchoArgs, Identity};

#[derive(Parser)]
#[command(
    name = "strait-echo",
    version,
    about = "Istio-style echo client and server"
)]
enum Cli {
    /// Send requests and print `Key=Value` lines per response.
    Client(ClientArgs),
    /// Serve echo-advanced in the current network namespace, with the container's arguments
    /// (`--port`, `--tls`, `--tcp`, `--grpc` (ignored), `--crt`, `--key`, `--version`,
    /// `--cluster`, `--namespace`, `--hostname`).
    Server(ServerArgs),
}

#[derive(Args)]
struct ClientArgs {
    /// `http://host[:port]/path?query`.
    url: String,
    /// Request method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// Request header `Name:Value` (repeatable); `Host:...` replaces the URL's host.
    #[arg(short = 'H', long = "header", allow_hyphen_values = true)]
    headers: Vec<String>,
    /// Number of requests, sent one after the other on a kept-alive connection.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Limit per request (`5s`, `500ms`, or seconds).
    #[arg(long, default_value = "10s", value_parser = timeout)]
    timeout: Duration,
}

#[derive(Args)]
#[command(disable_help_flag = true)]
struct ServerArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn timeout(text: &str) -> Result<Duration, String> {
    advanced::parse_timeout(text).ok_or_else(|| format!("invalid duration {text:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli {
        Cli::Client(args) => client(args),
        Cli::Server(args) => server(args),
    }
}

fn client(args: ClientArgs) -> ExitCode {
    let mut headers = Vec::new();
    for header in &args.headers {
        let Some((name, value)) = header.split_once(':') else {
            eprintln!("strait-echo client: header {header:?} is not Name:Value");
            return ExitCode::from(2);
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let request = ClientRequest {
        url: args.url,
        method: args.method,
        headers,
        count: args.count,
        timeout: args.timeout,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("strait-echo client: starting runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match runtime.block_on(advanced::run_client(&request, &mut out)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("strait-echo client: {failed} request(s) failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("strait-echo client: writing output: {e}");
            ExitCode::FAILURE
        }
    }
}

fn server(args: ServerArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let parsed = match EchoArgs::parse(&args.args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("strait-echo server: {e}");
            return ExitCode::from(2);
        }
    };
    for flag in &parsed.ignored {
        tracing::warn!("ignoring unsupported argument {flag}");
    }
    let mut options = parsed.options.clone();
    if let (Some(cert), Some(key)) = (&parsed.cert_file, &parsed.key_file) {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
        };
        match (read(cert), read(key)) {
            (Ok(cert_pem), Ok(key_pem)) => {
                options.tls = Some(TlsSettings {
                    cert_pem,
                    key_pem,
                    client_ca_pem: None,
                })
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("using a self-signed certificate: {e}");
            }
        }
    }
    let env = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    };
    let hostname = env(&["POD_NAME", "HOSTNAME"])
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default();
    let identity = parsed.identity(Identity {
        namespace: env(&["POD_NAMESPACE", "NAMESPACE"]).unwrap_or_default(),
        version: env(&["SERVICE_VERSION"]).unwrap_or_default(),
        pod: hostname,
        cluster: String::new(),
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("strait-echo server: starting runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let echo = match AdvancedEcho::start_in(None, options, identity).await {
            Ok(echo) => echo,
            Err(e) => {
                eprintln!("strait-echo server: {e}");
                return ExitCode::FAILURE;
            }
        };
        for (kind, addr) in echo.addrs() {
            tracing::info!("listening on {addr} ({kind:?})");
        }
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("strait-echo server: waiting for a signal: {e}");
            return ExitCode::FAILURE;
        }
        echo.stop();
        ExitCode::SUCCESS
    })
}

//! `strait controller`: wires the Kubernetes controller (`strait-controller`) to its servers —
//! the config stream (:15010), the workload CA (:15012) and the health endpoint (:15021) — and
//! to the provisioner's view of where proxies find them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use strait_controller::lease::LeaseOptions;
use strait_controller::provision::ProvisionOptions;
use strait_controller::publish::Publisher;
use strait_controller::{ControllerOptions, ca};

/// Command-line options of `strait controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Serve the config stream here.
    #[arg(long, default_value = "0.0.0.0:15010")]
    pub config_listen: SocketAddr,
    /// Serve the workload CA here.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub ca_listen: SocketAddr,
    /// Serve `/healthz/ready` here.
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub health_listen: SocketAddr,
    /// Kubeconfig to use instead of the in-cluster configuration.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The controller's namespace: the leader-election Lease and the CA Secret live here, and
    /// provisioned proxies reach `strait-controller.<NAMESPACE>`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "strait-system")]
    pub namespace: String,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Write status and provision without leader election (a single replica, development).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Image of provisioned gateways and waypoints (the controller's own, set by the
    /// manifests).
    #[arg(long, env = "STRAIT_PROXY_IMAGE")]
    pub proxy_image: Option<String>,
    /// Create no Deployments/Services for Gateways and waypoints (they are run some other way,
    /// e.g. `strait gateway` by hand during development).
    #[arg(long)]
    pub no_provision: bool,
    /// SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Secret (in --namespace) holding the CA certificate and key; created if missing.
    #[arg(long, default_value = "strait-ca")]
    pub ca_secret: String,
    /// Serve the config stream and the CA without TLS (development on a trusted network only:
    /// tokens and Gateway private keys then cross the network in cleartext).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// The controller's Service, whose names its serving certificate carries.
const SERVICE_NAME: &str = "strait-controller";
/// Lifetime of the serving certificate, issued at every start (controllers restart with every
/// upgrade; one that runs longer must be restarted within this time).
const SERVING_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Runs the controller until SIGTERM/Ctrl-C.
pub async fn run(
    args: ControllerArgs,
    shutdown: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let ready = Arc::new(AtomicBool::new(false));
    let probe = ready.clone();
    crate::health::spawn(args.health_listen, move || probe.load(Ordering::Relaxed)).await?;

    let authority = ca::load_or_create_ca(
        client.clone(),
        &args.namespace,
        &args.ca_secret,
        &args.trust_domain,
    )
    .await
    .with_context(|| format!("CA Secret {}/{}", args.namespace, args.ca_secret))?;
    let authority = Arc::new(authority);
    // Proxies verify the control plane with the mesh's trust anchor, which they get from the
    // ConfigMap the provisioner writes: no second PKI to distribute.
    let tls = if args.insecure_plaintext {
        None
    } else {
        let names: Vec<String> = [
            SERVICE_NAME.to_string(),
            format!("{SERVICE_NAME}.{}", args.namespace),
            format!("{SERVICE_NAME}.{}.svc", args.namespace),
            format!("{SERVICE_NAME}.{}.svc.cluster.local", args.namespace),
        ]
        .into();
        let (chain, key) = authority
            .issue_server_certificate(&names, SERVING_CERT_VALIDITY)
            .context("issuing the control plane's serving certificate")?;
        Some(tonic::transport::Identity::from_pem(chain, key))
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ca_listener = tokio::net::TcpListener::bind(args.ca_listen)
        .await
        .with_context(|| format!("CA: cannot listen on {}", args.ca_listen))?;

    let lease = (!args.no_leader_election).then(|| LeaseOptions {
        namespace: args.namespace.clone(),
        name: "strait-controller".into(),
        identity: args
            .identity
            .clone()
            .unwrap_or_else(|| format!("strait-{}", std::process::id())),
        duration: Duration::from_secs(15),
        renew: Duration::from_secs(5),
    });
    let service = format!("{SERVICE_NAME}.{}.svc", args.namespace);
    let provision = (!args.no_provision).then(|| ProvisionOptions {
        image: args
            .proxy_image
            .clone()
            .unwrap_or_else(|| format!("ghcr.io/strait-mesh/strait:{}", env!("CARGO_PKG_VERSION"))),
        control_plane: format!("{scheme}://{service}:{}", args.config_listen.port()),
        ca: format!("{scheme}://{service}:{}", args.ca_listen.port()),
        ca_root_pem: Some(authority.root_pem().to_string()),
        controller_namespace: args.namespace.clone(),
    });
    let options = ControllerOptions {
        lease,
        provision,
        ..ControllerOptions::default()
    };

    // One reviewer for both servers: a proxy's token is reviewed once (and cached) whether it
    // subscribes to its config or asks for a certificate.
    let sources = strait_controller::sources::Sources::start(&client);
    let ca_options = ca::TokenReviewOptions {
        node_proxies: vec![ca::ServiceAccountRef::new(
            &args.namespace,
            ca::NODE_PROXY_SERVICE_ACCOUNT,
        )],
        ..ca::TokenReviewOptions::default()
    };
    let reviewer = Arc::new(ca::TokenReviewAuthorizer::new(
        client.clone(),
        sources.pods(),
        ca_options,
    ));

    let hub = strait_xds::server::ConfigHub::new();
    let listener = tokio::net::TcpListener::bind(args.config_listen)
        .await
        .with_context(|| format!("config stream: cannot listen on {}", args.config_listen))?;
    let serving = hub.clone();
    let scope_auth = ca::ScopeAuthorizer::new(reviewer.clone());
    let stream_tls = tls.clone();
    tokio::spawn(async move {
        let serve = strait_xds::server::serve_with_auth_tls(
            serving,
            scope_auth,
            listener,
            stream_tls,
            std::future::pending(),
        );
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "config stream server failed");
        }
    });
    tracing::info!(config = %args.config_listen, ca = %args.ca_listen, "serving the config stream and the CA");

    let mut publisher = Publisher::new(hub);
    let published = ready.clone();
    let controller =
        strait_controller::run_with_sources(client.clone(), sources, options, move |output| {
            publisher.publish(output);
            // Ready once the first complete snapshot (every kind listed) was published.
            published.store(true, Ordering::Relaxed);
        });
    let ca_server = ca::serve_ca_with(
        reviewer,
        authority,
        ca_listener,
        tls,
        std::future::pending(),
    );
    tokio::select! {
        () = controller => Ok(()),
        result = ca_server => result.context("CA server failed"),
        result = shutdown => result,
    }
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
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
    kube::Client::try_from(config).context("building the API client")
}

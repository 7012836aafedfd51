//! One enrolled pod as the node proxy serves it: listeners in its namespace, its identity, its
//! capture rules.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use http::StatusCode;
use strait_capture::{CaptureSpec, PROXY_MARK};
use strait_config::ObjectRef;
use strait_config::mesh::{MtlsMode, Workload};
use strait_identity::{Certificates, SpiffeId, WorkloadCertificate};
use strait_netns::NetNs;
use strait_proxy::dial::{BoxIo, Dialer};
use strait_proxy::hbone::{
    self, HBONE_PORT, HboneClient, ServerIdentity, TunnelHandler, TunnelRequest, TunnelTarget,
    TunnelTask,
};
use strait_proxy::mesh::{MeshView, workload_identity};
use strait_proxy::splice;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::orig_dst::original_dst;
use crate::plan::{Plan, plan};
use crate::{INBOUND_PORT, NodeError, NodeOptions, OUTBOUND_PORT};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Different waypoint replicas / endpoints tried for one outbound connection.
const CONNECT_ATTEMPTS: u64 = 3;

/// Dials from inside the pod's namespace with the proxy mark (so the capture rules skip it).
struct PodDialer(NetNs);

impl Dialer for PodDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<BoxIo>> {
        let netns = self.0.clone();
        Box::pin(async move {
            let stream = netns.connect(addr, Some(PROXY_MARK)).await?;
            Ok(Box::new(stream) as BoxIo)
        })
    }
}

struct PodCtx {
    pod: ObjectRef,
    workload: ArcSwap<Workload>,
    identity: SpiffeId,
    netns: NetNs,
    view: MeshView,
    certs: Arc<Certificates>,
    hbone: HboneClient,
}

pub(crate) struct PodProxy {
    ctx: Arc<PodCtx>,
    stop: watch::Sender<bool>,
    probe_sources: Vec<String>,
}

/// A pod that could not be started; `rules_installed` says whether its capture rules were
/// installed before the failure (the caller removes them if the pod leaves the mesh).
pub(crate) struct StartError {
    pub(crate) error: NodeError,
    pub(crate) rules_installed: bool,
}

impl PodProxy {
    /// Serves `workload` inside `netns` (`netns_label` names it in logs).
    pub(crate) async fn start(
        workload: Workload,
        netns: NetNs,
        netns_label: String,
        options: &NodeOptions,
        view: MeshView,
    ) -> Result<PodProxy, StartError> {
        let pod = workload.pod.clone();
        let fail = |error: NodeError, rules_installed: bool| StartError {
            error,
            rules_installed,
        };
        let identity = workload_identity(&view.load(), &workload).ok_or_else(|| {
            fail(
                NodeError::Identity {
                    pod: pod.clone(),
                    service_account: workload.service_account.clone(),
                },
                false,
            )
        })?;
        // Rules first, listeners second: `strait wait-for-capture` (the pod's first init
        // container) takes a listening 15008 as proof that the pod's traffic is captured, so a
        // listener must never exist in a pod without the rules. In between, redirected
        // connections find no listener and are refused: the pod fails closed, never around
        // the mesh.
        if options.manage_rules {
            install_rules(&pod, &netns, &workload, &options.probe_sources)
                .await
                .map_err(|e| fail(e, false))?;
        }
        let rules_installed = options.manage_rules;
        let bind = |port: u16| {
            netns
                .tcp_listener(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), 1024)
                .map_err(|source| {
                    fail(
                        NodeError::Netns {
                            pod: pod.clone(),
                            source: Box::new(source),
                        },
                        rules_installed,
                    )
                })
        };
        let outbound = bind(OUTBOUND_PORT)?;
        let inbound = bind(INBOUND_PORT)?;
        // Last: its presence is what `wait-for-capture` waits for.
        let hbone_listener = bind(HBONE_PORT)?;
        let ctx = Arc::new(PodCtx {
            pod: pod.clone(),
            workload: ArcSwap::from_pointee(workload),
            identity,
            netns: netns.clone(),
            view,
            certs: options.certs.clone(),
            hbone: HboneClient::new(Arc::new(PodDialer(netns))),
        });
        // Fetch the certificate now so the first connection does not wait for the CA.
        let warm = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = warm.certs.get(&warm.identity).await {
                tracing::warn!(pod = %warm.pod, error = %e, "no certificate yet");
            }
        });
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(
            outbound,
            ctx.clone(),
            stop_rx.clone(),
            Direction::Outbound,
        ));
        tokio::spawn(accept_loop(
            inbound,
            ctx.clone(),
            stop_rx.clone(),
            Direction::Inbound,
        ));
        let identity_source: Arc<dyn ServerIdentity> = ctx.clone();
        let handler: Arc<dyn TunnelHandler> = Arc::new(InboundTunnels(ctx.clone()));
        tokio::spawn(hbone::serve(
            hbone_listener,
            identity_source,
            handler,
            stop_rx,
        ));
        tracing::info!(pod = %pod, netns = %netns_label, identity = %ctx.identity, "serving pod");
        Ok(PodProxy {
            ctx,
            stop,
            probe_sources: options.probe_sources.clone(),
        })
    }

    /// Whether this proxy still fits the workload (same address, namespace and identity).
    pub(crate) fn serves(&self, workload: &Workload) -> bool {
        let current = self.ctx.workload.load();
        current.ip == workload.ip
            && current.netns == workload.netns
            && current.service_account == workload.service_account
    }

    /// The pod's network namespace.
    pub(crate) fn netns(&self) -> &NetNs {
        &self.ctx.netns
    }

    /// The address the pod is served at.
    pub(crate) fn ip(&self) -> std::net::IpAddr {
        self.ctx.workload.load().ip
    }

    /// Takes a changed workload (mTLS mode, exclusions) without rebinding.
    pub(crate) fn update(&self, workload: Workload, manage_rules: bool) {
        let previous = self.ctx.workload.swap(Arc::new(workload.clone()));
        if manage_rules && previous.capture != workload.capture {
            let ctx = self.ctx.clone();
            let probes = self.probe_sources.clone();
            tokio::spawn(async move {
                if let Err(e) = install_rules(&ctx.pod, &ctx.netns, &workload, &probes).await {
                    tracing::warn!(error = %e, "capture rules not updated");
                }
            });
        }
    }

    /// Stops the listeners; open connections finish. Removes the rules when asked.
    pub(crate) async fn stop(self, remove_rules: bool) {
        let _ = self.stop.send(true);
        self.ctx.certs.forget(&self.ctx.identity);
        if remove_rules {
            remove_rules_from(&self.ctx.pod, self.ctx.netns.clone()).await;
        }
        tracing::info!(pod = %self.ctx.pod, "stopped serving pod");
    }
}

/// Removes the capture rules of `pod` from `netns`; failures are logged (nothing to retry: the
/// pod is no longer ours).
pub(crate) async fn remove_rules_from(pod: &ObjectRef, netns: NetNs) {
    match tokio::task::spawn_blocking(move || strait_capture::remove(&netns)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%pod, error = %e, "capture rules not removed"),
        Err(_) => tracing::warn!(%pod, "capture rules removal failed"),
    }
}

async fn install_rules(
    pod: &ObjectRef,
    netns: &NetNs,
    workload: &Workload,
    probe_sources: &[String],
) -> Result<(), NodeError> {
    let spec = CaptureSpec {
        probe_sources: probe_sources.to_vec(),
        pod_ip: match workload.ip {
            std::net::IpAddr::V4(ip) => Some(ip),
            std::net::IpAddr::V6(_) => None,
        },
        ..CaptureSpec::default()
    }
    .with_exclusions(&workload.capture);
    let netns = netns.clone();
    match tokio::task::spawn_blocking(move || strait_capture::apply(&netns, &spec)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(NodeError::Capture {
            pod: pod.clone(),
            source: Box::new(source),
        }),
        Err(_) => Err(NodeError::CaptureWorker { pod: pod.clone() }),
    }
}

#[derive(Clone, Copy, Debug)]
enum Direction {
    Outbound,
    Inbound,
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<PodCtx>,
    stop: watch::Receiver<bool>,
    direction: Direction,
) {
    strait_proxy::accept::accept_until_stopped(listener, stop, |_| {
        let ctx = ctx.clone();
        move |stream| async move {
            match direction {
                Direction::Outbound => outbound(&ctx, stream).await,
                Direction::Inbound => inbound_plaintext(&ctx, stream).await,
            }
        }
    })
    .await;
}

/// Closes with a reset, so the application sees a refused connection rather than an empty
/// answer.
fn refuse(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn outbound(ctx: &PodCtx, stream: TcpStream) {
    let dst = match original_dst(&stream) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::debug!(pod = %ctx.pod, error = %e, "outbound connection without original destination");
            return refuse(stream);
        }
    };
    let source = ctx.workload.load().ip;
    if dst.port() == OUTBOUND_PORT && dst.ip().is_loopback() {
        // Dialled the capture port itself: nothing to forward to.
        return refuse(stream);
    }
    let mesh = ctx.view.load_full();
    // A dead waypoint replica or endpoint is skipped: the next roll picks the next one
    // (plans index choices by `roll`), up to CONNECT_ATTEMPTS different choices.
    let first_roll: u64 = rand::random::<u32>().into();
    let mut upstream: Option<Upstream> = None;
    let mut last_plan = None;
    for attempt in 0..CONNECT_ATTEMPTS {
        let chosen = plan(&mesh, dst, first_roll + attempt);
        if last_plan.as_ref() == Some(&chosen) {
            // Only one choice exists: it already failed.
            break;
        }
        match connect_plan(ctx, &chosen, dst, source).await {
            Ok(io) => {
                upstream = Some(io);
                break;
            }
            Err(Final::Refused) => return refuse(stream),
            Err(Final::Retry) => last_plan = Some(chosen),
        }
    }
    let Some(upstream) = upstream else {
        tracing::info!(pod = %ctx.pod, %dst, "no reachable destination: connection refused");
        return refuse(stream);
    };
    let ended = match upstream {
        Upstream::Plain(upstream) => splice::relay(stream, upstream).await,
        Upstream::Tunnel(upstream) => hbone::relay(stream, upstream).await,
    };
    if let Err(e) = ended {
        tracing::debug!(pod = %ctx.pod, %dst, error = %e, "outbound connection ended");
    }
}

/// The upstream side of an outbound connection.
enum Upstream {
    /// A kernel socket straight to the destination: relayed with zero-copy splice.
    Plain(TcpStream),
    /// An HBONE tunnel (through the peer's node proxy or a waypoint).
    Tunnel(hbone::Tunnel),
}

/// Why a planned connection was not made.
enum Final {
    /// Refused by policy: never retried elsewhere.
    Refused,
    /// The chosen peer was unreachable: another choice may work.
    Retry,
}

/// Opens the upstream side of one outbound connection as planned.
async fn connect_plan(
    ctx: &PodCtx,
    chosen: &Plan,
    dst: SocketAddr,
    source: std::net::IpAddr,
) -> Result<Upstream, Final> {
    match chosen {
        Plan::Refuse(why) => {
            tracing::info!(pod = %ctx.pod, %dst, reason = %why, "outbound connection refused");
            Err(Final::Refused)
        }
        Plan::Passthrough(addr) => {
            match tokio::time::timeout(CONNECT_TIMEOUT, ctx.netns.connect(*addr, Some(PROXY_MARK)))
                .await
            {
                Ok(Ok(upstream)) => Ok(Upstream::Plain(upstream)),
                Ok(Err(e)) => {
                    tracing::debug!(pod = %ctx.pod, %addr, error = %e, "passthrough connect failed");
                    Err(Final::Retry)
                }
                Err(_) => Err(Final::Retry),
            }
        }
        Plan::Tunnel {
            peer,
            peer_id,
            target,
        } => {
            let certificate = ctx.certs.get(&ctx.identity).await.map_err(|e| {
                tracing::warn!(pod = %ctx.pod, error = %e, "no certificate: connection refused");
                Final::Refused
            })?;
            let to = TunnelTarget {
                local: &certificate,
                peer: *peer,
                peer_id: Some(peer_id),
                target: *target,
                source: Some(source),
            };
            match ctx.hbone.open(&to).await {
                Ok(tunnel) => Ok(Upstream::Tunnel(tunnel)),
                Err(e) => {
                    tracing::info!(pod = %ctx.pod, %dst, %peer, error = %e, "tunnel failed");
                    // The peer answered and said no: its decision stands.
                    if matches!(e, strait_proxy::hbone::HboneError::Refused { .. }) {
                        Err(Final::Refused)
                    } else {
                        Err(Final::Retry)
                    }
                }
            }
        }
    }
}

async fn inbound_plaintext(ctx: &PodCtx, stream: TcpStream) {
    let workload = ctx.workload.load_full();
    if workload.mtls == MtlsMode::Strict {
        tracing::info!(pod = %ctx.pod, peer = ?stream.peer_addr().ok(), "plaintext inbound refused: namespace requires mutual TLS");
        return refuse(stream);
    }
    let dst = match original_dst(&stream) {
        Ok(dst) => dst,
        Err(_) => return refuse(stream),
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, ctx.netns.connect(dst, Some(PROXY_MARK))).await {
        Ok(Ok(upstream)) => {
            if let Err(e) = splice::relay(stream, upstream).await {
                tracing::debug!(pod = %ctx.pod, %dst, error = %e, "inbound connection ended");
            }
        }
        _ => refuse(stream),
    }
}

impl ServerIdentity for PodCtx {
    fn certificate(&self) -> BoxFuture<'_, Option<Arc<WorkloadCertificate>>> {
        Box::pin(async move {
            match self.certs.get(&self.identity).await {
                Ok(certificate) => Some(certificate),
                Err(e) => {
                    tracing::warn!(pod = %self.pod, error = %e, "no certificate: HBONE refused");
                    None
                }
            }
        })
    }
}

/// Tunnels arriving on the pod's 15008: to the pod's own port.
struct InboundTunnels(Arc<PodCtx>);

impl TunnelHandler for InboundTunnels {
    fn open(&self, request: TunnelRequest) -> BoxFuture<'static, Result<TunnelTask, StatusCode>> {
        let ctx = self.0.clone();
        Box::pin(async move {
            let ip = ctx.workload.load().ip;
            if request.target.ip() != ip {
                tracing::debug!(pod = %ctx.pod, target = %request.target, "tunnel for another address refused");
                return Err(StatusCode::BAD_REQUEST);
            }
            let upstream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                ctx.netns.connect(request.target, Some(PROXY_MARK)),
            )
            .await
            .map_err(|_| StatusCode::GATEWAY_TIMEOUT)?
            .map_err(|e| {
                tracing::debug!(pod = %ctx.pod, target = %request.target, error = %e, "pod port unreachable");
                StatusCode::SERVICE_UNAVAILABLE
            })?;
            tracing::debug!(pod = %ctx.pod, target = %request.target, peer = ?request.peer_id.as_ref().map(ToString::to_string), "tunnel in");
            Ok(Box::new(move |tunnel: hbone::Tunnel| {
                Box::pin(async move {
                    if let Err(e) = hbone::relay(upstream, tunnel).await {
                        tracing::debug!(error = %e, "inbound tunnel ended");
                    }
                }) as BoxFuture<'static, ()>
            }) as TunnelTask)
        })
    }
}

//! The Kubernetes controller: watches the API server ([`sources`]), compiles with the same
//! pure `strait-compile` as standalone, hands each result to the config publisher, and (as the
//! Lease holder, [`lease`]) writes status ([`status`]).
//!
//! Changes are debounced: a burst of events (a `kubectl apply` of many objects, a relist)
//! becomes one compile.

pub mod ca;
pub mod lease;
pub mod provision;
pub mod provisioner;
pub mod prune;
pub mod publish;
pub mod referenced;
pub mod sources;
pub mod status;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use strait_compile::{CompileInput, CompileOutput, ObjectStatus, compile};
use strait_config::ObjectRef;
use strait_config::mesh::GATEWAY_NAME_LABEL;
use strait_model::Snapshot;
use tokio::sync::watch;

use crate::lease::LeaseOptions;
use crate::provision::ProvisionOptions;
use crate::provisioner::Provisioner;
use crate::sources::Sources;
use crate::status::StatusWriter;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// GatewayClass controllerName to serve.
    pub controller_name: String,
    /// Quiet time after a change before compiling (a change during it restarts it, up to ten
    /// times this in total).
    pub debounce: Duration,
    /// Leader election for status writes; `None` = always write (a single replica).
    pub lease: Option<LeaseOptions>,
    /// Provision Deployments/Services for Gateways and waypoints (as the leader); `None`
    /// leaves that to someone else (tests of the status path alone, development).
    pub provision: Option<ProvisionOptions>,
    /// How often the provisioner re-applies everything, repairing edits made behind its back.
    pub resync: Duration,
}

impl Default for ControllerOptions {
    fn default() -> ControllerOptions {
        ControllerOptions {
            controller_name: strait_compile::CONTROLLER_NAME.to_string(),
            debounce: Duration::from_millis(10),
            lease: None,
            provision: None,
            resync: Duration::from_secs(300),
        }
    }
}

/// Runs forever: compile on every (debounced) change, `publish` each output, write status
/// while leading (in the background, never delaying the next compile).
pub async fn run(
    client: Client,
    options: ControllerOptions,
    publish: impl FnMut(&CompileOutput) + Send + 'static,
) {
    let sources = Sources::start(&client);
    run_with_sources(client, sources, options, publish).await
}

/// Like [`run`], with sources the caller started, to share their caches (the CA reads the
/// pod cache to decide which identities a node proxy may hold).
///
/// Status writes run in a task of their own ([`write_statuses`]): a change that arrives while
/// they are under way is compiled and published without waiting for them. Taking the
/// snapshot ([`snapshot_aside`]), compiling and publishing run on blocking-pool threads
/// ([`compile_aside`]), as `publish` is called.
pub async fn run_with_sources(
    client: Client,
    sources: Sources,
    options: ControllerOptions,
    mut publish: impl FnMut(&CompileOutput) + Send + 'static,
) {
    sources.wait_ready().await;
    tracing::info!("controller caches ready");
    let sources = Arc::new(sources);
    let (leader_tx, mut leader) = watch::channel(options.lease.is_none());
    // The election lives exactly as long as this controller: dropping it stops renewing.
    let _election = options.lease.clone().map(|lease| {
        AbortOnDrop(tokio::spawn(lease::run(
            client.clone(),
            lease,
            leader_tx.clone(),
        )))
    });
    let (statuses_tx, statuses_rx) = watch::channel(None);
    let _status_writer = AbortOnDrop(tokio::spawn(write_statuses(
        StatusWriter::new(client.clone(), &options.controller_name),
        sources.clone(),
        statuses_rx,
        leader_tx.subscribe(),
    )));
    // Held so `leader.changed()` waits (instead of failing at once) when there is no election.
    let _leader_tx = leader_tx;
    let mut provisioner = Provisioner::new(client);
    let changed = sources.changed();
    let mut resync = tokio::time::interval(options.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.reset();
    let controller_name: Arc<str> = options.controller_name.as_str().into();
    loop {
        let started = Instant::now();
        let compiled = match current_snapshot(&sources).await {
            Some(current) => compile_aside(current, controller_name.clone(), publish).await,
            None => None,
        };
        let Some(compiled) = compiled else {
            tracing::info!("runtime shutting down: controller stopped");
            return;
        };
        let snapshot = compiled.snapshot;
        publish = compiled.publish;
        let mut output = compiled.output;
        tracing::debug!(
            compile = ?compiled.compile_time,
            publish = ?started.elapsed().saturating_sub(compiled.compile_time),
            "config published"
        );
        let mut failed = false;
        if *leader.borrow()
            && let Some(provision) = &options.provision
        {
            let desired = provision::desired(&snapshot, &output, provision);
            let report = provisioner.reconcile(&desired).await;
            failed |= !report.failed.is_empty();
            for failure in &report.failed {
                tracing::warn!("{failure}");
            }
            if report.applied > 0 || report.deleted > 0 {
                tracing::info!(
                    applied = report.applied,
                    deleted = report.deleted,
                    "provisioner pass"
                );
            }
        }
        let statuses = Arc::new(std::mem::take(&mut output.statuses));
        let superseded = statuses_tx.send_replace(Some(statuses));
        tokio::select! {
            () = changed.notified() => {}
            _ = leader.changed() => {
                // Whoever led meanwhile may have changed the managed objects.
                provisioner.reset();
            }
            _ = resync.tick() => provisioner.reset(),
            // A failed provisioner pass (API server away) is retried without waiting for the
            // next change.
            () = tokio::time::sleep(RETRY_AFTER_FAILURE), if failed => {}
        }
        // Freeing the output of thousands of routes takes milliseconds: do it on another thread
        // while the debounce waits, rather than when the next compile is due.
        drop(tokio::task::spawn_blocking(move || {
            drop((output, superseded))
        }));
        settle(&changed, options.debounce, options.debounce * 10).await;
    }
}

/// The status writer's loop: brings stored statuses to the latest compiled ones while leading,
/// again whenever a new compile, a status-only change (another writer, or our own echo: cheap,
/// see [`StatusWriter`]) or leadership arrives, and after a pause when writes failed.
async fn write_statuses(
    mut writer: StatusWriter,
    sources: Arc<Sources>,
    mut statuses: watch::Receiver<Option<Arc<Vec<ObjectStatus>>>>,
    mut leader: watch::Receiver<bool>,
) {
    let status_changed = sources.status_changed();
    loop {
        let current = statuses.borrow_and_update().clone();
        let leading = *leader.borrow_and_update();
        let mut failed = false;
        if let (Some(current), true) = (current, leading) {
            let started = Instant::now();
            // Taken before the pass: updates that arrive during it wake the next one.
            let updated = sources.take_status_updates();
            let report = writer.write(&sources, &current, updated.as_ref()).await;
            tracing::debug!(took = ?started.elapsed(), "status pass done");
            // Each failure was logged by the writer, with the object it concerns.
            failed = !report.failed.is_empty();
            if report.written > 0 || failed {
                tracing::info!(
                    written = report.written,
                    unchanged = report.unchanged,
                    failed = report.failed.len(),
                    "status pass"
                );
            }
        }
        tokio::select! {
            changed = statuses.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
            () = status_changed.notified() => {}
            () = tokio::time::sleep(RETRY_AFTER_FAILURE), if failed => {}
        }
    }
}

/// What [`compile_aside`] hands back: the snapshot and the publisher, to be used again, and
/// the output, for the provisioner and the status writer.
struct Compiled<P> {
    snapshot: Snapshot,
    output: CompileOutput,
    publish: P,
    compile_time: Duration,
}

/// The snapshot to compile, taken once more when the Secrets and ConfigMaps it references
/// were not all watched yet. `None` means the runtime is shutting down.
async fn current_snapshot(sources: &Arc<Sources>) -> Option<Snapshot> {
    let snapshot = snapshot_aside(sources).await?;
    if sources.sync_referenced(&snapshot).await {
        return snapshot_aside(sources).await;
    }
    Some(snapshot)
}

/// Takes a snapshot on a blocking-pool thread, for the reason given on [`compile_aside`]:
/// sorting the objects of a large cluster takes milliseconds. `None` means the runtime is
/// shutting down.
async fn snapshot_aside(sources: &Arc<Sources>) -> Option<Snapshot> {
    let sources = sources.clone();
    join_aside(tokio::task::spawn_blocking(move || sources.snapshot())).await
}

/// Compiles `snapshot` and publishes the output on a blocking-pool thread.
///
/// At 10,000 routes the compile alone takes over 100 ms, and serializing each proxy's config
/// tens more. On the runtime's thread that would stall what shares it: the CA's certificate
/// signing, the config stream's sends to proxies, the watches. A controller with one CPU runs
/// a current-thread runtime, where it would stall all of them.
///
/// A panic while compiling or publishing is raised again here, as it was when both ran in
/// place; `None` means the runtime is shutting down.
async fn compile_aside<P>(
    snapshot: Snapshot,
    controller_name: Arc<str>,
    mut publish: P,
) -> Option<Compiled<P>>
where
    P: FnMut(&CompileOutput) + Send + 'static,
{
    let work = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let output = compile_snapshot(&snapshot, &controller_name);
        let compile_time = started.elapsed();
        publish(&output);
        Compiled {
            snapshot,
            output,
            publish,
            compile_time,
        }
    });
    join_aside(work).await
}

/// Waits for work handed to the blocking pool. A panic there is raised again here, as it would
/// have been had the work run in place; `None` means the runtime is shutting down.
async fn join_aside<T>(work: tokio::task::JoinHandle<T>) -> Option<T> {
    match work.await {
        Ok(done) => Some(done),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_cancelled) => None,
        },
    }
}

/// Pause before retrying a pass that left writes undone.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// Waits until no change arrived for `quiet` (a burst of events, such as a `kubectl apply` of
/// many objects or a relist, becomes one compile), but never longer than `max` in total, so a
/// steady trickle of changes cannot starve compilation.
async fn settle(changed: &tokio::sync::Notify, quiet: Duration, max: Duration) {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        if wait.is_zero() {
            return;
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(wait) => return,
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One compilation of a cluster snapshot.
pub fn compile_snapshot(snapshot: &Snapshot, controller_name: &str) -> CompileOutput {
    let addresses = gateway_addresses(snapshot);
    let now = Timestamp::now().to_string();
    compile(&CompileInput {
        snapshot,
        controller_name,
        gateway_addresses: &addresses,
        now: &now,
    })
}

/// Each Gateway's addresses: those of the Service the provisioner made for it (labelled
/// `gateway.networking.k8s.io/gateway-name`), load-balancer addresses first, else its cluster IPs.
pub fn gateway_addresses(snapshot: &Snapshot) -> BTreeMap<ObjectRef, Vec<IpAddr>> {
    let mut addresses = BTreeMap::new();
    for service in &snapshot.services {
        let meta = &service.metadata;
        let Some(gateway) = meta.labels.as_ref().and_then(|l| l.get(GATEWAY_NAME_LABEL)) else {
            continue;
        };
        let namespace = meta.namespace.clone().unwrap_or_default();
        let load_balancer: Vec<IpAddr> = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        let cluster: Vec<IpAddr> = service
            .spec
            .as_ref()
            .and_then(|s| {
                s.cluster_ips
                    .clone()
                    .or_else(|| s.cluster_ip.clone().map(|ip| vec![ip]))
            })
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let ips = if load_balancer.is_empty() {
            cluster
        } else {
            load_balancer
        };
        if !ips.is_empty() {
            addresses.insert(
                ObjectRef {
                    namespace,
                    name: gateway.clone(),
                },
                ips,
            );
        }
    }
    addresses
}

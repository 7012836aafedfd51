//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder writes status, so two
//! replicas never fight over it. Every replica keeps compiling and serving config.
//!
//! The holder renews every `renew`; a lease whose `renewTime + leaseDurationSeconds` has passed
//! may be taken over. Every write carries the read `resourceVersion`, so when two replicas race
//! for an expired lease the API server lets exactly one win (409 for the other).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Where the lease lives and who we are.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

/// Runs the election forever; `leader` says whether this replica holds the lease now.
pub async fn run(client: Client, options: LeaseOptions, leader: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &options.namespace);
    loop {
        let holding = match try_acquire_or_renew(&api, &options).await {
            Ok(holding) => holding,
            Err(e) => {
                tracing::warn!(lease = %options.name, error = %e, "lease update failed");
                false
            }
        };
        if *leader.borrow() != holding {
            tracing::info!(lease = %options.name, identity = %options.identity, leader = holding, "leadership changed");
            let _ = leader.send(holding);
        }
        tokio::time::sleep(options.renew).await;
    }
}

/// One round: create, renew or take over the lease. Returns whether we hold it afterwards.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    options: &LeaseOptions,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration_secs = i32::try_from(options.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&options.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(options.name.clone()),
                namespace: Some(options.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(options.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(options.identity.as_str());
    if !ours {
        let held_for = spec.lease_duration_seconds.map_or(options.duration, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
        let expired = match &spec.renew_time {
            Some(MicroTime(renewed)) => {
                let elapsed = now.duration_since(*renewed);
                elapsed.as_secs_f64() > held_for.as_secs_f64()
            }
            None => true,
        };
        if !expired && spec.holder_identity.is_some() {
            return Ok(false);
        }
        spec.holder_identity = Some(options.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration_secs);
    // `replace` sends our resourceVersion: a concurrent writer makes this a 409, not a split brain.
    match api
        .replace(&options.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

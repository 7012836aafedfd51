//! The bookkeeping an API server would do for objects read from files: `metadata.generation`
//! (bumped when anything but metadata and status changes), `creationTimestamp` and `uid`
//! (assigned on first sight, kept until the object disappears), and condition
//! `lastTransitionTime`s that only move when a condition's status does.
//!
//! Standalone mode needs this so status (observedGeneration, route precedence by age) behaves as
//! it would on a cluster.

use std::collections::{HashMap, HashSet, hash_map::DefaultHasher};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde::Serialize;
use serde_json::Value;
use strait_model::{ObjectKey, Snapshot};

struct Tracked {
    spec_hash: u64,
    generation: i64,
    created: Timestamp,
    uid: String,
}

/// Remembers every object seen, across reloads.
#[derive(Default)]
pub(crate) struct ObjectStore {
    tracked: HashMap<ObjectKey, Tracked>,
    next_uid: u64,
}

impl ObjectStore {
    /// Stamps generation, creationTimestamp and uid on every object of `snapshot`, and forgets
    /// objects that are gone (a re-created object starts again at generation 1, as on a cluster).
    pub(crate) fn stamp(&mut self, snapshot: &mut Snapshot, now: Timestamp) {
        let mut seen = Vec::new();
        let mut stamper = Stamper {
            store: self,
            now,
            seen: &mut seen,
        };
        stamper.list("GatewayClass", &mut snapshot.gateway_classes);
        stamper.list("Gateway", &mut snapshot.gateways);
        stamper.list("HTTPRoute", &mut snapshot.http_routes);
        stamper.list("GRPCRoute", &mut snapshot.grpc_routes);
        stamper.list("TCPRoute", &mut snapshot.tcp_routes);
        stamper.list("TLSRoute", &mut snapshot.tls_routes);
        stamper.list("ReferenceGrant", &mut snapshot.reference_grants);
        stamper.list("ListenerSet", &mut snapshot.listener_sets);
        stamper.list("BackendTLSPolicy", &mut snapshot.backend_tls_policies);
        stamper.list("Service", &mut snapshot.services);
        stamper.list("EndpointSlice", &mut snapshot.endpoint_slices);
        stamper.list("Namespace", &mut snapshot.namespaces);
        stamper.list("Secret", &mut snapshot.secrets);
        stamper.list("ConfigMap", &mut snapshot.config_maps);
        stamper.list("Pod", &mut snapshot.pods);
        let seen: HashSet<ObjectKey> = seen.into_iter().collect();
        self.tracked.retain(|key, _| seen.contains(key));
    }
}

struct Stamper<'a> {
    store: &'a mut ObjectStore,
    now: Timestamp,
    seen: &'a mut Vec<ObjectKey>,
}

impl Stamper<'_> {
    fn list<T: Resource + Serialize + Clone>(&mut self, kind: &str, objects: &mut [Arc<T>]) {
        for object in objects {
            // Just loaded, so not shared yet: this stamps in place rather than copying.
            let object = Arc::make_mut(object);
            let key = ObjectKey {
                kind: kind.to_string(),
                namespace: object.meta().namespace.clone().unwrap_or_default(),
                name: object.meta().name.clone().unwrap_or_default(),
            };
            let spec_hash = spec_hash(object);
            let store = &mut *self.store;
            let tracked = store.tracked.entry(key.clone()).or_insert_with(|| {
                store.next_uid += 1;
                let created = object
                    .meta()
                    .creation_timestamp
                    .as_ref()
                    .map_or(self.now, |t| t.0);
                Tracked {
                    spec_hash,
                    generation: 1,
                    created,
                    uid: format!("00000000-0000-4000-8000-{:012x}", store.next_uid),
                }
            });
            if tracked.spec_hash != spec_hash {
                tracked.spec_hash = spec_hash;
                tracked.generation += 1;
            }
            let meta = object.meta_mut();
            meta.generation = Some(tracked.generation);
            meta.creation_timestamp = Some(Time(tracked.created));
            meta.uid = Some(tracked.uid.clone());
            self.seen.push(key);
        }
    }
}

/// Hash of everything but metadata and status: what the API server bumps generation for.
fn spec_hash<T: Serialize>(object: &T) -> u64 {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn snapshot(yaml: &str) -> Snapshot {
        let report = strait_model::load_str(yaml, Path::new("t.yaml"));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        report.snapshot
    }

    const ROUTE_V1: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: ns, labels: {a: b}}
spec: {parentRefs: [{name: gw}]}
";

    #[test]
    fn generation_moves_only_with_the_spec() {
        let mut store = ObjectStore::default();
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_100).unwrap();

        let mut first = snapshot(ROUTE_V1);
        store.stamp(&mut first, t0);
        let meta = &first.http_routes[0].metadata;
        assert_eq!(meta.generation, Some(1));
        assert_eq!(meta.creation_timestamp.as_ref().map(|t| t.0), Some(t0));

        // Label change: metadata only, generation stays.
        let mut relabelled = snapshot(&ROUTE_V1.replace("a: b", "a: c"));
        store.stamp(&mut relabelled, t1);
        assert_eq!(relabelled.http_routes[0].metadata.generation, Some(1));

        let mut changed = snapshot(&ROUTE_V1.replace("gw}", "gw2}"));
        store.stamp(&mut changed, t1);
        let meta = &changed.http_routes[0].metadata;
        assert_eq!(meta.generation, Some(2));
        assert_eq!(meta.creation_timestamp.as_ref().map(|t| t.0), Some(t0));

        // Deleted then re-created: a new object.
        store.stamp(&mut Snapshot::default(), t1);
        let mut again = snapshot(ROUTE_V1);
        store.stamp(&mut again, t1);
        let meta = &again.http_routes[0].metadata;
        assert_eq!(meta.generation, Some(1));
        assert_eq!(meta.creation_timestamp.as_ref().map(|t| t.0), Some(t1));
    }
}

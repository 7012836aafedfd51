//! Object storage with the real server's write semantics and a watch event history.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::ApiError;
use crate::registry::{Registry, ResourceKind};
use crate::selector::{FieldSelector, LabelSelector};

/// Watch event type, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created (or started matching a selector).
    Added,
    /// Object changed.
    Modified,
    /// Object removed (or stopped matching a selector).
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjKey {
    group: String,
    plural: String,
    namespace: String,
    name: String,
}

impl ObjKey {
    fn new(kind: &ResourceKind, namespace: &str, name: &str) -> Self {
        let (group, plural) = kind.storage_key();
        Self {
            group,
            plural,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// One change in the history ring.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    group: String,
    plural: String,
    pub etype: EventType,
    pub object: Value,
    /// The object before a modification, so selector-filtered watches can turn a
    /// change into ADDED/DELETED when the object starts/stops matching.
    prev: Option<Value>,
}

/// Which part of an object a write targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// The object itself (`.status` is ignored if the kind has a status subresource).
    Main,
    /// `/status`: only `.status` is taken from the request.
    Status,
}

/// What a list or watch is restricted to.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub kind: ResourceKind,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let ns_ok = match &self.namespace {
            Some(ns) => meta_str(obj, "namespace") == *ns,
            None => true,
        };
        ns_ok && self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn kind_matches(&self, group: &str, plural: &str) -> bool {
        self.kind.group == group && self.kind.plural == plural
    }
}

/// Tunables of the server.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How many events the watch history keeps; older resourceVersions get 410 Gone.
    pub history_size: usize,
    /// Range Service cluster IPs are allocated from.
    pub service_cidr: (Ipv4Addr, u8),
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            history_size: 1000,
            service_cidr: (Ipv4Addr::new(198, 19, 0, 0), 16),
        }
    }
}

pub(crate) struct Store {
    pub registry: Registry,
    config: StoreConfig,
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Event>>,
    /// Events with `rv <= compacted_through` may be missing from the history.
    compacted_through: u64,
    /// Bumped by [`Store::compact`]; open watches from an older epoch end with 410.
    pub expire_epoch: u64,
}

pub(crate) fn meta_str(obj: &Value, field: &str) -> String {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata is not an object"))
}

/// Sets `apiVersion`/`kind` to the version the request addressed.
pub(crate) fn present(mut obj: Value, kind: &ResourceKind) -> Value {
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), json!(kind.api_version()));
        map.insert("kind".into(), json!(kind.kind));
    }
    obj
}

/// RFC 3339 UTC timestamp with second precision, as in `metadata.creationTimestamp`.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn is_namespace_kind(kind: &ResourceKind) -> bool {
    kind.group.is_empty() && kind.plural == "namespaces"
}

fn is_service_kind(kind: &ResourceKind) -> bool {
    kind.group.is_empty() && kind.plural == "services"
}

/// Everything except metadata and status: what `metadata.generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

impl Store {
    pub fn new(registry: Registry, config: StoreConfig) -> Self {
        let mut store = Self {
            registry,
            config,
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted_through: 0,
            expire_epoch: 0,
        };
        if let Some(ns_kind) = store.registry.by_plural("", "v1", "namespaces").cloned() {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let obj = json!({"metadata": {"name": ns}});
                if let Err(e) = store.create(&ns_kind, None, obj) {
                    tracing::warn!(namespace = ns, error = %e, "could not create built-in namespace");
                }
            }
        }
        store
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// Oldest resourceVersion a watch may start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.compacted_through
    }

    fn emit(
        &mut self,
        (group, plural): (String, String),
        etype: EventType,
        object: Value,
        prev: Option<Value>,
    ) {
        self.history.push_back(Arc::new(Event {
            rv: self.rv,
            group,
            plural,
            etype,
            object,
            prev,
        }));
        while self.history.len() > self.config.history_size {
            if let Some(ev) = self.history.pop_front() {
                self.compacted_through = ev.rv;
            }
        }
    }

    /// Drops the whole event history, like an etcd compaction, and ends every open
    /// watch with 410 Expired as if it had fallen behind it: clients must relist.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_through = self.rv;
        self.expire_epoch += 1;
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn get(
        &self,
        kind: &ResourceKind,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = ObjKey::new(kind, ns.unwrap_or_default(), name);
        self.objects
            .get(&key)
            .map(|o| present(o.clone(), kind))
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    pub fn list(&self, filter: &Filter) -> Value {
        let (group, plural) = filter.kind.storage_key();
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.group == group && k.plural == plural)
            .map(|(_, o)| o)
            .filter(|o| filter.matches(o))
            .map(|o| {
                let mut o = present(o.clone(), &filter.kind);
                if filter.kind.builtin
                    && let Some(m) = o.as_object_mut()
                {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        json!({
            "kind": format!("{}List", filter.kind.kind),
            "apiVersion": filter.kind.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        })
    }

    /// Current objects matching a watch filter, for initial ADDED events.
    pub fn snapshot(&self, filter: &Filter) -> Vec<Value> {
        let (group, plural) = filter.kind.storage_key();
        self.objects
            .iter()
            .filter(|(k, _)| k.group == group && k.plural == plural)
            .map(|(_, o)| o)
            .filter(|o| filter.matches(o))
            .map(|o| present(o.clone(), &filter.kind))
            .collect()
    }

    /// Events after `since` that a watch with `filter` must see, or 410 if the
    /// history no longer reaches back that far.
    pub fn events_since(
        &self,
        since: u64,
        filter: &Filter,
    ) -> Result<Vec<(EventType, Value)>, ApiError> {
        if since < self.compacted_through {
            return Err(ApiError::expired(since, self.compacted_through + 1));
        }
        let start = self.history.partition_point(|e| e.rv <= since);
        let mut out = Vec::new();
        for ev in self.history.iter().skip(start) {
            if !filter.kind_matches(&ev.group, &ev.plural) {
                continue;
            }
            let now = filter.matches(&ev.object);
            let before = ev.prev.as_ref().is_some_and(|p| filter.matches(p));
            let etype = match ev.etype {
                EventType::Added if now => EventType::Added,
                EventType::Deleted if now => EventType::Deleted,
                EventType::Modified if now && before => EventType::Modified,
                EventType::Modified if now => EventType::Added,
                EventType::Modified if before => EventType::Deleted,
                _ => continue,
            };
            out.push((etype, present(ev.object.clone(), &filter.kind)));
        }
        Ok(out)
    }

    pub fn create(
        &mut self,
        kind: &ResourceKind,
        url_ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        check_type(kind, &mut obj)?;
        let meta = metadata_mut(&mut obj)?;
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = format!("{prefix}{}", random_suffix());
            meta.insert("name".into(), json!(name));
        }
        let namespace = resolve_namespace(kind, meta, url_ns, &name)?;
        if kind.namespaced {
            let ns_key = ObjKey {
                group: String::new(),
                plural: "namespaces".into(),
                namespace: String::new(),
                name: namespace.clone(),
            };
            if !self.objects.contains_key(&ns_key) {
                return Err(ApiError::namespace_not_found(&namespace));
            }
        }
        let key = ObjKey::new(kind, &namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }
        for k in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "resourceVersion",
        ] {
            meta.remove(k);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if kind.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if is_namespace_kind(kind) {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        } else if kind.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if is_service_kind(kind) {
            self.default_service(kind, &name, &mut obj, None)?;
        }
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = present(obj, kind);
        self.objects.insert(key, obj.clone());
        self.emit(kind.storage_key(), EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// PUT / PATCH: optimistic concurrency, status/spec split, generation, finalizers.
    pub fn update(
        &mut self,
        kind: &ResourceKind,
        url_ns: Option<&str>,
        name: &str,
        mut obj: Value,
        sub: Subresource,
    ) -> Result<Value, ApiError> {
        let ns = url_ns.unwrap_or_default();
        let key = ObjKey::new(kind, ns, name);
        let existing = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        check_type(kind, &mut obj)?;
        let meta = metadata_mut(&mut obj)?;
        let body_name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        resolve_namespace(kind, meta, url_ns, name)?;
        let want_rv = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !want_rv.is_empty() && want_rv != meta_str(&existing, "resourceVersion") {
            return Err(ApiError::conflict(kind, name));
        }
        let mut result = match sub {
            Subresource::Status => {
                if !kind.status_subresource {
                    return Err(ApiError::no_route(&format!(
                        "{}/{name}/status",
                        kind.plural
                    )));
                }
                let mut r = existing.clone();
                match obj.get("status") {
                    Some(s) if !s.is_null() => r["status"] = s.clone(),
                    _ => {
                        if let Some(m) = r.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                r
            }
            Subresource::Main => {
                let mut r = obj;
                if kind.status_subresource {
                    match existing.get("status") {
                        Some(s) => r["status"] = s.clone(),
                        None => {
                            if let Some(m) = r.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                let meta = metadata_mut(&mut r)?;
                for k in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match existing.get("metadata").and_then(|m| m.get(k)) {
                        Some(v) => meta.insert(k.into(), v.clone()),
                        None => meta.remove(k),
                    };
                }
                for k in ["managedFields", "selfLink"] {
                    meta.remove(k);
                }
                if is_service_kind(kind) {
                    self.default_service(kind, name, &mut r, Some(&existing))?;
                }
                if kind.generation && spec_part(&r) != spec_part(&existing) {
                    let generation = existing
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    r["metadata"]["generation"] = json!(generation + 1);
                }
                r
            }
        };
        result["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
        let result = present(result, kind);
        if result == present(existing.clone(), kind) {
            return Ok(result);
        }
        let terminating = result.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_left = result
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let rv = self.bump();
        let mut result = result;
        result["metadata"]["resourceVersion"] = json!(rv.to_string());
        if terminating && !finalizers_left {
            self.objects.remove(&key);
            self.emit(kind.storage_key(), EventType::Deleted, result.clone(), None);
            self.collect_garbage(&[meta_str(&result, "uid")]);
        } else {
            self.objects.insert(key, result.clone());
            self.emit(
                kind.storage_key(),
                EventType::Modified,
                result.clone(),
                Some(existing),
            );
        }
        Ok(result)
    }

    /// Deletes an object. Returns the HTTP code (200 done, 202 pending finalizers) and the object.
    pub fn delete(
        &mut self,
        kind: &ResourceKind,
        url_ns: Option<&str>,
        name: &str,
        options: &Value,
    ) -> Result<(u16, Value), ApiError> {
        let key = ObjKey::new(kind, url_ns.unwrap_or_default(), name);
        let existing = self
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        if let Some(pre) = options.get("preconditions") {
            for field in ["uid", "resourceVersion"] {
                if let Some(want) = pre.get(field).and_then(Value::as_str)
                    && want != meta_str(&existing, field)
                {
                    return Err(ApiError::conflict(kind, name));
                }
            }
        }
        if is_namespace_kind(kind) {
            let contents: Vec<ObjKey> = self
                .objects
                .keys()
                .filter(|k| k.namespace == name && !k.namespace.is_empty())
                .cloned()
                .collect();
            for k in contents {
                if let Some(obj) = self.objects.remove(&k) {
                    let rv = self.bump();
                    let mut obj = obj;
                    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                    let (group, plural) = (k.group.clone(), k.plural.clone());
                    self.emit((group, plural), EventType::Deleted, obj, None);
                }
            }
        }
        let finalizers = existing
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if finalizers && !is_namespace_kind(kind) {
            if existing.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((202, present(existing, kind)));
            }
            let mut obj = existing.clone();
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let rv = self.bump();
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.objects.insert(key, obj.clone());
            self.emit(
                kind.storage_key(),
                EventType::Modified,
                obj.clone(),
                Some(existing),
            );
            return Ok((202, present(obj, kind)));
        }
        self.objects.remove(&key);
        let rv = self.bump();
        let mut obj = existing;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if is_namespace_kind(kind) {
            obj["status"] = json!({"phase": "Terminating"});
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        }
        self.emit(kind.storage_key(), EventType::Deleted, obj.clone(), None);
        self.collect_garbage(&[meta_str(&obj, "uid")]);
        Ok((200, present(obj, kind)))
    }

    /// Background cascading deletion: removes objects all of whose owners are gone,
    /// starting from the owners just deleted (what the garbage collector does).
    fn collect_garbage(&mut self, deleted_uids: &[String]) {
        let mut pending: Vec<String> = deleted_uids.to_vec();
        while let Some(owner_uid) = pending.pop() {
            let live: BTreeSet<String> =
                self.objects.values().map(|o| meta_str(o, "uid")).collect();
            let orphans: Vec<ObjKey> = self
                .objects
                .iter()
                .filter(|(_, o)| {
                    let refs = o
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array);
                    refs.is_some_and(|refs| {
                        let uids: Vec<&str> = refs
                            .iter()
                            .filter_map(|r| r.get("uid").and_then(Value::as_str))
                            .collect();
                        uids.contains(&owner_uid.as_str())
                            && uids.iter().all(|u| !live.contains(*u))
                    })
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in orphans {
                let Some(obj) = self.objects.get(&k).cloned() else {
                    continue;
                };
                let has_finalizers = obj
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if has_finalizers && obj.pointer("/metadata/deletionTimestamp").is_some() {
                    continue;
                }
                let rv = self.bump();
                let mut new = obj.clone();
                new["metadata"]["resourceVersion"] = json!(rv.to_string());
                if has_finalizers {
                    new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    self.objects.insert(k.clone(), new.clone());
                    self.emit(
                        (k.group.clone(), k.plural.clone()),
                        EventType::Modified,
                        new,
                        Some(obj),
                    );
                } else {
                    self.objects.remove(&k);
                    pending.push(meta_str(&new, "uid"));
                    self.emit(
                        (k.group.clone(), k.plural.clone()),
                        EventType::Deleted,
                        new,
                        None,
                    );
                }
            }
        }
    }

    /// Service defaulting and cluster IP allocation (`patchAllocatedValues` on update).
    fn default_service(
        &self,
        kind: &ResourceKind,
        name: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let spec = obj
            .as_object_mut()
            .map(|m| m.entry("spec").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                ApiError::invalid(kind, name, "spec: Invalid value: must be an object")
            })?;
        let svc_type = spec
            .entry("type")
            .or_insert_with(|| json!("ClusterIP"))
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        spec.entry("sessionAffinity")
            .or_insert_with(|| json!("None"));
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert_with(|| json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    p.entry("targetPort").or_insert(port);
                }
            }
        }
        if svc_type == "ExternalName" {
            return Ok(());
        }
        spec.entry("internalTrafficPolicy")
            .or_insert_with(|| json!("Cluster"));
        let requested = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if requested.is_empty()
            && let Some(old_ip) = old.and_then(|o| o.pointer("/spec/clusterIP")).cloned()
        {
            spec.insert("clusterIP".into(), old_ip.clone());
            spec.insert("clusterIPs".into(), json!([old_ip]));
            return Ok(());
        }
        if let Some(old_ip) = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
        {
            if old_ip != requested {
                return Err(ApiError::invalid(
                    kind,
                    name,
                    &format!(
                        "spec.clusterIPs[0]: Invalid value: {requested:?}: may not change once set"
                    ),
                ));
            }
            return Ok(());
        }
        if requested == "None" {
            spec.insert("clusterIPs".into(), json!(["None"]));
            return Ok(());
        }
        let used: BTreeSet<String> = self
            .objects
            .iter()
            .filter(|(k, _)| k.group.is_empty() && k.plural == "services")
            .filter_map(|(_, o)| {
                o.pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .collect();
        let (base, prefix) = self.config.service_cidr;
        let base = u32::from(base);
        let size = 1u64 << (32 - u32::from(prefix.min(30)));
        let ip = if requested.is_empty() {
            (1..size.saturating_sub(1))
                .map(|i| Ipv4Addr::from(base.wrapping_add(i as u32)).to_string())
                .find(|ip| !used.contains(ip))
                .ok_or_else(|| ApiError::invalid(kind, name, "spec.clusterIPs: Internal error: failed to allocate a serviceIP: range is full"))?
        } else {
            let parsed: Ipv4Addr = requested.parse().map_err(|_| {
                ApiError::invalid(kind, name, &format!("spec.clusterIPs[0]: Invalid value: {requested:?}: must be a valid IP address"))
            })?;
            let offset = u64::from(u32::from(parsed).wrapping_sub(base));
            if offset == 0 || offset >= size - 1 {
                return Err(ApiError::invalid(
                    kind,
                    name,
                    &format!(
                        "spec.clusterIPs: Invalid value: [{requested:?}]: failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range"
                    ),
                ));
            }
            if used.contains(&requested) {
                return Err(ApiError::invalid(
                    kind,
                    name,
                    &format!(
                        "spec.clusterIPs: Invalid value: [{requested:?}]: failed to allocate IP {requested}: provided IP is already allocated"
                    ),
                ));
            }
            requested
        };
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        spec.entry("ipFamilyPolicy")
            .or_insert_with(|| json!("SingleStack"));
        Ok(())
    }

    pub fn delete_collection(
        &mut self,
        filter: &Filter,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let names: Vec<(String, String)> = self
            .snapshot(filter)
            .iter()
            .map(|o| (meta_str(o, "namespace"), meta_str(o, "name")))
            .collect();
        let mut items = Vec::new();
        for (ns, name) in names {
            let ns = (!ns.is_empty()).then_some(ns);
            let (_, obj) = self.delete(&filter.kind, ns.as_deref(), &name, options)?;
            items.push(obj);
        }
        Ok(json!({
            "kind": format!("{}List", filter.kind.kind),
            "apiVersion": filter.kind.api_version(),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        }))
    }
}

/// Checks `apiVersion`/`kind` in a request body against the URL, filling them if absent.
fn check_type(kind: &ResourceKind, obj: &mut Value) -> Result<(), ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    let expected = kind.api_version();
    if let Some(v) = map.get("apiVersion").and_then(Value::as_str)
        && !v.is_empty()
        && v != expected
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({expected})"
        )));
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != kind.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.kind
            )));
        }
        _ => {}
    }
    map.insert("apiVersion".into(), json!(expected));
    map.insert("kind".into(), json!(kind.kind));
    Ok(())
}

fn resolve_namespace(
    kind: &ResourceKind,
    meta: &mut Map<String, Value>,
    url_ns: Option<&str>,
    name: &str,
) -> Result<String, ApiError> {
    if !kind.namespaced {
        meta.remove("namespace");
        return Ok(String::new());
    }
    let url_ns = url_ns.unwrap_or_default();
    let body_ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if url_ns.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} {name:?}: a namespaced resource needs a namespace in the request path",
            kind.qualified_plural()
        )));
    }
    if !body_ns.is_empty() && body_ns != url_ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    meta.insert("namespace".into(), json!(url_ns));
    Ok(url_ns.to_string())
}

//! The Kubernetes side of the testbed, without I/O: pods made from Deployments, Service
//! defaults and cluster IPs, EndpointSlices, Pod objects and the per-pod hosts file.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use rand::Rng as _;
use serde_json::{Map, Value, json};

use crate::TestbedError;

/// The pod network: every pod address, and the node bridge, is in 198.18.0.0/16.
pub const POD_NETWORK: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 16);
/// The node's address on the pod network (the bridge); pods route Service VIPs through it.
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Service cluster IPs: 198.19.0.0/16. Nothing answers on them unless traffic is captured.
pub const SERVICE_NETWORK: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
/// The cluster DNS suffix used in the hosts files.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Addresses below this offset in each network are left free (network, node, spares).
const FIRST_OFFSET: u32 = 10;
/// The alphabet Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `n`-th address handed out in `network` (a /16), `None` once it is exhausted.
pub(crate) fn nth_address(network: (Ipv4Addr, u8), n: u32) -> Option<Ipv4Addr> {
    let size = 1u32 << (32 - u32::from(network.1));
    let offset = n.checked_add(FIRST_OFFSET)?;
    (offset < size - 1).then(|| Ipv4Addr::from(u32::from(network.0) + offset))
}

pub(crate) fn in_network(ip: Ipv4Addr, network: (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX << (32 - u32::from(network.1));
    u32::from(ip) & mask == u32::from(network.0) & mask
}

pub(crate) fn kind(d: &Value) -> &str {
    d.get("kind").and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn name(d: &Value) -> &str {
    d.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace`, `default` when unset (as the API server fills it in).
pub(crate) fn namespace(d: &Value) -> &str {
    d.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

/// `Kind ns/name` for messages.
pub(crate) fn describe(d: &Value) -> String {
    format!("{} {}/{}", kind(d), namespace(d), name(d))
}

pub(crate) fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn to_object(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// A random suffix like the ones Kubernetes appends to generated names.
pub(crate) fn random_suffix(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| NAME_ALPHABET[rng.random_range(0..NAME_ALPHABET.len())] as char)
        .collect()
}

/// A suffix derived from `key`, stable across calls (EndpointSlice names must not churn).
pub(crate) fn stable_suffix(key: &str, len: usize) -> String {
    // FNV-1a: tiny, deterministic, good enough to spread names.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (0..len)
        .map(|_| {
            let c = NAME_ALPHABET[(hash % NAME_ALPHABET.len() as u64) as usize] as char;
            hash /= NAME_ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// One pod of the testbed, as the API server would describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// Includes `strait.dev/netns` naming [`Pod::netns`].
    pub annotations: BTreeMap<String, String>,
    /// `spec.serviceAccountName` (`default` when the template names none).
    pub service_account: String,
    pub node_name: String,
    /// The named network namespace (`/run/netns/<netns>`) the pod lives in.
    pub netns: String,
    /// The Deployment the pod belongs to, if any.
    pub deployment: Option<String>,
    /// The pod template's spec (containers, volumes, ...) as written in the manifest.
    pub spec: Value,
    /// `(name, uid)` of the owning ReplicaSet, for `ownerReferences`.
    pub(crate) replica_set: Option<(String, String)>,
}

impl Pod {
    /// The Pod object a control plane would list: metadata, spec with `nodeName` and
    /// `serviceAccountName`, status Running and Ready with `podIP`/`podIPs`.
    pub fn object(&self) -> Value {
        let mut spec = match &self.spec {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        };
        spec.insert("nodeName".into(), json!(self.node_name));
        spec.insert("serviceAccountName".into(), json!(self.service_account));
        spec.entry("containers").or_insert_with(|| json!([]));
        let containers = spec
            .get("containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let container_statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.get("name").cloned().unwrap_or(json!("")),
                    "image": c.get("image").cloned().unwrap_or(json!("")),
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": {"running": {}},
                })
            })
            .collect();
        let mut metadata = json!({
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "labels": to_object(&self.labels),
            "annotations": to_object(&self.annotations),
        });
        if let Some((rs, uid)) = &self.replica_set {
            metadata["ownerReferences"] = json!([{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": rs,
                "uid": uid,
                "controller": true,
                "blockOwnerDeletion": true,
            }]);
        }
        let condition = |t: &str| json!({"type": t, "status": "True"});
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": Value::Object(spec),
            "status": {
                "phase": "Running",
                "hostIP": NODE_ADDRESS.to_string(),
                "hostIPs": [{"ip": NODE_ADDRESS.to_string()}],
                "podIP": self.ip.to_string(),
                "podIPs": [{"ip": self.ip.to_string()}],
                "conditions": [
                    condition("PodScheduled"),
                    condition("Initialized"),
                    condition("ContainersReady"),
                    condition("Ready"),
                ],
                "containerStatuses": container_statuses,
            },
        })
    }

    /// The container port named `name` (for named `targetPort`s).
    pub fn container_port(&self, name: &str) -> Option<u16> {
        self.spec
            .get("containers")?
            .as_array()?
            .iter()
            .filter_map(|c| c.get("ports")?.as_array())
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|p| p.get("containerPort")?.as_u64())
            .and_then(|p| u16::try_from(p).ok())
    }

    /// Whether the pod is in `namespace` and carries every label of `selector`.
    pub fn matches(&self, namespace: &str, selector: &[(&str, &str)]) -> bool {
        self.namespace == namespace
            && selector
                .iter()
                .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }

    /// The arguments of the first `echo-advanced` container, if the pod has one.
    pub fn echo_args(&self) -> Option<Vec<String>> {
        let container = self.spec.get("containers")?.as_array()?.iter().find(|c| {
            c.get("image")
                .and_then(Value::as_str)
                .is_some_and(|i| i.contains("echo-advanced"))
        })?;
        Some(
            container
                .get("args")
                .and_then(Value::as_array)
                .map(|args| {
                    args.iter()
                        .map(|a| match a {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        )
    }
}

/// What a Deployment asks for.
pub(crate) struct Template {
    pub deployment: String,
    pub namespace: String,
    pub replicas: u64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    pub spec: Value,
}

pub(crate) fn deployment_template(d: &Value) -> Result<Template, TestbedError> {
    let invalid = |reason: &str| TestbedError::Manifest {
        object: describe(d),
        reason: reason.to_string(),
    };
    if name(d).is_empty() {
        return Err(invalid("metadata.name is empty"));
    }
    let replicas = match d.pointer("/spec/replicas") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid("spec.replicas is not a non-negative integer"))?,
    };
    let template = d
        .pointer("/spec/template")
        .ok_or_else(|| invalid("spec.template is missing"))?;
    let spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    if !spec.is_object() {
        return Err(invalid("spec.template.spec is not an object"));
    }
    let service_account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    Ok(Template {
        deployment: name(d).to_string(),
        namespace: namespace(d).to_string(),
        replicas,
        labels: string_map(template.pointer("/metadata/labels")),
        annotations: string_map(template.pointer("/metadata/annotations")),
        service_account,
        spec,
    })
}

/// Whether the Service gets a cluster IP (not headless, not ExternalName).
pub(crate) fn wants_vip(svc: &Value) -> bool {
    let headless = svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
    let external = svc.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
    !headless && !external
}

/// The cluster IP the manifest asks for, when it is one the testbed can honour.
pub(crate) fn requested_vip(svc: &Value) -> Option<Ipv4Addr> {
    svc.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .filter(|ip| in_network(*ip, SERVICE_NETWORK))
}

/// The Service as the API server stores it: defaults filled in, `clusterIP(s)` set to `vip`.
pub(crate) fn service_object(svc: &Value, vip: Option<Ipv4Addr>) -> Value {
    let mut svc = svc.clone();
    if let Some(meta) = svc.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("namespace").or_insert_with(|| json!("default"));
    }
    let Some(root) = svc.as_object_mut() else {
        return svc;
    };
    let spec = root.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else {
        return svc;
    };
    spec.entry("type").or_insert_with(|| json!("ClusterIP"));
    spec.entry("sessionAffinity")
        .or_insert_with(|| json!("None"));
    if let Some(vip) = vip {
        spec.insert("clusterIP".into(), json!(vip.to_string()));
        spec.insert("clusterIPs".into(), json!([vip.to_string()]));
        spec.insert("ipFamilies".into(), json!(["IPv4"]));
        spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
    } else if spec.get("clusterIP").and_then(Value::as_str) == Some("None") {
        spec.insert("clusterIPs".into(), json!(["None"]));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert_with(|| json!("TCP"));
            if !port.contains_key("targetPort")
                && let Some(p) = port.get("port").cloned()
            {
                port.insert("targetPort".into(), p);
            }
        }
    }
    svc
}

/// The cluster IP of a stored Service object.
pub(crate) fn vip_of(svc: &Value) -> Option<Ipv4Addr> {
    svc.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

fn selector(svc: &Value) -> Option<BTreeMap<String, String>> {
    let selector = string_map(svc.pointer("/spec/selector"));
    (!selector.is_empty()).then_some(selector)
}

fn selects(selector: &BTreeMap<String, String>, ns: &str, pod: &Pod) -> bool {
    pod.namespace == ns && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

/// The pod port a Service port sends to on `pod`, as the endpointslice controller resolves it:
/// a number as is, a name through the pod's container ports (`None`: the pod lacks it).
fn target_port(port: &Value, pod: &Pod) -> Option<u64> {
    match port.get("targetPort") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s
            .parse()
            .ok()
            .or_else(|| pod.container_port(s).map(u64::from)),
        _ => port.get("port").and_then(Value::as_u64),
    }
}

/// EndpointSlices for every Service with a selector, as the endpointslice controller writes
/// them: one slice per distinct set of resolved ports, endpoints ready, names stable.
pub(crate) fn endpoint_slices(services: &[Value], pods: &[Pod]) -> Vec<Value> {
    let mut out = Vec::new();
    for svc in services {
        let Some(selector) = selector(svc) else {
            continue;
        };
        let ns = namespace(svc);
        let svc_name = name(svc);
        let service_ports = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // Resolved port list → endpoints with that list.
        let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
        for pod in pods.iter().filter(|p| selects(&selector, ns, p)) {
            let ports: Vec<Value> = service_ports
                .iter()
                .filter_map(|p| {
                    let mut e = json!({
                        "name": p.get("name").cloned().unwrap_or(json!("")),
                        "port": target_port(p, pod)?,
                        "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP")),
                    });
                    if let Some(a) = p.get("appProtocol") {
                        e["appProtocol"] = a.clone();
                    }
                    Some(e)
                })
                .collect();
            let key = Value::Array(ports.clone()).to_string();
            groups
                .entry(key)
                .or_insert_with(|| (ports, Vec::new()))
                .1
                .push(json!({
                    "addresses": [pod.ip.to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": pod.node_name,
                    "targetRef": {
                        "kind": "Pod",
                        "name": pod.name,
                        "namespace": pod.namespace,
                        "uid": pod.uid,
                    },
                }));
        }
        if groups.is_empty() {
            groups.insert(String::new(), (Vec::new(), Vec::new()));
        }
        for (index, (ports, endpoints)) in groups.into_values().enumerate() {
            out.push(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!(
                        "{svc_name}-{}",
                        stable_suffix(&format!("{ns}/{svc_name}/{index}"), 5)
                    ),
                    "namespace": ns,
                    "labels": {
                        "kubernetes.io/service-name": svc_name,
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    },
                    "ownerReferences": [{
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": svc_name,
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                },
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": endpoints,
            }));
        }
    }
    out
}

/// `/etc/hosts` for `pod`: localhost, the pod's own name, and every Service under
/// `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local` (plus bare `svc` in the pod's own
/// namespace). Headless Services resolve to their pods' addresses.
pub(crate) fn hosts_file(pod: &Pod, services: &[Value], pods: &[Pod]) -> String {
    let mut out = String::from(
        "# Written by strait-testbed: there is no cluster DNS, names come from this file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    out.push_str(&format!("{}\t{}\n", pod.ip, pod.name));
    for svc in services {
        let ns = namespace(svc);
        let svc_name = name(svc);
        if svc_name.is_empty() {
            continue;
        }
        let mut names = Vec::new();
        if ns == pod.namespace {
            names.push(svc_name.to_string());
        }
        names.push(format!("{svc_name}.{ns}"));
        names.push(format!("{svc_name}.{ns}.svc"));
        names.push(format!("{svc_name}.{ns}.svc.{CLUSTER_DOMAIN}"));
        let names = names.join(" ");
        let addresses: Vec<Ipv4Addr> = match vip_of(svc) {
            Some(vip) => vec![vip],
            None => selector(svc)
                .map(|sel| {
                    pods.iter()
                        .filter(|p| selects(&sel, ns, p))
                        .map(|p| p.ip)
                        .collect()
                })
                .unwrap_or_default(),
        };
        for address in addresses {
            out.push_str(&format!("{address}\t{names}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ns: &str, ip: [u8; 4], labels: &[(&str, &str)], spec: Value) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            ip: Ipv4Addr::from(ip),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
            service_account: "default".into(),
            node_name: "node-a".into(),
            netns: "stb-x".into(),
            deployment: None,
            spec,
            replica_set: None,
        }
    }

    #[test]
    fn addresses_stay_in_their_networks() {
        assert_eq!(
            nth_address(POD_NETWORK, 0),
            Some(Ipv4Addr::new(198, 18, 0, 10))
        );
        assert_eq!(
            nth_address(SERVICE_NETWORK, 300),
            Some(Ipv4Addr::new(198, 19, 1, 54))
        );
        assert_eq!(nth_address(POD_NETWORK, 65_525), None);
        assert!(nth_address(POD_NETWORK, 65_524).is_some_and(|ip| in_network(ip, POD_NETWORK)));
        assert!(!in_network(Ipv4Addr::new(198, 19, 0, 1), POD_NETWORK));
    }

    #[test]
    fn suffixes() {
        let a = stable_suffix("ns/svc/0", 5);
        assert_eq!(a, stable_suffix("ns/svc/0", 5));
        assert_ne!(a, stable_suffix("ns/svc/1", 5));
        assert_eq!(random_suffix(10).len(), 10);
        assert!(
            random_suffix(50)
                .bytes()
                .all(|b| NAME_ALPHABET.contains(&b))
        );
    }

    #[test]
    fn services_get_defaults_and_vips() {
        let svc = json!({"kind": "Service", "metadata": {"name": "s"},
            "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}});
        assert!(wants_vip(&svc));
        let stored = service_object(&svc, Some(Ipv4Addr::new(198, 19, 0, 10)));
        assert_eq!(stored["metadata"]["namespace"], "default");
        assert_eq!(stored["spec"]["clusterIP"], "198.19.0.10");
        assert_eq!(stored["spec"]["clusterIPs"], json!(["198.19.0.10"]));
        assert_eq!(stored["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(stored["spec"]["ports"][0]["protocol"], "TCP");
        let headless = json!({"kind": "Service", "spec": {"clusterIP": "None"}});
        assert!(!wants_vip(&headless));
        assert_eq!(requested_vip(&headless), None);
        let pinned = json!({"spec": {"clusterIP": "198.19.3.3"}});
        assert_eq!(requested_vip(&pinned), Some(Ipv4Addr::new(198, 19, 3, 3)));
        assert_eq!(
            requested_vip(&json!({"spec": {"clusterIP": "10.0.0.1"}})),
            None
        );
    }

    #[test]
    fn endpoint_slices_resolve_ports_like_the_controller() {
        let named = json!({"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]});
        let pods = vec![
            pod("a-1", "ns", [198, 18, 0, 10], &[("app", "a")], named),
            pod("a-2", "ns", [198, 18, 0, 11], &[("app", "a")], json!({})),
            pod("b-1", "ns", [198, 18, 0, 12], &[("app", "b")], json!({})),
            pod("a-x", "other", [198, 18, 0, 13], &[("app", "a")], json!({})),
        ];
        let svc = service_object(
            &json!({"kind": "Service", "metadata": {"name": "a", "namespace": "ns"},
                "spec": {"selector": {"app": "a"}, "ports": [
                    {"name": "http", "port": 80, "targetPort": "web", "appProtocol": "http"},
                    {"name": "tcp", "port": 9090}]}}),
            Some(Ipv4Addr::new(198, 19, 0, 10)),
        );
        let slices = endpoint_slices(std::slice::from_ref(&svc), &pods);
        assert_eq!(slices.len(), 2, "{slices:#?}");
        for s in &slices {
            assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "a");
            assert_eq!(s["metadata"]["namespace"], "ns");
            assert!(s["metadata"]["name"].as_str().unwrap().starts_with("a-"));
        }
        let with_web = slices
            .iter()
            .find(|s| s["ports"].as_array().unwrap().len() == 2)
            .unwrap();
        assert_eq!(with_web["ports"][0]["port"], 8080);
        assert_eq!(with_web["ports"][0]["appProtocol"], "http");
        assert_eq!(with_web["ports"][1]["port"], 9090);
        assert_eq!(
            with_web["endpoints"][0]["addresses"],
            json!(["198.18.0.10"])
        );
        assert_eq!(with_web["endpoints"][0]["targetRef"]["name"], "a-1");
        assert_eq!(with_web["endpoints"][0]["nodeName"], "node-a");
        let without = slices
            .iter()
            .find(|s| s["ports"].as_array().unwrap().len() == 1)
            .unwrap();
        assert_eq!(without["endpoints"][0]["targetRef"]["name"], "a-2");
        // Stable names across calls.
        assert_eq!(endpoint_slices(std::slice::from_ref(&svc), &pods), slices);
        // Selector matching nothing: one empty slice; no selector: none.
        let lonely = json!({"kind": "Service", "metadata": {"name": "z", "namespace": "ns"},
            "spec": {"selector": {"app": "zz"}, "ports": [{"port": 1}]}});
        let empty = endpoint_slices(&[lonely], &pods);
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0]["endpoints"], json!([]));
        let manual =
            json!({"kind": "Service", "metadata": {"name": "m", "namespace": "ns"}, "spec": {}});
        assert!(endpoint_slices(&[manual], &pods).is_empty());
    }

    #[test]
    fn hosts_file_names_services() {
        let pods = vec![
            pod("me-1", "ns", [198, 18, 0, 10], &[("app", "a")], json!({})),
            pod("h-1", "other", [198, 18, 0, 11], &[("app", "h")], json!({})),
        ];
        let svc = service_object(
            &json!({"metadata": {"name": "echo", "namespace": "ns"}, "spec": {}}),
            Some(Ipv4Addr::new(198, 19, 0, 10)),
        );
        let far = service_object(
            &json!({"metadata": {"name": "far", "namespace": "other"}, "spec": {}}),
            Some(Ipv4Addr::new(198, 19, 0, 11)),
        );
        let headless = service_object(
            &json!({"metadata": {"name": "hl", "namespace": "other"},
                "spec": {"clusterIP": "None", "selector": {"app": "h"}}}),
            None,
        );
        let text = hosts_file(&pods[0], &[svc, far, headless], &pods);
        assert!(text.contains("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(text.contains("198.18.0.10\tme-1\n"), "{text}");
        assert!(
            text.contains("198.19.0.10\techo echo.ns echo.ns.svc echo.ns.svc.cluster.local\n"),
            "{text}"
        );
        assert!(
            text.contains("198.19.0.11\tfar.other far.other.svc far.other.svc.cluster.local\n"),
            "{text}"
        );
        assert!(text.contains("198.18.0.11\thl.other "), "{text}");
    }

    #[test]
    fn pod_objects_look_like_the_api_servers() {
        let mut p = pod(
            "echo-v1-abcdefghjk-xyzbc",
            "ns",
            [198, 18, 0, 10],
            &[("app", "echo")],
            json!({"containers": [{"name": "echo", "image": "registry.k8s.io/gateway-api/echo-advanced:v1.5.1", "args": ["--port=8080", 9090]}]}),
        );
        p.annotations
            .insert("strait.dev/netns".into(), "stb-x".into());
        p.replica_set = Some(("echo-v1-abcdefghjk".into(), "rs-uid".into()));
        let o = p.object();
        assert_eq!(o["kind"], "Pod");
        assert_eq!(o["metadata"]["annotations"]["strait.dev/netns"], "stb-x");
        assert_eq!(o["metadata"]["labels"]["app"], "echo");
        assert_eq!(o["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(o["spec"]["nodeName"], "node-a");
        assert_eq!(o["spec"]["serviceAccountName"], "default");
        assert_eq!(o["status"]["phase"], "Running");
        assert_eq!(o["status"]["podIP"], "198.18.0.10");
        assert_eq!(o["status"]["podIPs"], json!([{"ip": "198.18.0.10"}]));
        assert!(
            o["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        );
        assert_eq!(
            p.echo_args(),
            Some(vec!["--port=8080".into(), "9090".into()])
        );
        assert!(p.matches("ns", &[("app", "echo")]));
        assert!(!p.matches("ns", &[("app", "echo"), ("version", "v1")]));
        assert!(!p.matches("other", &[]));
    }

    #[test]
    fn deployments_are_read_with_defaults() {
        let d = json!({"kind": "Deployment", "metadata": {"name": "d", "namespace": "n"},
            "spec": {"template": {"metadata": {"labels": {"app": "d"}},
                "spec": {"serviceAccountName": "sa", "containers": []}}}});
        let t = deployment_template(&d).unwrap();
        assert_eq!(t.replicas, 1);
        assert_eq!(t.service_account, "sa");
        assert_eq!(t.labels.get("app").map(String::as_str), Some("d"));
        let bad = json!({"kind": "Deployment", "metadata": {"name": "d", "namespace": "n"},
            "spec": {"replicas": -1, "template": {}}});
        let err = deployment_template(&bad).err().unwrap().to_string();
        assert!(err.contains("Deployment n/d"), "{err}");
        assert!(err.contains("replicas"), "{err}");
    }
}

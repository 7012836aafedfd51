//! Plays the Kubernetes cluster around Strait: prepares the manifests directory, runs a pod
//! (an echo server on its own loopback IP) per Deployment replica, writes the EndpointSlices the
//! endpointslice controller would, and generates the certificates the suite creates at setup.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use anyhow::Context as _;
use rand::Rng as _;
use serde_json::{Value, json};
use strait_echo::{EchoOptions, EchoServer, Identity, TlsSettings};

use crate::status::CONTROLLER_NAME;

/// The GatewayClass name the harness substitutes.
pub const GATEWAY_CLASS: &str = "strait";

/// Parses a multi-document YAML text into JSON values (empty documents dropped).
pub fn parse_docs(text: &str, origin: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    Ok(docs.into_iter().filter(|d| d.is_object()).collect())
}

/// Serialises documents back to one multi-document YAML text.
pub fn write_docs(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(d).context("serialising a manifest")?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

pub fn kind(d: &Value) -> &str {
    d.get("kind").and_then(Value::as_str).unwrap_or("")
}

pub fn name(d: &Value) -> &str {
    d.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn namespace(d: &Value) -> &str {
    d.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Applies the suite's substitutions: class name, controller name.
pub fn substitute(docs: &mut [Value]) {
    for d in docs.iter_mut() {
        replace_placeholders(d);
        match kind(d) {
            "Gateway" => {
                if let Some(spec) = d.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("gatewayClassName".into(), json!(GATEWAY_CLASS));
                }
            }
            "GatewayClass" => {
                if let Some(spec) = d.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("controllerName".into(), json!(CONTROLLER_NAME));
                }
            }
            _ => {}
        }
    }
}

/// The address GatewayStaticAddresses may use: standalone serves Gateways on loopback addresses
/// (clear of the echo pods' 127.20-89.x.y and the per-Gateway 127.100-227.x.y).
pub const USABLE_ADDRESS: &str = "127.99.0.1";
/// An address standalone can never serve (TEST-NET-2, RFC 5737); nothing is ever sent to it.
pub const UNUSABLE_ADDRESS: &str = "198.51.100.7";

/// Which entry of `spec.addresses` an action's `remove_address` names: `spec.addresses[N]`, or
/// the entry that took the place of the unusable/usable placeholder.
pub fn address_to_remove(which: &str, addresses: &[Value]) -> Option<usize> {
    if let Some(rest) = which.strip_prefix("spec.addresses[") {
        let index: usize = rest.split(']').next()?.parse().ok()?;
        return (index < addresses.len()).then_some(index);
    }
    let value = if which.contains("unusable") {
        UNUSABLE_ADDRESS
    } else if which.contains("usable") {
        USABLE_ADDRESS
    } else {
        return None;
    };
    addresses
        .iter()
        .position(|a| a.get("value").and_then(Value::as_str) == Some(value))
}

fn replace_placeholders(v: &mut Value) {
    if let Some(address) = v.as_object_mut()
        && let Some(placeholder) = address.get("value").and_then(Value::as_str)
    {
        let value = match placeholder {
            "PLACEHOLDER_USABLE_ADDRS" => Some(USABLE_ADDRESS),
            "PLACEHOLDER_UNUSABLE_ADDRS" => Some(UNUSABLE_ADDRESS),
            _ => None,
        };
        if let Some(value) = value {
            address.insert("type".into(), json!("IPAddress"));
            address.insert("value".into(), json!(value));
            return;
        }
    }
    match v {
        Value::String(s) if s.contains('{') => {
            *s = s
                .replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS)
                .replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER_NAME);
        }
        Value::Array(a) => a.iter_mut().for_each(replace_placeholders),
        Value::Object(o) => o.values_mut().for_each(replace_placeholders),
        _ => {}
    }
}

/// The GatewayClass every Gateway of the run refers to.
pub fn gateway_class() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": GATEWAY_CLASS},
        "spec": {"controllerName": CONTROLLER_NAME}
    })
}

/// A running pod.
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub deployment: String,
    pub ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    /// Container port name → number, for named targetPorts.
    pub named_ports: BTreeMap<String, i64>,
    pub server: Option<EchoServer>,
}

struct Running {
    fingerprint: String,
    pods: Vec<Pod>,
}

/// Pods across tests: a Deployment whose manifest (and TLS material) is unchanged keeps its pods.
#[derive(Default)]
pub struct Cluster {
    running: BTreeMap<(String, String), Running>,
    next_ip: u32,
    ips: HashMap<String, IpAddr>,
}

fn random_suffix(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container
        .get("env")?
        .as_array()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .map(|e| {
            e.get("value")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        })
}

/// Reads a file a container would see under a mounted Secret/ConfigMap volume.
fn mounted_file(
    pod_spec: &Value,
    container: &Value,
    path: &str,
    store: &DataStore,
    ns: &str,
) -> Option<String> {
    let mounts = container.get("volumeMounts")?.as_array()?;
    let (mount, file) = mounts.iter().find_map(|m| {
        let mp = m.get("mountPath")?.as_str()?.trim_end_matches('/');
        let rest = path.strip_prefix(mp)?.strip_prefix('/')?;
        Some((m.get("name")?.as_str()?, rest))
    })?;
    let volume = pod_spec
        .get("volumes")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(mount))?;
    let (source_kind, source) = if let Some(s) = volume.get("secret") {
        ("Secret", s.get("secretName")?.as_str()?)
    } else {
        let c = volume.get("configMap")?;
        ("ConfigMap", c.get("name")?.as_str()?)
    };
    let source_value = volume.get("secret").or_else(|| volume.get("configMap"))?;
    let key = source_value
        .get("items")
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .find(|i| i.get("path").and_then(Value::as_str) == Some(file))
                .and_then(|i| i.get("key").and_then(Value::as_str))
        })
        .unwrap_or(file);
    store.get(source_kind, ns, source, key)
}

/// Secret and ConfigMap contents visible to pods.
#[derive(Default, Clone)]
pub struct DataStore {
    /// (kind, namespace, name) → key → decoded text.
    pub entries: BTreeMap<(String, String, String), BTreeMap<String, String>>,
}

impl DataStore {
    pub fn get(&self, kind: &str, ns: &str, name: &str, key: &str) -> Option<String> {
        self.entries
            .get(&(kind.to_string(), ns.to_string(), name.to_string()))?
            .get(key)
            .cloned()
    }

    /// Records every Secret/ConfigMap among `docs`.
    pub fn absorb(&mut self, docs: &[Value]) {
        for d in docs {
            let k = kind(d);
            if k != "Secret" && k != "ConfigMap" {
                continue;
            }
            let mut map = BTreeMap::new();
            if let Some(data) = d.get("data").and_then(Value::as_object) {
                for (key, v) in data {
                    let text = v.as_str().unwrap_or("");
                    let decoded = if k == "Secret" {
                        strait_echo::base64_decode(text)
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default()
                    } else {
                        text.to_string()
                    };
                    map.insert(key.clone(), decoded);
                }
            }
            if let Some(data) = d.get("stringData").and_then(Value::as_object) {
                for (key, v) in data {
                    map.insert(key.clone(), v.as_str().unwrap_or("").to_string());
                }
            }
            self.entries.insert(
                (k.to_string(), namespace(d).to_string(), name(d).to_string()),
                map,
            );
        }
    }
}

impl Cluster {
    fn ip_for(&mut self, pod_key: &str) -> IpAddr {
        if let Some(ip) = self.ips.get(pod_key) {
            return *ip;
        }
        let n = self.next_ip;
        self.next_ip += 1;
        // 127.20-89.x.y by process, so concurrent runs on one machine rarely collide; Strait's
        // Gateway addresses live in 127.100+.
        let net = 20 + (std::process::id() % 70) as u8;
        let ip = IpAddr::V4(Ipv4Addr::new(
            127,
            net,
            (n / 250) as u8,
            (n % 250 + 1) as u8,
        ));
        self.ips.insert(pod_key.to_string(), ip);
        ip
    }

    /// Makes the running pods match the Deployments among `docs`.
    pub async fn sync(&mut self, docs: &[Value], store: &DataStore) -> anyhow::Result<()> {
        let mut wanted = BTreeMap::new();
        for d in docs.iter().filter(|d| kind(d) == "Deployment") {
            wanted.insert((namespace(d).to_string(), name(d).to_string()), d);
        }
        self.running.retain(|key, _| wanted.contains_key(key));
        for ((ns, deploy), d) in wanted {
            let pod_spec = d
                .pointer("/spec/template/spec")
                .cloned()
                .unwrap_or(Value::Null);
            let container = pod_spec
                .pointer("/containers/0")
                .cloned()
                .unwrap_or(Value::Null);
            let file = |env: &str| {
                env_value(&container, env)
                    .and_then(|p| mounted_file(&pod_spec, &container, &p, store, &ns))
            };
            let cert = file("TLS_SERVER_CERT");
            let key = file("TLS_SERVER_PRIVKEY").or_else(|| file("TLS_SERVER_PRIV_KEY"));
            let client_ca = file("TLS_CLIENT_CACERTS");
            let fingerprint = format!("{d}|{cert:?}|{key:?}|{client_ca:?}");
            if self
                .running
                .get(&(ns.clone(), deploy.clone()))
                .is_some_and(|r| r.fingerprint == fingerprint)
            {
                continue;
            }
            // Stop the old pods first so their ports are free.
            self.running.remove(&(ns.clone(), deploy.clone()));
            tokio::task::yield_now().await;
            let replicas = d
                .pointer("/spec/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let labels: BTreeMap<String, String> = d
                .pointer("/spec/template/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let named_ports: BTreeMap<String, i64> = pod_spec
                .get("containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| {
                    c.get("ports")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|p| {
                    Some((
                        p.get("name")?.as_str()?.to_string(),
                        p.get("containerPort")?.as_i64()?,
                    ))
                })
                .collect();
            let image = container.get("image").and_then(Value::as_str).unwrap_or("");
            let plain_http_echo = image.contains("echo-basic")
                && ["GRPC_ECHO_SERVER", "TCP_ECHO_SERVER", "UDP_ECHO_SERVER"]
                    .iter()
                    .all(|e| env_value(&container, e).is_none());
            let template_hash = random_suffix(10, b"0123456789abcdef");
            let mut pods = Vec::new();
            for i in 0..replicas {
                let pod_name = format!(
                    "{deploy}-{template_hash}-{}",
                    random_suffix(5, b"bcdfghjklmnpqrstvwxz2456789")
                );
                let ip = self.ip_for(&format!("{ns}/{deploy}/{i}"));
                let server = if plain_http_echo {
                    let mut options = EchoOptions::new(ip);
                    if let (Some(cert), Some(key)) = (&cert, &key) {
                        options.tls = Some((
                            8443,
                            TlsSettings {
                                cert_pem: cert.clone(),
                                key_pem: key.clone(),
                                client_ca_pem: client_ca.clone(),
                            },
                        ));
                    }
                    let identity = Identity {
                        namespace: ns.clone(),
                        service: env_value(&container, "SERVICE_NAME").unwrap_or_default(),
                        pod: pod_name.clone(),
                        ingress: env_value(&container, "INGRESS_NAME").unwrap_or_default(),
                    };
                    Some(start_echo(options, identity).await?)
                } else {
                    None
                };
                pods.push(Pod {
                    name: pod_name,
                    namespace: ns.clone(),
                    deployment: deploy.clone(),
                    ip,
                    labels: labels.clone(),
                    named_ports: named_ports.clone(),
                    server,
                });
            }
            self.running
                .insert((ns.clone(), deploy.clone()), Running { fingerprint, pods });
        }
        Ok(())
    }

    /// Every running pod.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.running.values().flat_map(|r| r.pods.iter())
    }

    /// Pods whose labels include `app=<app>` in `ns`.
    pub fn pods_of_app<'a>(&'a self, ns: &'a str, app: &'a str) -> impl Iterator<Item = &'a Pod> {
        self.pods().filter(move |p| {
            p.namespace == ns && p.labels.get("app").map(String::as_str) == Some(app)
        })
    }

    /// EndpointSlices for every Service with a selector, as the endpointslice controller makes.
    pub fn endpoint_slices(&self, docs: &[Value]) -> Vec<Value> {
        let mut out = Vec::new();
        for svc in docs.iter().filter(|d| kind(d) == "Service") {
            let Some(selector) = svc.pointer("/spec/selector").and_then(Value::as_object) else {
                continue;
            };
            if selector.is_empty() {
                continue;
            }
            let ns = namespace(svc);
            let pods: Vec<&Pod> = self
                .pods()
                .filter(|p| {
                    p.namespace == ns
                        && selector
                            .iter()
                            .all(|(k, v)| p.labels.get(k).map(String::as_str) == v.as_str())
                })
                .collect();
            let service_ports = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ports: Vec<Value> = service_ports
                .iter()
                .map(|p| {
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                    let target = match p.get("targetPort") {
                        Some(Value::Number(n)) => n.as_i64().unwrap_or(port),
                        Some(Value::String(s)) => s
                            .parse()
                            .ok()
                            .or_else(|| {
                                pods.first().and_then(|pod| pod.named_ports.get(s).copied())
                            })
                            .unwrap_or(port),
                        _ => port,
                    };
                    let mut e = json!({
                        "port": target,
                        "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP")),
                    });
                    if let Some(n) = p.get("name") {
                        e["name"] = n.clone();
                    } else {
                        e["name"] = json!("");
                    }
                    if let Some(a) = p.get("appProtocol") {
                        e["appProtocol"] = a.clone();
                    }
                    e
                })
                .collect();
            out.push(slice(
                ns,
                name(svc),
                &format!("{}-strait", name(svc)),
                ports,
                &pods,
            ));
        }
        out
    }
}

fn slice(ns: &str, service: &str, slice_name: &str, ports: Vec<Value>, pods: &[&Pod]) -> Value {
    let endpoints: Vec<Value> = pods.iter().map(|p| endpoint(p)).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name,
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            }
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

fn endpoint(p: &Pod) -> Value {
    json!({
        "addresses": [p.ip.to_string()],
        "conditions": {"ready": true, "serving": true, "terminating": false},
        "targetRef": {"kind": "Pod", "name": p.name, "namespace": p.namespace},
    })
}

/// Fills the IPv4 EndpointSlices without endpoints (of selector-less Services) with the IPs of
/// `deployment`'s pods: the "setup" action of tests that manage EndpointSlices by hand.
pub fn fill_manual_slices(docs: &mut [Value], cluster: &Cluster, deployment: &str) -> usize {
    let mut filled = 0;
    for d in docs.iter_mut() {
        if kind(d) != "EndpointSlice"
            || d.get("addressType").and_then(Value::as_str) != Some("IPv4")
            || d.get("endpoints")
                .and_then(Value::as_array)
                .is_some_and(|e| !e.is_empty())
        {
            continue;
        }
        let ns = namespace(d).to_string();
        let endpoints: Vec<Value> = cluster
            .pods()
            .filter(|p| p.namespace == ns && p.deployment == deployment)
            .map(endpoint)
            .collect();
        if !endpoints.is_empty() {
            d["endpoints"] = Value::Array(endpoints);
            filled += 1;
        }
    }
    filled
}

async fn start_echo(options: EchoOptions, identity: Identity) -> anyhow::Result<EchoServer> {
    // A just-dropped server of the same pod may still hold its ports for a moment.
    let mut last = None;
    for _ in 0..20 {
        match EchoServer::start(options.clone(), identity.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(anyhow::anyhow!(
        "starting echo pod {}/{}: {}",
        identity.namespace,
        identity.pod,
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Writes the manifests of one test run into `dir/manifests.yaml`.
pub fn write_dir(dir: &Path, docs: &[Value]) -> anyhow::Result<()> {
    let path = dir.join("manifests.yaml");
    std::fs::write(&path, write_docs(docs)?).with_context(|| format!("writing {}", path.display()))
}

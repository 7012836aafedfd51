//! The provisioner's desired objects (pure): for each accepted Gateway of ours, a
//! ServiceAccount, a Deployment running `strait gateway` and a Service exposing its listener
//! ports; for each waypoint the mesh needs, the same running `strait waypoint`.
//!
//! Objects carry `gateway.networking.k8s.io/gateway-name` (how the Service's address finds its
//! way back into `Gateway.status.addresses`), `app.kubernetes.io/managed-by: strait`, and the
//! Gateway's `spec.infrastructure` labels and annotations. Gateway-owned objects get an owner
//! reference so deleting the Gateway deletes them.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use strait_compile::CompileOutput;
use strait_compile::parameters::{ProxyParameters, WAYPOINT_CLASS};
use strait_config::ObjectRef;
use strait_config::mesh::GATEWAY_NAME_LABEL;
use strait_model::Snapshot;
use strait_model::types::Gateway;

/// Label marking objects this provisioner manages (it only ever deletes those).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "strait");
/// Health port of every proxy (readiness probe).
pub const HEALTH_PORT: u16 = 15021;
/// The port waypoints serve HBONE on.
const HBONE_PORT: u16 = 15008;
/// The environment variable a proxy reads its runtime's worker count from.
const WORKERS_ENV: &str = "STRAIT_WORKERS";
/// Where proxies find their projected token for the CA (audience `strait-ca`).
pub const CA_TOKEN_DIR: &str = "/var/run/secrets/strait.dev/tokens";
/// The token file's name inside [`CA_TOKEN_DIR`] (also the audience).
pub const CA_TOKEN_FILE: &str = "strait-ca";

/// What provisioned proxies run and where they find the controller.
#[derive(Clone, Debug)]
pub struct ProvisionOptions {
    pub image: String,
    /// Config-stream endpoint, e.g. `http://strait-controller.strait-system:15010`.
    pub control_plane: String,
    /// CA endpoint, e.g. `http://strait-controller.strait-system:15012`.
    pub ca: String,
    /// The mesh's trust anchor (PEM): published as ConfigMap [`CA_ROOT_CONFIGMAP`] in the
    /// controller's namespace and in every namespace with a provisioned proxy, so proxies can
    /// verify the control plane's serving certificate (`https://` endpoints).
    pub ca_root_pem: Option<String>,
    /// The controller's namespace (the node DaemonSet runs there too).
    pub controller_namespace: String,
}

/// ConfigMap holding the mesh's trust anchor (`root.crt`).
pub const CA_ROOT_CONFIGMAP: &str = "strait-ca-root";
/// Where proxies mount [`CA_ROOT_CONFIGMAP`] (the CLI's default `--ca-root` is `root.crt` here).
pub const CA_ROOT_DIR: &str = "/var/run/secrets/strait.dev/ca-root";

/// Every object the provisioner wants to exist, as server-side-apply bodies.
pub fn desired(
    snapshot: &Snapshot,
    output: &CompileOutput,
    options: &ProvisionOptions,
) -> Vec<Value> {
    let mut objects = Vec::new();
    for gateway in &snapshot.gateways {
        let namespace = gateway.metadata.namespace.clone().unwrap_or_default();
        let name = gateway.metadata.name.clone().unwrap_or_default();
        let key = ObjectRef {
            namespace: namespace.clone(),
            name: name.clone(),
        };
        // Only Accepted Gateways have parameters.
        let Some(parameters) = output.provisioning.gateways.get(&key) else {
            continue;
        };
        let mut ports: Vec<u16> = gateway
            .spec
            .listeners
            .iter()
            .filter_map(|l| u16::try_from(l.port).ok())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let infrastructure = Infrastructure::of(gateway);
        let proxy = Proxy {
            namespace: &namespace,
            gateway: &name,
            object_name: gateway_service_account(&name),
            service_account: gateway_service_account(&name),
            args: vec![
                "gateway".into(),
                "--control-plane".into(),
                options.control_plane.clone(),
                "--gateway".into(),
                format!("{namespace}/{name}"),
            ],
            ports,
            service_type: "LoadBalancer",
            infrastructure,
            parameters,
        };
        objects.extend(proxy.objects(&options.image));
    }
    for (waypoint, parameters) in &output.provisioning.waypoints {
        let ObjectRef { namespace, name } = waypoint;
        // A Gateway of the waypoint class that declares this waypoint lends it its metadata.
        let declared = snapshot.gateways.iter().find(|g| {
            g.spec.gateway_class_name == WAYPOINT_CLASS
                && g.metadata.namespace.as_ref() == Some(namespace)
                && g.metadata.name.as_ref() == Some(name)
        });
        let infrastructure = declared
            .map(|gateway| Infrastructure::of(gateway))
            .unwrap_or_default();
        // The waypoint's SPIFFE identity is its service account: the name node proxies expect.
        let service_account = output
            .mesh
            .waypoints
            .iter()
            .find(|w| &w.gateway == waypoint)
            .map_or_else(|| name.clone(), |w| w.service_account.clone());
        let proxy = Proxy {
            namespace,
            gateway: name,
            object_name: name.clone(),
            service_account,
            args: vec![
                "waypoint".into(),
                "--control-plane".into(),
                options.control_plane.clone(),
                "--ca".into(),
                options.ca.clone(),
                "--namespace".into(),
                namespace.clone(),
                "--name".into(),
                name.clone(),
            ],
            ports: vec![HBONE_PORT],
            service_type: "ClusterIP",
            infrastructure,
            parameters,
        };
        objects.extend(proxy.objects(&options.image));
    }
    if let Some(root) = &options.ca_root_pem {
        let mut namespaces: std::collections::BTreeSet<String> = objects
            .iter()
            .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_string))
            .collect();
        namespaces.insert(options.controller_namespace.clone());
        for namespace in namespaces {
            objects.push(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": CA_ROOT_CONFIGMAP,
                    "namespace": namespace,
                    "labels": {MANAGED_BY.0: MANAGED_BY.1},
                },
                "data": {"root.crt": root},
            }));
        }
    }
    objects
}

/// What a Gateway lends the objects of its proxy: its `spec.infrastructure` labels and
/// annotations, and the owner reference that has them deleted with it.
#[derive(Default)]
struct Infrastructure {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    owner: Option<Value>,
}

impl Infrastructure {
    fn of(gateway: &Gateway) -> Infrastructure {
        let infrastructure = gateway.spec.infrastructure.as_ref();
        Infrastructure {
            labels: infrastructure
                .and_then(|i| i.labels.clone())
                .unwrap_or_default(),
            annotations: infrastructure
                .and_then(|i| i.annotations.clone())
                .unwrap_or_default(),
            owner: gateway.metadata.uid.as_ref().map(|uid| {
                json!({
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "name": gateway.metadata.name,
                    "uid": uid,
                    "controller": true,
                })
            }),
        }
    }
}

/// The service account (and object name) of the proxy provisioned for Gateway `name`; the
/// config stream admits only it to that Gateway's config.
pub fn gateway_service_account(name: &str) -> String {
    format!("{name}-strait")
}

struct Proxy<'a> {
    namespace: &'a str,
    gateway: &'a str,
    object_name: String,
    service_account: String,
    args: Vec<String>,
    ports: Vec<u16>,
    service_type: &'a str,
    infrastructure: Infrastructure,
    parameters: &'a ProxyParameters,
}

impl Proxy<'_> {
    fn objects(&self, image: &str) -> Vec<Value> {
        let mut labels = self.infrastructure.labels.clone();
        labels.insert(GATEWAY_NAME_LABEL.into(), self.gateway.to_string());
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        let selector = json!({ GATEWAY_NAME_LABEL: self.gateway });
        let metadata = |name: &str| {
            let mut meta = json!({
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": self.infrastructure.annotations,
            });
            if let Some(owner) = &self.infrastructure.owner {
                meta["ownerReferences"] = json!([owner]);
            }
            meta
        };
        let privileged_port = self.ports.iter().any(|p| *p < 1024);
        let container_ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({"containerPort": p, "protocol": "TCP"}))
            .chain(std::iter::once(
                json!({"containerPort": HEALTH_PORT, "name": "health", "protocol": "TCP"}),
            ))
            .collect();
        let service_ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({"name": format!("tcp-{p}"), "port": p, "targetPort": p, "protocol": "TCP"}))
            .collect();
        let parameters = self.parameters;
        let mut env = vec![
            json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        ];
        if let Some(workers) = parameters.workers {
            env.push(json!({"name": WORKERS_ENV, "value": workers.to_string()}));
        }
        let mut resources = json!({
            "requests": {
                "cpu": parameters.requests_cpu.as_str(),
                "memory": parameters.requests_memory.as_str(),
            },
            "limits": {"memory": parameters.limits_memory.as_str()},
        });
        if let Some(cpu) = &parameters.limits_cpu {
            resources["limits"]["cpu"] = json!(cpu.as_str());
        }
        let mut pod_spec = json!({
            "serviceAccountName": self.service_account,
            // The proxies never call the API server: no API token in their pods.
            "automountServiceAccountToken": false,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "strait",
                "image": image,
                "args": self.args,
                "env": env,
                "ports": container_ports,
                "readinessProbe": {
                    "httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT},
                    "periodSeconds": 5,
                },
                "livenessProbe": {
                    "tcpSocket": {"port": HEALTH_PORT},
                    "initialDelaySeconds": 10,
                    "periodSeconds": 10,
                    "failureThreshold": 6,
                },
                // Requests make the Deployment HPA-ready (CPU utilisation needs them).
                "resources": resources,
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        });
        if privileged_port {
            // Listener ports below 1024 without root: a capability added to a non-root
            // container never becomes effective (Kubernetes sets no ambient capabilities), so
            // lower the pod's unprivileged-port floor instead. The sysctl is namespaced to the
            // pod's network namespace and on the kubelet's safe list (no node configuration).
            pod_spec["securityContext"]["sysctls"] =
                json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]);
        }
        // The proxy's only credential: a projected token (audience strait-ca) it presents to
        // the config stream and, for waypoints, to the CA.
        // The mesh's trust anchor, to verify the control plane's serving certificate.
        pod_spec["containers"][0]["volumeMounts"] = json!([
            {"name": "strait-token", "mountPath": CA_TOKEN_DIR, "readOnly": true},
            {"name": "ca-root", "mountPath": CA_ROOT_DIR, "readOnly": true},
        ]);
        pod_spec["volumes"] = json!([
            {
                "name": "strait-token",
                "projected": {"sources": [{"serviceAccountToken": {
                    "path": CA_TOKEN_FILE,
                    "audience": CA_TOKEN_FILE,
                    "expirationSeconds": 3600,
                }}]},
            },
            {"name": "ca-root", "configMap": {"name": CA_ROOT_CONFIGMAP, "optional": true}},
        ]);
        let mut deployment_spec = json!({
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": self.infrastructure.annotations},
                "spec": pod_spec,
            },
        });
        // Unset unless asked for, so that an autoscaler may own it.
        if let Some(replicas) = parameters.replicas {
            deployment_spec["replicas"] = json!(replicas);
        }
        vec![
            json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": metadata(&self.service_account),
            }),
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": metadata(&self.object_name),
                "spec": deployment_spec,
            }),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata(&self.object_name),
                "spec": {
                    "type": self.service_type,
                    "selector": selector,
                    "ports": service_ports,
                },
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ProvisionOptions {
        ProvisionOptions {
            image: "strait:test".into(),
            control_plane: "http://cp:15010".into(),
            ca: "http://cp:15012".into(),
            ca_root_pem: None,
            controller_namespace: "strait-system".into(),
        }
    }

    fn snapshot(yaml: &str) -> Snapshot {
        let report = strait_model::load_str(yaml, std::path::Path::new("t.yaml"));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        report.snapshot
    }

    const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait}
spec: {controllerName: strait.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: shop, uid: "1234"}
spec:
  gatewayClassName: strait
  infrastructure:
    labels: {team: checkout}
    annotations: {cost-center: "42"}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: alt, port: 8080, protocol: HTTP}
  - {name: alt2, port: 8080, protocol: HTTP, hostname: a.example.com}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec:
  gatewayClassName: someone-else
  listeners: [{name: http, port: 80, protocol: HTTP}]
"#;

    #[test]
    fn accepted_gateways_get_account_deployment_and_service_with_infrastructure_metadata() {
        let snapshot = snapshot(GATEWAY);
        let output = crate::compile_snapshot(&snapshot, strait_compile::CONTROLLER_NAME);
        let objects = desired(&snapshot, &output, &options());
        let kinds: Vec<(&str, &str)> = objects
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("ServiceAccount", "web-strait"),
                ("Deployment", "web-strait"),
                ("Service", "web-strait")
            ],
            "only our class's Gateway is provisioned"
        );
        for object in &objects {
            assert_eq!(object["metadata"]["labels"]["team"], "checkout");
            assert_eq!(object["metadata"]["labels"][GATEWAY_NAME_LABEL], "web");
            assert_eq!(object["metadata"]["annotations"]["cost-center"], "42");
            assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "1234");
        }
        let ports: Vec<u64> = objects[2]["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ports,
            [80, 8080],
            "one Service port per distinct listener port"
        );
        let pod = &objects[1]["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["sysctls"],
            json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]),
            "port 80 without root needs the unprivileged-port floor lowered"
        );
        assert_eq!(
            pod["containers"][0]["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
    }

    fn container(deployment: &Value) -> &Value {
        &deployment["spec"]["template"]["spec"]["containers"][0]
    }

    fn env(deployment: &Value, name: &str) -> Option<String> {
        container(deployment)["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap_or_default().to_string())
    }

    #[test]
    fn parameters_size_the_deployment_and_defaults_leave_replicas_to_others() {
        let sized = GATEWAY.replace(
            "spec: {controllerName: strait.dev/gateway-controller}",
            "spec:\n  controllerName: strait.dev/gateway-controller\n  parametersRef: {group: '', kind: ConfigMap, name: p, namespace: shop}",
        ) + r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: p, namespace: shop}
data: {workers: "4", replicas: "2", limits.cpu: "3", limits.memory: 1Gi, requests.memory: 256Mi}
"#;
        let snapshot = snapshot(&sized);
        let mut output = crate::compile_snapshot(&snapshot, strait_compile::CONTROLLER_NAME);
        let objects = desired(&snapshot, &output, &options());
        let deployment = &objects[1];
        assert_eq!(deployment["kind"], "Deployment");
        assert_eq!(deployment["spec"]["replicas"], 2);
        assert_eq!(env(deployment, "STRAIT_WORKERS").as_deref(), Some("4"));
        assert_eq!(
            container(deployment)["resources"],
            json!({
                "requests": {"cpu": "100m", "memory": "256Mi"},
                "limits": {"cpu": "3", "memory": "1Gi"},
            })
        );

        // A waypoint's parameters, unset, leave the proxy's own worker default and the replica
        // count alone.
        let waypoint_key = ObjectRef {
            namespace: "shop".into(),
            name: "waypoint".into(),
        };
        output
            .provisioning
            .waypoints
            .insert(waypoint_key.clone(), ProxyParameters::default());
        let waypoint = |output: &CompileOutput| {
            desired(&snapshot, output, &options())
                .into_iter()
                .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "waypoint")
                .expect("the waypoint's Deployment")
        };
        let defaults = waypoint(&output);
        assert_eq!(defaults["spec"].get("replicas"), None);
        assert_eq!(env(&defaults, "STRAIT_WORKERS"), None);
        assert_eq!(
            container(&defaults)["resources"],
            json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}})
        );
        assert_eq!(defaults["metadata"].get("ownerReferences"), None);
        if let Some(p) = output.provisioning.waypoints.get_mut(&waypoint_key) {
            p.workers = Some("2".parse().expect("a count"));
        }
        assert_eq!(
            env(&waypoint(&output), "STRAIT_WORKERS").as_deref(),
            Some("2")
        );
    }

    #[test]
    fn a_declared_waypoint_is_provisioned_as_a_waypoint_with_its_gateways_metadata() {
        let snapshot = snapshot(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: strait-waypoint}
spec: {controllerName: strait.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop, uid: "77"}
spec:
  gatewayClassName: strait-waypoint
  infrastructure: {labels: {team: mesh}}
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#,
        );
        let output = crate::compile_snapshot(&snapshot, strait_compile::CONTROLLER_NAME);
        let objects = desired(&snapshot, &output, &options());
        let names: Vec<(&str, &str)> = objects
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("ServiceAccount", "edge"),
                ("Deployment", "edge"),
                ("Service", "edge")
            ],
            "a waypoint's objects, no ingress gateway's"
        );
        let deployment = &objects[1];
        assert_eq!(container(deployment)["args"][0], "waypoint");
        assert_eq!(deployment["metadata"]["labels"]["team"], "mesh");
        assert_eq!(deployment["metadata"]["ownerReferences"][0]["uid"], "77");
        assert_eq!(objects[2]["spec"]["ports"][0]["port"], 15008);
    }
}

//! Gateway acceptance, addresses and the per-Gateway config.

use std::collections::BTreeMap;
use std::net::IpAddr;

use strait_config::{GatewayConfig, ListenerConfig, ObjectRef, PortConfig};
use strait_model::types::Gateway;

use crate::conditions::Condition;
use crate::context::{Context, name, ns};
use crate::listeners::{self, ListenerState};
use crate::parameters::{Overrides, ParametersRef, ProxyParameters, WAYPOINT_CLASS};
use crate::tls;

/// A Gateway of one of our accepted classes, after validation.
#[derive(Debug)]
pub(crate) struct GatewayState<'a> {
    pub gateway: &'a Gateway,
    pub key: ObjectRef,
    /// Accepted and Programmed: the data plane serves it.
    pub serve: bool,
    /// How its proxy is provisioned; `Some` exactly when it is Accepted.
    pub provision: Option<ProxyParameters>,
    pub conditions: Vec<Condition>,
    /// What `status.addresses` reports and the listeners bind.
    pub addresses: Vec<IpAddr>,
    pub listeners: Vec<ListenerState>,
}

/// Validates every ingress Gateway whose class is one of `classes`, sorted by namespace/name.
/// Gateways of the waypoint class are the mesh's ([`crate::mesh`]).
pub(crate) fn evaluate<'a>(
    ctx: &Context<'a>,
    classes: &BTreeMap<String, Overrides>,
) -> Vec<GatewayState<'a>> {
    let mut out: Vec<GatewayState<'a>> = ctx
        .snapshot
        .gateways
        .iter()
        .filter(|g| {
            g.spec.gateway_class_name != WAYPOINT_CLASS
                && classes.contains_key(&g.spec.gateway_class_name)
        })
        .map(|g| evaluate_one(ctx, g, classes))
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

fn evaluate_one<'a>(
    ctx: &Context<'a>,
    gateway: &'a Gateway,
    classes: &BTreeMap<String, Overrides>,
) -> GatewayState<'a> {
    let key = ObjectRef {
        namespace: ns(&gateway.metadata).to_string(),
        name: name(&gateway.metadata).to_string(),
    };
    let listeners = listeners::evaluate(ctx, gateway);
    let assigned = ctx
        .input
        .gateway_addresses
        .get(&key)
        .cloned()
        .unwrap_or_default();

    // Requested addresses: unsupported types reject the Gateway; IPs we were not given make it
    // unprogrammable; requests without a value (type only) take whatever was assigned.
    let mut unsupported_address = None;
    let mut unusable_address = None;
    let mut requested: Vec<IpAddr> = Vec::new();
    for a in gateway.spec.addresses.iter().flatten() {
        let ty = a.r#type.as_deref().unwrap_or("IPAddress");
        if ty != "IPAddress" {
            unsupported_address.get_or_insert_with(|| {
                format!("Gateway {key}: address type {ty} is not supported")
            });
            continue;
        }
        let Some(value) = a.value.as_deref().filter(|v| !v.is_empty()) else {
            continue;
        };
        match value.parse::<IpAddr>() {
            Ok(ip) if assigned.contains(&ip) => requested.push(ip),
            _ => {
                unusable_address.get_or_insert_with(|| {
                    format!("Gateway {key}: address {value} cannot be assigned")
                });
            }
        }
    }
    let addresses = if requested.is_empty() {
        assigned
    } else {
        requested
    };

    let no_class_parameters = Overrides::default();
    let class_parameters = classes
        .get(&gateway.spec.gateway_class_name)
        .unwrap_or(&no_class_parameters);
    let parameters = parameters(ctx, gateway, &key, class_parameters);
    let invalid_parameters = parameters.as_ref().err().cloned();

    let valid = listeners.iter().filter(|l| l.routable).count();
    let accepted_cond = if let Some(msg) = invalid_parameters {
        Condition::new("Accepted", false, "InvalidParameters", msg)
    } else if let Some(msg) = unsupported_address {
        Condition::new("Accepted", false, "UnsupportedAddress", msg)
    } else if valid == 0 {
        Condition::new(
            "Accepted",
            false,
            "ListenersNotValid",
            format!("Gateway {key}: no valid listener"),
        )
    } else if valid < listeners.len() {
        Condition::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!("Gateway {key}: some listeners are not valid"),
        )
    } else {
        Condition::new("Accepted", true, "Accepted", "Gateway accepted")
    };
    let accepted = accepted_cond.status;
    let programmed_cond = if !accepted {
        let reason = if accepted_cond.reason == "ListenersNotValid" {
            "ListenersNotValid"
        } else {
            "Invalid"
        };
        Condition::new("Programmed", false, reason, accepted_cond.message.clone())
    } else if let Some(msg) = unusable_address {
        Condition::new("Programmed", false, "AddressNotUsable", msg)
    } else if addresses.is_empty() {
        Condition::new(
            "Programmed",
            false,
            "AddressNotAssigned",
            format!("Gateway {key}: no address assigned yet"),
        )
    } else {
        Condition::new("Programmed", true, "Programmed", "Gateway programmed")
    };
    let programmed = programmed_cond.status;
    let mut conditions = vec![accepted_cond, programmed_cond];
    if let Some(result) = tls::backend_client_certificate(ctx, gateway) {
        conditions.push(match result {
            Ok(_) => Condition::new("ResolvedRefs", true, "ResolvedRefs", "References resolved"),
            Err(e) => Condition::new("ResolvedRefs", false, e.reason, e.message),
        });
    }
    if tls::insecure_frontend(gateway) {
        conditions.push(Condition::new(
            "InsecureFrontendValidationMode",
            true,
            "ConfigurationChanged",
            format!(
                "Gateway {}: client certificate validation allows insecure fallback",
                key
            ),
        ));
    }
    GatewayState {
        gateway,
        key,
        serve: accepted && programmed,
        provision: parameters.ok().filter(|_| accepted),
        conditions,
        addresses,
        listeners,
    }
}

/// The parameters of a Gateway's proxy: its own `infrastructure.parametersRef` (a ConfigMap in
/// its namespace) over its class's.
pub(crate) fn parameters(
    ctx: &Context<'_>,
    gateway: &Gateway,
    key: &ObjectRef,
    class: &Overrides,
) -> Result<ProxyParameters, String> {
    let own = match gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    {
        None => Overrides::default(),
        Some(p) => ParametersRef {
            group: &p.group,
            kind: &p.kind,
            namespace: Some(&key.namespace),
            name: &p.name,
        }
        .resolve(ctx, &format!("Gateway {key}"))?,
    };
    own.over(class)
        .map_err(|e| format!("Gateway {key}: parameters: {e}"))
}

impl GatewayState<'_> {
    /// The data-plane config of an accepted, programmed Gateway: one port per distinct listener
    /// port (protocol of its first listener), servable listeners only.
    pub(crate) fn into_config(self) -> Option<GatewayConfig> {
        if !self.serve {
            return None;
        }
        let mut ports: Vec<PortConfig> = Vec::new();
        for l in self.listeners {
            let (Some(protocol), true) = (l.protocol, l.servable) else {
                continue;
            };
            let listener = ListenerConfig {
                name: match &l.owner {
                    // Names are unique per object only; qualify ListenerSet listeners.
                    Some(o) => format!("{}/{}/{}", o.namespace, o.name, l.name),
                    None => l.name,
                },
                hostname: l.hostname,
                tls: l.tls,
                http_routes: l.http_routes,
            };
            match ports.iter_mut().find(|p| p.port == l.port) {
                Some(p) => p.listeners.push(listener),
                None => ports.push(PortConfig {
                    port: l.port,
                    protocol,
                    listeners: vec![listener],
                }),
            }
        }
        ports.sort_by_key(|p| p.port);
        Some(GatewayConfig {
            gateway: self.key,
            addresses: self.addresses,
            ports,
            backend_client_certificate: None,
        })
    }
}

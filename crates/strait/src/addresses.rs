//! Standalone's stand-in for a LoadBalancer: each Gateway gets a loopback address of its own.
//!
//! Gateways commonly share listener ports (several Gateways on port 80), so one shared address
//! cannot serve them all. Linux routes the whole 127.0.0.0/8 to loopback, so every Gateway can
//! have its own address without configuring anything. The address is derived from the Gateway's
//! name, so it is stable across restarts, and sticks once assigned.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use strait_config::ObjectRef;
use strait_model::types::Gateway;

/// How standalone picks Gateway addresses.
#[derive(Clone, Copy, Debug)]
pub enum AddressMode {
    /// One loopback address per Gateway (127.A.B.C, derived from its name).
    PerGateway,
    /// Every Gateway on this one address (fine when they do not share ports).
    Shared(IpAddr),
}

/// Keeps assignments stable across reloads.
#[derive(Debug)]
pub(crate) struct AddressAllocator {
    mode: AddressMode,
    assigned: BTreeMap<ObjectRef, IpAddr>,
}

impl AddressAllocator {
    pub(crate) fn new(mode: AddressMode) -> Self {
        Self {
            mode,
            assigned: BTreeMap::new(),
        }
    }

    /// Addresses for every Gateway. A Gateway asking for a loopback `IPAddress` in
    /// `spec.addresses` gets exactly that; one asking for another address gets none (it cannot
    /// be served here, and compile reports it as not usable).
    pub(crate) fn assign(&mut self, gateways: &[Arc<Gateway>]) -> BTreeMap<ObjectRef, Vec<IpAddr>> {
        let current: BTreeSet<ObjectRef> = gateways.iter().map(|g| gateway_ref(g)).collect();
        self.assigned.retain(|gateway, _| current.contains(gateway));
        let mut result = BTreeMap::new();
        for gateway in gateways {
            let key = gateway_ref(gateway);
            let requested: Vec<IpAddr> = gateway
                .spec
                .addresses
                .iter()
                .flatten()
                .filter(|a| a.r#type.as_deref().unwrap_or("IPAddress") == "IPAddress")
                .filter_map(|a| a.value.as_deref()?.parse().ok())
                .collect();
            let addresses = if requested.is_empty() {
                vec![self.address_for(&key)]
            } else {
                requested.into_iter().filter(IpAddr::is_loopback).collect()
            };
            result.insert(key, addresses);
        }
        result
    }

    fn address_for(&mut self, gateway: &ObjectRef) -> IpAddr {
        if let AddressMode::Shared(address) = self.mode {
            return address;
        }
        if let Some(address) = self.assigned.get(gateway) {
            return *address;
        }
        let taken: BTreeSet<IpAddr> = self.assigned.values().copied().collect();
        let mut hasher = DefaultHasher::new();
        gateway.hash(&mut hasher);
        let mut n = hasher.finish();
        let address = loop {
            // 127.100.0.1 - 127.227.255.254: clear of 127.0.0.x, which other local services use.
            let bytes = (n % (128 * 65536)) as u32;
            let candidate = Ipv4Addr::new(
                127,
                100 + (bytes >> 16) as u8,
                (bytes >> 8) as u8,
                (bytes as u8).clamp(1, 254),
            );
            let candidate = IpAddr::V4(candidate);
            if !taken.contains(&candidate) {
                break candidate;
            }
            n = n.wrapping_mul(6364136223846793005).wrapping_add(1);
        };
        self.assigned.insert(gateway.clone(), address);
        address
    }
}

fn gateway_ref(gateway: &Gateway) -> ObjectRef {
    ObjectRef {
        namespace: gateway.metadata.namespace.clone().unwrap_or_default(),
        name: gateway.metadata.name.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn gateways(yaml: &str) -> Vec<Arc<Gateway>> {
        strait_model::load_str(yaml, Path::new("g.yaml"))
            .snapshot
            .gateways
    }

    const TWO: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: a, namespace: x}
spec: {gatewayClassName: strait, listeners: [{name: h, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: b, namespace: x}
spec:
  gatewayClassName: strait
  addresses: [{type: IPAddress, value: 127.9.9.9}]
  listeners: [{name: h, port: 80, protocol: HTTP}]
";

    #[test]
    fn per_gateway_addresses_are_distinct_stable_and_honour_spec() {
        let gws = gateways(TWO);
        let mut allocator = AddressAllocator::new(AddressMode::PerGateway);
        let first = allocator.assign(&gws);
        let a = &first[&ObjectRef {
            namespace: "x".into(),
            name: "a".into(),
        }];
        assert_eq!(a.len(), 1);
        assert!(a[0].is_loopback());
        assert_ne!(a[0], IpAddr::from([127, 0, 0, 1]));
        let b = &first[&ObjectRef {
            namespace: "x".into(),
            name: "b".into(),
        }];
        assert_eq!(b, &vec![IpAddr::from([127, 9, 9, 9])]);

        let mut fresh = AddressAllocator::new(AddressMode::PerGateway);
        assert_eq!(fresh.assign(&gws), first, "derived from names, so stable");
    }

    #[test]
    fn shared_mode_uses_one_address() {
        let shared = IpAddr::from([127, 0, 0, 1]);
        let mut allocator = AddressAllocator::new(AddressMode::Shared(shared));
        let result = allocator.assign(&gateways(TWO));
        assert_eq!(
            result[&ObjectRef {
                namespace: "x".into(),
                name: "a".into()
            }],
            vec![shared]
        );
    }
}

//! The set of resource types the server knows, mirroring what discovery would report.

/// One served resource type (one group/version/plural), like an entry of an `APIResourceList`.
///
/// Several versions of the same group and plural share one storage, exactly as a
/// CRD with several served versions (and conversion strategy `None`) does on a real server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceKind {
    /// API group; empty for the core group.
    pub group: String,
    /// API version within the group.
    pub version: String,
    /// Kind as it appears in objects (`HTTPRoute`).
    pub kind: String,
    /// Lower-case plural used in URLs (`httproutes`).
    pub plural: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether a `/status` subresource exists: then the main resource ignores `.status`
    /// writes, the subresource ignores everything else, and create drops `.status`.
    pub status_subresource: bool,
    /// Whether `metadata.generation` is maintained (custom resources, apps, pods).
    pub generation: bool,
    /// Built-in kinds omit `apiVersion`/`kind` on list items, custom resources keep them.
    pub builtin: bool,
    /// Field selector labels accepted beyond `metadata.name`/`metadata.namespace`.
    pub extra_field_labels: Vec<String>,
}

impl ResourceKind {
    /// A custom resource type (CRD-like: generation tracked, status subresource, items
    /// in lists carry `apiVersion`/`kind`).
    pub fn custom(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            namespaced,
            status_subresource: true,
            generation: true,
            builtin: false,
            extra_field_labels: Vec::new(),
        }
    }

    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        status_subresource: bool,
        generation: bool,
    ) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            namespaced,
            status_subresource,
            generation,
            builtin: true,
            extra_field_labels: Vec::new(),
        }
    }

    /// `v1` for the core group, `GROUP/VERSION` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource name used in error messages: `services`, `httproutes.gateway.networking.k8s.io`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub(crate) fn storage_key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }
}

/// The resource types served by a [`crate::TestApiServer`].
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: Vec<ResourceKind>,
}

const GW: &str = "gateway.networking.k8s.io";
const GWX: &str = "gateway.networking.x-k8s.io";

impl Registry {
    /// The kinds a Strait controller and its tests use: core, discovery, apps,
    /// coordination and every Gateway API kind of the `gateway-api` 0.22 crate
    /// (including older served versions such as `ReferenceGrant` v1beta1).
    pub fn standard() -> Self {
        let mut r = Self::default();
        let b = ResourceKind::builtin;
        r.register(b("", "v1", "Namespace", "namespaces", false, true, false));
        r.register(b("", "v1", "Service", "services", true, true, false));
        let mut pod = b("", "v1", "Pod", "pods", true, true, true);
        pod.extra_field_labels = [
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]
        .map(String::from)
        .to_vec();
        r.register(pod);
        let mut secret = b("", "v1", "Secret", "secrets", true, false, false);
        secret.extra_field_labels = vec!["type".to_string()];
        r.register(secret);
        r.register(b("", "v1", "ConfigMap", "configmaps", true, false, false));
        r.register(b(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            false,
            false,
        ));
        r.register(b("", "v1", "Endpoints", "endpoints", true, false, false));
        r.register(b("", "v1", "Node", "nodes", false, true, false));
        r.register(b(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            true,
            false,
            false,
        ));
        r.register(b(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            true,
            true,
        ));
        r.register(b("apps", "v1", "DaemonSet", "daemonsets", true, true, true));
        r.register(b(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            false,
            false,
        ));
        let c = ResourceKind::custom;
        r.register(c(GW, "v1", "GatewayClass", "gatewayclasses", false));
        r.register(c(GW, "v1", "Gateway", "gateways", true));
        r.register(c(GW, "v1", "HTTPRoute", "httproutes", true));
        r.register(c(GW, "v1", "GRPCRoute", "grpcroutes", true));
        r.register(c(GW, "v1", "BackendTLSPolicy", "backendtlspolicies", true));
        r.register(c(GW, "v1", "TLSRoute", "tlsroutes", true));
        r.register(c(GW, "v1alpha2", "TLSRoute", "tlsroutes", true));
        r.register(c(GW, "v1alpha2", "TCPRoute", "tcproutes", true));
        r.register(c(GW, "v1alpha2", "UDPRoute", "udproutes", true));
        r.register(c(GW, "v1", "ListenerSet", "listenersets", true));
        for version in ["v1", "v1beta1"] {
            let mut grant = c(GW, version, "ReferenceGrant", "referencegrants", true);
            grant.status_subresource = false;
            r.register(grant);
        }
        r.register(c(GWX, "v1alpha1", "ListenerSet", "listenersets", true));
        r.register(c(
            GWX,
            "v1alpha1",
            "XBackendTrafficPolicy",
            "xbackendtrafficpolicies",
            true,
        ));
        r.register(c(GWX, "v1alpha1", "XMesh", "xmeshes", false));
        r
    }

    /// Adds (or replaces) a served group/version/plural.
    pub fn register(&mut self, kind: ResourceKind) {
        self.kinds.retain(|k| {
            !(k.group == kind.group && k.version == kind.version && k.plural == kind.plural)
        });
        self.kinds.push(kind);
    }

    /// All served kinds.
    pub fn kinds(&self) -> &[ResourceKind] {
        &self.kinds
    }

    /// Looks a kind up by URL components.
    pub fn by_plural(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceKind> {
        self.kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
    }

    /// Looks a kind up by an object's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceKind> {
        let (group, version) = split_api_version(api_version);
        self.kinds
            .iter()
            .find(|k| k.group == group && k.version == version && k.kind == kind)
    }
}

/// Splits `group/version` (or the core `v1`) into its parts.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

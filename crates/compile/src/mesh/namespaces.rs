//! Which namespaces are in the mesh, and what their labels ask for.

use std::collections::BTreeMap;

use strait_config::mesh::{DEFAULT_WAYPOINT, MESH_LABEL, MTLS_LABEL, MtlsMode, WAYPOINT_LABEL};
use strait_model::Snapshot;

/// `strait.dev/mesh` value that enrolls a namespace.
const ENABLED: &str = "enabled";
/// `strait.dev/mtls` value that refuses plaintext inbound.
const STRICT: &str = "strict";
/// `strait.dev/waypoint` value that opts a namespace out of waypoints.
const NO_WAYPOINT: &str = "none";

/// Which waypoint the Services of a namespace go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WaypointChoice {
    /// `strait.dev/waypoint=none`: never.
    OptedOut,
    /// `strait.dev/waypoint=<name>`: every Service of the namespace.
    Named(String),
    /// No label: [`DEFAULT_WAYPOINT`], only for Services that routes target.
    Default,
}

/// An enrolled namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MeshNamespace {
    pub mtls: MtlsMode,
    pub waypoint: WaypointChoice,
}

impl MeshNamespace {
    /// Reads the mesh labels of a namespace; `None` when it is not enrolled.
    pub(crate) fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        if labels.get(MESH_LABEL).map(String::as_str) != Some(ENABLED) {
            return None;
        }
        let mtls = match labels.get(MTLS_LABEL).map(String::as_str) {
            Some(STRICT) => MtlsMode::Strict,
            _ => MtlsMode::Permissive,
        };
        let waypoint = match labels.get(WAYPOINT_LABEL).map(String::as_str) {
            Some(NO_WAYPOINT) => WaypointChoice::OptedOut,
            // An empty label value names nothing: same as no label.
            None | Some("") => WaypointChoice::Default,
            Some(name) => WaypointChoice::Named(name.to_string()),
        };
        Some(MeshNamespace { mtls, waypoint })
    }

    /// The name of the waypoint Gateway this namespace's Services would use.
    pub(crate) fn waypoint_name(&self) -> Option<&str> {
        match &self.waypoint {
            WaypointChoice::OptedOut => None,
            WaypointChoice::Named(name) => Some(name),
            WaypointChoice::Default => Some(DEFAULT_WAYPOINT),
        }
    }
}

/// The enrolled namespaces of a snapshot, by name.
pub(crate) struct MeshNamespaces(BTreeMap<String, MeshNamespace>);

impl MeshNamespaces {
    pub(crate) fn new(snapshot: &Snapshot) -> Self {
        MeshNamespaces(
            snapshot
                .namespaces
                .iter()
                .filter_map(|n| {
                    let name = n.metadata.name.clone()?;
                    let info = MeshNamespace::from_labels(n.metadata.labels.as_ref()?)?;
                    Some((name, info))
                })
                .collect(),
        )
    }

    /// The namespace when it is enrolled.
    pub(crate) fn enrolled(&self, namespace: &str) -> Option<&MeshNamespace> {
        self.0.get(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_table() {
        type Case = (
            &'static [(&'static str, &'static str)],
            Option<(MtlsMode, WaypointChoice)>,
        );
        let cases: &[Case] = &[
            (&[], None),
            (&[(MESH_LABEL, "disabled")], None),
            (&[(MTLS_LABEL, STRICT)], None),
            (
                &[(MESH_LABEL, ENABLED)],
                Some((MtlsMode::Permissive, WaypointChoice::Default)),
            ),
            (
                &[(MESH_LABEL, ENABLED), (MTLS_LABEL, STRICT)],
                Some((MtlsMode::Strict, WaypointChoice::Default)),
            ),
            (
                &[(MESH_LABEL, ENABLED), (MTLS_LABEL, "permissive")],
                Some((MtlsMode::Permissive, WaypointChoice::Default)),
            ),
            (
                &[(MESH_LABEL, ENABLED), (WAYPOINT_LABEL, "none")],
                Some((MtlsMode::Permissive, WaypointChoice::OptedOut)),
            ),
            (
                &[(MESH_LABEL, ENABLED), (WAYPOINT_LABEL, "")],
                Some((MtlsMode::Permissive, WaypointChoice::Default)),
            ),
            (
                &[(MESH_LABEL, ENABLED), (WAYPOINT_LABEL, "edge")],
                Some((MtlsMode::Permissive, WaypointChoice::Named("edge".into()))),
            ),
        ];
        for (pairs, want) in cases {
            let got = MeshNamespace::from_labels(&labels(pairs)).map(|n| (n.mtls, n.waypoint));
            assert_eq!(&got, want, "labels {pairs:?}");
        }
    }

    #[test]
    fn waypoint_names() {
        let ns = |waypoint| MeshNamespace {
            mtls: MtlsMode::Permissive,
            waypoint,
        };
        assert_eq!(
            ns(WaypointChoice::Default).waypoint_name(),
            Some("waypoint")
        );
        assert_eq!(
            ns(WaypointChoice::Named("edge".into())).waypoint_name(),
            Some("edge")
        );
        assert_eq!(ns(WaypointChoice::OptedOut).waypoint_name(), None);
    }
}

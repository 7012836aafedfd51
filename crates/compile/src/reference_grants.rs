//! ReferenceGrant checks for cross-namespace references.

use strait_model::Snapshot;

/// The referencing side of a cross-namespace reference.
pub(crate) struct From<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// The referenced side.
pub(crate) struct To<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Same-namespace references are always allowed; otherwise a ReferenceGrant in the target
/// namespace must list the source and the target (by name, or all names of the kind).
pub(crate) fn permitted(snapshot: &Snapshot, from: &From<'_>, to: &To<'_>) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    snapshot.reference_grants.iter().any(|grant| {
        grant.metadata.namespace.as_deref() == Some(to.namespace)
            && grant.spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            })
            && grant.spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name
                        .as_deref()
                        .is_none_or(|n| n.is_empty() || n == to.name)
            })
    })
}

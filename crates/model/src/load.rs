//! Multi-document YAML loading with `file:line` diagnostics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::snapshot::{ObjectKey, Snapshot, Source};

/// A document that could not be loaded. The rest of its file and directory still load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{source_loc}: cannot read: {error}")]
    Io {
        source_loc: Source,
        error: std::io::Error,
    },
    #[error("{source_loc}: malformed YAML: {message}")]
    Yaml { source_loc: Source, message: String },
    #[error("{source_loc}: document has no {field}")]
    MissingField {
        source_loc: Source,
        field: &'static str,
    },
    #[error("{source_loc}: {object}: unknown kind {api_version}/{}", .object.kind)]
    UnknownKind {
        source_loc: Source,
        object: ObjectKey,
        api_version: String,
    },
    #[error("{source_loc}: {object}: invalid object: {message}")]
    Invalid {
        source_loc: Source,
        object: ObjectKey,
        message: String,
    },
    #[error("{source_loc}: {object}: duplicate of the object at {first}")]
    Duplicate {
        source_loc: Source,
        object: ObjectKey,
        first: Source,
    },
}

/// The outcome of loading: every object that loaded, and an error per document that did not.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub snapshot: Snapshot,
    pub errors: Vec<LoadError>,
    /// Documents of well-known kinds Strait does not read (Deployments, RBAC, ...), by kind.
    pub ignored: Vec<(Source, ObjectKey)>,
}

/// Kinds that are legitimate Kubernetes objects but not inputs to Strait: skipped, not errors.
const IGNORED_KINDS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "BackendTrafficPolicy",
    "XBackendTrafficPolicy",
    "XListenerSet",
    "UDPRoute",
    "XMesh",
];

/// Loads every `*.yaml` / `*.yml` file under `dir` (recursively, sorted by path).
pub fn load_dir(dir: &Path) -> LoadReport {
    let (files, report) = yaml_files(dir);
    load_files(&files, report)
}

/// The manifest files under `dir` (recursively, sorted, hidden files skipped), and a report
/// holding the errors met while listing them.
pub fn yaml_files(dir: &Path) -> (Vec<PathBuf>, LoadReport) {
    let mut files = Vec::new();
    let mut report = LoadReport::default();
    collect_yaml_files(dir, &mut files, &mut report);
    files.sort();
    (files, report)
}

/// Loads the given files and directories.
pub fn load_paths(paths: &[PathBuf]) -> LoadReport {
    let mut files = Vec::new();
    let mut report = LoadReport::default();
    for path in paths {
        if path.is_dir() {
            collect_yaml_files(path, &mut files, &mut report);
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    load_files(&files, report)
}

fn load_files(files: &[PathBuf], mut report: LoadReport) -> LoadReport {
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => load_into(&text, file, &mut report),
            Err(error) => report.errors.push(LoadError::Io {
                source_loc: Source {
                    file: file.clone(),
                    line: 0,
                },
                error,
            }),
        }
    }
    report
}

fn collect_yaml_files(dir: &Path, files: &mut Vec<PathBuf>, report: &mut LoadReport) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            report.errors.push(LoadError::Io {
                source_loc: Source {
                    file: dir.to_path_buf(),
                    line: 0,
                },
                error,
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // Editors' swap and hidden files are not manifests.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_yaml_files(&path, files, report);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
}

/// Loads the documents of one YAML text (named `file` in diagnostics).
pub fn load_str(text: &str, file: &Path) -> LoadReport {
    let mut report = LoadReport::default();
    load_into(text, file, &mut report);
    report
}

fn load_into(text: &str, file: &Path, report: &mut LoadReport) {
    for (line, doc) in split_documents(text) {
        let source = Source {
            file: file.to_path_buf(),
            line,
        };
        if let Err(error) = load_document(doc, &source, report) {
            report.errors.push(error);
        }
    }
}

/// Splits a multi-document YAML text on `---` separator lines; yields each non-empty document
/// with the 1-based line number of its first line.
fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            docs.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs.retain(|(_, doc)| {
        doc.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#')
        })
    });
    docs
}

// Errors are collected per document into the report, not propagated: size is irrelevant.
#[allow(clippy::result_large_err)]
fn load_document(doc: &str, source: &Source, report: &mut LoadReport) -> Result<(), LoadError> {
    let value: Value = serde_saphyr::from_str(doc).map_err(|error| {
        let line = error
            .location()
            .map(|loc| source.line + loc.line() as usize - 1)
            .unwrap_or(source.line);
        LoadError::Yaml {
            source_loc: Source {
                file: source.file.clone(),
                line,
            },
            message: first_line(&error.to_string()),
        }
    })?;
    if value.is_null() {
        return Ok(());
    }
    if !value.is_object() {
        return Err(LoadError::Yaml {
            source_loc: source.clone(),
            message: "a document must be a mapping (a Kubernetes object)".into(),
        });
    }
    // `kind: List` (as `kubectl get -o yaml` prints) holds objects in `items`.
    if value.get("kind").and_then(Value::as_str) == Some("List") {
        if let Some(items) = value.get("items").and_then(Value::as_array) {
            for item in items {
                if let Err(error) = add_object(item.clone(), source, report) {
                    report.errors.push(error);
                }
            }
        }
        return Ok(());
    }
    add_object(value, source, report)
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).to_string()
}

// Errors are collected per document into the report, not propagated: size is irrelevant.
#[allow(clippy::result_large_err)]
fn add_object(mut value: Value, source: &Source, report: &mut LoadReport) -> Result<(), LoadError> {
    let missing = |field| LoadError::MissingField {
        source_loc: source.clone(),
        field,
    };
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("apiVersion"))?
        .to_string();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("kind"))?
        .to_string();
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| missing("metadata.name"))?
        .to_string();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let cluster_scoped = matches!(kind.as_str(), "GatewayClass" | "Namespace");
    let namespace = if cluster_scoped {
        String::new()
    } else {
        let ns = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        ns
    };
    let key = ObjectKey {
        kind: kind.clone(),
        namespace,
        name,
    };
    if let Some(first) = report.snapshot.sources.get(&key) {
        return Err(LoadError::Duplicate {
            source_loc: source.clone(),
            object: key,
            first: first.clone(),
        });
    }
    // A missing generation would make observedGeneration meaningless; the API server starts at 1.
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("generation").or_insert(Value::from(1));
    }

    let snapshot = &mut report.snapshot;
    let result = match (group, kind.as_str()) {
        ("gateway.networking.k8s.io", "GatewayClass") => push(&mut snapshot.gateway_classes, value),
        ("gateway.networking.k8s.io", "Gateway") => push(&mut snapshot.gateways, value),
        ("gateway.networking.k8s.io", "HTTPRoute") => push(&mut snapshot.http_routes, value),
        ("gateway.networking.k8s.io", "GRPCRoute") => push(&mut snapshot.grpc_routes, value),
        ("gateway.networking.k8s.io", "TCPRoute") => push(&mut snapshot.tcp_routes, value),
        ("gateway.networking.k8s.io", "TLSRoute") => push(&mut snapshot.tls_routes, value),
        ("gateway.networking.k8s.io", "ReferenceGrant") => {
            push(&mut snapshot.reference_grants, value)
        }
        ("gateway.networking.k8s.io", "ListenerSet") => push(&mut snapshot.listener_sets, value),
        ("gateway.networking.k8s.io", "BackendTLSPolicy") => {
            push(&mut snapshot.backend_tls_policies, value)
        }
        ("", "Service") => push(&mut snapshot.services, value),
        ("discovery.k8s.io", "EndpointSlice") => push(&mut snapshot.endpoint_slices, value),
        ("", "Namespace") => push(&mut snapshot.namespaces, value),
        ("", "Secret") => push(&mut snapshot.secrets, value),
        ("", "ConfigMap") => push(&mut snapshot.config_maps, value),
        ("", "Pod") => push(&mut snapshot.pods, value),
        (_, k) if IGNORED_KINDS.contains(&k) => {
            report.ignored.push((source.clone(), key));
            return Ok(());
        }
        _ => {
            return Err(LoadError::UnknownKind {
                source_loc: source.clone(),
                object: key,
                api_version,
            });
        }
    };
    match result {
        Ok(()) => {
            report.snapshot.sources.insert(key, source.clone());
            Ok(())
        }
        Err(message) => Err(LoadError::Invalid {
            source_loc: source.clone(),
            object: key,
            message,
        }),
    }
}

fn push<T: DeserializeOwned>(list: &mut Vec<Arc<T>>, value: Value) -> Result<(), String> {
    let object = serde_json::from_value(value).map_err(|e| e.to_string())?;
    list.push(Arc::new(object));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_line_numbers() {
        let text = "a: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs, vec![(1, "a: 1\n"), (5, "b: 2\nc: 3\n")]);
    }

    #[test]
    fn loads_good_documents_around_bad_ones() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata:
  name: cart
  namespace: shop
spec:
  ports: [{port: 80
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w, namespace: shop}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
";
        let report = load_str(text, Path::new("m.yaml"));
        assert_eq!(report.snapshot.namespaces.len(), 1);
        assert_eq!(report.snapshot.http_routes.len(), 1);
        assert_eq!(
            report.snapshot.http_routes[0].metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(report.errors.len(), 2, "{:#?}", report.errors);
        let yaml = report.errors[0].to_string();
        assert!(yaml.starts_with("m.yaml:"), "{yaml}");
        assert!(yaml.contains("malformed YAML"), "{yaml}");
        let unknown = report.errors[1].to_string();
        assert_eq!(
            unknown,
            "m.yaml:13: Widget shop/w: unknown kind example.com/v1/Widget"
        );
    }

    #[test]
    fn invalid_object_names_kind_and_name() {
        let text = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: strait
  listeners: 7
";
        let report = load_str(text, Path::new("gw.yaml"));
        assert!(report.snapshot.gateways.is_empty());
        let message = report.errors[0].to_string();
        assert!(
            message.starts_with("gw.yaml:1: Gateway infra/gw: invalid object"),
            "{message}"
        );
    }

    #[test]
    fn duplicates_are_reported_and_first_wins() {
        let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
";
        let report = load_str(text, Path::new("d.yaml"));
        assert_eq!(report.snapshot.namespaces.len(), 1);
        assert_eq!(
            report.errors[0].to_string(),
            "d.yaml:5: Namespace a: duplicate of the object at d.yaml:1"
        );
    }
}

#[cfg(test)]
mod corpus_tests {
    use super::*;

    /// Every manifest of the conformance corpus is real-world YAML: it must load without errors.
    #[test]
    fn conformance_manifests_load_without_errors() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance");
        if !corpus.is_dir() {
            eprintln!("skipped: no conformance corpus at {}", corpus.display());
            return;
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&corpus).unwrap().flatten() {
            let path = entry.path();
            for candidate in [
                path.join("manifests.yaml"),
                path.join("gateway/manifests.yaml"),
                path.join("mesh/manifests.yaml"),
            ] {
                if candidate.is_file() {
                    files.push(candidate);
                }
            }
        }
        assert!(
            files.len() > 100,
            "found only {} manifest files",
            files.len()
        );
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let report = load_str(&text, &file);
            assert!(
                report.errors.is_empty(),
                "{}: {:#?}",
                file.display(),
                report.errors
            );
        }
    }
}

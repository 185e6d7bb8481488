//! Fills a [`Snapshot`] from YAML manifests instead of a live API server, for the
//! offline verbs and the lab's seed. Objects are defaulted the way the API server
//! would (namespace `default`, the `kubernetes.io/metadata.name` label, implied
//! Namespaces), so the compilers see what they would see in a cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Kind, Snapshot, strict};

/// The label the API server puts on every Namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: document {index}{object}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        index: usize,
        object: String,
        field: String,
        message: String,
    },
}

/// One parsed object with where it came from, as the API server seed needs it.
#[derive(Clone, Debug)]
pub struct ManifestObject {
    pub kind: Kind,
    pub value: Value,
}

/// Reads every `*.yaml`/`*.yml` file under `path` (or `path` itself) into a snapshot.
pub fn load_snapshot(path: &Path) -> Result<Snapshot, ManifestError> {
    snapshot_from_objects(&load_objects(path)?)
}

/// Reads every object of a watched kind, defaulted, in file order; other kinds are
/// skipped with a warning (a real manifests directory has Deployments and such).
pub fn load_objects(path: &Path) -> Result<Vec<ManifestObject>, ManifestError> {
    let mut objects = Vec::new();
    for file in yaml_files(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
            path: file.clone(),
            source,
        })?;
        objects.extend(parse_documents(&file, &text)?);
    }
    add_implied_namespaces(&mut objects);
    Ok(objects)
}

/// Parses one multi-document YAML text; `file` only names it in errors.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<ManifestObject>, ManifestError> {
    let documents: Vec<Value> = serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|err| ManifestError::Yaml {
            path: file.to_path_buf(),
            message: err.to_string(),
        })?;
    // The text as written, read again only to quote a value in an error message.
    let as_written = std::cell::OnceCell::new();
    let mut objects = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        let is_list = document.get("kind").and_then(Value::as_str) == Some("List");
        for (item, value) in flatten_lists(document).into_iter().enumerate() {
            let written = |field: &str| -> Option<String> {
                let documents: &Vec<Value> = as_written.get_or_init(|| {
                    let mut options = yaml_options();
                    options.strict_booleans = true;
                    serde_saphyr::from_multiple_with_options(text, options).unwrap_or_default()
                });
                let mut object = documents.get(index)?;
                if is_list {
                    object = object.get("items")?.get(item)?;
                }
                strict::at_path(object, field)?.as_str().map(str::to_string)
            };
            if let Some(object) = parse_object(file, index + 1, value, &written)? {
                objects.push(object);
            }
        }
    }
    Ok(objects)
}

/// Manifests are the operator's own files, often thousands of objects in one file:
/// lift serde-saphyr's limits for untrusted input (1,024 documents, 250,000 nodes).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 10_000_000,
            max_nodes: 500_000_000,
            max_events: 2_000_000_000,
        },
    }
}

fn flatten_lists(document: Value) -> Vec<Value> {
    match document {
        Value::Null => Vec::new(),
        Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
            match map.remove("items") {
                Some(Value::Array(items)) => items,
                _ => Vec::new(),
            }
        }
        other => vec![other],
    }
}

/// Reads one object; `written` gives a field's value as written (for the boolean
/// hint: YAML 1.1 reads a bare `y` as `true`).
fn parse_object(
    file: &Path,
    index: usize,
    mut value: Value,
    written: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ManifestObject>, ManifestError> {
    let field_error = |object: String, field: &str, message: String| {
        let message = match strict::is_boolean_for_string(&message) {
            true => strict::boolean_hint(field, written(field).as_deref()),
            false => message,
        };
        ManifestError::Field {
            path: file.to_path_buf(),
            index,
            object,
            field: field.to_string(),
            message,
        }
    };
    let Some(kind_name) = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(field_error(String::new(), "kind", "missing".into()));
    };
    let Some(kind) = Kind::from_name(&kind_name) else {
        tracing::warn!(file = %file.display(), document = index, kind = %kind_name, "skipping a kind kubewire does not read");
        return Ok(None);
    };
    apply_defaults(kind, &mut value);
    let label = object_label(kind, &value);
    match value.pointer("/metadata/name") {
        Some(Value::String(_)) => {}
        None | Some(Value::Null) => {
            return Err(field_error(label, "metadata.name", "missing".into()));
        }
        Some(Value::Bool(_)) => {
            let message = "invalid type: boolean, expected a string".to_string();
            return Err(field_error(label, "metadata.name", message));
        }
        Some(other) => {
            let message = format!("{other} is not a string: quote it");
            return Err(field_error(label, "metadata.name", message));
        }
    }
    // Deserialize once into the typed object so a bad field is reported here, with
    // its path, rather than when a compiler reads it.
    let check = match kind {
        Kind::Node => check_typed::<k8s_openapi::api::core::v1::Node>(&value),
        Kind::Namespace => check_typed::<Namespace>(&value),
        Kind::Pod => check_typed::<k8s_openapi::api::core::v1::Pod>(&value),
        Kind::Service => check_typed::<k8s_openapi::api::core::v1::Service>(&value),
        Kind::EndpointSlice => {
            check_typed::<k8s_openapi::api::discovery::v1::EndpointSlice>(&value)
        }
        Kind::NetworkPolicy => {
            check_typed::<k8s_openapi::api::networking::v1::NetworkPolicy>(&value)
        }
        Kind::ServiceCIDR => check_typed::<k8s_openapi::api::networking::v1::ServiceCIDR>(&value),
    };
    check.map_err(|(field, message)| field_error(label, &field, message))?;
    Ok(Some(ManifestObject { kind, value }))
}

/// Strictly, as `kubectl apply` validates: a wrong type or an unknown field is an error.
fn check_typed<K: DeserializeOwned + serde::Serialize>(
    value: &Value,
) -> Result<(), (String, String)> {
    strict::typed_strict::<K>(value).map(drop)
}

/// Deserializes `value` as `K`, naming the offending field on error.
pub fn typed<K: DeserializeOwned>(value: &Value) -> Result<K, (String, String)> {
    serde_path_to_error::deserialize::<_, K>(value).map_err(|err| {
        let field = err.path().to_string();
        (field, err.into_inner().to_string())
    })
}

fn object_label(kind: Kind, value: &Value) -> String {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    match value.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) if kind.namespaced() => format!(" ({kind} {ns}/{name})"),
        _ => format!(" ({kind} {name})"),
    }
}

/// The defaults the API server applies that compilers rely on.
pub fn apply_defaults(kind: Kind, value: &mut Value) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    object
        .entry("apiVersion")
        .or_insert_with(|| Value::String(kind.api_version().to_string()));
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(metadata) = metadata.as_object_mut() else {
        return;
    };
    if kind.namespaced() {
        metadata
            .entry("namespace")
            .or_insert_with(|| Value::String("default".into()));
    } else {
        metadata.remove("namespace");
    }
    if kind == Kind::Namespace
        && let Some(name) = metadata
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
    {
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(NAMESPACE_NAME_LABEL.into(), Value::String(name));
        }
    }
}

/// A namespaced object implies its Namespace exists; add the ones not declared.
fn add_implied_namespaces(objects: &mut Vec<ManifestObject>) {
    let declared: BTreeSet<String> = objects
        .iter()
        .filter(|o| o.kind == Kind::Namespace)
        .filter_map(|o| {
            o.value
                .pointer("/metadata/name")?
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let implied: BTreeSet<String> = objects
        .iter()
        .filter(|o| o.kind.namespaced())
        .filter_map(|o| {
            o.value
                .pointer("/metadata/namespace")?
                .as_str()
                .map(str::to_string)
        })
        .filter(|ns| !declared.contains(ns))
        .collect();
    for name in implied {
        let mut value = serde_json::json!({"kind": "Namespace", "metadata": {"name": name}});
        apply_defaults(Kind::Namespace, &mut value);
        objects.insert(
            0,
            ManifestObject {
                kind: Kind::Namespace,
                value,
            },
        );
    }
}

/// Builds a snapshot from parsed objects (already checked, so conversion cannot fail
/// except on a duplicate, which the last one wins like `kubectl apply`).
pub fn snapshot_from_objects(objects: &[ManifestObject]) -> Result<Snapshot, ManifestError> {
    let mut snapshot = Snapshot::default();
    for object in objects {
        let value = &object.value;
        let convert_error = |(field, message): (String, String)| ManifestError::Field {
            path: PathBuf::from("<manifests>"),
            index: 0,
            object: object_label(object.kind, value),
            field,
            message,
        };
        match object.kind {
            Kind::Node => snapshot
                .nodes
                .push(Arc::new(typed(value).map_err(convert_error)?)),
            Kind::Namespace => snapshot
                .namespaces
                .push(Arc::new(typed(value).map_err(convert_error)?)),
            Kind::Pod => snapshot
                .pods
                .push(Arc::new(typed(value).map_err(convert_error)?)),
            Kind::Service => snapshot
                .services
                .push(Arc::new(typed(value).map_err(convert_error)?)),
            Kind::EndpointSlice => snapshot
                .endpoint_slices
                .push(Arc::new(typed(value).map_err(convert_error)?)),
            Kind::NetworkPolicy => snapshot
                .network_policies
                .push(Arc::new(typed(value).map_err(convert_error)?)),
            Kind::ServiceCIDR => snapshot
                .service_cidrs
                .push(Arc::new(typed(value).map_err(convert_error)?)),
        }
    }
    dedup_last_wins(&mut snapshot);
    Ok(snapshot.sorted())
}

fn dedup_last_wins(snapshot: &mut Snapshot) {
    fn dedup<K: kube::Resource>(objects: &mut Vec<Arc<K>>) {
        let mut seen = BTreeSet::new();
        let mut kept: Vec<Arc<K>> = Vec::with_capacity(objects.len());
        for object in objects.drain(..).rev() {
            if seen.insert((object.namespace(), object.name_any())) {
                kept.push(object);
            }
        }
        kept.reverse();
        *objects = kept;
    }
    dedup(&mut snapshot.nodes);
    dedup(&mut snapshot.namespaces);
    dedup(&mut snapshot.pods);
    dedup(&mut snapshot.services);
    dedup(&mut snapshot.endpoint_slices);
    dedup(&mut snapshot.network_policies);
    dedup(&mut snapshot.service_cidrs);
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if metadata.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| ManifestError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ManifestError::Read {
                path: dir.clone(),
                source,
            })?;
            let entry_path = entry.path();
            if entry_path.is_dir() {
                dirs.push(entry_path);
            } else if matches!(
                entry_path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(entry_path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<ManifestObject>, ManifestError> {
        parse_documents(Path::new("t.yaml"), text)
    }

    #[test]
    fn multi_document_with_defaults_and_implied_namespace() {
        let mut objects = parse(
            "kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n---\n\
             kind: Namespace\nmetadata: {name: x}\n---\nkind: ConfigMap\nmetadata: {name: ignored}\n",
        )
        .unwrap();
        add_implied_namespaces(&mut objects);
        let snapshot = snapshot_from_objects(&objects).unwrap();
        assert_eq!(snapshot.pods[0].namespace().as_deref(), Some("default"));
        let names: Vec<_> = snapshot.namespaces.iter().map(|n| n.name_any()).collect();
        assert_eq!(names, ["default", "x"]);
        assert_eq!(
            snapshot.namespaces[1]
                .labels()
                .get(NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("x")
        );
    }

    #[test]
    fn bad_field_names_file_document_object_and_field() {
        let err = parse(
            "kind: Namespace\nmetadata: {name: x}\n---\nkind: Pod\nmetadata: {name: a, namespace: x}\n\
             spec: {containers: [{name: c, ports: [{containerPort: eighty}]}]}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "t.yaml: document 2 (Pod x/a): field `spec.containers[0].ports[0].containerPort`"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_kind_and_invalid_yaml_are_errors() {
        assert!(
            parse("metadata: {name: a}\n")
                .unwrap_err()
                .to_string()
                .contains("`kind`: missing")
        );
        assert!(matches!(parse("a: [1,\n"), Err(ManifestError::Yaml { .. })));
    }

    #[test]
    fn unknown_fields_are_rejected_naming_the_field() {
        let err = parse(
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
             spec: {podSelector: {}, ingress: [{from: [{podSelecter: {}}]}]}\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "t.yaml: document 1 (NetworkPolicy x/p): field `spec.ingress[0].from[0].podSelecter`: unknown field (kubectl's strict validation rejects it; check the spelling)"
        );
        let err = parse("kind: Node\nmetadata: {name: n1, lables: {a: b}}\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("field `metadata.lables`: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn a_yaml_11_boolean_where_a_string_belongs_says_quote_it() {
        let err = parse("kind: Namespace\nmetadata: {name: y}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("field `metadata.name`: `y` is read as a boolean (YAML 1.1, as kubectl reads it), not a string: quote it, `name: \"y\"`"),
            "{err}"
        );
        let err = parse(
            "kind: Node\nmetadata: {name: n1}\n---\nkind: List\nitems:\n- kind: Pod\n  metadata: {name: a, namespace: x}\n  spec: {containers: [{name: on}]}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "document 2 (Pod x/a): field `spec.containers[0].name`: `on` is read as a boolean"
            ),
            "{err}"
        );
        assert!(parse("kind: Namespace\nmetadata: {name: \"y\"}\n").is_ok());
    }

    #[test]
    fn thousands_of_documents_in_one_file() {
        let text: String = (0..5000)
            .map(|i| format!("kind: Node\nmetadata: {{name: n{i}, labels: {{a: b}}}}\n---\n"))
            .collect();
        assert_eq!(parse(&text).unwrap().len(), 5000);
    }

    #[test]
    fn list_kind_is_flattened() {
        let objects = parse("kind: List\nitems:\n- kind: Node\n  metadata: {name: n1}\n").unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].kind, Kind::Node);
    }
}

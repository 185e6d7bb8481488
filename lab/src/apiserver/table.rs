//! The `meta.k8s.io` Table form of lists and objects, for `kubectl get`: a name column,
//! a few kind-specific columns, and the age; each row carries the object's metadata
//! (or the object, per `includeObject`) so kubectl can add the NAMESPACE column.

use std::sync::Arc;

use serde_json::{Value, json};

use kubewire::cache::Kind;

/// Whether the Accept header asks for a Table, and which apiVersion of it.
pub fn requested_version(accept: &str) -> Option<&'static str> {
    let tables = accept
        .split(',')
        .filter(|media| media.split(';').any(|p| p.trim() == "as=Table"));
    let mut version = None;
    for media in tables {
        if media.split(';').any(|p| p.trim() == "v=v1") {
            return Some("meta.k8s.io/v1");
        }
        version = Some("meta.k8s.io/v1beta1");
    }
    version
}

fn columns(kind: Kind) -> &'static [(&'static str, &'static str)] {
    match kind {
        Kind::Pod => &[
            ("Status", "/status/phase"),
            ("IP", "/status/podIP"),
            ("Node", "/spec/nodeName"),
        ],
        Kind::Service => &[("Type", "/spec/type"), ("Cluster-IP", "/spec/clusterIP")],
        Kind::Namespace => &[("Status", "/status/phase")],
        Kind::EndpointSlice => &[("AddressType", "/addressType")],
        Kind::Node | Kind::NetworkPolicy | Kind::ServiceCIDR => &[],
    }
}

fn cell(object: &Value, pointer: &str) -> Value {
    match object.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => json!(s),
        _ if pointer == "/spec/type" => json!("ClusterIP"),
        _ => json!("<none>"),
    }
}

/// kubectl's short durations: `45s`, `3m20s`, `90m`, `5h12m`, `30h`, `3d4h`, `200d`, `3y`.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 && s % 60 == 0 => format!("{m}m"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 && m % 60 == 0 => format!("{h}h"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 192 && h % 24 == 0 => format!("{d}d"),
        _ if h < 192 => format!("{d}d{}h", h % 24),
        _ if d < 730 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

fn age(object: &Value, now: i64) -> Value {
    let created = object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
    match created {
        Some(created) => json!(human_duration(now - created.as_second())),
        None => json!("<unknown>"),
    }
}

/// A Table of `objects`. `list_metadata` is the list's (resourceVersion, continue).
pub fn table(
    api_version: &str,
    kind: Kind,
    objects: &[Arc<Value>],
    list_metadata: Value,
    include_object: Option<&str>,
) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let mut definitions = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    for (name, _) in columns(kind) {
        definitions.push(json!({"name": name, "type": "string", "format": "", "description": name, "priority": 0}));
    }
    definitions.push(json!({"name": "Age", "type": "string", "format": "",
        "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}));
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut cells = vec![
                object
                    .pointer("/metadata/name")
                    .cloned()
                    .unwrap_or(Value::Null),
            ];
            cells.extend(
                columns(kind)
                    .iter()
                    .map(|(_, pointer)| cell(object, pointer)),
            );
            cells.push(age(object, now));
            let mut row = json!({"cells": cells});
            match include_object {
                Some("None") => {}
                Some("Object") => row["object"] = Value::clone(object),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": object.get("metadata").cloned().unwrap_or(Value::Null),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": list_metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(requested_version(kubectl), Some("meta.k8s.io/v1"));
        assert_eq!(
            requested_version("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
            Some("meta.k8s.io/v1beta1")
        );
        assert_eq!(requested_version("application/json"), None);
    }

    #[test]
    fn durations_read_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (300, "5m"),
            (3000, "50m"),
            (4 * 3600 + 120, "4h2m"),
            (30 * 3600, "30h"),
            (76 * 3600, "3d4h"),
            (200 * 86400, "200d"),
            (800 * 86400, "2y"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want);
        }
    }

    #[test]
    fn rows_carry_cells_and_metadata() {
        let pod = Arc::new(json!({"metadata": {"name": "web", "namespace": "a",
            "creationTimestamp": "2020-01-01T00:00:00Z"}, "status": {"phase": "Running"}}));
        let table = table(
            "meta.k8s.io/v1",
            Kind::Pod,
            &[pod],
            json!({"resourceVersion": "7"}),
            None,
        );
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "Running");
        assert_eq!(cells[2], "<none>");
        assert!(cells[4].as_str().unwrap().ends_with('y'));
        assert_eq!(table["rows"][0]["object"]["metadata"]["namespace"], "a");
        assert_eq!(table["columnDefinitions"].as_array().unwrap().len(), 5);
    }
}

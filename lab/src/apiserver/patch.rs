//! The PATCH body formats: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and
//! strategic merge patch as kubectl sends it — a merge patch whose lists of objects
//! with a known merge key (containers by `name`, container ports by `containerPort`,
//! service ports by `port`, conditions and addresses by `type`, ...) merge element by
//! element, honouring the `$patch`, `$retainKeys`, `$deleteFromPrimitiveList` and
//! `$setElementOrder` directives. Lists without a merge key are replaced.

use serde_json::{Map, Value};

/// Which PATCH format a `Content-Type` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    /// Server-side apply; served as a merge of the applied configuration.
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The merge key of a list field, by field name and (for `ports`) where it sits.
fn merge_key(path: &[String], field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" | "podIPs" | "hostIPs" => Some("ip"),
        "conditions" | "addresses" => Some("type"),
        "ownerReferences" => Some("uid"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" if path.iter().any(|p| p.ends_with("ontainers")) => Some("containerPort"),
        "ports" if path.last().map(String::as_str) == Some("spec") => Some("port"),
        _ => None,
    }
}

/// Applies a strategic merge patch as described in the module doc.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    strategic_merge(target, patch, &mut Vec::new())
}

fn strategic_merge(
    target: &mut Value,
    patch: &Value,
    path: &mut Vec<String>,
) -> Result<(), String> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return Ok(());
    };
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), value)
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        path.push(key.clone());
        let merged = match (
            target.get_mut(key),
            value,
            merge_key(&path[..path.len() - 1], key),
        ) {
            (Some(Value::Array(list)), Value::Array(items), Some(merge_key)) => {
                merge_list(list, items, merge_key, path)
            }
            (Some(existing @ Value::Object(_)), Value::Object(_), _) => {
                strategic_merge(existing, value, path)
            }
            _ => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, value, path).map(|()| {
                    target.insert(key.clone(), fresh);
                })
            }
        };
        path.pop();
        merged?;
        if target.get(key).is_some_and(Value::is_null) {
            target.remove(key);
        }
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        target.retain(|key, _| retain.iter().any(|r| r.as_str() == Some(key)));
    }
    Ok(())
}

fn merge_list(
    list: &mut Vec<Value>,
    items: &[Value],
    merge_key: &str,
    path: &mut Vec<String>,
) -> Result<(), String> {
    if items
        .iter()
        .any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *list = items
            .iter()
            .filter(|item| item.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(());
    }
    for item in items {
        let key = item.get(merge_key);
        let position = key.and_then(|key| list.iter().position(|e| e.get(merge_key) == Some(key)));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut list[i], item, path)?,
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, item, path)?;
                list.push(fresh);
            }
        }
    }
    Ok(())
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Array(operations) = patch else {
        return Err("a JSON patch must be an array of operations".into());
    };
    for (i, operation) in operations.iter().enumerate() {
        apply_operation(target, operation).map_err(|why| format!("operation {i}: {why}"))?;
    }
    Ok(())
}

fn apply_operation(target: &mut Value, operation: &Value) -> Result<(), String> {
    let field = |name: &str| {
        operation
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing {name:?}"))
    };
    let value = || {
        operation
            .get("value")
            .cloned()
            .ok_or_else(|| "missing \"value\"".to_string())
    };
    let path = field("path")?;
    match field("op")? {
        "add" => add(target, path, value()?),
        "remove" => remove(target, path).map(drop),
        "replace" => {
            let slot = target
                .pointer_mut(path)
                .ok_or_else(|| format!("path {path:?} does not exist"))?;
            *slot = value()?;
            Ok(())
        }
        "move" => {
            let moved = remove(target, field("from")?)?;
            add(target, path, moved)
        }
        "copy" => {
            let from = field("from")?;
            let copied = target
                .pointer(from)
                .cloned()
                .ok_or_else(|| format!("path {from:?} does not exist"))?;
            add(target, path, copied)
        }
        "test" => {
            if target.pointer(path) == Some(&value()?) {
                Ok(())
            } else {
                Err(format!("test of {path:?} failed"))
            }
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid path {path:?}"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(list)) => {
            let index = if last == "-" {
                list.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= list.len())
                    .ok_or_else(|| format!("invalid index in {path:?}"))?
            };
            list.insert(index, value);
            Ok(())
        }
        _ => Err(format!("parent of {path:?} does not exist")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let removed = match target.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&last),
        Some(Value::Array(list)) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < list.len())
            .map(|i| list.remove(i)),
        _ => None,
    };
    removed.ok_or_else(|| format!("path {path:?} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn strategic_merge_patch_merges_keyed_lists() {
        let mut pod = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [
                {"name": "c1", "image": "x", "ports": [{"containerPort": 80, "name": "http"}]},
                {"name": "c2", "image": "y"}],
             "tolerations": [{"key": "t"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let patch = json!({
            "metadata": {"labels": {"b": null, "c": "3"}},
            "spec": {
                "$setElementOrder/containers": [{"name": "c1"}, {"name": "c2"}],
                "containers": [
                    {"name": "c1", "image": "x2", "ports": [{"containerPort": 81}]},
                    {"name": "c2", "$patch": "delete"}],
                "tolerations": [{"key": "u"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        strategic_merge_patch(&mut pod, &patch).unwrap();
        assert_eq!(
            pod,
            json!({"metadata": {"labels": {"a": "1", "c": "3"}},
                "spec": {"containers": [{"name": "c1", "image": "x2", "ports": [
                    {"containerPort": 80, "name": "http"}, {"containerPort": 81}]}],
                 "tolerations": [{"key": "u"}]},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        );
    }

    #[test]
    fn strategic_merge_patch_service_ports_and_directives() {
        let mut service = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "a"}],
            "selector": {"app": "x"}, "finalizers": ["f1", "f2"]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}],
            "selector": {"$patch": "replace", "app": "y"},
            "$deleteFromPrimitiveList/finalizers": ["f1"]}});
        strategic_merge_patch(&mut service, &patch).unwrap();
        assert_eq!(
            service,
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "a", "targetPort": 8080}],
                "selector": {"app": "y"}, "finalizers": ["f2"]}})
        );
        let mut spec = json!({"type": "NodePort", "externalName": "x", "ports": []});
        strategic_merge_patch(
            &mut spec,
            &json!({"$retainKeys": ["type", "ports"], "type": "ClusterIP"}),
        )
        .unwrap();
        assert_eq!(spec, json!({"type": "ClusterIP", "ports": []}));
    }

    #[test]
    fn json_patch_operations() {
        let mut target = json!({"metadata": {"labels": {"a/b": "1"}}, "l": [1, 3]});
        json_patch(
            &mut target,
            &json!([
                {"op": "test", "path": "/l/0", "value": 1},
                {"op": "add", "path": "/l/1", "value": 2},
                {"op": "add", "path": "/l/-", "value": 4},
                {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
                {"op": "copy", "from": "/l", "path": "/m"},
                {"op": "move", "from": "/m", "path": "/n"},
                {"op": "remove", "path": "/l/0"}
            ]),
        )
        .unwrap();
        assert_eq!(
            target,
            json!({"metadata": {"labels": {"a/b": "2"}}, "l": [2, 3, 4], "n": [1, 2, 3, 4]})
        );
        let err = json_patch(&mut target, &json!([{"op": "remove", "path": "/x"}])).unwrap_err();
        assert_eq!(err, "operation 0: path \"/x\" does not exist");
        assert!(
            json_patch(
                &mut target,
                &json!([{"op": "test", "path": "/n/0", "value": 9}])
            )
            .is_err()
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }
}

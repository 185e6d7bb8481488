//! kubectl's strict validation for `--manifests`: an object is read as its typed API
//! form, and any field that form does not have is an error naming the field (a typo
//! like `podSelecter` would otherwise be dropped in silence, and a policy would mean
//! something else than its author wrote). Also the hint for YAML 1.1's booleans: a
//! bare `y`, `yes`, `on`, `no`... where a string belongs reads as a boolean (as
//! kubectl reads it too), and the fix is to quote it.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `value` as `K`, or the first offending field: (path, message).
pub fn typed_strict<K: DeserializeOwned + Serialize>(value: &Value) -> Result<K, (String, String)> {
    let typed: K = serde_path_to_error::deserialize::<_, K>(value).map_err(|err| {
        let field = err.path().to_string();
        (field, err.into_inner().to_string())
    })?;
    let known = serde_json::to_value(&typed).map_err(|err| (String::new(), err.to_string()))?;
    match first_unknown(value, &known, "") {
        Some(field) => Err((
            field,
            "unknown field (kubectl's strict validation rejects it; check the spelling)".into(),
        )),
        None => Ok(typed),
    }
}

/// The first key of `original` that its typed form does not keep, as a field path.
/// A `null` value is an absent field, not an unknown one.
fn first_unknown(original: &Value, known: &Value, path: &str) -> Option<String> {
    match (original, known) {
        (Value::Object(original), Value::Object(known)) => {
            original.iter().find_map(|(key, value)| {
                let here = match path {
                    "" => key.clone(),
                    _ => format!("{path}.{key}"),
                };
                match (value, known.get(key)) {
                    (Value::Null, _) => None,
                    (_, None) => Some(here),
                    (_, Some(back)) => first_unknown(value, back, &here),
                }
            })
        }
        (Value::Array(original), Value::Array(known)) => original
            .iter()
            .zip(known)
            .enumerate()
            .find_map(|(index, (value, back))| {
                first_unknown(value, back, &format!("{path}[{index}]"))
            }),
        _ => None,
    }
}

/// Whether `message` (a deserialization error) is a boolean read where a string belongs.
pub fn is_boolean_for_string(message: &str) -> bool {
    message.contains("invalid type: boolean") && message.contains("expected a string")
}

/// The message for a boolean where a string belongs, given the value as written
/// (`written`, read again without YAML 1.1 booleans) when it could be found.
pub fn boolean_hint(field: &str, written: Option<&str>) -> String {
    let key = field.rsplit('.').next().unwrap_or(field);
    match written {
        Some(text) => format!(
            "`{text}` is read as a boolean (YAML 1.1, as kubectl reads it), not a string: quote it, `{key}: \"{text}\"`"
        ),
        None => format!(
            "a boolean where a string belongs (YAML 1.1 reads a bare y, yes, on, n, no, off as one): quote the value of `{key}`"
        ),
    }
}

/// The value at a field path like `spec.containers[0].name`.
pub fn at_path<'a>(value: &'a Value, field: &str) -> Option<&'a Value> {
    let mut here = value;
    for part in field.split('.') {
        let (key, indexes) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            here = here.get(key)?;
        }
        for index in indexes.split('[').filter(|i| !i.is_empty()) {
            here = here.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(here)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x", "creationTimestamp": null},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelecter": {}}]}]},
        });
        let (field, message) = typed_strict::<NetworkPolicy>(&policy).unwrap_err();
        assert_eq!(field, "spec.ingress[0].from[0].podSelecter");
        assert!(message.contains("unknown field"), "{message}");
        let fixed = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x", "labels": {}, "creationTimestamp": null},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}], "ports": []}]},
        });
        assert!(typed_strict::<NetworkPolicy>(&fixed).is_ok());
    }

    #[test]
    fn paths_and_hints() {
        let value = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(
            at_path(&value, "spec.containers[1].name"),
            Some(&json!("b"))
        );
        assert_eq!(at_path(&value, "spec.containers[2].name"), None);
        assert_eq!(
            boolean_hint("metadata.name", Some("y")),
            "`y` is read as a boolean (YAML 1.1, as kubectl reads it), not a string: quote it, `name: \"y\"`"
        );
        assert!(is_boolean_for_string(
            "invalid type: boolean `true`, expected a string"
        ));
    }
}

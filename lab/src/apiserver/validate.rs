//! Checks an object before it is stored: its schema (by deserializing it into the
//! k8s-openapi type, so a bad field is named with its path), its name, and which of its
//! fields the schema does not declare (reported per the request's `fieldValidation`).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::status::Cause;
use kubewire::cache::Kind;
use kubewire::cache::manifests::typed;

/// What the schema check found: the fields it does not know (which `fieldValidation`
/// decides the fate of).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    pub unknown_fields: Vec<String>,
}

/// The few semantic rules checked on top of the schema (k8s-openapi defaults a missing
/// required field instead of failing): a Pod has named containers, ports are in
/// 1..=65535, an EndpointSlice has an addressType.
pub fn check_required(kind: Kind, value: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut require = |ok: bool, field: String, message: &str| {
        if !ok {
            causes.push(Cause {
                field,
                message: message.to_string(),
            });
        }
    };
    let port_ok = |port: Option<&Value>| {
        port.and_then(Value::as_i64)
            .is_some_and(|p| (1..=65535).contains(&p))
    };
    let items = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match kind {
        Kind::Pod => {
            let containers = items("/spec/containers");
            require(
                !containers.is_empty(),
                "spec.containers".into(),
                "Required value",
            );
            for (i, container) in containers.iter().enumerate() {
                let named = container
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty());
                require(
                    named,
                    format!("spec.containers[{i}].name"),
                    "Required value",
                );
                let ports = container
                    .get("ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (j, port) in ports.iter().enumerate() {
                    require(
                        port_ok(port.get("containerPort")),
                        format!("spec.containers[{i}].ports[{j}].containerPort"),
                        "Invalid value: must be between 1 and 65535, inclusive",
                    );
                }
            }
        }
        Kind::Service => {
            for (i, port) in items("/spec/ports").iter().enumerate() {
                require(
                    port_ok(port.get("port")),
                    format!("spec.ports[{i}].port"),
                    "Invalid value: must be between 1 and 65535, inclusive",
                );
            }
        }
        Kind::EndpointSlice => {
            let address_type = value.get("addressType").and_then(Value::as_str);
            require(
                matches!(address_type, Some("IPv4" | "IPv6" | "FQDN")),
                "addressType".into(),
                "Unsupported value: supported values: \"IPv4\", \"IPv6\", \"FQDN\"",
            );
        }
        Kind::Node | Kind::Namespace | Kind::NetworkPolicy | Kind::ServiceCIDR => {}
    }
    causes
}

/// Validates `value` as a `kind`; `Err` names every failed field.
pub fn check(kind: Kind, value: &Value) -> Result<Checked, Vec<Cause>> {
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
    let mut causes = Vec::new();
    if let Some(cause) = check_name(kind, value) {
        causes.push(cause);
    }
    let schema = match kind {
        Kind::Node => check_schema::<Node>(value),
        Kind::Namespace => check_schema::<Namespace>(value),
        Kind::Pod => check_schema::<Pod>(value),
        Kind::Service => check_schema::<Service>(value),
        Kind::EndpointSlice => check_schema::<EndpointSlice>(value),
        Kind::NetworkPolicy => check_schema::<NetworkPolicy>(value),
        Kind::ServiceCIDR => check_schema::<ServiceCIDR>(value),
    };
    match schema {
        Ok(checked) if causes.is_empty() => Ok(checked),
        Ok(_) => Err(causes),
        Err(cause) => {
            causes.push(cause);
            Err(causes)
        }
    }
}

fn check_schema<K: DeserializeOwned + Serialize>(value: &Value) -> Result<Checked, Cause> {
    let object = typed::<K>(value).map_err(|(field, message)| schema_cause(field, message))?;
    let declared = serde_json::to_value(&object).unwrap_or(Value::Null);
    let mut unknown_fields = Vec::new();
    undeclared_fields(value, &declared, "", &mut unknown_fields);
    Ok(Checked { unknown_fields })
}

/// Turns serde's "missing field `x`" at `spec` into `spec.x: Required value`.
fn schema_cause(field: String, message: String) -> Cause {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match missing {
        Some(name) => Cause {
            field: join_path(if field == "." { "" } else { &field }, name),
            message: "Required value".into(),
        },
        None => Cause { field, message },
    }
}

fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// Fields set in `given` that did not survive the round trip through the typed object.
fn undeclared_fields(given: &Value, declared: &Value, path: &str, out: &mut Vec<String>) {
    match (given, declared) {
        (Value::Object(given), Value::Object(declared)) => {
            for (key, value) in given {
                let child = join_path(path, key);
                match declared.get(key) {
                    None if !value.is_null() => out.push(child),
                    None => {}
                    Some(declared) => undeclared_fields(value, declared, &child, out),
                }
            }
        }
        (Value::Array(given), Value::Array(declared)) => {
            for (i, (value, declared)) in given.iter().zip(declared).enumerate() {
                undeclared_fields(value, declared, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The name rules of each kind: DNS-1035 labels for Services, DNS-1123 labels for
/// Namespaces, DNS-1123 subdomains for the rest.
fn check_name(kind: Kind, value: &Value) -> Option<Cause> {
    let name = value.pointer("/metadata/name").and_then(Value::as_str)?;
    let invalid = |rule: &str| {
        Some(Cause {
            field: "metadata.name".into(),
            message: format!("Invalid value: {name:?}: {rule}"),
        })
    };
    let label_chars = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    match kind {
        Kind::Service => {
            let ok = label_chars(name) && name.starts_with(|c: char| c.is_ascii_lowercase());
            if !ok {
                return invalid(
                    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
                );
            }
        }
        Kind::Namespace => {
            if !label_chars(name) {
                return invalid(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                );
            }
        }
        _ => {
            let ok = name.len() <= 253 && name.split('.').all(label_chars);
            if !ok {
                return invalid(
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_errors_name_the_field() {
        let pod = json!({"metadata": {"name": "a"}, "spec": {"containers": [
            {"name": "c", "ports": [{"containerPort": "eighty"}]}]}});
        let causes = check(Kind::Pod, &pod).unwrap_err();
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.containers[0].ports[0].containerPort");
    }

    #[test]
    fn required_fields() {
        let fields = |kind, value: Value| -> Vec<String> {
            check_required(kind, &value)
                .into_iter()
                .map(|c| c.field)
                .collect()
        };
        assert_eq!(fields(Kind::Pod, json!({"spec": {}})), ["spec.containers"]);
        assert_eq!(
            fields(
                Kind::Pod,
                json!({"spec": {"containers": [{"ports": [{"containerPort": 0}]}]}})
            ),
            [
                "spec.containers[0].name",
                "spec.containers[0].ports[0].containerPort"
            ]
        );
        assert!(fields(Kind::Pod, json!({"spec": {"containers": [{"name": "c"}]}})).is_empty());
        assert_eq!(
            fields(
                Kind::Service,
                json!({"spec": {"ports": [{"port": 80}, {"targetPort": 80}]}})
            ),
            ["spec.ports[1].port"]
        );
        assert_eq!(
            fields(Kind::EndpointSlice, json!({"endpoints": []})),
            ["addressType"]
        );
        assert!(fields(Kind::NetworkPolicy, json!({})).is_empty());
    }

    #[test]
    fn names_follow_the_kind_rules() {
        let named = |name: &str| json!({"metadata": {"name": name}});
        assert!(check(Kind::Service, &named("web-1")).is_ok());
        assert!(check(Kind::Service, &named("1web")).is_err());
        assert!(check(Kind::Namespace, &named("a.b")).is_err());
        assert!(check(Kind::Node, &named("node-1.example.com")).is_ok());
        let causes = check(Kind::Node, &named("Node_1")).unwrap_err();
        assert_eq!(causes[0].field, "metadata.name");
    }

    #[test]
    fn unknown_fields_are_listed_with_their_path() {
        let service = json!({"metadata": {"name": "web", "labels": {}, "bogus": 1},
            "spec": {"ports": [{"port": 80, "nope": true}], "clusterIP": null}});
        let checked = check(Kind::Service, &service).unwrap();
        assert_eq!(
            checked.unknown_fields,
            ["metadata.bogus", "spec.ports[0].nope"]
        );
    }
}

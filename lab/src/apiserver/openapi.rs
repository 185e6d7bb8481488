//! Just enough OpenAPI v3 for kubectl: the root index of group-versions, and per
//! group-version the PATCH operation of each kind declaring the `fieldValidation`
//! query parameter — which is how kubectl decides to let the server validate fields
//! (`--validate=strict`) instead of failing to download a schema. No schemas are
//! published, so `kubectl explain` finds nothing and `kubectl apply` computes its
//! patches from its built-in types.

use serde_json::{Value, json};

use super::discovery::{MAJOR, MINOR};
use super::resource::{RESOURCES, Resource};
use kubewire::cache::Kind;

/// `group/version` → the path of its document under `/openapi/v3/`.
fn document_path(resource: &Resource) -> String {
    if resource.group.is_empty() {
        format!("api/{}", resource.version)
    } else {
        format!("apis/{}/{}", resource.group, resource.version)
    }
}

/// `/openapi/v3`.
pub fn root(serves: impl Fn(Kind) -> bool) -> Value {
    let mut paths = serde_json::Map::new();
    for resource in RESOURCES.iter().filter(|r| serves(r.kind)) {
        let path = document_path(resource);
        let url = format!("/openapi/v3/{path}?hash={MAJOR}{MINOR}");
        paths.insert(path, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/group/version>`.
pub fn document(path: &str, serves: impl Fn(Kind) -> bool) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for resource in RESOURCES
        .iter()
        .filter(|r| serves(r.kind) && document_path(r) == path)
    {
        let collection = if resource.namespaced() {
            format!("/{path}/namespaces/{{namespace}}/{}", resource.plural)
        } else {
            format!("/{path}/{}", resource.plural)
        };
        let patch = json!({
            "x-kubernetes-group-version-kind": {
                "group": resource.group,
                "version": resource.version,
                "kind": resource.kind.as_str(),
            },
            "x-kubernetes-action": "patch",
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "force", "in": "query", "schema": {"type": "boolean"}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(format!("{collection}/{{name}}"), json!({"patch": patch}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{MAJOR}.{MINOR}.0")},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operations_declare_field_validation() {
        let root = root(|_| true);
        assert_eq!(
            root["paths"]["apis/networking.k8s.io/v1"]["serverRelativeURL"],
            "/openapi/v3/apis/networking.k8s.io/v1?hash=133"
        );
        let core = document("api/v1", |_| true).unwrap();
        let pods = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(pods["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(
            pods["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(core["paths"]["/api/v1/nodes/{name}"].is_object());
        assert!(document("apis/discovery.k8s.io/v1", |k| k != Kind::EndpointSlice).is_none());
        assert!(document("apis/apps/v1", |_| true).is_none());
    }
}

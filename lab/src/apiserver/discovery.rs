//! The discovery documents clients read before anything else: `/version`, `/api`,
//! `/apis`, `/apis/<group>` and the APIResourceLists, listing only the kinds this
//! server serves. Served as plain `application/json`, so a client asking for the
//! aggregated (`apidiscovery.k8s.io/v2`) form falls back to the legacy documents.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::resource::{GROUPS, RESOURCES, Resource, VERBS};
use kubewire::cache::Kind;

/// The Kubernetes version this server answers like.
pub const MAJOR: &str = "1";
pub const MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "gitVersion": format!("v{MAJOR}.{MINOR}.0-kubewire.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`.
pub fn core_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
    })
}

fn group_document(name: &str) -> Value {
    let version = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": [version],
        "preferredVersion": version,
    })
}

/// `/apis`: the groups with at least one served kind.
pub fn group_list(serves: impl Fn(Kind) -> bool) -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .filter(|group| {
            RESOURCES
                .iter()
                .any(|r| r.group == **group && serves(r.kind))
        })
        .map(|group| {
            let mut document = group_document(group);
            if let Some(object) = document.as_object_mut() {
                object.remove("kind");
                object.remove("apiVersion");
            }
            document
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn group(name: &str, serves: impl Fn(Kind) -> bool) -> Option<Value> {
    RESOURCES
        .iter()
        .any(|r| r.group == name && !r.group.is_empty() && serves(r.kind))
        .then(|| group_document(name))
}

fn api_resource(resource: &Resource) -> Value {
    let mut entry = json!({
        "name": resource.plural,
        "singularName": resource.singular,
        "namespaced": resource.namespaced(),
        "kind": resource.kind.as_str(),
        "verbs": VERBS,
    });
    if !resource.short_names.is_empty() {
        entry["shortNames"] = json!(resource.short_names);
    }
    if matches!(resource.kind, Kind::Pod | Kind::Service) {
        entry["categories"] = json!(["all"]);
    }
    entry
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn resource_list(group: &str, version: &str, serves: impl Fn(Kind) -> bool) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version && serves(r.kind))
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for resource in served {
        resources.push(api_resource(resource));
        if resource.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", resource.plural),
                "singularName": "",
                "namespaced": resource.namespaced(),
                "kind": resource.kind.as_str(),
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_lists_name_every_served_kind_with_its_status_subresource() {
        let core = resource_list("", "v1", |_| true).unwrap();
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "nodes",
                "nodes/status",
                "namespaces",
                "pods",
                "pods/status",
                "services",
                "services/status"
            ]
        );
        assert_eq!(core["resources"][3]["shortNames"], json!(["po"]));
        let networking =
            resource_list("networking.k8s.io", "v1", |k| k != Kind::ServiceCIDR).unwrap();
        assert_eq!(networking["groupVersion"], "networking.k8s.io/v1");
        assert_eq!(networking["resources"].as_array().unwrap().len(), 1);
        assert!(resource_list("discovery.k8s.io", "v1", |k| k != Kind::EndpointSlice).is_none());
        let groups = group_list(|k| k != Kind::EndpointSlice);
        assert_eq!(groups["groups"].as_array().unwrap().len(), 1);
        assert_eq!(groups["groups"][0]["preferredVersion"]["version"], "v1");
        assert!(group("apps", |_| true).is_none());
    }
}

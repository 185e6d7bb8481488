//! The REST names of the seven served kinds: group, version, plural, short names and
//! which subresources they have, as kube-apiserver's discovery documents them.

use kubewire::cache::Kind;

/// How one kind appears on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    /// API group, empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    /// Whether `<object>/status` is a subresource (status is then ignored on the
    /// main endpoint and set only through it).
    pub status_subresource: bool,
}

pub const RESOURCES: [Resource; 7] = [
    Resource {
        kind: Kind::Node,
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        short_names: &["no"],
        status_subresource: true,
    },
    Resource {
        kind: Kind::Namespace,
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        short_names: &["ns"],
        status_subresource: false,
    },
    Resource {
        kind: Kind::Pod,
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        status_subresource: true,
    },
    Resource {
        kind: Kind::Service,
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        short_names: &["svc"],
        status_subresource: true,
    },
    Resource {
        kind: Kind::EndpointSlice,
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        short_names: &[],
        status_subresource: false,
    },
    Resource {
        kind: Kind::NetworkPolicy,
        group: "networking.k8s.io",
        version: "v1",
        plural: "networkpolicies",
        singular: "networkpolicy",
        short_names: &["netpol"],
        status_subresource: false,
    },
    Resource {
        kind: Kind::ServiceCIDR,
        group: "networking.k8s.io",
        version: "v1",
        plural: "servicecidrs",
        singular: "servicecidr",
        short_names: &[],
        status_subresource: false,
    },
];

/// The API groups other than core, in discovery order.
pub const GROUPS: [&str; 2] = ["discovery.k8s.io", "networking.k8s.io"];

/// The verbs every served resource allows (no deletecollection).
pub const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

impl Resource {
    pub fn of(kind: Kind) -> &'static Resource {
        RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or(&RESOURCES[0])
    }

    /// The resource named `plural` in `group`/`version`.
    pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// `apiVersion` of objects of this kind.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn namespaced(&self) -> bool {
        self.kind.namespaced()
    }

    /// `PodList`, `NodeList`, ...
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind.as_str())
    }

    /// `pods "x"` or `networkpolicies.networking.k8s.io "x"`, as Status messages name objects.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_resource_matching_its_api_version() {
        for kind in Kind::ALL {
            let resource = Resource::of(kind);
            assert_eq!(resource.kind, kind);
            assert_eq!(resource.api_version(), kind.api_version());
            assert_eq!(
                Resource::lookup(resource.group, resource.version, resource.plural),
                Some(resource)
            );
        }
        assert!(Resource::lookup("", "v1", "endpointslices").is_none());
    }
}

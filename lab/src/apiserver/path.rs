//! Parses a request path into the resource it addresses, with kube-apiserver's URL
//! grammar: `/api/v1/...` or `/apis/<group>/<version>/...`, then an optional legacy
//! `watch/`, then `[namespaces/<ns>/]<plural>[/<name>[/<subresource>]]`.

use super::resource::Resource;

/// What a resource request addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub resource: &'static Resource,
    /// Set for namespaced paths (`/namespaces/<ns>/...`).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The legacy `/watch/` prefix: the request is a watch whatever its query says.
    pub legacy_watch: bool,
}

/// What a path under `/api` or `/apis` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`.
    Resources {
        group: String,
        version: String,
    },
    Resource(Target),
    /// Nothing is served here.
    NotFound,
}

pub fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["apis", group] => Route::Group((*group).to_string()),
        ["api", version] => Route::Resources {
            group: String::new(),
            version: (*version).to_string(),
        },
        ["apis", group, version] => Route::Resources {
            group: (*group).to_string(),
            version: (*version).to_string(),
        },
        ["api", version, rest @ ..] => resource_route("", version, rest),
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let (legacy_watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let lookup = |plural: &str| Resource::lookup(group, version, plural);
    let target = |resource: &'static Resource,
                  namespace: Option<&str>,
                  name: Option<&str>,
                  sub: Option<&str>| {
        // A namespaced object is addressed only under its namespace (the
        // cluster-wide path is for lists and watches); a cluster-scoped one never is.
        let misplaced = if resource.namespaced() {
            namespace.is_none() && name.is_some()
        } else {
            namespace.is_some()
        };
        if misplaced {
            return Route::NotFound;
        }
        if name.is_some_and(str::is_empty) || sub.is_some_and(str::is_empty) {
            return Route::NotFound;
        }
        Route::Resource(Target {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
            legacy_watch,
        })
    };
    let namespaced = |ns: &str, plural: &str| lookup(plural).filter(|_| !ns.is_empty());
    match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced(ns, plural).is_some() => {
            let Some(resource) = namespaced(ns, plural) else {
                return Route::NotFound;
            };
            match tail {
                [] => target(resource, Some(ns), None, None),
                [name] => target(resource, Some(ns), Some(name), None),
                [name, sub] => target(resource, Some(ns), Some(name), Some(sub)),
                _ => Route::NotFound,
            }
        }
        [plural, tail @ ..] => {
            let Some(resource) = lookup(plural) else {
                return Route::NotFound;
            };
            match tail {
                [] => target(resource, None, None, None),
                [name] => target(resource, None, Some(name), None),
                [name, sub] => target(resource, None, Some(name), Some(sub)),
                _ => Route::NotFound,
            }
        }
        [] => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubewire::cache::Kind;

    /// (kind, namespace, name, subresource, legacy watch)
    type Parsed = (Kind, Option<String>, Option<String>, Option<String>, bool);

    fn target(path: &str) -> Option<Parsed> {
        match route(path) {
            Route::Resource(t) => Some((
                t.resource.kind,
                t.namespace,
                t.name,
                t.subresource,
                t.legacy_watch,
            )),
            _ => None,
        }
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn resource_paths() {
        let cases = [
            ("/api/v1/pods", Some((Kind::Pod, None, None, None, false))),
            (
                "/api/v1/namespaces/a/pods",
                Some((Kind::Pod, s("a"), None, None, false)),
            ),
            (
                "/api/v1/namespaces/a/pods/p/status",
                Some((Kind::Pod, s("a"), s("p"), s("status"), false)),
            ),
            ("/api/v1/pods/p", None),
            (
                "/api/v1/namespaces",
                Some((Kind::Namespace, None, None, None, false)),
            ),
            (
                "/api/v1/namespaces/a",
                Some((Kind::Namespace, None, s("a"), None, false)),
            ),
            (
                "/api/v1/namespaces/a/status",
                Some((Kind::Namespace, None, s("a"), s("status"), false)),
            ),
            (
                "/api/v1/nodes/n1/status",
                Some((Kind::Node, None, s("n1"), s("status"), false)),
            ),
            ("/api/v1/namespaces/a/nodes/n1", None),
            (
                "/api/v1/watch/namespaces/a/services",
                Some((Kind::Service, s("a"), None, None, true)),
            ),
            (
                "/apis/discovery.k8s.io/v1/namespaces/a/endpointslices/e",
                Some((Kind::EndpointSlice, s("a"), s("e"), None, false)),
            ),
            (
                "/apis/networking.k8s.io/v1/servicecidrs",
                Some((Kind::ServiceCIDR, None, None, None, false)),
            ),
            ("/apis/networking.k8s.io/v1/endpointslices", None),
            ("/api/v1/configmaps", None),
            ("/api/v2/pods", None),
        ];
        for (path, want) in cases {
            assert_eq!(target(path), want, "{path}");
        }
    }

    #[test]
    fn discovery_paths() {
        assert_eq!(route("/api"), Route::CoreVersions);
        assert_eq!(route("/apis/"), Route::Groups);
        assert_eq!(
            route("/apis/networking.k8s.io"),
            Route::Group("networking.k8s.io".into())
        );
        assert_eq!(
            route("/api/v1"),
            Route::Resources {
                group: String::new(),
                version: "v1".into()
            }
        );
        assert_eq!(route("/healthz"), Route::NotFound);
    }
}

//! `lab up --apiserver-kubeconfig F`: the lab on an existing API server instead of the
//! embedded one. `up` copies F into the state dir as the lab's host kubeconfig (so
//! `lab kubeconfig`, the lab's kubelet and the probes use it), records the server in
//! the state ([`ExternalApiServer`]), gives the agents an identity of their own
//! ([`super::agent_identity`]) and creates the manifests' objects there
//! ([`super::external_objects`]);
//! the control plane then relays the server into the fabric netns instead of
//! starting one. `down` deletes what the lab made there, so runs repeat.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use kubewire::cache::Kind;

/// An object the lab created on the external server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Self {
        ObjectRef {
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural(kind),
            namespace: namespace.map(Into::into),
            name: name.into(),
        }
    }

    pub fn of_kind(kind: Kind, namespace: Option<&str>, name: &str) -> Self {
        let namespace = if kind.namespaced() {
            Some(namespace.unwrap_or("default"))
        } else {
            None
        };
        Self::new(kind.api_version(), kind.as_str(), namespace, name)
    }

    pub fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        let (group, version) = match self.api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", self.api_version.as_str()),
        };
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, &self.kind),
            &self.plural,
        );
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// The resource name of a kind (the English plural, as the API names them).
fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

/// The external API server as the lab records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalApiServer {
    /// `host:port` of the kubeconfig's server: what the fabric relay dials.
    pub upstream: String,
    /// `https` or `http`.
    pub scheme: String,
    /// The kubeconfig's cluster entry (CA, tls-server-name…), for the agents'
    /// kubeconfigs: they reach the same server through the relay, under the name
    /// the certificate carries.
    pub cluster: Value,
    /// Objects the lab created there, in creation order (`down` deletes them in
    /// reverse).
    pub created: Vec<ObjectRef>,
}

/// The server of `kubeconfig`'s current context.
pub fn describe(kubeconfig: &Path) -> anyhow::Result<ExternalApiServer> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let context_name = config
        .current_context
        .clone()
        .or_else(|| config.contexts.first().map(|c| c.name.clone()))
        .with_context(|| format!("{}: no context", kubeconfig.display()))?;
    let cluster_name = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .with_context(|| format!("{}: no context {context_name}", kubeconfig.display()))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .with_context(|| format!("{}: no cluster {cluster_name}", kubeconfig.display()))?;
    let server = cluster.server.clone().with_context(|| {
        format!(
            "{}: cluster {cluster_name} has no server",
            kubeconfig.display()
        )
    })?;
    let (scheme, upstream, host) = split_server(&server)
        .with_context(|| format!("{}: server `{server}`", kubeconfig.display()))?;
    let mut cluster = serde_json::to_value(&cluster)?;
    if cluster.get("tls-server-name").is_none() && scheme == "https" {
        // The agents dial the relay's address; the certificate names the server's.
        cluster["tls-server-name"] = json!(host);
    }
    if let Some(path) = cluster.get("certificate-authority").and_then(Value::as_str) {
        // Relative to the kubeconfig, as kubectl reads it.
        let base = kubeconfig.parent().unwrap_or(Path::new("."));
        cluster["certificate-authority"] = json!(base.join(path).display().to_string());
    }
    Ok(ExternalApiServer {
        upstream,
        scheme,
        cluster,
        created: Vec::new(),
    })
}

/// `https://host:port/path` → (scheme, `host:port`, host without brackets).
fn split_server(server: &str) -> anyhow::Result<(String, String, String)> {
    let (scheme, rest) = server
        .split_once("://")
        .context("not a URL (scheme://host:port)")?;
    if scheme != "https" && scheme != "http" {
        bail!("scheme {scheme}: only https and http");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        bail!("no host");
    }
    let has_port = match authority.rfind(']') {
        Some(end) => authority[end..].contains(':'),
        None => authority.contains(':'),
    };
    let upstream = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", if scheme == "https" { 443 } else { 80 })
    };
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default().to_string(),
        None => authority.split(':').next().unwrap_or_default().to_string(),
    };
    Ok((scheme.to_string(), upstream, host))
}

/// A kubeconfig for an agent: the external server through the relay at `url`, as
/// `user` with `token`. JSON, which every kubeconfig reader takes as YAML.
pub fn agent_kubeconfig(external: &ExternalApiServer, url: &str, token: &str) -> String {
    let mut cluster = external.cluster.clone();
    cluster["server"] = json!(url);
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "external", "cluster": cluster}],
        "users": [{"name": "kubewire", "user": {"token": token}}],
        "contexts": [{"name": "external", "context": {"cluster": "external", "user": "kubewire"}}],
        "current-context": "external",
    });
    config.to_string()
}

/// The URL the agents of a node use: the server's own on the host's loopback (the
/// control plane relays it inside each node netns), else the fabric relay on the
/// node's gateway.
pub fn agent_url(external: &ExternalApiServer, gateway: &str, port: u16) -> String {
    match external.loopback_upstream() {
        Some(addr) => format!("{}://{addr}", external.scheme),
        None => format!("{}://{gateway}:{port}", external.scheme),
    }
}

impl ExternalApiServer {
    /// The server's address when it is on the host's loopback.
    pub fn loopback_upstream(&self) -> Option<std::net::SocketAddr> {
        self.upstream
            .parse::<std::net::SocketAddr>()
            .ok()
            .filter(|addr| addr.ip().is_loopback())
    }
}

/// Where `up` keeps its copy of the external kubeconfig: the lab's host kubeconfig.
pub fn host_kubeconfig(dir: &Path) -> PathBuf {
    dir.join(super::control_plane::HOST_KUBECONFIG)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_split_into_scheme_upstream_and_host() {
        let split = |s: &str| split_server(s).unwrap();
        assert_eq!(
            split("https://127.0.0.1:6443"),
            ("https".into(), "127.0.0.1:6443".into(), "127.0.0.1".into())
        );
        assert_eq!(
            split("https://api.example:8443/prefix"),
            (
                "https".into(),
                "api.example:8443".into(),
                "api.example".into()
            )
        );
        assert_eq!(
            split("https://[fd00::1]"),
            ("https".into(), "[fd00::1]:443".into(), "fd00::1".into())
        );
        assert!(split_server("ftp://x").is_err());
        assert!(split_server("127.0.0.1:6443").is_err());
    }

    #[test]
    fn plurals_are_the_apis() {
        for (kind, plural) in [
            ("NetworkPolicy", "networkpolicies"),
            ("EndpointSlice", "endpointslices"),
            ("ServiceCIDR", "servicecidrs"),
            ("ClusterRoleBinding", "clusterrolebindings"),
        ] {
            assert_eq!(super::plural(kind), plural);
        }
    }

    #[test]
    fn agent_kubeconfigs_dial_the_relay_under_the_servers_name() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin");
        std::fs::write(
            &admin,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:6443', certificate-authority: ca.crt}\n\
             users:\n- name: u\n  user: {token: admin}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
        )
        .unwrap();
        let external = describe(&admin).unwrap();
        assert_eq!(external.upstream, "127.0.0.1:6443");
        assert_eq!(
            agent_url(&external, "192.168.200.1", 6443),
            "https://127.0.0.1:6443"
        );
        let elsewhere = ExternalApiServer {
            upstream: "api.example:6443".into(),
            ..external.clone()
        };
        let url = agent_url(&elsewhere, "192.168.200.1", 6443);
        let path = dir.path().join("agent");
        std::fs::write(&path, agent_kubeconfig(&external, &url, "t0ken")).unwrap();
        let config = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cluster = config.clusters[0].cluster.clone().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://192.168.200.1:6443")
        );
        assert_eq!(cluster.tls_server_name.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            cluster.certificate_authority,
            Some(dir.path().join("ca.crt").display().to_string())
        );
        assert!(
            config.auth_infos[0]
                .auth_info
                .as_ref()
                .unwrap()
                .token
                .is_some()
        );
        let raw: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(raw["users"][0]["user"]["token"], "t0ken");
    }
}

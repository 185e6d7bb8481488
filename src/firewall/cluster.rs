//! The part of a cluster snapshot that NetworkPolicy reads: pods that have network
//! identities (IPs from `status.podIPs`, else `status.podIP`), their labels, named
//! container ports and node; namespace labels; node addresses and pod CIDRs.
//!
//! A pod without an IP, or one that has finished (phase Succeeded/Failed, its IP may
//! already belong to another pod), is not an endpoint at all. A hostNetwork pod is an
//! endpoint (it can be probed) but is never policed and never matches a pod selector:
//! its traffic carries its node's address. An address two policed pods claim belongs
//! to one of them (the running, most recently started); the others lose it, reported.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cache::Pod;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::selector::Labels;
use crate::cache::Snapshot;
use crate::cache::manifests::NAMESPACE_NAME_LABEL;

/// An L4 protocol NetworkPolicy knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The nftables spelling.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One declared container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerPort {
    /// The cache's shared copy.
    pub name: Option<Arc<str>>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod that has an IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEndpoint {
    pub namespace: String,
    pub name: String,
    /// The cache's shared copy.
    pub labels: Arc<Labels>,
    /// Primary first, as the API lists them.
    pub ips: Vec<IpAddr>,
    /// The cache's shared copy of the node's name.
    pub node: Option<Arc<str>>,
    pub host_network: bool,
    pub ports: Vec<ContainerPort>,
}

impl PodEndpoint {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether policies apply to this pod and pod selectors can match it.
    pub fn policed(&self) -> bool {
        !self.host_network
    }

    /// The pod's address of `ip`'s family, if it has one.
    pub fn ip_of_family(&self, like: IpAddr) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == like.is_ipv4())
    }

    /// The port number that `name`/`protocol` resolves to on this pod.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// Every distinct (port, protocol) the pod declares, sorted.
    pub fn served_ports(&self) -> Vec<(u16, Protocol)> {
        let mut ports: Vec<(u16, Protocol)> =
            self.ports.iter().map(|p| (p.port, p.protocol)).collect();
        ports.sort();
        ports.dedup();
        ports
    }
}

/// A node's addresses (its own traffic is always allowed to its pods) and pod CIDRs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
}

/// Something in the snapshot that could not be read; the object is skipped or
/// partially used, the rest of the cluster is not affected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    /// `Kind namespace/name`.
    pub object: String,
    pub field: String,
    pub message: String,
    /// The metric label: `invalid`, or `duplicate_pod_ip`.
    pub reason: &'static str,
}

impl ObjectError {
    /// The object's kind, the first word of `object`.
    pub fn kind(&self) -> &str {
        self.object.split(' ').next().unwrap_or_default()
    }
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// The NetworkPolicy-relevant view of a snapshot.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Sorted by (namespace, name); shared with the next snapshot's view when the
    /// pod did not change.
    pub pods: Vec<Arc<PodEndpoint>>,
    pub namespaces: BTreeMap<String, Labels>,
    pub nodes: BTreeMap<String, NodeInfo>,
    pub errors: Vec<ObjectError>,
}

impl Cluster {
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self::from_snapshot_with(snapshot, |pod| {
            let mut errors = Vec::new();
            (pod_endpoint(pod, &mut errors).map(Arc::new), errors)
        })
    }

    /// Like [`Cluster::from_snapshot`], with pods read by `read_pod` (which may reuse
    /// earlier results for objects that did not change).
    pub fn from_snapshot_with(
        snapshot: &Snapshot,
        mut read_pod: impl FnMut(&Arc<Pod>) -> (Option<Arc<PodEndpoint>>, Vec<ObjectError>),
    ) -> Self {
        let mut cluster = Cluster::default();
        for namespace in &snapshot.namespaces {
            cluster
                .namespaces
                .insert(namespace.name_any(), namespace.labels().clone());
        }
        for node in &snapshot.nodes {
            let info = node_info(node, &mut cluster.errors);
            cluster.nodes.insert(node.name_any(), info);
        }
        let mut claims = Vec::with_capacity(snapshot.pods.len());
        for pod in &snapshot.pods {
            let (endpoint, errors) = read_pod(pod);
            cluster.errors.extend(errors);
            if let Some(endpoint) = endpoint {
                claims.push((endpoint, pod.as_ref()));
            }
        }
        cluster.pods = resolve_shared_addresses(claims, &mut cluster.errors);
        cluster
            .pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        cluster
    }

    /// A namespace's labels; one missing from the snapshot still has its name label.
    pub fn namespace_labels(&self, namespace: &str) -> Labels {
        self.namespaces.get(namespace).cloned().unwrap_or_else(|| {
            Labels::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())])
        })
    }

    pub fn pod(&self, key: &str) -> Option<&PodEndpoint> {
        let (namespace, name) = key.split_once('/')?;
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(|p| p.as_ref())
    }

    /// The policed pod that owns `ip`, if any.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodEndpoint> {
        self.pods
            .iter()
            .find(|p| p.policed() && p.ips.contains(&ip))
            .map(|p| p.as_ref())
    }

    /// Whether `ip` is an address of `node`.
    pub fn is_node_address(&self, node: &str, ip: IpAddr) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.addresses.contains(&ip))
    }
}

/// Reads one pod; `None` when it is no endpoint (no IP, finished).
pub fn pod_endpoint(pod: &Pod, errors: &mut Vec<ObjectError>) -> Option<PodEndpoint> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let object = format!("Pod {namespace}/{name}");
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut texts: Vec<(String, String)> = status
        .pod_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, ip)| (format!("status.podIPs[{i}].ip"), ip.ip.clone()))
        .collect();
    if texts.is_empty()
        && let Some(ip) = &status.pod_ip
    {
        texts.push(("status.podIP".into(), ip.clone()));
    }
    let mut ips = Vec::new();
    for (field, text) in texts {
        match text.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(err) => errors.push(ObjectError {
                object: object.clone(),
                reason: "invalid",
                field,
                message: format!("`{text}` is not an IP address: {err}"),
            }),
        }
    }
    if ips.is_empty() {
        return None;
    }
    let spec = pod.spec.as_ref();
    let mut ports = Vec::new();
    for (c, container) in spec
        .map(|s| s.containers.iter())
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{c}].ports[{p}]");
            let protocol_text = port.protocol.as_deref().unwrap_or("TCP");
            let Some(protocol) = Protocol::parse(protocol_text) else {
                errors.push(ObjectError {
                    object: object.clone(),
                    reason: "invalid",
                    field: format!("{field}.protocol"),
                    message: format!("unknown protocol `{protocol_text}`"),
                });
                continue;
            };
            let Some(number) = u16::try_from(port.container_port).ok().filter(|n| *n > 0) else {
                errors.push(ObjectError {
                    object: object.clone(),
                    reason: "invalid",
                    field: format!("{field}.containerPort"),
                    message: format!("{} is not a port number", port.container_port),
                });
                continue;
            };
            ports.push(ContainerPort {
                name: port.name.clone().filter(|n| !n.is_empty()),
                port: number,
                protocol,
            });
        }
    }
    // Kept for the pod's life: without the room the lists grew.
    ips.shrink_to_fit();
    ports.shrink_to_fit();
    Some(PodEndpoint {
        namespace,
        name,
        labels: pod.labels().clone(),
        ips,
        node: spec
            .and_then(|s| s.node_name.as_deref())
            .map(crate::cache::labels::intern_str),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ports,
    })
}

/// How strongly a pod claims its addresses: a running pod over one that is not, then
/// the most recently started, then the most recently created; last, the name, so the
/// same objects always give the same owner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    running: bool,
    started: Option<Time>,
    created: Option<Time>,
    /// Reversed so that, all else equal, `a` beats `b`.
    key: std::cmp::Reverse<(String, String)>,
}

impl Claim {
    fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        Self {
            running: status.and_then(|s| s.phase.as_deref()) == Some("Running"),
            started: status.and_then(|s| s.start_time.clone()),
            created: pod.metadata.creation_timestamp.clone(),
            key: std::cmp::Reverse((pod.namespace().unwrap_or_default(), pod.name_any())),
        }
    }
}

/// Gives every address two or more policed pods claim (a stale status, an address
/// reused by a restarted pod) to one of them, by [`Claim`], and takes it from the
/// others, each reported. Policies then follow the owner only, and a loser that goes
/// away takes nothing of the owner's with it. A loser left without addresses is no
/// endpoint. HostNetwork pods share their node's addresses by design and are left be.
/// A claim is only weighed (and built) when an address is shared, which is rare.
fn resolve_shared_addresses(
    claims: Vec<(Arc<PodEndpoint>, &Pod)>,
    errors: &mut Vec<ObjectError>,
) -> Vec<Arc<PodEndpoint>> {
    let mut owners: std::collections::HashMap<IpAddr, usize> = std::collections::HashMap::new();
    let mut shared = false;
    for (index, (pod, object)) in claims.iter().enumerate() {
        if !pod.policed() {
            continue;
        }
        for ip in &pod.ips {
            match owners.entry(*ip) {
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(index);
                }
                std::collections::hash_map::Entry::Occupied(mut entry) => {
                    shared = true;
                    if Claim::of(object) > Claim::of(claims[*entry.get()].1) {
                        entry.insert(index);
                    }
                }
            }
        }
    }
    if !shared {
        return claims.into_iter().map(|(pod, _)| pod).collect();
    }
    let mut pods = Vec::with_capacity(claims.len());
    for (index, (pod, _)) in claims.iter().enumerate() {
        let lost: Vec<(IpAddr, usize)> = pod
            .ips
            .iter()
            .filter_map(|ip| {
                let owner = *owners.get(ip)?;
                (pod.policed() && owner != index).then_some((*ip, owner))
            })
            .collect();
        if lost.is_empty() {
            pods.push(pod.clone());
            continue;
        }
        for (ip, owner) in &lost {
            let position = pod.ips.iter().position(|i| i == ip).unwrap_or_default();
            errors.push(ObjectError {
                object: format!("Pod {}", pod.key()),
                field: format!("status.podIPs[{position}].ip"),
                message: format!(
                    "{ip} is also claimed by Pod {}, which owns it (running, most recently started); ignored here",
                    claims[*owner].0.key()
                ),
                reason: "duplicate_pod_ip",
            });
        }
        let mut kept = pod.as_ref().clone();
        kept.ips.retain(|ip| !lost.iter().any(|(l, _)| l == ip));
        if !kept.ips.is_empty() {
            pods.push(Arc::new(kept));
        }
    }
    pods
}

fn node_info(node: &Node, errors: &mut Vec<ObjectError>) -> NodeInfo {
    let object = format!("Node {}", node.name_any());
    let mut info = NodeInfo::default();
    for (i, address) in node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .enumerate()
    {
        if address.type_ == "Hostname" {
            continue;
        }
        match address.address.parse::<IpAddr>() {
            Ok(ip) => info.addresses.push(ip),
            Err(_) => errors.push(ObjectError {
                object: object.clone(),
                reason: "invalid",
                field: format!("status.addresses[{i}].address"),
                message: format!("`{}` is not an IP address", address.address),
            }),
        }
    }
    // Pod CIDRs are read the one way every controller reads them (annotation
    // overrides included); a dropped or corrected value is reported, not fatal.
    let (cidrs, problems) = crate::node::pod_cidrs(node);
    info.pod_cidrs = cidrs.into_iter().map(|c| c.cidr).collect();
    errors.extend(problems.into_iter().map(|problem| ObjectError {
        object: object.clone(),
        reason: "invalid",
        field: problem.field,
        message: problem.message,
    }));
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::manifests;

    fn cluster(yaml: &str) -> Cluster {
        let objects = manifests::parse_documents(std::path::Path::new("t.yaml"), yaml).unwrap();
        Cluster::from_snapshot(&manifests::snapshot_from_objects(&objects).unwrap())
    }

    #[test]
    fn endpoints_are_pods_with_ips_that_have_not_finished() {
        let cluster = cluster(
            "kind: Pod\nmetadata: {name: a, namespace: x, labels: {pod: a}}\n\
             spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]}]}\n\
             status: {podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}\n---\n\
             kind: Pod\nmetadata: {name: b, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.2}\n---\n\
             kind: Pod\nmetadata: {name: pending, namespace: x}\nspec: {containers: [{name: c}]}\n---\n\
             kind: Pod\nmetadata: {name: done, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {phase: Succeeded, podIP: 10.0.0.3}\n---\n\
             kind: Pod\nmetadata: {name: bad, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: not-an-ip}\n---\n\
             kind: Pod\nmetadata: {name: host, namespace: x}\nspec: {hostNetwork: true, containers: [{name: c}]}\nstatus: {podIP: 192.168.0.1}\n",
        );
        let keys: Vec<String> = cluster.pods.iter().map(|p| p.key()).collect();
        assert_eq!(keys, ["x/a", "x/b", "x/host"]);
        let a = &cluster.pods[0];
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.named_port("http", Protocol::Tcp), Some(80));
        assert_eq!(a.named_port("http", Protocol::Udp), None);
        assert_eq!(a.served_ports(), [(53, Protocol::Udp), (80, Protocol::Tcp)]);
        assert!(!cluster.pods[2].policed());
        assert_eq!(cluster.errors.len(), 1);
        assert_eq!(
            cluster.errors[0].to_string(),
            "Pod x/bad: status.podIP: `not-an-ip` is not an IP address: invalid IP address syntax"
        );
        assert_eq!(
            cluster
                .namespace_labels("x")
                .get(NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("x")
        );
    }

    #[test]
    fn pods_with_the_same_labels_share_the_caches_copy() {
        let pod = |name: &str, ip: &str| {
            format!(
                "kind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: shared-copy, tier: web}}}}\n\
                 spec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
            )
        };
        let yaml = pod("a", "10.0.0.1") + &pod("b", "10.0.0.2");
        let objects = manifests::parse_documents(std::path::Path::new("t.yaml"), &yaml).unwrap();
        let snapshot = manifests::snapshot_from_objects(&objects).unwrap();
        let cluster = Cluster::from_snapshot(&snapshot);
        let (a, b) = (&cluster.pods[0], &cluster.pods[1]);
        assert_eq!(a.labels.get("tier").map(String::as_str), Some("web"));
        assert!(Arc::ptr_eq(&a.labels, &b.labels));
        assert!(Arc::ptr_eq(&a.labels, snapshot.pods[0].labels()));
    }

    fn claimant(name: &str, ip: &str, phase: &str, started: &str) -> String {
        format!(
            "kind: Pod\nmetadata: {{name: {name}, namespace: x}}\nspec: {{nodeName: n1, containers: [{{name: c}}]}}\n\
             status: {{phase: {phase}, podIPs: [{{ip: '{ip}'}}], startTime: '{started}'}}\n---\n"
        )
    }

    #[test]
    fn an_address_two_pods_claim_goes_to_the_running_most_recently_started() {
        let yaml = [
            claimant("old", "10.0.0.1", "Running", "2026-01-01T00:00:00Z"),
            claimant("new", "10.0.0.1", "Running", "2026-01-02T00:00:00Z"),
            claimant("pending", "10.0.0.1", "Pending", "2026-01-03T00:00:00Z"),
            claimant("other", "10.0.0.2", "Running", "2026-01-01T00:00:00Z"),
            "kind: Pod\nmetadata: {name: host, namespace: x}\nspec: {hostNetwork: true, containers: [{name: c}]}\n\
             status: {phase: Running, podIP: 10.0.0.2}\n"
                .to_string(),
        ]
        .concat();
        let resolved = cluster(&yaml);
        let keys: Vec<String> = resolved.pods.iter().map(|p| p.key()).collect();
        assert_eq!(
            keys,
            ["x/host", "x/new", "x/other"],
            "losers without addresses are no endpoints"
        );
        assert_eq!(
            resolved
                .pod_by_ip("10.0.0.1".parse().unwrap())
                .map(|p| p.key()),
            Some("x/new".into())
        );
        let errors: Vec<(String, &str)> = resolved
            .errors
            .iter()
            .map(|e| (e.object.clone(), e.reason))
            .collect();
        assert_eq!(
            errors,
            [
                ("Pod x/old".to_string(), "duplicate_pod_ip"),
                ("Pod x/pending".to_string(), "duplicate_pod_ip")
            ]
        );
        assert_eq!(
            resolved.errors[0].to_string(),
            "Pod x/old: status.podIPs[0].ip: 10.0.0.1 is also claimed by Pod x/new, which owns it (running, most recently started); ignored here"
        );
        // The same objects in another order give the same owner; a dual-stack loser
        // keeps the address nobody else claims.
        let yaml = [
            claimant("b", "10.0.0.1", "Running", "2026-01-01T00:00:00Z"),
            claimant("a", "10.0.0.1", "Running", "2026-01-01T00:00:00Z"),
            "kind: Pod\nmetadata: {name: c, namespace: x}\nspec: {containers: [{name: c}]}\n\
             status: {phase: Pending, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}\n"
                .to_string(),
        ]
        .concat();
        let resolved = cluster(&yaml);
        let owner = resolved
            .pod_by_ip("10.0.0.1".parse().unwrap())
            .map(|p| p.key());
        assert_eq!(owner, Some("x/a".into()), "ties go to the first name");
        assert_eq!(
            resolved.pod("x/c").map(|p| p.ips.clone()),
            Some(vec!["fd00::1".parse().unwrap()])
        );
    }
}

//! The lab plan: a pure function from the manifests to every namespace, address,
//! bridge and pod placement the lab will create, and to the seed the embedded API
//! server starts from. No I/O; `lab up` carries the plan out.
//!
//! Guarantees:
//! - Every Node gets a netns `kw-<lab>-node-<node>` whose `eth0` has the Node's
//!   InternalIP (IPv4) in its underlay subnet: the annotation
//!   [`SUBNET_ANNOTATION`] when given, else the /24 around the address. Nodes without
//!   an InternalIP get one from [`DEFAULT_NODE_SUBNET`]; Nodes without pod CIDRs get
//!   `10.244.<n>.0/24`, the way the controller-manager's node IPAM would. With no Node
//!   at all, `n1` and `n2` are made up (pod CIDRs 10.244.1.0/24 and 10.244.2.0/24).
//! - Each distinct underlay subnet is one bridge in the fabric netns, holding the
//!   subnet's gateway (`.1`, else `.254` when a Node uses `.1`, else the first free
//!   host); the fabric routes between its bridges and nothing else. It never routes
//!   pod CIDRs: crossing nodes is the routing controller's job. Service externalIPs
//!   and LoadBalancer ingress IPs are routed (ECMP) to every node, like an upstream
//!   router in front of kube-proxy's nodes.
//! - The external netns (client for NodePorts, externalIPs, LB IPs) sits on its own
//!   subnet, the first of 172.30.255.0/24, 172.30.254.0/24, … that overlaps nothing
//!   in the cluster.
//! - Every Pod is bound to a node (`spec.nodeName`, else round-robin in (namespace,
//!   name) order) and gets its addresses up front: `status.podIP(s)` when the
//!   manifest gives them, else the next free host of each of the node's pod CIDRs
//!   (skipping the network address and the bridge gateway `.1`). `hostNetwork` Pods
//!   share their node's netns and address.
//! - Bad input for one object (an IPv6 InternalIP, a podIP outside its node's
//!   CIDRs, an unknown nodeName) skips that object with a warning naming it and the
//!   field; the rest of the lab is still planned.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cache::manifests::{ManifestObject, apply_defaults};
use crate::cache::{Kind, Snapshot};
/// The Kubernetes L4 protocol, shared with the firewall (same spelling in JSON).
pub use crate::firewall::cluster::Protocol;

/// A Node annotation giving the Node's underlay subnet (`192.168.50.0/24`); without it
/// the lab assumes the /24 around the InternalIP.
pub const SUBNET_ANNOTATION: &str = "lab.kubewire.io/subnet";
/// Where Nodes without an InternalIP get their address (`.11`, `.12`, …).
pub const DEFAULT_NODE_SUBNET: &str = "192.168.200.0/24";
/// The port the API server answers on inside the fabric netns, on every gateway.
pub const FABRIC_APISERVER_PORT: u16 = 6443;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub name: String,
    /// The router between the underlay subnets; hosts the API server's node-facing
    /// listener.
    pub fabric_netns: String,
    pub subnets: Vec<UnderlaySubnet>,
    pub nodes: Vec<NodePlan>,
    pub external: ExternalPlan,
    pub pods: Vec<PodPlan>,
    /// Service externalIPs and LoadBalancer ingress IPs the fabric routes to every node.
    pub service_vips: Vec<Ipv4Addr>,
    /// Problems with single objects; each skipped only that object.
    pub warnings: Vec<String>,
}

/// One underlay subnet: a bridge in the fabric netns holding the gateway address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlaySubnet {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    /// Index into [`LabPlan::subnets`].
    pub subnet: usize,
    /// The veth end in the fabric netns (the node's end is `eth0`).
    pub fabric_port: String,
    pub pod_cidrs: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalPlan {
    pub netns: String,
    pub address: Ipv4Addr,
    pub subnet: usize,
    pub fabric_port: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub host_network: bool,
    /// The pod's own netns; `None` for hostNetwork pods (they use the node's).
    pub netns: Option<String>,
    /// Planned addresses, one per pod CIDR of the node (the node's for hostNetwork).
    pub ips: Vec<IpAddr>,
    pub ports: Vec<PodPort>,
    /// The CNI container ID.
    pub container_id: String,
}

impl PodPlan {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodPort {
    pub port: u16,
    pub protocol: Protocol,
}

impl LabPlan {
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, key: &str) -> Option<&PodPlan> {
        self.pods.iter().find(|p| p.key() == key)
    }

    /// The netns a pod's processes live in (its own, or its node's).
    pub fn pod_netns<'a>(&'a self, pod: &'a PodPlan) -> Option<&'a str> {
        match &pod.netns {
            Some(netns) => Some(netns),
            None => self.node(&pod.node).map(|n| n.netns.as_str()),
        }
    }

    /// The gateway a node reaches the fabric (and the API server) through.
    pub fn gateway_of(&self, node: &NodePlan) -> Ipv4Addr {
        self.subnets[node.subnet].gateway
    }

    /// Every netns of the lab, in creation order (fabric, external, nodes, pods).
    pub fn all_netns(&self) -> Vec<String> {
        let mut names = vec![self.fabric_netns.clone(), self.external.netns.clone()];
        names.extend(self.nodes.iter().map(|n| n.netns.clone()));
        names.extend(self.pods.iter().filter_map(|p| p.netns.clone()));
        names
    }
}

/// Checks `--name`: it becomes part of netns names and the state dir.
pub fn validate_lab_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "lab name `{name}`: use 1-24 characters of a-z, 0-9 and `-`"
        ))
    }
}

/// Plans the lab `name` for the cluster in `snapshot`.
pub fn plan(name: &str, snapshot: &Snapshot) -> Result<LabPlan, String> {
    validate_lab_name(name)?;
    let mut warnings = Vec::new();
    let nodes = plan_nodes(name, snapshot, &mut warnings);
    if nodes.is_empty() {
        return Err("no usable Node: every Node was skipped (see the warnings)".into());
    }
    let mut subnets: Vec<UnderlaySubnet> = Vec::new();
    let mut placed = Vec::new();
    for (index, node) in nodes.into_iter().enumerate() {
        let subnet_index = match subnets.iter().position(|s| s.subnet == node.subnet) {
            Some(i) => i,
            None => {
                if let Some(other) = subnets.iter().find(|s| overlaps(s.subnet, node.subnet)) {
                    warnings.push(format!(
                        "Node {}: underlay subnet {} overlaps {} of another Node; skipped",
                        node.name, node.subnet, other.subnet
                    ));
                    continue;
                }
                subnets.push(UnderlaySubnet {
                    bridge: format!("br{}", subnets.len()),
                    subnet: node.subnet,
                    gateway: Ipv4Addr::UNSPECIFIED,
                });
                subnets.len() - 1
            }
        };
        placed.push(NodePlan {
            netns: format!("kw-{name}-node-{}", node.name),
            fabric_port: format!("kwn{index}"),
            name: node.name,
            address: node.address,
            subnet: subnet_index,
            pod_cidrs: node.pod_cidrs,
        });
    }
    for (index, subnet) in subnets.iter_mut().enumerate() {
        let used: BTreeSet<Ipv4Addr> = placed
            .iter()
            .filter(|n| n.subnet == index)
            .map(|n| n.address)
            .collect();
        subnet.gateway = pick_gateway(subnet.subnet, &used).ok_or_else(|| {
            format!(
                "underlay subnet {}: no free address for the gateway",
                subnet.subnet
            )
        })?;
    }
    let external_subnet = pick_external_subnet(snapshot, &subnets, &placed);
    let external_gateway = external_subnet
        .hosts()
        .next()
        .ok_or("external subnet has no hosts")?;
    let external_address = external_subnet
        .hosts()
        .nth(1)
        .ok_or("external subnet has no second host")?;
    subnets.push(UnderlaySubnet {
        bridge: format!("br{}", subnets.len()),
        subnet: external_subnet,
        gateway: external_gateway,
    });
    let external = ExternalPlan {
        netns: format!("kw-{name}-ext"),
        address: external_address,
        subnet: subnets.len() - 1,
        fabric_port: "kwext".into(),
    };
    let pods = plan_pods(name, snapshot, &placed, &mut warnings);
    Ok(LabPlan {
        name: name.to_string(),
        fabric_netns: format!("kw-{name}-fabric"),
        subnets,
        nodes: placed,
        external,
        pods,
        service_vips: service_vips(snapshot),
        warnings,
    })
}

struct NodeInput {
    name: String,
    address: Ipv4Addr,
    subnet: Ipv4Net,
    pod_cidrs: Vec<IpNet>,
}

fn plan_nodes(lab: &str, snapshot: &Snapshot, warnings: &mut Vec<String>) -> Vec<NodeInput> {
    let default_subnet: Ipv4Net = DEFAULT_NODE_SUBNET.parse().unwrap_or(Ipv4Net::default());
    if snapshot.nodes.is_empty() {
        return ["n1", "n2"]
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                Some(NodeInput {
                    name: name.to_string(),
                    address: default_subnet.hosts().nth(10 + i)?,
                    subnet: default_subnet,
                    pod_cidrs: vec![default_pod_cidr(i + 1)?],
                })
            })
            .collect();
    }
    let taken: BTreeSet<Ipv4Addr> = snapshot
        .nodes
        .iter()
        .filter_map(|n| internal_ip(n).ok().flatten())
        .collect();
    let taken_cidrs: BTreeSet<IpNet> = snapshot.nodes.iter().flat_map(|n| pod_cidrs(n)).collect();
    let mut spare_addresses = default_subnet
        .hosts()
        .skip(10)
        .filter(|a| !taken.contains(a));
    let mut spare_cidrs = (1..=255)
        .filter_map(default_pod_cidr)
        .filter(|c| !taken_cidrs.iter().any(|t| overlaps_ip(*t, *c)));
    let mut nodes = Vec::new();
    for node in &snapshot.nodes {
        let name = node.name_any();
        if lab.len() + name.len() > 200 {
            warnings.push(format!(
                "Node {name}: metadata.name is too long for a netns name; skipped"
            ));
            continue;
        }
        let (address, given) = match internal_ip(node) {
            Ok(Some(address)) => (address, true),
            Ok(None) => match spare_addresses.next() {
                Some(address) => (address, false),
                None => {
                    warnings.push(format!(
                        "Node {name}: no InternalIP and no spare address; skipped"
                    ));
                    continue;
                }
            },
            Err(message) => {
                warnings.push(format!("Node {name}: status.addresses: {message}; skipped"));
                continue;
            }
        };
        let subnet = if !given {
            default_subnet
        } else {
            match node.annotations().get(SUBNET_ANNOTATION) {
                Some(text) => match text.parse::<Ipv4Net>() {
                    Ok(net) if net.contains(&address) && net.prefix_len() <= 30 => net.trunc(),
                    _ => {
                        warnings.push(format!(
                            "Node {name}: metadata.annotations[{SUBNET_ANNOTATION}] `{text}` is not an IPv4 subnet (/30 or wider) holding {address}; skipped"
                        ));
                        continue;
                    }
                },
                None => Ipv4Net::new(address, 24)
                    .map(|n| n.trunc())
                    .unwrap_or_default(),
            }
        };
        if address == subnet.network() || address == subnet.broadcast() {
            warnings.push(format!(
                "Node {name}: InternalIP {address} is not a host address of {subnet}; skipped"
            ));
            continue;
        }
        let mut cidrs = pod_cidrs(node);
        if cidrs.is_empty() {
            match spare_cidrs.next() {
                Some(cidr) => cidrs.push(cidr),
                None => {
                    warnings.push(format!(
                        "Node {name}: no spec.podCIDRs and no spare CIDR; skipped"
                    ));
                    continue;
                }
            }
        }
        nodes.push(NodeInput {
            name,
            address,
            subnet,
            pod_cidrs: cidrs,
        });
    }
    nodes
}

fn default_pod_cidr(index: usize) -> Option<IpNet> {
    let third = u8::try_from(index).ok()?;
    Some(IpNet::V4(
        Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).ok()?,
    ))
}

/// The Node's IPv4 InternalIP; an error for an address that is not IPv4.
fn internal_ip(node: &Node) -> Result<Option<Ipv4Addr>, String> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut first_error = None;
    for address in addresses.iter().filter(|a| a.type_ == "InternalIP") {
        match address.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => return Ok(Some(v4)),
            Ok(IpAddr::V6(_)) => {
                first_error.get_or_insert(format!(
                    "InternalIP {} is IPv6; the lab underlay is IPv4",
                    address.address
                ));
            }
            Err(_) => {
                first_error.get_or_insert(format!(
                    "InternalIP `{}` is not an IP address",
                    address.address
                ));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(None),
    }
}

fn pod_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let mut texts: Vec<&str> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if texts.is_empty() {
        texts.extend(spec.pod_cidr.as_deref());
    }
    texts
        .into_iter()
        .filter_map(|t| t.parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect()
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn overlaps_ip(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn pick_gateway(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = subnet.hosts().next()?;
    let preferred = [first, Ipv4Addr::from(u32::from(subnet.broadcast()) - 1)];
    preferred
        .into_iter()
        .chain(subnet.hosts())
        .find(|a| subnet.contains(a) && *a != subnet.network() && !used.contains(a))
}

fn pick_external_subnet(
    snapshot: &Snapshot,
    subnets: &[UnderlaySubnet],
    nodes: &[NodePlan],
) -> Ipv4Net {
    let mut in_use: Vec<IpNet> = subnets.iter().map(|s| IpNet::V4(s.subnet)).collect();
    in_use.extend(nodes.iter().flat_map(|n| n.pod_cidrs.iter().copied()));
    for service in &snapshot.services {
        let ips = service.spec.iter().flat_map(|s| {
            s.cluster_ips
                .iter()
                .flatten()
                .chain(s.external_ips.iter().flatten())
        });
        in_use.extend(
            ips.filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(IpNet::from),
        );
    }
    (0..=255u8)
        .rev()
        .filter_map(|third| Ipv4Net::new(Ipv4Addr::new(172, 30, third, 0), 24).ok())
        .find(|candidate| {
            !in_use
                .iter()
                .any(|used| overlaps_ip(*used, IpNet::V4(*candidate)))
        })
        .unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::new(172, 31, 255, 0), 24).unwrap_or_default())
}

fn service_vips(snapshot: &Snapshot) -> Vec<Ipv4Addr> {
    let mut vips = BTreeSet::new();
    for service in &snapshot.services {
        let external = service
            .spec
            .iter()
            .flat_map(|s| s.external_ips.iter().flatten().cloned());
        let ingress = service
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.clone());
        for text in external.chain(ingress) {
            if let Ok(IpAddr::V4(ip)) = text.parse::<IpAddr>() {
                vips.insert(ip);
            }
        }
    }
    vips.into_iter().collect()
}

fn plan_pods(
    lab: &str,
    snapshot: &Snapshot,
    nodes: &[NodePlan],
    warnings: &mut Vec<String>,
) -> Vec<PodPlan> {
    // Addresses requested by manifests are reserved before any is handed out.
    let requested: BTreeSet<IpAddr> = snapshot
        .pods
        .iter()
        .flat_map(|p| requested_ips(p))
        .collect();
    let mut next_host: BTreeMap<IpNet, u128> = BTreeMap::new();
    let mut round_robin = 0usize;
    let mut pods = Vec::new();
    for pod in &snapshot.pods {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let label = format!("Pod {namespace}/{name}");
        let spec = pod.spec.as_ref();
        let node = match spec.and_then(|s| s.node_name.as_deref()) {
            Some(node_name) => match nodes.iter().find(|n| n.name == node_name) {
                Some(node) => node,
                None => {
                    warnings.push(format!(
                        "{label}: spec.nodeName `{node_name}` is not a Node of the lab; skipped"
                    ));
                    continue;
                }
            },
            None => {
                let node = &nodes[round_robin % nodes.len()];
                round_robin += 1;
                node
            }
        };
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let ports = pod_ports(pod);
        let ips = if host_network {
            vec![IpAddr::V4(node.address)]
        } else {
            let wanted = requested_ips(pod);
            if let Some(bad) = wanted
                .iter()
                .find(|ip| !node.pod_cidrs.iter().any(|c| c.contains(*ip)))
            {
                warnings.push(format!(
                    "{label}: status.podIP {bad} is outside the pod CIDRs of Node {} ({}); skipped",
                    node.name,
                    node.pod_cidrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                continue;
            }
            let mut ips = Vec::new();
            for cidr in &node.pod_cidrs {
                if let Some(ip) = wanted.iter().find(|ip| cidr.contains(*ip)) {
                    ips.push(*ip);
                    continue;
                }
                match next_free(*cidr, &mut next_host, &requested) {
                    Some(ip) => ips.push(ip),
                    None => warnings.push(format!(
                        "{label}: pod CIDR {cidr} of Node {} is full",
                        node.name
                    )),
                }
            }
            if ips.is_empty() {
                continue;
            }
            // The manifest's order of status.podIPs decides the primary address.
            ips.sort_by_key(|ip| wanted.iter().position(|w| w == ip).unwrap_or(usize::MAX));
            ips
        };
        // Namespace names hold no '.', so `<namespace>.<name>` is unambiguous.
        let id = sanitize(&format!("{namespace}.{name}"));
        pods.push(PodPlan {
            netns: (!host_network).then(|| format!("kw-{lab}-pod-{id}")),
            container_id: format!("kw-{lab}-{id}"),
            namespace,
            name,
            node: node.name.clone(),
            host_network,
            ips,
            ports,
        });
    }
    pods
}

fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn requested_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut texts: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    if texts.is_empty() {
        texts.extend(status.pod_ip.as_deref());
    }
    texts.into_iter().filter_map(|t| t.parse().ok()).collect()
}

fn pod_ports(pod: &Pod) -> Vec<PodPort> {
    let mut ports = BTreeSet::new();
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for port in container.ports.iter().flatten() {
            let protocol = port
                .protocol
                .as_deref()
                .and_then(Protocol::parse)
                .unwrap_or(Protocol::Tcp);
            if let Ok(number) = u16::try_from(port.container_port)
                && number != 0
            {
                ports.insert(PodPort {
                    port: number,
                    protocol,
                });
            }
        }
    }
    ports.into_iter().collect()
}

/// The next host of `cidr` after the bridge gateway (the first host) that nobody
/// requested.
fn next_free(
    cidr: IpNet,
    next_host: &mut BTreeMap<IpNet, u128>,
    requested: &BTreeSet<IpAddr>,
) -> Option<IpAddr> {
    let offset = next_host.entry(cidr).or_insert(2);
    loop {
        let ip = nth_address(cidr, *offset)?;
        *offset += 1;
        if !requested.contains(&ip) {
            return Some(ip);
        }
    }
}

/// The `n`th address of `cidr` (0 = the network address), excluding the IPv4
/// broadcast address.
fn nth_address(cidr: IpNet, n: u128) -> Option<IpAddr> {
    match cidr {
        IpNet::V4(net) => {
            let ip = u32::from(net.network()).checked_add(u32::try_from(n).ok()?)?;
            let ip = Ipv4Addr::from(ip);
            (net.contains(&ip) && ip != net.broadcast()).then_some(IpAddr::V4(ip))
        }
        IpNet::V6(net) => {
            let ip = u128::from(net.network()).checked_add(n)?;
            let ip = std::net::Ipv6Addr::from(ip);
            net.contains(&ip).then_some(IpAddr::V6(ip))
        }
    }
}

/// The API server's seed: the manifests' objects completed the way a control plane
/// would have by the time pods start — made-up Nodes added, Nodes' InternalIP and pod
/// CIDRs filled in, Pods bound (`spec.nodeName`) and given their planned addresses
/// (`status.podIP(s)`, `hostIP`, phase Pending until the lab has wired them). Objects
/// the plan skipped are passed through unchanged.
pub fn seed_objects(plan: &LabPlan, objects: &[ManifestObject]) -> Vec<ManifestObject> {
    let mut seed: Vec<ManifestObject> = Vec::with_capacity(objects.len() + plan.nodes.len());
    let mut seen_nodes = BTreeSet::new();
    for object in objects {
        let mut value = object.value.clone();
        match object.kind {
            Kind::Node => {
                let name = value
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if let Some(node) = plan.node(&name) {
                    complete_node(&mut value, node);
                    seen_nodes.insert(name);
                }
            }
            Kind::Pod => {
                let key = format!(
                    "{}/{}",
                    value
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("default"),
                    value
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                );
                if let Some(pod) = plan.pod(&key)
                    && let Some(node) = plan.node(&pod.node)
                {
                    bind_pod(&mut value, pod, node);
                }
            }
            _ => {}
        }
        seed.push(ManifestObject {
            kind: object.kind,
            value,
        });
    }
    for node in plan.nodes.iter().filter(|n| !seen_nodes.contains(&n.name)) {
        let mut value = json!({"kind": "Node", "metadata": {"name": node.name}});
        apply_defaults(Kind::Node, &mut value);
        complete_node(&mut value, node);
        seed.insert(
            0,
            ManifestObject {
                kind: Kind::Node,
                value,
            },
        );
    }
    seed
}

fn object_mut<'a>(
    value: &'a mut Value,
    key: &str,
) -> Option<&'a mut serde_json::Map<String, Value>> {
    let map = value.as_object_mut()?;
    let entry = map.entry(key).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut()
}

fn complete_node(value: &mut Value, node: &NodePlan) {
    let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
    if let Some(spec) = object_mut(value, "spec") {
        let has_cidrs = spec
            .get("podCIDRs")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
            || spec.get("podCIDR").and_then(Value::as_str).is_some();
        if !has_cidrs {
            spec.insert("podCIDR".into(), json!(cidrs[0]));
            spec.insert("podCIDRs".into(), json!(cidrs));
        }
    }
    if let Some(status) = object_mut(value, "status") {
        let addresses = status.entry("addresses").or_insert_with(|| json!([]));
        if let Some(list) = addresses.as_array_mut()
            && !list
                .iter()
                .any(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        {
            list.insert(
                0,
                json!({"type": "InternalIP", "address": node.address.to_string()}),
            );
        }
    }
}

fn bind_pod(value: &mut Value, pod: &PodPlan, node: &NodePlan) {
    if let Some(spec) = object_mut(value, "spec") {
        spec.insert("nodeName".into(), json!(pod.node));
    }
    if let Some(status) = object_mut(value, "status") {
        let ips: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
        status.insert("phase".into(), json!("Pending"));
        status.insert("hostIP".into(), json!(node.address.to_string()));
        status.insert("hostIPs".into(), json!([{"ip": node.address.to_string()}]));
        status.insert("podIP".into(), json!(ips[0]));
        status.insert(
            "podIPs".into(),
            Value::Array(ips.iter().map(|ip| json!({"ip": ip})).collect()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::manifests::{parse_documents, snapshot_from_objects};
    use std::path::Path;

    fn objects(yaml: &str) -> Vec<ManifestObject> {
        parse_documents(Path::new("t.yaml"), yaml).unwrap()
    }

    fn plan_of(yaml: &str) -> LabPlan {
        plan("t", &snapshot_from_objects(&objects(yaml)).unwrap()).unwrap()
    }

    const NODE: &str = "kind: Node\nmetadata: {name: NAME}\nspec: {podCIDR: CIDR}\nstatus: {addresses: [{type: InternalIP, address: ADDR}]}\n---\n";

    fn node(name: &str, addr: &str, cidr: &str) -> String {
        NODE.replace("NAME", name)
            .replace("ADDR", addr)
            .replace("CIDR", cidr)
    }

    fn pod(name: &str, extra: &str) -> String {
        format!(
            "kind: Pod\nmetadata: {{name: {name}, namespace: x}}\nspec: {{containers: [{{name: c, ports: [{{containerPort: 80}}, {{containerPort: 53, protocol: UDP}}]}}]{extra}}}\n---\n"
        )
    }

    #[test]
    fn no_nodes_makes_up_two() {
        let plan = plan_of(&pod("a", ""));
        let nodes: Vec<_> = plan
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.address.to_string(),
                    n.pod_cidrs[0].to_string(),
                )
            })
            .collect();
        assert_eq!(
            nodes,
            [
                ("n1", "192.168.200.11".into(), "10.244.1.0/24".into()),
                ("n2", "192.168.200.12".into(), "10.244.2.0/24".into())
            ]
        );
        assert_eq!(plan.nodes[0].netns, "kw-t-node-n1");
        assert_eq!(plan.subnets[0].gateway, Ipv4Addr::new(192, 168, 200, 1));
        assert_eq!(plan.pods[0].ips, [IpAddr::from([10, 244, 1, 2])]);
        assert_eq!(
            plan.pods[0].ports,
            [
                PodPort {
                    port: 53,
                    protocol: Protocol::Udp
                },
                PodPort {
                    port: 80,
                    protocol: Protocol::Tcp
                }
            ]
        );
    }

    #[test]
    fn requested_addresses_keep_their_order() {
        let dual = NODE
            .replace("NAME", "n1")
            .replace("ADDR", "192.168.50.11")
            .replace(
                "podCIDR: CIDR",
                "podCIDRs: [10.244.1.0/24, \"fd00:1::/64\"]",
            );
        let pod = |name: &str, status: &str| {
            format!(
                "kind: Pod\nmetadata: {{name: {name}, namespace: x}}\n\
                 spec: {{nodeName: n1, containers: [{{name: c}}]}}\nstatus: {status}\n---\n"
            )
        };
        let yaml = dual
            + &pod("a", r#"{podIPs: [{ip: "fd00:1::5"}, {ip: 10.244.1.5}]}"#)
            + &pod("b", r#"{podIP: "fd00:1::6"}"#);
        let plan = plan_of(&yaml);
        let ips: Vec<Vec<String>> = plan
            .pods
            .iter()
            .map(|p| p.ips.iter().map(ToString::to_string).collect())
            .collect();
        // Requested ones first, in the manifest's order; the rest by pod CIDR.
        assert_eq!(
            ips,
            [
                vec!["fd00:1::5", "10.244.1.5"],
                vec!["fd00:1::6", "10.244.1.2"]
            ]
        );
    }

    #[test]
    fn subnets_gateways_and_external() {
        let yaml = node("a", "192.168.50.1", "10.244.1.0/24")
            + &node("b", "192.168.50.12", "10.244.2.0/24")
            + &node("c", "192.168.60.13", "10.244.3.0/24");
        let plan = plan_of(&yaml);
        let subnets: Vec<_> = plan
            .subnets
            .iter()
            .map(|s| {
                (
                    s.bridge.as_str(),
                    s.subnet.to_string(),
                    s.gateway.to_string(),
                )
            })
            .collect();
        assert_eq!(
            subnets,
            [
                ("br0", "192.168.50.0/24".into(), "192.168.50.254".into()),
                ("br1", "192.168.60.0/24".into(), "192.168.60.1".into()),
                ("br2", "172.30.255.0/24".into(), "172.30.255.1".into()),
            ]
        );
        assert_eq!(
            plan.nodes.iter().map(|n| n.subnet).collect::<Vec<_>>(),
            [0, 0, 1]
        );
        assert_eq!(plan.external.address, Ipv4Addr::new(172, 30, 255, 2));
        assert_eq!(plan.external.subnet, 2);
    }

    #[test]
    fn subnet_annotation_and_external_avoids_overlap() {
        let yaml = "kind: Node\nmetadata: {name: a, annotations: {lab.kubewire.io/subnet: 172.30.0.0/16}}\n\
                    spec: {podCIDR: 10.244.1.0/24}\nstatus: {addresses: [{type: InternalIP, address: 172.30.255.9}]}\n";
        let plan = plan_of(yaml);
        assert_eq!(plan.subnets[0].subnet.to_string(), "172.30.0.0/16");
        assert_eq!(plan.subnets[1].subnet.to_string(), "172.31.255.0/24");
    }

    #[test]
    fn placement_requested_ips_and_host_network() {
        let yaml = node("n1", "192.168.50.11", "10.244.1.0/24")
            + &node("n2", "192.168.50.12", "10.244.2.0/24")
            + &pod("a", "")
            + &pod("b", "")
            + &pod("c", ", nodeName: n1}\nstatus: {podIP: 10.244.1.2")
            + &pod("d", ", nodeName: n1, hostNetwork: true")
            + &pod("e", ", nodeName: n1}\nstatus: {podIP: 10.244.9.9")
            + &pod("f", ", nodeName: gone");
        let plan = plan_of(&yaml);
        let placed: Vec<_> = plan
            .pods
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.node.as_str(),
                    p.ips[0].to_string(),
                    p.netns.is_some(),
                )
            })
            .collect();
        assert_eq!(
            placed,
            [
                ("a", "n1", "10.244.1.3".into(), true),
                ("b", "n2", "10.244.2.2".into(), true),
                ("c", "n1", "10.244.1.2".into(), true),
                ("d", "n1", "192.168.50.11".into(), false),
            ]
        );
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
        assert!(plan.warnings[0].starts_with("Pod x/e: status.podIP 10.244.9.9 is outside"));
        assert!(plan.warnings[1].starts_with("Pod x/f: spec.nodeName `gone`"));
    }

    #[test]
    fn bad_nodes_are_skipped_alone() {
        let yaml = node("v6", "fd00::1", "10.244.1.0/24")
            + &node("a", "192.168.50.11", "10.244.2.0/24")
            + &node("b", "192.168.50.130", "10.244.3.0/24").replace(
                "name: b}",
                "name: b, annotations: {lab.kubewire.io/subnet: 192.168.50.128/25}}",
            );
        let plan = plan_of(&yaml);
        assert_eq!(plan.nodes.len(), 1);
        assert_eq!(plan.nodes[0].name, "a");
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.starts_with("Node v6: status.addresses: InternalIP fd00::1 is IPv6"))
        );
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.starts_with("Node b: underlay subnet 192.168.50.128/25 overlaps"))
        );
    }

    #[test]
    fn seed_completes_nodes_and_binds_pods() {
        let yaml = "kind: Node\nmetadata: {name: bare}\n---\n".to_string() + &pod("a", "");
        let objects = objects(&yaml);
        let plan = plan("t", &snapshot_from_objects(&objects).unwrap()).unwrap();
        let seed = seed_objects(&plan, &objects);
        let node = &seed[0].value;
        assert_eq!(node["spec"]["podCIDRs"], json!(["10.244.1.0/24"]));
        assert_eq!(
            node["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "192.168.200.11"}])
        );
        let pod = &seed[1].value;
        assert_eq!(pod["spec"]["nodeName"], "bare");
        assert_eq!(pod["status"]["podIP"], "10.244.1.2");
        assert_eq!(pod["status"]["hostIP"], "192.168.200.11");
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn service_vips_are_routed() {
        let yaml = "kind: Service\nmetadata: {name: s}\nspec: {externalIPs: [192.0.2.7], ports: [{port: 80}]}\n\
                    status: {loadBalancer: {ingress: [{ip: 192.0.2.9}]}}\n";
        assert_eq!(
            plan_of(yaml).service_vips,
            [Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(192, 0, 2, 9)]
        );
    }

    #[test]
    fn lab_names() {
        assert!(validate_lab_name("demo-1").is_ok());
        assert!(validate_lab_name("Demo").is_err());
        assert!(validate_lab_name("").is_err());
        assert!(validate_lab_name("a/b").is_err());
    }
}

//! The lab plan: a pure function from the manifests to every namespace, address,
//! bridge and pod placement the lab will create, and to the seed the embedded API
//! server starts from. No I/O; `lab up` carries the plan out.
//!
//! Guarantees:
//! - Every Node gets a netns `kw-<lab>-node-<node>` whose `eth0` has the Node's
//!   InternalIPs — its first IPv4 one and, when it has one, its first IPv6 one
//!   (dual-stack) — in its underlay subnets: the annotation [`SUBNET_ANNOTATION`]
//!   when given (one subnet per family, comma-separated), else the /24 (IPv4) or /64
//!   (IPv6) around the address. A Node needs an IPv4 InternalIP (the control plane is
//!   reached over IPv4). Nodes without an InternalIP get one from
//!   [`DEFAULT_NODE_SUBNET`]; Nodes without pod CIDRs get `10.244.<n>.0/24`, the way
//!   the controller-manager's node IPAM would. With no Node at all, `n1` and `n2` are
//!   made up (pod CIDRs 10.244.1.0/24 and 10.244.2.0/24). Pod CIDRs are read as every
//!   controller reads them ([`kubewire::node::pod_cidrs`], annotations included).
//! - Each distinct IPv4 underlay subnet is one L2 segment: a bridge in the fabric
//!   netns holding the subnet's gateway (`.1`, else `.254` when a Node uses `.1`, else
//!   the first free host) and, when its Nodes are dual-stack, the IPv6 subnet's
//!   gateway (`::1`, else the first free address). The Nodes of one segment share
//!   one IPv6 subnet. The fabric routes between its bridges and nothing else. It
//!   never routes pod CIDRs: crossing nodes is the routing controller's job. Service
//!   externalIPs and LoadBalancer ingress IPs are routed (ECMP) to every node of
//!   their family, like an upstream router in front of kube-proxy's nodes.
//! - The external netns (client for NodePorts, externalIPs, LB IPs, and the server
//!   pods reach outside the cluster: it answers on [`EXTERNAL_PORTS`]) sits on its
//!   own subnet, the first of 172.30.255.0/24, 172.30.254.0/24, … that overlaps
//!   nothing in the cluster; when any Node is dual-stack also on the first of
//!   fd00:0:ffff:ffff::/64, fd00:0:ffff:fffe::/64, … likewise.
//! - Every Pod is bound to a node (`spec.nodeName`, else round-robin in (namespace,
//!   name) order) and gets one address per pod CIDR of its node, up front: those of
//!   `status.podIP(s)` that the manifest gives, else the next free host of the CIDR
//!   (skipping the network address and the bridge gateway `.1`); in pod CIDR order,
//!   except that the manifest's first address stays first (the primary).
//!   `hostNetwork` Pods share their node's netns and addresses.
//! - Bad input for one object (only an IPv6 InternalIP, a podIP outside its node's
//!   CIDRs, an unknown nodeName) skips that object with a warning naming it and the
//!   field; the rest of the lab is still planned.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kubewire::cache::Pod;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use kubewire::cache::manifests::{ManifestObject, apply_defaults};
use kubewire::cache::{Kind, Snapshot};
/// The Kubernetes L4 protocol, shared with the firewall (same spelling in JSON).
pub use kubewire::firewall::cluster::Protocol;
use kubewire::node;

/// A Node annotation giving the Node's underlay subnets, one per family
/// (`192.168.50.0/24` or `192.168.50.0/24,fd00:50::/64`); without it the lab assumes
/// the /24 around the IPv4 InternalIP and the /64 around the IPv6 one.
pub const SUBNET_ANNOTATION: &str = "lab.kubewire.io/subnet";
/// Where Nodes without an InternalIP get their address (`.11`, `.12`, …).
pub const DEFAULT_NODE_SUBNET: &str = "192.168.200.0/24";
/// The port the API server answers on inside the fabric netns, on every gateway.
pub const FABRIC_APISERVER_PORT: u16 = 6443;
/// What the external netns answers on (a responder, like a pod's, answering
/// `external from <peer>`): so a pod's connection out of the cluster shows the source
/// address it arrived with.
pub const EXTERNAL_PORTS: [PodPort; 2] = [
    PodPort {
        port: 80,
        protocol: Protocol::Tcp,
    },
    PodPort {
        port: 80,
        protocol: Protocol::Udp,
    },
];

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
    pub service_vips: Vec<IpAddr>,
    /// Problems with single objects; each skipped only that object.
    pub warnings: Vec<String>,
}

/// One underlay subnet: a bridge in the fabric netns holding the gateway address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlaySubnet {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The segment's IPv6 subnet and gateway when its Nodes are dual-stack.
    #[serde(default)]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    /// The Node's IPv6 InternalIP, when it is dual-stack.
    #[serde(default)]
    pub address6: Option<Ipv6Addr>,
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
    /// Present when any Node is dual-stack.
    #[serde(default)]
    pub address6: Option<Ipv6Addr>,
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
    /// The Pod's `metadata.uid` once the lab has started it: a Pod deleted and made
    /// again under the same name is another Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl PodPlan {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl NodePlan {
    /// The node's underlay addresses: IPv4, then IPv6 when dual-stack.
    pub fn addresses(&self) -> Vec<IpAddr> {
        v4_then_v6(self.address, self.address6)
    }
}

fn v4_then_v6(v4: Ipv4Addr, v6: Option<Ipv6Addr>) -> Vec<IpAddr> {
    std::iter::once(IpAddr::V4(v4))
        .chain(v6.map(IpAddr::V6))
        .collect()
}

impl ExternalPlan {
    /// The external netns's addresses: IPv4, then IPv6 when the lab is dual-stack.
    pub fn addresses(&self) -> Vec<IpAddr> {
        v4_then_v6(self.address, self.address6)
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
        let subnet_index = match join_segment(&mut subnets, &node) {
            Ok(index) => index,
            Err(message) => {
                warnings.push(format!("Node {}: {message}; skipped", node.name));
                continue;
            }
        };
        placed.push(NodePlan {
            netns: format!("kw-{name}-node-{}", node.name),
            fabric_port: format!("kwn{index}"),
            name: node.name,
            address: node.address,
            address6: node.address6.map(|(address, _)| address),
            subnet: subnet_index,
            pod_cidrs: node.pod_cidrs,
        });
    }
    for (index, subnet) in subnets.iter_mut().enumerate() {
        let used: BTreeSet<IpAddr> = placed
            .iter()
            .filter(|n| n.subnet == index)
            .flat_map(NodePlan::addresses)
            .collect();
        subnet.gateway = pick_gateway(subnet.subnet, &used).ok_or_else(|| {
            format!(
                "underlay subnet {}: no free address for the gateway",
                subnet.subnet
            )
        })?;
        if let Some(subnet6) = subnet.subnet6 {
            subnet.gateway6 = Some(pick_gateway6(subnet6, &used).ok_or_else(|| {
                format!("underlay subnet {subnet6}: no free address for the gateway")
            })?);
        }
    }
    let in_use = addresses_in_use(snapshot, &subnets, &placed);
    let external_subnet = pick_external_subnet(&in_use);
    let external_gateway = external_subnet
        .hosts()
        .next()
        .ok_or("external subnet has no hosts")?;
    let external_address = external_subnet
        .hosts()
        .nth(1)
        .ok_or("external subnet has no second host")?;
    let dual_stack = placed.iter().any(|n| n.address6.is_some());
    let external_subnet6 = if dual_stack {
        Some(pick_external_subnet6(&in_use).ok_or("no free IPv6 subnet for the external netns")?)
    } else {
        None
    };
    let host6 = |n| external_subnet6.and_then(|s| nth_address6(s, n));
    subnets.push(UnderlaySubnet {
        bridge: format!("br{}", subnets.len()),
        subnet: external_subnet,
        gateway: external_gateway,
        subnet6: external_subnet6,
        gateway6: host6(1),
    });
    let external = ExternalPlan {
        netns: format!("kw-{name}-ext"),
        address: external_address,
        address6: host6(2),
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

/// The segment `node` joins — the one of its IPv4 subnet, created when new — or why
/// it cannot join any (its subnets overlap another segment's, or its IPv6 subnet is
/// not the one the segment's other Nodes share).
fn join_segment(subnets: &mut Vec<UnderlaySubnet>, node: &NodeInput) -> Result<usize, String> {
    let existing = subnets.iter().position(|s| s.subnet == node.subnet);
    if existing.is_none()
        && let Some(other) = subnets
            .iter()
            .find(|s| overlaps(IpNet::V4(s.subnet), IpNet::V4(node.subnet)))
    {
        return Err(format!(
            "underlay subnet {} overlaps {} of another Node",
            node.subnet, other.subnet
        ));
    }
    if let Some((_, subnet6)) = node.address6 {
        if let Some(shared) = existing.and_then(|i| subnets[i].subnet6)
            && shared != subnet6
        {
            return Err(format!(
                "underlay subnet {subnet6} is not {shared}, which the other Nodes on {} use",
                node.subnet
            ));
        }
        let others = subnets
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != existing)
            .filter_map(|(_, s)| s.subnet6);
        if let Some(other) = others
            .into_iter()
            .find(|s| overlaps(IpNet::V6(*s), IpNet::V6(subnet6)))
        {
            return Err(format!(
                "underlay subnet {subnet6} overlaps {other} of another Node"
            ));
        }
    }
    let index = existing.unwrap_or_else(|| {
        subnets.push(UnderlaySubnet {
            bridge: format!("br{}", subnets.len()),
            subnet: node.subnet,
            gateway: Ipv4Addr::UNSPECIFIED,
            subnet6: None,
            gateway6: None,
        });
        subnets.len() - 1
    });
    if let Some((_, subnet6)) = node.address6 {
        subnets[index].subnet6 = Some(subnet6);
    }
    Ok(index)
}

struct NodeInput {
    name: String,
    address: Ipv4Addr,
    subnet: Ipv4Net,
    address6: Option<(Ipv6Addr, Ipv6Net)>,
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
                    address6: None,
                    pod_cidrs: vec![default_pod_cidr(i + 1)?],
                })
            })
            .collect();
    }
    let taken: BTreeSet<Ipv4Addr> = snapshot
        .nodes
        .iter()
        .filter_map(|n| internal_ips(n).ok()?.0)
        .collect();
    let taken_cidrs: BTreeSet<IpNet> = snapshot
        .nodes
        .iter()
        .flat_map(|n| node::pod_cidrs(n).0)
        .map(|c| c.cidr)
        .collect();
    let mut spare_addresses = default_subnet
        .hosts()
        .skip(10)
        .filter(|a| !taken.contains(a));
    let mut spare_cidrs = (1..=255)
        .filter_map(default_pod_cidr)
        .filter(|c| !taken_cidrs.iter().any(|t| overlaps(*t, *c)));
    let mut nodes = Vec::new();
    for node in &snapshot.nodes {
        let name = node.name_any();
        if lab.len() + name.len() > 200 {
            warnings.push(format!(
                "Node {name}: metadata.name is too long for a netns name; skipped"
            ));
            continue;
        }
        let addresses = match internal_ips(node) {
            Ok((Some(v4), v6)) => {
                underlay_subnets(node, v4, v6).map(|(subnet, v6)| (v4, subnet, v6))
            }
            Ok((None, None)) => match spare_addresses.next() {
                Some(v4) => Ok((v4, default_subnet, None)),
                None => Err("no InternalIP and no spare address".to_string()),
            },
            Ok((None, Some(v6))) => Err(format!(
                "status.addresses: InternalIP {v6} is IPv6 and there is no IPv4 one; lab Nodes need one (the control plane is reached over IPv4)"
            )),
            Err(message) => Err(message),
        };
        let (address, subnet, address6) = match addresses {
            Ok(addresses) => addresses,
            Err(message) => {
                warnings.push(format!("Node {name}: {message}; skipped"));
                continue;
            }
        };
        let (cidrs, problems) = node::pod_cidrs(node);
        warnings.extend(problems.iter().map(ToString::to_string));
        let mut cidrs: Vec<IpNet> = cidrs.into_iter().map(|c| c.cidr).collect();
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
            address6,
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

/// The Node's first IPv4 and first IPv6 InternalIP, chosen as every controller
/// chooses them ([`node::internal_ip_like`]); an error naming the field when an
/// address is not an IP and there is no IPv4 InternalIP.
fn internal_ips(node: &Node) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), String> {
    let (addresses, problems) = node::ip_addresses(node);
    let v4 = match node::internal_ip_like(&addresses, Ipv4Addr::UNSPECIFIED.into()) {
        Some(IpAddr::V4(ip)) => Some(ip),
        _ => None,
    };
    let v6 = match node::internal_ip_like(&addresses, Ipv6Addr::UNSPECIFIED.into()) {
        Some(IpAddr::V6(ip)) => Some(ip),
        _ => None,
    };
    match (v4, problems.first()) {
        (None, Some(problem)) => Err(format!("{}: {}", problem.field, problem.message)),
        _ => Ok((v4, v6)),
    }
}

/// The Node's underlay subnets around its addresses: [`SUBNET_ANNOTATION`] when
/// given, else the /24 around the IPv4 and the /64 around the IPv6 address.
fn underlay_subnets(
    node: &Node,
    v4: Ipv4Addr,
    v6: Option<Ipv6Addr>,
) -> Result<(Ipv4Net, Option<(Ipv6Addr, Ipv6Net)>), String> {
    let mut subnet = Ipv4Net::new(v4, 24).unwrap_or_default().trunc();
    let mut subnet6 = v6.map(|ip| Ipv6Net::new(ip, 64).unwrap_or_default().trunc());
    if let Some(text) = node.annotations().get(SUBNET_ANNOTATION) {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<IpNet>() {
                Ok(IpNet::V4(net)) if net.contains(&v4) && net.prefix_len() <= 30 => {
                    subnet = net.trunc();
                }
                Ok(IpNet::V6(net))
                    if v6.is_some_and(|ip| net.contains(&ip)) && net.prefix_len() <= 126 =>
                {
                    subnet6 = Some(net.trunc());
                }
                _ => {
                    return Err(format!(
                        "metadata.annotations[{SUBNET_ANNOTATION}]: `{part}` is not a subnet (IPv4 /30 or wider, IPv6 /126 or wider) holding the Node's InternalIP of its family"
                    ));
                }
            }
        }
    }
    if v4 == subnet.network() || v4 == subnet.broadcast() {
        return Err(format!("InternalIP {v4} is not a host address of {subnet}"));
    }
    match (v6, subnet6) {
        (Some(ip), Some(net)) if ip == net.network() => Err(format!(
            "InternalIP {ip} is the subnet-router address of {net}, not a host's"
        )),
        (Some(ip), Some(net)) => Ok((subnet, Some((ip, net)))),
        _ => Ok((subnet, None)),
    }
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn pick_gateway(subnet: Ipv4Net, used: &BTreeSet<IpAddr>) -> Option<Ipv4Addr> {
    let first = subnet.hosts().next()?;
    let preferred = [first, Ipv4Addr::from(u32::from(subnet.broadcast()) - 1)];
    preferred
        .into_iter()
        .chain(subnet.hosts())
        .find(|a| subnet.contains(a) && *a != subnet.network() && !used.contains(&IpAddr::V4(*a)))
}

/// `::1` of the subnet, else the next address nobody uses.
fn pick_gateway6(subnet: Ipv6Net, used: &BTreeSet<IpAddr>) -> Option<Ipv6Addr> {
    (1..=u128::from(u16::MAX))
        .map_while(|n| nth_address6(subnet, n))
        .find(|a| !used.contains(&IpAddr::V6(*a)))
}

fn nth_address6(subnet: Ipv6Net, n: u128) -> Option<Ipv6Addr> {
    match nth_address(IpNet::V6(subnet), n)? {
        IpAddr::V6(ip) => Some(ip),
        IpAddr::V4(_) => None,
    }
}

/// Every address range of the cluster: underlay subnets, pod CIDRs, Service IPs.
fn addresses_in_use(
    snapshot: &Snapshot,
    subnets: &[UnderlaySubnet],
    nodes: &[NodePlan],
) -> Vec<IpNet> {
    let mut in_use: Vec<IpNet> = subnets
        .iter()
        .flat_map(|s| std::iter::once(IpNet::V4(s.subnet)).chain(s.subnet6.map(IpNet::V6)))
        .collect();
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
    in_use
}

fn pick_external_subnet(in_use: &[IpNet]) -> Ipv4Net {
    (0..=255u8)
        .rev()
        .filter_map(|third| Ipv4Net::new(Ipv4Addr::new(172, 30, third, 0), 24).ok())
        .find(|candidate| {
            !in_use
                .iter()
                .any(|used| overlaps(*used, IpNet::V4(*candidate)))
        })
        .unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::new(172, 31, 255, 0), 24).unwrap_or_default())
}

fn pick_external_subnet6(in_use: &[IpNet]) -> Option<Ipv6Net> {
    (0..=u16::MAX)
        .rev()
        .filter_map(|n| Ipv6Net::new(Ipv6Addr::new(0xfd00, 0, 0xffff, n, 0, 0, 0, 0), 64).ok())
        .find(|candidate| {
            !in_use
                .iter()
                .any(|used| overlaps(*used, IpNet::V6(*candidate)))
        })
}

fn service_vips(snapshot: &Snapshot) -> Vec<IpAddr> {
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
        vips.extend(
            external
                .chain(ingress)
                .filter_map(|t| t.parse::<IpAddr>().ok()),
        );
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
        let node = match bound_node(pod, nodes) {
            Ok(Some(node)) => node,
            Ok(None) => {
                let node = &nodes[round_robin % nodes.len()];
                round_robin += 1;
                node
            }
            Err(message) => {
                warnings.push(format!("{message}; skipped"));
                continue;
            }
        };
        let wanted = requested_ips(pod);
        match plan_pod(
            lab,
            pod,
            node,
            &wanted,
            &requested,
            &mut next_host,
            warnings,
        ) {
            Ok(planned) => pods.push(planned),
            Err(message) => warnings.push(format!("{message}; skipped")),
        }
    }
    pods
}

fn pod_label(pod: &Pod) -> String {
    format!(
        "Pod {}/{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any()
    )
}

/// The lab node `spec.nodeName` names (`None` when the Pod is not bound yet), or why
/// the Pod is not the lab's.
fn bound_node<'a>(pod: &Pod, nodes: &'a [NodePlan]) -> Result<Option<&'a NodePlan>, String> {
    let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
        return Ok(None);
    };
    match nodes.iter().find(|n| n.name == node_name) {
        Some(node) => Ok(Some(node)),
        None => Err(format!(
            "{}: spec.nodeName `{node_name}` is not a Node of the lab",
            pod_label(pod)
        )),
    }
}

/// One Pod on `node`: its netns, CNI container ID and ports, and one address per pod
/// CIDR — the one of `wanted` in that CIDR, else the next free host after the cursor
/// in `next_host` that is not in `reserved` (the cursor moves past it). A pod CIDR
/// that is full is a warning; an error when `wanted` lies outside the node's CIDRs
/// or no CIDR has room.
fn plan_pod(
    lab: &str,
    pod: &Pod,
    node: &NodePlan,
    wanted: &[IpAddr],
    reserved: &BTreeSet<IpAddr>,
    next_host: &mut BTreeMap<IpNet, u128>,
    warnings: &mut Vec<String>,
) -> Result<PodPlan, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let label = pod_label(pod);
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let ips = if host_network {
        node.addresses()
    } else {
        if let Some(bad) = wanted
            .iter()
            .find(|ip| !node.pod_cidrs.iter().any(|c| c.contains(*ip)))
        {
            return Err(format!(
                "{label}: status.podIP {bad} is outside the pod CIDRs of Node {} ({})",
                node.name,
                node.pod_cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut ips = Vec::new();
        for cidr in &node.pod_cidrs {
            if let Some(ip) = wanted.iter().find(|ip| cidr.contains(*ip)) {
                ips.push(*ip);
                continue;
            }
            match next_free(*cidr, next_host, reserved) {
                Some(ip) => ips.push(ip),
                None => warnings.push(format!(
                    "{label}: pod CIDR {cidr} of Node {} is full",
                    node.name
                )),
            }
        }
        if ips.is_empty() {
            return Err(format!(
                "{label}: no pod CIDR of Node {} has a free address",
                node.name
            ));
        }
        // The manifest's first address stays the primary (status.podIP), as the
        // offline verbs read it; the others follow in pod CIDR order.
        ips.sort_by_key(|ip| {
            wanted
                .iter()
                .position(|w| w.is_ipv4() == ip.is_ipv4())
                .unwrap_or(usize::MAX)
        });
        ips
    };
    // Namespace names hold no '.', so `<namespace>.<name>` is unambiguous.
    let id = sanitize(&format!("{namespace}.{name}"));
    Ok(PodPlan {
        netns: (!host_network).then(|| format!("kw-{lab}-pod-{id}")),
        container_id: format!("kw-{lab}-{id}"),
        ports: pod_ports(pod),
        namespace,
        name,
        node: node.name.clone(),
        host_network,
        ips,
        uid: None,
    })
}

/// Places a Pod created while the lab runs, as a scheduler and the node's IPAM
/// would: on its `spec.nodeName`, else on the lab node running the fewest pods
/// (the first in plan order on a tie); its `status.podIP(s)` when free, else the
/// lowest free host of each pod CIDR that no pod of `plan` holds; with the Pod's uid.
/// Pure; the caller adds the result to the plan.
pub fn place_pod(plan: &LabPlan, pod: &Pod) -> Result<PodPlan, String> {
    let node = match bound_node(pod, &plan.nodes)? {
        Some(node) => node,
        None => plan
            .nodes
            .iter()
            .min_by_key(|n| plan.pods.iter().filter(|p| p.node == n.name).count())
            .ok_or_else(|| format!("{}: the lab has no node", pod_label(pod)))?,
    };
    let held: BTreeSet<IpAddr> = plan
        .pods
        .iter()
        .filter(|p| !p.host_network)
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let wanted: Vec<IpAddr> = requested_ips(pod)
        .into_iter()
        .filter(|ip| !held.contains(ip))
        .collect();
    let mut warnings = Vec::new();
    let mut placed = plan_pod(
        &plan.name,
        pod,
        node,
        &wanted,
        &held,
        &mut BTreeMap::new(),
        &mut warnings,
    )?;
    placed.uid = pod.metadata.uid.clone();
    match warnings.first() {
        // A dual-stack pod with one family's CIDR full would run single-stack.
        Some(warning) => Err(warning.clone()),
        None => Ok(placed),
    }
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

/// A Pod's `status.hostIPs` on `node`.
pub fn host_ips(node: &NodePlan) -> Value {
    Value::Array(
        node.addresses()
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect(),
    )
}

fn bind_pod(value: &mut Value, pod: &PodPlan, node: &NodePlan) {
    if let Some(spec) = object_mut(value, "spec") {
        spec.insert("nodeName".into(), json!(pod.node));
    }
    if let Some(status) = object_mut(value, "status") {
        let ips: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
        status.insert("phase".into(), json!("Pending"));
        status.insert("hostIP".into(), json!(node.address.to_string()));
        status.insert("hostIPs".into(), host_ips(node));
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
    use kubewire::cache::manifests::{parse_documents, snapshot_from_objects};
    use std::path::Path;

    fn objects(yaml: &str) -> Vec<ManifestObject> {
        parse_documents(Path::new("t.yaml"), yaml).unwrap()
    }

    fn plan_of(yaml: &str) -> LabPlan {
        plan("t", &snapshot_from_objects(&objects(yaml)).unwrap()).unwrap()
    }

    const NODE: &str = "kind: Node\nmetadata: {name: NAME}\nspec: {podCIDR: THE_CIDR}\nstatus: {addresses: [{type: InternalIP, address: ADDR}]}\n---\n";

    fn node(name: &str, addr: &str, cidr: &str) -> String {
        NODE.replace("NAME", name)
            .replace("ADDR", addr)
            .replace("THE_CIDR", cidr)
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

    fn api_pod(yaml: &str) -> Pod {
        let objects = objects(yaml);
        kubewire::cache::manifests::typed(&objects[0].value).unwrap()
    }

    #[test]
    fn a_later_pod_is_placed_like_a_scheduler_and_node_ipam_would() {
        let mut plan = plan_of(&(pod("a", ", nodeName: n1") + &pod("b", ", nodeName: n1")));
        // Unbound: the node with the fewest pods; the lowest host no pod holds.
        let c = place_pod(&plan, &api_pod(&pod("c", ""))).unwrap();
        assert_eq!(
            (c.node.as_str(), c.ips.clone()),
            ("n2", vec![IpAddr::from([10, 244, 2, 2])])
        );
        assert_eq!(c.netns.as_deref(), Some("kw-t-pod-x.c"));
        assert_eq!(c.uid, None);
        // Bound: its node; an address freed by a deleted pod is handed out again.
        plan.pods.retain(|p| p.name != "a");
        let d = place_pod(&plan, &api_pod(&pod("d", ", nodeName: n1"))).unwrap();
        assert_eq!(d.ips, [IpAddr::from([10, 244, 1, 2])]);
        // A free status.podIP is kept; one another pod holds is not.
        let with_ip = |ip: &str| {
            pod("e", ", nodeName: n1").replace("---", &format!("status: {{podIP: {ip}}}\n---"))
        };
        let e = place_pod(&plan, &api_pod(&with_ip("10.244.1.9"))).unwrap();
        assert_eq!(e.ips, [IpAddr::from([10, 244, 1, 9])]);
        let e = place_pod(&plan, &api_pod(&with_ip("10.244.1.3"))).unwrap();
        assert_eq!(e.ips, [IpAddr::from([10, 244, 1, 2])]);
        // hostNetwork: the node's addresses.
        let h = place_pod(
            &plan,
            &api_pod(&pod("h", ", nodeName: n2, hostNetwork: true")),
        )
        .unwrap();
        assert_eq!(
            (h.netns, h.ips),
            (None, vec![IpAddr::from([192, 168, 200, 12])])
        );
        // Errors name the pod and the field.
        let err = place_pod(&plan, &api_pod(&pod("f", ", nodeName: gone"))).unwrap_err();
        assert_eq!(
            err,
            "Pod x/f: spec.nodeName `gone` is not a Node of the lab"
        );
        let err = place_pod(&plan, &api_pod(&with_ip("10.9.9.9"))).unwrap_err();
        assert!(
            err.starts_with("Pod x/e: status.podIP 10.9.9.9 is outside"),
            "{err}"
        );
    }

    #[test]
    fn requested_addresses_keep_their_order() {
        let dual = NODE
            .replace("NAME", "n1")
            .replace("ADDR", "192.168.50.11")
            .replace(
                "podCIDR: THE_CIDR",
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

    const DUAL: &str = "kind: Node\nmetadata: {name: NAME, annotations: {lab.kubewire.io/subnet: 'NET'}}\n\
        spec: {podCIDRs: [10.244.N.0/24, 'fd00:10:244:N::/64']}\n\
        status: {addresses: [{type: InternalIP, address: V4}, {type: InternalIP, address: 'V6'}]}\n---\n";

    fn dual(name: &str, n: u8, v4: &str, v6: &str, net: &str) -> String {
        DUAL.replace("NAME", name)
            .replace("N.", &format!("{n}."))
            .replace("N::", &format!("{n}::"))
            .replace("V4", v4)
            .replace("V6", v6)
            .replace("NET", net)
    }

    #[test]
    fn dual_stack_nodes_share_a_segment_per_ipv4_subnet() {
        let yaml = dual("a", 1, "192.168.50.11", "fd00:50::1", "")
            + &dual("b", 2, "192.168.50.12", "fd00:50::12", "")
            + &dual(
                "c",
                3,
                "192.168.60.13",
                "fd00:60::13",
                "192.168.60.0/24,fd00:60::/64",
            )
            + &dual("d", 4, "192.168.50.14", "fd00:51::14", "")
            + &node("e", "192.168.50.15", "10.244.5.0/24")
            + &pod("p", ", nodeName: c")
            + &pod("h", ", nodeName: a, hostNetwork: true")
            + &pod("q", ", nodeName: b}\nstatus: {podIP: 'fd00:10:244:2::9'");
        let plan = plan_of(&yaml);
        let subnets: Vec<_> = plan
            .subnets
            .iter()
            .map(|s| {
                (
                    s.subnet.to_string(),
                    s.subnet6.map(|n| n.to_string()),
                    s.gateway6.map(|g| g.to_string()),
                )
            })
            .collect();
        assert_eq!(
            subnets,
            [
                (
                    "192.168.50.0/24".into(),
                    Some("fd00:50::/64".into()),
                    Some("fd00:50::2".into())
                ),
                (
                    "192.168.60.0/24".into(),
                    Some("fd00:60::/64".into()),
                    Some("fd00:60::1".into())
                ),
                (
                    "172.30.255.0/24".into(),
                    Some("fd00:0:ffff:ffff::/64".into()),
                    Some("fd00:0:ffff:ffff::1".into())
                ),
            ]
        );
        let nodes: Vec<_> = plan
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.addresses(), n.subnet))
            .collect();
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(
            nodes,
            [
                ("a", ips(&["192.168.50.11", "fd00:50::1"]), 0),
                ("b", ips(&["192.168.50.12", "fd00:50::12"]), 0),
                ("c", ips(&["192.168.60.13", "fd00:60::13"]), 1),
                ("e", ips(&["192.168.50.15"]), 0),
            ]
        );
        assert_eq!(
            plan.warnings,
            [
                "Node d: underlay subnet fd00:51::/64 is not fd00:50::/64, which the other Nodes on 192.168.50.0/24 use; skipped"
            ]
        );
        assert_eq!(
            plan.external.addresses(),
            ips(&["172.30.255.2", "fd00:0:ffff:ffff::2"])
        );
        assert_eq!(
            plan.pod("x/p").unwrap().ips,
            ips(&["10.244.3.2", "fd00:10:244:3::2"])
        );
        assert_eq!(
            plan.pod("x/h").unwrap().ips,
            ips(&["192.168.50.11", "fd00:50::1"])
        );
        assert_eq!(
            plan.pod("x/q").unwrap().ips,
            ips(&["fd00:10:244:2::9", "10.244.2.2"]),
            "the manifest's podIP stays the primary"
        );
    }

    #[test]
    fn a_bad_subnet_annotation_skips_its_node() {
        let yaml = dual("a", 1, "192.168.50.11", "fd00:50::11", "fd00:51::/64")
            + &node("b", "192.168.50.12", "10.244.2.0/24");
        let plan = plan_of(&yaml);
        assert_eq!(plan.nodes.len(), 1);
        assert!(
            plan.warnings[0].starts_with(
                "Node a: metadata.annotations[lab.kubewire.io/subnet]: `fd00:51::/64` is not a subnet"
            ),
            "{:?}",
            plan.warnings
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

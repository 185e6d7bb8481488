//! Snapshot → [`RoutingPlan`] for one node. Pure: everything the kernel knows that
//! matters (which subnets are local, the underlay MTU) comes in as [`HostFacts`].
//!
//! Per other Node and per pod CIDR of it, the route is chosen as kube-router does:
//! - the peer's InternalIP of the CIDR's family is on a local subnet and
//!   `--overlay-type` is not `full` → a direct route `via` that address;
//! - otherwise, unless `--overlay-type=none`, through the overlay;
//! - otherwise no route (the underlay's routers must know the pod CIDRs, e.g. by BGP),
//!   listed in [`RoutingPlan::unrouted`] with the reason.
//!
//! Overlay design. VXLAN uses one device for all peers, flannel's scheme without its
//! annotations: every node's VTEP MAC is derived from its underlay address
//! ([`vtep_mac`]), and its VTEP address for each pod CIDR is the CIDR's network
//! address (host-local IPAM never hands it out). A remote pod CIDR `C` of node `R`
//! becomes `C via C.network dev kubewire-vx onlink`, a permanent neighbour entry
//! `C.network → mac(R)` and one FDB entry `mac(R) → R's underlay address`. Unknown
//! MACs are never flooded (no all-zero FDB entries, no multicast, no learning), so a
//! packet goes to exactly one peer, and nothing is exchanged between nodes beyond the
//! Node objects. IPIP uses one NBMA device per family (`ipip`, `ip6tnl` ip6ip6) with
//! no fixed remote: `C via R dev kubewire-tun onlink` makes the kernel encapsulate to
//! `R`, as Calico's `tunl0` routes do.

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::*;
use super::nodes::NodeFacts;
use crate::cache::Snapshot;
use crate::network::{NetworkConfig, OverlayEncap, OverlayType};
use crate::node::gateway;

/// The controller's settings that shape the plan.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub network: NetworkConfig,
    /// Masquerade pod traffic that leaves the cluster to the node's address.
    pub pod_egress_masquerade: bool,
}

/// What the kernel of this node says about its underlay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The subnets of the interfaces holding the node's addresses: peers in them are
    /// reachable without a router.
    pub local_subnets: Vec<IpNet>,
    /// The MTU of the interface holding the node's primary address.
    pub underlay_mtu: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("Node {0} is not in the cluster (yet)")]
    NodeNotFound(String),
    #[error("Node {0}: no InternalIP in status.addresses and no --node-ip")]
    NoNodeIp(String),
}

/// This node's underlay addresses, primary first, as [`crate::node::underlay_ips`]
/// chooses them: `--node-ip` (or the first InternalIP), then the first InternalIP of
/// the other family.
pub fn node_ips(
    snapshot: &Snapshot,
    node: &str,
    network: &NetworkConfig,
) -> Result<Vec<IpAddr>, CompileError> {
    let local = snapshot
        .node(node)
        .ok_or_else(|| CompileError::NodeNotFound(node.to_string()))?;
    let facts = NodeFacts::read(local, &mut Vec::new());
    primary_and_other(&facts, network.node_ip)
}

fn primary_and_other(
    facts: &NodeFacts,
    node_ip: Option<IpAddr>,
) -> Result<Vec<IpAddr>, CompileError> {
    let ips = facts.underlay_ips(node_ip);
    if ips.is_empty() {
        return Err(CompileError::NoNodeIp(facts.name.clone()));
    }
    Ok(ips)
}

/// Builds the plan of `node`. Fails only when the node itself is unusable; problems
/// with other objects are listed in the plan and skip only those objects.
pub fn compile(
    snapshot: &Snapshot,
    node: &str,
    options: &CompileOptions,
    host: &HostFacts,
) -> Result<RoutingPlan, CompileError> {
    let args = &options.network;
    let mut problems = Vec::new();
    let nodes: Vec<NodeFacts> = snapshot
        .nodes
        .iter()
        .map(|n| NodeFacts::read(n, &mut problems))
        .collect();
    let local = nodes
        .iter()
        .find(|n| n.name == node)
        .ok_or_else(|| CompileError::NodeNotFound(node.to_string()))?;
    let node_ips = primary_and_other(local, args.node_ip)?;
    for without in nodes.iter().filter(|n| n.pod_cidrs.is_empty()) {
        problems.push(super::nodes::no_pod_cidr(
            &without.name,
            without.name == node,
        ));
    }

    let mtu = args.pod_mtu.or_else(|| {
        host.underlay_mtu
            .map(|m| m.saturating_sub(args.overlay_overhead()))
    });
    let bridge = Bridge {
        name: BRIDGE.to_string(),
        addresses: local
            .pod_cidrs
            .iter()
            .filter_map(|cidr| match gateway(*cidr) {
                Some(gw) => IpNet::new(gw, cidr.prefix_len()).ok(),
                None => {
                    problems.push(format!(
                        "Node {node}: pod CIDR {cidr} is too small for a gateway and pods"
                    ));
                    None
                }
            })
            .collect(),
        mtu,
    };

    let cluster_pod_cidrs: Vec<IpNet> = nodes.iter().flat_map(|n| n.pod_cidrs.clone()).collect();
    let mut sysctls = vec![Sysctl::new("net.ipv4.ip_forward", "1")];
    if cluster_pod_cidrs.iter().any(|c| matches!(c, IpNet::V6(_))) {
        sysctls.push(Sysctl::new("net.ipv6.conf.all.forwarding", "1"));
    }
    if local.pod_cidrs.iter().any(|c| matches!(c, IpNet::V6(_))) {
        // A forwarding node solicits a pod's address from the bridge's link-local
        // address; without this it is unusable for DAD's ~2 s after the first pod
        // attaches, and forwarded IPv6 to that pod is dropped meanwhile. Optional:
        // that delay is all its absence costs, and a container cannot write it.
        sysctls.push(Sysctl::optional(
            &format!("net.ipv6.conf.{BRIDGE}.accept_dad"),
            "0",
        ));
    }

    let tunnel = tunnel(args, &node_ips, &local.pod_cidrs, host.underlay_mtu);
    let mut routes = RouteBuilder {
        args,
        node_ips: &node_ips,
        local_subnets: &host.local_subnets,
        claimed: local
            .pod_cidrs
            .iter()
            .map(|c| (*c, node.to_string()))
            .collect(),
        routes: Vec::new(),
        peers: Vec::new(),
        unrouted: Vec::new(),
        problems: &mut problems,
    };
    for peer in nodes.iter().filter(|n| n.name != node) {
        routes.add_node(peer);
    }
    let RouteBuilder {
        routes,
        peers: vxlan_peers,
        unrouted,
        ..
    } = routes;

    let service_cidrs = service_cidrs(snapshot, &args.service_cidrs, &mut problems);
    let node_addresses = nodes
        .iter()
        .flat_map(|n| n.addresses.iter().map(|a| a.ip))
        .map(IpNet::from);
    let nftables = NftRules {
        cluster_pod_cidrs: IpNet::aggregate(&cluster_pod_cidrs),
        masquerade_sources: if options.pod_egress_masquerade {
            IpNet::aggregate(&local.pod_cidrs)
        } else {
            Vec::new()
        },
        cluster_destinations: IpNet::aggregate(
            &cluster_pod_cidrs
                .iter()
                .copied()
                .chain(node_addresses)
                .chain(service_cidrs)
                .collect(),
        ),
    };

    Ok(RoutingPlan {
        node: node.to_string(),
        node_ips,
        pod_cidrs: local.pod_cidrs.clone(),
        local_subnets: host.local_subnets.clone(),
        bridge,
        sysctls,
        tunnel,
        routes,
        vxlan_peers,
        unrouted,
        nftables,
        problems,
    })
}

fn tunnel(
    args: &NetworkConfig,
    node_ips: &[IpAddr],
    pod_cidrs: &[IpNet],
    underlay_mtu: Option<u32>,
) -> Option<Tunnel> {
    if args.overlay_type == OverlayType::None {
        return None;
    }
    let mtu = |overhead: u32| underlay_mtu.map(|m| m.saturating_sub(overhead));
    Some(match args.overlay_encap {
        OverlayEncap::Vxlan => {
            let local = node_ips[0];
            Tunnel::Vxlan(VxlanDevice {
                name: VXLAN_DEVICE.to_string(),
                vni: VXLAN_VNI,
                port: VXLAN_PORT,
                local,
                mac: vtep_mac(local),
                mtu: mtu(OverlayEncap::Vxlan.overhead()),
                addresses: pod_cidrs.iter().map(|c| IpNet::from(c.network())).collect(),
            })
        }
        OverlayEncap::Ipip => Tunnel::Ipip(IpipDevices {
            devices: node_ips
                .iter()
                .map(|ip| IpipDevice {
                    name: ipip_device(*ip).to_string(),
                    local: *ip,
                    mtu: mtu(ipip_overhead(*ip)),
                })
                .collect(),
        }),
    })
}

fn ipip_device(family_of: IpAddr) -> &'static str {
    if family_of.is_ipv4() {
        IPIP_DEVICE
    } else {
        IP6IP6_DEVICE
    }
}

/// The outer header one IP-in-IP packet carries.
fn ipip_overhead(underlay: IpAddr) -> u32 {
    if underlay.is_ipv4() { 20 } else { 40 }
}

/// A node's VTEP MAC, derived from its underlay address so that every node can
/// compute every other's without exchanging anything: `06:6b` (locally administered,
/// unicast) and the IPv4 address; for IPv6, `06` and 40 bits of an FNV-1a hash.
pub fn vtep_mac(underlay: IpAddr) -> Mac {
    match underlay {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            Mac([0x06, 0x6b, a, b, c, d])
        }
        IpAddr::V6(ip) => {
            let hash = ip.octets().iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            let [_, _, _, a, b, c, d, e] = hash.to_be_bytes();
            Mac([0x06, a, b, c, d, e])
        }
    }
}

struct RouteBuilder<'a> {
    args: &'a NetworkConfig,
    node_ips: &'a [IpAddr],
    local_subnets: &'a [IpNet],
    /// Pod CIDRs already taken, with their node: an overlapping CIDR is not routed.
    claimed: Vec<(IpNet, String)>,
    routes: Vec<Route>,
    peers: Vec<VxlanPeer>,
    unrouted: Vec<Unrouted>,
    problems: &'a mut Vec<String>,
}

impl RouteBuilder<'_> {
    fn add_node(&mut self, peer: &NodeFacts) {
        for cidr in &peer.pod_cidrs {
            if let Some((taken, owner)) = self
                .claimed
                .iter()
                .find(|(c, _)| c.contains(cidr) || cidr.contains(c))
            {
                self.problems.push(format!(
                    "Node {}: pod CIDR {cidr} overlaps {taken} of Node {owner}; not routed",
                    peer.name
                ));
                continue;
            }
            self.claimed.push((*cidr, peer.name.clone()));
            match self.route(peer, *cidr) {
                Ok(route) => self.routes.push(route),
                Err(reason) => self.unrouted.push(Unrouted {
                    destination: *cidr,
                    source: RouteSource::Node {
                        name: peer.name.clone(),
                    },
                    reason,
                }),
            }
        }
    }

    /// The route to one pod CIDR of `peer`, or why there is none.
    fn route(&mut self, peer: &NodeFacts, cidr: IpNet) -> Result<Route, String> {
        let family = cidr.addr();
        let family_name = if family.is_ipv4() { "IPv4" } else { "IPv6" };
        let direct_gateway = peer.internal_ip_like(family);
        let on_local_subnet =
            direct_gateway.filter(|gw| self.local_subnets.iter().any(|s| s.contains(gw)));
        let route = |gateway, device: Option<&str>, path| Route {
            destination: cidr,
            gateway,
            device: device.map(str::to_string),
            path,
            source: RouteSource::Node {
                name: peer.name.clone(),
            },
        };
        match (self.args.overlay_type, on_local_subnet) {
            (OverlayType::Subnet | OverlayType::None, Some(gw)) => {
                return Ok(route(gw, None, Path::Direct));
            }
            (OverlayType::None, None) => {
                return Err(match direct_gateway {
                    Some(gw) => format!(
                        "{gw} is not on a local subnet and --overlay-type=none: the underlay must route {cidr}"
                    ),
                    None => {
                        format!("the Node has no {family_name} InternalIP and --overlay-type=none")
                    }
                });
            }
            _ => {}
        }
        match self.args.overlay_encap {
            OverlayEncap::Vxlan => {
                let local = self.node_ips[0];
                let underlay = peer.internal_ip_like(local).ok_or_else(|| {
                    format!(
                        "the Node has no InternalIP of the overlay's family (this node's {local})"
                    )
                })?;
                let vtep = cidr.network();
                self.add_vxlan_peer(peer, underlay, vtep);
                Ok(route(vtep, Some(VXLAN_DEVICE), Path::Vxlan))
            }
            OverlayEncap::Ipip => {
                let remote = direct_gateway
                    .ok_or_else(|| format!("the Node has no {family_name} InternalIP for IPIP"))?;
                if !self
                    .node_ips
                    .iter()
                    .any(|ip| ip.is_ipv4() == family.is_ipv4())
                {
                    return Err(format!("this node has no {family_name} address for IPIP"));
                }
                Ok(route(remote, Some(ipip_device(family)), Path::Ipip))
            }
        }
    }

    fn add_vxlan_peer(&mut self, peer: &NodeFacts, underlay: IpAddr, vtep: IpAddr) {
        match self.peers.iter_mut().find(|p| p.node == peer.name) {
            Some(existing) => existing.vtep_addresses.push(vtep),
            None => self.peers.push(VxlanPeer {
                node: peer.name.clone(),
                mac: vtep_mac(underlay),
                underlay,
                vtep_addresses: vec![vtep],
            }),
        }
    }
}

/// `spec.cidrs` of every ServiceCIDR, else the fallback from flags.
fn service_cidrs(
    snapshot: &Snapshot,
    fallback: &[IpNet],
    problems: &mut Vec<String>,
) -> Vec<IpNet> {
    let mut cidrs = Vec::new();
    for object in &snapshot.service_cidrs {
        let name = kube::ResourceExt::name_any(object.as_ref());
        let listed = object
            .spec
            .as_ref()
            .and_then(|s| s.cidrs.as_deref())
            .unwrap_or_default();
        for (index, text) in listed.iter().enumerate() {
            match text.parse::<IpNet>() {
                Ok(cidr) => cidrs.push(cidr.trunc()),
                Err(_) => problems.push(format!(
                    "ServiceCIDR {name}: spec.cidrs[{index}]: `{text}` is not a CIDR"
                )),
            }
        }
    }
    if snapshot.service_cidrs.is_empty() {
        cidrs.extend_from_slice(fallback);
    }
    cidrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::manifests::{parse_documents, snapshot_from_objects};

    const THREE_NODES: &str = include_str!("../../examples/routing/three-nodes.yaml");

    fn snapshot(yaml: &str) -> Snapshot {
        snapshot_from_objects(&parse_documents(std::path::Path::new("t.yaml"), yaml).unwrap())
            .unwrap()
    }

    fn args(overlay_type: OverlayType, overlay_encap: OverlayEncap) -> CompileOptions {
        CompileOptions {
            network: NetworkConfig {
                node_ip: None,
                overlay_type,
                overlay_encap,
                pod_mtu: None,
                service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            },
            pod_egress_masquerade: true,
        }
    }

    fn n1_host() -> HostFacts {
        HostFacts {
            local_subnets: vec![
                "192.168.1.0/24".parse().unwrap(),
                "fd00:1::/64".parse().unwrap(),
            ],
            underlay_mtu: Some(1500),
        }
    }

    fn plan(yaml: &str, node: &str, options: &CompileOptions) -> RoutingPlan {
        compile(&snapshot(yaml), node, options, &n1_host()).unwrap()
    }

    fn route_lines(plan: &RoutingPlan) -> Vec<String> {
        plan.routes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn routes_per_overlay_type_and_encap() {
        use OverlayEncap::*;
        use OverlayType::*;
        let direct_n2 = [
            "10.244.2.0/24 via 192.168.1.12 proto 44",
            "fd00:10:244:2::/64 via fd00:1::12 proto 44",
        ];
        let vxlan_n2 = [
            "10.244.2.0/24 via 10.244.2.0 dev kubewire-vx onlink proto 44",
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev kubewire-vx onlink proto 44",
        ];
        let vxlan_n3 = [
            "10.244.3.0/24 via 10.244.3.0 dev kubewire-vx onlink proto 44",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev kubewire-vx onlink proto 44",
        ];
        let ipip_n3 = [
            "10.244.3.0/24 via 192.168.2.13 dev kubewire-tun onlink proto 44",
            "fd00:10:244:3::/64 via fd00:2::13 dev kubewire-tun6 onlink proto 44",
        ];
        let cases: Vec<(OverlayType, OverlayEncap, Vec<&str>, usize)> = vec![
            // (overlay type, encap, routes, unrouted CIDRs)
            (Subnet, Vxlan, [direct_n2, vxlan_n3].concat(), 0),
            (Full, Vxlan, [vxlan_n2, vxlan_n3].concat(), 0),
            (None, Vxlan, direct_n2.to_vec(), 2),
            (Subnet, Ipip, [direct_n2, ipip_n3].concat(), 0),
            (None, Ipip, direct_n2.to_vec(), 2),
        ];
        for (overlay_type, encap, expected, unrouted) in cases {
            let plan = plan(THREE_NODES, "n1", &args(overlay_type, encap));
            assert_eq!(route_lines(&plan), expected, "{overlay_type:?} {encap:?}");
            assert_eq!(plan.unrouted.len(), unrouted, "{overlay_type:?} {encap:?}");
            assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        }
    }

    #[test]
    fn a_node_without_pod_cidr_is_reported_and_the_others_still_routed() {
        let yaml = format!(
            "{THREE_NODES}\n---\nkind: Node\nmetadata: {{name: n4}}\n\
             status: {{addresses: [{{type: InternalIP, address: 192.168.1.14}}]}}\n"
        );
        let options = args(OverlayType::Subnet, OverlayEncap::Vxlan);
        let with = plan(&yaml, "n1", &options);
        let without = plan(THREE_NODES, "n1", &options);
        assert_eq!(route_lines(&with), route_lines(&without));
        let bad: Vec<_> = with
            .problems
            .iter()
            .cloned()
            .map(super::super::nodes::bad_object)
            .collect();
        assert_eq!(bad.len(), 1, "{:?}", with.problems);
        assert_eq!(
            (bad[0].kind.as_str(), bad[0].reason.as_str()),
            ("Node", "no_pod_cidr")
        );
        assert!(
            bad[0].message.starts_with("Node n4: spec.podCIDRs"),
            "{}",
            bad[0]
        );
        // As its own node: no bridge address, still reported the same way.
        let own = plan(&yaml, "n4", &options);
        assert!(own.bridge.addresses.is_empty());
        assert!(
            own.problems
                .iter()
                .any(|p| p.contains("pods on this node get no bridge address"))
        );
    }

    #[test]
    fn unrouted_with_overlay_none_says_the_underlay_must_route_it() {
        let plan = plan(
            THREE_NODES,
            "n1",
            &args(OverlayType::None, OverlayEncap::Vxlan),
        );
        assert_eq!(
            plan.unrouted[0].reason,
            "192.168.2.13 is not on a local subnet and --overlay-type=none: the underlay must route 10.244.3.0/24"
        );
        assert_eq!(plan.tunnel, Option::None);
    }

    #[test]
    fn vxlan_device_and_peers() {
        let plan = plan(
            THREE_NODES,
            "n1",
            &args(OverlayType::Full, OverlayEncap::Vxlan),
        );
        let Some(Tunnel::Vxlan(device)) = &plan.tunnel else {
            panic!("no vxlan device: {:?}", plan.tunnel)
        };
        assert_eq!(device.name, "kubewire-vx");
        assert_eq!(device.local.to_string(), "192.168.1.11");
        assert_eq!(device.mac.to_string(), "06:6b:c0:a8:01:0b");
        assert_eq!(device.mtu, Some(1450));
        assert_eq!(
            device
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.244.1.0/32", "fd00:10:244:1::/128"]
        );
        let peers: Vec<String> = plan
            .vxlan_peers
            .iter()
            .map(|p| {
                let vteps: Vec<String> = p.vtep_addresses.iter().map(ToString::to_string).collect();
                format!(
                    "{} {} dst {} [{}]",
                    p.node,
                    p.mac,
                    p.underlay,
                    vteps.join(" ")
                )
            })
            .collect();
        assert_eq!(
            peers,
            [
                "n2 06:6b:c0:a8:01:0c dst 192.168.1.12 [10.244.2.0 fd00:10:244:2::]",
                "n3 06:6b:c0:a8:02:0d dst 192.168.2.13 [10.244.3.0 fd00:10:244:3::]",
            ]
        );
    }

    #[test]
    fn bridge_gets_gateways_and_the_pod_mtu() {
        let cases: Vec<(OverlayType, OverlayEncap, Option<u32>, Option<u32>)> = vec![
            // (overlay type, encap, --mtu, bridge MTU)
            (
                OverlayType::Subnet,
                OverlayEncap::Vxlan,
                Option::None,
                Some(1450),
            ),
            (
                OverlayType::Subnet,
                OverlayEncap::Ipip,
                Option::None,
                Some(1480),
            ),
            (
                OverlayType::None,
                OverlayEncap::Vxlan,
                Option::None,
                Some(1500),
            ),
            (
                OverlayType::Full,
                OverlayEncap::Vxlan,
                Some(1400),
                Some(1400),
            ),
        ];
        for (overlay_type, encap, mtu, expected) in cases {
            let mut options = args(overlay_type, encap);
            options.network.pod_mtu = mtu;
            let plan = plan(THREE_NODES, "n2", &options);
            assert_eq!(
                plan.bridge.mtu, expected,
                "{overlay_type:?} {encap:?} {mtu:?}"
            );
            assert_eq!(
                plan.bridge
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                ["10.244.2.1/24", "fd00:10:244:2::1/64"]
            );
        }
    }

    #[test]
    fn ipip_devices_per_family_with_their_overhead() {
        let plan = plan(
            THREE_NODES,
            "n1",
            &args(OverlayType::Subnet, OverlayEncap::Ipip),
        );
        let Some(Tunnel::Ipip(ipip)) = &plan.tunnel else {
            panic!("no ipip devices: {:?}", plan.tunnel)
        };
        let devices: Vec<String> = ipip
            .devices
            .iter()
            .map(|d| format!("{} local {} mtu {:?}", d.name, d.local, d.mtu))
            .collect();
        assert_eq!(
            devices,
            [
                "kubewire-tun local 192.168.1.11 mtu Some(1480)",
                "kubewire-tun6 local fd00:1::11 mtu Some(1460)"
            ]
        );
        assert!(plan.vxlan_peers.is_empty());
    }

    #[test]
    fn node_ip_flag_overrides_the_internal_ip_of_its_family() {
        let mut routing = args(OverlayType::Full, OverlayEncap::Vxlan);
        routing.network.node_ip = Some("fd00:1::99".parse().unwrap());
        let plan = plan(THREE_NODES, "n1", &routing);
        assert_eq!(
            plan.node_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["fd00:1::99", "192.168.1.11"]
        );
        // The overlay now runs over IPv6: peers are reached at their IPv6 addresses.
        assert_eq!(plan.vxlan_peers[1].underlay.to_string(), "fd00:2::13");
        assert_eq!(
            plan.vxlan_peers[1].mac,
            vtep_mac("fd00:2::13".parse().unwrap())
        );
    }

    #[test]
    fn masquerade_exempts_pods_nodes_and_services() {
        let plan = plan(
            THREE_NODES,
            "n1",
            &args(OverlayType::Subnet, OverlayEncap::Vxlan),
        );
        let text = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            text(&plan.nftables.masquerade_sources),
            ["10.244.1.0/24", "fd00:10:244:1::/64"]
        );
        assert_eq!(
            text(&plan.nftables.cluster_pod_cidrs),
            [
                "10.244.1.0/24",
                "10.244.2.0/23",
                "fd00:10:244:1::/64",
                "fd00:10:244:2::/63"
            ]
        );
        assert_eq!(
            text(&plan.nftables.cluster_destinations),
            [
                "10.96.0.0/12",
                "10.244.1.0/24",
                "10.244.2.0/23",
                "192.168.1.11/32",
                "192.168.1.12/32",
                "192.168.2.13/32",
                "fd00:1::11/128",
                "fd00:1::12/128",
                "fd00:2::13/128",
                "fd00:10:244:1::/64",
                "fd00:10:244:2::/63",
            ]
        );
        let mut routing = args(OverlayType::Subnet, OverlayEncap::Vxlan);
        routing.pod_egress_masquerade = false;
        assert!(plan_for(&routing).nftables.masquerade_sources.is_empty());
    }

    fn plan_for(routing: &CompileOptions) -> RoutingPlan {
        plan(THREE_NODES, "n1", routing)
    }

    #[test]
    fn service_cidr_objects_replace_the_flag() {
        let yaml = format!(
            "{THREE_NODES}\n---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\n\
             metadata: {{name: kubernetes}}\nspec: {{cidrs: [\"10.43.0.0/16\", \"bad\"]}}\n"
        );
        let plan = plan(&yaml, "n1", &args(OverlayType::Subnet, OverlayEncap::Vxlan));
        let destinations: Vec<String> = plan
            .nftables
            .cluster_destinations
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            destinations.contains(&"10.43.0.0/16".to_string()),
            "{destinations:?}"
        );
        assert!(
            !destinations.contains(&"10.96.0.0/12".to_string()),
            "{destinations:?}"
        );
        assert_eq!(
            plan.problems,
            ["ServiceCIDR kubernetes: spec.cidrs[1]: `bad` is not a CIDR"]
        );
    }

    #[test]
    fn bad_or_overlapping_nodes_affect_only_themselves() {
        let yaml = format!(
            "{THREE_NODES}\n---\nkind: Node\nmetadata: {{name: n4}}\n\
             spec: {{podCIDRs: [\"10.244.2.128/25\", \"10.244.4.0/24\"]}}\n\
             status: {{addresses: [{{type: InternalIP, address: 192.168.1.14}}]}}\n\
             ---\nkind: Node\nmetadata: {{name: n5, annotations: {{kubewire.io/pod-cidrs: \"x\"}}}}\n\
             status: {{addresses: [{{type: InternalIP, address: 192.168.1.15}}]}}\n"
        );
        let plan = plan(&yaml, "n1", &args(OverlayType::Subnet, OverlayEncap::Vxlan));
        assert_eq!(
            plan.problems,
            [
                "Node n5: metadata.annotations[kubewire.io/pod-cidrs]: `x` is not a CIDR",
                "Node n5: spec.podCIDRs: empty, and no pod CIDR annotation; its pods get no route from this node",
                "Node n4: pod CIDR 10.244.2.128/25 overlaps 10.244.2.0/24 of Node n2; not routed",
            ]
        );
        assert!(
            route_lines(&plan).contains(&"10.244.4.0/24 via 192.168.1.14 proto 44".to_string())
        );
        assert_eq!(plan.routes.len(), 5);
    }

    #[test]
    fn this_node_must_exist_and_have_an_address() {
        let options = args(OverlayType::Subnet, OverlayEncap::Vxlan);
        assert_eq!(
            compile(&snapshot(THREE_NODES), "n9", &options, &n1_host()),
            Err(CompileError::NodeNotFound("n9".into()))
        );
        let bare = "kind: Node\nmetadata: {name: lone}\nspec: {podCIDRs: [10.0.0.0/24]}\n";
        assert_eq!(
            compile(&snapshot(bare), "lone", &options, &n1_host()),
            Err(CompileError::NoNodeIp("lone".into()))
        );
    }

    #[test]
    fn vtep_macs_are_distinct_per_address() {
        assert_eq!(
            vtep_mac("10.0.0.1".parse().unwrap()).to_string(),
            "06:6b:0a:00:00:01"
        );
        let a = vtep_mac("fd00::1".parse().unwrap());
        let b = vtep_mac("fd00::2".parse().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.0[0], 0x06, "locally administered unicast");
    }
}

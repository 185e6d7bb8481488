//! The routing controller's desired state for one node: what [`super::compile`]
//! produces and [`super::apply`] makes true in the kernel. Every value here is plain
//! data in kernel terms (devices, addresses, routes, FDB and neighbour entries), so a
//! plan can be printed, compared and tested without a kernel.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// The `proto` number on every route (and address, neighbour and FDB entry) this
/// controller owns; `ip route show proto 44` lists them. Nothing without it is touched.
pub const ROUTE_PROTOCOL: u8 = 44;
/// The bridge pods are attached to (shared with the CNI bridge plugin's config).
pub const BRIDGE: &str = "kube-bridge";
/// The `ifalias` put on a bridge this controller created, so cleanup deletes only
/// a bridge it made (the CNI bridge plugin may have created it first).
pub const BRIDGE_ALIAS: &str = "kubewire: created by the routing controller";
/// The one VXLAN device carrying pod traffic to every overlay peer.
pub const VXLAN_DEVICE: &str = "kubewire-vx";
/// The IPv4-in-IPv4 device (NBMA: no fixed remote; each route names its peer).
pub const IPIP_DEVICE: &str = "kubewire-tun";
/// The IPv6-in-IPv6 device (NBMA, like [`IPIP_DEVICE`]).
pub const IP6IP6_DEVICE: &str = "kubewire-tun6";
/// Every tunnel device name this controller may create (cleanup removes them all).
pub const TUNNEL_DEVICES: [&str; 3] = [VXLAN_DEVICE, IPIP_DEVICE, IP6IP6_DEVICE];
/// The VXLAN network identifier of the pod overlay.
pub const VXLAN_VNI: u32 = 44;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// The nftables table holding the forward accepts and the egress masquerade.
pub const NFT_TABLE: &str = "kubewire-routing";

/// Everything one node needs for pod traffic to reach every other node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoutingPlan {
    pub node: String,
    /// This node's underlay addresses (at most one per family), primary first: the
    /// overlay's local endpoint is the first.
    pub node_ips: Vec<IpAddr>,
    /// This node's pod CIDRs (the bridge's subnets).
    pub pod_cidrs: Vec<IpNet>,
    /// The subnets this node reaches without a router (from the kernel, or flags).
    pub local_subnets: Vec<IpNet>,
    pub bridge: Bridge,
    pub sysctls: Vec<Sysctl>,
    pub tunnel: Option<Tunnel>,
    pub routes: Vec<Route>,
    /// Per overlay peer, the VXLAN FDB and neighbour entries (empty for IPIP).
    pub vxlan_peers: Vec<VxlanPeer>,
    /// Pod CIDRs of other nodes that get no route, and why.
    pub unrouted: Vec<Unrouted>,
    pub nftables: NftRules,
    /// Problems with single objects; each one only affects that object.
    pub problems: Vec<String>,
}

/// The pod bridge and its gateway addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Bridge {
    pub name: String,
    /// The first host address of each local pod CIDR, with the CIDR's prefix length.
    pub addresses: Vec<IpNet>,
    /// The pod MTU, when known (underlay MTU minus the overlay's overhead, or --mtu).
    pub mtu: Option<u32>,
}

/// One `/proc/sys` value the node needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sysctl {
    /// Dotted name, e.g. `net.ipv4.ip_forward`.
    pub key: String,
    pub value: String,
    /// The node works without it, only less well: a failed write is reported but does
    /// not fail the sync. (In a container /proc/sys is read-only; what the node cannot
    /// do without is set by the DaemonSet's privileged init container, and found
    /// already right here.)
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

impl Sysctl {
    pub fn new(key: &str, value: &str) -> Self {
        Self {
            key: key.to_string(),
            value: value.to_string(),
            optional: false,
        }
    }

    /// A value that improves the node but that it can do without.
    pub fn optional(key: &str, value: &str) -> Self {
        Self {
            optional: true,
            ..Self::new(key, value)
        }
    }

    /// The file under `/proc/sys` holding the value.
    pub fn path(&self) -> String {
        format!("/proc/sys/{}", self.key.replace('.', "/"))
    }
}

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The overlay device of this node (one per encapsulation; IPIP may need two, one
/// per family).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Tunnel {
    Vxlan(VxlanDevice),
    Ipip(IpipDevices),
}

impl Tunnel {
    /// Names of the devices this tunnel consists of.
    pub fn device_names(&self) -> Vec<&str> {
        match self {
            Tunnel::Vxlan(vxlan) => vec![vxlan.name.as_str()],
            Tunnel::Ipip(ipip) => ipip
                .devices
                .iter()
                .map(|device| device.name.as_str())
                .collect(),
        }
    }
}

/// `ip link add kubewire-vx type vxlan id VNI dstport 4789 local NODE_IP nolearning`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    /// This node's VTEP MAC (derived from `local`, so peers know it without asking).
    pub mac: Mac,
    pub mtu: Option<u32>,
    /// This node's VTEP addresses (the network address of each local pod CIDR, as a
    /// host route), the source of node-to-remote-pod traffic over the overlay.
    pub addresses: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpipDevices {
    pub devices: Vec<IpipDevice>,
}

/// An NBMA IP-in-IP device: local endpoint fixed, remote taken from each route's
/// gateway (`ip link add kubewire-tun type ipip local NODE_IP`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpipDevice {
    pub name: String,
    /// IPv4 for `ipip`, IPv6 for `ip6tnl mode ip6ip6`.
    pub local: IpAddr,
    pub mtu: Option<u32>,
}

/// A remote node's VXLAN endpoint: one FDB entry (its VTEP MAC → its underlay
/// address) and one permanent neighbour entry per VTEP address (→ its VTEP MAC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VxlanPeer {
    pub node: String,
    pub mac: Mac,
    pub underlay: IpAddr,
    pub vtep_addresses: Vec<IpAddr>,
}

/// Why a route exists: the cluster object or BGP neighbour it came from; apply
/// treats every source the same.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RouteSource {
    /// Another Node's pod CIDR.
    Node { name: String },
    /// The best route a BGP neighbour gave for a prefix outside the cluster.
    Bgp { peer: IpAddr },
}

impl fmt::Display for RouteSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteSource::Node { name } => write!(f, "Node {name}"),
            RouteSource::Bgp { peer } => write!(f, "BGP peer {peer}"),
        }
    }
}

/// How a route's packets leave this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Straight to the peer on the shared L2 subnet.
    Direct,
    Vxlan,
    Ipip,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::Vxlan => "vxlan",
            Path::Ipip => "ipip",
        })
    }
}

/// One kernel route in the main table, `proto` [`ROUTE_PROTOCOL`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub destination: IpNet,
    pub gateway: IpAddr,
    /// The output device for tunnel routes (then `onlink`); the kernel picks it for
    /// direct routes.
    pub device: Option<String>,
    pub path: Path,
    pub source: RouteSource,
}

impl Route {
    /// Tunnel routes name a gateway that is not on any subnet of the device.
    pub fn onlink(&self) -> bool {
        self.device.is_some()
    }
}

impl fmt::Display for Route {
    /// `ip route` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.destination, self.gateway)?;
        if let Some(device) = &self.device {
            write!(f, " dev {device} onlink")?;
        }
        write!(f, " proto {ROUTE_PROTOCOL}")
    }
}

/// A pod CIDR of another node that this node does not route itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unrouted {
    pub destination: IpNet,
    pub source: RouteSource,
    pub reason: String,
}

/// The content of the `inet kubewire-routing` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NftRules {
    /// Every pod CIDR of the cluster: forwarded traffic from or to them is accepted.
    pub cluster_pod_cidrs: Vec<IpNet>,
    /// Sources masqueraded when leaving the cluster (this node's pod CIDRs), empty
    /// when `--pod-egress-masquerade=false`.
    pub masquerade_sources: Vec<IpNet>,
    /// Destinations never masqueraded: pod CIDRs, node addresses, service CIDRs.
    pub cluster_destinations: Vec<IpNet>,
}

//! What the flags say about this node's network, resolved once and shared by every
//! controller: the underlay address override, the overlay and its overhead, the pod
//! MTU and the service CIDRs. (The Node's own addresses and pod CIDRs are read from
//! the cluster, by [`crate::node`].) No controller reads another controller's flags;
//! what more than one needs lives here.

use std::net::IpAddr;

use ipnet::IpNet;

/// When pod traffic to another node goes through an overlay tunnel (kube-router's
/// `--overlay-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OverlayType {
    /// Only to nodes in another subnet; same-subnet nodes get direct routes.
    #[default]
    Subnet,
    /// To every other node.
    Full,
    /// Never: direct routes only (cross-subnet needs routes on the underlay).
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OverlayEncap {
    #[default]
    Vxlan,
    Ipip,
}

impl OverlayEncap {
    /// Bytes of outer headers the overlay adds to each pod packet.
    pub fn overhead(self) -> u32 {
        match self {
            OverlayEncap::Vxlan => 50,
            OverlayEncap::Ipip => 20,
        }
    }
}

/// The flags that describe the node's network (shared by routing, CNI and proxy).
#[derive(Clone, Debug, clap::Args)]
pub struct NetworkArgs {
    /// This node's address on the underlay; else its Node's InternalIP.
    #[arg(long, env = "KUBEWIRE_NODE_IP")]
    pub node_ip: Option<IpAddr>,
    #[arg(long, env = "KUBEWIRE_OVERLAY_TYPE", value_enum, default_value_t = OverlayType::Subnet)]
    pub overlay_type: OverlayType,
    #[arg(long, env = "KUBEWIRE_OVERLAY_ENCAP", value_enum, default_value_t = OverlayEncap::Vxlan)]
    pub overlay_encap: OverlayEncap,
    /// The pod MTU; else the node interface's MTU minus the overlay overhead.
    #[arg(long, env = "KUBEWIRE_MTU")]
    pub mtu: Option<u32>,
    /// Service CIDRs (comma-separated) when the cluster has no ServiceCIDR objects.
    #[arg(
        long,
        env = "KUBEWIRE_SERVICE_CLUSTER_IP_RANGE",
        value_delimiter = ',',
        default_value = "10.96.0.0/12"
    )]
    pub service_cluster_ip_range: Vec<IpNet>,
}

impl NetworkArgs {
    pub fn config(&self) -> NetworkConfig {
        NetworkConfig {
            node_ip: self.node_ip,
            overlay_type: self.overlay_type,
            overlay_encap: self.overlay_encap,
            pod_mtu: self.mtu,
            service_cidrs: self.service_cluster_ip_range.clone(),
        }
    }
}

/// The node's network as the controllers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The underlay address to use instead of the Node's InternalIP.
    pub node_ip: Option<IpAddr>,
    pub overlay_type: OverlayType,
    pub overlay_encap: OverlayEncap,
    /// The pod MTU when set; else derived from the underlay MTU.
    pub pod_mtu: Option<u32>,
    /// Service CIDRs used when the cluster has no ServiceCIDR objects.
    pub service_cidrs: Vec<IpNet>,
}

impl NetworkConfig {
    /// The overlay's per-packet overhead when an overlay may carry pod traffic.
    pub fn overlay_overhead(&self) -> u32 {
        match self.overlay_type {
            OverlayType::None => 0,
            OverlayType::Subnet | OverlayType::Full => self.overlay_encap.overhead(),
        }
    }

    /// The pod MTU: `--mtu`, else the underlay's MTU minus the overlay overhead.
    pub fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        self.pod_mtu
            .unwrap_or_else(|| underlay_mtu.saturating_sub(self.overlay_overhead()))
    }
}

use std::net::IpAddr;

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

#[derive(Clone, Debug, clap::Args)]
pub struct RoutingArgs {
    /// This node's address on the underlay; else its Node's InternalIP.
    #[arg(long, env = "KUBEWIRE_NODE_IP")]
    pub node_ip: Option<IpAddr>,
    #[arg(long, env = "KUBEWIRE_OVERLAY_TYPE", value_enum, default_value_t = OverlayType::Subnet)]
    pub overlay_type: OverlayType,
    #[arg(long, env = "KUBEWIRE_OVERLAY_ENCAP", value_enum, default_value_t = OverlayEncap::Vxlan)]
    pub overlay_encap: OverlayEncap,
    /// Masquerade pod traffic that leaves the cluster to the node's address.
    #[arg(long, env = "KUBEWIRE_POD_EGRESS_MASQUERADE", default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_egress_masquerade: bool,
}

impl RoutingArgs {
    /// The overlay's per-packet overhead when an overlay may carry pod traffic.
    pub fn overlay_overhead(&self) -> u32 {
        match self.overlay_type {
            OverlayType::None => 0,
            OverlayType::Subnet | OverlayType::Full => self.overlay_encap.overhead(),
        }
    }
}

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyBackend {
    /// IPVS when the kernel has it, else nftables.
    #[default]
    Auto,
    Ipvs,
    Nftables,
}

/// Where NodePorts listen (kube-proxy's `--nodeport-addresses`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The node's primary IP of each family (its first InternalIP, else ExternalIP).
    #[default]
    Primary,
    /// Every address of the node within one of these CIDRs.
    Cidrs(Vec<IpNet>),
}

impl std::str::FromStr for NodePortAddresses {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim() == "primary" {
            return Ok(Self::Primary);
        }
        let cidrs = text
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|e| format!("{c:?}: {e} (expected `primary` or CIDRs)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Cidrs(cidrs))
    }
}

/// How Services are read into the service map: shared by the agent and the offline
/// `proxy plan` / `proxy trace`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServiceMapArgs {
    /// `primary` (the node's primary IPs) or comma-separated CIDRs: NodePorts listen on
    /// the node's addresses within them.
    #[arg(long, env = "KUBEWIRE_NODEPORT_ADDRESSES", default_value = "primary")]
    pub nodeport_addresses: NodePortAddresses,
    /// Masquerade every packet to a ClusterIP, not only those from outside the pod
    /// CIDRs.
    #[arg(long, env = "KUBEWIRE_MASQUERADE_ALL")]
    pub masquerade_all: bool,
}

/// The service proxy's own flags (service CIDRs are the node network's).
#[derive(Clone, Debug, clap::Args)]
pub struct ProxyArgs {
    #[arg(long, env = "KUBEWIRE_PROXY_BACKEND", value_enum, default_value_t = ProxyBackend::Auto)]
    pub proxy_backend: ProxyBackend,
    /// How long a removed endpoint's IPVS destination drains (weight 0) before it is
    /// deleted with connections still open (kube-router's flag).
    #[arg(long, env = "KUBEWIRE_IPVS_GRACEFUL_PERIOD", default_value = "30s", value_parser = crate::agent::parse_duration)]
    pub ipvs_graceful_period: Duration,
    #[command(flatten)]
    pub map: ServiceMapArgs,
    /// Where the proxy's health endpoint (`/healthz`, `/livez`) listens, as
    /// kube-proxy's; `off` to not listen.
    #[arg(
        long,
        env = "KUBEWIRE_HEALTHZ_BIND_ADDRESS",
        default_value = "0.0.0.0:10256"
    )]
    pub healthz_bind_address: BindAddress,
}

/// An `ADDRESS:PORT` to listen on, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

impl std::str::FromStr for BindAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Self(None));
        }
        text.parse()
            .map(|a| Self(Some(a)))
            .map_err(|e| format!("{text:?}: {e} (expected ADDRESS:PORT or off)"))
    }
}

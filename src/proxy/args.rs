use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyBackend {
    /// IPVS when the kernel has it, else nftables.
    #[default]
    Auto,
    Ipvs,
    Nftables,
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
}

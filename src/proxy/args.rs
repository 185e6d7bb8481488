#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyBackend {
    Ipvs,
    /// The default until the IPVS backend is built.
    #[default]
    Nftables,
}

#[derive(Clone, Debug, clap::Args)]
pub struct ProxyArgs {
    #[arg(long, env = "KUBEWIRE_PROXY_BACKEND", value_enum, default_value_t = ProxyBackend::Nftables)]
    pub proxy_backend: ProxyBackend,
    /// Service CIDRs (comma-separated) when the cluster has no ServiceCIDR objects.
    #[arg(
        long,
        env = "KUBEWIRE_SERVICE_CLUSTER_IP_RANGE",
        value_delimiter = ',',
        default_value = "10.96.0.0/12"
    )]
    pub service_cluster_ip_range: Vec<ipnet::IpNet>,
}

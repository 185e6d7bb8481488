#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyBackend {
    Ipvs,
    /// The default until the IPVS backend is built.
    #[default]
    Nftables,
}

/// The service proxy's own flags (service CIDRs are the node network's).
#[derive(Clone, Debug, clap::Args)]
pub struct ProxyArgs {
    #[arg(long, env = "KUBEWIRE_PROXY_BACKEND", value_enum, default_value_t = ProxyBackend::Nftables)]
    pub proxy_backend: ProxyBackend,
}

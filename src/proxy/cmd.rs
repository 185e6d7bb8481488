use crate::agent::{self, AgentArgs, ControllerKind};
use crate::cli::{ManifestsArg, OutputFormat};

#[derive(Debug, clap::Subcommand)]
pub enum ProxyCommand {
    /// Run the service proxy alone.
    Run(Box<AgentArgs>),
    /// The IPVS virtual/real servers and nftables rules this node would program.
    Plan(PlanArgs),
    /// What this node's proxy does to one packet.
    Trace(TraceArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    #[arg(long)]
    pub node: String,
    #[arg(long, value_enum, default_value_t = super::ProxyBackend::Ipvs)]
    pub backend: super::ProxyBackend,
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    #[arg(long)]
    pub node: String,
    #[arg(long)]
    pub from: std::net::IpAddr,
    #[arg(long)]
    pub to: std::net::IpAddr,
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: Vec<ipnet::IpNet>,
}

pub async fn dispatch(cmd: ProxyCommand) -> anyhow::Result<()> {
    match cmd {
        ProxyCommand::Run(args) => agent::run(*args, &[ControllerKind::Proxy]).await,
        ProxyCommand::Plan(_) | ProxyCommand::Trace(_) => {
            anyhow::bail!(
                "the proxy's offline verbs are not built yet (no issue has been filed for them)"
            )
        }
    }
}

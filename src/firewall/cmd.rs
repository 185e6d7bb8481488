use crate::agent::{self, AgentArgs, ControllerKind};
use crate::cli::{ManifestsArg, OutputFormat};

#[derive(Debug, clap::Subcommand)]
pub enum FirewallCommand {
    /// Run the firewall controller alone.
    Run(Box<AgentArgs>),
    /// The nftables ruleset this node would apply, as `nft -f` text.
    Plan(PlanArgs),
    /// The reachability the policies imply, for every ordered pair of pods.
    Matrix(MatrixArgs),
    /// The verdict for one connection and which policies and rules decided it.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    #[arg(long)]
    pub node: String,
    #[command(flatten)]
    pub firewall: super::FirewallArgs,
}

#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    /// NS/POD or an IP address.
    #[arg(long)]
    pub from: String,
    /// NS/POD or an IP address.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

pub async fn dispatch(cmd: FirewallCommand) -> anyhow::Result<()> {
    match cmd {
        FirewallCommand::Run(args) => agent::run(*args, &[ControllerKind::Firewall]).await,
        FirewallCommand::Plan(_) | FirewallCommand::Matrix(_) | FirewallCommand::Explain(_) => {
            anyhow::bail!("the firewall's offline verbs are not built yet (issue 4)")
        }
    }
}

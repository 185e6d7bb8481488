use crate::agent::{self, AgentArgs, ControllerKind};
use crate::cli::{ManifestsArg, OutputFormat};

#[derive(Debug, clap::Subcommand)]
pub enum RoutingCommand {
    /// Run the routing controller alone.
    Run(Box<AgentArgs>),
    /// The routes, tunnels and BGP paths this node would install and advertise.
    Plan(RoutingPlanArgs),
}

#[derive(Debug, clap::Args)]
pub struct RoutingPlanArgs {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    #[arg(long)]
    pub node: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    #[command(flatten)]
    pub routing: super::RoutingArgs,
}

pub async fn dispatch(cmd: RoutingCommand) -> anyhow::Result<()> {
    match cmd {
        RoutingCommand::Run(args) => agent::run(*args, &[ControllerKind::Routing]).await,
        RoutingCommand::Plan(_) => anyhow::bail!("`routing plan` is not built yet (issue 5)"),
    }
}

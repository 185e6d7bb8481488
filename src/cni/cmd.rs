use crate::agent::{self, AgentArgs, ControllerKind};
use crate::cli::ManifestsArg;

#[derive(Debug, clap::Subcommand)]
pub enum CniCommand {
    /// Run the CNI config controller alone.
    Run(Box<AgentArgs>),
    /// The conflist this node would write.
    Plan(PlanArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    #[arg(long)]
    pub node: String,
    #[command(flatten)]
    pub cni: super::CniArgs,
    #[command(flatten)]
    pub routing: crate::routing::RoutingArgs,
}

pub async fn dispatch(cmd: CniCommand) -> anyhow::Result<()> {
    match cmd {
        CniCommand::Run(args) => agent::run(*args, &[ControllerKind::Cni]).await,
        CniCommand::Plan(_) => anyhow::bail!("`cni plan` is not built yet (issue 2)"),
    }
}

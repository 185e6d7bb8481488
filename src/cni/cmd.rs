use crate::agent::{self, AgentArgs, ControllerKind};
use crate::cli::ManifestsArg;

#[derive(Debug, clap::Subcommand)]
pub enum CniCommand {
    /// Run the CNI config controller alone.
    Run(Box<AgentArgs>),
    /// The conflist this node would write (the node interface's MTU taken as 1500
    /// unless --mtu is given).
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
        CniCommand::Plan(args) => {
            print!("{}", plan(&args)?);
            Ok(())
        }
    }
}

/// The pretty conflist JSON for `kubewire cni plan`.
pub fn plan(args: &PlanArgs) -> anyhow::Result<String> {
    let snapshot = args.manifests.load()?;
    let conflist = super::compile::compile(
        &snapshot,
        &args.node,
        &args.cni,
        &args.routing,
        super::compile::DEFAULT_LINK_MTU,
    )?;
    Ok(String::from_utf8(conflist.to_bytes())?)
}

use crate::network::NetworkArgs;
use crate::offline::{self, NodeManifestsArg};

/// The CNI controller's offline verbs.
#[derive(Debug, clap::Subcommand)]
pub enum CniCommand {
    /// The conflist this node would write (the node interface's MTU taken as 1500
    /// unless --mtu is given).
    Plan(PlanArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: NodeManifestsArg,
    #[command(flatten)]
    pub cni: super::CniArgs,
    #[command(flatten)]
    pub network: NetworkArgs,
}

pub async fn dispatch(cmd: CniCommand) -> anyhow::Result<()> {
    match cmd {
        CniCommand::Plan(args) => offline::print(plan(&args)),
    }
}

/// The pretty conflist JSON for `kubewire cni plan`.
pub fn plan(args: &PlanArgs) -> anyhow::Result<String> {
    let snapshot = args.target.manifests.load()?;
    let conflist = super::compile::compile(
        &snapshot,
        &args.target.node,
        &args.cni.config(&args.network.config()),
        super::compile::DEFAULT_LINK_MTU,
    )?;
    Ok(String::from_utf8(conflist.to_bytes())?)
}

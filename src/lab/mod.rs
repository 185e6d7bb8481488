//! The lab: a real multi-node cluster network on this machine (network namespaces per
//! node and pod, an embedded API server, one agent per node).

pub mod apiserver;

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Only the embedded API server, in the foreground, seeded from manifests.
    Apiserver(apiserver::ApiServerArgs),
}

pub async fn dispatch(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Apiserver(args) => apiserver::run_foreground(args).await,
    }
}

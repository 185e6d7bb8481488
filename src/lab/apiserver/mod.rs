//! An embedded Kubernetes API server for the seven kinds kubewire watches.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ApiServerArgs {
    #[command(flatten)]
    pub manifests: crate::cli::ManifestsArg,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    pub kubeconfig_out: Option<PathBuf>,
    /// How many resourceVersions of watch history are kept (older ones get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    pub history: usize,
}

pub async fn run_foreground(_args: ApiServerArgs) -> anyhow::Result<()> {
    anyhow::bail!("the embedded API server is not built yet (issue 2)")
}

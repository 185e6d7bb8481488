//! An embedded Kubernetes API server for the seven kinds kubewire watches, which
//! kube-rs and kubectl reach over plain HTTP on 127.0.0.1 exactly as they reach
//! kube-apiserver: discovery, list (resourceVersion, label and field selectors,
//! limit/continue over a consistent snapshot), watch (resourceVersion, bookmarks,
//! timeoutSeconds, 410 `Expired` past the retained history), create / update / patch /
//! delete with resourceVersion conflicts, the `status` subresource of Pod, Service and
//! Node, and `Status` objects for every failure.
//!
//! [`store`] holds the objects and [`history`]; [`write`] gives the write verbs their
//! semantics; [`http`] routes requests ([`path`], [`params`], [`selector`]) and
//! [`watch`] streams events; [`discovery`], [`openapi`] and [`table`] are what kubectl
//! reads.
//!
//! Not served: graceful deletion (deletes are immediate; a Namespace takes its
//! contents with it at once), field ownership (server-side apply is a merge of the
//! applied configuration), deletecollection, ClusterIP allocation and defaulting
//! beyond what [`kubewire::cache::manifests::apply_defaults`] does, protobuf (but for
//! the Namespace kubectl's `create namespace` posts), and authentication.

mod discovery;
mod history;
mod http;
mod kubeconfig;
mod openapi;
mod params;
mod patch;
mod path;
mod protobuf;
mod resource;
mod selector;
mod server;
mod status;
mod store;
mod table;
mod validate;
mod watch;
mod write;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use history::{Event, EventType, ObjectKey};
pub use kubeconfig::{CONTEXT, kubeconfig, write_kubeconfig};
pub use server::{ApiServer, ApiServerConfig};
pub use status::ApiError;
pub use store::ApiState;

#[derive(Debug, clap::Args)]
pub struct ApiServerArgs {
    #[command(flatten)]
    pub manifests: kubewire::offline::ManifestsArg,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    pub kubeconfig_out: Option<PathBuf>,
    /// How many resourceVersions of watch history are kept (older ones get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    pub history: usize,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 60)]
    pub bookmark_interval: u64,
}

/// `kubewire lab apiserver`: serves the manifests until SIGTERM or Ctrl-C, printing
/// its URL on stdout.
pub async fn run_foreground(args: ApiServerArgs) -> anyhow::Result<()> {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    kubewire::telemetry::init_logging(&level, kubewire::telemetry::LogFormat::Text);
    let seed = kubewire::cache::manifests::load_objects(&args.manifests.manifests)?;
    let objects = seed.len();
    let server = ApiServer::start(ApiServerConfig {
        listen: args.listen,
        history: args.history,
        bookmark_interval: Duration::from_secs(args.bookmark_interval),
        seed,
    })
    .await?;
    release_freed_memory();
    if let Some(path) = &args.kubeconfig_out {
        write_kubeconfig(&server.url(), path)
            .map_err(|err| anyhow::anyhow!("writing the kubeconfig {}: {err}", path.display()))?;
    }
    tracing::info!(
        url = %server.url(),
        objects,
        kubeconfig = ?args.kubeconfig_out,
        "embedded API server ready"
    );
    println!("{}", server.url());
    wait_for_stop_signal().await?;
    tracing::info!("stopping the API server");
    server.shutdown().await;
    Ok(())
}

/// Hands the memory the manifest parse freed back to the system, so the resident size
/// is the store's, not the seed's peak.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        interrupted = tokio::signal::ctrl_c() => interrupted?,
    }
    Ok(())
}

//! The service proxy (a kube-proxy replacement): Services and EndpointSlices read into
//! one [`model::ServiceMap`] per node by [`services`], which [`trace`] decides single
//! packets from and [`nftables`] compiles into the `inet kubewire-proxy` table.
//! The IPVS backend is not built: choosing it is an error, never a silent fallback.

mod args;
pub mod cmd;
pub mod model;
pub mod nftables;
pub mod services;
pub mod trace;

use std::sync::Arc;

pub use args::{ProxyArgs, ProxyBackend};

use crate::agent::{AgentArgs, ControllerContext};
use crate::cache::Kind;

/// The kinds the proxy reads.
pub const KINDS: [Kind; 4] = [
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Node,
    Kind::ServiceCIDR,
];

/// The error for `--proxy-backend ipvs` / `proxy plan --backend ipvs`.
pub const IPVS_NOT_BUILT: &str = "the IPVS backend is not built in this kubewire; use the nftables backend (--proxy-backend=nftables)";

/// Runs the service proxy on this node until the agent stops.
pub async fn run_controller(ctx: ControllerContext) -> anyhow::Result<()> {
    if ctx.args.proxy.proxy_backend == ProxyBackend::Ipvs {
        anyhow::bail!(IPVS_NOT_BUILT);
    }
    for problem in crate::nft::enable_bridge_netfilter() {
        tracing::warn!(%problem, "bridge netfilter is unavailable: replies between pods on one bridge bypass the Service NAT");
    }
    let reconciler = Arc::new(tokio::sync::Mutex::new(nftables::apply::Reconciler::new(
        nftables::nft::ProxyNft::default(),
    )));
    let reported = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let node = ctx.node_name.clone();
    let default_cidrs = ctx.args.proxy.service_cluster_ip_range.clone();
    crate::agent::reconcile_loop(&ctx, &KINDS, move |snapshot, reason| {
        let (reconciler, reported, node, default_cidrs) = (
            reconciler.clone(),
            reported.clone(),
            node.clone(),
            default_cidrs.clone(),
        );
        async move {
            let map = services::build(&snapshot, &node, &default_cidrs);
            let (ruleset, problems) = nftables::compile::compile(&map);
            let mut errors = map.errors.clone();
            errors.extend(problems);
            report_bad_objects(&errors, &reported);
            let applied = reconciler.lock().await.sync(ruleset, reason).await?;
            if applied != nftables::apply::Applied::Nothing {
                tracing::debug!(?applied, ports = map.ports.len(), "service proxy updated");
            }
            Ok(())
        }
    })
    .await
}

/// Logs each problem once, when it first appears.
fn report_bad_objects(errors: &[String], reported: &std::sync::Mutex<Vec<String>>) {
    let Ok(mut reported) = reported.lock() else {
        return;
    };
    for error in errors.iter().filter(|e| !reported.contains(e)) {
        tracing::warn!(%error, "ignoring a bad object or field");
    }
    *reported = errors.to_vec();
}

/// Removes the proxy's nftables table (and nothing else; there are no IPVS services).
pub async fn cleanup(_args: &AgentArgs) -> anyhow::Result<()> {
    if nftables::nft::ProxyNft::default().delete_table().await? {
        tracing::info!(
            "deleted table {} {}",
            nftables::ruleset::FAMILY,
            nftables::ruleset::TABLE
        );
    }
    Ok(())
}

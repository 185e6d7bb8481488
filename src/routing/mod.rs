//! Pod networking across nodes: the node's bridge with the gateway of each of its
//! pod CIDRs, pod-CIDR routes to every other node (direct on a shared subnet, else
//! through a VXLAN or IPIP overlay), forwarding and pod egress masquerade.
//!
//! `model` is the desired state, `compile` builds it from the cluster (pure),
//! `diff` compares it with the kernel (pure), `apply` changes the kernel through the
//! `netlink` and `nft` adapters. Everything installed carries `proto 44`, so only
//! what this controller owns is ever changed or removed.

pub mod apply;
mod args;
pub mod bgp;
pub mod cmd;
pub mod compile;
pub mod diff;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod nodes;
pub mod ruleset;

use std::sync::Arc;

use anyhow::Context;

pub use args::{OverlayEncap, OverlayType, RoutingArgs};

use crate::agent::{AgentArgs, ControllerContext, SyncReason, reconcile_loop};
use crate::cache::Kind;
use apply::Reconciler;
use compile::CompileOptions;
use metrics::RoutingMetrics;

/// The kinds whose changes the routing controller follows.
pub const WATCHED_KINDS: [Kind; 2] = [Kind::Node, Kind::ServiceCIDR];

/// The compile settings from the agent's flags.
pub fn compile_options(args: &AgentArgs) -> CompileOptions {
    CompileOptions {
        routing: args.routing.clone(),
        service_cidrs: args.proxy.service_cluster_ip_range.clone(),
        mtu: args.cni.mtu,
    }
}

/// Keeps this node's routing in line with the cluster until the agent stops.
pub async fn run_controller(ctx: ControllerContext) -> anyhow::Result<()> {
    let metrics = RoutingMetrics::register(&ctx.metrics);
    let reconciler = Arc::new(tokio::sync::Mutex::new(
        Reconciler::connect(metrics).context("opening a netlink socket")?,
    ));
    let options = Arc::new(compile_options(&ctx.args));
    let node = ctx.node_name.clone();
    reconcile_loop(&ctx, &WATCHED_KINDS, move |snapshot, reason| {
        let (reconciler, options, node) = (reconciler.clone(), options.clone(), node.clone());
        async move {
            let report = reconciler
                .lock()
                .await
                .sync(&snapshot, &node, &options, reason)
                .await?;
            if report.changed_anything() {
                if reason == SyncReason::Periodic {
                    tracing::warn!(?report, "routing repaired changes made outside kubewire");
                } else {
                    tracing::info!(?report, ?reason, "routing updated the kernel");
                }
            }
            Ok(())
        }
    })
    .await
}

/// Removes the routes, tunnels, bridge (if ours) and nftables table this controller
/// created.
pub async fn cleanup(_args: &AgentArgs) -> anyhow::Result<()> {
    let netlink = netlink::Netlink::connect().context("opening a netlink socket")?;
    apply::cleanup(&netlink).await
}

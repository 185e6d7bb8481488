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

use anyhow::Context;

pub use args::RoutingArgs;

use crate::cache::{Kind, Snapshot};
use crate::runtime::{Controller, SyncReason, Synced};
use crate::telemetry::Metrics;
use apply::Reconciler;
use compile::CompileOptions;
use metrics::RoutingMetrics;

/// The kinds whose changes the routing controller follows.
pub const WATCHED_KINDS: [Kind; 2] = [Kind::Node, Kind::ServiceCIDR];

/// Keeps this node's bridge, routes, tunnels and routing table in line with the
/// cluster.
pub struct RoutingController {
    node: String,
    options: CompileOptions,
    reconciler: Reconciler,
}

impl RoutingController {
    pub fn new(node: String, options: CompileOptions, metrics: &Metrics) -> anyhow::Result<Self> {
        let reconciler = Reconciler::connect(RoutingMetrics::register(metrics))
            .context("opening a netlink socket")?;
        Ok(Self {
            node,
            options,
            reconciler,
        })
    }
}

impl Controller for RoutingController {
    fn name(&self) -> &'static str {
        "routing"
    }

    fn kinds(&self) -> &'static [Kind] {
        &WATCHED_KINDS
    }

    async fn sync(&mut self, snapshot: &Snapshot, reason: SyncReason) -> anyhow::Result<Synced> {
        let (report, problems) = self
            .reconciler
            .sync(snapshot, &self.node, &self.options, reason)
            .await?;
        if report.changed_anything() {
            if reason == SyncReason::Periodic {
                tracing::warn!(?report, "routing repaired changes made outside kubewire");
            } else {
                tracing::info!(?report, ?reason, "routing updated the kernel");
            }
        }
        Ok(Synced {
            bad_objects: problems.into_iter().map(nodes::bad_object).collect(),
        })
    }

    /// Removes the routes, tunnels, bridge (if ours) and nftables table this
    /// controller created.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        apply::cleanup(self.reconciler.netlink()).await
    }
}

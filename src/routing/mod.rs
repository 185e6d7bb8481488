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
pub mod bgp_controller;
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
use bgp_controller::{BgpConfig, BgpRouting};
use compile::CompileOptions;
use metrics::RoutingMetrics;

/// The kinds whose changes the routing controller follows.
pub const WATCHED_KINDS: [Kind; 2] = [Kind::Node, Kind::ServiceCIDR];
/// With BGP, also the Services whose IPs may be announced and their endpoints
/// (`externalTrafficPolicy: Local`).
pub const WATCHED_KINDS_BGP: [Kind; 4] = [
    Kind::Node,
    Kind::ServiceCIDR,
    Kind::Service,
    Kind::EndpointSlice,
];

/// Keeps this node's bridge, routes, tunnels and routing table in line with the
/// cluster.
pub struct RoutingController {
    node: String,
    options: CompileOptions,
    reconciler: Reconciler,
    bgp: Option<Box<BgpRouting>>,
}

impl RoutingController {
    pub fn new(node: String, options: CompileOptions, metrics: &Metrics) -> anyhow::Result<Self> {
        let reconciler = Reconciler::connect(RoutingMetrics::register(metrics))
            .context("opening a netlink socket")?;
        Ok(Self {
            node,
            options,
            reconciler,
            bgp: None,
        })
    }

    /// Runs the BGP speaker too (`--run-bgp`).
    pub fn with_bgp(mut self, config: Option<BgpConfig>, metrics: &Metrics) -> Self {
        self.bgp = config.map(|c| Box::new(BgpRouting::new(c, metrics)));
        self
    }

    /// A sync in BGP mode: the compiled plan drives the speaker, and the routes it
    /// learned join the plan before it is applied (so neither undoes the other).
    async fn sync_with_bgp(
        &mut self,
        snapshot: &Snapshot,
        reason: SyncReason,
    ) -> anyhow::Result<(apply::SyncReport, Vec<String>)> {
        let network = &self.options.network;
        let node_ips = compile::node_ips(snapshot, &self.node, network)?;
        let host = self.reconciler.host_facts(&node_ips).await?;
        let mut plan = compile::compile(snapshot, &self.node, &self.options, &host)?;
        let Some(bgp) = self.bgp.as_mut() else {
            anyhow::bail!("BGP is not configured");
        };
        let bgp_result = bgp.sync(snapshot, &plan, &network.service_cidrs).await;
        let report = {
            let learned = bgp.learned().lock().await;
            plan.routes.extend(learned.routes());
            self.reconciler.apply(&plan, reason).await?
        };
        let mut problems = plan.problems;
        problems.extend(bgp_result?);
        Ok((report, problems))
    }
}

impl Controller for RoutingController {
    fn name(&self) -> &'static str {
        "routing"
    }

    fn kinds(&self) -> &'static [Kind] {
        if self.bgp.is_some() {
            &WATCHED_KINDS_BGP
        } else {
            &WATCHED_KINDS
        }
    }

    async fn sync(&mut self, snapshot: &Snapshot, reason: SyncReason) -> anyhow::Result<Synced> {
        let (report, problems) = if self.bgp.is_some() {
            self.sync_with_bgp(snapshot, reason).await?
        } else {
            self.reconciler
                .sync(snapshot, &self.node, &self.options, reason)
                .await?
        };
        if report.changed_anything() {
            if reason == SyncReason::Periodic {
                tracing::warn!(?report, "routing repaired changes made outside kubewire");
            } else {
                tracing::info!(?report, ?reason, "routing updated the kernel");
            }
        }
        Ok(Synced {
            bad_objects: problems.into_iter().map(nodes::bad_object).collect(),
            resync_after: None,
        })
    }

    /// Removes the routes, tunnels, bridge (if ours) and nftables table this
    /// controller created.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        if let Some(bgp) = self.bgp.as_mut() {
            bgp.stop().await;
        }
        apply::cleanup(self.reconciler.netlink()).await
    }
}

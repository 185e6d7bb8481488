//! The NetworkPolicy firewall: policies compiled into one `inet kubewire` nftables
//! table of fixed chains, sets and verdict maps.
//!
//! [`policy`] and [`cluster`] read a snapshot into validated NetworkPolicy semantics;
//! [`evaluate`] is the reference decision for one connection (what `matrix` and
//! `explain` print); [`compile`] turns the same semantics into the [`model`] of one
//! node's table, [`render`] into transactions, and [`apply`] keeps the kernel equal
//! to it, sending them through [`kernel`] ([`crate::nft`], or [`netlink`] for set
//! elements).

pub mod apply;
mod args;
pub mod cluster;
pub mod cmd;
pub mod compile;
pub mod conformance;
pub mod evaluate;
pub mod explain;
pub mod input;
pub mod kernel;
pub mod matrix;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod policy;
pub mod render;
pub mod selector;

use std::sync::Arc;

pub use args::FirewallArgs;
pub use input::FirewallInput;

use crate::agent::{AgentArgs, ControllerContext};
use crate::cache::Kind;

/// The kinds the firewall reads.
pub const KINDS: [Kind; 4] = [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy, Kind::Node];

/// Runs the firewall on this node until the agent stops.
pub async fn run_controller(ctx: ControllerContext) -> anyhow::Result<()> {
    let options = compile::CompileOptions {
        node: ctx.node_name.clone(),
        default_deny: ctx.args.firewall.firewall_default_deny,
        log_group: ctx.args.firewall.firewall_log_group,
    };
    for problem in crate::nft::enable_bridge_netfilter() {
        tracing::warn!(%problem, "bridge netfilter is unavailable: traffic between pods on one bridge is not policed");
    }
    let metrics = metrics::FirewallMetrics::register(&ctx.metrics);
    let state = Arc::new(tokio::sync::Mutex::new(State {
        reader: input::InputReader::default(),
        compiler: compile::IncrementalCompiler::new(options),
        reconciler: apply::Reconciler::new(crate::nft::Nft::default(), metrics.clone()),
        reported: Vec::new(),
    }));
    crate::agent::reconcile_loop(&ctx, &KINDS, move |snapshot, reason| {
        let (state, metrics) = (state.clone(), metrics.clone());
        async move {
            let mut state = state.lock().await;
            let input = state.reader.read(&snapshot);
            report_bad_objects(&input.errors, &mut state.reported);
            metrics
                .bad_objects
                .set(i64::try_from(input.errors.len()).unwrap_or(i64::MAX));
            let desired = state.compiler.compile(input);
            let applied = state.reconciler.sync(desired, reason).await?;
            if let apply::Applied::Incremental { transaction } = &applied {
                tracing::debug!(
                    commands = transaction.commands.len(),
                    size = transaction.size(),
                    "firewall updated"
                );
            }
            Ok(())
        }
    })
    .await
}

/// What the controller keeps between syncs.
struct State {
    reader: input::InputReader,
    compiler: compile::IncrementalCompiler,
    reconciler: apply::Reconciler,
    /// Bad objects already logged.
    reported: Vec<String>,
}

/// Logs each bad object once, when it first appears.
fn report_bad_objects(errors: &[String], reported: &mut Vec<String>) {
    for error in errors.iter().filter(|e| !reported.contains(e)) {
        tracing::warn!(%error, "ignoring a bad object");
    }
    *reported = errors.to_vec();
}

/// Removes the firewall's nftables table (and nothing else).
pub async fn cleanup(_args: &AgentArgs) -> anyhow::Result<()> {
    if crate::nft::Nft::default()
        .delete_table(model::FAMILY, model::TABLE)
        .await?
    {
        tracing::info!("deleted table {} {}", model::FAMILY, model::TABLE);
    }
    Ok(())
}

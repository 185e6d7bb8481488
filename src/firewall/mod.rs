//! The NetworkPolicy firewall: policies compiled into one `inet kubewire` nftables
//! table of fixed chains, sets and verdict maps.
//!
//! [`policy`] and [`cluster`] read a snapshot into validated NetworkPolicy semantics;
//! [`evaluate`] is the reference decision for one connection (what `matrix` and
//! `explain` print); [`compile`] turns the same semantics into the [`model`] of one
//! node's table, [`render`] lowers it into an [`crate::nft`] table, and [`apply`]
//! keeps the kernel equal to it through the shared reconciler.

pub mod apply;
mod args;
pub mod cluster;
pub mod cmd;
pub mod compile;
pub mod conformance;
pub mod evaluate;
pub mod explain;
pub mod input;
pub mod matrix;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod render;
pub mod selector;

pub use args::FirewallArgs;
pub use input::FirewallInput;

use crate::cache::{Kind, Snapshot};
use crate::runtime::{Controller, SyncReason, Synced};
use crate::telemetry::Metrics;

/// The kinds the firewall reads.
pub const KINDS: [Kind; 4] = [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy, Kind::Node];

/// Keeps this node's `inet kubewire` table equal to what the policies compile to.
pub struct FirewallController {
    reader: input::InputReader,
    compiler: compile::IncrementalCompiler,
    reconciler: apply::Reconciler,
}

impl FirewallController {
    pub fn new(options: compile::CompileOptions, metrics: &Metrics) -> Self {
        crate::nft::NftMetrics::register(metrics);
        let metrics = metrics::FirewallMetrics::register(metrics);
        Self {
            reader: input::InputReader::default(),
            compiler: compile::IncrementalCompiler::new(options),
            reconciler: apply::Reconciler::new(crate::nft::Nft::default(), metrics),
        }
    }
}

impl Controller for FirewallController {
    fn name(&self) -> &'static str {
        "firewall"
    }

    fn kinds(&self) -> &'static [Kind] {
        &KINDS
    }

    async fn sync(&mut self, snapshot: &Snapshot, reason: SyncReason) -> anyhow::Result<Synced> {
        let input = self.reader.read(snapshot);
        let bad_objects = input.errors.clone();
        let desired = self.compiler.compile(input);
        let applied = self.reconciler.sync(desired, reason).await?;
        if let apply::Applied::Incremental { transaction } = &applied {
            tracing::debug!(
                commands = transaction.ops.len(),
                size = transaction.size(),
                "firewall updated"
            );
        }
        Ok(Synced {
            bad_objects,
            resync_after: self.reconciler.inner().retiring_in(),
        })
    }

    /// Removes the firewall's nftables table (and nothing else).
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        if crate::nft::Nft::default()
            .delete_table(model::FAMILY, model::TABLE)
            .await?
        {
            tracing::info!("deleted table {} {}", model::FAMILY, model::TABLE);
        }
        Ok(())
    }
}

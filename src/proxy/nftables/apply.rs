//! Keeps the kernel's `inet kubewire-proxy` table equal to the compiled ruleset
//! through the shared [`nft::Reconciler`]: it starts from the table the kernel holds,
//! applies element-level differences (over netlink when only elements change) and
//! checks for drift on the periodic sync.

use super::ruleset::{self, Lowering, Ruleset};
pub use crate::nft::Applied;
use crate::nft::{self, Backend, Kernel, Nft};
use crate::runtime::SyncReason;

pub struct Reconciler<B = Kernel> {
    inner: nft::Reconciler<B>,
    lowering: Lowering,
}

impl Reconciler<Kernel> {
    pub fn new(nft: Nft) -> Self {
        Self::with_backend(Kernel::new(nft))
    }
}

impl<B: Backend> Reconciler<B> {
    pub fn with_backend(backend: B) -> Self {
        Self {
            // An `endpoints-N` chain goes a second after the last Service with N
            // endpoints (see [`nft::reconcile::RETIRE_AFTER`]).
            inner: nft::Reconciler::new(backend, ruleset::table_id())
                .with_retire_after(nft::reconcile::RETIRE_AFTER),
            lowering: Lowering::default(),
        }
    }

    pub fn inner(&mut self) -> &mut nft::Reconciler<B> {
        &mut self.inner
    }

    /// Brings the kernel to `desired` (the IPVS glue, compiled whole).
    pub async fn sync(&mut self, desired: Ruleset, reason: SyncReason) -> anyhow::Result<Applied> {
        let table = self.lowering.lower(&desired);
        self.sync_table(&table, reason).await
    }

    /// Brings the kernel to `desired`, the table an
    /// [`super::incremental::Compiler`] keeps: what it shares with the last sync is
    /// not looked at.
    pub async fn sync_table(
        &mut self,
        desired: &nft::Table,
        reason: SyncReason,
    ) -> anyhow::Result<Applied> {
        Ok(self
            .inner
            .sync(desired, reason == SyncReason::Periodic)
            .await?)
    }
}

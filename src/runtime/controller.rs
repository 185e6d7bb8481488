use std::future::Future;

use super::BadObject;
use crate::cache::{Kind, Snapshot};

/// Why a sync runs; reconcilers use it to decide how hard to look for drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncReason {
    /// The first sync after start: compare with whatever the kernel has.
    Start,
    /// A watched kind changed.
    Change,
    /// Nothing changed for a sync period: check the kernel for drift.
    Periodic,
    /// The previous sync failed.
    Retry,
}

/// What one successful sync found wrong in the cluster's objects: each entry names an
/// object and the field the controller could not use (the object is skipped or fails
/// closed; everything else was applied). The runtime logs each once and counts them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub bad_objects: Vec<BadObject>,
    /// Sync again this soon even without a change (work left for later, such as
    /// deleting a chain the kernel may still see referenced).
    pub resync_after: Option<std::time::Duration>,
}

/// One controller: a pure compile from the snapshot and a reconcile of the kernel,
/// owned state and all (the runtime drives one sync at a time).
pub trait Controller: Send + 'static {
    /// The name in logs, metrics and /healthz.
    fn name(&self) -> &'static str;

    /// The kinds whose changes trigger a sync (the cache watches at least these).
    fn kinds(&self) -> &'static [Kind];

    /// Brings the kernel in line with `snapshot`. An error leaves the previous
    /// dataplane in place and is retried with backoff.
    fn sync(
        &mut self,
        snapshot: &Snapshot,
        reason: SyncReason,
    ) -> impl Future<Output = anyhow::Result<Synced>> + Send;

    /// Removes everything this controller created on the node, and nothing else.
    fn cleanup(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

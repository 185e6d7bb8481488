//! The loop every controller runs: wait for a change (or the periodic drift check),
//! take a snapshot, compile and apply; on failure retry with exponential backoff. The
//! kernel state is only ever replaced atomically by the controllers, so a failed
//! attempt leaves the previous dataplane in place.

use std::future::Future;
use std::time::{Duration, Instant};

use super::ControllerContext;
use crate::cache::{Kind, Snapshot};

/// Exponential backoff between failed syncs: 200 ms doubling up to 30 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(30);

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Runs `sync` once now and then after every change of `kinds` and every
/// `--sync-period`, forever. `sync` gets the snapshot and whether this run is the
/// periodic drift check rather than a cluster change.
pub async fn reconcile_loop<F, Fut>(
    ctx: &ControllerContext,
    kinds: &[Kind],
    mut sync: F,
) -> anyhow::Result<()>
where
    F: FnMut(Snapshot, SyncReason) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let metrics = ctx.metrics.controller(ctx.name);
    let mut changes = ctx.cache.subscribe(kinds);
    let mut backoff = Backoff::default();
    let mut reason = SyncReason::Start;
    loop {
        let started = Instant::now();
        match sync(ctx.cache.snapshot(), reason).await {
            Ok(()) => {
                metrics.observe_sync(started.elapsed());
                ctx.health.synced(ctx.name);
                backoff.reset();
                tracing::debug!(controller = ctx.name, ?reason, elapsed = ?started.elapsed(), "synced");
                reason = tokio::select! {
                    _ = changes.changed() => SyncReason::Change,
                    _ = tokio::time::sleep(ctx.args.common.sync_period) => SyncReason::Periodic,
                };
            }
            Err(err) => {
                metrics.sync_failed();
                let delay = backoff.next_delay();
                tracing::error!(controller = ctx.name, error = %format!("{err:#}"), retry_in = ?delay, "sync failed");
                tokio::time::sleep(delay).await;
                reason = SyncReason::Retry;
            }
        }
    }
}

/// Why a sync runs; reconcilers use it to decide how hard to look for drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncReason {
    Start,
    Change,
    Periodic,
    Retry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(200));
        assert_eq!(delays[1], Duration::from_millis(400));
        assert_eq!(delays[9], Duration::from_secs(30));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(200));
    }
}

use std::time::{Duration, Instant};

use super::{BadObjects, Controller, SyncReason};
use crate::cache::COALESCE_WINDOW;
use crate::cache::Cache;
use crate::telemetry::{Health, Metrics};

/// What every controller is run with: the shared cache and the agent's telemetry.
#[derive(Clone)]
pub struct Runtime {
    pub cache: Cache,
    pub metrics: Metrics,
    pub health: Health,
    /// How often a controller with no changes re-checks the kernel for drift.
    pub sync_period: Duration,
}

/// Runs `controller` until the task is dropped: a sync now, then one after every
/// change of its kinds and every sync period; a failed sync is retried with
/// exponential backoff and leaves the previous dataplane. A change when the last
/// sync began more than [`COALESCE_WINDOW`] ago is synced at once; changes that come
/// sooner are coalesced until a window after it began (at most one sync per window
/// in a burst).
pub async fn run<C: Controller>(mut controller: C, runtime: Runtime) -> anyhow::Result<()> {
    let name = controller.name();
    let metrics = runtime.metrics.controller(name);
    let mut changes = runtime.cache.subscribe(controller.kinds());
    let mut backoff = super::Backoff::default();
    let mut bad_objects = BadObjects::default();
    let mut reason = SyncReason::Start;
    loop {
        let started = Instant::now();
        let snapshot = runtime.cache.snapshot();
        match controller.sync(&snapshot, reason).await {
            Ok(synced) => {
                metrics.observe_sync(started.elapsed());
                runtime.health.synced(name);
                backoff.reset();
                let reported = bad_objects.update(&synced.bad_objects);
                for bad in &reported.new {
                    tracing::warn!(controller = name, kind = %bad.kind, reason = %bad.reason, error = %bad.message, "ignoring a bad object or field");
                }
                runtime.metrics.count_bad_objects(&reported);
                metrics.set_bad_objects(bad_objects.len());
                if reason == SyncReason::Start {
                    // SAFETY: malloc_trim only returns free heap pages to the kernel.
                    unsafe { libc::malloc_trim(0) };
                }
                tracing::debug!(controller = name, ?reason, elapsed = ?started.elapsed(), "synced");
                drop(snapshot);
                let follow_up = synced
                    .resync_after
                    .filter(|after| *after < runtime.sync_period);
                // Leading edge: a change after a quiet window syncs at once; one
                // that comes sooner (a burst) waits until a window after this
                // sync began, so a burst still costs one sync per window.
                let settle_until = tokio::time::Instant::from_std(started) + COALESCE_WINDOW;
                reason = tokio::select! {
                    _ = changes.changed_until(settle_until) => SyncReason::Change,
                    _ = tokio::time::sleep(follow_up.unwrap_or(runtime.sync_period)) => match follow_up {
                        // Left-over work, not a drift check: the kernel was just written.
                        Some(_) => SyncReason::Change,
                        None => SyncReason::Periodic,
                    },
                };
            }
            Err(err) => {
                metrics.sync_failed();
                let delay = backoff.next_delay();
                tracing::error!(controller = name, error = %format!("{err:#}"), retry_in = ?delay, "sync failed");
                drop(snapshot);
                tokio::time::sleep(delay).await;
                reason = SyncReason::Retry;
            }
        }
    }
}

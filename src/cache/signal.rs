//! Change signals: a generation counter per kind, bumped on every applied watch event.
//! A subscriber waits for any of its kinds to move and then lets a short burst settle,
//! so a hundred pod events become one controller sync.

use std::time::Duration;

use tokio::sync::watch;

use super::Kind;

/// How long a burst of events is allowed to settle before a controller syncs.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(50);

/// A controller's subscription to the kinds it reads.
pub struct Changes {
    receivers: Vec<(Kind, watch::Receiver<u64>)>,
}

impl Changes {
    pub(super) fn new(receivers: Vec<(Kind, watch::Receiver<u64>)>) -> Self {
        Self { receivers }
    }

    /// Waits until any subscribed kind changed since the last call, lets the burst
    /// settle, and returns the kinds that changed. Returns an empty list when the
    /// cache has been dropped.
    pub async fn changed(&mut self) -> Vec<Kind> {
        self.changed_settling(None).await
    }

    /// Like [`Self::changed`], but a burst settles only until `deadline`: a change
    /// that comes after it returns at once (how a controller that has been idle
    /// reacts to one isolated event without waiting out the window).
    pub async fn changed_until(&mut self, deadline: tokio::time::Instant) -> Vec<Kind> {
        self.changed_settling(Some(deadline)).await
    }

    async fn changed_settling(&mut self, deadline: Option<tokio::time::Instant>) -> Vec<Kind> {
        if self.receivers.is_empty() {
            return std::future::pending().await;
        }
        let waits = self
            .receivers
            .iter_mut()
            .map(|(_, rx)| Box::pin(rx.changed()));
        let (result, first, _) = futures::future::select_all(waits).await;
        if result.is_err() {
            return Vec::new();
        }
        let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + COALESCE_WINDOW);
        if until > tokio::time::Instant::now() {
            tokio::time::sleep_until(until).await;
        }
        // `changed()` already marked the first receiver seen.
        let mut kinds = self.take_changed();
        if !kinds.contains(&self.receivers[first].0) {
            kinds.push(self.receivers[first].0);
        }
        kinds.sort();
        kinds
    }

    /// Marks everything seen and returns the kinds that had moved.
    fn take_changed(&mut self) -> Vec<Kind> {
        let mut kinds = Vec::new();
        for (kind, rx) in &mut self.receivers {
            if rx.has_changed().unwrap_or(false) {
                rx.borrow_and_update();
                kinds.push(*kind);
            }
        }
        kinds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn coalesces_a_burst_into_one_wakeup() {
        let (pods, pods_rx) = watch::channel(0u64);
        let (nodes, nodes_rx) = watch::channel(0u64);
        let mut changes = Changes::new(vec![(Kind::Pod, pods_rx), (Kind::Node, nodes_rx)]);
        for i in 1..=100 {
            pods.send_replace(i);
        }
        nodes.send_replace(1);
        let kinds = changes.changed().await;
        assert_eq!(kinds, vec![Kind::Node, Kind::Pod]);
        let again = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
        assert!(again.is_err(), "no new change, no wakeup");
    }

    #[tokio::test]
    async fn settles_only_until_the_deadline() {
        let (pods, pods_rx) = watch::channel(0u64);
        let mut changes = Changes::new(vec![(Kind::Pod, pods_rx)]);
        pods.send_replace(1);
        let started = tokio::time::Instant::now();
        let kinds = changes.changed_until(started).await;
        assert_eq!(kinds, vec![Kind::Pod]);
        assert!(
            started.elapsed() < COALESCE_WINDOW,
            "a past deadline: at once"
        );
        pods.send_replace(2);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(30);
        changes.changed_until(deadline).await;
        assert!(
            tokio::time::Instant::now() >= deadline,
            "settled until the deadline"
        );
    }
}

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
        tokio::time::sleep(COALESCE_WINDOW).await;
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
}

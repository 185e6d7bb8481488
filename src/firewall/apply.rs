//! Keeps the kernel's `inet kubewire` table equal to the compiled ruleset through the
//! shared [`nft::Reconciler`] (which starts from what the kernel holds, applies
//! differences, sends element changes over netlink and checks for drift), and turns
//! the drop counters it reads on each periodic sync into per-policy metrics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::metrics::{FirewallMetrics, PolicyLabel};
use super::model::Ruleset;
use super::render::{self, Lowering};
use crate::nft::{self, Backend, Kernel, Kind, Nft, Transaction};
use crate::runtime::SyncReason;

/// What one sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    /// Created or replaced the table.
    Full {
        size: usize,
    },
    Incremental {
        transaction: Transaction,
    },
}

pub struct Reconciler<B = Kernel> {
    inner: nft::Reconciler<B>,
    lowering: Lowering,
    metrics: FirewallMetrics,
    /// Last counter values read, to turn them into monotonic metric increments.
    counter_values: BTreeMap<String, u64>,
    last_sync: SyncTimes,
}

/// Where the time of the last sync went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncTimes {
    /// Lowering the ruleset into the table (only what changed).
    pub diff: Duration,
    /// Diffing and sending it to the kernel until it was committed.
    pub kernel: Duration,
}

impl Reconciler<Kernel> {
    pub fn new(nft: Nft, metrics: FirewallMetrics) -> Self {
        Self::with_backend(Kernel::new(nft), metrics)
    }
}

impl<B: Backend> Reconciler<B> {
    pub fn with_backend(backend: B, metrics: FirewallMetrics) -> Self {
        Self {
            inner: nft::Reconciler::new(backend, render::table_id()).with_counters(),
            lowering: Lowering::default(),
            metrics,
            counter_values: BTreeMap::new(),
            last_sync: SyncTimes::default(),
        }
    }

    pub fn inner(&mut self) -> &mut nft::Reconciler<B> {
        &mut self.inner
    }

    /// Where the time of the last sync went.
    pub fn last_sync(&self) -> SyncTimes {
        self.last_sync
    }

    /// Brings the kernel to `desired`.
    pub async fn sync(&mut self, desired: Ruleset, reason: SyncReason) -> anyhow::Result<Applied> {
        let started = Instant::now();
        let table = self.lowering.lower(&desired);
        let lowered = Instant::now();
        let periodic = reason == SyncReason::Periodic;
        let applied = self.inner.sync(&table, periodic).await?;
        self.last_sync = SyncTimes {
            diff: lowered - started,
            kernel: lowered.elapsed(),
        };
        if periodic {
            self.count_drops(&desired);
        }
        self.metrics.observe_ruleset(&desired);
        Ok(match applied {
            nft::Applied::Nothing => Applied::Nothing,
            nft::Applied::Applied(tx) if tx.kind == Kind::Diff => {
                Applied::Incremental { transaction: tx }
            }
            nft::Applied::Applied(tx) => {
                // A new table starts its counters at zero.
                self.counter_values.clear();
                Applied::Full { size: tx.size() }
            }
        })
    }

    fn count_drops(&mut self, applied: &Ruleset) {
        for (name, packets) in self.inner.packets() {
            let last = self
                .counter_values
                .insert(name.clone(), *packets)
                .unwrap_or(0);
            let delta = if *packets >= last {
                packets - last
            } else {
                *packets
            };
            if delta == 0 {
                continue;
            }
            let Some(counter) = applied.counters.get(name) else {
                continue;
            };
            let direction = counter.direction.map_or("-", |d| d.as_str()).to_string();
            let policies = if counter.policies.is_empty() {
                vec!["-".to_string()]
            } else {
                counter.policies.clone()
            };
            for policy in policies {
                self.metrics
                    .drops
                    .get_or_create(&PolicyLabel {
                        policy,
                        direction: direction.clone(),
                    })
                    .inc_by(delta);
            }
        }
    }

    /// Forgets what the kernel holds: the next sync reads it back.
    pub fn invalidate(&mut self) {
        self.inner.invalidate();
    }
}

/// The table in an `nft -j list table inet kubewire` listing.
#[derive(Clone, Debug)]
pub struct Observed(pub nft::read::Observed);

impl Observed {
    pub fn from_json(listing: &Value) -> Self {
        Self(nft::read::observed(listing))
    }
}

/// How the listed table differs from `expected` (empty when equal: every chain,
/// rule and element). `_with_elements` is kept for callers; elements are always
/// compared.
pub fn differences(expected: &Ruleset, observed: &Observed, _with_elements: bool) -> Vec<String> {
    let id = render::table_id();
    nft::render::describe(&id, &observed.0.table, &render::table(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::model::{Chain, ChainKind};
    use crate::nft::{Fake, Rule};
    use std::sync::Arc;

    fn ruleset(rules: &[&str]) -> Ruleset {
        let mut r = Ruleset::default();
        r.chains.insert(
            "pod-ingress".into(),
            Arc::new(Chain {
                kind: ChainKind::Base { priority: 10 },
                rules: rules.iter().map(|s| s.to_string()).collect(),
            }),
        );
        r
    }

    #[tokio::test]
    async fn a_foreign_rule_is_repaired_on_the_periodic_sync() {
        let mut reconciler = Reconciler::with_backend(Fake::default(), FirewallMetrics::default());
        let desired = ruleset(&["counter accept"]);
        let first = reconciler
            .sync(desired.clone(), SyncReason::Change)
            .await
            .unwrap();
        assert!(matches!(first, Applied::Full { .. }));
        let id = render::table_id();
        reconciler.inner().backend().tamper(&id, |table| {
            let table = table.as_mut().unwrap();
            let chain = table.chains.get_mut("pod-ingress").unwrap();
            Arc::make_mut(chain)
                .rules
                .push(Rule::new("ip saddr 1.2.3.4 accept".into()));
        });
        // A change sync trusts what it applied; the periodic one looks.
        let change = reconciler
            .sync(desired.clone(), SyncReason::Change)
            .await
            .unwrap();
        assert_eq!(change, Applied::Nothing);
        let periodic = reconciler
            .sync(desired.clone(), SyncReason::Periodic)
            .await
            .unwrap();
        assert!(
            matches!(periodic, Applied::Incremental { .. }),
            "{periodic:?}"
        );
        assert_eq!(
            reconciler.inner().backend().tables[&id],
            render::table(&desired)
        );
        let again = reconciler
            .sync(desired, SyncReason::Periodic)
            .await
            .unwrap();
        assert_eq!(again, Applied::Nothing);
    }
}

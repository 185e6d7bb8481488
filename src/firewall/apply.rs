//! The reconciler: keeps the kernel's `inet kubewire` table equal to the compiled
//! ruleset. The first sync (and any sync after a failure or detected drift) replaces
//! the whole table in one atomic transaction; every other sync applies the minimal
//! difference from what was last applied, kept in memory, in one transaction. The
//! table is never read back on that path; the periodic sync checks it instead: every
//! time without set elements (cheap), and every [`FULL_CHECK_EVERY`]th time in full.
//! The periodic read also collects the drop counters for the metrics.
//!
//! Incremental transactions that only change set elements (every pod event) go over
//! one netlink socket kept open for the reconciler's life (see [`Kernel`]);
//! everything else through `nft -f`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::kernel::Kernel;
use super::metrics::{FirewallMetrics, PolicyLabel, TransactionLabel};
use super::model::{FAMILY, Ruleset, SetKind, TABLE};
use super::render::{self, Transaction};
use crate::nft::{Nft, NftError, listing_items};
use crate::runtime::SyncReason;

/// One periodic check in this many also compares set elements.
pub const FULL_CHECK_EVERY: u64 = 10;

/// What one sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    Full { size: usize },
    Incremental { transaction: Transaction },
}

pub struct Reconciler {
    kernel: Kernel,
    metrics: FirewallMetrics,
    /// What the kernel holds, as far as we know; `None` forces a full replacement.
    applied: Option<Ruleset>,
    periodic_checks: u64,
    /// Last counter values read, to turn them into monotonic metric increments.
    counter_values: BTreeMap<String, u64>,
    last_sync: SyncTimes,
}

/// Where the time of the last sync went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncTimes {
    /// Finding the difference from what was applied (or rendering the whole table).
    pub diff: Duration,
    /// Sending it to the kernel until it was committed.
    pub kernel: Duration,
}

impl Reconciler {
    pub fn new(nft: Nft, metrics: FirewallMetrics) -> Self {
        Self {
            kernel: Kernel::new(nft),
            metrics,
            applied: None,
            periodic_checks: 0,
            counter_values: BTreeMap::new(),
            last_sync: SyncTimes::default(),
        }
    }

    /// Where the time of the last sync went (the periodic check not included).
    pub fn last_sync(&self) -> SyncTimes {
        self.last_sync
    }

    /// Brings the kernel to `desired`. On error the next sync replaces the table.
    pub async fn sync(&mut self, desired: Ruleset, reason: SyncReason) -> anyhow::Result<Applied> {
        if reason == SyncReason::Periodic {
            self.check().await?;
        }
        let started = Instant::now();
        let incremental = match &self.applied {
            Some(applied) => render::diff(applied, &desired),
            None => None,
        };
        let mut diffed = Instant::now();
        let result = match incremental {
            Some(transaction) if transaction.is_empty() => Ok(Applied::Nothing),
            Some(transaction) => self
                .kernel
                .apply(&transaction)
                .await
                .map(|()| Applied::Incremental { transaction }),
            None => {
                let transaction = render::full(&desired);
                let size = transaction.size();
                let text = transaction.text();
                diffed = Instant::now();
                self.kernel
                    .nft()
                    .apply(&text)
                    .await
                    .map(|()| Applied::Full { size })
            }
        };
        self.last_sync = SyncTimes {
            diff: diffed - started,
            kernel: diffed.elapsed(),
        };
        match result {
            Ok(applied) => {
                let (kind, size) = match &applied {
                    Applied::Nothing => ("", 0),
                    Applied::Full { size } => {
                        // A new table starts its counters at zero.
                        self.counter_values.clear();
                        ("full", *size)
                    }
                    Applied::Incremental { transaction } => ("incremental", transaction.size()),
                };
                if !kind.is_empty() {
                    let label = TransactionLabel { kind: kind.into() };
                    self.metrics.transactions.get_or_create(&label).inc();
                    self.metrics
                        .transaction_size
                        .get_or_create(&label)
                        .observe(size as f64);
                }
                self.metrics.observe_ruleset(&desired);
                self.applied = Some(desired);
                Ok(applied)
            }
            Err(err) => {
                self.applied = None;
                Err(err.into())
            }
        }
    }

    /// Reads the table back, counts drops, and forgets what was applied when the table
    /// differs from it (so the sync that follows rewrites it).
    async fn check(&mut self) -> anyhow::Result<()> {
        let Some(applied) = self.applied.take() else {
            return Ok(());
        };
        self.periodic_checks += 1;
        let with_elements = self.periodic_checks.is_multiple_of(FULL_CHECK_EVERY);
        let listing = match self
            .kernel
            .nft()
            .list_table(FAMILY, TABLE, !with_elements)
            .await
        {
            Ok(listing) => listing,
            Err(NftError::NoTable { .. }) => {
                tracing::warn!("the kubewire nftables table is gone; recreating it");
                self.metrics.drift_repairs.inc();
                return Ok(());
            }
            Err(err) => {
                self.applied = Some(applied);
                return Err(err.into());
            }
        };
        let observed = Observed::from_json(&listing);
        self.count_drops(&applied, &observed);
        let differences = differences(&applied, &observed, with_elements);
        if differences.is_empty() {
            self.applied = Some(applied);
        } else {
            tracing::warn!(differences = ?differences, "the kubewire nftables table was changed by someone else; rewriting it");
            self.metrics.drift_repairs.inc();
        }
        Ok(())
    }

    fn count_drops(&mut self, applied: &Ruleset, observed: &Observed) {
        for (name, packets) in &observed.counters {
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

    /// Forgets the applied state: the next sync replaces the whole table.
    pub fn invalidate(&mut self) {
        self.applied = None;
    }
}

/// The parts of `nft -j list table` that drift detection compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Chain → the comment of each rule, in order.
    pub chains: BTreeMap<String, Vec<Option<String>>>,
    /// Set or map → its elements in our syntax (`None` in a terse listing).
    pub sets: BTreeMap<String, Option<Vec<String>>>,
    /// Counter → packets.
    pub counters: BTreeMap<String, u64>,
}

impl Observed {
    pub fn from_json(listing: &Value) -> Self {
        let mut observed = Observed::default();
        let items = listing_items(listing);
        for item in items {
            if let Some(chain) = item.get("chain") {
                if let Some(name) = chain.get("name").and_then(Value::as_str) {
                    observed.chains.entry(name.to_string()).or_default();
                }
            } else if let Some(rule) = item.get("rule") {
                if let Some(chain) = rule.get("chain").and_then(Value::as_str) {
                    let comment = rule
                        .get("comment")
                        .and_then(Value::as_str)
                        .map(String::from);
                    observed
                        .chains
                        .entry(chain.to_string())
                        .or_default()
                        .push(comment);
                }
            } else if let Some(set) = item.get("set").or_else(|| item.get("map")) {
                if let Some(name) = set.get("name").and_then(Value::as_str) {
                    let elements = set
                        .get("elem")
                        .and_then(Value::as_array)
                        .map(|elems| elems.iter().map(element_text).collect());
                    observed.sets.insert(name.to_string(), elements);
                }
            } else if let Some(counter) = item.get("counter")
                && let Some(name) = counter.get("name").and_then(Value::as_str)
            {
                let packets = counter.get("packets").and_then(Value::as_u64).unwrap_or(0);
                observed.counters.insert(name.to_string(), packets);
            }
        }
        // A terse listing of an empty set has no "elem" either; make it comparable.
        observed
    }
}

/// An element of `nft -j` output in the syntax the model uses, where it is simple
/// (addresses, verdict and counter map entries); a placeholder otherwise.
fn element_text(element: &Value) -> String {
    match element {
        Value::String(text) => text.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(pair) if pair.len() == 2 => {
            let value = match &pair[1] {
                Value::String(counter) => format!("\"{counter}\""),
                Value::Object(verdict) => match verdict.iter().next() {
                    Some((kind, target)) => match target.get("target").and_then(Value::as_str) {
                        Some(target) => format!("{kind} {target}"),
                        None => kind.clone(),
                    },
                    None => String::new(),
                },
                other => other.to_string(),
            };
            format!("{} : {value}", element_text(&pair[0]))
        }
        Value::Object(object) => match object.get("elem").and_then(|e| e.get("val")) {
            Some(value) => element_text(value),
            None => element.to_string(),
        },
        other => other.to_string(),
    }
}

/// How `observed` differs from `expected`; set elements are compared only when asked
/// and present, exactly for address sets and maps, by count for the others (nft
/// prints ranges and concatenations in its own normal form).
pub fn differences(expected: &Ruleset, observed: &Observed, with_elements: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (name, chain) in &expected.chains {
        let comments: Vec<Option<String>> = chain.rules.iter().map(|r| rule_comment(r)).collect();
        match observed.chains.get(name) {
            None => out.push(format!("chain {name} is missing")),
            Some(seen) if *seen != comments => out.push(format!(
                "chain {name} has {} rules (comments {seen:?}), expected {} ({comments:?})",
                seen.len(),
                comments.len()
            )),
            Some(_) => {}
        }
    }
    for name in observed
        .chains
        .keys()
        .filter(|n| !expected.chains.contains_key(*n))
    {
        out.push(format!("unexpected chain {name}"));
    }
    for (name, set) in &expected.sets {
        match observed.sets.get(name) {
            None => out.push(format!("set {name} is missing")),
            Some(Some(seen)) if with_elements => {
                let exact = matches!(
                    set.kind,
                    SetKind::Addr(_) | SetKind::Dispatch(_) | SetKind::CounterMap(_)
                );
                let mut expected_elements: Vec<String> =
                    set.elements.keys().map(|k| set.element(k)).collect();
                let mut seen = seen.clone();
                expected_elements.sort();
                seen.sort();
                if seen.len() != expected_elements.len() {
                    out.push(format!(
                        "set {name} has {} elements, expected {}",
                        seen.len(),
                        expected_elements.len()
                    ));
                } else if exact && seen != expected_elements {
                    let odd = seen.iter().find(|e| !expected_elements.contains(e));
                    out.push(format!(
                        "set {name} has unexpected element {}",
                        odd.map_or("?", |e| e.as_str())
                    ));
                }
            }
            Some(None) if with_elements && !set.elements.is_empty() => {
                out.push(format!(
                    "set {name} is empty, expected {} elements",
                    set.elements.len()
                ));
            }
            Some(_) => {}
        }
    }
    for name in observed
        .sets
        .keys()
        .filter(|n| !expected.sets.contains_key(*n))
    {
        out.push(format!("unexpected set {name}"));
    }
    for name in expected
        .counters
        .keys()
        .filter(|n| !observed.counters.contains_key(*n))
    {
        out.push(format!("counter {name} is missing"));
    }
    out
}

/// The `comment "..."` of a rule as the model writes it.
fn rule_comment(rule: &str) -> Option<String> {
    let start = rule.find(" comment \"")? + " comment \"".len();
    let end = rule[start..].find('"')?;
    Some(rule[start..start + end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::model::{Chain, ChainKind, Counter, Family, Members, Set};

    fn expected() -> Ruleset {
        let mut r = Ruleset::default();
        r.chains.insert(
            "ingress/x/p".into(),
            std::sync::Arc::new(Chain {
                kind: ChainKind::Policy,
                rules: vec!["ip saddr @pods4/p accept comment \"ingress[0]\"".into()],
            }),
        );
        r.sets.insert(
            "ingress-dispatch4".into(),
            std::sync::Arc::new(
                Set::new(SetKind::Dispatch(Family::V4), None, Members::Other).with_elements(
                    BTreeMap::from([("10.0.0.1".to_string(), "jump ingress/x/p".to_string())]),
                ),
            ),
        );
        r.counters.insert(
            "ingress-drops/x/p".into(),
            std::sync::Arc::new(Counter {
                direction: None,
                policies: vec!["x/p".into()],
            }),
        );
        r
    }

    fn listing(extra_rule: bool, verdict_target: &str) -> Value {
        let mut items = vec![
            serde_json::json!({"metainfo": {"version": "1.0.6"}}),
            serde_json::json!({"table": {"family": "inet", "name": "kubewire"}}),
            serde_json::json!({"counter": {"name": "ingress-drops/x/p", "packets": 7, "bytes": 420}}),
            serde_json::json!({"map": {"name": "ingress-dispatch4", "type": "ipv4_addr", "map": "verdict",
                "elem": [["10.0.0.1", {"jump": {"target": verdict_target}}]]}}),
            serde_json::json!({"chain": {"name": "ingress/x/p"}}),
            serde_json::json!({"rule": {"chain": "ingress/x/p", "expr": [], "comment": "ingress[0]"}}),
        ];
        if extra_rule {
            items.push(
                serde_json::json!({"rule": {"chain": "ingress/x/p", "expr": [{"accept": null}]}}),
            );
        }
        serde_json::json!({ "nftables": items })
    }

    #[test]
    fn unchanged_table_has_no_differences() {
        let observed = Observed::from_json(&listing(false, "ingress/x/p"));
        assert_eq!(observed.counters["ingress-drops/x/p"], 7);
        assert!(differences(&expected(), &observed, true).is_empty());
    }

    #[test]
    fn added_rules_and_changed_verdicts_are_drift() {
        let observed = Observed::from_json(&listing(true, "ingress/x/p"));
        assert_eq!(differences(&expected(), &observed, false).len(), 1);
        let observed = Observed::from_json(&listing(false, "elsewhere"));
        assert!(
            differences(&expected(), &observed, false).is_empty(),
            "cheap check skips elements"
        );
        assert_eq!(
            differences(&expected(), &observed, true),
            ["set ingress-dispatch4 has unexpected element 10.0.0.1 : jump elsewhere"]
        );
        let mut missing = Observed::from_json(&listing(false, "ingress/x/p"));
        missing.chains.clear();
        assert_eq!(
            differences(&expected(), &missing, false),
            ["chain ingress/x/p is missing"]
        );
    }
}

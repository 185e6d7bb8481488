//! Keeps the kernel's `inet kubewire-proxy` table equal to the compiled ruleset. The
//! first sync (and any after a failure or detected drift) replaces the whole table in
//! one transaction; every other sync applies the element-level difference from what
//! was last applied, kept in memory, in one transaction. The table is only read back
//! by the periodic sync: its chain names every time (cheap), and every
//! [`FULL_CHECK_EVERY`]th time a terse listing (rule counts and set names too), which
//! costs seconds with hundreds of thousands of elements.

use std::collections::BTreeMap;

use serde_json::Value;

use super::nft::ProxyNft;
use super::ruleset::{self, Ruleset};
use crate::nft::listing_items;
use crate::runtime::SyncReason;

/// One periodic check in this many also compares rule counts and sets.
pub const FULL_CHECK_EVERY: u64 = 10;

/// What one sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    Full { commands: usize },
    Incremental { commands: usize },
}

pub struct Reconciler {
    nft: ProxyNft,
    /// What the kernel holds, as far as we know; `None` forces a full replacement.
    applied: Option<Ruleset>,
    periodic_checks: u64,
}

impl Reconciler {
    pub fn new(nft: ProxyNft) -> Self {
        Self {
            nft,
            applied: None,
            periodic_checks: 0,
        }
    }

    /// Brings the kernel to `desired`. On error the next sync replaces the table.
    pub async fn sync(&mut self, desired: Ruleset, reason: SyncReason) -> anyhow::Result<Applied> {
        if reason == SyncReason::Periodic {
            self.check().await?;
        }
        let (transaction, full) = match self
            .applied
            .as_ref()
            .and_then(|a| ruleset::diff(a, &desired))
        {
            Some(t) if t.is_empty() => return Ok(Applied::Nothing),
            Some(t) => (t, false),
            None => (ruleset::full(&desired), true),
        };
        if let Err(err) = self.nft.apply(&transaction.text()).await {
            self.applied = None;
            return Err(err.into());
        }
        self.applied = Some(desired);
        let commands = transaction.commands.len();
        Ok(if full {
            Applied::Full { commands }
        } else {
            Applied::Incremental { commands }
        })
    }

    /// Forgets what was applied when the table is gone or its chains or sets differ.
    async fn check(&mut self) -> anyhow::Result<()> {
        let Some(applied) = self.applied.as_ref() else {
            return Ok(());
        };
        self.periodic_checks += 1;
        let differences = if self.periodic_checks.is_multiple_of(FULL_CHECK_EVERY) {
            match self.nft.list_terse().await? {
                None => vec!["the table is gone".to_string()],
                Some(listing) => differences(applied, &listing),
            }
        } else {
            chain_differences(applied, &self.nft.list_chains().await?)
        };
        if !differences.is_empty() {
            tracing::warn!(
                ?differences,
                "the kubewire-proxy nftables table was changed by someone else; rewriting it"
            );
            self.applied = None;
        }
        Ok(())
    }
}

/// Which of `expected`'s chains are missing from a `nft -j list chains` listing, and
/// which chains of our table are not expected.
pub fn chain_differences(expected: &Ruleset, listing: &Value) -> Vec<String> {
    let items = listing_items(listing);
    let present: Vec<&str> = items
        .iter()
        .filter_map(|item| item.get("chain"))
        .filter(|c| c.get("table").and_then(Value::as_str) == Some(ruleset::TABLE))
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let mut out: Vec<String> = expected
        .chains
        .keys()
        .filter(|n| !present.contains(&n.as_str()))
        .map(|n| format!("chain {n} is missing"))
        .collect();
    out.extend(
        present
            .iter()
            .filter(|n| !expected.chains.contains_key(**n))
            .map(|n| format!("unexpected chain {n}")),
    );
    out
}

/// How a terse `nft -j` listing differs from `expected` in chains, rule counts and
/// set names.
pub fn differences(expected: &Ruleset, listing: &Value) -> Vec<String> {
    let mut chains: BTreeMap<String, usize> = BTreeMap::new();
    let mut sets = Vec::new();
    let items = listing_items(listing);
    for item in items {
        if let Some(name) = item.pointer("/chain/name").and_then(Value::as_str) {
            chains.entry(name.to_string()).or_default();
        } else if let Some(chain) = item.pointer("/rule/chain").and_then(Value::as_str) {
            *chains.entry(chain.to_string()).or_default() += 1;
        } else if let Some(name) = item
            .pointer("/set/name")
            .or_else(|| item.pointer("/map/name"))
            .and_then(Value::as_str)
        {
            sets.push(name.to_string());
        }
    }
    let mut out = Vec::new();
    for (name, chain) in &expected.chains {
        match chains.get(name) {
            None => out.push(format!("chain {name} is missing")),
            Some(n) if *n != chain.rules.len() => out.push(format!(
                "chain {name} has {n} rules, expected {}",
                chain.rules.len()
            )),
            Some(_) => {}
        }
    }
    out.extend(
        chains
            .keys()
            .filter(|n| !expected.chains.contains_key(*n))
            .map(|n| format!("unexpected chain {n}")),
    );
    out.extend(
        expected
            .sets
            .keys()
            .filter(|n| !sets.contains(n))
            .map(|n| format!("set {n} is missing")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::nftables::ruleset::Chain;

    #[test]
    fn terse_listing_differences() {
        let mut expected = Ruleset::default();
        expected.chains.insert(
            "services".into(),
            Chain {
                base: None,
                rules: vec!["a".into(), "b".into()],
            },
        );
        expected
            .sets
            .insert("service-ips4".into(), Default::default());
        let listing = |rules: usize, extra: bool| {
            let mut items = vec![
                serde_json::json!({"map": {"name": "service-ips4"}}),
                serde_json::json!({"chain": {"name": "services"}}),
            ];
            for _ in 0..rules {
                items.push(serde_json::json!({"rule": {"chain": "services", "expr": []}}));
            }
            if extra {
                items.push(serde_json::json!({"chain": {"name": "intruder"}}));
            }
            serde_json::json!({ "nftables": items })
        };
        assert!(differences(&expected, &listing(2, false)).is_empty());
        let chains = serde_json::json!({"nftables": [
            {"chain": {"family": "inet", "table": "kubewire-proxy", "name": "intruder"}},
            {"chain": {"family": "inet", "table": "kubewire", "name": "services"}},
        ]});
        assert_eq!(
            chain_differences(&expected, &chains),
            ["chain services is missing", "unexpected chain intruder"]
        );
        assert_eq!(
            differences(&expected, &listing(3, true)),
            [
                "chain services has 3 rules, expected 2",
                "unexpected chain intruder"
            ]
        );
    }
}

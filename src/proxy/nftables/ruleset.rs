//! What [`super::compile`] produces for the `inet kubewire-proxy` table (sets, maps
//! and chains with their rules as `nft` text), and its lowering into the shared
//! [`nft::Table`], which renders, diffs and applies it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::nft::render::Script;
use crate::nft::{self, Hook, Table, TableId};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "kubewire-proxy";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
}

/// A set (`value` always `None`) or a map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Set {
    pub map: bool,
    /// What goes between the braces: `type ...; flags ...;`.
    pub declaration: String,
    /// Key → value (maps) or `None` (sets).
    pub elements: BTreeMap<String, Option<String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// `type nat hook prerouting priority dstnat; policy accept;` for base chains.
    pub base: Option<String>,
    pub rules: Vec<String>,
}

impl Ruleset {
    /// Number of set and map elements.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
}

/// `inet kubewire-proxy`.
pub fn table_id() -> TableId {
    TableId::new(FAMILY, TABLE)
}

/// An `nft -f` file that replaces (or creates) the table with `ruleset`, for printing.
pub fn full(ruleset: &Ruleset) -> Script {
    Script::replacing(&table_id(), &Lowering::default().lower(ruleset))
}

/// Lowers rulesets, keeping the last table and a fingerprint of each set's compiled
/// elements: a set whose elements did not change keeps its lowered form (one pass
/// over its text, no lookups), and a changed one is patched from its last form, so
/// only the shards it touched differ for the diff that follows.
#[derive(Default)]
pub struct Lowering {
    last: Table,
    fingerprints: BTreeMap<String, u64>,
}

impl Lowering {
    pub fn lower(&mut self, ruleset: &Ruleset) -> Table {
        let mut table = Table::default();
        let mut fingerprints = BTreeMap::new();
        for (name, set) in &ruleset.sets {
            let declared = nft::Set::new(set.map, &set.declaration, None);
            let fingerprint = elements_fingerprint(set);
            let old = self
                .last
                .sets
                .get(name)
                .filter(|old| old.id() == declared.id() && !old.interval());
            let lowered = match old {
                Some(old) if self.fingerprints.get(name) == Some(&fingerprint) => old.clone(),
                Some(old) => Arc::new(patched(old, set)),
                None => Arc::new(
                    declared.with_elements(
                        set.elements
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                            .collect::<nft::Elements>(),
                    ),
                ),
            };
            fingerprints.insert(name.clone(), fingerprint);
            table.sets.insert(name.clone(), lowered);
        }
        for (name, chain) in &ruleset.chains {
            let hook = chain.base.as_deref().and_then(Hook::parse);
            let lowered = nft::Chain::new(hook, chain.rules.iter().cloned());
            let reused = self.last.chains.get(name).filter(|old| ***old == lowered);
            table.chains.insert(
                name.clone(),
                reused.cloned().unwrap_or_else(|| Arc::new(lowered)),
            );
        }
        self.last = table.clone();
        self.fingerprints = fingerprints;
        table
    }
}

/// FNV-1a over a set's elements in order.
fn elements_fingerprint(set: &Set) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes.iter().chain(&[0]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (key, value) in &set.elements {
        feed(key.as_bytes());
        feed(value.as_deref().unwrap_or("").as_bytes());
    }
    hash
}

/// `old` with the elements of `set` (not an interval set): changed and new ones
/// inserted, gone ones removed.
fn patched(old: &nft::Set, set: &Set) -> nft::Set {
    let mut out = old.clone();
    let mut kept = 0;
    for (key, value) in &set.elements {
        let value = value.as_deref().unwrap_or("");
        match out.elements.get(key) {
            Some(current) if current == value => kept += 1,
            Some(_) => {
                kept += 1;
                out.elements.insert(key.clone(), value.to_string());
            }
            None => {
                out.elements.insert(key.clone(), value.to_string());
            }
        }
    }
    if kept < old.elements.len() {
        let gone: Vec<String> = old
            .elements
            .iter_unordered()
            .filter(|(key, _)| !set.elements.contains_key(*key))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            out.elements.remove(&key);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{Backend, Fake, Op};

    fn ruleset(elements: &[(&str, &str)], chains: &[&str]) -> Ruleset {
        let mut r = Ruleset::default();
        r.sets.insert(
            "m".into(),
            Set {
                map: true,
                declaration: "type ipv4_addr : verdict;".into(),
                elements: elements
                    .iter()
                    .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                    .collect(),
            },
        );
        r.chains.insert(
            "base".into(),
            Chain {
                base: Some("type nat hook prerouting priority dstnat; policy accept;".into()),
                rules: vec!["ip daddr vmap @m".into()],
            },
        );
        for chain in chains {
            r.chains.insert(
                chain.to_string(),
                Chain {
                    base: None,
                    rules: vec![format!("counter comment \"{chain}\"")],
                },
            );
        }
        r
    }

    #[tokio::test]
    async fn diffs_are_element_level_and_chains_come_and_go() {
        let id = table_id();
        let mut lowering = Lowering::default();
        let mut fake = Fake::default();
        let old = lowering.lower(&ruleset(
            &[("1.1.1.1", "goto a"), ("2.2.2.2", "goto a")],
            &["a"],
        ));
        fake.apply(&nft::render::create(&id, &old)).await.unwrap();
        let moved = lowering.lower(&ruleset(
            &[("1.1.1.1", "goto a"), ("4.4.4.4", "goto a")],
            &["a"],
        ));
        let tx = nft::render::diff(&id, &old, &moved).unwrap();
        assert!(tx.elements_only());
        assert_eq!(
            tx.text(),
            "delete element inet kubewire-proxy m { 2.2.2.2 }\nadd element inet kubewire-proxy m { 4.4.4.4 : goto a }\n"
        );
        fake.apply(&tx).await.unwrap();
        let grown = lowering.lower(&ruleset(
            &[("1.1.1.1", "goto b"), ("4.4.4.4", "goto a")],
            &["a", "b"],
        ));
        let tx = nft::render::diff(&id, &moved, &grown).unwrap();
        assert!(
            tx.ops
                .iter()
                .any(|op| matches!(op, Op::AddChain(n, None) if n == "b"))
        );
        fake.apply(&tx).await.unwrap();
        let shrunk = lowering.lower(&ruleset(&[("1.1.1.1", "goto b")], &["b"]));
        fake.apply(&nft::render::diff(&id, &grown, &shrunk).unwrap())
            .await
            .unwrap();
        assert_eq!(fake.tables[&id], shrunk);
    }

    #[test]
    fn a_patched_set_equals_a_fresh_one_and_shares_untouched_shards() {
        let big = |skip: usize, extra: &str| {
            let mut r = ruleset(&[], &[]);
            let set = r.sets.get_mut("m").unwrap();
            for i in (0..2000).filter(|i| *i != skip) {
                set.elements.insert(
                    format!("10.{}.{}.1", i / 250, i % 250),
                    Some("goto a".into()),
                );
            }
            set.elements.insert(extra.into(), Some("goto b".into()));
            r
        };
        let mut lowering = Lowering::default();
        let before = lowering.lower(&big(5, "1.1.1.1"));
        let after = lowering.lower(&big(7, "2.2.2.2"));
        assert_eq!(after, Lowering::default().lower(&big(7, "2.2.2.2")));
        let tx = nft::render::diff(&table_id(), &before, &after).unwrap();
        assert_eq!(tx.size(), 2 + 2 + 2, "{}", tx.text());
        assert!(Arc::ptr_eq(&before.chains["base"], &after.chains["base"]));
    }

    #[test]
    fn every_base_chain_of_the_compiled_tables_has_a_hook() {
        let map = crate::proxy::model::ServiceMap::default();
        for (ruleset, _) in [
            super::super::compile::compile(&map),
            super::super::compile::glue(&map),
        ] {
            for (name, chain) in &ruleset.chains {
                if let Some(base) = &chain.base {
                    assert!(Hook::parse(base).is_some(), "{name}: {base}");
                }
            }
        }
    }
}

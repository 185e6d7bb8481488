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

/// Lowers rulesets, keeping the last table: a set whose elements did not change
/// keeps its lowered form (a comparison, not a rebuild, per set).
#[derive(Default)]
pub struct Lowering {
    last: Table,
}

impl Lowering {
    pub fn lower(&mut self, ruleset: &Ruleset) -> Table {
        let mut table = Table::default();
        for (name, set) in &ruleset.sets {
            let declared = nft::Set::new(set.map, &set.declaration, None);
            let reused = self
                .last
                .sets
                .get(name)
                .filter(|old| old.id() == declared.id() && same_elements(old, set));
            let lowered = match reused {
                Some(old) => old.clone(),
                None => Arc::new(
                    declared.with_elements(
                        set.elements
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
                            .collect::<nft::Elements>(),
                    ),
                ),
            };
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
        table
    }
}

fn same_elements(lowered: &nft::Set, set: &Set) -> bool {
    if lowered.elements.len() != set.elements.len() || lowered.interval() {
        return false;
    }
    set.elements.iter().all(|(k, v)| {
        lowered.elements.get(k).map(String::as_str) == Some(v.as_deref().unwrap_or(""))
    })
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

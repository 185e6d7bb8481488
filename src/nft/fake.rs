//! An in-memory nf_tables: applies transactions with the kernel's checks that catch
//! a wrong order (a rule naming a set or chain that does not exist, deleting a chain
//! still referenced or not empty, deleting an element that is not there, adding one
//! with another value), all or nothing, and lists tables back. Reconcilers run on
//! it without root; tests change its tables behind the reconciler's back.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::backend::Backend;
use super::cli::NftError;
use super::model::{Chain, Counter, Table, TableId};
use super::read::Observed;
use super::render::{Op, Transaction};

#[derive(Clone, Debug, Default)]
pub struct Fake {
    pub tables: BTreeMap<TableId, Table>,
    pub packets: BTreeMap<String, u64>,
    generation: u32,
    /// Transactions applied (for tests to inspect).
    pub applied: Vec<Transaction>,
}

fn rejected(message: String) -> NftError {
    NftError::Failed {
        command: "fake nft".into(),
        stderr: message,
    }
}

impl Fake {
    /// Changes a table as someone else would (counts as a commit).
    pub fn tamper(&mut self, id: &TableId, change: impl FnOnce(&mut Option<Table>)) {
        let mut table = self.tables.remove(id);
        change(&mut table);
        if let Some(table) = table {
            self.tables.insert(id.clone(), table);
        }
        self.generation = self.generation.wrapping_add(1);
    }

    fn run(tables: &mut BTreeMap<TableId, Table>, tx: &Transaction) -> Result<(), String> {
        let id = &tx.table;
        for op in &tx.ops {
            if let Op::AddTable = op {
                tables.entry(id.clone()).or_default();
                continue;
            }
            if let Op::DeleteTable = op {
                tables.remove(id).ok_or("no such table")?;
                continue;
            }
            let table = tables.get_mut(id).ok_or("no such table")?;
            apply_op(table, op)?;
        }
        Ok(())
    }
}

/// Names a rule or element refers to: `@set` and `jump`/`goto chain`.
fn references(text: &str) -> (Vec<&str>, Vec<&str>) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let sets = words
        .iter()
        .filter_map(|w| w.strip_prefix('@'))
        .map(|w| w.trim_end_matches([',', ';']))
        .collect();
    let chains = words
        .windows(2)
        .filter(|w| w[0] == "jump" || w[0] == "goto")
        .map(|w| w[1])
        .collect();
    (sets, chains)
}

fn referenced_chain(table: &Table, name: &str) -> bool {
    let in_rules = table.chains.values().any(|c| {
        c.rules
            .iter()
            .any(|r| references(r.text()).1.contains(&name))
    });
    in_rules
        || table
            .sets
            .values()
            .any(|s| s.elements.values().any(|v| references(v).1.contains(&name)))
}

fn apply_op(table: &mut Table, op: &Op) -> Result<(), String> {
    match op {
        Op::AddTable | Op::DeleteTable => {}
        Op::AddCounter(name) => {
            table
                .counters
                .entry(name.clone())
                .or_insert(Arc::new(Counter));
        }
        Op::DeleteCounter(name) => {
            let quoted = format!("\"{name}\"");
            if table
                .sets
                .values()
                .any(|s| s.elements.values().any(|v| *v == quoted))
            {
                return Err(format!("counter {name} is in use"));
            }
            table.counters.remove(name).ok_or("no such counter")?;
        }
        Op::AddSet(name, set) => match table.sets.get(name) {
            Some(old) if old.id() != set.id() => return Err(format!("set {name} exists")),
            Some(_) => {}
            None => {
                let mut empty = (**set).clone();
                empty.elements = Default::default();
                table.sets.insert(name.clone(), Arc::new(empty));
            }
        },
        Op::DeleteSet(name, _) => {
            if table.chains.values().any(|c| {
                c.rules
                    .iter()
                    .any(|r| references(r.text()).0.contains(&name.as_str()))
            }) {
                return Err(format!("set {name} is in use"));
            }
            table.sets.remove(name).ok_or("no such set")?;
        }
        Op::AddChain(name, hook) => match table.chains.get(name) {
            Some(old) if old.hook != *hook => return Err(format!("chain {name} exists")),
            Some(_) => {}
            None => {
                table.chains.insert(
                    name.clone(),
                    Arc::new(Chain {
                        hook: hook.clone(),
                        rules: Vec::new(),
                    }),
                );
            }
        },
        Op::FlushChain(name) => {
            let chain = table.chains.get_mut(name).ok_or("no such chain")?;
            Arc::make_mut(chain).rules.clear();
        }
        Op::DeleteChain(name) => {
            let chain = table.chains.get(name).ok_or("no such chain")?;
            if !chain.rules.is_empty() || referenced_chain(table, name) {
                return Err(format!("chain {name} is busy"));
            }
            table.chains.remove(name);
        }
        Op::AddRule(chain, rule) => {
            let (sets, chains) = references(rule.text());
            if let Some(set) = sets.iter().find(|s| !table.sets.contains_key(**s)) {
                return Err(format!("rule names set {set}, which does not exist"));
            }
            if let Some(target) = chains.iter().find(|c| !table.chains.contains_key(**c)) {
                return Err(format!(
                    "rule jumps to chain {target}, which does not exist"
                ));
            }
            let chain = table.chains.get_mut(chain).ok_or("no such chain")?;
            Arc::make_mut(chain).rules.push(rule.clone());
        }
        Op::AddElements(_, name, elements) => {
            for (_, value) in elements {
                let (_, chains) = references(value);
                if let Some(target) = chains.iter().find(|c| !table.chains.contains_key(**c)) {
                    return Err(format!(
                        "element jumps to chain {target}, which does not exist"
                    ));
                }
                if let Some(counter) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'))
                    && !table.counters.contains_key(counter)
                {
                    return Err(format!("no counter {counter}"));
                }
            }
            let set = table.sets.get_mut(name).ok_or("no such set")?;
            let set = Arc::make_mut(set);
            for (key, value) in elements {
                match set.elements.get(key) {
                    Some(old) if old != value => {
                        return Err(format!("element {key} of {name} exists"));
                    }
                    _ => {
                        set.elements.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        Op::DeleteElements(_, name, keys) => {
            let set = table.sets.get_mut(name).ok_or("no such set")?;
            let set = Arc::make_mut(set);
            for key in keys {
                set.elements
                    .remove(key)
                    .ok_or_else(|| format!("no element {key} in {name}"))?;
            }
        }
    }
    Ok(())
}

impl Backend for Fake {
    async fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        let mut tables = self.tables.clone();
        Self::run(&mut tables, tx).map_err(rejected)?;
        self.tables = tables;
        self.generation = self.generation.wrapping_add(1);
        self.applied.push(tx.clone());
        Ok(())
    }

    async fn read(&mut self, table: &TableId) -> Result<Option<Observed>, NftError> {
        Ok(self.tables.get(table).map(|t| Observed {
            table: t.clone(),
            packets: self.packets.clone(),
        }))
    }

    async fn packets(&mut self, _: &TableId) -> Result<BTreeMap<String, u64>, NftError> {
        Ok(self.packets.clone())
    }

    async fn generation(&mut self) -> Result<u32, NftError> {
        Ok(self.generation)
    }
}

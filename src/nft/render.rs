//! Transactions on one table: creating it, replacing it, or the minimal change from
//! one [`Table`] to another (what the kernel holds, read back or remembered, to what
//! is wanted). A transaction is a list of [`Op`]s, rendered to one `nft -f` file or,
//! when it only changes elements, sent over netlink; either way atomic.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::Arc;

use super::model::{Chain, Elements, Hook, Objects, Rule, Set, Table, TableId};

/// Elements per `add element` command, to keep lines reasonable.
const ELEMENTS_PER_COMMAND: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddTable,
    DeleteTable,
    AddCounter(String),
    DeleteCounter(String),
    /// The declaration only; elements follow as [`Op::AddElements`].
    AddSet(String, Arc<Set>),
    DeleteSet(String, Arc<Set>),
    AddChain(String, Option<Hook>),
    FlushChain(String),
    DeleteChain(String),
    AddRule(String, Rule),
    /// (key, value) pairs of one set; its declaration says how to encode them.
    AddElements(Arc<Set>, String, Vec<(String, String)>),
    DeleteElements(Arc<Set>, String, Vec<String>),
}

/// What a transaction does, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Creates the table (there was none).
    Create,
    /// Deletes and re-creates it: counters and handles start again.
    Replace,
    /// Changes what differs.
    Diff,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Replace => "replace",
            Kind::Diff => "diff",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub table: TableId,
    pub kind: Kind,
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Ops plus elements: how much work the kernel is asked to do.
    pub fn size(&self) -> usize {
        self.ops
            .iter()
            .map(|op| {
                1 + match op {
                    Op::AddElements(_, _, e) => e.len(),
                    Op::DeleteElements(_, _, e) => e.len(),
                    _ => 0,
                }
            })
            .sum()
    }

    /// Whether it only adds and deletes elements.
    pub fn elements_only(&self) -> bool {
        self.ops
            .iter()
            .all(|op| matches!(op, Op::AddElements(..) | Op::DeleteElements(..)))
    }

    /// The `nft -f` file.
    pub fn text(&self) -> String {
        let t = &self.table;
        let mut out = String::new();
        for op in &self.ops {
            match op {
                Op::AddTable => {
                    let _ = writeln!(out, "add table {t}");
                }
                Op::DeleteTable => {
                    let _ = writeln!(out, "delete table {t}");
                }
                Op::AddCounter(name) => {
                    let _ = writeln!(out, "add counter {t} {name}");
                }
                Op::DeleteCounter(name) => {
                    let _ = writeln!(out, "delete counter {t} {name}");
                }
                Op::AddSet(name, set) => {
                    let _ = writeln!(
                        out,
                        "add {} {t} {name} {{ {}; comment \"{}\"; }}",
                        set.keyword(),
                        set.declaration,
                        set.kernel_comment()
                    );
                }
                Op::DeleteSet(name, set) => {
                    let _ = writeln!(out, "delete {} {t} {name}", set.keyword());
                }
                Op::AddChain(name, None) => {
                    let _ = writeln!(out, "add chain {t} {name}");
                }
                Op::AddChain(name, Some(hook)) => {
                    let _ = writeln!(out, "add chain {t} {name} {{ {hook} }}");
                }
                Op::FlushChain(name) => {
                    let _ = writeln!(out, "flush chain {t} {name}");
                }
                Op::DeleteChain(name) => {
                    let _ = writeln!(out, "delete chain {t} {name}");
                }
                Op::AddRule(chain, rule) => {
                    let _ = writeln!(out, "add rule {t} {chain} {}", rule.render());
                }
                Op::AddElements(set, name, elements) => {
                    for chunk in elements.chunks(ELEMENTS_PER_COMMAND) {
                        let text: Vec<String> = chunk
                            .iter()
                            .map(|(k, v)| {
                                if v.is_empty() || !set.map {
                                    k.clone()
                                } else {
                                    format!("{k} : {v}")
                                }
                            })
                            .collect();
                        let _ = writeln!(out, "add element {t} {name} {{ {} }}", text.join(", "));
                    }
                }
                Op::DeleteElements(_, name, keys) => {
                    for chunk in keys.chunks(ELEMENTS_PER_COMMAND) {
                        let _ =
                            writeln!(out, "delete element {t} {name} {{ {} }}", chunk.join(", "));
                    }
                }
            }
        }
        out
    }
}

/// Creates the table with everything in `table` (there is none yet).
pub fn create(id: &TableId, table: &Table) -> Transaction {
    let mut ops = vec![Op::AddTable];
    fill(&mut ops, table);
    Transaction {
        table: id.clone(),
        kind: Kind::Create,
        ops,
    }
}

/// Replaces whatever table is there with `table` in one transaction (`add` first so
/// that the delete cannot fail). Counters restart from zero: only for a change no
/// diff can make (a base chain's hook, a set's type).
pub fn replace(id: &TableId, table: &Table) -> Transaction {
    let mut ops = vec![Op::AddTable, Op::DeleteTable, Op::AddTable];
    fill(&mut ops, table);
    Transaction {
        table: id.clone(),
        kind: Kind::Replace,
        ops,
    }
}

/// Every object of `table` but the elements, in an order the kernel accepts:
/// counters, sets, chains, rules.
pub fn structure(table: &Table) -> Vec<Op> {
    let mut ops = Vec::new();
    fill_structure(&mut ops, table);
    ops
}

/// Every object of `table`, in an order the kernel accepts: counters, sets, chains,
/// rules, then elements (verdicts jump to chains, counter maps name counters).
fn fill(ops: &mut Vec<Op>, table: &Table) {
    fill_structure(ops, table);
    for (name, set) in &table.sets {
        if !set.elements.is_empty() && !set.dynamic() {
            // In no order: the kernel keeps its own, and sorting 100,000 keys is
            // a good part of building a full load.
            let elements = set
                .elements
                .iter_unordered()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            ops.push(Op::AddElements(set.clone(), name.clone(), elements));
        }
    }
}

fn fill_structure(ops: &mut Vec<Op>, table: &Table) {
    ops.extend(table.counters.keys().map(|n| Op::AddCounter(n.clone())));
    ops.extend(
        table
            .sets
            .iter()
            .map(|(n, s)| Op::AddSet(n.clone(), s.clone())),
    );
    for (name, chain) in &table.chains {
        ops.push(Op::AddChain(name.clone(), chain.hook.clone()));
    }
    for (name, chain) in &table.chains {
        ops.extend(
            chain
                .rules
                .iter()
                .map(|r| Op::AddRule(name.clone(), r.clone())),
        );
    }
}

/// The minimal transaction turning `old` (what the kernel holds) into `new`, or
/// `None` when only [`replace`] can (a base chain's hook or a set's declaration
/// changed). Looks only at what the two do not share, so a pod change costs what it
/// changed; against a table read back from the kernel it compares everything.
pub fn diff(id: &TableId, old: &Table, new: &Table) -> Option<Transaction> {
    let chains = differing(&old.chains, &new.chains);
    let sets = differing(&old.sets, &new.sets);
    let counters = differing(&old.counters, &new.counters);
    let redeclared = chains
        .iter()
        .any(|(_, old, new)| matches!((old, new), (Some(o), Some(n)) if o.hook != n.hook))
        || sets.iter().any(
            |(_, old, new)| matches!((old, new), (Some(o), Some(n)) if o.id() != n.id() || o.map != n.map),
        );
    if redeclared {
        return None;
    }
    let mut ops = Vec::new();
    // 1. New objects: counters, sets (empty), chains (empty).
    for (name, _) in added(&counters) {
        ops.push(Op::AddCounter(name.clone()));
    }
    for (name, _, new) in sets.iter().filter(|(_, old, _)| old.is_none()) {
        if let Some(set) = new {
            ops.push(Op::AddSet((*name).clone(), (*set).clone()));
        }
    }
    for (name, chain) in added(&chains) {
        ops.push(Op::AddChain(name.clone(), chain.hook.clone()));
    }
    // 2. Element deletes (a changed map value is a delete and an add).
    let empty = Elements::default();
    let changes: Vec<SetChanges> = sets
        .iter()
        .filter_map(|(name, old, new)| {
            let new = new.as_ref()?;
            if new.dynamic() {
                return None;
            }
            let changes = old.map_or(&empty, |o| &o.elements).changes(&new.elements);
            let changed = !changes.gone.is_empty() || !changes.added.is_empty();
            changed.then_some((*name, *new, changes.gone, changes.added))
        })
        .collect();
    for (name, set, gone, _) in &changes {
        if !gone.is_empty() {
            let keys = gone.iter().map(|k| (*k).clone()).collect();
            ops.push(Op::DeleteElements((*set).clone(), (*name).clone(), keys));
        }
    }
    // 3. Rules of new and changed chains.
    for (name, old_chain, new) in &chains {
        let Some(chain) = new else { continue };
        match old_chain {
            Some(previous) if previous.rules == chain.rules => continue,
            Some(_) => ops.push(Op::FlushChain((*name).clone())),
            None => {}
        }
        if chain
            .rules
            .iter()
            .any(|rule| names_existing_typeof(rule, old))
        {
            return None;
        }
        ops.extend(
            chain
                .rules
                .iter()
                .map(|r| Op::AddRule((*name).clone(), r.clone())),
        );
    }
    // 4. Element adds, now that every chain a verdict may jump to exists.
    for (name, set, _, added) in &changes {
        if !added.is_empty() {
            let elements = added
                .iter()
                .map(|(k, v)| ((*k).clone(), (*v).clone()))
                .collect();
            ops.push(Op::AddElements((*set).clone(), (*name).clone(), elements));
        }
    }
    // 5. Removed objects: chains emptied first (they may jump to each other and use
    //    sets), then sets and maps (whose elements may jump to chains), then the
    //    chains, then counters, which nothing references any more.
    let removed_chains: Vec<&String> = removed(&chains).map(|(name, _)| name).collect();
    for name in &removed_chains {
        ops.push(Op::FlushChain((*name).clone()));
    }
    for (name, old, new) in &sets {
        if let (Some(set), None) = (old, new) {
            ops.push(Op::DeleteSet((*name).clone(), (*set).clone()));
        }
    }
    for name in &removed_chains {
        ops.push(Op::DeleteChain((*name).clone()));
    }
    for (name, _) in removed(&counters) {
        ops.push(Op::DeleteCounter(name.clone()));
    }
    Some(Transaction {
        table: id.clone(),
        kind: Kind::Diff,
        ops,
    })
}

/// Whether `rule` names a set of `old` declared with `typeof`: nft 1.0.6 cannot add
/// such a rule to an existing table ("conflicting protocols specified: ip vs. th"
/// for a `typeof ... th dport` map), only create it with the set, so a replacement
/// is the only way (and trying first would cost a failed `nft -f` that reads the
/// whole table).
fn names_existing_typeof(rule: &Rule, old: &Table) -> bool {
    rule.text().split_whitespace().any(|word| {
        word.strip_prefix('@')
            .and_then(|name| old.sets.get(name))
            .is_some_and(|set| set.declaration.starts_with("typeof"))
    })
}

/// How `observed` differs from `expected`, in words, for the drift log line (at most
/// a few entries; empty when equal).
pub fn describe(id: &TableId, observed: &Table, expected: &Table) -> Vec<String> {
    let Some(tx) = diff(id, observed, expected) else {
        return vec!["a base chain's hook or a set's declaration differs".into()];
    };
    tx.ops
        .iter()
        .take(5)
        .map(|op| match op {
            Op::AddCounter(n) => format!("counter {n} is missing"),
            Op::DeleteCounter(n) => format!("unexpected counter {n}"),
            Op::AddSet(n, _) => format!("set {n} is missing"),
            Op::DeleteSet(n, _) => format!("unexpected set {n}"),
            Op::AddChain(n, _) => format!("chain {n} is missing"),
            Op::FlushChain(n) => format!("chain {n} has other rules"),
            Op::DeleteChain(n) => format!("unexpected chain {n}"),
            Op::AddRule(c, _) => format!("chain {c} lacks a rule"),
            Op::AddElements(_, n, e) => format!("set {n} lacks {} elements", e.len()),
            Op::DeleteElements(_, n, e) => format!("set {n} has {} other elements", e.len()),
            Op::AddTable | Op::DeleteTable => "the table".into(),
        })
        .collect()
}

/// A set's name, its new version, the keys gone and the elements added.
type SetChanges<'a> = (
    &'a String,
    &'a Arc<Set>,
    Vec<&'a String>,
    Vec<(&'a String, &'a String)>,
);

/// (name, old, new) of each object the two do not share, in name order; `None` on
/// the side that does not have it.
type Differing<'a, T> = Vec<(&'a String, Option<&'a Arc<T>>, Option<&'a Arc<T>>)>;

/// Walks both name orders side by side, skipping what they share.
fn differing<'a, T: PartialEq>(old: &'a Objects<T>, new: &'a Objects<T>) -> Differing<'a, T> {
    let mut out = Vec::new();
    if old.same(new) {
        return out;
    }
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => {
                if let Some((name, object)) = old.next() {
                    out.push((name, Some(object), None));
                }
            }
            Ordering::Greater => {
                if let Some((name, object)) = new.next() {
                    out.push((name, None, Some(object)));
                }
            }
            Ordering::Equal => {
                if let (Some((name, a)), Some((_, b))) = (old.next(), new.next())
                    && !Arc::ptr_eq(a, b)
                    && a != b
                {
                    out.push((name, Some(a), Some(b)));
                }
            }
        }
    }
    out
}

fn added<'a, T>(objects: &'a Differing<'a, T>) -> impl Iterator<Item = (&'a String, &'a T)> {
    objects
        .iter()
        .filter_map(|(name, old, new)| match (old, new) {
            (None, Some(new)) => Some((*name, new.as_ref())),
            _ => None,
        })
}

fn removed<'a, T>(objects: &'a Differing<'a, T>) -> impl Iterator<Item = (&'a String, &'a T)> {
    objects
        .iter()
        .filter_map(|(name, old, new)| match (old, new) {
            (Some(old), None) => Some((*name, old.as_ref())),
            _ => None,
        })
}

/// An `nft -f` file that replaces the table with its definition as `nft list` prints
/// one: for showing what a controller would load (and loading it by hand).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script(String);

impl Script {
    pub fn replacing(id: &TableId, table: &Table) -> Self {
        Self(format!(
            "table {id}\ndelete table {id}\n{}",
            table_text(id, table)
        ))
    }

    pub fn text(&self) -> String {
        self.0.clone()
    }
}

/// The table's definition as `nft list` prints one (our rule text, without
/// fingerprints), for showing a plan.
pub fn table_text(id: &TableId, table: &Table) -> String {
    let mut out = format!("table {id} {{\n");
    for name in table.counters.keys() {
        let _ = writeln!(out, "\tcounter {name} {{\n\t}}");
    }
    for (name, set) in &table.sets {
        let _ = writeln!(out, "\t{} {name} {{", set.keyword());
        for part in set
            .declaration
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let _ = writeln!(out, "\t\t{part}");
        }
        if let Some(comment) = &set.comment {
            let _ = writeln!(out, "\t\tcomment \"{comment}\"");
        }
        if !set.elements.is_empty() {
            let elements: Vec<String> = set.elements.keys().map(|k| set.element(k)).collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
        }
        out.push_str("\t}\n");
    }
    for (name, chain) in &table.chains {
        out.push_str(&chain_text(name, chain));
    }
    out.push_str("}\n");
    out
}

/// A chain's definition as text (`nft list`-like).
pub fn chain_text(name: &str, chain: &Chain) -> String {
    let mut out = format!("\tchain {name} {{\n");
    if let Some(hook) = &chain.hook {
        let _ = writeln!(out, "\t\t{hook}");
    }
    for rule in &chain.rules {
        let _ = writeln!(out, "\t\t{}", rule.text());
    }
    out.push_str("\t}\n");
    out
}

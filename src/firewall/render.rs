//! Rulesets as `nft -f` transactions: the whole table (replacing whatever is there,
//! atomically), or the minimal change from one ruleset to another (element adds and
//! deletes, changed chains flushed and refilled, objects added and removed in an
//! order the kernel accepts). Either is one file, so one atomic transaction.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::sync::Arc;

use super::model::{
    Chain, ChainKind, ElementChanges, Elements, FAMILY, Objects, Ruleset, Set, TABLE,
};
use super::netlink::ElementBatch;

/// One `nft -f` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    pub commands: Vec<Command>,
}

/// One command of a transaction, classified for metrics and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub kind: CommandKind,
    pub text: String,
    /// Elements added or deleted by this command.
    pub elements: usize,
    /// For element commands, the same change in structured form (for netlink).
    pub batch: Option<ElementBatch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CommandKind {
    /// Replaces the whole table.
    Table,
    AddObject,
    DeleteObject,
    /// Flushes or fills a chain.
    Rules,
    AddElements,
    DeleteElements,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The file to give to `nft -f`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for command in &self.commands {
            out.push_str(&command.text);
            out.push('\n');
        }
        out
    }

    /// Whether the transaction only adds or deletes set and map elements.
    pub fn elements_only(&self) -> bool {
        self.commands.iter().all(|c| {
            matches!(
                c.kind,
                CommandKind::AddElements | CommandKind::DeleteElements
            )
        })
    }

    /// Commands plus elements: how much work the kernel is asked to do.
    pub fn size(&self) -> usize {
        self.commands.iter().map(|c| 1 + c.elements).sum()
    }

    fn push(&mut self, kind: CommandKind, text: String, elements: usize) {
        self.commands.push(Command {
            kind,
            text,
            elements,
            batch: None,
        });
    }

    /// The element batches of an elements-only transaction, if netlink can send all.
    pub fn element_batches(&self) -> Option<Vec<ElementBatch>> {
        if !self.elements_only() {
            return None;
        }
        self.commands
            .iter()
            .map(|c| c.batch.clone().filter(ElementBatch::supported))
            .collect()
    }
}

fn table() -> String {
    format!("{FAMILY} {TABLE}")
}

/// Replaces the table with `ruleset` in one transaction: `add` (so `delete` cannot
/// fail), `delete`, then the whole definition. Counters restart from zero.
pub fn full(ruleset: &Ruleset) -> Transaction {
    let mut text = String::new();
    let _ = writeln!(text, "add table {}", table());
    let _ = writeln!(text, "delete table {}", table());
    let _ = writeln!(text, "table {} {{", table());
    for name in ruleset.counters.keys() {
        let _ = writeln!(text, "\tcounter {name} {{\n\t}}");
    }
    // Plain sets, then chains (policy, group, base), then the maps that jump to them.
    for (name, set) in ruleset.sets.iter().filter(|(_, s)| !s.kind.is_map()) {
        write_set(&mut text, name, set);
    }
    let mut chains: Vec<(&String, &Chain)> = ruleset
        .chains
        .iter()
        .map(|(n, c)| (n, c.as_ref()))
        .collect();
    chains.sort_by_key(|(name, chain)| (chain.kind, name.as_str()));
    for (name, chain) in chains
        .iter()
        .filter(|(_, c)| !matches!(c.kind, ChainKind::Base { .. }))
    {
        write_chain(&mut text, name, chain);
    }
    for (name, set) in ruleset.sets.iter().filter(|(_, s)| s.kind.is_map()) {
        write_set(&mut text, name, set);
    }
    for (name, chain) in chains
        .iter()
        .filter(|(_, c)| matches!(c.kind, ChainKind::Base { .. }))
    {
        write_chain(&mut text, name, chain);
    }
    text.push('}');
    let mut transaction = Transaction::default();
    transaction.push(CommandKind::Table, text, ruleset.element_count());
    transaction
}

fn write_set(out: &mut String, name: &str, set: &Set) {
    let keyword = if set.kind.is_map() { "map" } else { "set" };
    let _ = writeln!(out, "\t{keyword} {name} {{");
    let _ = writeln!(out, "\t\t{}", set.kind.declaration());
    if let Some(comment) = &set.comment {
        let _ = writeln!(out, "\t\tcomment \"{}\"", sanitize(comment));
    }
    if !set.elements.is_empty() {
        let elements: Vec<String> = set.elements.keys().map(|k| set.element(k)).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
    }
    let _ = writeln!(out, "\t}}");
}

fn write_chain(out: &mut String, name: &str, chain: &Chain) {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(hook) = hook(chain) {
        let _ = writeln!(out, "\t\t{hook}");
    }
    for rule in &chain.rules {
        let _ = writeln!(out, "\t\t{rule}");
    }
    let _ = writeln!(out, "\t}}");
}

fn hook(chain: &Chain) -> Option<String> {
    match chain.kind {
        ChainKind::Base { priority } => Some(format!(
            "type filter hook forward priority filter {} {}; policy accept;",
            if priority < 0 { '-' } else { '+' },
            priority.abs()
        )),
        _ => None,
    }
}

fn sanitize(comment: &str) -> String {
    let cleaned: String = comment
        .chars()
        .map(|c| if c == '"' { '\'' } else { c })
        .collect();
    // nft comments are limited to 128 bytes.
    let mut end = cleaned.len().min(120);
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    cleaned[..end].to_string()
}

/// The minimal transaction turning `old` (what the kernel has) into `new`, or `None`
/// when only a full replacement can do it (a base chain's hook changed). Looks only
/// at what the two do not share: a pod change costs what it changed.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Option<Transaction> {
    let t = table();
    let mut tx = Transaction::default();
    let chains = differing(&old.chains, &new.chains);
    let sets = differing(&old.sets, &new.sets);
    let counters = differing(&old.counters, &new.counters);
    let kind_changed = chains
        .iter()
        .any(|(_, old, new)| matches!((old, new), (Some(o), Some(n)) if o.kind != n.kind))
        || sets
            .iter()
            .any(|(_, old, new)| matches!((old, new), (Some(o), Some(n)) if o.kind != n.kind));
    if kind_changed {
        return None;
    }
    // 1. New objects: counters, sets (with their elements unless they are maps, which
    //    may point at chains that do not exist yet), chains (empty).
    for (name, _, _) in counters.iter().filter(|(_, old, _)| old.is_none()) {
        tx.push(CommandKind::AddObject, format!("add counter {t} {name}"), 0);
    }
    for (name, set) in added(&sets) {
        let keyword = if set.kind.is_map() { "map" } else { "set" };
        let mut body = set.kind.declaration();
        if let Some(comment) = &set.comment {
            let _ = write!(body, "; comment \"{}\"", sanitize(comment));
        }
        tx.push(
            CommandKind::AddObject,
            format!("add {keyword} {t} {name} {{ {body}; }}"),
            0,
        );
    }
    for (name, chain) in added(&chains) {
        let text = match hook(chain) {
            Some(hook) => format!("add chain {t} {name} {{ {hook} }}"),
            None => format!("add chain {t} {name}"),
        };
        tx.push(CommandKind::AddObject, text, 0);
    }
    // 2. Element deletes (a changed map value is a delete and an add).
    let empty = Elements::default();
    let changes: Vec<(&String, &Set, ElementChanges)> = sets
        .iter()
        .filter_map(|(name, old, new)| {
            let new = new.as_ref()?;
            let changes = old.map_or(&empty, |o| &o.elements).changes(&new.elements);
            let changed = !changes.gone.is_empty() || !changes.added.is_empty();
            changed.then_some((*name, new.as_ref(), changes))
        })
        .collect();
    for (name, set, changes) in &changes {
        let gone = &changes.gone;
        if !gone.is_empty() {
            tx.push(
                CommandKind::DeleteElements,
                format!("delete element {t} {name} {{ {} }}", join(gone)),
                gone.len(),
            );
            attach(
                &mut tx,
                name,
                set,
                true,
                gone.iter().map(|k| ((*k).clone(), String::new())).collect(),
            );
        }
    }
    // 3. Rules of new and changed chains.
    for (name, old, new) in &chains {
        let Some(chain) = new else { continue };
        match old {
            Some(previous) if previous.rules == chain.rules => continue,
            Some(_) => tx.push(CommandKind::Rules, format!("flush chain {t} {name}"), 0),
            None => {}
        }
        for rule in &chain.rules {
            tx.push(CommandKind::Rules, format!("add rule {t} {name} {rule}"), 0);
        }
    }
    // 4. Element adds, now that every chain a verdict may jump to exists.
    for (name, set, changes) in &changes {
        let added = &changes.added;
        if !added.is_empty() {
            let text: Vec<String> = added.iter().map(|(k, _)| set.element(k)).collect();
            tx.push(
                CommandKind::AddElements,
                format!("add element {t} {name} {{ {} }}", text.join(", ")),
                added.len(),
            );
            attach(
                &mut tx,
                name,
                set,
                false,
                added
                    .iter()
                    .map(|(k, v)| ((*k).clone(), (*v).clone()))
                    .collect(),
            );
        }
    }
    // 5. Removed objects: chains emptied first (they may jump to each other and use
    //    sets), then sets and maps (whose elements may jump to chains), then the
    //    chains, then counters, which nothing references any more.
    let removed_chains: Vec<&String> = removed(&chains).map(|(name, _)| name).collect();
    for name in &removed_chains {
        tx.push(
            CommandKind::DeleteObject,
            format!("flush chain {t} {name}"),
            0,
        );
    }
    for (name, set) in removed(&sets) {
        let keyword = if set.kind.is_map() { "map" } else { "set" };
        tx.push(
            CommandKind::DeleteObject,
            format!("delete {keyword} {t} {name}"),
            0,
        );
    }
    for name in &removed_chains {
        tx.push(
            CommandKind::DeleteObject,
            format!("delete chain {t} {name}"),
            0,
        );
    }
    for (name, _) in removed(&counters) {
        tx.push(
            CommandKind::DeleteObject,
            format!("delete counter {t} {name}"),
            0,
        );
    }
    Some(tx)
}

/// (name, old, new) of each object the two do not share, in name order; `None` on
/// the side that does not have it.
type Differing<'a, T> = Vec<(&'a String, Option<&'a Arc<T>>, Option<&'a Arc<T>>)>;

/// Walks both name orders side by side, skipping what they share.
fn differing<'a, T>(old: &'a Objects<T>, new: &'a Objects<T>) -> Differing<'a, T> {
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

/// Gives the last command its structured element batch.
fn attach(
    tx: &mut Transaction,
    name: &str,
    set: &Set,
    delete: bool,
    elements: Vec<(String, String)>,
) {
    if let Some(command) = tx.commands.last_mut() {
        command.batch = Some(ElementBatch {
            set: name.to_string(),
            kind: set.kind,
            delete,
            elements,
        });
    }
}

fn join(keys: &[&String]) -> String {
    keys.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::model::{Family, Members, SetKind};
    use std::collections::BTreeMap;

    fn ruleset(peers: &[&str], dispatch: &[(&str, &str)], extra_chain: bool) -> Ruleset {
        let mut r = Ruleset::default();
        r.sets.insert(
            "pods4/p".into(),
            std::sync::Arc::new(
                Set::new(
                    SetKind::Addr(Family::V4),
                    Some("pods app=a in namespace x".into()),
                    Members::Other,
                )
                .with_elements(
                    peers
                        .iter()
                        .map(|p| (p.to_string(), String::new()))
                        .collect::<Elements>(),
                ),
            ),
        );
        r.sets.insert(
            "ingress-dispatch4".into(),
            std::sync::Arc::new(
                Set::new(SetKind::Dispatch(Family::V4), None, Members::Other).with_elements(
                    dispatch
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
            ),
        );
        r.chains.insert(
            "ingress/x/p".into(),
            std::sync::Arc::new(Chain {
                kind: ChainKind::Policy,
                rules: vec!["ip saddr @pods4/p accept".into()],
            }),
        );
        if extra_chain {
            r.chains.insert(
                "ingress/x/q".into(),
                std::sync::Arc::new(Chain {
                    kind: ChainKind::Policy,
                    rules: vec!["tcp dport 80 accept".into()],
                }),
            );
        }
        r
    }

    #[test]
    fn a_label_change_is_an_element_change() {
        let old = ruleset(&["10.0.0.1"], &[("10.0.0.9", "jump ingress/x/p")], false);
        let new = ruleset(
            &["10.0.0.1", "10.0.0.2"],
            &[("10.0.0.9", "jump ingress/x/p")],
            false,
        );
        let tx = diff(&old, &new).unwrap();
        assert!(tx.elements_only());
        assert_eq!(
            tx.text(),
            "add element inet kubewire pods4/p { 10.0.0.2 }\n"
        );
        assert!(diff(&new, &new).unwrap().is_empty());
    }

    #[test]
    fn objects_are_added_before_use_and_removed_after() {
        let old = ruleset(&["10.0.0.1"], &[("10.0.0.9", "jump ingress/x/p")], false);
        let new = ruleset(&[], &[("10.0.0.9", "jump ingress/x/q")], true);
        assert_eq!(
            diff(&old, &new).unwrap().text(),
            "add chain inet kubewire ingress/x/q\n\
             delete element inet kubewire ingress-dispatch4 { 10.0.0.9 }\n\
             delete element inet kubewire pods4/p { 10.0.0.1 }\n\
             add rule inet kubewire ingress/x/q tcp dport 80 accept\n\
             add element inet kubewire ingress-dispatch4 { 10.0.0.9 : jump ingress/x/q }\n"
        );
        let back = diff(&new, &old).unwrap().text();
        assert!(back.ends_with(
            "flush chain inet kubewire ingress/x/q\ndelete chain inet kubewire ingress/x/q\n"
        ));
    }

    #[test]
    fn full_replaces_the_table() {
        let text = full(&ruleset(
            &["10.0.0.1"],
            &[("10.0.0.9", "jump ingress/x/p")],
            false,
        ))
        .text();
        assert!(text.starts_with(
            "add table inet kubewire\ndelete table inet kubewire\ntable inet kubewire {\n"
        ));
        assert!(text.contains("\tset pods4/p {\n\t\ttype ipv4_addr\n\t\tcomment \"pods app=a in namespace x\"\n\t\telements = { 10.0.0.1 }\n\t}\n"));
        assert!(text.contains("elements = { 10.0.0.9 : jump ingress/x/p }"));
    }
}

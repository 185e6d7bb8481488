//! The firewall's [`Ruleset`] as an [`nft::Table`]: base chains on the forward hook,
//! rules, sets and maps with their elements, drop counters. [`Lowering`] does it
//! incrementally: objects the compiler left untouched (the same `Arc`) keep their
//! lowered form, so a pod change lowers what it changed and the table diff that
//! follows looks at that alone.

use std::sync::Arc;

use super::model::{Chain, ChainKind, FAMILY, Objects, Ruleset, Set, TABLE};
use crate::nft::render::Script;
use crate::nft::{self, Table, TableId, Transaction};

/// `inet kubewire`.
pub fn table_id() -> TableId {
    TableId::new(FAMILY, TABLE)
}

/// The whole table for `ruleset`.
pub fn table(ruleset: &Ruleset) -> Table {
    Lowering::default().lower(ruleset)
}

/// An `nft -f` file that replaces (or creates) the table with `ruleset`, for
/// printing and for loading a table by hand.
pub fn full(ruleset: &Ruleset) -> Script {
    Script::replacing(&table_id(), &table(ruleset))
}

/// The change from `old` to `new`; `None` when only a replacement can make it.
pub fn diff(old: &Ruleset, new: &Ruleset) -> Option<Transaction> {
    let mut lowering = Lowering::default();
    let old_table = lowering.lower(old);
    let new_table = lowering.lower(new);
    nft::render::diff(&table_id(), &old_table, &new_table)
}

/// Remembers the last ruleset lowered and its table.
#[derive(Default)]
pub struct Lowering {
    last: Option<(Ruleset, Table)>,
}

impl Lowering {
    pub fn lower(&mut self, ruleset: &Ruleset) -> Table {
        let last = self.last.as_ref();
        let table = Table {
            chains: lower_objects(
                last.map(|(r, t)| (&r.chains, &t.chains)),
                &ruleset.chains,
                chain,
            ),
            sets: lower_objects(last.map(|(r, t)| (&r.sets, &t.sets)), &ruleset.sets, set),
            counters: lower_objects(
                last.map(|(r, t)| (&r.counters, &t.counters)),
                &ruleset.counters,
                |_| nft::Counter,
            ),
        };
        self.last = Some((ruleset.clone(), table.clone()));
        table
    }
}

/// `new` lowered, reusing what `last` (a ruleset's objects and their lowered form)
/// has for objects that are the very same.
fn lower_objects<F, T>(
    last: Option<(&Objects<F>, &Objects<T>)>,
    new: &Objects<F>,
    convert: impl Fn(&F) -> T,
) -> Objects<T> {
    let Some((old, lowered)) = last else {
        let mut out = Objects::default();
        for (name, object) in new {
            out.insert(name.clone(), Arc::new(convert(object)));
        }
        return out;
    };
    if old.same(new) {
        return lowered.clone();
    }
    let mut out = lowered.clone();
    let gone: Vec<String> = old
        .keys()
        .filter(|name| !new.contains_key(*name))
        .cloned()
        .collect();
    for name in gone {
        out.remove(&name);
    }
    for (name, object) in new {
        let same = old
            .get(name)
            .is_some_and(|previous| Arc::ptr_eq(previous, object));
        if !same || !out.contains_key(name) {
            out.insert(name.clone(), Arc::new(convert(object)));
        }
    }
    out
}

fn chain(chain: &Chain) -> nft::Chain {
    let hook = match chain.kind {
        ChainKind::Base { priority } => Some(nft::Hook::new("filter", "forward", priority)),
        _ => None,
    };
    nft::Chain::new(hook, chain.rules.iter().cloned())
}

fn set(set: &Set) -> nft::Set {
    nft::Set::new(
        set.kind.is_map(),
        &set.kind.declaration(),
        set.comment.clone(),
    )
    .with_elements(set.elements.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::model::{Counter, Elements, Family, Members, SetKind};
    use crate::nft::{Backend, Fake, Op};

    fn ruleset(peers: &[&str], dispatch: &[(&str, &str)], extra_chain: bool) -> Ruleset {
        let mut r = Ruleset::default();
        r.sets.insert(
            "pods4/p".into(),
            Arc::new(
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
            Arc::new(
                Set::new(SetKind::Dispatch(Family::V4), None, Members::Other).with_elements(
                    dispatch
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<Elements>(),
                ),
            ),
        );
        r.sets.insert(
            "block4".into(),
            Arc::new(
                Set::new(SetKind::Interval(Family::V4), None, Members::Other).with_elements(
                    Elements::from_iter([("10.0.0.0-10.0.0.255".to_string(), String::new())]),
                ),
            ),
        );
        r.counters.insert(
            "ingress-drops".into(),
            Arc::new(Counter {
                direction: None,
                policies: vec![],
            }),
        );
        r.chains.insert(
            "ingress/x/p".into(),
            Arc::new(Chain {
                kind: ChainKind::Policy,
                rules: vec!["ip saddr @pods4/p accept comment \"ingress[0]\"".into()],
            }),
        );
        r.chains.insert(
            "pod-ingress".into(),
            Arc::new(Chain {
                kind: ChainKind::Base { priority: 10 },
                rules: vec!["ip daddr vmap @ingress-dispatch4".into()],
            }),
        );
        if extra_chain {
            r.chains.insert(
                "ingress/x/q".into(),
                Arc::new(Chain {
                    kind: ChainKind::Policy,
                    rules: vec!["ip saddr @block4 accept".into()],
                }),
            );
        }
        r
    }

    #[tokio::test]
    async fn lowered_rulesets_apply_and_diff_on_the_fake() {
        let id = table_id();
        let mut fake = Fake::default();
        let one = ruleset(&["10.0.0.1"], &[("10.0.1.1", "jump ingress/x/p")], false);
        fake.apply(&nft::render::create(&id, &table(&one)))
            .await
            .unwrap();
        let two = ruleset(&["10.0.0.2"], &[("10.0.1.1", "jump ingress/x/q")], true);
        let tx = diff(&one, &two).unwrap();
        fake.apply(&tx).await.unwrap();
        assert_eq!(fake.tables[&id], table(&two));
        assert!(
            tx.ops
                .iter()
                .any(|op| matches!(op, Op::AddChain(n, None) if n == "ingress/x/q"))
        );
        // The interval element is kept in the kernel's form.
        assert!(
            fake.tables[&id].sets["block4"]
                .elements
                .contains_key("10.0.0.0/24")
        );
        // And back: the chain goes after the element that jumps to it.
        let back = diff(&two, &one).unwrap();
        fake.apply(&back).await.unwrap();
        assert_eq!(fake.tables[&id], table(&one));
    }

    #[test]
    fn lowering_reuses_untouched_objects() {
        let one = ruleset(&["10.0.0.1"], &[], false);
        let mut two = one.clone();
        let set = two.sets.get_mut("pods4/p").unwrap();
        Arc::make_mut(set)
            .elements
            .insert("10.0.0.9".into(), String::new());
        let mut lowering = Lowering::default();
        let a = lowering.lower(&one);
        let b = lowering.lower(&two);
        assert!(Arc::ptr_eq(
            &a.sets["ingress-dispatch4"],
            &b.sets["ingress-dispatch4"]
        ));
        let tx = nft::render::diff(&table_id(), &a, &b).unwrap();
        assert_eq!(tx.ops.len(), 1);
        assert!(tx.elements_only());
        assert_eq!(b, table(&two));
    }
}

//! The desired `inet kubewire-proxy` table as data (sets, maps and chains with their
//! rules as `nft` text), and its rendering into `nft -f` transactions: a full one
//! that replaces the table atomically, and the element-level difference between two
//! rulesets (chains and set declarations only change when the layout does).

use std::collections::BTreeMap;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "kubewire-proxy";

/// Elements per `add element` command, to keep single lines reasonable.
const ELEMENTS_PER_COMMAND: usize = 1000;

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

impl Set {
    fn keyword(&self) -> &'static str {
        if self.map { "map" } else { "set" }
    }

    fn element(key: &str, value: &Option<String>) -> String {
        match value {
            Some(value) => format!("{key} : {value}"),
            None => key.to_string(),
        }
    }
}

impl Ruleset {
    /// Number of set and map elements.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
}

/// An `nft -f` transaction: applied entirely or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    pub commands: Vec<String>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn text(&self) -> String {
        let mut text = self.commands.join("\n");
        text.push('\n');
        text
    }
}

fn add_elements(out: &mut Vec<String>, verb: &str, name: &str, elements: &[String]) {
    for chunk in elements.chunks(ELEMENTS_PER_COMMAND) {
        out.push(format!(
            "{verb} element {FAMILY} {TABLE} {name} {{ {} }}",
            chunk.join(", ")
        ));
    }
}

/// The transaction that replaces the whole table with `ruleset` (creating it first so
/// that the delete cannot fail): sets, then chains with their rules, then elements.
pub fn full(ruleset: &Ruleset) -> Transaction {
    let mut commands = vec![
        format!("table {FAMILY} {TABLE}"),
        format!("delete table {FAMILY} {TABLE}"),
    ];
    let mut body = format!("table {FAMILY} {TABLE} {{\n");
    for (name, set) in &ruleset.sets {
        body.push_str(&format!(
            "  {} {name} {{ {} }}\n",
            set.keyword(),
            set.declaration
        ));
    }
    for (name, chain) in &ruleset.chains {
        body.push_str(&format!("  chain {name} {{\n"));
        if let Some(base) = &chain.base {
            body.push_str(&format!("    {base}\n"));
        }
        for rule in &chain.rules {
            body.push_str(&format!("    {rule}\n"));
        }
        body.push_str("  }\n");
    }
    body.push('}');
    commands.push(body);
    for (name, set) in &ruleset.sets {
        let elements: Vec<String> = set
            .elements
            .iter()
            .map(|(k, v)| Set::element(k, v))
            .collect();
        add_elements(&mut commands, "add", name, &elements);
    }
    Transaction { commands }
}

/// The transaction that turns `applied` into `desired` element by element; `None`
/// when a chain was added or its rules or a set declaration changed (then the table
/// is replaced: nft 1.0.6 cannot add a rule that looks up an existing `typeof ... th
/// dport` map, "conflicting protocols specified: ip vs. th"). Chains and sets that are
/// no longer wanted are deleted after their elements.
pub fn diff(applied: &Ruleset, desired: &Ruleset) -> Option<Transaction> {
    for (name, set) in &desired.sets {
        if let Some(old) = applied.sets.get(name)
            && (old.declaration != set.declaration || old.map != set.map)
        {
            return None;
        }
    }
    for (name, chain) in &desired.chains {
        if applied.chains.get(name) != Some(chain) {
            return None;
        }
    }
    let mut commands = Vec::new();
    for (name, set) in &desired.sets {
        if !applied.sets.contains_key(name) {
            commands.push(format!(
                "add {} {FAMILY} {TABLE} {name} {{ {} }}",
                set.keyword(),
                set.declaration
            ));
        }
    }
    let empty = BTreeMap::new();
    for (name, set) in &desired.sets {
        let old = applied.sets.get(name).map_or(&empty, |s| &s.elements);
        let removed: Vec<String> = old
            .iter()
            .filter(|(k, v)| set.elements.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        add_elements(&mut commands, "delete", name, &removed);
    }
    for (name, set) in &desired.sets {
        let old = applied.sets.get(name).map_or(&empty, |s| &s.elements);
        let added: Vec<String> = set
            .elements
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, v)| Set::element(k, v))
            .collect();
        add_elements(&mut commands, "add", name, &added);
    }
    for name in applied.chains.keys() {
        if !desired.chains.contains_key(name) {
            commands.push(format!("delete chain {FAMILY} {TABLE} {name}"));
        }
    }
    for (name, set) in &applied.sets {
        if !desired.sets.contains_key(name) {
            commands.push(format!("delete {} {FAMILY} {TABLE} {name}", set.keyword()));
        }
    }
    Some(Transaction { commands })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn full_replaces_the_table() {
        let text = full(&ruleset(&[("1.1.1.1", "goto a")], &["a"])).text();
        assert_eq!(
            text,
            "table inet kubewire-proxy\ndelete table inet kubewire-proxy\ntable inet kubewire-proxy {\n  map m { type ipv4_addr : verdict; }\n  chain a {\n    counter comment \"a\"\n  }\n  chain base {\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr vmap @m\n  }\n}\nadd element inet kubewire-proxy m { 1.1.1.1 : goto a }\n"
        );
    }

    #[test]
    fn diffs_are_element_level() {
        let old = ruleset(&[("1.1.1.1", "goto a"), ("2.2.2.2", "goto a")], &["a"]);
        let new = ruleset(&[("1.1.1.1", "goto b"), ("3.3.3.3", "goto b")], &["b"]);
        assert_eq!(diff(&old, &old), Some(Transaction::default()));
        assert_eq!(diff(&old, &new), None, "a new chain replaces the table");
        let fewer = ruleset(&[("1.1.1.1", "goto b"), ("3.3.3.3", "goto b")], &["b"]);
        let mut more = fewer.clone();
        more.chains.insert("a".into(), old.chains["a"].clone());
        assert_eq!(
            diff(&more, &fewer).unwrap().commands,
            ["delete chain inet kubewire-proxy a"]
        );
        let moved = ruleset(&[("1.1.1.1", "goto a"), ("4.4.4.4", "goto a")], &["a"]);
        assert_eq!(
            diff(&old, &moved).unwrap().commands,
            [
                "delete element inet kubewire-proxy m { 2.2.2.2 }",
                "add element inet kubewire-proxy m { 4.4.4.4 : goto a }",
            ]
        );
        let mut redeclared = new.clone();
        redeclared.sets.get_mut("m").unwrap().declaration = "type ipv6_addr : verdict;".into();
        assert_eq!(diff(&new, &redeclared), None);
    }
}

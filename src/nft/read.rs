//! Reads a table back from an `nft -j list table` listing into the same [`Table`]
//! type a controller builds, so that drift and restart are one diff: rules and set
//! declarations by the fingerprint in their comment, base chains by their hook,
//! elements in the syntax the controllers write. The kernel backend reads through
//! netlink dumps ([`super::dump`]) into the same [`Observed`]; this listing reader is
//! its fallback (a set whose elements the dump cannot decode) and its reference in
//! tests and benchmarks.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::cli::listing_items;
use super::model::{Chain, Counter, Elements, Hook, Rule, Set, Table, comment_id};

/// A table as the kernel holds it, and its counters' packet counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub table: Table,
    /// Named counter → packets.
    pub packets: BTreeMap<String, u64>,
}

/// The table in `listing`; elements of dynamic sets (timeouts) are left out.
pub fn observed(listing: &Value) -> Observed {
    let mut out = Observed::default();
    let mut chains: BTreeMap<String, Chain> = BTreeMap::new();
    for item in listing_items(listing) {
        if let Some(chain) = item.get("chain") {
            let Some(name) = chain.get("name").and_then(Value::as_str) else {
                continue;
            };
            let text = |key: &str| chain.get(key).and_then(Value::as_str);
            let hook = match (text("type"), text("hook")) {
                (Some(kind), Some(hook)) => Some(Hook {
                    kind: kind.to_string(),
                    hook: hook.to_string(),
                    priority: chain
                        .get("prio")
                        .and_then(Value::as_i64)
                        .and_then(|p| i32::try_from(p).ok())
                        .unwrap_or(i32::MIN),
                    policy: text("policy").unwrap_or("accept").to_string(),
                }),
                _ => None,
            };
            chains.entry(name.to_string()).or_default().hook = hook;
        } else if let Some(rule) = item.get("rule") {
            let Some(chain) = rule.get("chain").and_then(Value::as_str) else {
                continue;
            };
            let id = rule
                .get("comment")
                .and_then(Value::as_str)
                .and_then(comment_id);
            let handle = rule.get("handle").and_then(Value::as_u64).unwrap_or(0);
            chains
                .entry(chain.to_string())
                .or_default()
                .rules
                .push(Rule::observed(id, handle));
        } else if let Some((set, map)) = item
            .get("set")
            .map(|s| (s, false))
            .or_else(|| item.get("map").map(|m| (m, true)))
        {
            let Some(name) = set.get("name").and_then(Value::as_str) else {
                continue;
            };
            let id = set
                .get("comment")
                .and_then(Value::as_str)
                .and_then(comment_id);
            let counter_values = set.get("map").and_then(Value::as_str) == Some("counter");
            let dynamic = set.get("flags").and_then(Value::as_array).is_some_and(|f| {
                f.iter()
                    .any(|f| matches!(f.as_str(), Some("timeout" | "dynamic")))
            });
            let elements: Elements = if dynamic {
                Elements::default()
            } else {
                set.get("elem")
                    .and_then(Value::as_array)
                    .map(|elems| elems.iter().map(|e| element(e, counter_values)).collect())
                    .unwrap_or_default()
            };
            out.table
                .sets
                .insert(name.to_string(), Arc::new(Set::observed(map, id, elements)));
        } else if let Some(counter) = item.get("counter")
            && let Some(name) = counter.get("name").and_then(Value::as_str)
        {
            let packets = counter.get("packets").and_then(Value::as_u64).unwrap_or(0);
            out.packets.insert(name.to_string(), packets);
            out.table
                .counters
                .insert(name.to_string(), Arc::new(Counter));
        }
    }
    for (name, chain) in chains {
        out.table.chains.insert(name, Arc::new(chain));
    }
    out
}

/// One element as (key, value) in our syntax.
fn element(element: &Value, counter_values: bool) -> (String, String) {
    match element {
        Value::Array(pair) if pair.len() == 2 => {
            let value = match &pair[1] {
                Value::String(counter) if counter_values => format!("\"{counter}\""),
                other => part(other),
            };
            (part(&pair[0]), value)
        }
        other => (part(other), String::new()),
    }
}

/// A key or value: addresses, numbers, prefixes, ranges, concatenations, verdicts.
fn part(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(object) => {
            if let Some(prefix) = object.get("prefix") {
                let addr = prefix.get("addr").map(part).unwrap_or_default();
                let len = prefix.get("len").map(part).unwrap_or_default();
                return format!("{addr}/{len}");
            }
            if let Some(Value::Array(range)) = object.get("range")
                && range.len() == 2
            {
                return format!("{}-{}", part(&range[0]), part(&range[1]));
            }
            if let Some(Value::Array(parts)) = object.get("concat") {
                return parts.iter().map(part).collect::<Vec<_>>().join(" . ");
            }
            if let Some(elem) = object.get("elem") {
                return elem.get("val").map(part).unwrap_or_default();
            }
            match object.iter().next() {
                Some((verdict, target)) => match target.get("target").and_then(Value::as_str) {
                    Some(target) => format!("{verdict} {target}"),
                    None => verdict.clone(),
                },
                None => String::new(),
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_nft_lists() {
        let listing = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "t"}},
            {"counter": {"name": "c1", "packets": 7, "bytes": 1}},
            {"set": {"name": "s4", "type": "ipv4_addr", "comment": "x #0000abcd", "flags": ["interval"],
              "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"range": ["11.1.0.0", "11.1.0.9"]}, "192.168.1.11"]}},
            {"map": {"name": "ep4", "map": "ipv4_addr . inet_service",
              "elem": [[{"concat": ["10.96.0.1", "tcp", 80, 0]}, {"concat": ["10.244.1.1", 8080]}]]}},
            {"map": {"name": "v4", "map": "verdict", "elem": [[{"concat": ["10.96.0.1", "tcp", 80]}, {"goto": {"target": "c"}}], ["10.0.0.9", {"drop": null}]]}},
            {"map": {"name": "cm", "map": "counter", "elem": [["10.0.0.1", "c1"]]}},
            {"set": {"name": "aff", "flags": ["timeout"], "elem": [{"elem": {"val": "1.1.1.1", "timeout": 3}}]}},
            {"chain": {"name": "c", "handle": 1}},
            {"chain": {"name": "base", "type": "filter", "hook": "forward", "prio": 5, "policy": "accept"}},
            {"rule": {"chain": "base", "handle": 8, "comment": "r1 #00000001", "expr": []}},
            {"rule": {"chain": "base", "handle": 9, "expr": []}},
        ]});
        let o = observed(&listing);
        assert_eq!(o.packets["c1"], 7);
        let keys = |name: &str| -> Vec<String> {
            o.table.sets[name]
                .elements
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.clone()
                    } else {
                        format!("{k} : {v}")
                    }
                })
                .collect()
        };
        assert_eq!(
            keys("s4"),
            ["10.0.0.0/8", "11.1.0.0-11.1.0.9", "192.168.1.11"]
        );
        assert_eq!(o.table.sets["s4"].id(), 0xabcd);
        assert_eq!(
            keys("ep4"),
            ["10.96.0.1 . tcp . 80 . 0 : 10.244.1.1 . 8080"]
        );
        assert_eq!(
            keys("v4"),
            ["10.0.0.9 : drop", "10.96.0.1 . tcp . 80 : goto c"]
        );
        assert_eq!(keys("cm"), ["10.0.0.1 : \"c1\""]);
        assert!(keys("aff").is_empty());
        let base = &o.table.chains["base"];
        assert_eq!(base.hook, Some(Hook::new("filter", "forward", 5)));
        assert_eq!(base.rules[0].id(), Some(1));
        assert_eq!(base.rules[1].id(), None);
        assert_eq!(o.table.chains["c"].hook, None);
    }
}

//! Forgets sessionAffinity entries that point where a frontend no longer sends
//! traffic. The packet path records `client . frontend → endpoint` in the dynamic
//! map `affinity4` (see [`super::nftables::compile`]); when an endpoint leaves a
//! frontend (or the frontend loses affinity), its entries must go at once, as
//! kube-proxy's per-endpoint affinity sets go with the endpoint. The map is only
//! listed when a (frontend, endpoint) pair disappeared since the last sync. IPv6
//! affinity needs no janitor: its entries are in one set per frontend and endpoint,
//! which the compiler removes with the endpoint, in the same transaction.

use std::collections::BTreeSet;

use serde_json::Value;

use super::nftables::compile::slot_map;
use super::nftables::ruleset::{FAMILY, TABLE};
use crate::nft::{Nft, Table};

/// The affinity map the janitor keeps clean.
pub const MAP: &str = "affinity4";

/// `(frontend "addr . proto . port", endpoint "addr . port")`.
type Pair = (String, String);

/// Every (frontend, endpoint) an affinity entry may point at in `table`: each
/// frontend of `affinity-services4` with every endpoint of its slot maps.
pub fn valid_pairs(table: &Table) -> BTreeSet<Pair> {
    let mut out = BTreeSet::new();
    let Some(services) = table.sets.get("affinity-services4") else {
        return out;
    };
    for (frontend, _) in services.elements.iter_unordered() {
        for (counts, local) in [("cluster-counts4", false), ("local-counts4", true)] {
            // `goto endpoints-N`: N says which slot map.
            let count = table
                .sets
                .get(counts)
                .and_then(|counts| counts.elements.get(frontend))
                .and_then(|verdict| verdict.rsplit_once('-'))
                .and_then(|(_, n)| n.parse::<usize>().ok());
            let Some(n) = count else {
                continue;
            };
            let Some(slots) = table.sets.get(slot_map(local, n, false).as_ref()) else {
                continue;
            };
            // Slots are numbered from 0 without gaps.
            for slot in 0.. {
                match slots.elements.get(&format!("{frontend} . {slot}")) {
                    Some(endpoint) => out.insert((frontend.clone(), endpoint.clone())),
                    None => break,
                };
            }
        }
    }
    out
}

#[derive(Debug, Default)]
pub struct Janitor {
    /// The pairs valid after the last sync.
    valid: BTreeSet<Pair>,
}

impl Janitor {
    /// After a ruleset is in the kernel, with its [`valid_pairs`]: deletes the
    /// entries that point outside them, when some pair went away. Returns how many
    /// were deleted; on error the next sync lists again.
    pub async fn sync(&mut self, nft: &Nft, valid: BTreeSet<Pair>) -> anyhow::Result<usize> {
        let lost = self.valid.difference(&valid).next().is_some();
        if !lost {
            self.valid = valid;
            return Ok(0);
        }
        let listing = nft
            .list_json(&["-j", "list", "map", FAMILY, TABLE, MAP])
            .await?;
        let stale = stale_keys(listing.as_ref(), &valid);
        if !stale.is_empty() {
            let text = format!(
                "delete element {FAMILY} {TABLE} {MAP} {{ {} }}\n",
                stale.join(", ")
            );
            // An entry may expire between the listing and the delete, which then
            // fails as a whole: the next sync tries again.
            nft.apply(&text).await?;
        }
        self.valid = valid;
        Ok(stale.len())
    }
}

/// The keys of entries of a `nft -j list map` listing whose (frontend, endpoint) is
/// not in `valid`.
pub fn stale_keys(listing: Option<&Value>, valid: &BTreeSet<Pair>) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let elements = listing
        .and_then(|l| l["nftables"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|item| item["map"]["elem"].as_array())
        .flatten();
    let mut out = Vec::new();
    for element in elements {
        let key = element[0]["elem"]["val"]["concat"]
            .as_array()
            .or_else(|| element[0]["concat"].as_array());
        let value = element[1]["concat"].as_array();
        let (Some(key), Some(value)) = (key, value) else {
            continue;
        };
        let key: Vec<String> = key.iter().map(text).collect();
        let value: Vec<String> = value.iter().map(text).collect();
        if key.len() != 4 {
            continue;
        }
        let pair = (key[1..].join(" . "), value.join(" . "));
        if !valid.contains(&pair) {
            out.push(key.join(" . "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_pointing_outside_their_frontend_are_stale() {
        let listing: Value = serde_json::from_str(r#"{"nftables": [{"metainfo": {}}, {"map": {"name": "affinity4",
            "elem": [[{"elem": {"val": {"concat": ["10.0.0.1", "10.96.1.60", "tcp", 80]}, "timeout": 60, "expires": 59}}, {"concat": ["10.244.1.5", 8080]}],
                     [{"elem": {"val": {"concat": ["10.0.0.2", "10.96.1.60", "tcp", 80]}, "timeout": 60, "expires": 59}}, {"concat": ["10.244.1.6", 8080]}],
                     [{"elem": {"val": {"concat": ["10.0.0.2", "10.96.1.61", "udp", 53]}, "timeout": 60, "expires": 59}}, {"concat": ["10.244.1.6", 53]}]]}}]}"#).unwrap();
        let valid: BTreeSet<Pair> = [(
            "10.96.1.60 . tcp . 80".to_string(),
            "10.244.1.6 . 8080".to_string(),
        )]
        .into();
        assert_eq!(
            stale_keys(Some(&listing), &valid),
            [
                "10.0.0.1 . 10.96.1.60 . tcp . 80",
                "10.0.0.2 . 10.96.1.61 . udp . 53"
            ]
        );
        assert!(stale_keys(None, &valid).is_empty());
    }

    #[test]
    fn valid_pairs_join_affinity_frontends_with_their_slots() {
        let map = {
            let snapshot = crate::proxy::services::tests_support::snapshot(serde_json::json!([
                {"kind": "Service", "metadata": {"name": "a", "namespace": "x"},
                 "spec": {"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}},
                {"kind": "EndpointSlice", "metadata": {"name": "a-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "a"}},
                 "addressType": "IPv4", "ports": [{"port": 8080}],
                 "endpoints": [{"addresses": ["10.244.1.10"]}, {"addresses": ["10.244.2.10"]}]},
                {"kind": "Service", "metadata": {"name": "b", "namespace": "x"},
                 "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}},
                {"kind": "EndpointSlice", "metadata": {"name": "b-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "b"}},
                 "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": [{"addresses": ["10.244.1.11"]}]},
            ]));
            crate::proxy::services::build(&snapshot, "n1", &["10.96.0.0/16".parse().unwrap()])
        };
        let (ruleset, _) = super::super::nftables::compile::compile(&map);
        let table = super::super::nftables::ruleset::Lowering::default().lower(&ruleset);
        let pairs: Vec<String> = valid_pairs(&table)
            .into_iter()
            .map(|(f, e)| format!("{f} -> {e}"))
            .collect();
        assert_eq!(
            pairs,
            [
                "10.96.0.10 . tcp . 80 -> 10.244.1.10 . 8080",
                "10.96.0.10 . tcp . 80 -> 10.244.2.10 . 8080"
            ]
        );
        assert_eq!(
            ruleset.sets["affinity-services4"].elements["10.96.0.10 . tcp . 80"].as_deref(),
            Some("goto affinity-10800")
        );
        assert!(ruleset.chains.contains_key("affinity-10800"));
    }
}

//! [`NftRules`] as an [`nft::Table`]. Pure. The table has a fixed shape (two chains,
//! six interval sets); only set elements change with the cluster, and the shared
//! reconciler applies just those.

use std::sync::Arc;

use ipnet::IpNet;

use super::model::{NFT_TABLE, NftRules};
use crate::nft::{self, Chain, Hook, Set, Table, TableId};

/// `inet kubewire-routing`.
pub fn table_id() -> TableId {
    TableId::new("inet", NFT_TABLE)
}

/// The table for `rules`.
pub fn table(rules: &NftRules) -> Table {
    let mut table = Table::default();
    let sets = [
        ("pod-cidrs", &rules.cluster_pod_cidrs),
        ("masquerade", &rules.masquerade_sources),
        ("cluster", &rules.cluster_destinations),
    ];
    for (name, cidrs) in sets {
        for v6 in [false, true] {
            let (suffix, kind) = if v6 {
                ("v6", "ipv6_addr")
            } else {
                ("v4", "ipv4_addr")
            };
            let elements: nft::Elements = cidrs
                .iter()
                .filter(|c| matches!(c, IpNet::V6(_)) == v6)
                .map(|c| (c.to_string(), String::new()))
                .collect();
            let set = Set::new(false, &format!("type {kind}; flags interval"), None)
                .with_elements(elements);
            table.sets.insert(format!("{name}-{suffix}"), Arc::new(set));
        }
    }
    table.chains.insert(
        "forward".into(),
        Arc::new(Chain::new(
            Some(Hook::new("filter", "forward", 0)),
            [
                "ip saddr @pod-cidrs-v4 counter accept",
                "ip daddr @pod-cidrs-v4 counter accept",
                "ip6 saddr @pod-cidrs-v6 counter accept",
                "ip6 daddr @pod-cidrs-v6 counter accept",
            ],
        )),
    );
    table.chains.insert(
        "postrouting".into(),
        Arc::new(Chain::new(
            Some(Hook::new("nat", "postrouting", 100)),
            [
                "ip saddr @masquerade-v4 ip daddr != @cluster-v4 counter masquerade",
                "ip6 saddr @masquerade-v6 ip6 daddr != @cluster-v6 counter masquerade",
            ],
        )),
    );
    table
}

/// The table's definition (`table inet kubewire-routing { ... }`), for the plan.
pub fn render(rules: &NftRules) -> String {
    nft::render::table_text(&table_id(), &table(rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn renders_sets_per_family_and_fixed_chains() {
        let rules = NftRules {
            cluster_pod_cidrs: nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
            masquerade_sources: nets(&["10.244.1.0/24"]),
            cluster_destinations: nets(&["10.96.0.0/12", "10.244.0.0/16", "192.168.1.11/32"]),
        };
        let table = table(&rules);
        let keys =
            |name: &str| -> Vec<String> { table.sets[name].elements.keys().cloned().collect() };
        assert_eq!(keys("pod-cidrs-v4"), ["10.244.0.0/16"]);
        assert_eq!(keys("pod-cidrs-v6"), ["fd00:10:244::/56"]);
        assert!(keys("masquerade-v6").is_empty());
        // A /32 is kept as nft lists it, so reading it back finds no difference.
        assert_eq!(
            keys("cluster-v4"),
            ["10.244.0.0/16", "10.96.0.0/12", "192.168.1.11"]
        );
        let text = render(&rules);
        assert!(
            text.starts_with("table inet kubewire-routing {\n"),
            "{text}"
        );
        assert!(text.contains(
            "\n\t\tip saddr @masquerade-v4 ip daddr != @cluster-v4 counter masquerade\n"
        ));
        assert!(text.contains("\t\ttype nat hook postrouting priority 100; policy accept;\n"));
    }
}

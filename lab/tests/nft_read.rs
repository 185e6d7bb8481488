//! The table read back over netlink dumps is the table `nft -j` lists (root; the
//! real kernel): for the firewall's, the proxy's and routing's tables, and one with
//! every kind of set and map the dump decodes (IPv6, concatenated intervals, counter
//! maps, timeouts). And unlike the comment-only `nft -j` reader, a rule someone
//! replaced with other expressions under our comment is found and repaired.

mod common;
mod firewall_support;
mod proxy_support;

use common::Netns;
use kubewire::nft::{self, Applied, Backend, Kernel, Kind, Nft, Set, Table, TableId};
use kubewire::routing::model::NftRules;

fn cases() -> Vec<(TableId, Table)> {
    let step = firewall_support::cases_root().join("u22-ingress-from-updated-pod/2");
    let ruleset = firewall_support::ruleset(&step, "n1");
    let firewall = (
        kubewire::firewall::render::table_id(),
        kubewire::firewall::render::table(&ruleset),
    );
    let map = proxy_support::service_map(20, 3);
    let (compiled, _) = kubewire::proxy::nftables::compile::compile(&map);
    let proxy = (
        kubewire::proxy::nftables::ruleset::table_id(),
        kubewire::proxy::nftables::ruleset::Lowering::default().lower(&compiled),
    );
    let rules = NftRules {
        cluster_pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        masquerade_sources: vec!["10.244.1.0/24".parse().unwrap()],
        cluster_destinations: vec!["10.0.0.0/8".parse().unwrap()],
    };
    let routing = (
        kubewire::routing::ruleset::table_id(),
        kubewire::routing::ruleset::table(&rules),
    );
    vec![firewall, proxy, routing, kinds()]
}

/// One of each set and map shape.
fn kinds() -> (TableId, Table) {
    let mut table = Table::default();
    let set = |map: bool, declaration: &str, elements: &[(&str, &str)]| {
        std::sync::Arc::new(
            Set::new(map, declaration, Some("a comment".into())).with_elements(
                elements
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<nft::Elements>(),
            ),
        )
    };
    let sets = [
        (
            "v6",
            set(
                false,
                "type ipv6_addr",
                &[("fd00::1", ""), ("2001:db8::a:0:1", "")],
            ),
        ),
        (
            "v6-ranges",
            set(
                false,
                "type ipv6_addr; flags interval",
                &[("fd00::/64", ""), ("fd01::5", "")],
            ),
        ),
        (
            "v4-ranges",
            set(
                false,
                "type ipv4_addr; flags interval",
                &[
                    ("0.0.0.0/8", ""),
                    ("10.1.0.0-10.1.0.6", ""),
                    ("240.0.0.0/4", ""),
                ],
            ),
        ),
        (
            "allow",
            set(
                false,
                "type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval",
                &[
                    ("10.96.0.1 . tcp . 443 . 203.0.113.0/24", ""),
                    ("10.96.0.2 . udp . 53 . 198.51.100.7", ""),
                ],
            ),
        ),
        (
            "ports",
            set(
                false,
                "type ipv4_addr . inet_proto . inet_service",
                &[("10.0.0.1 . sctp . 9000", ""), ("10.0.0.2 . tcp . 80", "")],
            ),
        ),
        (
            "dispatch",
            set(
                true,
                "type ipv6_addr : verdict",
                &[
                    ("fd00::9", "goto target"),
                    ("fd00::a", "drop"),
                    ("fd00::b", "accept"),
                ],
            ),
        ),
        (
            "counts",
            set(
                true,
                "type ipv4_addr : counter",
                &[("10.0.0.1", "\"hits\"")],
            ),
        ),
        (
            "slots",
            set(
                true,
                "typeof ip6 daddr . meta l4proto . th dport . numgen random mod 1 : ip6 daddr . th dport",
                &[("fd00::1 . tcp . 80 . 7", "fd10::2 . 8080")],
            ),
        ),
        (
            "seen",
            set(
                false,
                "type ipv4_addr; flags dynamic,timeout; timeout 60s",
                &[],
            ),
        ),
    ];
    for (name, set) in sets {
        table.sets.insert(name.into(), set);
    }
    table
        .counters
        .insert("hits".into(), std::sync::Arc::new(nft::Counter));
    table.chains.insert(
        "target".into(),
        std::sync::Arc::new(nft::Chain::new(None, ["counter accept"])),
    );
    table.chains.insert(
        "input".into(),
        std::sync::Arc::new(nft::Chain::new(
            Some(nft::Hook::new("filter", "input", -5)),
            [
                "ip6 daddr vmap @dispatch",
                "ip saddr @v4-ranges counter drop comment \"ranges\"",
                "ip saddr . meta l4proto . th dport . ip daddr @allow accept",
            ],
        )),
    );
    (TableId::new("inet", "kwkinds"), table)
}

#[test]
fn netlink_reads_what_nft_lists() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let ns = Netns::new("kwread");
    ns.block_on(|| async {
        for (id, table) in cases() {
            let mut reconciler = nft::Reconciler::new(Kernel::new(Nft::default()), id.clone());
            reconciler.sync(&table, false).await.unwrap();
            let mut kernel = Kernel::new(Nft::default());
            let dumped = kernel.read(&id).await.unwrap().unwrap();
            let listed = kernel.read_listing(&id).await.unwrap().unwrap();
            assert!(dumped.table.element_count() > 0, "{id}");
            assert_eq!(dumped, listed, "{id}: the dump and the listing differ");
            let left = nft::render::describe(&id, &dumped.table, &table);
            assert!(left.is_empty(), "{id}: {left:?}");
        }
        let mut kernel = Kernel::new(Nft::default());
        assert_eq!(
            kernel.read(&TableId::new("inet", "none")).await.unwrap(),
            None
        );
    });
}

#[test]
fn a_rule_replaced_under_our_comment_is_repaired() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let ns = Netns::new("kwedit");
    let (id, table) = kinds();
    ns.block_on(|| async {
        let mut reconciler = nft::Reconciler::new(Kernel::new(Nft::default()), id.clone());
        reconciler.sync(&table, false).await.unwrap();
        // The rule with the comment "ranges ...": same comment, other expressions.
        let listing: serde_json::Value = serde_json::from_str(&ns.exec(
            "nft",
            &["-a", "-j", "list", "chain", "inet", &id.name, "input"],
        ))
        .unwrap();
        let rule = listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|item| item.get("rule"))
            .find(|rule| rule["comment"].as_str().is_some_and(|c| c.starts_with("ranges")))
            .unwrap()
            .clone();
        let (handle, comment) = (rule["handle"].to_string(), rule["comment"].as_str().unwrap());
        let replace = format!(
            "replace rule inet {} input handle {handle} ip saddr @v4-ranges counter accept comment \"{comment}\"",
            id.name
        );
        ns.exec("nft", &replace.split(' ').collect::<Vec<_>>());
        // The comment-only reader sees nothing wrong; the drift check does.
        let mut kernel = Kernel::new(Nft::default());
        let listed = kernel.read_listing(&id).await.unwrap().unwrap();
        assert!(nft::render::describe(&id, &listed.table, &table).is_empty());
        let applied = reconciler.sync(&table, true).await.unwrap();
        let Applied::Applied(tx) = applied else {
            panic!("the edited rule was not repaired");
        };
        assert_eq!(tx.kind, Kind::Diff, "{}", tx.text());
        let chain = ns.exec("nft", &["list", "chain", "inet", &id.name, "input"]);
        assert!(chain.contains("counter packets 0 bytes 0 drop"), "{chain}");
        assert!(!chain.contains("accept comment \"ranges"), "{chain}");
        assert_eq!(reconciler.sync(&table, true).await.unwrap(), Applied::Nothing);
    });
}

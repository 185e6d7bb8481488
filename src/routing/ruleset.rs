//! [`NftRules`] as `nft -f` text. Pure. The table has a fixed shape (two chains,
//! six interval sets); only set elements change with the cluster. The text replaces
//! the whole table in one transaction, so the kernel swaps old for new atomically.

use std::fmt::Write;

use ipnet::IpNet;

use super::model::{NFT_TABLE, NftRules};

/// The table's definition (`table inet kubewire-routing { ... }`).
pub fn render(rules: &NftRules) -> String {
    let mut out = format!("table inet {NFT_TABLE} {{\n");
    let sets = [
        ("pod-cidrs", &rules.cluster_pod_cidrs),
        ("masquerade", &rules.masquerade_sources),
        ("cluster", &rules.cluster_destinations),
    ];
    for (name, cidrs) in sets {
        for family in [Family::V4, Family::V6] {
            render_set(&mut out, name, family, cidrs);
        }
    }
    out.push_str(
        "\tchain forward {\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr @pod-cidrs-v4 counter accept\n\
         \t\tip daddr @pod-cidrs-v4 counter accept\n\
         \t\tip6 saddr @pod-cidrs-v6 counter accept\n\
         \t\tip6 daddr @pod-cidrs-v6 counter accept\n\
         \t}\n\
         \tchain postrouting {\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr @masquerade-v4 ip daddr != @cluster-v4 counter masquerade\n\
         \t\tip6 saddr @masquerade-v6 ip6 daddr != @cluster-v6 counter masquerade\n\
         \t}\n}\n",
    );
    out
}

/// One `nft -f` transaction that creates or replaces the table.
pub fn replace_transaction(rules: &NftRules) -> String {
    format!(
        "table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n{}",
        render(rules)
    )
}

/// One `nft -f` transaction that removes the table if it exists.
pub fn delete_transaction() -> String {
    format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

fn render_set(out: &mut String, name: &str, family: Family, cidrs: &[IpNet]) {
    let (suffix, kind) = match family {
        Family::V4 => ("v4", "ipv4_addr"),
        Family::V6 => ("v6", "ipv6_addr"),
    };
    let elements: Vec<String> = cidrs
        .iter()
        .filter(|c| {
            matches!(
                (family, c),
                (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
            )
        })
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(
        out,
        "\tset {name}-{suffix} {{\n\t\ttype {kind}\n\t\tflags interval"
    );
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
    }
    out.push_str("\t}\n");
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
        let text = render(&rules);
        let expected_sets = [
            "\tset pod-cidrs-v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.244.0.0/16 }\n\t}\n",
            "\tset pod-cidrs-v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { fd00:10:244::/56 }\n\t}\n",
            "\tset masquerade-v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.244.1.0/24 }\n\t}\n",
            "\tset masquerade-v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t}\n",
            "\tset cluster-v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.96.0.0/12, 10.244.0.0/16, 192.168.1.11/32 }\n\t}\n",
        ];
        for set in expected_sets {
            assert!(text.contains(set), "missing\n{set}\nin\n{text}");
        }
        assert!(text.starts_with("table inet kubewire-routing {\n"));
        assert!(
            text.contains("ip saddr @masquerade-v4 ip daddr != @cluster-v4 counter masquerade")
        );
        assert!(replace_transaction(&rules).starts_with(
            "table inet kubewire-routing\ndelete table inet kubewire-routing\ntable inet kubewire-routing {"
        ));
    }
}

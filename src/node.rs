//! What more than one controller reads from a Node, read one way: its pod CIDRs (with
//! the annotation overrides), the pod gateway of a pod CIDR, its InternalIP and
//! ExternalIP addresses, and which of them is the node's address on the underlay
//! ([`underlay_ips`], with `--node-ip`). Pure. A malformed
//! value becomes a [`FieldProblem`] naming the Node and the field; only that value is
//! dropped (a CIDR with host bits set is kept as its network), and each caller
//! decides whether a problem is a warning (routing, the lab) or an error (CNI).

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

/// kubewire's own pod CIDR override (comma-separated CIDRs); wins over everything.
pub const KUBEWIRE_POD_CIDRS: &str = "kubewire.io/pod-cidrs";
/// kube-router's pod CIDR override, honoured for drop-in compatibility.
pub const KUBE_ROUTER_POD_CIDRS: &str = "kube-router.io/pod-cidrs";

/// One pod CIDR and the field it was read from (`spec.podCIDRs[1]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCidr {
    /// Normalized to its network address.
    pub cidr: IpNet,
    pub field: String,
}

/// A value of a Node that was dropped or corrected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Node {node}: {field}: {message}")]
pub struct FieldProblem {
    pub node: String,
    pub field: String,
    pub message: String,
}

/// The Node's pod CIDRs in the order given: the `kubewire.io/pod-cidrs` annotation,
/// else `kube-router.io/pod-cidrs`, else `spec.podCIDRs`, else `spec.podCIDR`. The
/// first source present is authoritative (its bad entries are dropped, not replaced
/// from the next source); repeats are dropped.
pub fn pod_cidrs(node: &Node) -> (Vec<PodCidr>, Vec<FieldProblem>) {
    let name = node.name_any();
    let mut cidrs: Vec<PodCidr> = Vec::new();
    let mut problems = Vec::new();
    for (field, text) in sources(node) {
        let problem = |message: String| FieldProblem {
            node: name.clone(),
            field: field.clone(),
            message,
        };
        let cidr = match text.parse::<IpNet>() {
            Ok(cidr) => cidr,
            Err(_) => {
                problems.push(problem(format!("`{text}` is not a CIDR")));
                continue;
            }
        };
        if cidr != cidr.trunc() {
            problems.push(problem(format!(
                "`{text}` has host bits set (the network is {})",
                cidr.trunc()
            )));
        }
        let cidr = cidr.trunc();
        if !cidrs.iter().any(|c| c.cidr == cidr) {
            cidrs.push(PodCidr { cidr, field });
        }
    }
    (cidrs, problems)
}

/// (field, text) of every entry of the authoritative source.
fn sources(node: &Node) -> Vec<(String, String)> {
    let annotations = node.annotations();
    if let Some((key, value)) = [KUBEWIRE_POD_CIDRS, KUBE_ROUTER_POD_CIDRS]
        .into_iter()
        .find_map(|key| annotations.get(key).map(|v| (key, v)))
    {
        return value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| (format!("metadata.annotations[{key}]"), v.to_string()))
            .collect();
    }
    let spec = node.spec.as_ref();
    if let Some(list) = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .filter(|l| !l.is_empty())
    {
        return list
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("spec.podCIDRs[{i}]"), v.clone()))
            .collect();
    }
    spec.and_then(|s| s.pod_cidr.as_ref())
        .filter(|v| !v.is_empty())
        .map(|v| ("spec.podCIDR".to_string(), v.clone()))
        .into_iter()
        .collect()
}

/// `status.addresses[].type` of the addresses the cluster reaches a Node at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    InternalIP,
    ExternalIP,
}

/// One IP address of a Node's `status.addresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub type_: AddressType,
    pub ip: IpAddr,
}

/// The Node's InternalIP and ExternalIP addresses in the order of `status.addresses`
/// (the kubelet lists the preferred address of a type first). An entry that is not
/// an IP address is a problem and dropped; other types (Hostname, InternalDNS, ...)
/// are skipped.
pub fn ip_addresses(node: &Node) -> (Vec<NodeAddress>, Vec<FieldProblem>) {
    let mut addresses = Vec::new();
    let mut problems = Vec::new();
    let listed = node
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_deref())
        .unwrap_or_default();
    for (index, address) in listed.iter().enumerate() {
        let type_ = match address.type_.as_str() {
            "InternalIP" => AddressType::InternalIP,
            "ExternalIP" => AddressType::ExternalIP,
            _ => continue,
        };
        match address.address.parse::<IpAddr>() {
            Ok(ip) => addresses.push(NodeAddress { type_, ip }),
            Err(_) => problems.push(FieldProblem {
                node: node.name_any(),
                field: format!("status.addresses[{index}].address"),
                message: format!("`{}` is not an IP address", address.address),
            }),
        }
    }
    (addresses, problems)
}

/// The Node's first InternalIP of the family of `like` (IPv4 or IPv6): its address
/// in that family on the underlay.
pub fn internal_ip_like(addresses: &[NodeAddress], like: IpAddr) -> Option<IpAddr> {
    internal_ips(addresses).find(|ip| ip.is_ipv4() == like.is_ipv4())
}

/// This node's addresses on the underlay, primary first: `node_ip` (the `--node-ip`
/// flag) or else the first InternalIP, then the first InternalIP of the other family
/// (dual-stack). Empty when there is neither a flag nor an InternalIP: ExternalIPs
/// never count (they may be NATed to the node, not held by it).
pub fn underlay_ips(addresses: &[NodeAddress], node_ip: Option<IpAddr>) -> Vec<IpAddr> {
    let Some(primary) = node_ip.or_else(|| internal_ips(addresses).next()) else {
        return Vec::new();
    };
    let other = internal_ips(addresses).find(|ip| ip.is_ipv4() != primary.is_ipv4());
    std::iter::once(primary).chain(other).collect()
}

fn internal_ips(addresses: &[NodeAddress]) -> impl Iterator<Item = IpAddr> + '_ {
    addresses
        .iter()
        .filter(|a| a.type_ == AddressType::InternalIP)
        .map(|a| a.ip)
}

/// The pod gateway of a pod CIDR: its first host address (what the CNI bridge
/// plugin's host-local IPAM hands pods as their gateway, and kube-bridge holds). None
/// when the CIDR is too small to hold a gateway and a pod.
pub fn gateway(cidr: IpNet) -> Option<IpAddr> {
    let max_prefix = match cidr {
        IpNet::V4(_) => 30,
        IpNet::V6(_) => 126,
    };
    if cidr.prefix_len() > max_prefix {
        return None;
    }
    cidr.hosts().find(|ip| *ip != cidr.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    fn read(json: &serde_json::Value) -> (Vec<String>, Vec<String>) {
        let (cidrs, problems) = pod_cidrs(&node(json.clone()));
        (
            cidrs
                .iter()
                .map(|c| format!("{} {}", c.cidr, c.field))
                .collect(),
            problems.iter().map(ToString::to_string).collect(),
        )
    }

    #[test]
    fn pod_cidr_sources_in_order_of_precedence() {
        let spec = serde_json::json!({"podCIDR": "10.0.9.0/24", "podCIDRs": ["10.0.1.0/24", "fd00:1::/64"]});
        let cases: &[(serde_json::Value, &[&str])] = &[
            (
                serde_json::json!({"metadata": {"name": "a"}, "spec": spec}),
                &[
                    "10.0.1.0/24 spec.podCIDRs[0]",
                    "fd00:1::/64 spec.podCIDRs[1]",
                ],
            ),
            (
                serde_json::json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.9.0/24", "podCIDRs": []}}),
                &["10.0.9.0/24 spec.podCIDR"],
            ),
            (
                serde_json::json!({"metadata": {"name": "a",
                    "annotations": {KUBE_ROUTER_POD_CIDRS: "10.9.0.0/24"}}, "spec": spec}),
                &["10.9.0.0/24 metadata.annotations[kube-router.io/pod-cidrs]"],
            ),
            (
                serde_json::json!({"metadata": {"name": "a",
                    "annotations": {KUBE_ROUTER_POD_CIDRS: "10.9.0.0/24",
                                    KUBEWIRE_POD_CIDRS: " 10.8.0.0/24 , fd00:8::/64,"}},
                    "spec": spec}),
                &[
                    "10.8.0.0/24 metadata.annotations[kubewire.io/pod-cidrs]",
                    "fd00:8::/64 metadata.annotations[kubewire.io/pod-cidrs]",
                ],
            ),
            (serde_json::json!({"metadata": {"name": "a"}}), &[]),
        ];
        for (json, expected) in cases {
            let (got, problems) = read(json);
            assert_eq!(got, *expected, "{json}");
            assert!(problems.is_empty(), "{json}: {problems:?}");
        }
    }

    #[test]
    fn bad_entries_are_named_and_only_they_are_dropped() {
        let (got, problems) = read(&serde_json::json!({"metadata": {"name": "n7",
            "annotations": {KUBEWIRE_POD_CIDRS: "nonsense,10.8.0.5/24,10.8.0.0/24"}},
            "spec": {"podCIDRs": ["10.0.1.0/24"]}}));
        assert_eq!(
            got,
            ["10.8.0.0/24 metadata.annotations[kubewire.io/pod-cidrs]"]
        );
        assert_eq!(
            problems,
            [
                "Node n7: metadata.annotations[kubewire.io/pod-cidrs]: `nonsense` is not a CIDR",
                "Node n7: metadata.annotations[kubewire.io/pod-cidrs]: `10.8.0.5/24` has host bits set (the network is 10.8.0.0/24)",
            ]
        );
    }

    #[test]
    fn ip_addresses_keep_order_and_name_bad_entries() {
        let (addresses, problems) = ip_addresses(&node(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalDNS", "address": "n1.example"},
                {"type": "ExternalIP", "address": "203.0.113.1"},
                {"type": "InternalIP", "address": "fd00::1"},
                {"type": "InternalIP", "address": "bogus"},
                {"type": "InternalIP", "address": "192.168.1.1"}]}})));
        let got: Vec<String> = addresses
            .iter()
            .map(|a| format!("{:?} {}", a.type_, a.ip))
            .collect();
        assert_eq!(
            got,
            [
                "ExternalIP 203.0.113.1",
                "InternalIP fd00::1",
                "InternalIP 192.168.1.1"
            ]
        );
        assert_eq!(
            problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["Node n1: status.addresses[4].address: `bogus` is not an IP address"]
        );
    }

    #[test]
    fn underlay_ips_primary_first_then_the_other_family() {
        // (status.addresses as "type address", --node-ip) -> underlay_ips
        let cases: &[(&[&str], Option<&str>, &[&str])] = &[
            (&["InternalIP 192.168.1.1"], None, &["192.168.1.1"]),
            (
                &["InternalIP 192.168.1.1", "InternalIP 192.168.1.2"],
                None,
                &["192.168.1.1"],
            ),
            // status.addresses order decides the primary family.
            (
                &["InternalIP fd00::1", "InternalIP 192.168.1.1"],
                None,
                &["fd00::1", "192.168.1.1"],
            ),
            (
                &[
                    "InternalIP 192.168.1.1",
                    "InternalIP fd00::1",
                    "InternalIP fd00::2",
                ],
                None,
                &["192.168.1.1", "fd00::1"],
            ),
            // --node-ip is the primary; the other family still comes from the Node.
            (
                &["InternalIP 192.168.1.1", "InternalIP fd00::1"],
                Some("fd00::99"),
                &["fd00::99", "192.168.1.1"],
            ),
            (
                &["InternalIP 192.168.1.1"],
                Some("192.168.1.9"),
                &["192.168.1.9"],
            ),
            (&[], Some("192.168.1.9"), &["192.168.1.9"]),
            // An ExternalIP is never the node's underlay address.
            (
                &["ExternalIP 203.0.113.1", "InternalIP 192.168.1.1"],
                None,
                &["192.168.1.1"],
            ),
            (&["ExternalIP 203.0.113.1"], None, &[]),
            (&[], None, &[]),
        ];
        for (listed, node_ip, expected) in cases {
            let got = underlay_ips(&addresses(listed), node_ip.map(|ip| ip.parse().unwrap()));
            assert_eq!(got, ips(expected), "{listed:?} --node-ip {node_ip:?}");
        }
    }

    #[test]
    fn internal_ip_like_is_the_first_internal_ip_of_the_family() {
        let listed = [
            "ExternalIP 203.0.113.1",
            "ExternalIP 2001:db8::1",
            "InternalIP fd00::1",
            "InternalIP 192.168.1.1",
            "InternalIP 192.168.1.2",
            "InternalIP fd00::2",
        ];
        let cases = [
            (&listed[..], "10.0.0.1", Some("192.168.1.1")),
            (&listed[..], "fd99::1", Some("fd00::1")),
            (&listed[..2], "10.0.0.1", None),
            (&listed[3..5], "fd99::1", None),
        ];
        for (listed, like, expected) in cases {
            assert_eq!(
                internal_ip_like(&addresses(listed), like.parse().unwrap()),
                expected.map(|ip| ip.parse().unwrap()),
                "{listed:?} like {like}"
            );
        }
    }

    /// "InternalIP 192.168.1.1" -> NodeAddress.
    fn addresses(listed: &[&str]) -> Vec<NodeAddress> {
        listed
            .iter()
            .map(|entry| {
                let (type_, ip) = entry.split_once(' ').unwrap();
                NodeAddress {
                    type_: match type_ {
                        "InternalIP" => AddressType::InternalIP,
                        "ExternalIP" => AddressType::ExternalIP,
                        other => panic!("{other}"),
                    },
                    ip: ip.parse().unwrap(),
                }
            })
            .collect()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    #[test]
    fn gateway_is_the_first_host_address() {
        let cases = [
            ("10.244.1.0/24", Some("10.244.1.1")),
            ("10.244.0.0/16", Some("10.244.0.1")),
            ("10.244.1.0/30", Some("10.244.1.1")),
            ("10.244.1.0/31", None),
            ("fd00:10:244:1::/64", Some("fd00:10:244:1::1")),
            ("fd00::/127", None),
        ];
        for (cidr, expected) in cases {
            assert_eq!(
                gateway(cidr.parse().unwrap()),
                expected.map(|g| g.parse().unwrap()),
                "{cidr}"
            );
        }
    }
}

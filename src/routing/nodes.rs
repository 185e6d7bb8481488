//! What the routing controller reads from a Node: its pod CIDRs (with the
//! annotation overrides) and its addresses. Pure; a malformed value is reported as a
//! problem naming the Node and the field, and only that value is dropped.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

/// kubewire's own pod CIDR override (comma-separated CIDRs); wins over everything.
pub const KUBEWIRE_POD_CIDRS: &str = "kubewire.io/pod-cidrs";
/// kube-router's pod CIDR override, honoured for drop-in compatibility.
pub const KUBE_ROUTER_POD_CIDRS: &str = "kube-router.io/pod-cidrs";

/// A Node as routing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    /// Pod CIDRs in the order given, normalized to their network address.
    pub pod_cidrs: Vec<IpNet>,
    /// `status.addresses` of type InternalIP, in order (the first is the primary).
    pub internal_ips: Vec<IpAddr>,
    /// InternalIP and ExternalIP addresses: traffic to them is not masqueraded.
    pub addresses: Vec<IpAddr>,
}

impl NodeFacts {
    /// Reads `node`, appending a message to `problems` for every value it drops.
    pub fn read(node: &Node, problems: &mut Vec<String>) -> NodeFacts {
        let name = node.name_any();
        let pod_cidrs = pod_cidrs(node, problems);
        let mut internal_ips = Vec::new();
        let mut addresses = Vec::new();
        let listed = node
            .status
            .as_ref()
            .and_then(|status| status.addresses.as_deref())
            .unwrap_or_default();
        for (index, address) in listed.iter().enumerate() {
            let internal = address.type_ == "InternalIP";
            if !internal && address.type_ != "ExternalIP" {
                continue;
            }
            match address.address.parse::<IpAddr>() {
                Ok(ip) => {
                    if internal {
                        internal_ips.push(ip);
                    }
                    addresses.push(ip);
                }
                Err(_) => problems.push(format!(
                    "Node {name}: status.addresses[{index}].address: `{}` is not an IP address",
                    address.address
                )),
            }
        }
        NodeFacts {
            name,
            pod_cidrs,
            internal_ips,
            addresses,
        }
    }

    /// The first InternalIP of the family of `like`.
    pub fn internal_ip_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == like.is_ipv4())
    }
}

/// The Node's pod CIDRs: the `kubewire.io/pod-cidrs` annotation, else
/// `kube-router.io/pod-cidrs`, else `spec.podCIDRs`, else `spec.podCIDR`. The first
/// source present is authoritative (its bad entries are dropped, not replaced).
pub fn pod_cidrs(node: &Node, problems: &mut Vec<String>) -> Vec<IpNet> {
    let name = node.name_any();
    let annotations = node.annotations();
    let (field, values): (String, Vec<String>) = if let Some(value) = annotations
        .get(KUBEWIRE_POD_CIDRS)
        .or_else(|| annotations.get(KUBE_ROUTER_POD_CIDRS))
    {
        let key = if annotations.contains_key(KUBEWIRE_POD_CIDRS) {
            KUBEWIRE_POD_CIDRS
        } else {
            KUBE_ROUTER_POD_CIDRS
        };
        (
            format!("metadata.annotations[{key}]"),
            value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect(),
        )
    } else {
        let spec = node.spec.as_ref();
        match spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
        {
            Some(cidrs) => ("spec.podCIDRs".to_string(), cidrs),
            None => (
                "spec.podCIDR".to_string(),
                spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
            ),
        }
    };
    let mut cidrs: Vec<IpNet> = Vec::new();
    for value in values {
        match value.parse::<IpNet>() {
            Ok(cidr) if cidr != cidr.trunc() => {
                problems.push(format!(
                    "Node {name}: {field}: `{value}` has host bits set; using {}",
                    cidr.trunc()
                ));
                cidrs.push(cidr.trunc());
            }
            Ok(cidr) => cidrs.push(cidr),
            Err(_) => problems.push(format!("Node {name}: {field}: `{value}` is not a CIDR")),
        }
    }
    cidrs.dedup();
    cidrs
}

/// The pod gateway of a pod CIDR: its first host address (what the CNI bridge
/// plugin's host-local IPAM hands pods as their gateway). None when the CIDR is too
/// small to hold a gateway and a pod.
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

    fn cidrs(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn pod_cidr_sources_in_order_of_precedence() {
        let cases: &[(serde_json::Value, &[&str], usize)] = &[
            // (node, expected CIDRs, problems)
            (
                serde_json::json!({"metadata": {"name": "a"},
                    "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24", "fd00:1::/64"]}}),
                &["10.0.1.0/24", "fd00:1::/64"],
                0,
            ),
            (
                serde_json::json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.1.0/24"}}),
                &["10.0.1.0/24"],
                0,
            ),
            (
                serde_json::json!({"metadata": {"name": "a",
                    "annotations": {KUBE_ROUTER_POD_CIDRS: "10.9.0.0/24"}},
                    "spec": {"podCIDRs": ["10.0.1.0/24"]}}),
                &["10.9.0.0/24"],
                0,
            ),
            (
                serde_json::json!({"metadata": {"name": "a",
                    "annotations": {KUBE_ROUTER_POD_CIDRS: "10.9.0.0/24",
                                    KUBEWIRE_POD_CIDRS: "10.8.0.0/24, fd00:8::/64"}},
                    "spec": {"podCIDRs": ["10.0.1.0/24"]}}),
                &["10.8.0.0/24", "fd00:8::/64"],
                0,
            ),
            (
                serde_json::json!({"metadata": {"name": "a",
                    "annotations": {KUBEWIRE_POD_CIDRS: "nonsense,10.8.0.5/24"}}}),
                &["10.8.0.0/24"],
                2,
            ),
            (serde_json::json!({"metadata": {"name": "a"}}), &[], 0),
        ];
        for (json, expected, problem_count) in cases {
            let mut problems = Vec::new();
            let got = pod_cidrs(&node(json.clone()), &mut problems);
            assert_eq!(got, cidrs(expected), "{json}");
            assert_eq!(problems.len(), *problem_count, "{json}: {problems:?}");
        }
    }

    #[test]
    fn bad_annotation_problem_names_node_and_annotation() {
        let mut problems = Vec::new();
        pod_cidrs(
            &node(serde_json::json!({"metadata": {"name": "n7",
                "annotations": {KUBEWIRE_POD_CIDRS: "10.1.0.0/33"}}})),
            &mut problems,
        );
        assert_eq!(
            problems,
            ["Node n7: metadata.annotations[kubewire.io/pod-cidrs]: `10.1.0.0/33` is not a CIDR"]
        );
    }

    #[test]
    fn addresses_keep_order_and_skip_hostnames() {
        let mut problems = Vec::new();
        let facts = NodeFacts::read(
            &node(serde_json::json!({"metadata": {"name": "n1"},
                "status": {"addresses": [
                    {"type": "Hostname", "address": "n1"},
                    {"type": "InternalIP", "address": "fd00::1"},
                    {"type": "InternalIP", "address": "192.168.1.1"},
                    {"type": "ExternalIP", "address": "203.0.113.1"},
                    {"type": "InternalIP", "address": "bogus"}]}})),
            &mut problems,
        );
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(facts.internal_ips, ips(&["fd00::1", "192.168.1.1"]));
        assert_eq!(
            facts.addresses,
            ips(&["fd00::1", "192.168.1.1", "203.0.113.1"])
        );
        assert_eq!(
            facts.internal_ip_like("10.0.0.1".parse().unwrap()),
            Some("192.168.1.1".parse().unwrap())
        );
        assert_eq!(
            problems,
            ["Node n1: status.addresses[4].address: `bogus` is not an IP address"]
        );
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

//! What more than one controller reads from a Node, read one way: its pod CIDRs (with
//! the annotation overrides) and the pod gateway of a pod CIDR. Pure. A malformed
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

//! What the routing controller reads from a Node: its pod CIDRs and its addresses,
//! both through [`crate::node`], as every controller reads them. Pure; a
//! malformed value is reported as a problem naming the Node and the field, and only
//! that value is dropped.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use crate::node::{self, NodeAddress};
use crate::runtime::BadObject;

/// The field and fault of a Node with no pod CIDR (no IPAM yet, or none configured):
/// its pods get no bridge address (this node) or no route (another node).
const NO_POD_CIDR: &str = "spec.podCIDRs: empty, and no pod CIDR annotation";

/// The problem of a Node with no pod CIDR, as `local` (this node) or a peer sees it.
pub fn no_pod_cidr(name: &str, local: bool) -> String {
    let effect = match local {
        true => "pods on this node get no bridge address",
        false => "its pods get no route from this node",
    };
    format!("Node {name}: {NO_POD_CIDR}; {effect}")
}

/// A routing problem as a bad object: counted as `no_pod_cidr` when it is one.
pub fn bad_object(problem: String) -> BadObject {
    let mut bad = BadObject::from(problem);
    if bad.kind == "Node" && bad.message.contains(NO_POD_CIDR) {
        bad.reason = "no_pod_cidr".into();
    }
    bad
}

/// A Node as routing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    /// Pod CIDRs in the order given, normalized to their network address.
    pub pod_cidrs: Vec<IpNet>,
    /// InternalIP and ExternalIP addresses in the order of `status.addresses`: traffic
    /// to them is not masqueraded, and the InternalIPs are its underlay addresses.
    pub addresses: Vec<NodeAddress>,
}

impl NodeFacts {
    /// Reads `node`, appending a message to `problems` for every value it drops.
    pub fn read(node: &Node, problems: &mut Vec<String>) -> NodeFacts {
        let (cidrs, found) = node::pod_cidrs(node);
        problems.extend(found.iter().map(ToString::to_string));
        let (addresses, found) = node::ip_addresses(node);
        problems.extend(found.iter().map(ToString::to_string));
        NodeFacts {
            name: node.name_any(),
            pod_cidrs: cidrs.into_iter().map(|c| c.cidr).collect(),
            addresses,
        }
    }

    /// The first InternalIP of the family of `like` ([`node::internal_ip_like`]).
    pub fn internal_ip_like(&self, like: IpAddr) -> Option<IpAddr> {
        node::internal_ip_like(&self.addresses, like)
    }

    /// The node's underlay addresses, primary first ([`node::underlay_ips`]).
    pub fn underlay_ips(&self, node_ip: Option<IpAddr>) -> Vec<IpAddr> {
        node::underlay_ips(&self.addresses, node_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_node_without_pod_cidr_is_its_own_reason() {
        let bad = bad_object(no_pod_cidr("n2", false));
        assert_eq!(
            (bad.kind.as_str(), bad.reason.as_str()),
            ("Node", "no_pod_cidr")
        );
        assert_eq!(
            bad.message,
            "Node n2: spec.podCIDRs: empty, and no pod CIDR annotation; its pods get no route from this node"
        );
        assert_eq!(
            bad_object("Node n2: pod CIDR x overlaps y".into()).reason,
            "invalid"
        );
    }

    #[test]
    fn addresses_keep_order_and_skip_hostnames() {
        let mut problems = Vec::new();
        let facts = NodeFacts::read(
            &node(serde_json::json!({"metadata": {"name": "n1"},
                "spec": {"podCIDRs": ["10.244.1.5/24"]},
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
        assert_eq!(facts.underlay_ips(None), ips(&["fd00::1", "192.168.1.1"]));
        assert_eq!(
            facts.addresses.iter().map(|a| a.ip).collect::<Vec<_>>(),
            ips(&["fd00::1", "192.168.1.1", "203.0.113.1"])
        );
        assert_eq!(
            facts.internal_ip_like("10.0.0.1".parse().unwrap()),
            Some("192.168.1.1".parse().unwrap())
        );
        assert_eq!(facts.pod_cidrs, [IpNet::from_str("10.244.1.0/24").unwrap()]);
        assert_eq!(
            problems,
            [
                "Node n1: spec.podCIDRs[0]: `10.244.1.5/24` has host bits set (the network is 10.244.1.0/24)",
                "Node n1: status.addresses[4].address: `bogus` is not an IP address"
            ]
        );
    }
}

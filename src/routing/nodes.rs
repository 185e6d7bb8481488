//! What the routing controller reads from a Node: its pod CIDRs (through
//! [`crate::node`], as every controller reads them) and its addresses. Pure; a
//! malformed value is reported as a problem naming the Node and the field, and only
//! that value is dropped.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

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
        let (cidrs, found) = crate::node::pod_cidrs(node);
        problems.extend(found.iter().map(ToString::to_string));
        let pod_cidrs = cidrs.into_iter().map(|c| c.cidr).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
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
        assert_eq!(facts.internal_ips, ips(&["fd00::1", "192.168.1.1"]));
        assert_eq!(
            facts.addresses,
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

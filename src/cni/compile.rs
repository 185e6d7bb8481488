//! Snapshot → conflist, pure: the same cluster state, node and flags always give the
//! same conflist. The node interface's MTU is an input (read from the kernel by
//! [`super::link`] in the agent, 1500 for the offline `cni plan`).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use serde_json::Map;

use super::CniConfig;
use super::model::{
    BRIDGE_NAME, BridgePlugin, CNI_VERSION, Capabilities, Conflist, HostLocalIpam, IpRange,
    LoopbackPlugin, NETWORK_NAME, Plugin, PortmapPlugin, Route,
};
use crate::cache::Snapshot;
use crate::network::NetworkConfig;
use crate::node::{self, FieldProblem, KUBE_ROUTER_POD_CIDRS, KUBEWIRE_POD_CIDRS, PodCidr};

/// The interface MTU assumed when there is no kernel to ask (offline `cni plan`).
pub const DEFAULT_LINK_MTU: u32 = 1500;

/// Why a node's conflist cannot be built; each names the Node and the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CniConfigError {
    #[error("Node {node} not found")]
    NodeNotFound { node: String },
    #[error(
        "Node {node} has no pod CIDR: spec.podCIDRs and spec.podCIDR are empty and neither \
         metadata.annotations[{KUBEWIRE_POD_CIDRS}] nor \
         metadata.annotations[{KUBE_ROUTER_POD_CIDRS}] is set"
    )]
    NoPodCidr { node: String },
    #[error("Node {node}: {field}: {message}")]
    BadPodCidr {
        node: String,
        field: String,
        message: String,
    },
    #[error("Node {node}: no --node-ip and no InternalIP in status.addresses")]
    NoNodeIp { node: String },
    #[error("Node {node}: the pod MTU {mtu} is below the minimum {minimum} for {family}")]
    MtuTooSmall {
        node: String,
        mtu: u32,
        minimum: u32,
        family: &'static str,
    },
}

/// The conflist for `node_name`. `link_mtu` is the MTU of the node's interface; the
/// pod MTU is `--mtu` when given, else `link_mtu` minus the overlay's overhead.
pub fn compile(
    snapshot: &Snapshot,
    node_name: &str,
    cni: &CniConfig,
    link_mtu: u32,
) -> Result<Conflist, CniConfigError> {
    let node = snapshot
        .node(node_name)
        .ok_or_else(|| CniConfigError::NodeNotFound {
            node: node_name.to_string(),
        })?;
    let pod_ranges = pod_ranges(node)?;
    let cidrs: Vec<IpNet> = pod_ranges.iter().map(|r| r.subnet).collect();
    let mtu = pod_mtu(node_name, &cidrs, link_mtu, &cni.network)?;
    let ranges = pod_ranges.into_iter().map(|r| vec![r]).collect();
    let mut routes = Vec::new();
    if cidrs.iter().any(|c| c.addr().is_ipv4()) {
        routes.push(Route {
            dst: IpNet::V4(Ipv4Net::default()),
        });
    }
    if cidrs.iter().any(|c| c.addr().is_ipv6()) {
        routes.push(Route {
            dst: IpNet::V6(Ipv6Net::default()),
        });
    }
    Ok(Conflist {
        cni_version: CNI_VERSION.to_string(),
        name: NETWORK_NAME.to_string(),
        plugins: vec![
            Plugin::Bridge(BridgePlugin {
                bridge: BRIDGE_NAME.to_string(),
                is_gateway: true,
                hairpin_mode: true,
                mtu,
                ipam: HostLocalIpam {
                    ipam_type: "host-local".to_string(),
                    ranges,
                    routes,
                    data_dir: cni.ipam_data_dir.clone(),
                    extra: Map::new(),
                },
                extra: Map::new(),
            }),
            Plugin::Portmap(PortmapPlugin {
                capabilities: Capabilities {
                    port_mappings: true,
                    extra: Map::new(),
                },
                snat: true,
                extra: Map::new(),
            }),
            Plugin::Loopback(LoopbackPlugin::default()),
        ],
        extra: Map::new(),
    })
}

/// The node's pod CIDRs as every controller reads them ([`crate::node::pod_cidrs`]),
/// each with its gateway. Stricter than routing, because the conflist must be exactly
/// right: any malformed value is an error, and each CIDR must leave room for a gateway
/// and a pod, at most one per IP family.
pub fn pod_ranges(node: &Node) -> Result<Vec<IpRange>, CniConfigError> {
    let (cidrs, problems) = node::pod_cidrs(node);
    if let Some(problem) = problems.into_iter().next() {
        return Err(bad_pod_cidr(problem));
    }
    if cidrs.is_empty() {
        return Err(CniConfigError::NoPodCidr {
            node: node.name_any(),
        });
    }
    let mut ranges: Vec<IpRange> = Vec::new();
    for PodCidr { cidr, field } in cidrs {
        let bad = |message: String| {
            bad_pod_cidr(FieldProblem {
                node: node.name_any(),
                field: field.clone(),
                message,
            })
        };
        let gateway = node::gateway(cidr).ok_or_else(|| {
            bad(format!(
                "`{cidr}` leaves no address for a pod after the gateway"
            ))
        })?;
        if let Some(same) = ranges
            .iter()
            .find(|r| r.subnet.addr().is_ipv4() == cidr.addr().is_ipv4())
        {
            return Err(bad(format!(
                "`{cidr}` is a second CIDR of the same family as {} (one per family)",
                same.subnet
            )));
        }
        ranges.push(IpRange {
            subnet: cidr,
            gateway,
        });
    }
    Ok(ranges)
}

fn bad_pod_cidr(problem: FieldProblem) -> CniConfigError {
    CniConfigError::BadPodCidr {
        node: problem.node,
        field: problem.field,
        message: problem.message,
    }
}

/// The address that identifies the node on the underlay: the primary of
/// [`node::underlay_ips`] (`--node-ip`, else the first InternalIP), as routing
/// chooses it.
pub fn node_ip(node: &Node, network: &NetworkConfig) -> Result<IpAddr, CniConfigError> {
    let (addresses, _) = node::ip_addresses(node);
    node::underlay_ips(&addresses, network.node_ip)
        .first()
        .copied()
        .ok_or_else(|| CniConfigError::NoNodeIp {
            node: node.name_any(),
        })
}

fn pod_mtu(
    node: &str,
    cidrs: &[IpNet],
    link_mtu: u32,
    network: &NetworkConfig,
) -> Result<u32, CniConfigError> {
    let mtu = network.pod_mtu(link_mtu);
    let (minimum, family) = if cidrs.iter().any(|c| c.addr().is_ipv6()) {
        (1280, "IPv6")
    } else {
        (576, "IPv4")
    };
    if mtu < minimum {
        return Err(CniConfigError::MtuTooSmall {
            node: node.to_string(),
            mtu,
            minimum,
            family,
        });
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::network::{OverlayEncap, OverlayType};
    use serde_json::json;

    fn node(value: serde_json::Value) -> Arc<Node> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    fn snapshot(nodes: Vec<Arc<Node>>) -> Snapshot {
        Snapshot {
            nodes,
            ..Default::default()
        }
        .sorted()
    }

    fn cni_args(mtu: Option<u32>) -> CniConfig {
        CniConfig {
            conf_path: PathBuf::from("/etc/cni/net.d/05-kubewire.conflist"),
            exclusive: true,
            ipam_data_dir: None,
            network: NetworkConfig {
                pod_mtu: mtu,
                ..routing(OverlayType::Subnet, OverlayEncap::Vxlan)
            },
        }
    }

    fn routing(overlay_type: OverlayType, overlay_encap: OverlayEncap) -> NetworkConfig {
        NetworkConfig {
            node_ip: None,
            overlay_type,
            overlay_encap,
            pod_mtu: None,
            service_cidrs: Vec::new(),
        }
    }

    /// The conflist with `cni`'s files and `--mtu` and `network`'s overlay.
    fn compile(
        snapshot: &Snapshot,
        node: &str,
        cni: &CniConfig,
        network: &NetworkConfig,
        link_mtu: u32,
    ) -> Result<Conflist, CniConfigError> {
        let network = NetworkConfig {
            pod_mtu: cni.network.pod_mtu,
            ..network.clone()
        };
        let cni = CniConfig {
            network,
            ..cni.clone()
        };
        super::compile(snapshot, node, &cni, link_mtu)
    }

    fn cidrs_of(value: serde_json::Value) -> Result<Vec<String>, String> {
        pod_ranges(&node(value))
            .map(|c| c.iter().map(|r| r.subnet.to_string()).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn pod_cidr_sources_in_order_of_precedence() {
        let spec = json!({"podCIDR": "10.0.9.0/24", "podCIDRs": ["10.0.1.0/24", "fd00:1::/64"]});
        let cases = [
            (
                json!({"metadata": {"name": "a"}, "spec": {"podCIDR": "10.0.9.0/24"}}),
                vec!["10.0.9.0/24"],
            ),
            (
                json!({"metadata": {"name": "a"}, "spec": spec}),
                vec!["10.0.1.0/24", "fd00:1::/64"],
            ),
            (
                json!({"metadata": {"name": "a", "annotations": {"kube-router.io/pod-cidrs": "10.1.0.0/24"}}, "spec": spec}),
                vec!["10.1.0.0/24"],
            ),
            (
                json!({"metadata": {"name": "a", "annotations": {
                    "kube-router.io/pod-cidrs": "10.1.0.0/24",
                    "kubewire.io/pod-cidrs": " 10.2.0.0/24 , fd00:2::/64"}}, "spec": spec}),
                vec!["10.2.0.0/24", "fd00:2::/64"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(cidrs_of(input.clone()).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn bad_pod_cidrs_name_node_and_field() {
        let cases = [
            (
                json!({"metadata": {"name": "n1"}}),
                "Node n1 has no pod CIDR",
            ),
            (
                json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.0.1.5/24"]}}),
                "Node n1: spec.podCIDRs[0]: `10.0.1.5/24` has host bits set (the network is 10.0.1.0/24)",
            ),
            (
                json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.0.1.0/24", "10.0.2.0/24"]}}),
                "Node n1: spec.podCIDRs[1]: `10.0.2.0/24` is a second CIDR of the same family",
            ),
            (
                json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.0.1.0/31"}}),
                "Node n1: spec.podCIDR: `10.0.1.0/31` leaves no address",
            ),
            (
                json!({"metadata": {"name": "n1", "annotations": {"kubewire.io/pod-cidrs": "nope"}}}),
                "Node n1: metadata.annotations[kubewire.io/pod-cidrs]: `nope` is not a CIDR",
            ),
        ];
        for (input, want) in cases {
            let err = cidrs_of(input).unwrap_err();
            assert!(err.starts_with(want), "{err}\n  wanted: {want}");
        }
    }

    #[test]
    fn pod_mtu_from_link_overlay_and_flag() {
        let v4: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let v6: Vec<IpNet> = vec!["fd00::/64".parse().unwrap()];
        let vxlan = routing(OverlayType::Subnet, OverlayEncap::Vxlan);
        let ipip = routing(OverlayType::Full, OverlayEncap::Ipip);
        let none = routing(OverlayType::None, OverlayEncap::Vxlan);
        // (pod CIDRs, --mtu, link MTU, routing flags) → pod MTU or error
        type Case<'a> = (
            &'a [IpNet],
            Option<u32>,
            u32,
            &'a NetworkConfig,
            Result<u32, &'a str>,
        );
        let cases: [Case; 6] = [
            (&v4, None, 1500, &vxlan, Ok(1450)),
            (&v4, None, 1500, &ipip, Ok(1480)),
            (&v4, None, 9000, &none, Ok(9000)),
            (&v4, Some(1400), 9000, &vxlan, Ok(1400)),
            (
                &v6,
                None,
                1300,
                &vxlan,
                Err("below the minimum 1280 for IPv6"),
            ),
            (&v4, None, 40, &vxlan, Err("below the minimum 576 for IPv4")),
        ];
        for (cidrs, flag, link, routing, want) in cases {
            let network = NetworkConfig {
                pod_mtu: flag,
                ..routing.clone()
            };
            let got = pod_mtu("n1", cidrs, link, &network).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{got:?} != {want:?}"),
            }
        }
    }

    #[test]
    fn dual_stack_conflist() {
        let snapshot = snapshot(vec![node(json!({
            "metadata": {"name": "n2"},
            "spec": {"podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"]}
        }))]);
        let mut cni = cni_args(None);
        cni.ipam_data_dir = Some(PathBuf::from("/tmp/ipam"));
        let conflist = compile(
            &snapshot,
            "n2",
            &cni,
            &routing(OverlayType::Subnet, OverlayEncap::Vxlan),
            1500,
        )
        .unwrap();
        let value = serde_json::to_value(&conflist).unwrap();
        assert_eq!(
            value,
            json!({
                "cniVersion": "1.0.0",
                "name": "kubewire",
                "plugins": [
                    {"type": "bridge", "bridge": "kube-bridge", "isGateway": true, "hairpinMode": true,
                     "mtu": 1450,
                     "ipam": {"type": "host-local",
                              "ranges": [[{"subnet": "10.244.2.0/24", "gateway": "10.244.2.1"}],
                                         [{"subnet": "fd00:10:244:2::/64", "gateway": "fd00:10:244:2::1"}]],
                              "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                              "dataDir": "/tmp/ipam"}},
                    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                    {"type": "loopback"}
                ]
            })
        );
    }

    #[test]
    fn single_stack_ipv6_gets_only_the_ipv6_default_route() {
        let snapshot = snapshot(vec![node(json!({
            "metadata": {"name": "n6"}, "spec": {"podCIDR": "fd00:6::/64"}
        }))]);
        let conflist = compile(
            &snapshot,
            "n6",
            &cni_args(Some(1400)),
            &routing(OverlayType::None, OverlayEncap::Vxlan),
            1500,
        )
        .unwrap();
        let value = serde_json::to_value(&conflist).unwrap();
        assert_eq!(
            value["plugins"][0]["ipam"]["routes"],
            json!([{"dst": "::/0"}])
        );
        assert_eq!(value["plugins"][0]["mtu"], 1400);
    }

    #[test]
    fn unknown_node_and_node_ip() {
        let snapshot = snapshot(vec![node(json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                     {"type": "InternalIP", "address": "192.0.2.1"}]}
        }))]);
        let vxlan = routing(OverlayType::Subnet, OverlayEncap::Vxlan);
        assert_eq!(
            compile(&snapshot, "nx", &cni_args(None), &vxlan, 1500)
                .unwrap_err()
                .to_string(),
            "Node nx not found"
        );
        assert_eq!(
            node_ip(&snapshot.nodes[0], &vxlan).unwrap().to_string(),
            "192.0.2.1"
        );
        let mut flagged = vxlan.clone();
        flagged.node_ip = Some("192.0.2.9".parse().unwrap());
        assert_eq!(
            node_ip(&snapshot.nodes[0], &flagged).unwrap().to_string(),
            "192.0.2.9"
        );
        let bare = node(json!({"metadata": {"name": "n3"}}));
        assert_eq!(
            node_ip(&bare, &vxlan).unwrap_err().to_string(),
            "Node n3: no --node-ip and no InternalIP in status.addresses"
        );
    }
}

//! Who this node's speaker talks to and as whom, from the flags and every Node's
//! annotations (pure): iBGP between nodes of the same AS (full mesh, or clients
//! with their route reflectors), and external peers from the flags and the node's
//! own annotations.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::annotations::NodeBgp;
use super::args::{BgpConfig, ExternalPeer};
use crate::routing::bgp::config::Families;
use crate::routing::bgp::policy::{ExportPolicy, ImportPolicy};
use crate::routing::bgp::{PeerConfig, SpeakerConfig};

/// A Node as peering needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub bgp: NodeBgp,
    /// Underlay addresses, primary first.
    pub underlay: Vec<IpAddr>,
}

/// What the speaker is started with; a change restarts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub listen: Vec<SocketAddr>,
    pub hold_time: u16,
    pub route_reflector: bool,
    pub cluster_id: Option<Ipv4Addr>,
    pub graceful_restart: Option<Duration>,
}

/// Why a neighbour is configured, for `routing plan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// Another node, iBGP full mesh.
    Mesh,
    /// A route-reflector client of this node.
    ReflectorClient,
    /// A route reflector this node is a client of (or a fellow reflector).
    Reflector,
    /// From `--peer-router-ips`.
    Flag,
    /// From this node's `peer.ips` annotation.
    Annotation,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeakerPlan {
    pub identity: Identity,
    pub peers: Vec<PeerConfig>,
    pub kinds: BTreeMap<IpAddr, (PeerKind, Option<String>)>,
    pub import: ImportPolicy,
}

impl SpeakerPlan {
    pub fn speaker_config(&self) -> SpeakerConfig {
        let id = &self.identity;
        let mut config = SpeakerConfig::new(id.asn, id.router_id);
        config.listen = id.listen.clone();
        config.hold_time = id.hold_time;
        config.route_reflector = id.route_reflector;
        config.cluster_id = id.cluster_id;
        config.import = self.import.clone();
        config.peers = self.peers.clone();
        config.graceful_restart = id
            .graceful_restart
            .map(|t| u16::try_from(t.as_secs().min(4095)).unwrap_or(4095));
        config
    }
}

/// Whether nodes `a` and `b` (same AS) have an iBGP session: clients only with the
/// reflectors of their cluster id, reflectors with each other, everyone else in
/// the full mesh. Symmetric, so both ends agree.
fn ibgp_pair(a: &NodeBgp, b: &NodeBgp, full_mesh: bool) -> Option<PeerKind> {
    match (a.rr_client, b.rr_client) {
        (Some(_), Some(_)) => None,
        (Some(cid), None) => (b.rr_server == Some(cid)).then_some(PeerKind::Reflector),
        (None, Some(cid)) => (a.rr_server == Some(cid)).then_some(PeerKind::ReflectorClient),
        (None, None) if a.rr_server.is_some() && b.rr_server.is_some() => Some(PeerKind::Reflector),
        (None, None) => full_mesh.then_some(PeerKind::Mesh),
    }
}

/// This node's speaker: `me` among `nodes`, `deny` the ranges never imported.
pub fn plan(
    config: &BgpConfig,
    me: &NodeView,
    nodes: &[NodeView],
    deny: Vec<IpNet>,
) -> Result<SpeakerPlan, String> {
    let asn_of = |n: &NodeView| n.bgp.asn.unwrap_or(config.cluster_asn);
    let asn = asn_of(me);
    let v4 = me.underlay.iter().find_map(|ip| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    });
    let v6 = me.underlay.iter().find_map(|ip| match ip {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    });
    let router_id = config
        .router_id
        .or(v4)
        .ok_or("the node has no IPv4 address to be the BGP router id: set --router-id")?;
    let identity = Identity {
        asn,
        router_id,
        listen: me
            .underlay
            .iter()
            .map(|ip| SocketAddr::new(*ip, config.port))
            .collect(),
        hold_time: config.hold_time,
        route_reflector: me.bgp.rr_server.is_some(),
        cluster_id: me.bgp.rr_server,
        graceful_restart: config.graceful_restart,
    };
    let base = |address: IpAddr, asn: u32| {
        let mut p = PeerConfig::new(address, asn);
        p.port = config.port;
        p.families = Families::BOTH;
        p.local_address = me
            .underlay
            .iter()
            .find(|ip| ip.is_ipv4() == address.is_ipv4())
            .copied();
        p.next_hop_v4 = v4;
        p.next_hop_v6 = v6;
        p
    };

    let mut peers: BTreeMap<IpAddr, (PeerConfig, PeerKind, Option<String>)> = BTreeMap::new();
    for other in nodes {
        if other.name == me.name || asn_of(other) != asn {
            continue;
        }
        let Some(kind) = ibgp_pair(&me.bgp, &other.bgp, config.nodes_full_mesh) else {
            continue;
        };
        // Same family as our primary address, so both ends pick the same pair.
        let Some(address) = me.underlay.first().and_then(|mine| {
            other
                .underlay
                .iter()
                .find(|ip| ip.is_ipv4() == mine.is_ipv4())
        }) else {
            continue;
        };
        let mut p = base(*address, asn);
        p.route_reflector_client = kind == PeerKind::ReflectorClient;
        peers.insert(*address, (p, kind, Some(other.name.clone())));
    }
    let export = ExportPolicy {
        communities: vec![],
        prepend: me.bgp.prepend.map_or(0, |(_, n)| n),
        prepend_as: me.bgp.prepend.map(|(a, _)| a),
        only_local: true,
    };
    let external = config
        .peers
        .iter()
        .map(|p| (p, PeerKind::Flag))
        .chain(me.bgp.peers.iter().map(|p| (p, PeerKind::Annotation)));
    for (
        ExternalPeer {
            address,
            asn: peer_asn,
            password,
        },
        kind,
    ) in external
    {
        let mut p = base(*address, *peer_asn);
        p.password = password.clone();
        p.export = export.clone();
        if *peer_asn != asn {
            p.multihop_ttl = config.multihop_ttl;
        } else {
            p.export.prepend = 0;
        }
        // The node's annotation wins over the flag for the same address.
        peers.insert(*address, (p, kind, None));
    }
    let mut kinds = BTreeMap::new();
    let peers = peers
        .into_iter()
        .map(|(address, (p, kind, node))| {
            kinds.insert(address, (kind, node));
            p
        })
        .collect();
    Ok(SpeakerPlan {
        identity,
        peers,
        kinds,
        import: ImportPolicy {
            deny,
            allow_default: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::bgp_controller::args::Advertise;

    fn config() -> BgpConfig {
        BgpConfig {
            cluster_asn: 64512,
            nodes_full_mesh: true,
            peers: vec![ExternalPeer {
                address: "192.0.2.254".parse().expect("ip"),
                asn: 65000,
                password: None,
            }],
            multihop_ttl: Some(3),
            graceful_restart: None,
            router_id: None,
            advertise: Advertise::default(),
            port: 179,
            hold_time: 90,
            status_addr: "127.0.0.1:1".parse().expect("addr"),
        }
    }

    fn node(name: &str, ip: &str, bgp: NodeBgp) -> NodeView {
        NodeView {
            name: name.into(),
            bgp,
            underlay: vec![ip.parse().expect("ip")],
        }
    }

    fn addresses(plan: &SpeakerPlan) -> Vec<String> {
        plan.peers.iter().map(|p| p.address.to_string()).collect()
    }

    #[test]
    fn full_mesh_of_the_same_as_plus_external_peers() {
        let nodes = vec![
            node("a", "10.0.0.1", NodeBgp::default()),
            node("b", "10.0.0.2", NodeBgp::default()),
            node(
                "c",
                "10.0.1.3",
                NodeBgp {
                    asn: Some(65099),
                    ..NodeBgp::default()
                },
            ),
        ];
        let plan = plan(&config(), &nodes[0], &nodes, vec![]).expect("plan");
        assert_eq!(addresses(&plan), ["10.0.0.2", "192.0.2.254"]);
        assert_eq!(plan.identity.router_id, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            plan.identity.listen,
            vec!["10.0.0.1:179".parse().expect("addr")]
        );
        let mesh = &plan.peers[0];
        assert_eq!(mesh.asn, 64512);
        assert_eq!(mesh.local_address, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(mesh.multihop_ttl, None);
        let ext = &plan.peers[1];
        assert_eq!(ext.multihop_ttl, Some(3));
        // Node c is alone in its AS: only the external peer.
        let plan_c = super::plan(&config(), &nodes[2], &nodes, vec![]).expect("plan");
        assert_eq!(addresses(&plan_c), ["192.0.2.254"]);
        assert_eq!(plan_c.identity.asn, 65099);
    }

    #[test]
    fn route_reflectors_and_clients_pair_symmetrically() {
        let cid = Some(Ipv4Addr::new(0, 0, 0, 1));
        let server = NodeBgp {
            rr_server: cid,
            ..NodeBgp::default()
        };
        let client = NodeBgp {
            rr_client: cid,
            ..NodeBgp::default()
        };
        let other_client = NodeBgp {
            rr_client: Some(Ipv4Addr::new(0, 0, 0, 2)),
            ..NodeBgp::default()
        };
        let nodes = vec![
            node("s", "10.0.0.1", server),
            node("c1", "10.0.0.2", client.clone()),
            node("c2", "10.0.0.3", client),
            node("x", "10.0.0.4", other_client),
            node("p", "10.0.0.5", NodeBgp::default()),
        ];
        let mut cfg = config();
        cfg.peers.clear();
        let of = |i: usize, cfg: &BgpConfig| plan(cfg, &nodes[i], &nodes, vec![]).expect("plan");
        let s = of(0, &cfg);
        assert_eq!(addresses(&s), ["10.0.0.2", "10.0.0.3", "10.0.0.5"]);
        assert!(s.identity.route_reflector);
        assert!(s.peers[0].route_reflector_client && !s.peers[2].route_reflector_client);
        assert_eq!(addresses(&of(1, &cfg)), ["10.0.0.1"]);
        assert!(addresses(&of(3, &cfg)).is_empty());
        assert_eq!(addresses(&of(4, &cfg)), ["10.0.0.1"]);
        // Without the full mesh, plain nodes only keep their external peers.
        cfg.nodes_full_mesh = false;
        assert!(addresses(&of(4, &cfg)).is_empty());
        assert_eq!(addresses(&of(0, &cfg)), ["10.0.0.2", "10.0.0.3"]);
    }

    #[test]
    fn annotation_peers_override_flags_and_carry_prepend() {
        let me = node(
            "a",
            "10.0.0.1",
            NodeBgp {
                peers: vec![ExternalPeer {
                    address: "192.0.2.254".parse().expect("ip"),
                    asn: 65001,
                    password: Some("pw".into()),
                }],
                prepend: Some((64512, 2)),
                ..NodeBgp::default()
            },
        );
        let plan = plan(&config(), &me, std::slice::from_ref(&me), vec![]).expect("plan");
        assert_eq!(plan.peers.len(), 1);
        assert_eq!(plan.peers[0].asn, 65001);
        assert_eq!(plan.peers[0].password.as_deref(), Some("pw"));
        assert_eq!(plan.peers[0].export.prepend, 2);
        assert_eq!(
            plan.kinds.values().next().map(|k| k.0),
            Some(PeerKind::Annotation)
        );
        let v6_only = node("b", "2001:db8::1", NodeBgp::default());
        assert!(super::plan(&config(), &v6_only, &[], vec![]).is_err());
    }
}

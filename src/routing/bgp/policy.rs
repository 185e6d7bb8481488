//! Import and export policy as pure functions: a route and who it is for in, a
//! verdict or the rewritten attributes out.
//!
//! Import keeps out what a node must never install (configured deny ranges, the
//! default route unless allowed, AS-path and reflection loops). Export decides what
//! each neighbour may see (split horizon, iBGP rules, route reflection per
//! RFC 4456) and rewrites it for that neighbour (AS prepend, next hop, communities).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;

use super::config::Families;
use super::route::{NextHop, PathAttrs};

/// LOCAL_PREF given to routes that carry none when sent to an iBGP peer (RFC 4271
/// §5.1.5 asks for it on every iBGP route; 100 is the common default).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// What every neighbour's routes are checked against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportPolicy {
    /// Prefixes inside any of these ranges are rejected (e.g. the cluster's own pod
    /// and service CIDRs, which a neighbour must not redirect).
    pub deny: Vec<IpNet>,
    /// Accept 0.0.0.0/0 and ::/0; off by default so a neighbour cannot take over the
    /// node's default route.
    pub allow_default: bool,
}

/// Why a received route is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    DeniedRange(IpNet),
    DefaultRoute,
    /// Our AS is already in the path (RFC 4271 §9.1.2).
    AsLoop,
    /// A reflected route that we originated or reflected before (RFC 4456 §8).
    ReflectionLoop,
}

/// Who we are, as policy needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIdentity {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub route_reflector: bool,
    pub cluster_id: Ipv4Addr,
}

impl ImportPolicy {
    pub fn check(
        &self,
        prefix: &IpNet,
        attrs: &PathAttrs,
        local: &LocalIdentity,
    ) -> Result<(), Rejection> {
        if prefix.prefix_len() == 0 && !self.allow_default {
            return Err(Rejection::DefaultRoute);
        }
        if let Some(range) = self.deny.iter().find(|r| r.contains(prefix)) {
            return Err(Rejection::DeniedRange(*range));
        }
        if attrs.contains_as(local.asn) {
            return Err(Rejection::AsLoop);
        }
        if attrs.originator_id == Some(local.router_id)
            || attrs.cluster_list.contains(&local.cluster_id)
        {
            return Err(Rejection::ReflectionLoop);
        }
        Ok(())
    }
}

/// Per-neighbour rewriting on export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportPolicy {
    /// RFC 1997 communities added to every route sent (`asn << 16 | value`).
    pub communities: Vec<u32>,
    /// Extra copies of the local AS put in front of the path, eBGP only (the one
    /// copy every eBGP route gets is not counted).
    pub prepend: u8,
    /// The AS those copies are of (kube-router's `path-prepend.as`); default the
    /// local AS.
    pub prepend_as: Option<u32>,
    /// Send only locally originated routes (a node is not a transit router for its
    /// external peers: they hear each node's own routes from that node).
    pub only_local: bool,
}

/// Where a route in the Loc-RIB came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSource {
    /// Announced through the speaker's API.
    Local,
    Peer(PeerIdentity),
}

/// A neighbour as route selection and export see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub address: IpAddr,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub ibgp: bool,
    pub route_reflector_client: bool,
}

/// The neighbour a route is exported to, with what next-hop-self resolves to on its
/// session.
#[derive(Debug, Clone)]
pub struct ExportTarget<'a> {
    pub peer: &'a PeerIdentity,
    pub families: Families,
    pub policy: &'a ExportPolicy,
    /// Our address for IPv4 routes on this session (configured or the session's
    /// local address).
    pub self_v4: Option<Ipv4Addr>,
    /// Our global IPv6 next hop on this session, and a link-local one for on-link
    /// neighbours.
    pub self_v6: Option<Ipv6Addr>,
    pub self_v6_link_local: Option<Ipv6Addr>,
}

/// The attributes `route` is sent to `to` with, or `None` if it is not sent.
pub fn export(
    prefix: &IpNet,
    attrs: &PathAttrs,
    source: &RouteSource,
    local: &LocalIdentity,
    to: &ExportTarget,
) -> Option<Arc<PathAttrs>> {
    if !to.families.carries(prefix.addr()) {
        return None;
    }
    let mut out = attrs.clone();
    match source {
        RouteSource::Local => {}
        RouteSource::Peer(_) if to.policy.only_local => return None,
        RouteSource::Peer(from) => {
            if from.address == to.peer.address {
                // Split horizon: never back to where it came from.
                return None;
            }
            if from.ibgp && to.peer.ibgp {
                // iBGP routes reach other iBGP peers only through a reflector: from a
                // client to everyone, from a non-client to clients (RFC 4456 §6).
                if !local.route_reflector
                    || !(from.route_reflector_client || to.peer.route_reflector_client)
                {
                    return None;
                }
                out.originator_id.get_or_insert(from.router_id);
                out.cluster_list.insert(0, local.cluster_id);
            }
        }
    }

    if to.peer.ibgp {
        out.local_pref.get_or_insert(DEFAULT_LOCAL_PREF);
    } else {
        // Prepended copies sit behind the AS every eBGP hop adds.
        out.prepend(
            to.policy.prepend_as.unwrap_or(local.asn),
            to.policy.prepend as usize,
        );
        out.prepend(local.asn, 1);
        out.local_pref = None;
        out.originator_id = None;
        out.cluster_list.clear();
        if *source != RouteSource::Local {
            // A MED is meant for the neighbouring AS only (RFC 4271 §5.1.4).
            out.med = None;
        }
    }

    // Next hop: ours for locally originated routes without one and for every eBGP
    // route we relay; iBGP keeps the learned next hop (RFC 4271 §5.1.3).
    let keep_learned = match source {
        RouteSource::Local => attrs.next_hop != NextHop::Local,
        RouteSource::Peer(_) => to.peer.ibgp,
    };
    let family_fits = matches!(
        (prefix, attrs.next_hop),
        (IpNet::V4(_), NextHop::V4(_)) | (IpNet::V6(_), NextHop::V6 { .. })
    );
    if !(keep_learned && family_fits) {
        out.next_hop = match prefix {
            IpNet::V4(_) => NextHop::V4(to.self_v4?),
            IpNet::V6(_) => NextHop::V6 {
                global: to.self_v6.or(to.self_v6_link_local)?,
                link_local: to.self_v6_link_local,
            },
        };
    }

    for c in &to.policy.communities {
        if !out.communities.contains(c) {
            out.communities.push(*c);
        }
    }
    Some(Arc::new(out))
}

#[cfg(test)]
mod tests {
    use super::super::route::AsSegment;
    use super::*;
    use netgauze_bgp_pkt::path_attribute::Origin;

    const LOCAL: LocalIdentity = LocalIdentity {
        asn: 65000,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        route_reflector: false,
        cluster_id: Ipv4Addr::new(10, 0, 0, 1),
    };

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    fn learned(path: &[u32]) -> PathAttrs {
        PathAttrs {
            origin: Origin::IGP,
            as_path: vec![AsSegment {
                set: false,
                asns: path.to_vec(),
            }],
            next_hop: NextHop::V4(Ipv4Addr::new(192, 0, 2, 9)),
            med: Some(7),
            local_pref: Some(200),
            communities: vec![],
            atomic_aggregate: false,
            originator_id: None,
            cluster_list: vec![],
        }
    }

    fn peer(addr: [u8; 4], asn: u32, rr_client: bool) -> PeerIdentity {
        PeerIdentity {
            address: IpAddr::from(addr),
            asn,
            router_id: Ipv4Addr::from(addr),
            ibgp: asn == LOCAL.asn,
            route_reflector_client: rr_client,
        }
    }

    fn target<'a>(peer: &'a PeerIdentity, policy: &'a ExportPolicy) -> ExportTarget<'a> {
        ExportTarget {
            peer,
            families: Families::BOTH,
            policy,
            self_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            self_v6: Some("2001:db8::1".parse().expect("addr")),
            self_v6_link_local: Some("fe80::1".parse().expect("addr")),
        }
    }

    #[test]
    fn import_rejects_denied_ranges_default_and_loops() {
        let policy = ImportPolicy {
            deny: vec![net("10.244.0.0/16")],
            allow_default: false,
        };
        let ok = learned(&[65001]);
        let cases = [
            (
                "10.244.3.0/24",
                ok.clone(),
                Err(Rejection::DeniedRange(net("10.244.0.0/16"))),
            ),
            (
                "10.244.0.0/16",
                ok.clone(),
                Err(Rejection::DeniedRange(net("10.244.0.0/16"))),
            ),
            ("10.0.0.0/8", ok.clone(), Ok(())),
            ("0.0.0.0/0", ok.clone(), Err(Rejection::DefaultRoute)),
            ("::/0", ok.clone(), Err(Rejection::DefaultRoute)),
            (
                "10.1.0.0/24",
                learned(&[65001, 65000]),
                Err(Rejection::AsLoop),
            ),
        ];
        for (prefix, attrs, want) in cases {
            assert_eq!(policy.check(&net(prefix), &attrs, &LOCAL), want, "{prefix}");
        }
        let allow = ImportPolicy {
            deny: vec![],
            allow_default: true,
        };
        assert_eq!(allow.check(&net("0.0.0.0/0"), &ok, &LOCAL), Ok(()));
        let mut reflected = ok;
        reflected.originator_id = Some(LOCAL.router_id);
        assert_eq!(
            allow.check(&net("10.0.0.0/8"), &reflected, &LOCAL),
            Err(Rejection::ReflectionLoop)
        );
    }

    #[test]
    fn ebgp_export_prepends_sets_next_hop_self_and_strips_ibgp_attributes() {
        let from = peer([192, 0, 2, 9], 65001, false);
        let to = peer([192, 0, 2, 7], 65002, false);
        let policy = ExportPolicy {
            communities: vec![(65000 << 16) | 42],
            prepend: 2,
            prepend_as: Some(65009),
            only_local: false,
        };
        let out = export(
            &net("10.1.0.0/24"),
            &learned(&[65001]),
            &RouteSource::Peer(from),
            &LOCAL,
            &target(&to, &policy),
        )
        .expect("exported");
        assert_eq!(out.as_path[0].asns, vec![65000, 65009, 65009, 65001]);
        assert_eq!(out.next_hop, NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(out.local_pref, None);
        assert_eq!(out.med, None);
        assert_eq!(out.communities, vec![(65000 << 16) | 42]);
    }

    #[test]
    fn split_horizon_and_ibgp_rules() {
        let policy = ExportPolicy::default();
        let ibgp_a = peer([10, 0, 0, 2], 65000, false);
        let ibgp_b = peer([10, 0, 0, 3], 65000, false);
        let client = peer([10, 0, 0, 4], 65000, true);
        let ebgp = peer([192, 0, 2, 9], 65001, false);
        let route = learned(&[65001]);
        let p = net("10.1.0.0/24");
        let src = |p: &PeerIdentity| RouteSource::Peer(p.clone());
        // Back to the sender: never.
        assert!(export(&p, &route, &src(&ebgp), &LOCAL, &target(&ebgp, &policy)).is_none());
        // eBGP-learned to iBGP: yes, next hop kept, local pref added.
        let out =
            export(&p, &route, &src(&ebgp), &LOCAL, &target(&ibgp_a, &policy)).expect("exported");
        assert_eq!(out.next_hop, route.next_hop);
        assert_eq!(out.local_pref, Some(200));
        assert_eq!(out.as_path, route.as_path);
        // iBGP to iBGP without a reflector: no, even to a "client".
        assert!(export(&p, &route, &src(&ibgp_a), &LOCAL, &target(&ibgp_b, &policy)).is_none());
        assert!(export(&p, &route, &src(&ibgp_a), &LOCAL, &target(&client, &policy)).is_none());
        // With a reflector: non-client → client only; client → everyone.
        let rr = LocalIdentity {
            route_reflector: true,
            ..LOCAL
        };
        assert!(export(&p, &route, &src(&ibgp_a), &rr, &target(&ibgp_b, &policy)).is_none());
        let out =
            export(&p, &route, &src(&ibgp_a), &rr, &target(&client, &policy)).expect("reflected");
        assert_eq!(out.originator_id, Some(ibgp_a.router_id));
        assert_eq!(out.cluster_list, vec![rr.cluster_id]);
        assert!(export(&p, &route, &src(&client), &rr, &target(&ibgp_b, &policy)).is_some());
        // Not to a neighbour that takes only our own routes.
        let only_local = ExportPolicy {
            only_local: true,
            ..ExportPolicy::default()
        };
        assert!(
            export(
                &p,
                &route,
                &src(&ibgp_a),
                &LOCAL,
                &target(&ebgp, &only_local)
            )
            .is_none()
        );
        // iBGP-learned to eBGP: yes, next hop self.
        let out =
            export(&p, &route, &src(&ibgp_a), &LOCAL, &target(&ebgp, &policy)).expect("exported");
        assert_eq!(out.next_hop, NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn local_routes_get_next_hop_self_per_family() {
        let policy = ExportPolicy::default();
        let ibgp = peer([10, 0, 0, 2], 65000, false);
        let local = PathAttrs::local(NextHop::Local);
        let v6 = export(
            &net("2001:db8:5::/64"),
            &local,
            &RouteSource::Local,
            &LOCAL,
            &target(&ibgp, &policy),
        )
        .expect("exported");
        assert_eq!(
            v6.next_hop,
            NextHop::V6 {
                global: "2001:db8::1".parse().expect("addr"),
                link_local: Some("fe80::1".parse().expect("addr")),
            }
        );
        assert_eq!(v6.local_pref, Some(DEFAULT_LOCAL_PREF));
        // An explicit next hop of the right family is kept.
        let explicit = PathAttrs::local(NextHop::V4(Ipv4Addr::new(192, 0, 2, 50)));
        let v4 = export(
            &net("10.5.0.0/24"),
            &explicit,
            &RouteSource::Local,
            &LOCAL,
            &target(&ibgp, &policy),
        )
        .expect("exported");
        assert_eq!(v4.next_hop, NextHop::V4(Ipv4Addr::new(192, 0, 2, 50)));
        // No IPv4 address on the session: IPv4 routes are not sent.
        let mut t = target(&ibgp, &policy);
        t.self_v4 = None;
        assert!(export(&net("10.5.0.0/24"), &local, &RouteSource::Local, &LOCAL, &t).is_none());
        // Family not negotiated.
        t.families = Families::IPV4;
        assert!(
            export(
                &net("2001:db8:5::/64"),
                &local,
                &RouteSource::Local,
                &LOCAL,
                &t
            )
            .is_none()
        );
    }
}

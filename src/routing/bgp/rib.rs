//! The routing information bases (RFC 4271 §3.2): what each neighbour sent
//! (Adj-RIB-In), the best route per prefix (Loc-RIB), and what each neighbour was
//! sent (Adj-RIB-Out).
//!
//! Every operation is pure bookkeeping and returns what changed, so the speaker can
//! turn Loc-RIB changes into learned-route events and Adj-RIB-Out changes into
//! UPDATEs. Import policy is applied when a route enters Adj-RIB-In (both the
//! received and the accepted count are kept); selection follows RFC 4271 §9.1.2.2
//! with the usual tie-breaks.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::policy::{
    DEFAULT_LOCAL_PREF, ExportTarget, ImportPolicy, LocalIdentity, PeerIdentity, RouteSource,
    export,
};
use super::route::{OutChange, PathAttrs, RouteChange};

/// A route as selection sees it: where it came from and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub source: RouteSource,
    pub attrs: Arc<PathAttrs>,
}

/// Orders two candidates for the same prefix: `Less` means `a` is preferred.
///
/// Highest LOCAL_PREF, shortest AS_PATH, lowest ORIGIN, lowest MED among routes
/// from the same neighbouring AS, locally originated and eBGP over iBGP, lowest
/// router id (ORIGINATOR_ID for reflected routes), shortest CLUSTER_LIST, lowest
/// neighbour address.
pub fn compare(a: &Candidate, b: &Candidate) -> Ordering {
    let lp = |c: &Candidate| c.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
    let kind = |c: &Candidate| match &c.source {
        RouteSource::Local => 0,
        RouteSource::Peer(p) if !p.ibgp => 1,
        RouteSource::Peer(_) => 2,
    };
    let router_id = |c: &Candidate| match &c.source {
        RouteSource::Local => 0,
        RouteSource::Peer(p) => u32::from(c.attrs.originator_id.unwrap_or(p.router_id)),
    };
    let address = |c: &Candidate| match &c.source {
        RouteSource::Local => None,
        RouteSource::Peer(p) => Some(p.address),
    };
    lp(b)
        .cmp(&lp(a))
        .then_with(|| a.attrs.as_path_len().cmp(&b.attrs.as_path_len()))
        .then_with(|| (a.attrs.origin as u8).cmp(&(b.attrs.origin as u8)))
        .then_with(|| {
            if a.attrs.neighbour_as() == b.attrs.neighbour_as() {
                a.attrs.med.unwrap_or(0).cmp(&b.attrs.med.unwrap_or(0))
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| kind(a).cmp(&kind(b)))
        .then_with(|| router_id(a).cmp(&router_id(b)))
        .then_with(|| a.attrs.cluster_list.len().cmp(&b.attrs.cluster_list.len()))
        .then_with(|| address(a).cmp(&address(b)))
}

/// One neighbour's routes, as received.
#[derive(Debug, Default)]
pub struct AdjRibIn {
    /// Prefix → attributes and whether import policy accepted them.
    routes: BTreeMap<IpNet, (Arc<PathAttrs>, bool)>,
    /// Routes kept from before the neighbour restarted (RFC 4724), not yet
    /// announced again: gone at its End-of-RIB or when the restart time ends.
    stale: std::collections::BTreeSet<IpNet>,
}

impl AdjRibIn {
    pub fn received(&self) -> usize {
        self.routes.len()
    }

    pub fn accepted(&self) -> usize {
        self.routes.values().filter(|(_, ok)| *ok).count()
    }
}

/// What one neighbour was sent.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    routes: BTreeMap<IpNet, Arc<PathAttrs>>,
}

impl AdjRibOut {
    pub fn advertised(&self) -> usize {
        self.routes.len()
    }

    /// Records what the neighbour should have for `prefix` and returns the change
    /// to send, if any.
    pub fn set(&mut self, prefix: IpNet, desired: Option<Arc<PathAttrs>>) -> Option<OutChange> {
        match desired {
            Some(attrs) => {
                if self.routes.get(&prefix) == Some(&attrs) {
                    return None;
                }
                self.routes.insert(prefix, attrs.clone());
                Some(OutChange::Announce { prefix, attrs })
            }
            None => self
                .routes
                .remove(&prefix)
                .map(|_| OutChange::Withdraw(prefix)),
        }
    }

    /// Everything, as announcements: a ROUTE-REFRESH answer (RFC 2918).
    pub fn replay(&self) -> Vec<OutChange> {
        self.routes
            .iter()
            .map(|(prefix, attrs)| OutChange::Announce {
                prefix: *prefix,
                attrs: attrs.clone(),
            })
            .collect()
    }
}

/// A change of the best route for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestChange {
    pub prefix: IpNet,
    pub old: Option<Candidate>,
    pub new: Option<Candidate>,
}

/// Adj-RIBs-In, locally originated routes and the Loc-RIB of one speaker.
#[derive(Debug)]
pub struct Rib {
    local_identity: LocalIdentity,
    import: ImportPolicy,
    peers: HashMap<IpAddr, (PeerIdentity, AdjRibIn)>,
    originated: BTreeMap<IpNet, Arc<PathAttrs>>,
    loc: BTreeMap<IpNet, Candidate>,
}

impl Rib {
    pub fn new(local_identity: LocalIdentity, import: ImportPolicy) -> Rib {
        Rib {
            local_identity,
            import,
            peers: HashMap::new(),
            originated: BTreeMap::new(),
            loc: BTreeMap::new(),
        }
    }

    pub fn local_identity(&self) -> &LocalIdentity {
        &self.local_identity
    }

    /// The Loc-RIB: best route per prefix.
    pub fn best(&self) -> &BTreeMap<IpNet, Candidate> {
        &self.loc
    }

    pub fn adj_rib_in(&self, peer: &IpAddr) -> Option<&AdjRibIn> {
        self.peers.get(peer).map(|(_, rib)| rib)
    }

    /// A session came up: its (empty) Adj-RIB-In starts, or, after a graceful
    /// restart, keeps the stale routes until End-of-RIB.
    pub fn peer_up(&mut self, peer: PeerIdentity) {
        match self.peers.get_mut(&peer.address) {
            Some((identity, rib)) if !rib.stale.is_empty() => *identity = peer,
            _ => {
                self.peers.insert(peer.address, (peer, AdjRibIn::default()));
            }
        }
    }

    /// A session that negotiated graceful restart went down: its routes stay, as
    /// stale, and keep forwarding until it comes back.
    pub fn peer_restarting(&mut self, address: &IpAddr) {
        if let Some((_, rib)) = self.peers.get_mut(address) {
            rib.stale = rib.routes.keys().copied().collect();
        }
    }

    /// Whether the neighbour's routes are kept for a restart.
    pub fn has_stale(&self, address: &IpAddr) -> bool {
        self.peers
            .get(address)
            .is_some_and(|(_, rib)| !rib.stale.is_empty())
    }

    /// Drops the neighbour's stale routes of one family (End-of-RIB) or of both
    /// (`None`: the restart time is over).
    pub fn flush_stale(&mut self, address: &IpAddr, ipv6: Option<bool>) -> Vec<BestChange> {
        let Some((_, rib)) = self.peers.get_mut(address) else {
            return vec![];
        };
        let gone: Vec<IpNet> = rib
            .stale
            .iter()
            .filter(|p| ipv6.is_none_or(|v6| p.addr().is_ipv6() == v6))
            .copied()
            .collect();
        for prefix in &gone {
            rib.stale.remove(prefix);
            rib.routes.remove(prefix);
        }
        self.select(gone)
    }

    /// A session went down: its routes are gone.
    pub fn peer_down(&mut self, address: &IpAddr) -> Vec<BestChange> {
        let Some((_, rib)) = self.peers.remove(address) else {
            return vec![];
        };
        let prefixes: Vec<IpNet> = rib.routes.into_keys().collect();
        self.select(prefixes)
    }

    /// Applies what a neighbour sent.
    pub fn receive(&mut self, address: &IpAddr, changes: Vec<RouteChange>) -> Vec<BestChange> {
        let Some((_, rib)) = self.peers.get_mut(address) else {
            return vec![];
        };
        let mut touched = vec![];
        for change in changes {
            match change {
                RouteChange::EndOfRib { .. } => {}
                RouteChange::Announce { prefix, attrs } => {
                    rib.stale.remove(&prefix);
                    let verdict = self.import.check(&prefix, &attrs, &self.local_identity);
                    if let Err(why) = verdict {
                        tracing::debug!(%address, %prefix, ?why, "route rejected by import policy");
                    }
                    rib.routes.insert(prefix, (attrs, verdict.is_ok()));
                    touched.push(prefix);
                }
                RouteChange::Withdraw(prefix) => {
                    rib.stale.remove(&prefix);
                    if rib.routes.remove(&prefix).is_some() {
                        touched.push(prefix);
                    }
                }
            }
        }
        self.select(touched)
    }

    /// Replaces the import policy and re-checks every received route.
    pub fn set_import(&mut self, import: ImportPolicy) -> Vec<BestChange> {
        if import == self.import {
            return vec![];
        }
        self.import = import;
        let mut touched = vec![];
        for (address, (_, rib)) in self.peers.iter_mut() {
            for (prefix, (attrs, accepted)) in rib.routes.iter_mut() {
                let verdict = self.import.check(prefix, attrs, &self.local_identity);
                if verdict.is_ok() != *accepted {
                    tracing::debug!(%address, %prefix, ?verdict, "import policy changed its verdict");
                    *accepted = verdict.is_ok();
                    touched.push(*prefix);
                }
            }
        }
        self.select(touched)
    }

    /// Announces (or changes) a locally originated route.
    pub fn originate(&mut self, prefix: IpNet, attrs: Arc<PathAttrs>) -> Vec<BestChange> {
        self.originated.insert(prefix, attrs);
        self.select(vec![prefix])
    }

    /// Withdraws a locally originated route.
    pub fn withdraw_local(&mut self, prefix: IpNet) -> Vec<BestChange> {
        if self.originated.remove(&prefix).is_none() {
            return vec![];
        }
        self.select(vec![prefix])
    }

    /// Re-runs selection for `prefixes` and returns the ones whose best changed.
    fn select(&mut self, mut prefixes: Vec<IpNet>) -> Vec<BestChange> {
        prefixes.sort();
        prefixes.dedup();
        let mut changes = vec![];
        for prefix in prefixes {
            let mut best: Option<Candidate> = self.originated.get(&prefix).map(|attrs| Candidate {
                source: RouteSource::Local,
                attrs: attrs.clone(),
            });
            for (peer, rib) in self.peers.values() {
                if let Some((attrs, true)) = rib.routes.get(&prefix) {
                    let c = Candidate {
                        source: RouteSource::Peer(peer.clone()),
                        attrs: attrs.clone(),
                    };
                    if best
                        .as_ref()
                        .is_none_or(|b| compare(&c, b) == Ordering::Less)
                    {
                        best = Some(c);
                    }
                }
            }
            let old = match &best {
                Some(b) => self.loc.insert(prefix, b.clone()),
                None => self.loc.remove(&prefix),
            };
            if old != best {
                changes.push(BestChange {
                    prefix,
                    old,
                    new: best,
                });
            }
        }
        changes
    }

    /// What `target` should have for `prefix` under export policy.
    pub fn export_for(&self, prefix: &IpNet, target: &ExportTarget) -> Option<Arc<PathAttrs>> {
        let best = self.loc.get(prefix)?;
        export(
            prefix,
            &best.attrs,
            &best.source,
            &self.local_identity,
            target,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::Families;
    use super::super::policy::ExportPolicy;
    use super::super::route::{AsSegment, NextHop};
    use super::*;
    use netgauze_bgp_pkt::path_attribute::Origin;
    use std::net::Ipv4Addr;

    const LOCAL: LocalIdentity = LocalIdentity {
        asn: 65000,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        route_reflector: false,
        cluster_id: Ipv4Addr::new(10, 0, 0, 1),
    };

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    fn peer(last: u8, asn: u32) -> PeerIdentity {
        PeerIdentity {
            address: IpAddr::from([192, 0, 2, last]),
            asn,
            router_id: Ipv4Addr::new(10, 9, 9, last),
            ibgp: asn == LOCAL.asn,
            route_reflector_client: false,
        }
    }

    fn attrs(path: &[u32], f: impl FnOnce(&mut PathAttrs)) -> Arc<PathAttrs> {
        let mut a = PathAttrs {
            origin: Origin::IGP,
            as_path: vec![AsSegment {
                set: false,
                asns: path.to_vec(),
            }],
            next_hop: NextHop::V4(Ipv4Addr::new(192, 0, 2, 200)),
            med: None,
            local_pref: None,
            communities: vec![],
            atomic_aggregate: false,
            originator_id: None,
            cluster_list: vec![],
        };
        f(&mut a);
        Arc::new(a)
    }

    fn cand(p: &PeerIdentity, a: Arc<PathAttrs>) -> Candidate {
        Candidate {
            source: RouteSource::Peer(p.clone()),
            attrs: a,
        }
    }

    #[test]
    fn best_path_steps_in_order() {
        let (e1, e2, i3) = (peer(1, 65001), peer(2, 65002), peer(3, 65000));
        let e1b = peer(4, 65001);
        use Ordering::*;
        let cases: Vec<(&str, Candidate, Candidate, Ordering)> = vec![
            (
                "higher local pref wins over shorter path",
                cand(&i3, attrs(&[65001, 65005], |a| a.local_pref = Some(200))),
                cand(&e1, attrs(&[65001], |_| {})),
                Less,
            ),
            (
                "shorter AS path",
                cand(&e2, attrs(&[65002], |_| {})),
                cand(&e1, attrs(&[65001, 65003], |_| {})),
                Less,
            ),
            (
                "AS_SET counts once",
                cand(
                    &e2,
                    attrs(&[65002], |a| {
                        a.as_path.push(AsSegment {
                            set: true,
                            asns: vec![1, 2, 3],
                        })
                    }),
                ),
                cand(&e1, attrs(&[65001, 65003, 65004], |_| {})),
                Less,
            ),
            (
                "lower origin",
                cand(&e2, attrs(&[65002], |a| a.origin = Origin::Incomplete)),
                cand(&e1, attrs(&[65001], |a| a.origin = Origin::EGP)),
                Greater,
            ),
            (
                "lower MED from the same neighbour AS",
                cand(&e1, attrs(&[65001], |a| a.med = Some(10))),
                cand(&e1b, attrs(&[65001], |a| a.med = Some(5))),
                Greater,
            ),
            (
                "MED ignored across neighbour ASes: eBGP lowest router id decides",
                cand(&e1, attrs(&[65001], |a| a.med = Some(10))),
                cand(&e2, attrs(&[65002], |a| a.med = Some(5))),
                Less,
            ),
            (
                "eBGP over iBGP",
                cand(&i3, attrs(&[65009], |_| {})),
                cand(&e2, attrs(&[65002], |_| {})),
                Greater,
            ),
            (
                "lowest router id",
                cand(&e2, attrs(&[65001], |_| {})),
                cand(&e1, attrs(&[65001], |_| {})),
                Greater,
            ),
            (
                "lowest neighbour address when router ids tie",
                cand(&e1, attrs(&[65001], |_| {})),
                cand(
                    &PeerIdentity {
                        address: IpAddr::from([192, 0, 2, 9]),
                        ..e1.clone()
                    },
                    attrs(&[65001], |_| {}),
                ),
                Less,
            ),
            (
                "locally originated over learned at equal attributes",
                Candidate {
                    source: RouteSource::Local,
                    attrs: attrs(&[], |_| {}),
                },
                cand(&e1, attrs(&[], |_| {})),
                Less,
            ),
        ];
        for (name, a, b, want) in cases {
            assert_eq!(compare(&a, &b), want, "{name}");
            assert_eq!(compare(&b, &a), want.reverse(), "{name} (reversed)");
        }
    }

    #[test]
    fn graceful_restart_keeps_stale_routes_until_end_of_rib_or_timeout() {
        let mut rib = Rib::new(LOCAL, ImportPolicy::default());
        let e1 = peer(1, 65001);
        rib.peer_up(e1.clone());
        let a = attrs(&[65001], |_| {});
        let announce = |p: &str| RouteChange::Announce {
            prefix: net(p),
            attrs: a.clone(),
        };
        rib.receive(
            &e1.address,
            vec![
                announce("10.1.0.0/24"),
                announce("10.2.0.0/24"),
                announce("2001:db8::/48"),
            ],
        );
        // Down for a restart: nothing leaves the Loc-RIB.
        rib.peer_restarting(&e1.address);
        assert!(rib.has_stale(&e1.address));
        assert_eq!(rib.best().len(), 3);
        // Back: it announces one route again, then End-of-RIB (IPv4) drops the
        // other IPv4 route; the IPv6 one waits for its own EoR or the timeout.
        rib.peer_up(e1.clone());
        rib.receive(&e1.address, vec![announce("10.1.0.0/24")]);
        let gone = rib.flush_stale(&e1.address, Some(false));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].prefix, net("10.2.0.0/24"));
        assert!(rib.best().contains_key(&net("10.1.0.0/24")));
        assert!(rib.has_stale(&e1.address));
        let gone = rib.flush_stale(&e1.address, None);
        assert_eq!(gone.len(), 1);
        assert!(!rib.has_stale(&e1.address));
        assert_eq!(rib.best().len(), 1);
        // A plain session end drops everything, as before.
        rib.peer_down(&e1.address);
        assert!(rib.best().is_empty());
    }

    #[test]
    fn receive_select_and_peer_down() {
        let mut rib = Rib::new(
            LOCAL,
            ImportPolicy {
                deny: vec![net("10.244.0.0/16")],
                allow_default: false,
            },
        );
        let (e1, e2) = (peer(1, 65001), peer(2, 65002));
        rib.peer_up(e1.clone());
        rib.peer_up(e2.clone());
        let long = attrs(&[65001, 65007], |_| {});
        let short = attrs(&[65002], |_| {});
        let p = net("10.1.0.0/24");
        let ch = rib.receive(
            &e1.address,
            vec![
                RouteChange::Announce {
                    prefix: p,
                    attrs: long.clone(),
                },
                RouteChange::Announce {
                    prefix: net("10.244.1.0/24"),
                    attrs: long.clone(),
                },
                RouteChange::Announce {
                    prefix: net("0.0.0.0/0"),
                    attrs: long.clone(),
                },
            ],
        );
        assert_eq!(
            ch,
            vec![BestChange {
                prefix: p,
                old: None,
                new: Some(cand(&e1, long.clone()))
            }]
        );
        let adj = rib.adj_rib_in(&e1.address).expect("peer");
        assert_eq!((adj.received(), adj.accepted()), (3, 1));
        // A better path from e2 replaces it; the same again changes nothing.
        let ch = rib.receive(
            &e2.address,
            vec![RouteChange::Announce {
                prefix: p,
                attrs: short.clone(),
            }],
        );
        assert_eq!(ch[0].new, Some(cand(&e2, short.clone())));
        assert!(
            rib.receive(
                &e2.address,
                vec![RouteChange::Announce {
                    prefix: p,
                    attrs: short.clone()
                }]
            )
            .is_empty()
        );
        // e2 goes away: back to e1.
        let ch = rib.peer_down(&e2.address);
        assert_eq!(ch[0].new, Some(cand(&e1, long)));
        // e1 withdraws: gone.
        let ch = rib.receive(&e1.address, vec![RouteChange::Withdraw(p)]);
        assert_eq!(ch[0].new, None);
        assert!(rib.best().is_empty());
        // Withdrawing what was never sent changes nothing.
        assert!(
            rib.receive(&e1.address, vec![RouteChange::Withdraw(p)])
                .is_empty()
        );
    }

    #[test]
    fn adj_rib_out_sends_differences_and_replays() {
        let mut rib = Rib::new(LOCAL, ImportPolicy::default());
        let to = peer(7, 65007);
        let policy = ExportPolicy::default();
        let target = ExportTarget {
            peer: &to,
            families: Families::BOTH,
            policy: &policy,
            self_v4: Some(Ipv4Addr::new(192, 0, 2, 100)),
            self_v6: None,
            self_v6_link_local: None,
        };
        let p = net("10.5.0.0/24");
        rib.originate(p, Arc::new(PathAttrs::local(NextHop::Local)));
        let mut out = AdjRibOut::default();
        let first = out.set(p, rib.export_for(&p, &target));
        let Some(OutChange::Announce { attrs, .. }) = &first else {
            panic!("expected an announcement, got {first:?}")
        };
        assert_eq!(attrs.next_hop, NextHop::V4(Ipv4Addr::new(192, 0, 2, 100)));
        assert_eq!(attrs.as_path_len(), 1);
        assert_eq!(out.set(p, rib.export_for(&p, &target)), None);
        assert_eq!(out.replay().len(), 1);
        rib.withdraw_local(p);
        assert_eq!(
            out.set(p, rib.export_for(&p, &target)),
            Some(OutChange::Withdraw(p))
        );
        assert_eq!(out.advertised(), 0);
    }
}

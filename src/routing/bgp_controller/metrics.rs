//! The BGP speaker's metrics, per neighbour, refreshed from the speaker's status.

use std::collections::BTreeMap;
use std::net::IpAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::routing::bgp::PeerStatus;
use crate::routing::bgp::fsm::State;
use crate::telemetry::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrefixLabel {
    pub peer: String,
    /// received, accepted or advertised.
    pub direction: String,
}

#[derive(Clone, Default)]
pub struct BgpMetrics {
    pub peer_up: Family<PeerLabel, Gauge>,
    pub updates_in: Family<PeerLabel, Counter>,
    pub updates_out: Family<PeerLabel, Counter>,
    pub flaps: Family<PeerLabel, Counter>,
    pub prefixes: Family<PrefixLabel, Gauge>,
    pub learned_routes: Gauge,
    pub install_errors: Counter,
    pub announced: Gauge,
}

impl BgpMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        let m = metrics;
        m.register(
            "kubewire_bgp_peer_up",
            "1 when the session with the peer is established",
            this.peer_up.clone(),
        );
        m.register(
            "kubewire_bgp_updates_received",
            "UPDATE messages received from the peer",
            this.updates_in.clone(),
        );
        m.register(
            "kubewire_bgp_updates_sent",
            "UPDATE messages sent to the peer",
            this.updates_out.clone(),
        );
        m.register(
            "kubewire_bgp_session_flaps",
            "Times an established session with the peer went down",
            this.flaps.clone(),
        );
        m.register(
            "kubewire_bgp_prefixes",
            "Prefixes per peer: received, accepted by import policy, advertised",
            this.prefixes.clone(),
        );
        m.register(
            "kubewire_bgp_learned_routes",
            "Best routes learned from peers",
            this.learned_routes.clone(),
        );
        m.register(
            "kubewire_bgp_route_install_errors",
            "Learned routes the kernel refused to install or remove",
            this.install_errors.clone(),
        );
        m.register(
            "kubewire_bgp_announced_prefixes",
            "Prefixes this node announces",
            this.announced.clone(),
        );
        this
    }

    /// Sets the per-peer series from a status poll; `last` holds the previous
    /// poll's cumulative counts (the counters grow by the difference) and loses
    /// peers that are gone, whose series are removed.
    pub fn observe(&self, peers: &[PeerStatus], last: &mut BTreeMap<IpAddr, PeerStatus>) {
        for gone in last
            .keys()
            .filter(|a| !peers.iter().any(|p| p.address == **a))
        {
            let label = PeerLabel {
                peer: gone.to_string(),
            };
            self.peer_up.remove(&label);
            self.updates_in.remove(&label);
            self.updates_out.remove(&label);
            self.flaps.remove(&label);
            for direction in ["received", "accepted", "advertised"] {
                self.prefixes.remove(&PrefixLabel {
                    peer: label.peer.clone(),
                    direction: direction.into(),
                });
            }
        }
        let mut next = BTreeMap::new();
        for p in peers {
            let label = PeerLabel {
                peer: p.address.to_string(),
            };
            self.peer_up
                .get_or_create(&label)
                .set(i64::from(p.state == State::Established));
            let before = last.get(&p.address);
            let grow = |c: &Counter, now: u64, was: Option<u64>| {
                c.inc_by(now.saturating_sub(was.unwrap_or(0)));
            };
            grow(
                &self.updates_in.get_or_create(&label),
                p.updates_in,
                before.map(|b| b.updates_in),
            );
            grow(
                &self.updates_out.get_or_create(&label),
                p.updates_out,
                before.map(|b| b.updates_out),
            );
            grow(
                &self.flaps.get_or_create(&label),
                p.flaps,
                before.map(|b| b.flaps),
            );
            for (direction, n) in [
                ("received", p.prefixes_received),
                ("accepted", p.prefixes_accepted),
                ("advertised", p.prefixes_advertised),
            ] {
                self.prefixes
                    .get_or_create(&PrefixLabel {
                        peer: label.peer.clone(),
                        direction: direction.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            next.insert(p.address, p.clone());
        }
        *last = next;
    }
}

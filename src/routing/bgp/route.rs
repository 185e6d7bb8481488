//! The speaker's own route model: plain attribute values that the RIB compares and
//! policy rewrites, independent of how they travel in an UPDATE.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
pub use netgauze_bgp_pkt::path_attribute::Origin;

/// Where traffic for a route goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// This speaker: the local address of each session, filled in on export
    /// (next-hop-self for locally originated routes).
    Local,
    V4(Ipv4Addr),
    /// A global address and, for neighbours on the same link, a link-local one
    /// (RFC 2545 §3).
    V6 {
        global: Ipv6Addr,
        link_local: Option<Ipv6Addr>,
    },
}

impl NextHop {
    /// The global address (IPv4, or the global IPv6 one); `None` for [`NextHop::Local`].
    /// An installer for on-link IPv6 neighbours may prefer the link-local address.
    pub fn addr(&self) -> Option<IpAddr> {
        match self {
            NextHop::Local => None,
            NextHop::V4(a) => Some(IpAddr::V4(*a)),
            NextHop::V6 { global, .. } => Some(IpAddr::V6(*global)),
        }
    }
}

/// One AS_PATH segment with 4-byte ASNs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsSegment {
    /// AS_SET (unordered, counts as one hop) rather than AS_SEQUENCE.
    pub set: bool,
    pub asns: Vec<u32>,
}

/// The path attributes the speaker understands, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathAttrs {
    pub origin: Origin,
    pub as_path: Vec<AsSegment>,
    pub next_hop: NextHop,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    /// RFC 1997 communities, as 32-bit values (`asn << 16 | value`).
    pub communities: Vec<u32>,
    pub atomic_aggregate: bool,
    /// RFC 4456 route reflection.
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
}

/// By hand because netgauze's `Origin` is not `Hash`.
impl std::hash::Hash for PathAttrs {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.origin as u8).hash(state);
        self.as_path.hash(state);
        self.next_hop.hash(state);
        self.med.hash(state);
        self.local_pref.hash(state);
        self.communities.hash(state);
        self.atomic_aggregate.hash(state);
        self.originator_id.hash(state);
        self.cluster_list.hash(state);
    }
}

impl PathAttrs {
    /// Attributes of a locally originated route: IGP origin, empty AS path.
    pub fn local(next_hop: NextHop) -> PathAttrs {
        PathAttrs {
            origin: Origin::IGP,
            as_path: vec![],
            next_hop,
            med: None,
            local_pref: None,
            communities: vec![],
            atomic_aggregate: false,
            originator_id: None,
            cluster_list: vec![],
        }
    }

    /// AS_PATH length for best-path selection: an AS_SET counts once (RFC 4271
    /// §9.1.2.2).
    pub fn as_path_len(&self) -> usize {
        self.as_path
            .iter()
            .map(|s| if s.set { 1 } else { s.asns.len() })
            .sum()
    }

    /// The AS the route was learned from (first AS of the first sequence), for
    /// comparing MEDs.
    pub fn neighbour_as(&self) -> Option<u32> {
        self.as_path
            .first()
            .filter(|s| !s.set)
            .and_then(|s| s.asns.first().copied())
    }

    pub fn contains_as(&self, asn: u32) -> bool {
        self.as_path.iter().any(|s| s.asns.contains(&asn))
    }

    /// Puts `asn` in front of the path `times` times.
    pub fn prepend(&mut self, asn: u32, times: usize) {
        if times == 0 {
            return;
        }
        match self.as_path.first_mut() {
            Some(first) if !first.set && first.asns.len() + times <= 255 => {
                first.asns.splice(0..0, std::iter::repeat_n(asn, times));
            }
            _ => self.as_path.insert(
                0,
                AsSegment {
                    set: false,
                    asns: vec![asn; times],
                },
            ),
        }
    }
}

/// One change a peer made to its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    Announce {
        prefix: IpNet,
        attrs: Arc<PathAttrs>,
    },
    Withdraw(IpNet),
    /// The peer has sent all its routes of a family (RFC 4724 §2 End-of-RIB).
    EndOfRib {
        ipv6: bool,
    },
}

/// A route as it goes out to one peer: attributes already rewritten by the export
/// policy, next hop resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutChange {
    Announce {
        prefix: IpNet,
        attrs: Arc<PathAttrs>,
    },
    Withdraw(IpNet),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_extends_the_first_sequence() {
        let mut a = PathAttrs::local(NextHop::Local);
        a.prepend(65000, 1);
        a.prepend(65000, 2);
        assert_eq!(a.as_path_len(), 3);
        assert_eq!(a.neighbour_as(), Some(65000));
    }
}

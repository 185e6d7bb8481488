//! What a speaker is told to do: its own identity, its timers and its peers.
//!
//! Plain data with defaults that match common BGP practice (hold time 90 s, TCP port
//! 179), so a caller only names what differs. Nothing here is validated against the
//! network; [`SpeakerConfig::check`] catches what would make a session impossible.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::policy::{ExportPolicy, ImportPolicy};

/// The standard BGP port (RFC 4271 §8.2.1).
pub const BGP_PORT: u16 = 179;

/// Address families a session carries. IPv4 unicast is what a peer without the
/// multiprotocol capability speaks (RFC 4760 §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl Families {
    pub const IPV4: Families = Families {
        ipv4: true,
        ipv6: false,
    };
    pub const BOTH: Families = Families {
        ipv4: true,
        ipv6: true,
    };

    /// The families both sides offered.
    pub fn intersect(self, other: Families) -> Families {
        Families {
            ipv4: self.ipv4 && other.ipv4,
            ipv6: self.ipv6 && other.ipv6,
        }
    }

    /// Whether a prefix of this address family may be sent or received.
    pub fn carries(self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(_) => self.ipv4,
            IpAddr::V6(_) => self.ipv6,
        }
    }
}

/// How long to wait before restarting a session that failed: doubling from
/// `initial` up to `max` while the session keeps failing, reset once it is
/// established (RFC 4271 §8.1.1, IdleHoldTimer and DampPeerOscillations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The neighbour's address; sessions are accepted only from it.
    pub address: IpAddr,
    /// The neighbour's AS (4-byte; equal to the local AS makes the session iBGP).
    pub asn: u32,
    /// The neighbour's TCP port for outgoing connections.
    pub port: u16,
    /// Only wait for the neighbour to connect (RFC 4271 PassiveTcpEstablishment).
    pub passive: bool,
    /// TCP MD5 signature key (RFC 2385), set on both the listening and the
    /// connecting socket.
    pub password: Option<String>,
    /// The IP TTL of the session's packets for a neighbour more than one hop away
    /// (eBGP multihop). `None`: 1 for eBGP, the system default for iBGP.
    pub multihop_ttl: Option<u8>,
    /// The families offered in the OPEN.
    pub families: Families,
    /// Overrides the speaker's hold time for this neighbour.
    pub hold_time: Option<u16>,
    /// This neighbour is a route-reflector client (RFC 4456): iBGP routes are
    /// reflected to it and from it.
    pub route_reflector_client: bool,
    /// The source address of outgoing connections.
    pub local_address: Option<IpAddr>,
    /// The IPv4 next hop announced for locally originated IPv4 routes (next-hop-self);
    /// default: the session's local address when it is IPv4.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// The global IPv6 next hop announced for locally originated IPv6 routes;
    /// default: the session's local address when it is IPv6.
    pub next_hop_v6: Option<Ipv6Addr>,
    /// A link-local IPv6 next hop sent beside the global one (RFC 2545 §3), for
    /// neighbours on the same link.
    pub next_hop_v6_link_local: Option<Ipv6Addr>,
    /// What this neighbour is sent, beyond split horizon.
    pub export: ExportPolicy,
}

impl PeerConfig {
    /// A neighbour with the defaults: active, both families, port 179, no password.
    pub fn new(address: IpAddr, asn: u32) -> PeerConfig {
        PeerConfig {
            address,
            asn,
            port: BGP_PORT,
            passive: false,
            password: None,
            multihop_ttl: None,
            families: Families::BOTH,
            hold_time: None,
            route_reflector_client: false,
            local_address: None,
            next_hop_v4: None,
            next_hop_v6: None,
            next_hop_v6_link_local: None,
            export: ExportPolicy::default(),
        }
    }
}

/// The whole speaker.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    /// The local AS (4-byte; sent as AS_TRANS in the OPEN's 2-byte field when it
    /// does not fit, RFC 6793).
    pub asn: u32,
    /// The BGP identifier.
    pub router_id: Ipv4Addr,
    /// Where to accept connections; empty: no listener (active sessions only).
    /// IPv6 sockets are bound IPv6-only so an IPv4 and an IPv6 listener on the same
    /// port can coexist.
    pub listen: Vec<SocketAddr>,
    /// The hold time offered in the OPEN (0 or at least 3 s).
    pub hold_time: u16,
    /// ConnectRetryTimer: how long one outgoing connection attempt may take.
    pub connect_retry: Duration,
    /// The wait before restarting a failed session.
    pub backoff: Backoff,
    /// This speaker reflects iBGP routes between its clients and other iBGP peers.
    pub route_reflector: bool,
    /// The CLUSTER_ID of a route reflector; default: the router id.
    pub cluster_id: Option<Ipv4Addr>,
    /// What is accepted from every neighbour.
    pub import: ImportPolicy,
    pub peers: Vec<PeerConfig>,
    /// Graceful restart (RFC 4724) with this restart time in seconds: offered to
    /// every neighbour; the routes of a neighbour that offered it too are kept
    /// (stale) for its restart time when its session drops, until it sends
    /// End-of-RIB after coming back.
    pub graceful_restart: Option<u16>,
}

impl SpeakerConfig {
    pub fn new(asn: u32, router_id: Ipv4Addr) -> SpeakerConfig {
        SpeakerConfig {
            asn,
            router_id,
            listen: vec![],
            hold_time: 90,
            connect_retry: Duration::from_secs(5),
            backoff: Backoff::default(),
            route_reflector: false,
            cluster_id: None,
            import: ImportPolicy::default(),
            peers: vec![],
            graceful_restart: None,
        }
    }

    /// Refuses settings no session could run with.
    pub fn check(&self) -> Result<(), String> {
        if self.asn == 0 {
            return Err("the local AS must not be 0".into());
        }
        if self.router_id.is_unspecified() {
            return Err("the router id must not be 0.0.0.0".into());
        }
        for hold in
            std::iter::once(self.hold_time).chain(self.peers.iter().filter_map(|p| p.hold_time))
        {
            if hold == 1 || hold == 2 {
                return Err(format!("hold time {hold}s: must be 0 or at least 3s"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for peer in &self.peers {
            if !seen.insert(peer.address) {
                return Err(format!("peer {} is configured twice", peer.address));
            }
            if peer.asn == 0 {
                return Err(format!("peer {}: AS 0", peer.address));
            }
            if peer.passive
                && !self
                    .listen
                    .iter()
                    .any(|l| l.is_ipv6() == peer.address.is_ipv6())
            {
                return Err(format!(
                    "peer {} is passive but nothing listens for its address family",
                    peer.address
                ));
            }
            if let Some(password) = &peer.password
                && password.len() > 80
            {
                return Err(format!(
                    "peer {}: TCP-MD5 password longer than 80 bytes",
                    peer.address
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_impossible_settings() {
        let base = || {
            let mut c = SpeakerConfig::new(65000, Ipv4Addr::new(10, 0, 0, 1));
            c.peers = vec![PeerConfig::new("10.0.0.2".parse().expect("addr"), 65001)];
            c
        };
        assert_eq!(base().check(), Ok(()));
        type Change = Box<dyn Fn(&mut SpeakerConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("AS 0", Box::new(|c| c.asn = 0)),
            (
                "router id 0",
                Box::new(|c| c.router_id = Ipv4Addr::UNSPECIFIED),
            ),
            ("hold 2", Box::new(|c| c.hold_time = 2)),
            ("peer hold 1", Box::new(|c| c.peers[0].hold_time = Some(1))),
            ("twice", Box::new(|c| c.peers.push(c.peers[0].clone()))),
            ("peer AS 0", Box::new(|c| c.peers[0].asn = 0)),
            (
                "long password",
                Box::new(|c| c.peers[0].password = Some("x".repeat(81))),
            ),
            (
                "passive, no listener",
                Box::new(|c| c.peers[0].passive = true),
            ),
            (
                "passive, listener of the other family",
                Box::new(|c| {
                    c.peers[0].passive = true;
                    c.listen = vec!["[::]:179".parse().expect("addr")];
                }),
            ),
        ];
        for (name, change) in cases {
            let mut c = base();
            change(&mut c);
            assert!(c.check().is_err(), "{name}");
        }
        let mut c = base();
        c.peers[0].passive = true;
        c.listen = vec!["0.0.0.0:179".parse().expect("addr")];
        assert_eq!(c.check(), Ok(()));
    }
}

//! Our OPEN (4-byte AS, multiprotocol IPv4/IPv6 unicast, route refresh) and what
//! the neighbour's OPEN offers.

use std::net::Ipv4Addr;

use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
    MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_iana::address_family::AddressType;

use super::AS_TRANS;
use crate::routing::bgp::config::Families;

/// What we offer in our OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOpen {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
    pub families: Families,
    /// Graceful restart (RFC 4724): the restart time offered, in seconds. Sent with
    /// the forwarding bit set for every family (the kernel keeps our routes while
    /// the speaker is away).
    pub graceful_restart: Option<u16>,
}

/// Our OPEN: multiprotocol IPv4/IPv6 unicast, route refresh and the 4-byte AS.
pub fn open_message(local: &LocalOpen) -> BgpMessage {
    let mut caps = vec![];
    if local.families.ipv4 {
        caps.push(BgpCapability::MultiProtocolExtensions(
            MultiProtocolExtensionsCapability::new(AddressType::Ipv4Unicast),
        ));
    }
    if local.families.ipv6 {
        caps.push(BgpCapability::MultiProtocolExtensions(
            MultiProtocolExtensionsCapability::new(AddressType::Ipv6Unicast),
        ));
    }
    caps.push(BgpCapability::RouteRefresh);
    if let Some(time) = local.graceful_restart {
        let mut families = vec![];
        if local.families.ipv4 {
            families.push(GracefulRestartAddressFamily::new(
                true,
                AddressType::Ipv4Unicast,
            ));
        }
        if local.families.ipv6 {
            families.push(GracefulRestartAddressFamily::new(
                true,
                AddressType::Ipv6Unicast,
            ));
        }
        caps.push(BgpCapability::GracefulRestartCapability(
            GracefulRestartCapability::new(false, false, time.min(4095), families),
        ));
    }
    caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(
        local.asn,
    )));
    let my_as = u16::try_from(local.asn).unwrap_or(AS_TRANS);
    BgpMessage::Open(BgpOpenMessage::new(
        my_as,
        local.hold_time,
        local.router_id,
        vec![BgpOpenMessageParameter::new_capabilities(caps)],
    ))
}

/// What the peer's OPEN offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOpen {
    /// The 4-byte AS if the peer sent the capability, else its 2-byte AS.
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
    pub families: Families,
    pub route_refresh: bool,
    pub asn4: bool,
    /// The peer's graceful-restart time when it offered the capability.
    pub graceful_restart: Option<u16>,
}

pub fn read_open(open: &BgpOpenMessage) -> PeerOpen {
    let mut families = Families {
        ipv4: false,
        ipv6: false,
    };
    let mut any_mp = false;
    let (mut route_refresh, mut asn4) = (false, false);
    let mut graceful_restart = None;
    for cap in open.capabilities() {
        match cap {
            BgpCapability::MultiProtocolExtensions(mp) => {
                any_mp = true;
                match mp.address_type() {
                    AddressType::Ipv4Unicast => families.ipv4 = true,
                    AddressType::Ipv6Unicast => families.ipv6 = true,
                    _ => {}
                }
            }
            BgpCapability::RouteRefresh | BgpCapability::EnhancedRouteRefresh => {
                route_refresh = true
            }
            BgpCapability::FourOctetAs(_) => asn4 = true,
            BgpCapability::GracefulRestartCapability(gr) => graceful_restart = Some(gr.time()),
            _ => {}
        }
    }
    if !any_mp {
        // RFC 4760 §8: without the capability a peer speaks IPv4 unicast only.
        families.ipv4 = true;
    }
    PeerOpen {
        asn: open.my_asn4(),
        router_id: open.bgp_id(),
        hold_time: open.hold_time(),
        families,
        route_refresh,
        asn4,
        graceful_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::bgp::message::{decode, encode};

    #[test]
    fn open_carries_4_byte_as_through_as_trans() {
        let local = LocalOpen {
            asn: 4_200_000_001,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            hold_time: 90,
            families: Families::BOTH,
            graceful_restart: Some(120),
        };
        let BgpMessage::Open(open) =
            decode(&encode(&open_message(&local)).expect("encodes"), true).expect("decodes")
        else {
            panic!("not an OPEN")
        };
        assert_eq!(open.my_as(), AS_TRANS);
        let peer = read_open(&open);
        assert_eq!(peer.asn, 4_200_000_001);
        assert_eq!(peer.families, Families::BOTH);
        assert_eq!(peer.graceful_restart, Some(120));
        assert!(peer.route_refresh && peer.asn4);
        assert_eq!(peer.hold_time, 90);
    }

    #[test]
    fn open_without_mp_capability_means_ipv4_only() {
        let open = BgpOpenMessage::new(65001, 90, Ipv4Addr::new(1, 1, 1, 1), vec![]);
        let peer = read_open(&open);
        assert_eq!(peer.families, Families::IPV4);
        assert_eq!(peer.asn, 65001);
        assert!(!peer.asn4);
    }
}

//! The one place that speaks `netgauze-bgp-pkt`: bytes ↔ BGP messages, our OPEN and
//! what the peer's OPEN offers, and UPDATEs ↔ the speaker's own route model.
//!
//! Everything a peer sends is checked here before the rest of the speaker sees it:
//! a malformed message becomes the NOTIFICATION RFC 4271 §6 asks for (never a
//! panic), a well-formed one becomes [`RouteChange`]s with plain attribute types
//! ([`PathAttrs`]) that the RIB and policy compare and rewrite.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::community::Community;
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::notification::{
    CeaseError, FiniteStateMachineError, HoldTimerExpiredError, MessageHeaderError,
    OpenMessageError, UpdateMessageError,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, AtomicAggregate, ClusterId,
    ClusterList, Communities, LocalPreference, MpReach, MpUnreach, MultiExitDiscriminator,
    NextHop as NextHopAttr, Origin, Originator, PathAttribute, PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::WritablePdu;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;

use super::config::Families;

pub use netgauze_bgp_pkt::notification::BgpNotificationMessage as Notification;

/// The 2-byte AS a 4-byte-AS speaker puts where a 2-byte AS is expected (RFC 6793).
pub const AS_TRANS: u16 = 23456;
/// Marker, length and type.
pub const HEADER_LEN: usize = 19;
/// RFC 4271's limit; extended messages (RFC 8654) are not offered.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Attribute type codes, for the data of "missing well-known attribute".
const ATTR_ORIGIN: u8 = 1;
const ATTR_AS_PATH: u8 = 2;
const ATTR_NEXT_HOP: u8 = 3;

// ---------------------------------------------------------------- framing

/// Serializes a message; fails only on a message we built too large, which is a bug
/// in the caller's splitting.
pub fn encode(msg: &BgpMessage) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(msg.len());
    msg.write(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// The length of the whole message a 19-byte header announces, after checking the
/// marker and the length bounds (RFC 4271 §6.1).
pub fn frame_length(header: &[u8; HEADER_LEN]) -> Result<usize, Notification> {
    if header[..16].iter().any(|b| *b != 0xff) {
        return Err(Notification::MessageHeaderError(
            MessageHeaderError::ConnectionNotSynchronized {
                value: Box::new([]),
            },
        ));
    }
    let length = u16::from_be_bytes([header[16], header[17]]);
    if (length as usize) < HEADER_LEN || length as usize > MAX_MESSAGE_LEN {
        return Err(Notification::MessageHeaderError(
            MessageHeaderError::BadMessageLength {
                value: length.to_be_bytes().into(),
            },
        ));
    }
    Ok(length as usize)
}

/// Parses one whole message (header included). `asn4`: AS_PATHs carry 4-byte ASNs,
/// as negotiated in the OPENs.
pub fn decode(frame: &[u8], asn4: bool) -> Result<BgpMessage, Notification> {
    let mut ctx = BgpParsingContext::new(
        asn4,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        false,
        true,
    );
    let mut reader = SliceReader::new(frame);
    BgpMessage::parse(&mut reader, &mut ctx).map_err(Notification::from)
}

// ---------------------------------------------------------------- OPEN

/// What we offer in our OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOpen {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
    pub families: Families,
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
}

pub fn read_open(open: &BgpOpenMessage) -> PeerOpen {
    let mut families = Families {
        ipv4: false,
        ipv6: false,
    };
    let mut any_mp = false;
    let (mut route_refresh, mut asn4) = (false, false);
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
    }
}

// ---------------------------------------------------------------- notifications

/// NOTIFICATION code and subcode, for logs and tests (RFC 4271 §4.5).
pub fn notification_code(n: &Notification) -> (u8, u8) {
    match n {
        Notification::MessageHeaderError(e) => (
            1,
            match e {
                MessageHeaderError::Unspecific { .. } => 0,
                MessageHeaderError::ConnectionNotSynchronized { .. } => 1,
                MessageHeaderError::BadMessageLength { .. } => 2,
                MessageHeaderError::BadMessageType { .. } => 3,
            },
        ),
        Notification::OpenMessageError(e) => (
            2,
            match e {
                OpenMessageError::Unspecific { .. } => 0,
                OpenMessageError::UnsupportedVersionNumber { .. } => 1,
                OpenMessageError::BadPeerAs { .. } => 2,
                OpenMessageError::BadBgpIdentifier { .. } => 3,
                OpenMessageError::UnsupportedOptionalParameter { .. } => 4,
                OpenMessageError::UnacceptableHoldTime { .. } => 6,
                OpenMessageError::UnsupportedCapability { .. } => 7,
                OpenMessageError::RoleMismatch { .. } => 11,
            },
        ),
        Notification::UpdateMessageError(e) => (
            3,
            match e {
                UpdateMessageError::Unspecific { .. } => 0,
                UpdateMessageError::MalformedAttributeList { .. } => 1,
                UpdateMessageError::UnrecognizedWellKnownAttribute { .. } => 2,
                UpdateMessageError::MissingWellKnownAttribute { .. } => 3,
                UpdateMessageError::AttributeFlagsError { .. } => 4,
                UpdateMessageError::AttributeLengthError { .. } => 5,
                UpdateMessageError::InvalidOriginAttribute { .. } => 6,
                UpdateMessageError::InvalidNextHopAttribute { .. } => 8,
                UpdateMessageError::OptionalAttributeError { .. } => 9,
                UpdateMessageError::InvalidNetworkField { .. } => 10,
                UpdateMessageError::MalformedAsPath { .. } => 11,
            },
        ),
        Notification::HoldTimerExpiredError(HoldTimerExpiredError::Unspecific {
            sub_code, ..
        }) => (4, *sub_code),
        Notification::FiniteStateMachineError(e) => (
            5,
            match e {
                FiniteStateMachineError::Unspecific { .. } => 0,
                FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState { .. } => 1,
                FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState { .. } => 2,
                FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState { .. } => 3,
            },
        ),
        Notification::CeaseError(e) => (
            6,
            match e {
                CeaseError::MaximumNumberOfPrefixesReached { .. } => 1,
                CeaseError::AdministrativeShutdown { .. } => 2,
                CeaseError::PeerDeConfigured { .. } => 3,
                CeaseError::AdministrativeReset { .. } => 4,
                CeaseError::ConnectionRejected { .. } => 5,
                CeaseError::OtherConfigurationChange { .. } => 6,
                CeaseError::ConnectionCollisionResolution { .. } => 7,
                CeaseError::OutOfResources { .. } => 8,
                CeaseError::HardReset { .. } => 9,
                CeaseError::BfdDown { .. } => 10,
            },
        ),
        Notification::RouteRefreshError(_) => (7, 1),
    }
}

fn update_error(e: fn(Box<[u8]>) -> UpdateMessageError, data: &[u8]) -> Notification {
    Notification::UpdateMessageError(e(data.into()))
}

// ---------------------------------------------------------------- route model

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
    /// The address a route would be installed with (the link-local one where given,
    /// as the kernel needs for an on-link IPv6 neighbour).
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
}

/// What decoding an UPDATE needs to know about the session.
#[derive(Debug, Clone, Copy)]
pub struct UpdateContext {
    pub asn4: bool,
    pub families: Families,
    /// The peer's AS when the session is eBGP: its routes must start with it
    /// (RFC 4271 §6.3).
    pub ebgp_peer_asn: Option<u32>,
}

/// Turns a received UPDATE into route changes, or the NOTIFICATION it deserves.
/// Prefixes of families the session did not negotiate are ignored.
pub fn decode_update(
    update: &BgpUpdateMessage,
    ctx: &UpdateContext,
) -> Result<Vec<RouteChange>, Notification> {
    let mut changes = vec![];
    for w in update.withdraw_routes() {
        if ctx.families.ipv4 {
            changes.push(RouteChange::Withdraw(IpNet::V4(w.network().address())));
        }
    }

    let mut origin = None;
    let mut as2_path: Option<Vec<AsSegment>> = None;
    let mut as4_path: Option<Vec<AsSegment>> = None;
    let mut next_hop = None;
    let mut med = None;
    let mut local_pref = None;
    let mut communities = vec![];
    let mut atomic_aggregate = false;
    let mut originator_id = None;
    let mut cluster_list = vec![];
    let mut mp_reach = None;
    let mut seen = std::collections::HashSet::new();
    for attr in update.path_attributes() {
        if let Ok(code) = attr.path_attribute_type()
            && !seen.insert(u8::from(code))
        {
            // RFC 4271 §6.3: an attribute appears twice.
            return Err(update_error(
                |value| UpdateMessageError::MalformedAttributeList { value },
                &[],
            ));
        }
        match attr.value() {
            PathAttributeValue::Origin(o) => origin = Some(*o),
            PathAttributeValue::AsPath(AsPath::As2PathSegments(segs)) => {
                as2_path = Some(
                    segs.iter()
                        .map(|s| AsSegment {
                            set: s.segment_type() == AsPathSegmentType::AsSet,
                            asns: s.as_numbers().iter().map(|a| *a as u32).collect(),
                        })
                        .collect(),
                )
            }
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segs)) => {
                as2_path = Some(as4_segments(segs))
            }
            PathAttributeValue::As4Path(p) => as4_path = Some(as4_segments(p.segments())),
            PathAttributeValue::NextHop(n) => next_hop = Some(n.next_hop()),
            PathAttributeValue::MultiExitDiscriminator(m) => med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => local_pref = Some(l.metric()),
            PathAttributeValue::Communities(c) => {
                communities = c.communities().iter().map(|c| c.value()).collect()
            }
            PathAttributeValue::AtomicAggregate(_) => atomic_aggregate = true,
            PathAttributeValue::Originator(o) => originator_id = Some(o.id()),
            PathAttributeValue::ClusterList(c) => {
                cluster_list = c.cluster_list().iter().map(|c| c.id()).collect()
            }
            PathAttributeValue::MpReach(r) => mp_reach = Some(r),
            PathAttributeValue::MpUnreach(MpUnreach::Ipv4Unicast { nlri }) if ctx.families.ipv4 => {
                changes.extend(
                    nlri.iter()
                        .map(|n| RouteChange::Withdraw(IpNet::V4(n.network().address()))),
                )
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) if ctx.families.ipv6 => {
                changes.extend(
                    nlri.iter()
                        .map(|n| RouteChange::Withdraw(IpNet::V6(n.network().address()))),
                )
            }
            _ => {}
        }
    }

    let v4_nlri: Vec<Ipv4Net> = if ctx.families.ipv4 {
        update
            .nlri()
            .iter()
            .map(|n| n.network().address())
            .collect()
    } else {
        vec![]
    };
    let mut reach: Vec<(IpNet, NextHop)> = vec![];
    if !update.nlri().is_empty() {
        // NEXT_HOP is mandatory with IPv4 NLRI, whatever families are carried.
        let Some(nh) = next_hop else {
            return Err(update_error(
                |value| UpdateMessageError::MissingWellKnownAttribute { value },
                &[ATTR_NEXT_HOP],
            ));
        };
        if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
            return Err(update_error(
                |value| UpdateMessageError::InvalidNextHopAttribute { value },
                &nh.octets(),
            ));
        }
        reach.extend(v4_nlri.iter().map(|p| (IpNet::V4(*p), NextHop::V4(nh))));
    }
    match mp_reach {
        Some(MpReach::Ipv4Unicast {
            next_hop: IpAddr::V4(nh),
            nlri,
            ..
        }) if ctx.families.ipv4 => reach.extend(
            nlri.iter()
                .map(|n| (IpNet::V4(n.network().address()), NextHop::V4(*nh))),
        ),
        Some(MpReach::Ipv6Unicast {
            next_hop_global,
            next_hop_local,
            nlri,
        }) if ctx.families.ipv6 => {
            let nh = NextHop::V6 {
                global: *next_hop_global,
                link_local: *next_hop_local,
            };
            reach.extend(nlri.iter().map(|n| (IpNet::V6(n.network().address()), nh)))
        }
        _ => {}
    }
    if reach.is_empty() {
        return Ok(changes);
    }

    let Some(origin) = origin else {
        return Err(update_error(
            |value| UpdateMessageError::MissingWellKnownAttribute { value },
            &[ATTR_ORIGIN],
        ));
    };
    let Some(mut as_path) = as2_path else {
        return Err(update_error(
            |value| UpdateMessageError::MissingWellKnownAttribute { value },
            &[ATTR_AS_PATH],
        ));
    };
    if !ctx.asn4
        && let Some(as4) = as4_path
    {
        as_path = merge_as4_path(as_path, as4);
    }
    if let Some(peer_as) = ctx.ebgp_peer_asn {
        let first = as_path
            .first()
            .filter(|s| !s.set)
            .and_then(|s| s.asns.first());
        let first_ok = match first {
            Some(asn) => *asn == peer_as || (!ctx.asn4 && *asn == AS_TRANS as u32),
            None => false,
        };
        if !first_ok {
            return Err(update_error(
                |value| UpdateMessageError::MalformedAsPath { value },
                &[],
            ));
        }
    }
    let base = PathAttrs {
        origin,
        as_path,
        next_hop: NextHop::Local,
        med,
        // LOCAL_PREF is never taken from an external peer (RFC 4271 §5.1.5).
        local_pref: local_pref.filter(|_| ctx.ebgp_peer_asn.is_none()),
        communities,
        atomic_aggregate,
        originator_id,
        cluster_list,
    };
    // One shared attribute set per next hop (at most two: NEXT_HOP and MP_REACH).
    let mut shared: Vec<Arc<PathAttrs>> = vec![];
    for (prefix, nh) in reach {
        let attrs = match shared.iter().find(|a| a.next_hop == nh) {
            Some(a) => a.clone(),
            None => {
                let a = Arc::new(PathAttrs {
                    next_hop: nh,
                    ..base.clone()
                });
                shared.push(a.clone());
                a
            }
        };
        changes.push(RouteChange::Announce { prefix, attrs });
    }
    Ok(changes)
}

fn as4_segments(segs: &[As4PathSegment]) -> Vec<AsSegment> {
    segs.iter()
        .map(|s| AsSegment {
            set: s.segment_type() == AsPathSegmentType::AsSet,
            asns: s.as_numbers().to_vec(),
        })
        .collect()
}

/// RFC 6793 §4.2.3: a 2-byte session carries the true path in AS4_PATH; it replaces
/// the trailing part of AS_PATH it describes (when it is not longer than AS_PATH).
fn merge_as4_path(as_path: Vec<AsSegment>, as4: Vec<AsSegment>) -> Vec<AsSegment> {
    let len =
        |p: &[AsSegment]| -> usize { p.iter().map(|s| if s.set { 1 } else { s.asns.len() }).sum() };
    let (total, total4) = (len(&as_path), len(&as4));
    if total4 > total {
        return as_path;
    }
    // Keep the leading (total - total4) hops of AS_PATH, then AS4_PATH.
    let mut keep = total - total4;
    let mut merged = vec![];
    for seg in as_path {
        if keep == 0 {
            break;
        }
        if seg.set {
            keep -= 1;
            merged.push(seg);
        } else {
            let n = seg.asns.len().min(keep);
            keep -= n;
            merged.push(AsSegment {
                set: false,
                asns: seg.asns[..n].to_vec(),
            });
        }
    }
    merged.extend(as4);
    merged
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

/// Packs outgoing changes into UPDATEs of at most 4096 bytes: IPv4 in the classic
/// fields, IPv6 in MP_REACH/MP_UNREACH (RFC 4760), routes sharing attributes in one
/// message. `asn4`: the session negotiated 4-byte ASNs; otherwise AS_PATH carries
/// AS_TRANS and the true path goes in AS4_PATH.
pub fn encode_updates(changes: &[OutChange], asn4: bool) -> Vec<BgpMessage> {
    let mut out = vec![];
    let (mut w4, mut w6) = (vec![], vec![]);
    // Routes with equal attributes share UPDATEs; groups keep first-seen order.
    let mut groups: Vec<(Arc<PathAttrs>, Vec<IpNet>)> = vec![];
    let mut group_of: HashMap<Arc<PathAttrs>, usize> = HashMap::new();
    for c in changes {
        match c {
            OutChange::Withdraw(IpNet::V4(p)) => w4.push(*p),
            OutChange::Withdraw(IpNet::V6(p)) => w6.push(*p),
            OutChange::Announce { prefix, attrs } => match group_of.get(attrs) {
                Some(i) => groups[*i].1.push(*prefix),
                None => {
                    group_of.insert(attrs.clone(), groups.len());
                    groups.push((attrs.clone(), vec![*prefix]));
                }
            },
        }
    }
    push_split(&mut out, &w4, &|chunk| {
        Some(BgpUpdateMessage::new(
            chunk.iter().filter_map(|p| v4_nlri(*p)).collect::<Vec<_>>(),
            vec![],
            vec![],
        ))
    });
    push_split(&mut out, &w6, &|chunk| {
        let nlri: Vec<_> = chunk.iter().filter_map(|p| v6_nlri(*p)).collect();
        let attr = optional_attr(PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
            nlri: nlri.into(),
        }))?;
        Some(BgpUpdateMessage::new(vec![], vec![attr], vec![]))
    });
    for (attrs, prefixes) in groups {
        let v4: Vec<Ipv4Net> = prefixes
            .iter()
            .filter_map(|p| match p {
                IpNet::V4(p) => Some(*p),
                IpNet::V6(_) => None,
            })
            .collect();
        let v6: Vec<Ipv6Net> = prefixes
            .iter()
            .filter_map(|p| match p {
                IpNet::V6(p) => Some(*p),
                IpNet::V4(_) => None,
            })
            .collect();
        match attrs.next_hop {
            NextHop::V4(nh) if !v4.is_empty() => push_split(&mut out, &v4, &|chunk| {
                let mut list = common_attrs(&attrs, asn4);
                list.push(well_known_attr(PathAttributeValue::NextHop(
                    NextHopAttr::new(nh),
                ))?);
                Some(BgpUpdateMessage::new(
                    vec![],
                    list,
                    chunk.iter().filter_map(|p| v4_nlri(*p)).collect::<Vec<_>>(),
                ))
            }),
            NextHop::V6 { global, link_local } if !v6.is_empty() => {
                push_split(&mut out, &v6, &|chunk| {
                    let mut list = common_attrs(&attrs, asn4);
                    let nlri: Vec<_> = chunk.iter().filter_map(|p| v6_nlri(*p)).collect();
                    list.insert(
                        0,
                        optional_attr(PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                            next_hop_global: global,
                            next_hop_local: link_local,
                            nlri: nlri.into(),
                        }))?,
                    );
                    Some(BgpUpdateMessage::new(vec![], list, vec![]))
                })
            }
            _ => {}
        }
    }
    out
}

/// Builds one UPDATE for `items`, halving the list until every message fits.
fn push_split<T: Copy>(
    out: &mut Vec<BgpMessage>,
    items: &[T],
    build: &dyn Fn(&[T]) -> Option<BgpUpdateMessage>,
) {
    if items.is_empty() {
        return;
    }
    let Some(update) = build(items) else {
        return;
    };
    let msg = BgpMessage::Update(update);
    if msg.len() <= MAX_MESSAGE_LEN {
        out.push(msg);
    } else if items.len() > 1 {
        let (a, b) = items.split_at(items.len() / 2);
        push_split(out, a, build);
        push_split(out, b, build);
    } else {
        tracing::warn!("a route's attributes do not fit in one UPDATE; not sent");
    }
}

fn v4_nlri(p: Ipv4Net) -> Option<Ipv4UnicastAddress> {
    Ipv4Unicast::from_net(p)
        .ok()
        .map(Ipv4UnicastAddress::new_no_path_id)
}

fn v6_nlri(p: Ipv6Net) -> Option<Ipv6UnicastAddress> {
    Ipv6Unicast::from_net(p)
        .ok()
        .map(|n| Ipv6UnicastAddress::new(None, n))
}

/// Well-known attributes: not optional, transitive.
fn well_known_attr(value: PathAttributeValue) -> Option<PathAttribute> {
    PathAttribute::from(false, true, false, true, value).ok()
}

/// Optional attributes take the flags their type allows.
fn optional_attr(value: PathAttributeValue) -> Option<PathAttribute> {
    let transitive = value.can_be_transitive().unwrap_or(true);
    PathAttribute::from(true, transitive, false, true, value).ok()
}

/// ORIGIN, AS_PATH (and AS4_PATH), MED, LOCAL_PREF, communities, reflection
/// attributes: everything but the next hop and NLRI.
fn common_attrs(attrs: &PathAttrs, asn4: bool) -> Vec<PathAttribute> {
    let mut list = vec![];
    list.extend(well_known_attr(PathAttributeValue::Origin(attrs.origin)));
    let seg_type = |s: &AsSegment| {
        if s.set {
            AsPathSegmentType::AsSet
        } else {
            AsPathSegmentType::AsSequence
        }
    };
    let as4_segs: Vec<As4PathSegment> = attrs
        .as_path
        .iter()
        .map(|s| As4PathSegment::new(seg_type(s), s.asns.clone()))
        .collect();
    if asn4 {
        list.extend(well_known_attr(PathAttributeValue::AsPath(
            AsPath::as4_path_segments(as4_segs),
        )));
    } else {
        let as2: Vec<As2PathSegment> = attrs
            .as_path
            .iter()
            .map(|s| {
                let asns: Vec<u16> = s
                    .asns
                    .iter()
                    .map(|a| u16::try_from(*a).unwrap_or(AS_TRANS))
                    .collect();
                As2PathSegment::new(seg_type(s), asns)
            })
            .collect();
        list.extend(well_known_attr(PathAttributeValue::AsPath(
            AsPath::as2_path_segments(as2),
        )));
        if attrs
            .as_path
            .iter()
            .flat_map(|s| &s.asns)
            .any(|a| *a > 0xffff)
        {
            list.extend(optional_attr(PathAttributeValue::As4Path(As4Path::new(
                as4_segs,
            ))));
        }
    }
    if let Some(med) = attrs.med {
        list.extend(optional_attr(PathAttributeValue::MultiExitDiscriminator(
            MultiExitDiscriminator::new(med),
        )));
    }
    if let Some(lp) = attrs.local_pref {
        list.extend(well_known_attr(PathAttributeValue::LocalPreference(
            LocalPreference::new(lp),
        )));
    }
    if attrs.atomic_aggregate {
        list.extend(well_known_attr(PathAttributeValue::AtomicAggregate(
            AtomicAggregate,
        )));
    }
    if !attrs.communities.is_empty() {
        list.extend(optional_attr(PathAttributeValue::Communities(
            Communities::new(
                attrs
                    .communities
                    .iter()
                    .map(|c| Community::new(*c))
                    .collect::<Vec<_>>(),
            ),
        )));
    }
    if let Some(id) = attrs.originator_id {
        list.extend(optional_attr(PathAttributeValue::Originator(
            Originator::new(id),
        )));
    }
    if !attrs.cluster_list.is_empty() {
        list.extend(optional_attr(PathAttributeValue::ClusterList(
            ClusterList::new(
                attrs
                    .cluster_list
                    .iter()
                    .map(|c| ClusterId::new(*c))
                    .collect::<Vec<_>>(),
            ),
        )));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: &BgpMessage, asn4: bool) -> BgpMessage {
        let bytes = encode(msg).expect("encodes");
        let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("header");
        assert_eq!(frame_length(&header), Ok(bytes.len()));
        decode(&bytes, asn4).expect("decodes")
    }

    fn ctx(ebgp: Option<u32>) -> UpdateContext {
        UpdateContext {
            asn4: true,
            families: Families::BOTH,
            ebgp_peer_asn: ebgp,
        }
    }

    #[test]
    fn open_carries_4_byte_as_through_as_trans() {
        let local = LocalOpen {
            asn: 4_200_000_001,
            router_id: Ipv4Addr::new(10, 0, 0, 1),
            hold_time: 90,
            families: Families::BOTH,
        };
        let BgpMessage::Open(open) = roundtrip(&open_message(&local), true) else {
            panic!("not an OPEN")
        };
        assert_eq!(open.my_as(), AS_TRANS);
        let peer = read_open(&open);
        assert_eq!(peer.asn, 4_200_000_001);
        assert_eq!(peer.families, Families::BOTH);
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

    #[test]
    fn bad_marker_and_bad_length_are_header_errors() {
        let mut header = [0xffu8; HEADER_LEN];
        header[16] = 0;
        header[17] = 10;
        let err = frame_length(&header).unwrap_err();
        assert_eq!(notification_code(&err), (1, 2));
        header[0] = 0;
        assert_eq!(
            notification_code(&frame_length(&header).unwrap_err()),
            (1, 1)
        );
    }

    #[test]
    fn unknown_type_and_truncated_body_give_notifications() {
        let mut msg = encode(&BgpMessage::KeepAlive).expect("encodes");
        msg[18] = 9;
        assert_eq!(notification_code(&decode(&msg, true).unwrap_err()), (1, 3));
        // An OPEN that stops after its version byte.
        let mut open = vec![0xff; 16];
        open.extend_from_slice(&[0, 20, 1, 4]);
        let err = decode(&open, true).unwrap_err();
        assert_eq!(notification_code(&err).0, 2);
    }

    #[test]
    fn garbage_never_panics() {
        // Every length and a spread of byte patterns after a valid header.
        for ty in 1..=5u8 {
            for len in 19..80usize {
                for fill in [0u8, 1, 2, 0x7f, 0xff] {
                    let mut msg = vec![0xff; 16];
                    msg.extend_from_slice(&(len as u16).to_be_bytes());
                    msg.push(ty);
                    msg.resize(len, fill);
                    let _ = decode(&msg, true);
                    let _ = decode(&msg, false);
                }
            }
        }
    }

    fn attrs(next_hop: NextHop) -> Arc<PathAttrs> {
        let mut a = PathAttrs::local(next_hop);
        a.as_path = vec![AsSegment {
            set: false,
            asns: vec![4_200_000_001, 65002],
        }];
        a.med = Some(5);
        a.communities = vec![(65000 << 16) | 1];
        Arc::new(a)
    }

    #[test]
    fn updates_roundtrip_ipv4_and_ipv6_with_link_local() {
        let a4 = attrs(NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let a6 = attrs(NextHop::V6 {
            global: "2001:db8::1".parse().expect("addr"),
            link_local: Some("fe80::1".parse().expect("addr")),
        });
        let changes = vec![
            OutChange::Announce {
                prefix: "10.1.0.0/24".parse().expect("net"),
                attrs: a4.clone(),
            },
            OutChange::Announce {
                prefix: "10.2.0.0/24".parse().expect("net"),
                attrs: a4.clone(),
            },
            OutChange::Announce {
                prefix: "2001:db8:1::/64".parse().expect("net"),
                attrs: a6.clone(),
            },
            OutChange::Withdraw("10.9.0.0/16".parse().expect("net")),
            OutChange::Withdraw("2001:db8:9::/48".parse().expect("net")),
        ];
        let msgs = encode_updates(&changes, true);
        assert_eq!(msgs.len(), 4);
        let mut got = vec![];
        for m in &msgs {
            let BgpMessage::Update(u) = roundtrip(m, true) else {
                panic!("not an UPDATE")
            };
            got.extend(decode_update(&u, &ctx(Some(4_200_000_001))).expect("valid"));
        }
        let expect: Vec<RouteChange> = vec![
            RouteChange::Withdraw("10.9.0.0/16".parse().expect("net")),
            RouteChange::Withdraw("2001:db8:9::/48".parse().expect("net")),
            RouteChange::Announce {
                prefix: "10.1.0.0/24".parse().expect("net"),
                attrs: a4.clone(),
            },
            RouteChange::Announce {
                prefix: "10.2.0.0/24".parse().expect("net"),
                attrs: a4,
            },
            RouteChange::Announce {
                prefix: "2001:db8:1::/64".parse().expect("net"),
                attrs: a6,
            },
        ];
        assert_eq!(got, expect);
    }

    #[test]
    fn two_byte_session_carries_as4_path() {
        let a4 = attrs(NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let msgs = encode_updates(
            &[OutChange::Announce {
                prefix: "10.1.0.0/24".parse().expect("net"),
                attrs: a4.clone(),
            }],
            false,
        );
        let BgpMessage::Update(u) = roundtrip(&msgs[0], false) else {
            panic!("not an UPDATE")
        };
        let mut c = ctx(Some(4_200_000_001));
        c.asn4 = false;
        let got = decode_update(&u, &c).expect("valid");
        let RouteChange::Announce { attrs, .. } = &got[0] else {
            panic!("no announce")
        };
        assert_eq!(attrs.as_path, a4.as_path);
    }

    #[test]
    fn large_batches_split_under_4096_bytes() {
        let a4 = attrs(NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let changes: Vec<OutChange> = (0..3000u32)
            .map(|i| OutChange::Announce {
                prefix: IpNet::V4(
                    Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).expect("net"),
                ),
                attrs: a4.clone(),
            })
            .collect();
        let msgs = encode_updates(&changes, true);
        assert!(msgs.len() > 1);
        let mut n = 0;
        for m in &msgs {
            assert!(encode(m).expect("encodes").len() <= MAX_MESSAGE_LEN);
            let BgpMessage::Update(u) = m else { panic!() };
            n += u.nlri().len();
        }
        assert_eq!(n, 3000);
    }

    #[test]
    fn missing_well_known_attributes_are_named() {
        let nlri = vec![v4_nlri("10.0.0.0/8".parse().expect("net")).expect("nlri")];
        let origin = well_known_attr(PathAttributeValue::Origin(Origin::IGP)).expect("attr");
        let path = well_known_attr(PathAttributeValue::AsPath(AsPath::as4_path_segments(vec![
            As4PathSegment::new(AsPathSegmentType::AsSequence, vec![65001]),
        ])))
        .expect("attr");
        let nh = well_known_attr(PathAttributeValue::NextHop(NextHopAttr::new(
            Ipv4Addr::new(192, 0, 2, 1),
        )))
        .expect("attr");
        let cases = [
            (vec![path.clone(), nh.clone()], ATTR_ORIGIN),
            (vec![origin.clone(), nh.clone()], ATTR_AS_PATH),
            (vec![origin.clone(), path.clone()], ATTR_NEXT_HOP),
        ];
        for (list, missing) in cases {
            let u = BgpUpdateMessage::new(vec![], list, nlri.clone());
            let err = decode_update(&u, &ctx(None)).unwrap_err();
            assert_eq!(notification_code(&err), (3, 3));
            assert_eq!(
                err,
                Notification::UpdateMessageError(UpdateMessageError::MissingWellKnownAttribute {
                    value: Box::new([missing])
                })
            );
        }
        // eBGP route not starting with the peer's AS.
        let u = BgpUpdateMessage::new(vec![], vec![origin, path, nh], nlri);
        assert!(decode_update(&u, &ctx(Some(65001))).is_ok());
        let err = decode_update(&u, &ctx(Some(65009))).unwrap_err();
        assert_eq!(notification_code(&err), (3, 11));
    }

    #[test]
    fn merge_replaces_as_trans_tail() {
        let as2 = vec![AsSegment {
            set: false,
            asns: vec![65001, AS_TRANS as u32, AS_TRANS as u32],
        }];
        let as4 = vec![AsSegment {
            set: false,
            asns: vec![4_200_000_001, 4_200_000_002],
        }];
        let merged = merge_as4_path(as2, as4);
        assert_eq!(
            merged,
            vec![
                AsSegment {
                    set: false,
                    asns: vec![65001]
                },
                AsSegment {
                    set: false,
                    asns: vec![4_200_000_001, 4_200_000_002]
                }
            ]
        );
    }

    #[test]
    fn prepend_extends_the_first_sequence() {
        let mut a = PathAttrs::local(NextHop::Local);
        a.prepend(65000, 1);
        a.prepend(65000, 2);
        assert_eq!(a.as_path_len(), 3);
        assert_eq!(a.neighbour_as(), Some(65000));
    }
}

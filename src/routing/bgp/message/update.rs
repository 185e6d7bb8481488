//! UPDATE messages ↔ route changes: validation of what a neighbour sent (RFC 4271
//! §6.3), IPv4 in the classic fields and IPv6 in MP_REACH/MP_UNREACH (RFC 4760,
//! global and link-local next hops per RFC 2545), 2-byte sessions through AS4_PATH
//! (RFC 6793), and packing outgoing routes under the 4096-byte limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::community::Community;
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::notification::UpdateMessageError;
use netgauze_bgp_pkt::path_attribute::{
    As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, AtomicAggregate, ClusterId,
    ClusterList, Communities, LocalPreference, MpReach, MpUnreach, MultiExitDiscriminator,
    NextHop as NextHopAttr, Originator, PathAttribute, PathAttributeValue,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_parse_utils::WritablePdu;

use super::{AS_TRANS, MAX_MESSAGE_LEN, Notification};
use crate::routing::bgp::config::Families;
use crate::routing::bgp::route::{AsSegment, NextHop, OutChange, PathAttrs, RouteChange};

/// Attribute type codes, for the data of "missing well-known attribute".
const ATTR_ORIGIN: u8 = 1;
const ATTR_AS_PATH: u8 = 2;
const ATTR_NEXT_HOP: u8 = 3;

fn update_error(e: fn(Box<[u8]>) -> UpdateMessageError, data: &[u8]) -> Notification {
    Notification::UpdateMessageError(e(data.into()))
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
    if let Some(ipv6) = end_of_rib_family(update) {
        return Ok(vec![RouteChange::EndOfRib { ipv6 }]);
    }
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

/// The family an End-of-RIB marker is for: an empty UPDATE (IPv4), or one whose
/// only attribute is an empty MP_UNREACH_NLRI (RFC 4724 §2).
fn end_of_rib_family(update: &BgpUpdateMessage) -> Option<bool> {
    if !update.withdraw_routes().is_empty() || !update.nlri().is_empty() {
        return None;
    }
    match update.path_attributes() {
        [] => Some(false),
        [attr] => match attr.value() {
            PathAttributeValue::MpUnreach(MpUnreach::Ipv4Unicast { nlri }) if nlri.is_empty() => {
                Some(false)
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) if nlri.is_empty() => {
                Some(true)
            }
            _ => None,
        },
        _ => None,
    }
}

/// The End-of-RIB markers of the negotiated families.
pub fn end_of_rib(families: Families) -> Vec<BgpMessage> {
    let mut out = vec![];
    if families.ipv4 {
        out.push(BgpMessage::Update(BgpUpdateMessage::new(
            vec![],
            vec![],
            vec![],
        )));
    }
    if families.ipv6
        && let Some(attr) = optional_attr(PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
            nlri: vec![].into(),
        }))
    {
        out.push(BgpMessage::Update(BgpUpdateMessage::new(
            vec![],
            vec![attr],
            vec![],
        )));
    }
    out
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
    use std::net::Ipv4Addr;

    use netgauze_bgp_pkt::path_attribute::Origin;

    use super::*;
    use crate::routing::bgp::message::{
        HEADER_LEN, decode, encode, frame_length, notification_code,
    };

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
}

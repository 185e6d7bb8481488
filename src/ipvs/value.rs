//! The kernel's numbers for model values, both ways: address families, protocols,
//! service flags, the persistence netmask, forwarding methods and tunnels (from
//! `include/uapi/linux/ip_vs.h` and the socket headers). Decoding names the attribute
//! a value came from when the kernel sends one this module does not know.

use netlink_packet_core::DecodeError;

use super::attr::AttrId;
use super::model::{
    Family, ForwardMethod, Protocol, ServiceFlags, Tunnel, TunnelChecksum, TunnelType,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;
const IPPROTO_SCTP: u16 = 132;

const IP_VS_SVC_F_PERSISTENT: u32 = 0x0001;
/// Set by the kernel on the services in its tables.
pub const IP_VS_SVC_F_HASHED: u32 = 0x0002;
const IP_VS_SVC_F_ONEPACKET: u32 = 0x0004;
const IP_VS_SVC_F_SCHED1: u32 = 0x0008;
const IP_VS_SVC_F_SCHED2: u32 = 0x0010;
const IP_VS_SVC_F_SCHED3: u32 = 0x0020;

const IP_VS_CONN_F_FWD_MASK: u32 = 0x0007;
const IP_VS_CONN_F_MASQ: u32 = 0;
const IP_VS_CONN_F_LOCALNODE: u32 = 1;
const IP_VS_CONN_F_TUNNEL: u32 = 2;
const IP_VS_CONN_F_DROUTE: u32 = 3;
const IP_VS_CONN_F_BYPASS: u32 = 4;

const IP_VS_CONN_F_TUNNEL_TYPE_IPIP: u8 = 0;
const IP_VS_CONN_F_TUNNEL_TYPE_GUE: u8 = 1;
const IP_VS_CONN_F_TUNNEL_TYPE_GRE: u8 = 2;
const IP_VS_TUNNEL_ENCAP_FLAG_CSUM: u16 = 1;
const IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM: u16 = 2;

fn unknown(id: AttrId, what: &str, value: impl std::fmt::Display) -> DecodeError {
    DecodeError::from(format!("{}: unknown {what} {value}", id.name))
}

pub fn af(family: Family) -> u16 {
    match family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    }
}

pub fn family(id: AttrId, af: u16) -> Result<Family, DecodeError> {
    match af {
        AF_INET => Ok(Family::V4),
        AF_INET6 => Ok(Family::V6),
        other => Err(unknown(id, "address family", other)),
    }
}

pub fn protocol_number(protocol: Protocol) -> u16 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Sctp => IPPROTO_SCTP,
    }
}

pub fn protocol(id: AttrId, number: u16) -> Result<Protocol, DecodeError> {
    match number {
        IPPROTO_TCP => Ok(Protocol::Tcp),
        IPPROTO_UDP => Ok(Protocol::Udp),
        IPPROTO_SCTP => Ok(Protocol::Sctp),
        other => Err(unknown(id, "protocol", other)),
    }
}

pub fn flag_bits(flags: &ServiceFlags) -> u32 {
    [
        (flags.persistent, IP_VS_SVC_F_PERSISTENT),
        (flags.hashed, IP_VS_SVC_F_HASHED),
        (flags.one_packet, IP_VS_SVC_F_ONEPACKET),
        (flags.sched_fallback, IP_VS_SVC_F_SCHED1),
        (flags.sched_port, IP_VS_SVC_F_SCHED2),
        (flags.sched_flag3, IP_VS_SVC_F_SCHED3),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .fold(0, |bits, (_, bit)| bits | bit)
}

/// Bits this model does not know are dropped.
pub fn service_flags(bits: u32) -> ServiceFlags {
    ServiceFlags {
        persistent: bits & IP_VS_SVC_F_PERSISTENT != 0,
        hashed: bits & IP_VS_SVC_F_HASHED != 0,
        one_packet: bits & IP_VS_SVC_F_ONEPACKET != 0,
        sched_fallback: bits & IP_VS_SVC_F_SCHED1 != 0,
        sched_port: bits & IP_VS_SVC_F_SCHED2 != 0,
        sched_flag3: bits & IP_VS_SVC_F_SCHED3 != 0,
    }
}

/// The kernel keeps the netmask as a `__be32`: an IPv4 mask in network order, and
/// for IPv6 the prefix length as a host-order number.
pub fn netmask_bytes(family: Family, prefix: u8) -> [u8; 4] {
    match family {
        Family::V4 => u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0)
            .to_be_bytes(),
        Family::V6 => u32::from(prefix).to_ne_bytes(),
    }
}

pub fn netmask_prefix(id: AttrId, family: Family, bytes: [u8; 4]) -> Result<u8, DecodeError> {
    match family {
        Family::V4 => {
            let mask = u32::from_be_bytes(bytes);
            let prefix = mask.leading_ones();
            if mask.checked_shl(prefix).unwrap_or(0) != 0 {
                return Err(DecodeError::from(format!(
                    "{}: {} is not a contiguous netmask",
                    id.name,
                    std::net::Ipv4Addr::from(mask)
                )));
            }
            Ok(prefix as u8)
        }
        Family::V6 => {
            let prefix = u32::from_ne_bytes(bytes);
            u8::try_from(prefix)
                .ok()
                .filter(|p| *p <= 128)
                .ok_or_else(|| {
                    DecodeError::from(format!(
                        "{}: IPv6 prefix length {prefix} above 128",
                        id.name
                    ))
                })
        }
    }
}

/// A destination's forwarding method and tunnel as the kernel's numbers:
/// `(method, tunnel type, tunnel port, tunnel flags)`; the tunnel fields are zero but
/// for tunnels.
pub fn forwarding(forward: ForwardMethod) -> (u32, u8, u16, u16) {
    let (method, tunnel) = match forward {
        ForwardMethod::Masquerade => (IP_VS_CONN_F_MASQ, Tunnel::default()),
        ForwardMethod::Local => (IP_VS_CONN_F_LOCALNODE, Tunnel::default()),
        ForwardMethod::Tunnel(tunnel) => (IP_VS_CONN_F_TUNNEL, tunnel),
        ForwardMethod::Route => (IP_VS_CONN_F_DROUTE, Tunnel::default()),
        ForwardMethod::Bypass => (IP_VS_CONN_F_BYPASS, Tunnel::default()),
    };
    let kind = match tunnel.kind {
        TunnelType::Ipip => IP_VS_CONN_F_TUNNEL_TYPE_IPIP,
        TunnelType::Gue => IP_VS_CONN_F_TUNNEL_TYPE_GUE,
        TunnelType::Gre => IP_VS_CONN_F_TUNNEL_TYPE_GRE,
    };
    let flags = match tunnel.checksum {
        TunnelChecksum::None => 0,
        TunnelChecksum::Checksum => IP_VS_TUNNEL_ENCAP_FLAG_CSUM,
        TunnelChecksum::RemoteChecksum => IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM,
    };
    (method, kind, tunnel.port, flags)
}

/// The forwarding method from the kernel's numbers; `tunnel` is read only for
/// tunnels. The `ids` name the method and tunnel type attributes.
pub fn forward_method(
    ids: (AttrId, AttrId),
    method: u32,
    tunnel: impl FnOnce() -> Result<(u8, u16, u16), DecodeError>,
) -> Result<ForwardMethod, DecodeError> {
    Ok(match method & IP_VS_CONN_F_FWD_MASK {
        IP_VS_CONN_F_MASQ => ForwardMethod::Masquerade,
        IP_VS_CONN_F_LOCALNODE => ForwardMethod::Local,
        IP_VS_CONN_F_DROUTE => ForwardMethod::Route,
        IP_VS_CONN_F_BYPASS => ForwardMethod::Bypass,
        IP_VS_CONN_F_TUNNEL => {
            let (kind, port, flags) = tunnel()?;
            let kind = match kind {
                IP_VS_CONN_F_TUNNEL_TYPE_IPIP => TunnelType::Ipip,
                IP_VS_CONN_F_TUNNEL_TYPE_GUE => TunnelType::Gue,
                IP_VS_CONN_F_TUNNEL_TYPE_GRE => TunnelType::Gre,
                other => return Err(unknown(ids.1, "tunnel type", other)),
            };
            let checksum = if flags & IP_VS_TUNNEL_ENCAP_FLAG_REMCSUM != 0 {
                TunnelChecksum::RemoteChecksum
            } else if flags & IP_VS_TUNNEL_ENCAP_FLAG_CSUM != 0 {
                TunnelChecksum::Checksum
            } else {
                TunnelChecksum::None
            };
            ForwardMethod::Tunnel(Tunnel {
                kind,
                port,
                checksum,
            })
        }
        other => return Err(unknown(ids.0, "forwarding method", other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::attr::svc;

    #[test]
    fn netmasks_are_prefixes_both_ways() {
        for prefix in 0..=32 {
            let bytes = netmask_bytes(Family::V4, prefix);
            assert_eq!(
                netmask_prefix(svc::NETMASK, Family::V4, bytes).ok(),
                Some(prefix)
            );
        }
        assert_eq!(netmask_bytes(Family::V4, 24), [255, 255, 255, 0]);
        assert_eq!(netmask_bytes(Family::V6, 64), 64u32.to_ne_bytes());
        assert!(netmask_prefix(svc::NETMASK, Family::V6, 129u32.to_ne_bytes()).is_err());
    }

    #[test]
    fn every_flag_has_its_own_bit() {
        let all = ServiceFlags {
            persistent: true,
            hashed: true,
            one_packet: true,
            sched_fallback: true,
            sched_port: true,
            sched_flag3: true,
        };
        assert_eq!(flag_bits(&all), 0x3f);
        assert_eq!(service_flags(0x3f), all);
        assert_eq!(service_flags(0), ServiceFlags::default());
    }
}

//! The kernel's IPVS answers read back into the model. Every attribute goes through
//! [`Attrs`], so a missing, short or unknown value is an error that names it; nothing
//! here panics on what the kernel sends.

use std::time::Duration;

use netlink_packet_core::DecodeError;

use super::attr::{self, AttrId, Attrs, cmd, dest, info, stats, svc};
use super::message::IpvsMessage;
use super::model::{
    Destination, DestinationStatus, Family, Info, Service, ServiceFlags, ServiceKey, Stats,
    Timeouts,
};
use super::value;

/// A service from a GET_SERVICE reply or dump message (`IPVS_CMD_NEW_SERVICE`).
pub fn read_service(message: &IpvsMessage) -> Result<(Service, Stats), DecodeError> {
    let nest = message.top().require(cmd::SERVICE)?;
    let attrs = Attrs::parse(nest, cmd::SERVICE.name)?;
    let family = value::family(svc::AF, attrs.required_u16(svc::AF)?)?;
    let key = match attrs.u32(svc::FWMARK)? {
        Some(mark) if mark != 0 => ServiceKey::Fwmark { family, mark },
        _ => ServiceKey::Address {
            protocol: value::protocol(svc::PROTOCOL, attrs.required_u16(svc::PROTOCOL)?)?,
            address: attrs.address(svc::ADDR, family == Family::V6)?,
            port: attrs.required_port(svc::PORT)?,
        },
    };
    // struct ip_vs_flags: the flags, then the mask (all ones in replies).
    let flags = match attrs.get(svc::FLAGS) {
        Some(bytes) => {
            let [a, b, c, d, ..] = attr::fixed::<8>(svc::FLAGS, bytes)?;
            value::service_flags(u32::from_ne_bytes([a, b, c, d]))
        }
        None => ServiceFlags::default(),
    };
    let netmask = match attrs.get(svc::NETMASK) {
        Some(bytes) => {
            value::netmask_prefix(svc::NETMASK, family, attr::fixed(svc::NETMASK, bytes)?)?
        }
        None => family.max_prefix(),
    };
    let scheduler = attrs
        .string(svc::SCHED_NAME)?
        .ok_or_else(|| attr::missing(svc::SCHED_NAME))?;
    let service = Service {
        key,
        scheduler,
        flags,
        timeout: attrs.u32(svc::TIMEOUT)?.unwrap_or(0),
        netmask,
        persistence_engine: attrs.string(svc::PE_NAME)?,
    };
    let stats = read_stats(&attrs, svc::STATS64, svc::STATS)?;
    Ok((service, stats))
}

/// A destination from a GET_DEST dump message (`IPVS_CMD_NEW_DEST`); `service_family`
/// reads its address when the kernel is too old to say the destination's own family.
pub fn read_destination(
    message: &IpvsMessage,
    service_family: Family,
) -> Result<DestinationStatus, DecodeError> {
    let nest = message.top().require(cmd::DEST)?;
    let attrs = Attrs::parse(nest, cmd::DEST.name)?;
    let family = match attrs.u16(dest::ADDR_FAMILY)? {
        Some(af) => value::family(dest::ADDR_FAMILY, af)?,
        None => service_family,
    };
    let forward = value::forward_method(
        (dest::FWD_METHOD, dest::TUN_TYPE),
        attrs.required_u32(dest::FWD_METHOD)?,
        || {
            Ok((
                attrs.u8(dest::TUN_TYPE)?.unwrap_or(0),
                attrs.port(dest::TUN_PORT)?.unwrap_or(0),
                attrs.u16(dest::TUN_FLAGS)?.unwrap_or(0),
            ))
        },
    )?;
    Ok(DestinationStatus {
        destination: Destination {
            address: attrs.address(dest::ADDR, family == Family::V6)?,
            port: attrs.required_port(dest::PORT)?,
            forward,
            weight: attrs.required_u32(dest::WEIGHT)?,
            upper_threshold: attrs.u32(dest::U_THRESH)?.unwrap_or(0),
            lower_threshold: attrs.u32(dest::L_THRESH)?.unwrap_or(0),
        },
        active_connections: attrs.u32(dest::ACTIVE_CONNS)?.unwrap_or(0),
        inactive_connections: attrs.u32(dest::INACT_CONNS)?.unwrap_or(0),
        persistent_connections: attrs.u32(dest::PERSIST_CONNS)?.unwrap_or(0),
        stats: read_stats(&attrs, dest::STATS64, dest::STATS)?,
    })
}

/// The counters from the 64-bit nest when the kernel sends one (current kernels send
/// both), else from the older one whose counts are 32 bits.
fn read_stats(attrs: &Attrs<'_>, stats64: AttrId, stats32: AttrId) -> Result<Stats, DecodeError> {
    let (nest, id, wide) = match (attrs.get(stats64), attrs.get(stats32)) {
        (Some(nest), _) => (nest, stats64, true),
        (None, Some(nest)) => (nest, stats32, false),
        (None, None) => return Ok(Stats::default()),
    };
    let s = Attrs::parse(nest, id.name)?;
    // In the 32-bit nest only the byte counters are 64 bits.
    let count = |id| -> Result<u64, DecodeError> {
        if wide {
            Ok(s.u64(id)?.unwrap_or(0))
        } else {
            Ok(s.u32(id)?.map(u64::from).unwrap_or(0))
        }
    };
    let bytes = |id| s.u64(id).map(Option::unwrap_or_default);
    Ok(Stats {
        connections: count(stats::CONNS)?,
        packets_in: count(stats::INPKTS)?,
        packets_out: count(stats::OUTPKTS)?,
        bytes_in: bytes(stats::INBYTES)?,
        bytes_out: bytes(stats::OUTBYTES)?,
        cps: count(stats::CPS)?,
        packets_in_per_second: count(stats::INPPS)?,
        packets_out_per_second: count(stats::OUTPPS)?,
        bytes_in_per_second: count(stats::INBPS)?,
        bytes_out_per_second: count(stats::OUTBPS)?,
    })
}

/// The timeouts from a GET_CONFIG reply (`IPVS_CMD_SET_CONFIG`).
pub fn read_timeouts(message: &IpvsMessage) -> Result<Timeouts, DecodeError> {
    let top = message.top();
    let get = |id| {
        top.u32(id)
            .map(|v| v.map(|secs| Duration::from_secs(u64::from(secs))))
    };
    Ok(Timeouts {
        tcp: get(cmd::TIMEOUT_TCP)?,
        tcp_fin: get(cmd::TIMEOUT_TCP_FIN)?,
        udp: get(cmd::TIMEOUT_UDP)?,
    })
}

/// Version and connection table size from a GET_INFO reply (`IPVS_CMD_SET_INFO`),
/// whose first-level attributes are `IPVS_INFO_ATTR_*`.
pub fn read_info(message: &IpvsMessage) -> Result<Info, DecodeError> {
    let top = message.top();
    let [_, major, minor, patch] = top.required_u32(info::VERSION)?.to_be_bytes();
    Ok(Info {
        version: (major, minor, patch),
        connection_table_size: top.required_u32(info::CONN_TAB_SIZE)?,
    })
}

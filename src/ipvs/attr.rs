//! Netlink attributes of the IPVS family: their numbers (from the kernel's
//! `include/uapi/linux/ip_vs.h`), a small tree to emit them, and a reader that looks
//! them up by number and names the attribute in every error.
//!
//! Byte orders follow the kernel: integers in host order, except ports (and the
//! tunnel port), which are network order, and the persistence netmask, which the
//! kernel keeps as a `__be32` (an IPv4 mask in network order; for IPv6 the prefix
//! length itself, in host order). Addresses are a 16-byte `union nf_inet_addr` with
//! IPv4 in the first four bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, Emitable, NLA_F_NESTED, NLA_HEADER_SIZE, NLA_TYPE_MASK, Nla, NlasIterator,
};

/// One attribute number and the kernel's name for it, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrId {
    pub kind: u16,
    pub name: &'static str,
}

const fn id(kind: u16, name: &'static str) -> AttrId {
    AttrId { kind, name }
}

/// `IPVS_CMD_ATTR_*`: the first level of every message.
pub mod cmd {
    use super::{AttrId, id};
    pub const SERVICE: AttrId = id(1, "IPVS_CMD_ATTR_SERVICE");
    pub const DEST: AttrId = id(2, "IPVS_CMD_ATTR_DEST");
    pub const TIMEOUT_TCP: AttrId = id(4, "IPVS_CMD_ATTR_TIMEOUT_TCP");
    pub const TIMEOUT_TCP_FIN: AttrId = id(5, "IPVS_CMD_ATTR_TIMEOUT_TCP_FIN");
    pub const TIMEOUT_UDP: AttrId = id(6, "IPVS_CMD_ATTR_TIMEOUT_UDP");
}

/// `IPVS_SVC_ATTR_*`, inside [`cmd::SERVICE`].
pub mod svc {
    use super::{AttrId, id};
    pub const AF: AttrId = id(1, "IPVS_SVC_ATTR_AF");
    pub const PROTOCOL: AttrId = id(2, "IPVS_SVC_ATTR_PROTOCOL");
    pub const ADDR: AttrId = id(3, "IPVS_SVC_ATTR_ADDR");
    pub const PORT: AttrId = id(4, "IPVS_SVC_ATTR_PORT");
    pub const FWMARK: AttrId = id(5, "IPVS_SVC_ATTR_FWMARK");
    pub const SCHED_NAME: AttrId = id(6, "IPVS_SVC_ATTR_SCHED_NAME");
    pub const FLAGS: AttrId = id(7, "IPVS_SVC_ATTR_FLAGS");
    pub const TIMEOUT: AttrId = id(8, "IPVS_SVC_ATTR_TIMEOUT");
    pub const NETMASK: AttrId = id(9, "IPVS_SVC_ATTR_NETMASK");
    pub const STATS: AttrId = id(10, "IPVS_SVC_ATTR_STATS");
    pub const PE_NAME: AttrId = id(11, "IPVS_SVC_ATTR_PE_NAME");
    pub const STATS64: AttrId = id(12, "IPVS_SVC_ATTR_STATS64");
}

/// `IPVS_DEST_ATTR_*`, inside [`cmd::DEST`].
pub mod dest {
    use super::{AttrId, id};
    pub const ADDR: AttrId = id(1, "IPVS_DEST_ATTR_ADDR");
    pub const PORT: AttrId = id(2, "IPVS_DEST_ATTR_PORT");
    pub const FWD_METHOD: AttrId = id(3, "IPVS_DEST_ATTR_FWD_METHOD");
    pub const WEIGHT: AttrId = id(4, "IPVS_DEST_ATTR_WEIGHT");
    pub const U_THRESH: AttrId = id(5, "IPVS_DEST_ATTR_U_THRESH");
    pub const L_THRESH: AttrId = id(6, "IPVS_DEST_ATTR_L_THRESH");
    pub const ACTIVE_CONNS: AttrId = id(7, "IPVS_DEST_ATTR_ACTIVE_CONNS");
    pub const INACT_CONNS: AttrId = id(8, "IPVS_DEST_ATTR_INACT_CONNS");
    pub const PERSIST_CONNS: AttrId = id(9, "IPVS_DEST_ATTR_PERSIST_CONNS");
    pub const STATS: AttrId = id(10, "IPVS_DEST_ATTR_STATS");
    pub const ADDR_FAMILY: AttrId = id(11, "IPVS_DEST_ATTR_ADDR_FAMILY");
    pub const STATS64: AttrId = id(12, "IPVS_DEST_ATTR_STATS64");
    pub const TUN_TYPE: AttrId = id(13, "IPVS_DEST_ATTR_TUN_TYPE");
    pub const TUN_PORT: AttrId = id(14, "IPVS_DEST_ATTR_TUN_PORT");
    pub const TUN_FLAGS: AttrId = id(15, "IPVS_DEST_ATTR_TUN_FLAGS");
}

/// `IPVS_STATS_ATTR_*`, inside the STATS and STATS64 nests.
pub mod stats {
    use super::{AttrId, id};
    pub const CONNS: AttrId = id(1, "IPVS_STATS_ATTR_CONNS");
    pub const INPKTS: AttrId = id(2, "IPVS_STATS_ATTR_INPKTS");
    pub const OUTPKTS: AttrId = id(3, "IPVS_STATS_ATTR_OUTPKTS");
    pub const INBYTES: AttrId = id(4, "IPVS_STATS_ATTR_INBYTES");
    pub const OUTBYTES: AttrId = id(5, "IPVS_STATS_ATTR_OUTBYTES");
    pub const CPS: AttrId = id(6, "IPVS_STATS_ATTR_CPS");
    pub const INPPS: AttrId = id(7, "IPVS_STATS_ATTR_INPPS");
    pub const OUTPPS: AttrId = id(8, "IPVS_STATS_ATTR_OUTPPS");
    pub const INBPS: AttrId = id(9, "IPVS_STATS_ATTR_INBPS");
    pub const OUTBPS: AttrId = id(10, "IPVS_STATS_ATTR_OUTBPS");
}

/// `IPVS_INFO_ATTR_*`: the first level of a GET_INFO reply.
pub mod info {
    use super::{AttrId, id};
    pub const VERSION: AttrId = id(1, "IPVS_INFO_ATTR_VERSION");
    pub const CONN_TAB_SIZE: AttrId = id(2, "IPVS_INFO_ATTR_CONN_TAB_SIZE");
}

/// An attribute to send: a value already in its byte order, or a nest. Nests carry
/// `NLA_F_NESTED`, as `ipvsadm`'s do (the kernel's replies leave it out; the reader
/// ignores it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    Value(u16, Vec<u8>),
    Nest(u16, Vec<Attr>),
}

impl Attr {
    pub fn u8(id: AttrId, value: u8) -> Attr {
        Attr::Value(id.kind, vec![value])
    }

    pub fn u16(id: AttrId, value: u16) -> Attr {
        Attr::Value(id.kind, value.to_ne_bytes().to_vec())
    }

    pub fn u32(id: AttrId, value: u32) -> Attr {
        Attr::Value(id.kind, value.to_ne_bytes().to_vec())
    }

    /// A port: network byte order.
    pub fn port(id: AttrId, port: u16) -> Attr {
        Attr::Value(id.kind, port.to_be_bytes().to_vec())
    }

    /// A NUL-terminated string.
    pub fn string(id: AttrId, text: &str) -> Attr {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        Attr::Value(id.kind, bytes)
    }

    /// An address as `union nf_inet_addr`.
    pub fn address(id: AttrId, address: IpAddr) -> Attr {
        let mut bytes = [0u8; 16];
        match address {
            IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => bytes.copy_from_slice(&v6.octets()),
        }
        Attr::Value(id.kind, bytes.to_vec())
    }

    pub fn nest(id: AttrId, children: Vec<Attr>) -> Attr {
        Attr::Nest(id.kind, children)
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Value(_, bytes) => bytes.len(),
            Attr::Nest(_, children) => children.iter().map(|c| c.buffer_len()).sum(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Value(kind, _) => *kind,
            Attr::Nest(kind, _) => *kind | NLA_F_NESTED,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Value(_, bytes) => buffer[..bytes.len()].copy_from_slice(bytes),
            Attr::Nest(_, children) => {
                let mut start = 0;
                for child in children {
                    let end = start + child.buffer_len();
                    child.emit(&mut buffer[start..end]);
                    start = end;
                }
            }
        }
    }
}

/// The attributes of one level, read from received bytes and looked up by number.
/// A later duplicate wins, as in the kernel's `nla_parse`.
#[derive(Clone, Debug, Default)]
pub struct Attrs<'a> {
    entries: Vec<(u16, &'a [u8])>,
}

impl<'a> Attrs<'a> {
    /// Splits one level of attributes; `what` names the level in errors.
    pub fn parse(bytes: &'a [u8], what: &str) -> Result<Attrs<'a>, DecodeError> {
        let mut entries = Vec::new();
        for nla in NlasIterator::new(bytes) {
            let nla = nla.map_err(|e| DecodeError::from(format!("{what}: {e}")))?;
            let kind = nla.kind() & NLA_TYPE_MASK;
            let length = usize::from(nla.length());
            let value = nla
                .into_inner()
                .get(NLA_HEADER_SIZE..length)
                .ok_or_else(|| DecodeError::from(format!("{what}: attribute {kind} truncated")))?;
            entries.push((kind, value));
        }
        Ok(Attrs { entries })
    }

    pub fn from_entries(entries: Vec<(u16, &'a [u8])>) -> Attrs<'a> {
        Attrs { entries }
    }

    /// Owned copies, to keep in an [`Attr`] list.
    pub fn into_values(self) -> Vec<Attr> {
        self.entries
            .into_iter()
            .map(|(kind, value)| Attr::Value(kind, value.to_vec()))
            .collect()
    }

    pub fn get(&self, id: AttrId) -> Option<&'a [u8]> {
        self.entries
            .iter()
            .rev()
            .find(|(kind, _)| *kind == id.kind)
            .map(|(_, value)| *value)
    }

    pub fn has(&self, id: AttrId) -> bool {
        self.get(id).is_some()
    }

    pub fn require(&self, id: AttrId) -> Result<&'a [u8], DecodeError> {
        self.get(id)
            .ok_or_else(|| DecodeError::from(format!("{} missing", id.name)))
    }

    pub fn u8(&self, id: AttrId) -> Result<Option<u8>, DecodeError> {
        self.get(id)
            .map(|v| fixed::<1>(id, v).map(|b| b[0]))
            .transpose()
    }

    pub fn u16(&self, id: AttrId) -> Result<Option<u16>, DecodeError> {
        self.get(id)
            .map(|v| fixed::<2>(id, v).map(u16::from_ne_bytes))
            .transpose()
    }

    pub fn u32(&self, id: AttrId) -> Result<Option<u32>, DecodeError> {
        self.get(id)
            .map(|v| fixed::<4>(id, v).map(u32::from_ne_bytes))
            .transpose()
    }

    pub fn u64(&self, id: AttrId) -> Result<Option<u64>, DecodeError> {
        self.get(id)
            .map(|v| fixed::<8>(id, v).map(u64::from_ne_bytes))
            .transpose()
    }

    /// A port in network byte order.
    pub fn port(&self, id: AttrId) -> Result<Option<u16>, DecodeError> {
        self.get(id)
            .map(|v| fixed::<2>(id, v).map(u16::from_be_bytes))
            .transpose()
    }

    pub fn required_u16(&self, id: AttrId) -> Result<u16, DecodeError> {
        self.u16(id)?.ok_or_else(|| missing(id))
    }

    pub fn required_u32(&self, id: AttrId) -> Result<u32, DecodeError> {
        self.u32(id)?.ok_or_else(|| missing(id))
    }

    pub fn required_port(&self, id: AttrId) -> Result<u16, DecodeError> {
        self.port(id)?.ok_or_else(|| missing(id))
    }

    /// A NUL-terminated string (the terminator may be missing).
    pub fn string(&self, id: AttrId) -> Result<Option<String>, DecodeError> {
        let Some(value) = self.get(id) else {
            return Ok(None);
        };
        let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
        String::from_utf8(value[..end].to_vec())
            .map(Some)
            .map_err(|_| DecodeError::from(format!("{}: not UTF-8", id.name)))
    }

    /// A `union nf_inet_addr` holding an address of `family` (`true`: IPv6).
    pub fn address(&self, id: AttrId, v6: bool) -> Result<IpAddr, DecodeError> {
        let value = self.require(id)?;
        let bytes = fixed::<16>(id, value)?;
        Ok(if v6 {
            IpAddr::V6(Ipv6Addr::from(bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        })
    }
}

/// The error for a required attribute the kernel left out.
pub fn missing(id: AttrId) -> DecodeError {
    DecodeError::from(format!("{} missing", id.name))
}

/// The value as exactly `N` bytes, or an error naming the attribute.
pub fn fixed<const N: usize>(id: AttrId, value: &[u8]) -> Result<[u8; N], DecodeError> {
    <[u8; N]>::try_from(value)
        .map_err(|_| DecodeError::from(format!("{}: {} bytes, expected {N}", id.name, value.len())))
}

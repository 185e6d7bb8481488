//! How a set's keys and values are laid out in nf_tables registers, both ways: the
//! text the controllers write (`10.96.0.1 . tcp . 80`, `goto endpoints-3`) to the
//! bytes netlink carries ([`super::netlink`] sends elements), and those bytes back
//! to the same text ([`super::dump`] reads them). A [`Codec`] is read from the
//! set's declaration when we write, from the types the kernel keeps when we read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::model::Set;

/// nft's datatype ids (its `enum datatypes`), as the kernel stores them for a set.
const TYPE_VERDICT: u32 = 1;
#[cfg(test)]
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_MARK: u32 = 19;
/// Bits per datatype id in a concatenation's type.
const TYPE_BITS: u32 = 6;
/// The kernel's data type of a verdict map.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_OBJECT: u32 = 0x40;

const NFT_CONTINUE: i32 = -1;
const NFT_RETURN: i32 = -5;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;

/// One part of a key or value; each part of a concatenation fills whole 32-bit
/// registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    V4,
    V6,
    Proto,
    /// A port, network byte order.
    Service,
    /// Host byte order, `len` bytes (marks, numgen numbers, other integers).
    Integer(usize),
}

impl Part {
    /// Bytes it takes in registers.
    pub fn width(self) -> usize {
        match self {
            Part::V4 | Part::Proto | Part::Service => 4,
            Part::V6 => 16,
            Part::Integer(len) => len.div_ceil(4) * 4,
        }
    }

    /// Appends `word`'s bytes, padded to [`Self::width`].
    fn encode(self, word: &str, out: &mut Vec<u8>) -> Option<()> {
        let start = out.len();
        match self {
            Part::V4 => match word.parse::<IpAddr>().ok()? {
                IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
                IpAddr::V6(_) => return None,
            },
            Part::V6 => match word.parse::<IpAddr>().ok()? {
                IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
                IpAddr::V4(_) => return None,
            },
            Part::Proto => {
                let protocol: u8 = match word {
                    "icmp" => 1,
                    "tcp" => 6,
                    "udp" => 17,
                    "icmpv6" | "ipv6-icmp" => 58,
                    "sctp" => 132,
                    number => number.parse().ok()?,
                };
                out.push(protocol);
            }
            Part::Service => out.extend_from_slice(&word.parse::<u16>().ok()?.to_be_bytes()),
            Part::Integer(len) => {
                let number: u64 = match word.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                    None => word.parse().ok()?,
                };
                let bytes = number.to_ne_bytes();
                if len > bytes.len() {
                    return None;
                }
                out.extend_from_slice(&bytes[..len]);
            }
        }
        out.resize(start + self.width(), 0);
        Some(())
    }

    /// The text of the part at the start of `bytes`.
    fn decode(self, bytes: &[u8]) -> Option<String> {
        Some(match self {
            Part::V4 => Ipv4Addr::from(<[u8; 4]>::try_from(bytes.get(..4)?).ok()?).to_string(),
            Part::V6 => Ipv6Addr::from(<[u8; 16]>::try_from(bytes.get(..16)?).ok()?).to_string(),
            Part::Proto => match *bytes.first()? {
                1 => "icmp".into(),
                6 => "tcp".into(),
                17 => "udp".into(),
                58 => "ipv6-icmp".into(),
                132 => "sctp".into(),
                other => other.to_string(),
            },
            Part::Service => u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?).to_string(),
            Part::Integer(len) => {
                let mut word = [0u8; 8];
                word.get_mut(..len)?.copy_from_slice(bytes.get(..len)?);
                u64::from_ne_bytes(word).to_string()
            }
        })
    }

    /// A datatype name of a `type` declaration.
    fn of_type(name: &str) -> Option<Self> {
        Some(match name {
            "ipv4_addr" => Part::V4,
            "ipv6_addr" => Part::V6,
            "inet_proto" => Part::Proto,
            "inet_service" => Part::Service,
            "mark" => Part::Integer(4),
            _ => return None,
        })
    }

    /// An expression of a `typeof` declaration.
    fn of_typeof(expr: &str) -> Option<Self> {
        Some(match expr {
            "ip saddr" | "ip daddr" => Part::V4,
            "ip6 saddr" | "ip6 daddr" => Part::V6,
            "meta l4proto" | "ip protocol" | "ip6 nexthdr" => Part::Proto,
            "th dport" | "th sport" | "tcp dport" | "udp dport" => Part::Service,
            "meta mark" | "ct mark" => Part::Integer(4),
            _ if expr.starts_with("numgen ") => Part::Integer(4),
            _ => return None,
        })
    }

    /// The parts of a (possibly concatenated) kernel type of `len` bytes: any id not
    /// known here is an integer taking the bytes the known parts leave.
    fn of_kernel(kind: u32, len: usize) -> Vec<Self> {
        let mut ids = Vec::new();
        let mut rest = kind;
        while rest != 0 {
            ids.push(rest & ((1 << TYPE_BITS) - 1));
            rest >>= TYPE_BITS;
        }
        ids.reverse();
        let part = |id: u32| match id {
            TYPE_IPADDR => Some(Part::V4),
            TYPE_IP6ADDR => Some(Part::V6),
            TYPE_INET_PROTOCOL => Some(Part::Proto),
            TYPE_INET_SERVICE => Some(Part::Service),
            TYPE_MARK => Some(Part::Integer(4)),
            _ => None,
        };
        let known: usize = ids.iter().filter_map(|id| part(*id)).map(Part::width).sum();
        let integers = ids.iter().filter(|id| part(**id).is_none()).count();
        ids.iter()
            .map(|id| {
                part(*id)
                    .unwrap_or_else(|| Part::Integer(len.saturating_sub(known) / integers.max(1)))
            })
            .collect()
    }
}

/// What a set maps its keys to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    None,
    Verdict,
    /// A named counter (`"name"`), by reference.
    Counter,
    Data(Vec<Part>),
}

/// How a set's keys and values are laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codec {
    pub key: Vec<Part>,
    pub value: Value,
}

impl Codec {
    /// The layout of `set` from its declaration, or `None` when its elements are not
    /// for netlink here (intervals, timeouts, types not listed in [`Part`]).
    pub fn of(set: &Set) -> Option<Self> {
        if set.interval() || set.dynamic() {
            return None;
        }
        let body = set.declaration.split(';').next()?.trim();
        let (typeof_, body) = match body.strip_prefix("typeof ") {
            Some(rest) => (true, rest),
            None => (false, body.strip_prefix("type ")?),
        };
        let parts = |text: &str| -> Option<Vec<Part>> {
            text.split(" . ")
                .map(|p| {
                    if typeof_ {
                        Part::of_typeof(p.trim())
                    } else {
                        Part::of_type(p.trim())
                    }
                })
                .collect()
        };
        let (key, value) = match body.split_once(" : ") {
            Some((key, value)) => (key, Some(value.trim())),
            None => (body, None),
        };
        let value = match value {
            None if !set.map => Value::None,
            None => return None,
            Some("verdict") => Value::Verdict,
            Some("counter") => Value::Counter,
            Some(data) => Value::Data(parts(data)?),
        };
        Some(Self {
            key: parts(key)?,
            value,
        })
    }

    /// The layout the kernel keeps for a set: its flags, key type and length, data
    /// type and length (`NFTA_SET_*`).
    pub fn of_kernel(flags: u32, key: (u32, usize), data: Option<(u32, usize)>) -> Self {
        let value = match data {
            _ if flags & NFT_SET_OBJECT != 0 => Value::Counter,
            Some((NFT_DATA_VERDICT | TYPE_VERDICT, _)) => Value::Verdict,
            Some((kind, len)) if flags & NFT_SET_MAP != 0 => {
                Value::Data(Part::of_kernel(kind, len))
            }
            _ => Value::None,
        };
        Self {
            key: Part::of_kernel(key.0, key.1),
            value,
        }
    }

    /// Whether the kernel's flags make a set whose elements the packet path adds.
    pub fn dynamic_flags(flags: u32) -> bool {
        flags & (NFT_SET_TIMEOUT | NFT_SET_EVAL) != 0
    }

    /// Whether the kernel's flags make an interval set.
    pub fn interval_flags(flags: u32) -> bool {
        flags & NFT_SET_INTERVAL != 0
    }
}

/// A key or value's bytes.
pub fn encode(parts: &[Part], text: &str) -> Option<Vec<u8>> {
    let mut words = text.split(" . ");
    let mut bytes = Vec::new();
    for part in parts {
        part.encode(words.next()?.trim(), &mut bytes)?;
    }
    words.next().is_none().then_some(bytes)
}

/// A key or value's text.
pub fn decode(parts: &[Part], bytes: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(parts.len());
    let mut at = 0;
    for part in parts {
        out.push(part.decode(bytes.get(at..)?)?);
        at += part.width();
    }
    Some(out.join(" . "))
}

/// `start-end` per part (`start` alone where they are equal).
pub fn decode_range(parts: &[Part], start: &[u8], end: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(parts.len());
    let mut at = 0;
    for part in parts {
        let a = part.decode(start.get(at..)?)?;
        let b = part.decode(end.get(at..)?)?;
        out.push(if a == b { a } else { format!("{a}-{b}") });
        at += part.width();
    }
    Some(out.join(" . "))
}

/// A verdict's code and chain.
pub fn encode_verdict(text: &str) -> Option<(i32, Option<&str>)> {
    Some(match text.split_once(' ') {
        Some(("jump", chain)) => (NFT_JUMP, Some(chain)),
        Some(("goto", chain)) => (NFT_GOTO, Some(chain)),
        None if text == "continue" => (NFT_CONTINUE, None),
        None if text == "return" => (NFT_RETURN, None),
        None if text == "accept" => (NF_ACCEPT, None),
        None if text == "drop" => (NF_DROP, None),
        _ => return None,
    })
}

/// A verdict's text.
pub fn decode_verdict(code: i32, chain: Option<String>) -> Option<String> {
    Some(match (code, chain) {
        (NF_ACCEPT, _) => "accept".into(),
        (NF_DROP, _) => "drop".into(),
        (NFT_CONTINUE, _) => "continue".into(),
        (NFT_RETURN, _) => "return".into(),
        (NFT_JUMP, Some(chain)) => format!("jump {chain}"),
        (NFT_GOTO, Some(chain)) => format!("goto {chain}"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(map: bool, declaration: &str) -> Option<Codec> {
        Codec::of(&Set::new(map, declaration, None))
    }

    #[test]
    fn keys_fill_registers_and_read_back() {
        let v4 = codec(false, "type ipv4_addr").unwrap();
        assert_eq!(encode(&v4.key, "10.0.0.1"), Some(vec![10, 0, 0, 1]));
        let v6 = codec(false, "type ipv6_addr").unwrap();
        assert_eq!(encode(&v6.key, "10.0.0.1"), None);
        let named = codec(false, "type ipv4_addr . inet_proto . inet_service").unwrap();
        let bytes = encode(&named.key, "10.0.0.1 . tcp . 8080").unwrap();
        assert_eq!(bytes, [10, 0, 0, 1, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(
            decode(&named.key, &bytes).as_deref(),
            Some("10.0.0.1 . tcp . 8080")
        );
        assert_eq!(codec(false, "type ipv4_addr; flags interval"), None);
        let endpoints = codec(
            true,
            "typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport",
        )
        .unwrap();
        assert_eq!(endpoints.key.len(), 4);
        assert_eq!(endpoints.value, Value::Data(vec![Part::V4, Part::Service]));
        let key = encode(&endpoints.key, "10.96.0.1 . udp . 53 . 3").unwrap();
        assert_eq!(
            decode(&endpoints.key, &key).as_deref(),
            Some("10.96.0.1 . udp . 53 . 3")
        );
        assert_eq!(
            codec(true, "type ipv4_addr : verdict").unwrap().value,
            Value::Verdict
        );
    }

    #[test]
    fn the_kernels_types_give_the_declarations_layout() {
        // ipv4_addr . inet_proto . inet_service . integer (numgen), 16 bytes.
        let kind = (((TYPE_IPADDR << 6 | TYPE_INET_PROTOCOL) << 6) | TYPE_INET_SERVICE) << 6
            | TYPE_INTEGER;
        let kernel = Codec::of_kernel(
            NFT_SET_MAP,
            (kind, 16),
            Some((TYPE_IPADDR << 6 | TYPE_INET_SERVICE, 8)),
        );
        let declared = codec(
            true,
            "typeof ip daddr . meta l4proto . th dport . numgen random mod 4 : ip daddr . th dport",
        )
        .unwrap();
        assert_eq!(kernel, declared);
        assert_eq!(Part::of_kernel(TYPE_IP6ADDR, 16), [Part::V6]);
        let objects = Codec::of_kernel(NFT_SET_OBJECT, (TYPE_IPADDR, 4), None);
        assert_eq!(objects.value, Value::Counter);
        let verdicts = Codec::of_kernel(NFT_SET_MAP, (TYPE_IPADDR, 4), Some((NFT_DATA_VERDICT, 0)));
        assert_eq!(verdicts.value, Value::Verdict);
    }

    #[test]
    fn verdicts_both_ways() {
        for text in [
            "jump ingress/x/p",
            "goto endpoints-3",
            "continue",
            "accept",
            "drop",
        ] {
            let (code, chain) = encode_verdict(text).unwrap();
            assert_eq!(
                decode_verdict(code, chain.map(String::from)).as_deref(),
                Some(text)
            );
        }
        assert!(encode_verdict("queue").is_none());
    }
}

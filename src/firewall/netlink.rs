//! Set element changes sent straight to nf_tables over netlink: one batch (one atomic
//! transaction) per change, without starting `nft` or letting it read the table's
//! cache first, which is what makes a pod change cost milliseconds. Only element adds
//! and deletes of the set types the firewall changes per pod go this way (addresses,
//! address . protocol . port, verdict maps, counter maps); everything else goes
//! through the `nft` CLI.
//!
//! A [`Session`] keeps its socket open between transactions, and that matters for
//! deletes: the kernel frees deleted elements after an RCU grace period, in the
//! background, but closing an nf_tables socket waits for that (and holds the commit
//! lock meanwhile): 8–24 ms on a HZ=250 kernel, for any transaction that deleted
//! something. The commit itself, after which no packet matches a deleted element any
//! more, takes microseconds.

use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::model::{Family, SetKind, TABLE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_OBJREF: u16 = 9;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_CONTINUE: i32 = -1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("element `{element}` of set {set} cannot be sent over netlink")]
    Unsupported { set: String, element: String },
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("nf_tables rejected the update of set {set}: {source}")]
    Rejected { set: String, source: std::io::Error },
}

/// Adds or deletes elements of one set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementBatch {
    pub set: String,
    pub kind: SetKind,
    pub delete: bool,
    /// (key, value) in the model's nft syntax; the value is empty for plain sets.
    pub elements: Vec<(String, String)>,
}

impl ElementBatch {
    /// Whether every element can be encoded here.
    pub fn supported(&self) -> bool {
        self.encode().is_ok()
    }

    /// The NEWSETELEM/DELSETELEM message payload (after the netlink header).
    fn encode(&self) -> Result<Vec<u8>, NetlinkError> {
        let unsupported = |element: &str| NetlinkError::Unsupported {
            set: self.set.clone(),
            element: element.to_string(),
        };
        let mut payload = vec![NFPROTO_INET, 0, 0, 0];
        attr_str(&mut payload, NFTA_SET_ELEM_LIST_TABLE, TABLE);
        attr_str(&mut payload, NFTA_SET_ELEM_LIST_SET, &self.set);
        let mut list = Vec::new();
        for (key, value) in &self.elements {
            let mut element = Vec::new();
            let key_bytes = encode_key(self.kind, key).ok_or_else(|| unsupported(key))?;
            let mut key_attr = Vec::new();
            attr(&mut key_attr, NFTA_DATA_VALUE, &key_bytes);
            attr(&mut element, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &key_attr);
            if !self.delete {
                match self.kind {
                    SetKind::Dispatch(_) => {
                        let verdict = encode_verdict(value).ok_or_else(|| unsupported(value))?;
                        let mut data = Vec::new();
                        attr(&mut data, NFTA_DATA_VERDICT | NLA_F_NESTED, &verdict);
                        attr(&mut element, NFTA_SET_ELEM_DATA | NLA_F_NESTED, &data);
                    }
                    SetKind::CounterMap(_) => {
                        let name = value
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .ok_or_else(|| unsupported(value))?;
                        attr_str(&mut element, NFTA_SET_ELEM_OBJREF, name);
                    }
                    _ => {}
                }
            }
            attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &element);
        }
        attr(
            &mut payload,
            NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
            &list,
        );
        Ok(payload)
    }
}

fn encode_key(kind: SetKind, key: &str) -> Option<Vec<u8>> {
    let address = |text: &str, family: Family| -> Option<Vec<u8>> {
        match (text.parse::<IpAddr>().ok()?, family) {
            (IpAddr::V4(ip), Family::V4) => Some(ip.octets().to_vec()),
            (IpAddr::V6(ip), Family::V6) => Some(ip.octets().to_vec()),
            _ => None,
        }
    };
    match kind {
        SetKind::Addr(f) | SetKind::Dispatch(f) | SetKind::CounterMap(f) => address(key, f),
        SetKind::NamedPort(f) => {
            // Each part of a concatenation fills whole 32-bit registers.
            let mut parts = key.split(" . ");
            let mut bytes = address(parts.next()?, f)?;
            let protocol: u8 = match parts.next()? {
                "tcp" => 6,
                "udp" => 17,
                "sctp" => 132,
                _ => return None,
            };
            bytes.extend_from_slice(&[protocol, 0, 0, 0]);
            let port: u16 = parts.next()?.parse().ok()?;
            bytes.extend_from_slice(&port.to_be_bytes());
            bytes.extend_from_slice(&[0, 0]);
            parts.next().is_none().then_some(bytes)
        }
        SetKind::Interval(_) => None,
    }
}

fn encode_verdict(value: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (code, chain) = match value.split_once(' ') {
        Some(("jump", chain)) => (NFT_JUMP, Some(chain)),
        Some(("goto", chain)) => (NFT_GOTO, Some(chain)),
        None if value == "continue" => (NFT_CONTINUE, None),
        None if value == "accept" => (NF_ACCEPT, None),
        None if value == "drop" => (NF_DROP, None),
        _ => return None,
    };
    attr(&mut out, NFTA_VERDICT_CODE, &code.to_be_bytes());
    if let Some(chain) = chain {
        attr_str(&mut out, NFTA_VERDICT_CHAIN, chain);
    }
    Some(out)
}

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn attr_str(out: &mut Vec<u8>, kind: u16, text: &str) {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    attr(out, kind, &bytes);
}

fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, payload: &[u8]) {
    let len = u32::try_from(16 + payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The whole batch (begin, one message per set, end) as one buffer; messages are
/// numbered from `first_seq`.
fn batch(batches: &[ElementBatch], first_seq: u32) -> Result<Vec<u8>, NetlinkError> {
    let mut out = Vec::new();
    let begin = [
        0u8,
        0,
        NFNL_SUBSYS_NFTABLES.to_be_bytes()[0],
        NFNL_SUBSYS_NFTABLES.to_be_bytes()[1],
    ];
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first_seq,
        &begin,
    );
    let mut seq = first_seq;
    for batch in batches {
        let (kind, flags) = if batch.delete {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        } else {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
        };
        seq = seq.wrapping_add(1);
        message(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            seq,
            &batch.encode()?,
        );
    }
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq.wrapping_add(1),
        &begin,
    );
    Ok(out)
}

/// Applies the batches in one nf_tables transaction from a socket opened for just
/// this, in the network namespace at `netns` (a path like `/run/netns/NAME`) or the
/// current one. Returns only when the socket is closed again: see [`Session`].
pub fn apply(netns: Option<&str>, batches: &[ElementBatch]) -> Result<(), NetlinkError> {
    Session::new(netns).apply(batches)
}

/// A netlink socket to nf_tables in one network namespace, opened on first use and
/// kept open, so that a transaction costs no more than its commit. A socket that
/// failed is closed and the next transaction opens a new one.
#[derive(Debug)]
pub struct Session {
    /// The network namespace file (`/run/netns/NAME`); `None`: the current one.
    netns: Option<String>,
    socket: Option<Socket>,
    /// The sequence number of the next message.
    seq: u32,
}

impl Session {
    pub fn new(netns: Option<&str>) -> Self {
        Self {
            netns: netns.map(String::from),
            socket: None,
            seq: 1,
        }
    }

    /// Applies the batches in one nf_tables transaction: when this returns `Ok`, the
    /// kernel has committed all of them (packets see the new elements and no longer
    /// see the deleted ones); on error, none.
    pub fn apply(&mut self, batches: &[ElementBatch]) -> Result<(), NetlinkError> {
        if batches.is_empty() {
            return Ok(());
        }
        let first_seq = self.seq;
        let messages = u32::try_from(batches.len() + 2).unwrap_or(u32::MAX);
        self.seq = self.seq.wrapping_add(messages);
        let buffer = batch(batches, first_seq)?;
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => open(self.netns.as_deref())?,
        };
        send(&socket, &buffer, batches, first_seq)?;
        self.socket = Some(socket);
        Ok(())
    }
}

/// A socket to nf_tables in the network namespace at `netns` (entered from a thread
/// of its own, so the caller's thread stays where it is) or the current one.
fn open(netns: Option<&str>) -> Result<Socket, NetlinkError> {
    let open_here = || -> Result<Socket, NetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        set_receive_timeout(&socket)?;
        Ok(socket)
    };
    match netns {
        None => open_here(),
        Some(path) => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(path)?;
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    open_here()
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("netlink thread panicked").into()))
        }),
    }
}

/// Sends one batch numbered from `first_seq` and waits for the acknowledgement of
/// each of its element messages; messages with other numbers are not this batch's.
fn send(
    socket: &Socket,
    buffer: &[u8],
    batches: &[ElementBatch],
    first_seq: u32,
) -> Result<(), NetlinkError> {
    socket.send(buffer, 0)?;
    let mut acked = 0;
    let mut receive = vec![0u8; 65536];
    while acked < batches.len() {
        receive.clear();
        let len = socket.recv(&mut receive, 0)?;
        let mut offset = 0;
        while offset + 16 <= len {
            let word = |at: usize| {
                u32::from_ne_bytes([
                    receive[at],
                    receive[at + 1],
                    receive[at + 2],
                    receive[at + 3],
                ])
            };
            let msg_len = word(offset) as usize;
            let kind = u16::from_ne_bytes([receive[offset + 4], receive[offset + 5]]);
            // This batch is numbered first_seq (begin) ..= first_seq + len + 1 (end).
            let position = word(offset + 8).wrapping_sub(first_seq) as usize;
            if kind == NLMSG_ERROR && offset + 20 <= len && position <= batches.len() + 1 {
                let code = i32::from_ne_bytes([
                    receive[offset + 16],
                    receive[offset + 17],
                    receive[offset + 18],
                    receive[offset + 19],
                ]);
                let batch = position.checked_sub(1).and_then(|i| batches.get(i));
                if code != 0 {
                    return Err(NetlinkError::Rejected {
                        set: batch.map_or_else(|| "?".to_string(), |b| b.set.clone()),
                        source: std::io::Error::from_raw_os_error(-code),
                    });
                }
                if batch.is_some() {
                    acked += 1;
                }
            }
            if msg_len < 16 {
                break;
            }
            offset += (msg_len + 3) & !3;
        }
    }
    Ok(())
}

fn set_receive_timeout(socket: &Socket) -> Result<(), NetlinkError> {
    use std::os::fd::AsRawFd;
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads `size_of::<timeval>()` bytes from a valid timeval.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(16),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fill_registers() {
        assert_eq!(
            encode_key(SetKind::Addr(Family::V4), "10.0.0.1"),
            Some(vec![10, 0, 0, 1])
        );
        assert_eq!(encode_key(SetKind::Addr(Family::V6), "10.0.0.1"), None);
        assert_eq!(
            encode_key(SetKind::NamedPort(Family::V4), "10.0.0.1 . tcp . 8080"),
            Some(vec![10, 0, 0, 1, 6, 0, 0, 0, 0x1f, 0x90, 0, 0])
        );
        assert_eq!(
            encode_key(SetKind::Interval(Family::V4), "10.0.0.0-10.0.0.9"),
            None
        );
        assert!(encode_verdict("jump ingress/x/p").is_some());
        assert!(encode_verdict("continue").is_some());
        assert!(encode_verdict("queue").is_none());
    }
}

//! Set element changes sent straight to nf_tables over netlink: one batch (one atomic
//! transaction) per change, without starting `nft` or letting it read the table's
//! cache first, which is what makes a pod change cost milliseconds. Elements whose
//! types [`Codec`] can encode from the set's declaration go this way (addresses,
//! protocols, ports, marks and numbers, their concatenations, as keys or values;
//! verdicts; counter names); interval sets and anything else go through the `nft` CLI.
//! The same socket asks for the ruleset generation, which every commit in the network
//! namespace increments: the cheap half of the drift check.
//!
//! A [`Session`] keeps its socket open between transactions, and that matters for
//! deletes: the kernel frees deleted elements after an RCU grace period, in the
//! background, but closing an nf_tables socket waits for that (and holds the commit
//! lock meanwhile): 8–24 ms on a HZ=250 kernel, for any transaction that deleted
//! something. The commit itself, after which no packet matches a deleted element any
//! more, takes microseconds.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

pub use super::codec::Codec;
use super::codec::{self, Value};

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
/// nf_tables message types (`enum nf_tables_msg_types`).
pub(super) const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_GETTABLE: u16 = 1;
pub(super) const NFT_MSG_DELTABLE: u16 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_GETCHAIN: u16 = 4;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFT_MSG_NEWSET: u16 = 9;
pub(super) const NFT_MSG_GETSET: u16 = 10;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
pub(super) const NFT_MSG_NEWOBJ: u16 = 18;
pub(super) const NFT_MSG_GETOBJ: u16 = 19;
const NFTA_GEN_ID: u16 = 1;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_DUMP: u16 = 0x300;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
pub(super) const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSGERR_ATTR_MSG: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_SET_ELEM_OBJREF: u16 = 9;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("element `{element}` of set {set} cannot be sent over netlink")]
    Unsupported { set: String, element: String },
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("nf_tables rejected {what}: {source}")]
    Rejected {
        what: String,
        source: std::io::Error,
    },
}

/// Adds or deletes elements of one set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementBatch {
    /// `inet`, `ip`, `ip6`.
    pub family: String,
    pub table: String,
    pub set: String,
    pub codec: Codec,
    pub delete: bool,
    /// (key, value) in nft syntax; the value is empty for plain sets.
    pub elements: Vec<(String, String)>,
}

impl ElementBatch {
    /// Whether its set is a map.
    pub fn is_map(&self) -> bool {
        self.codec.value != Value::None
    }

    /// Whether every element can be encoded here.
    pub fn supported(&self) -> bool {
        self.elements
            .iter()
            .all(|(key, value)| self.element(key, value).is_some())
    }

    /// The NEWSETELEM/DELSETELEM messages, each list under the 64 KiB a netlink
    /// attribute can hold.
    pub(super) fn messages(&self) -> Result<Vec<Message>, NetlinkError> {
        self.messages_of(&self.elements)
    }

    /// [`Self::messages`] for `elements` in place of the batch's own (which a
    /// caller holding them elsewhere need not copy in).
    pub(super) fn messages_of(
        &self,
        elements: &[(String, String)],
    ) -> Result<Vec<Message>, NetlinkError> {
        let unsupported = |element: &str| NetlinkError::Unsupported {
            set: self.set.clone(),
            element: element.to_string(),
        };
        let family = family_number(&self.family).map_err(|_| unsupported(&self.family))?;
        let mut head = vec![family, 0, 0, 0];
        attr_str(&mut head, NFTA_SET_ELEM_LIST_TABLE, &self.table);
        attr_str(&mut head, NFTA_SET_ELEM_LIST_SET, &self.set);
        let (kind, flags) = if self.delete {
            (NFT_MSG_DELSETELEM, 0)
        } else {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
        };
        let mut out = Vec::new();
        let mut list = Vec::new();
        let flush = |list: &mut Vec<u8>, out: &mut Vec<Message>| {
            let mut payload = head.clone();
            attr(
                &mut payload,
                NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
                list,
            );
            out.push(Message {
                kind,
                flags,
                payload,
                what: format!("the elements of set {}", self.set),
            });
            list.clear();
        };
        for (key, value) in elements {
            let element = self
                .element(key, value)
                .ok_or_else(|| unsupported(&format!("{key} : {value}")))?;
            if !list.is_empty() && list.len() + element.len() + 4 > MAX_LIST {
                flush(&mut list, &mut out);
            }
            attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &element);
        }
        if !list.is_empty() || out.is_empty() {
            flush(&mut list, &mut out);
        }
        Ok(out)
    }

    /// One element's attributes (the value left out of a delete).
    fn element(&self, key: &str, value: &str) -> Option<Vec<u8>> {
        let mut element = Vec::new();
        let key_bytes = codec::encode(&self.codec.key, key)?;
        let mut key_attr = Vec::new();
        attr(&mut key_attr, NFTA_DATA_VALUE, &key_bytes);
        attr(&mut element, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &key_attr);
        if self.delete {
            return Some(element);
        }
        match &self.codec.value {
            Value::Verdict => {
                let verdict = encode_verdict(value)?;
                let mut data = Vec::new();
                attr(&mut data, NFTA_DATA_VERDICT | NLA_F_NESTED, &verdict);
                attr(&mut element, NFTA_SET_ELEM_DATA | NLA_F_NESTED, &data);
            }
            Value::Counter => {
                let name = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'))?;
                attr_str(&mut element, NFTA_SET_ELEM_OBJREF, name);
            }
            Value::Data(parts) => {
                let bytes = codec::encode(parts, value)?;
                let mut data = Vec::new();
                attr(&mut data, NFTA_DATA_VALUE, &bytes);
                attr(&mut element, NFTA_SET_ELEM_DATA | NLA_F_NESTED, &data);
            }
            Value::None => {}
        }
        Some(element)
    }
}

/// The most bytes of elements one message carries: a netlink attribute's length is
/// 16 bits.
const MAX_LIST: usize = 60_000;

/// The nfgenmsg family number of `inet`, `ip`, `ip6`.
pub(super) fn family_number(family: &str) -> Result<u8, NetlinkError> {
    match family {
        "inet" => Ok(1),
        "ip" => Ok(2),
        "ip6" => Ok(10),
        other => Err(NetlinkError::Unsupported {
            set: String::new(),
            element: format!("family {other}"),
        }),
    }
}

/// One message of an nf_tables batch.
#[derive(Clone, Debug)]
pub(super) struct Message {
    /// `NFT_MSG_*`.
    pub kind: u16,
    /// Flags besides request and ack: `NLM_F_CREATE`, `NLM_F_APPEND`.
    pub flags: u16,
    /// The nfgenmsg header and the attributes.
    pub payload: Vec<u8>,
    /// What it changes, for an error.
    pub what: String,
}

/// A verdict's attributes (`NFTA_VERDICT_*`).
fn encode_verdict(text: &str) -> Option<Vec<u8>> {
    let (code, chain) = codec::encode_verdict(text)?;
    let mut out = Vec::new();
    attr(&mut out, NFTA_VERDICT_CODE, &code.to_be_bytes());
    if let Some(chain) = chain {
        attr_str(&mut out, NFTA_VERDICT_CHAIN, chain);
    }
    Some(out)
}

pub(super) fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

pub(super) fn attr_str(out: &mut Vec<u8>, kind: u16, text: &str) {
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

/// The whole batch (begin, the messages, end) as one buffer; messages are numbered
/// from `first_seq`.
fn batch(messages: &[Message], first_seq: u32) -> Vec<u8> {
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
    for (i, m) in messages.iter().enumerate() {
        seq = seq.wrapping_add(1);
        // The kernel answers every failed message, but only acknowledges those that
        // ask: the last one's acknowledgement says the whole batch is through
        // (thousands of acknowledgements would overrun the socket's buffer).
        let ack = if i + 1 == messages.len() {
            NLM_F_ACK
        } else {
            0
        };
        message(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | m.kind,
            NLM_F_REQUEST | ack | m.flags,
            seq,
            &m.payload,
        );
    }
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq.wrapping_add(1),
        &begin,
    );
    out
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
        let mut messages = Vec::new();
        for batch in batches {
            messages.extend(batch.messages()?);
        }
        self.commit(&messages)
    }

    /// Sends `messages` as one nf_tables transaction: all of them are committed when
    /// this returns `Ok`, none on error.
    pub(super) fn commit(&mut self, messages: &[Message]) -> Result<(), NetlinkError> {
        if messages.is_empty() {
            return Ok(());
        }
        let first_seq = self.seq;
        let count = u32::try_from(messages.len() + 2).unwrap_or(u32::MAX);
        self.seq = self.seq.wrapping_add(count);
        let buffer = batch(messages, first_seq);
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => open(self.netns.as_deref())?,
        };
        // The kernel takes a batch in one send of at most the socket's send buffer.
        if buffer.len() > DEFAULT_SEND_BUFFER {
            set_send_buffer(&socket, buffer.len())?;
        }
        send(&socket, &buffer, messages, first_seq)?;
        self.socket = Some(socket);
        Ok(())
    }
}

/// What a batch fits in without raising the socket's send buffer (the kernel's
/// default is 212,992 bytes, less its overhead).
const DEFAULT_SEND_BUFFER: usize = 150_000;

impl Session {
    /// Sends one request and hands each reply message of it (type, body after the
    /// netlink header) to `reply` until that returns a result.
    pub(super) fn request<T>(
        &mut self,
        kind: u16,
        flags: u16,
        payload: &[u8],
        mut reply: impl FnMut(u16, &[u8]) -> Option<Result<T, NetlinkError>>,
    ) -> Result<T, NetlinkError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut buffer = Vec::new();
        message(
            &mut buffer,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | flags,
            seq,
            payload,
        );
        let socket = match self.socket.take() {
            Some(socket) => socket,
            None => open(self.netns.as_deref())?,
        };
        socket.send(&buffer, 0)?;
        let mut receive = vec![0u8; 65536];
        loop {
            receive.clear();
            let len = socket.recv(&mut receive, 0)?;
            let data = &receive[..len.min(receive.len())];
            let mut offset = 0;
            while offset + 16 <= data.len() {
                let word = |at: usize| {
                    u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
                };
                let msg_len = word(offset) as usize;
                let kind = u16::from_ne_bytes([data[offset + 4], data[offset + 5]]);
                let msg_seq = word(offset + 8);
                if msg_len < 16 || offset + msg_len > data.len() {
                    break;
                }
                let body = &data[offset + 16..offset + msg_len];
                offset += (msg_len + 3) & !3;
                if msg_seq != seq {
                    continue;
                }
                if let Some(result) = reply(kind, body) {
                    // A socket whose reply was read to the end can be used again.
                    self.socket = Some(socket);
                    return result;
                }
            }
        }
    }

    /// The ruleset generation of the network namespace: every commit (ours or
    /// anyone's) increments it.
    pub fn generation(&mut self) -> Result<u32, NetlinkError> {
        self.request(NFT_MSG_GETGEN, 0, &[0, 0, 0, 0], |kind, body| {
            if kind == NLMSG_ERROR {
                return Some(Err(error_of(body)));
            }
            if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
                return None;
            }
            // nfgenmsg (4), then NFTA_GEN_ID (a u32, network byte order).
            let id = attributes(body.get(4..)?)
                .into_iter()
                .find(|(k, _)| *k == NFTA_GEN_ID)?
                .1;
            let id: [u8; 4] = id.get(..4)?.try_into().ok()?;
            Some(Ok(u32::from_be_bytes(id)))
        })
    }

    /// The packet counts of `table`'s named counters (a dump of its counter objects:
    /// no rules, no sets, unlike `nft list counters`, which reads the whole table).
    pub fn counters(
        &mut self,
        family: &str,
        table: &str,
    ) -> Result<std::collections::BTreeMap<String, u64>, NetlinkError> {
        let mut payload = vec![family_number(family)?, 0, 0, 0];
        attr_str(&mut payload, NFTA_OBJ_TABLE, table);
        attr(
            &mut payload,
            NFTA_OBJ_TYPE,
            &NFT_OBJECT_COUNTER.to_be_bytes(),
        );
        let mut out = std::collections::BTreeMap::new();
        self.request(
            NFT_MSG_GETOBJ,
            NLM_F_DUMP,
            &payload,
            |kind, body| match kind {
                NLMSG_DONE => Some(Ok(())),
                NLMSG_ERROR => match error_of_code(body) {
                    // No such table: no counters.
                    0 => Some(Ok(())),
                    code if code == -libc::ENOENT => Some(Ok(())),
                    _ => Some(Err(error_of(body))),
                },
                k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ => {
                    if let Some((name, packets)) = counter_object(body.get(4..).unwrap_or(&[])) {
                        out.insert(name, packets);
                    }
                    None
                }
                _ => None,
            },
        )?;
        Ok(out)
    }
}

/// The error code of an NLMSG_ERROR body (0: an acknowledgement).
pub(super) fn error_of_code(body: &[u8]) -> i32 {
    body.get(..4)
        .map_or(-libc::EIO, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

pub(super) fn error_of(body: &[u8]) -> NetlinkError {
    std::io::Error::from_raw_os_error(-error_of_code(body)).into()
}

/// The attributes in `data`: (type without flags, payload).
pub(super) fn attributes(data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 4 <= data.len() {
        let len = u16::from_ne_bytes([data[offset], data[offset + 1]]) as usize;
        let kind = u16::from_ne_bytes([data[offset + 2], data[offset + 3]]) & 0x3fff;
        if len < 4 || offset + len > data.len() {
            break;
        }
        out.push((kind, &data[offset + 4..offset + len]));
        offset += (len + 3) & !3;
    }
    out
}

/// A counter object's name and packets from its NEWOBJ attributes.
fn counter_object(data: &[u8]) -> Option<(String, u64)> {
    let attrs = attributes(data);
    let name = attrs.iter().find(|(k, _)| *k == NFTA_OBJ_NAME)?.1;
    let name = String::from_utf8_lossy(name.split(|b| *b == 0).next()?).into_owned();
    let counter = attrs.iter().find(|(k, _)| *k == NFTA_OBJ_DATA)?.1;
    let packets = attributes(counter)
        .into_iter()
        .find(|(k, _)| *k == NFTA_COUNTER_PACKETS)?
        .1;
    let packets: [u8; 8] = packets.get(..8)?.try_into().ok()?;
    Some((name, u64::from_be_bytes(packets)))
}

/// The network namespace's cookie (`SO_NETNS_COOKIE`): unlike its inode number,
/// never reused by a later namespace. `None` where the kernel has none (before 5.14).
pub fn netns_cookie(netns: Option<&str>) -> Option<u64> {
    use std::os::fd::AsRawFd;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = open(netns).ok()?;
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u64>()).ok()?;
    // SAFETY: getsockopt writes at most `len` bytes into the u64 it is given.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    (result == 0).then_some(cookie)
}

/// A socket to nf_tables in the network namespace at `netns` (entered from a thread
/// of its own, so the caller's thread stays where it is) or the current one.
fn open(netns: Option<&str>) -> Result<Socket, NetlinkError> {
    let open_here = || -> Result<Socket, NetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        set_receive_timeout(&socket)?;
        // Errors without a copy of the request (a batch's can be large), with the
        // kernel's reason; best effort (older kernels lack the second).
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
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
/// its last message (or the first error); messages with other numbers are not
/// this batch's.
fn send(
    socket: &Socket,
    buffer: &[u8],
    messages: &[Message],
    first_seq: u32,
) -> Result<(), NetlinkError> {
    socket.send(buffer, 0)?;
    let mut done = false;
    let mut receive = vec![0u8; 65536];
    while !done {
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
            if kind == NLMSG_ERROR && offset + 20 <= len && position <= messages.len() + 1 {
                let code = i32::from_ne_bytes([
                    receive[offset + 16],
                    receive[offset + 17],
                    receive[offset + 18],
                    receive[offset + 19],
                ]);
                let message = position.checked_sub(1).and_then(|i| messages.get(i));
                if code != 0 {
                    let what = message.map_or_else(|| "a batch".to_string(), |m| m.what.clone());
                    // With NETLINK_CAP_ACK and NETLINK_EXT_ACK: the request's header,
                    // then the kernel's explanation, if it gave one.
                    let tlvs = receive.get(offset + 36..(offset + msg_len).min(len));
                    let reason = tlvs
                        .and_then(|t| {
                            attributes(t)
                                .into_iter()
                                .find(|(k, _)| *k == NLMSGERR_ATTR_MSG)
                        })
                        .map(|(_, text)| {
                            String::from_utf8_lossy(
                                text.split(|b| *b == 0).next().unwrap_or_default(),
                            )
                            .into_owned()
                        });
                    return Err(NetlinkError::Rejected {
                        what: match reason {
                            Some(reason) => format!("{what} ({reason})"),
                            None => what,
                        },
                        source: std::io::Error::from_raw_os_error(-code),
                    });
                }
                if position == messages.len() {
                    done = true;
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

/// Raises the socket's send buffer to `bytes` (`SO_SNDBUFFORCE`: past the
/// system's limit, as root may).
fn set_send_buffer(socket: &Socket, bytes: usize) -> Result<(), NetlinkError> {
    let size = libc::c_int::try_from(bytes + 4096).unwrap_or(libc::c_int::MAX);
    set_option(socket, libc::SO_SNDBUFFORCE, &size)
}

fn set_receive_timeout(socket: &Socket) -> Result<(), NetlinkError> {
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    set_option(socket, libc::SO_RCVTIMEO, &timeout)
}

/// Sets the `SOL_SOCKET` option `name` to `value`.
fn set_option<T>(socket: &Socket, name: libc::c_int, value: &T) -> Result<(), NetlinkError> {
    use std::os::fd::AsRawFd;
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: setsockopt reads `size_of::<T>()` bytes from a valid, live `T`.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            len,
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
    use crate::nft::model::Set;

    #[test]
    fn a_large_batch_is_split_under_the_attribute_limit() {
        let set = Set::new(true, "type ipv4_addr : verdict", None);
        let batch = ElementBatch {
            family: "inet".into(),
            table: "t".into(),
            set: "m".into(),
            codec: Codec::of(&set).unwrap(),
            delete: false,
            elements: (0..5000)
                .map(|i| {
                    (
                        format!("10.1.{}.{}", i / 250, i % 250),
                        "jump chain-a".into(),
                    )
                })
                .collect(),
        };
        let messages = batch.messages().unwrap();
        assert!(messages.len() > 1);
        assert!(messages.iter().all(|m| m.payload.len() < 65_535));
        let unsupported = ElementBatch {
            elements: vec![("10.0.0.1".into(), "queue".into())],
            ..batch
        };
        assert!(!unsupported.supported());
        assert!(encode_verdict("jump ingress/x/p").is_some());
    }
}

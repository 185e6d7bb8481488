//! Reads one table back from nf_tables over netlink (chain, rule, set and element
//! dumps on the kept-open [`Session`] socket) into the same model [`super::read`]
//! builds from `nft -j`: no `nft` process, no JSON, and no rendering of rules back to
//! text, which is most of what a 230,000-element listing costs.
//!
//! Elements are decoded with the types the kernel keeps for each set (key and data
//! type ids, lengths, flags) into the syntax the controllers write: addresses,
//! protocol names, ports and numbers, their concatenations, intervals in
//! [`canonical`] form, verdicts and counter names. Rules are kept as the fingerprint
//! in their comment plus a digest of their expressions (stateful parts such as
//! counters left out), so that a rule someone edited but whose comment they kept is
//! told apart from ours: see [`RuleDigests`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::codec::{self, Codec, Value};
use super::model::{Chain, Counter, Elements, Hook, Rule, Set, Table, canonical, comment_id};
use super::netlink::{
    NFNL_SUBSYS_NFTABLES, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETSETELEM,
    NFT_MSG_GETTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_LIST_ELEM, NFTA_SET_ELEM_DATA,
    NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_OBJREF, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
    NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR, NetlinkError, Session, attr_str, attributes, error_of,
    error_of_code, family_number,
};
use super::read::Observed;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_KEY_END: u16 = 10;

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_OBJECT: u32 = 0x40;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

/// libnftnl's user data tags: a rule's comment, a set's comment.
const UDATA_RULE_COMMENT: u8 = 0;
const UDATA_SET_COMMENT: u8 = 7;

/// A rule as dumped: its chain, the fingerprint its comment carries, its handle and
/// a digest of its expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedRule {
    pub chain: String,
    pub id: Option<u32>,
    pub handle: u64,
    pub digest: u64,
}

/// A table as dumped, before [`RuleDigests`] decides which rules are ours.
#[derive(Clone, Debug, Default)]
pub struct Dumped {
    /// Chains without their rules.
    pub chains: BTreeMap<String, Option<Hook>>,
    pub rules: Vec<DumpedRule>,
    pub sets: BTreeMap<String, Set>,
    pub packets: BTreeMap<String, u64>,
}

/// The expression digest of each of our rules (chain, fingerprint) as we wrote it,
/// learned from a dump right after each write of rules (and, for a table found at
/// start, from the first read: a restarted agent trusts the comments it finds). A
/// rule whose comment carries our fingerprint but whose expressions differ from
/// what we wrote is not ours: the drift check replaces it.
#[derive(Clone, Debug, Default)]
pub struct RuleDigests(HashMap<(String, u32), u64>);

impl RuleDigests {
    /// Learns every rule of `rules` as ours (after our own write).
    pub fn learn(&mut self, rules: &[DumpedRule]) {
        self.0.clear();
        for rule in rules {
            if let Some(id) = rule.id {
                self.0.insert((rule.chain.clone(), id), rule.digest);
            }
        }
    }

    /// The table `dumped` holds, each rule ours only if its digest is the one we
    /// learned for its fingerprint (or none was learned yet: then it is learned now).
    pub fn observed(&mut self, dumped: Dumped) -> Observed {
        let mut chains: BTreeMap<String, Chain> = dumped
            .chains
            .into_iter()
            .map(|(name, hook)| {
                (
                    name,
                    Chain {
                        hook,
                        rules: Vec::new(),
                    },
                )
            })
            .collect();
        for rule in dumped.rules {
            let id = rule.id.filter(|id| {
                let known = self
                    .0
                    .entry((rule.chain.clone(), *id))
                    .or_insert(rule.digest);
                *known == rule.digest
            });
            chains
                .entry(rule.chain)
                .or_default()
                .rules
                .push(Rule::observed(id, rule.handle));
        }
        let mut table = Table::default();
        for (name, chain) in chains {
            table.chains.insert(name, Arc::new(chain));
        }
        for (name, set) in dumped.sets {
            table.sets.insert(name, Arc::new(set));
        }
        for name in dumped.packets.keys() {
            table.counters.insert(name.clone(), Arc::new(Counter));
        }
        Observed {
            table,
            packets: dumped.packets,
        }
    }
}

fn string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

fn be_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn find<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

/// The comment in libnftnl user data (tag, length, value records).
fn udata_comment(data: &[u8], tag: u8) -> Option<String> {
    let mut at = 0;
    while at + 2 <= data.len() {
        let (kind, len) = (data[at], usize::from(data[at + 1]));
        let value = data.get(at + 2..at + 2 + len)?;
        if kind == tag {
            return Some(string(value));
        }
        at += 2 + len;
    }
    None
}

impl Session {
    /// Runs one dump of `kind` (a GET message with `NLM_F_DUMP`), handing each
    /// `reply_kind` message's attributes (after the nfgenmsg header) to `each`.
    fn dump(
        &mut self,
        kind: u16,
        payload: &[u8],
        reply_kind: u16,
        mut each: impl FnMut(&[(u16, &[u8])]),
    ) -> Result<(), NetlinkError> {
        self.dump_bodies(kind, payload, reply_kind, |body| {
            each(&attributes(body.get(4..).unwrap_or_default()));
        })
    }

    /// Runs one dump of `kind`, handing each `reply_kind` message's body (the
    /// nfgenmsg header and the attributes) to `each`.
    pub(super) fn dump_bodies(
        &mut self,
        kind: u16,
        payload: &[u8],
        reply_kind: u16,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), NetlinkError> {
        let reply_kind = (NFNL_SUBSYS_NFTABLES << 8) | reply_kind;
        self.request(kind, NLM_F_DUMP, payload, |kind, body| match kind {
            NLMSG_DONE => Some(Ok(())),
            NLMSG_ERROR => match error_of_code(body) {
                0 => Some(Ok(())),
                _ => Some(Err(error_of(body))),
            },
            k if k == reply_kind => {
                each(body);
                None
            }
            _ => None,
        })
    }

    /// Whether `family table` exists.
    pub(super) fn table_exists(&mut self, family: u8, table: &str) -> Result<bool, NetlinkError> {
        let mut payload = vec![family, 0, 0, 0];
        attr_str(&mut payload, NFTA_TABLE_NAME, table);
        let reply = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE;
        self.request(NFT_MSG_GETTABLE, 0, &payload, |kind, body| match kind {
            NLMSG_ERROR => match error_of_code(body) {
                0 => None,
                code if code == -libc::ENOENT => Some(Ok(false)),
                _ => Some(Err(error_of(body))),
            },
            k if k == reply => Some(Ok(true)),
            _ => None,
        })
    }

    /// The rules of `family table`, in order within each chain.
    pub fn dump_rules(
        &mut self,
        family: &str,
        table: &str,
    ) -> Result<Vec<DumpedRule>, NetlinkError> {
        let family = family_number(family)?;
        let mut payload = vec![family, 0, 0, 0];
        attr_str(&mut payload, NFTA_RULE_TABLE, table);
        let mut rules = Vec::new();
        self.dump(NFT_MSG_GETRULE, &payload, NFT_MSG_NEWRULE, |attrs| {
            if find(attrs, NFTA_RULE_TABLE).map(string).as_deref() != Some(table) {
                return;
            }
            let Some(chain) = find(attrs, NFTA_RULE_CHAIN).map(string) else {
                return;
            };
            let id = find(attrs, NFTA_RULE_USERDATA)
                .and_then(|u| udata_comment(u, UDATA_RULE_COMMENT))
                .and_then(|c| comment_id(&c));
            rules.push(DumpedRule {
                chain,
                id,
                handle: find(attrs, NFTA_RULE_HANDLE).and_then(be_u64).unwrap_or(0),
                digest: expressions_digest(find(attrs, NFTA_RULE_EXPRESSIONS).unwrap_or_default()),
            });
        })?;
        Ok(rules)
    }

    /// The whole of `family table` (`None`: there is none). Dynamic sets' elements
    /// (those the packet path adds) are left out, as [`super::read`] does.
    pub fn dump_table(
        &mut self,
        family: &str,
        table: &str,
    ) -> Result<Option<Dumped>, NetlinkError> {
        let number = family_number(family)?;
        if !self.table_exists(number, table)? {
            return Ok(None);
        }
        let mut out = Dumped::default();
        let mut payload = vec![number, 0, 0, 0];
        attr_str(&mut payload, NFTA_CHAIN_TABLE, table);
        self.dump(NFT_MSG_GETCHAIN, &payload, NFT_MSG_NEWCHAIN, |attrs| {
            if find(attrs, NFTA_CHAIN_TABLE).map(string).as_deref() != Some(table) {
                return;
            }
            if let Some(name) = find(attrs, NFTA_CHAIN_NAME).map(string) {
                out.chains.insert(name, chain_hook(attrs));
            }
        })?;
        out.rules = self.dump_rules(family, table)?;
        let mut declared = Vec::new();
        let mut payload = vec![number, 0, 0, 0];
        attr_str(&mut payload, NFTA_SET_TABLE, table);
        self.dump(NFT_MSG_GETSET, &payload, NFT_MSG_NEWSET, |attrs| {
            if find(attrs, NFTA_SET_TABLE).map(string).as_deref() != Some(table) {
                return;
            }
            if let Some(layout) = Layout::of(attrs) {
                declared.push(layout);
            }
        })?;
        for layout in declared {
            let elements = if layout.dynamic() {
                Elements::default()
            } else {
                self.dump_elements(number, table, &layout)?
            };
            let map = layout.flags & (NFT_SET_MAP | NFT_SET_OBJECT) != 0;
            out.sets
                .insert(layout.name.clone(), Set::observed(map, layout.id, elements));
        }
        out.packets = self.counters(family, table)?;
        Ok(Some(out))
    }

    fn dump_elements(
        &mut self,
        family: u8,
        table: &str,
        layout: &Layout,
    ) -> Result<Elements, NetlinkError> {
        let mut payload = vec![family, 0, 0, 0];
        attr_str(&mut payload, NFTA_SET_ELEM_LIST_TABLE, table);
        attr_str(&mut payload, NFTA_SET_ELEM_LIST_SET, &layout.name);
        let mut raw: Vec<RawElement> = Vec::new();
        let mut failed = None;
        self.dump(NFT_MSG_GETSETELEM, &payload, NFT_MSG_NEWSETELEM, |attrs| {
            if find(attrs, NFTA_SET_ELEM_LIST_SET).map(string).as_deref() != Some(&layout.name) {
                return;
            }
            let Some(list) = find(attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                return;
            };
            for (kind, element) in attributes(list) {
                if kind != NFTA_LIST_ELEM {
                    continue;
                }
                match RawElement::parse(element, layout) {
                    Some(element) => raw.push(element),
                    None => failed = Some(element.len()),
                }
            }
        })?;
        if failed.is_some() {
            return Err(NetlinkError::Unsupported {
                set: layout.name.clone(),
                element: "an element it cannot decode".into(),
            });
        }
        layout
            .elements(raw)
            .ok_or_else(|| NetlinkError::Unsupported {
                set: layout.name.clone(),
                element: "an element it cannot decode".into(),
            })
    }
}

fn chain_hook(attrs: &[(u16, &[u8])]) -> Option<Hook> {
    let hook = attributes(find(attrs, NFTA_CHAIN_HOOK)?);
    let number = find(&hook, NFTA_HOOK_HOOKNUM).and_then(be_u32)?;
    let priority = find(&hook, NFTA_HOOK_PRIORITY).and_then(be_u32)?;
    let name = match number {
        0 => "prerouting",
        1 => "input",
        2 => "forward",
        3 => "output",
        4 => "postrouting",
        5 => "ingress",
        _ => "unknown",
    };
    let policy = match find(attrs, NFTA_CHAIN_POLICY).and_then(be_u32) {
        Some(0) => "drop",
        _ => "accept",
    };
    Some(Hook {
        kind: find(attrs, NFTA_CHAIN_TYPE)
            .map(string)
            .unwrap_or_else(|| "filter".into()),
        hook: name.into(),
        priority: priority as i32,
        policy: policy.into(),
    })
}

/// FNV-1a (64 bits) over each expression's name and data; stateful expressions
/// (whose data counts packets, tokens or bytes) by name only, and an anonymous
/// set's name (`__set3`: numbered as the table's history goes) as just anonymous.
fn expressions_digest(list: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (_, expr) in attributes(list) {
        let attrs = attributes(expr);
        let name = find(&attrs, NFTA_EXPR_NAME).unwrap_or_default();
        feed(name);
        let stateful = matches!(
            string(name).as_str(),
            "counter" | "limit" | "quota" | "last" | "connlimit"
        );
        if !stateful {
            for (kind, value) in attributes(find(&attrs, NFTA_EXPR_DATA).unwrap_or_default()) {
                feed(&kind.to_ne_bytes());
                let anonymous = value.starts_with(b"__set") || value.starts_with(b"__map");
                feed(if anonymous { b"__anonymous" } else { value });
            }
        }
    }
    hash
}

/// What each set's elements look like, from its NEWSET attributes.
#[derive(Clone, Debug)]
struct Layout {
    name: String,
    flags: u32,
    id: Option<u32>,
    codec: Codec,
}

impl Layout {
    fn of(attrs: &[(u16, &[u8])]) -> Option<Self> {
        let name = find(attrs, NFTA_SET_NAME).map(string)?;
        let flags = find(attrs, NFTA_SET_FLAGS).and_then(be_u32).unwrap_or(0);
        if flags & NFT_SET_ANONYMOUS != 0 {
            return None;
        }
        let id = find(attrs, NFTA_SET_USERDATA)
            .and_then(|u| udata_comment(u, UDATA_SET_COMMENT))
            .and_then(|c| comment_id(&c));
        let type_of = |kind: u16, len: u16| -> Option<(u32, usize)> {
            let kind = find(attrs, kind).and_then(be_u32)?;
            let len = find(attrs, len).and_then(be_u32).unwrap_or(0) as usize;
            Some((kind, len))
        };
        let key = type_of(NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN).unwrap_or((0, 0));
        let codec = Codec::of_kernel(flags, key, type_of(NFTA_SET_DATA_TYPE, NFTA_SET_DATA_LEN));
        Some(Self {
            name,
            flags,
            id,
            codec,
        })
    }

    fn dynamic(&self) -> bool {
        Codec::dynamic_flags(self.flags)
    }

    /// The elements in our syntax; interval starts and ends paired up.
    fn elements(&self, mut raw: Vec<RawElement>) -> Option<Elements> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(raw.len());
        let key = &self.codec.key;
        if !Codec::interval_flags(self.flags) || raw.iter().any(|e| e.key_end.is_some()) {
            for element in raw {
                let key = match &element.key_end {
                    Some(end) => canonical(&codec::decode_range(key, &element.key, end)?),
                    None => codec::decode(key, &element.key)?,
                };
                out.push((key, element.value));
            }
            return Some(out.into_iter().collect());
        }
        // Single-field intervals: a start element, then an end element holding the
        // first value after the range (none: the range runs to the top).
        raw.sort_by(|a, b| a.key.cmp(&b.key).then(b.end.cmp(&a.end)));
        let mut open: Option<RawElement> = None;
        for element in raw {
            if element.end {
                if let Some(start) = open.take() {
                    let last = decrement(&element.key)?;
                    out.push((
                        canonical(&codec::decode_range(key, &start.key, &last)?),
                        start.value,
                    ));
                }
                continue;
            }
            if let Some(start) = open.replace(element) {
                let top = vec![0xff; start.key.len()];
                out.push((
                    canonical(&codec::decode_range(key, &start.key, &top)?),
                    start.value,
                ));
            }
        }
        if let Some(start) = open {
            let top = vec![0xff; start.key.len()];
            out.push((
                canonical(&codec::decode_range(key, &start.key, &top)?),
                start.value,
            ));
        }
        Some(out.into_iter().collect())
    }
}

/// The big-endian number one less (the last value of a range whose end element
/// holds the first value after it).
fn decrement(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    for byte in out.iter_mut().rev() {
        if *byte > 0 {
            *byte -= 1;
            return Some(out);
        }
        *byte = 0xff;
    }
    None
}

/// One element as dumped.
#[derive(Clone, Debug)]
struct RawElement {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    /// An interval's end marker.
    end: bool,
    /// The value in our syntax (empty for sets).
    value: String,
}

impl RawElement {
    fn parse(data: &[u8], layout: &Layout) -> Option<Self> {
        let attrs = attributes(data);
        let value_of = |kind: u16| -> Option<Vec<u8>> {
            let nested = attributes(find(&attrs, kind)?);
            find(&nested, NFTA_DATA_VALUE).map(<[u8]>::to_vec)
        };
        let key = value_of(NFTA_SET_ELEM_KEY)?;
        let flags = find(&attrs, NFTA_SET_ELEM_FLAGS)
            .and_then(be_u32)
            .unwrap_or(0);
        let end = flags & NFT_SET_ELEM_INTERVAL_END != 0;
        let value = if end {
            String::new()
        } else if let Some(object) = find(&attrs, NFTA_SET_ELEM_OBJREF) {
            format!("\"{}\"", string(object))
        } else {
            match &layout.codec.value {
                Value::Verdict => {
                    let data = attributes(find(&attrs, NFTA_SET_ELEM_DATA)?);
                    verdict(find(&data, NFTA_DATA_VERDICT)?)?
                }
                Value::Data(parts) => codec::decode(parts, &value_of(NFTA_SET_ELEM_DATA)?)?,
                Value::None | Value::Counter => String::new(),
            }
        };
        Some(Self {
            key,
            key_end: value_of(NFTA_SET_ELEM_KEY_END),
            end,
            value,
        })
    }
}

fn verdict(data: &[u8]) -> Option<String> {
    let attrs = attributes(data);
    let code = find(&attrs, NFTA_VERDICT_CODE).and_then(be_u32)? as i32;
    codec::decode_verdict(code, find(&attrs, NFTA_VERDICT_CHAIN).map(string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::codec::Part;

    #[test]
    fn interval_ends_pair_with_starts() {
        let layout = Layout {
            name: "s".into(),
            flags: 0x4, // NFT_SET_INTERVAL
            id: None,
            codec: Codec {
                key: vec![Part::V4],
                value: Value::None,
            },
        };
        let element = |key: [u8; 4], end: bool| RawElement {
            key: key.to_vec(),
            key_end: None,
            end,
            value: String::new(),
        };
        // As the kernel dumps them: highest first, with nft's end marker at 0.
        let raw = vec![
            element([192, 168, 1, 12], true),
            element([192, 168, 1, 11], false),
            element([11, 1, 0, 10], true),
            element([11, 1, 0, 0], false),
            element([11, 0, 0, 0], true),
            element([10, 0, 0, 0], false),
            element([0, 0, 0, 0], true),
            element([240, 0, 0, 0], false),
        ];
        let keys: Vec<String> = layout
            .elements(raw)
            .unwrap()
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(
            keys,
            [
                "10.0.0.0/8",
                "11.1.0.0-11.1.0.9",
                "192.168.1.11",
                "240.0.0.0/4"
            ]
        );
    }

    #[test]
    fn comments_come_out_of_user_data() {
        let mut data = vec![5, 2, b'x', 0];
        data.extend([UDATA_SET_COMMENT, 4, b'a', b'b', b'c', 0]);
        assert_eq!(
            udata_comment(&data, UDATA_SET_COMMENT).as_deref(),
            Some("abc")
        );
        assert_eq!(udata_comment(&data, 9), None);
    }
}

//! A full load (create or replace) of a large table as one nf_tables transaction
//! over netlink. `nft -f` spends nearly all of a 100,000-element load parsing and
//! checking the elements one by one, while the table's structure (counters, sets,
//! chains, rules) is small. So `nft` compiles only the structure, into a dormant
//! staging table (its base chains are not attached: it sees no packet); that is read
//! back as netlink messages and sent again under our table's name, in one batch with
//! the elements encoded here: delete the table if there is one, create it with its
//! objects, rules and every element, delete the staging table. One transaction, so a
//! serving table is replaced whole and never seen empty or half filled, and a failed
//! load changes nothing of ours (a staging table left behind is harmless and the
//! next load replaces it).
//!
//! The same staging tells the rules' expressions as the kernel would hold them
//! ([`rule_digests`]): a restarted agent compares the rules it finds under our
//! comments with those, not with whatever is there.

use super::cli::{Nft, NftError};
use super::dump::DumpedRule;
use super::model::{Table, TableId};
use super::netlink::{
    Codec, ElementBatch, Message, NFT_MSG_DELTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETOBJ,
    NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETSETELEM, NFT_MSG_NEWCHAIN, NFT_MSG_NEWOBJ,
    NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWTABLE, NLM_F_APPEND,
    NLM_F_CREATE, NetlinkError, Session, attr_str, family_number,
};
use super::render::{self, Kind, Op, Transaction};

/// Elements from which a full load goes over netlink: below, `nft -f` takes a few
/// tens of milliseconds and does it all in one process.
pub const NETLINK_LOAD_FROM: usize = 2_000;

/// The first attribute of every object's message names its table.
const TABLE_ATTRIBUTE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ID: u16 = 10;

/// The attributes of a dumped object that describe it (the rest: the staging
/// table's handles and positions, use counts, the kernel's own flags, the set
/// backend's name and size, whatever newer kernels add, is not sent back).
const OBJ_INPUT: &[u16] = &[1, 2, 3, 4, 8];
const SET_INPUT: &[u16] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 17, 18];
const CHAIN_INPUT: &[u16] = &[1, 3, 4, 5, 7, 12];
const RULE_INPUT: &[u16] = &[1, 2, 4, 5, 7];
const SETELEM_INPUT: &[u16] = &[1, 2, 3];

/// A create or replace split into what `nft` compiles (everything but the
/// elements netlink can carry) and those elements' messages; `None` for a diff or
/// when fewer than `from` elements would go over netlink.
pub(super) fn split(tx: &Transaction, from: usize) -> Option<(Vec<Op>, Vec<Message>)> {
    if !matches!(tx.kind, Kind::Create | Kind::Replace) {
        return None;
    }
    let mut structure = Vec::new();
    let mut messages = Vec::new();
    let mut elements = 0;
    for op in &tx.ops {
        match op {
            Op::AddTable | Op::DeleteTable => {}
            Op::AddElements(set, name, list) => {
                let encoded = Codec::of(set).and_then(|codec| {
                    ElementBatch {
                        family: tx.table.family.clone(),
                        table: tx.table.name.clone(),
                        set: name.clone(),
                        codec,
                        delete: false,
                        elements: Vec::new(),
                    }
                    .messages_of(list)
                    .ok()
                });
                match encoded {
                    Some(encoded) => {
                        elements += list.len();
                        messages.extend(encoded);
                    }
                    None => structure.push(op.clone()),
                }
            }
            op => structure.push(op.clone()),
        }
    }
    (elements >= from).then_some((structure, messages))
}

/// A create or replace as a replace: the same whether the table exists or not.
pub(super) fn replacing(tx: &Transaction) -> Transaction {
    let mut ops = Vec::with_capacity(tx.ops.len() + 2);
    if tx.kind == Kind::Create {
        ops.extend([Op::AddTable, Op::DeleteTable]);
    }
    ops.extend(tx.ops.iter().cloned());
    Transaction {
        table: tx.table.clone(),
        kind: tx.kind,
        ops,
    }
}

/// Compiles `ops` with `nft` into the dormant staging table of `id` (replacing any).
async fn stage(nft: &Nft, id: &TableId, ops: Vec<Op>) -> Result<TableId, NftError> {
    let staging = id.staging();
    let header = format!(
        "add table {staging}\ndelete table {staging}\nadd table {staging} {{ flags dormant; }}\n"
    );
    let body = Transaction {
        table: staging.clone(),
        kind: Kind::Create,
        ops,
    }
    .text();
    nft.apply(&(header + &body)).await?;
    Ok(staging)
}

/// Loads the table `id` (replacing whatever is there) with `structure` compiled by
/// `nft` and `elements` (messages for `id`), in one transaction.
pub(super) async fn load(
    nft: &Nft,
    session: &mut Session,
    id: &TableId,
    structure: Vec<Op>,
    elements: Vec<Message>,
) -> Result<(), NftError> {
    let staging = stage(nft, id, structure).await?;
    let result = (|| {
        let mut messages = replacement(session, id, &staging)?;
        messages.extend(elements);
        messages.push(table_message(NFT_MSG_DELTABLE, &staging)?);
        session.commit(&messages)
    })();
    if let Err(err) = result {
        drop_staging(session, &staging);
        return Err(NftError::Netlink(err.to_string()));
    }
    Ok(())
}

/// The rules `desired` would have in the kernel (structure staged, rules dumped, the
/// staging table deleted again).
pub(super) async fn rule_digests(
    nft: &Nft,
    session: &mut Session,
    id: &TableId,
    desired: &Table,
) -> Result<Vec<DumpedRule>, NftError> {
    let staging = stage(nft, id, render::structure(desired)).await?;
    let rules = session.dump_rules(&staging.family, &staging.name);
    drop_staging(session, &staging);
    rules.map_err(|err| NftError::Netlink(err.to_string()))
}

fn drop_staging(session: &mut Session, staging: &TableId) {
    let deleted = table_message(NFT_MSG_DELTABLE, staging).and_then(|m| session.commit(&[m]));
    if let Err(err) = deleted {
        tracing::debug!(table = %staging, error = %err, "could not delete the staging table");
    }
}

fn table_message(kind: u16, id: &TableId) -> Result<Message, NetlinkError> {
    let mut payload = vec![family_number(&id.family)?, 0, 0, 0];
    attr_str(&mut payload, NFTA_TABLE_NAME, &id.name);
    Ok(Message {
        kind,
        flags: if kind == NFT_MSG_NEWTABLE {
            NLM_F_CREATE
        } else {
            0
        },
        payload,
        what: format!("table {id}"),
    })
}

/// The messages that replace `id` with a copy of `staging`: the table deleted (added
/// first, so that the delete cannot fail) and created again, then the staging
/// table's objects, sets, chains, their elements and rules, in an order the kernel
/// accepts (an anonymous set's elements before the rule that binds it).
fn replacement(
    session: &mut Session,
    id: &TableId,
    staging: &TableId,
) -> Result<Vec<Message>, NetlinkError> {
    let family = family_number(&staging.family)?;
    let request = |attribute: u16, set: Option<&str>| {
        let mut payload = vec![family, 0, 0, 0];
        attr_str(&mut payload, attribute, &staging.name);
        if let Some(set) = set {
            attr_str(&mut payload, NFTA_SET_NAME, set);
        }
        payload
    };
    let mut messages = vec![
        table_message(NFT_MSG_NEWTABLE, id)?,
        table_message(NFT_MSG_DELTABLE, id)?,
        table_message(NFT_MSG_NEWTABLE, id)?,
    ];
    let copy = |bodies: Vec<Vec<u8>>, kind: u16, input: &[u16], noun: &str| {
        bodies
            .iter()
            .map(|body| Message {
                kind,
                // Rules in order: each after the last.
                flags: NLM_F_CREATE
                    | if kind == NFT_MSG_NEWRULE {
                        NLM_F_APPEND
                    } else {
                        0
                    },
                payload: renamed(body, &id.name, input),
                what: format!("{noun} {}", name_of(body).unwrap_or_default()),
            })
            .collect::<Vec<_>>()
    };
    let objects = session.dump_raw(NFT_MSG_GETOBJ, NFT_MSG_NEWOBJ, &request(1, None), staging)?;
    messages.extend(copy(objects, NFT_MSG_NEWOBJ, OBJ_INPUT, "object"));
    let sets = session.dump_raw(NFT_MSG_GETSET, NFT_MSG_NEWSET, &request(1, None), staging)?;
    let names: Vec<String> = sets.iter().filter_map(|body| name_of(body)).collect();
    let mut sets = copy(sets, NFT_MSG_NEWSET, SET_INPUT, "set");
    // The kernel wants each new set numbered within the transaction.
    for (number, set) in (1u32..).zip(&mut sets) {
        super::netlink::attr(&mut set.payload, NFTA_SET_ID, &number.to_be_bytes());
    }
    messages.extend(sets);
    let chains = session.dump_raw(
        NFT_MSG_GETCHAIN,
        NFT_MSG_NEWCHAIN,
        &request(1, None),
        staging,
    )?;
    messages.extend(copy(chains, NFT_MSG_NEWCHAIN, CHAIN_INPUT, "chain"));
    for name in &names {
        let elements = session.dump_raw(
            NFT_MSG_GETSETELEM,
            NFT_MSG_NEWSETELEM,
            &request(1, Some(name)),
            staging,
        )?;
        messages.extend(copy(
            elements,
            NFT_MSG_NEWSETELEM,
            SETELEM_INPUT,
            "the elements of set",
        ));
    }
    let rules = session.dump_raw(NFT_MSG_GETRULE, NFT_MSG_NEWRULE, &request(1, None), staging)?;
    messages.extend(copy(rules, NFT_MSG_NEWRULE, RULE_INPUT, "a rule of chain"));
    Ok(messages)
}

/// The second attribute of a dumped object: its name (a rule's: its chain's).
fn name_of(body: &[u8]) -> Option<String> {
    let (_, value) = raw_attributes(body.get(4..)?).into_iter().nth(1)?;
    let name = value.split(|b| *b == 0).next()?;
    Some(String::from_utf8_lossy(name).into_owned())
}

/// A dumped message's body for `table`: its table attribute renamed, the other
/// `input` attributes as they were (nested flags included), no others.
fn renamed(body: &[u8], table: &str, input: &[u16]) -> Vec<u8> {
    let mut out = vec![body.first().copied().unwrap_or(0), 0, 0, 0];
    for (kind, value) in raw_attributes(body.get(4..).unwrap_or_default()) {
        let plain = kind & 0x3fff;
        if plain == TABLE_ATTRIBUTE {
            attr_str(&mut out, kind, table);
        } else if input.contains(&plain) {
            super::netlink::attr(&mut out, kind, value);
        }
    }
    out
}

/// Attributes with their full type (flags kept).
fn raw_attributes(data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 4 <= data.len() {
        let len = u16::from_ne_bytes([data[offset], data[offset + 1]]) as usize;
        let kind = u16::from_ne_bytes([data[offset + 2], data[offset + 3]]);
        if len < 4 || offset + len > data.len() {
            break;
        }
        out.push((kind, &data[offset + 4..offset + len]));
        offset += (len + 3) & !3;
    }
    out
}

impl Session {
    /// The bodies (nfgenmsg and attributes) of a dump's `reply` messages that
    /// belong to `table`.
    fn dump_raw(
        &mut self,
        kind: u16,
        reply: u16,
        payload: &[u8],
        table: &TableId,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let mut out = Vec::new();
        self.dump_bodies(kind, payload, reply, |body| {
            let ours = raw_attributes(body.get(4..).unwrap_or_default())
                .first()
                .is_some_and(|(kind, value)| {
                    kind & 0x3fff == TABLE_ATTRIBUTE
                        && value.split(|b| *b == 0).next() == Some(table.name.as_bytes())
                });
            if ours {
                out.push(body.to_vec());
            }
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dumped_object_is_renamed_without_its_handle() {
        let mut body = vec![1, 0, 0x12, 0x34];
        attr_str(&mut body, 1, "t-staging");
        super::super::netlink::attr(&mut body, 2, &7u64.to_be_bytes());
        attr_str(&mut body, 3, "services");
        super::super::netlink::attr(&mut body, 4 | 0x8000, &[8, 0, 1, 0, 0, 0, 0, 2]);
        let out = renamed(&body, "t", CHAIN_INPUT);
        let attrs = raw_attributes(&out[4..]);
        assert_eq!(out[..4], [1, 0, 0, 0]);
        assert_eq!(attrs.len(), 3);
        assert_eq!(attrs[0], (1, &b"t\0"[..]));
        assert_eq!(attrs[1].0, 3);
        assert_eq!(attrs[2].0, 4 | 0x8000, "the nested flag stays");
        assert_eq!(name_of(&out).as_deref(), Some("services"));
    }
}

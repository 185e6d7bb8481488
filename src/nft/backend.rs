//! Where transactions go: the [`Backend`] trait, and [`Kernel`], the real one (an
//! elements-only transaction over a kept-open netlink socket, a large create or
//! replace as one netlink batch of the structure `nft` compiled and the elements
//! ([`super::load`]), anything else as one `nft -f`; reads over netlink dumps).
//! [`super::fake::Fake`] is the other.

use std::collections::BTreeMap;
use std::future::Future;

use super::cli::{Nft, NftError};
use super::dump::RuleDigests;
use super::load;
use super::model::{Table, TableId};
use super::netlink::{Codec, ElementBatch, NetlinkError, Session};
use super::read::{self, Observed};
use super::render::{Op, Transaction};

pub trait Backend: Send {
    /// Applies the transaction atomically: all of it or none.
    fn apply(&mut self, tx: &Transaction) -> impl Future<Output = Result<(), NftError>> + Send;

    /// The table as it is now; `None` when there is none.
    fn read(
        &mut self,
        table: &TableId,
    ) -> impl Future<Output = Result<Option<Observed>, NftError>> + Send;

    /// The named counters' packet counts (cheap: no rules, no elements).
    fn packets(
        &mut self,
        table: &TableId,
    ) -> impl Future<Output = Result<BTreeMap<String, u64>, NftError>> + Send;

    /// Called before the first read of `table` with what the caller wants in it: the
    /// kernel learns how its rules look there, so that the read tells a rule edited
    /// under our comment from ours (see [`RuleDigests`]).
    fn prepare(&mut self, table: &TableId, desired: &Table) -> impl Future<Output = ()> + Send {
        let _ = (table, desired);
        async {}
    }

    /// How many commits the last [`Self::apply`] made (`None`: not known), so that
    /// a caller tells its own commits from others' by the generation.
    fn commits(&self) -> Option<u32> {
        Some(1)
    }

    /// A number every commit to any table changes.
    fn generation(&mut self) -> impl Future<Output = Result<u32, NftError>> + Send;

    /// Which ruleset the generations count (a network namespace); reconcilers of one
    /// scope tell each other which commits were theirs. `None`: not shared.
    fn scope(&self) -> Option<String> {
        None
    }
}

/// nf_tables in one network namespace.
#[derive(Debug)]
pub struct Kernel {
    nft: Nft,
    session: Session,
    /// Names the network namespace for [`Backend::scope`]: its cookie, else its
    /// inode (which a later namespace may get again once this one is gone).
    netns_id: Option<String>,
    /// Our rules' expressions as we wrote them, per table.
    digests: BTreeMap<TableId, RuleDigests>,
    /// Elements from which a create or replace goes over netlink.
    netlink_load_from: usize,
    /// Commits the last apply made: a netlink load makes two (the staging table,
    /// then ours); `None` after a load that failed over to `nft -f`.
    last_commits: Option<u32>,
}

impl Kernel {
    /// nf_tables in `nft`'s network namespace (without one: the calling thread's).
    pub fn new(nft: Nft) -> Self {
        use std::os::unix::fs::MetadataExt;
        let session = Session::new(nft.netns());
        let netns_id = match super::netlink::netns_cookie(nft.netns()) {
            Some(cookie) => Some(format!("netns-cookie:{cookie}")),
            None => std::fs::metadata(nft.netns().unwrap_or("/proc/thread-self/ns/net"))
                .ok()
                .map(|m| format!("netns:{}", m.ino())),
        };
        Self {
            nft,
            session,
            netns_id,
            digests: BTreeMap::new(),
            netlink_load_from: load::NETLINK_LOAD_FROM,
            last_commits: Some(1),
        }
    }

    /// Creates and replaces tables of at least `elements` elements over netlink (the
    /// default: [`load::NETLINK_LOAD_FROM`]); `usize::MAX`: always with `nft -f`.
    pub fn with_netlink_load_from(mut self, elements: usize) -> Self {
        self.netlink_load_from = elements;
        self
    }

    pub fn nft(&self) -> &Nft {
        &self.nft
    }

    /// The transaction as netlink element batches, when it is only elements and each
    /// set's elements can be encoded.
    pub fn element_batches(tx: &Transaction) -> Option<Vec<ElementBatch>> {
        if !tx.elements_only() {
            return None;
        }
        tx.ops
            .iter()
            .map(|op| {
                let (set, name, delete, elements) = match op {
                    Op::AddElements(set, name, elements) => (set, name, false, elements.clone()),
                    Op::DeleteElements(set, name, keys) => (
                        set,
                        name,
                        true,
                        keys.iter().map(|k| (k.clone(), String::new())).collect(),
                    ),
                    _ => return None,
                };
                let batch = ElementBatch {
                    family: tx.table.family.clone(),
                    table: tx.table.name.clone(),
                    set: name.clone(),
                    codec: Codec::of(set)?,
                    delete,
                    elements,
                };
                batch.supported().then_some(batch)
            })
            .collect()
    }
}

impl Kernel {
    /// The table as `nft -j list table` shows it (the reader before netlink dumps;
    /// rules are taken by their comments alone).
    pub async fn read_listing(&mut self, table: &TableId) -> Result<Option<Observed>, NftError> {
        match self.nft.list_table(&table.family, &table.name, false).await {
            Ok(listing) => Ok(Some(read::observed(&listing))),
            Err(NftError::NoTable { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// A create or replace over netlink ([`load`]); one netlink refused (not a
    /// table nft refuses: that failed while staging) is tried with `nft -f` before
    /// giving up, as a replacement in case the batch went through after all.
    async fn load(
        &mut self,
        tx: &Transaction,
        structure: Vec<Op>,
        elements: Vec<super::netlink::Message>,
    ) -> Result<(), NftError> {
        match load::load(&self.nft, &mut self.session, &tx.table, structure, elements).await {
            Ok(()) => {
                self.last_commits = Some(2);
                Ok(())
            }
            Err(err @ NftError::Netlink(_)) => {
                tracing::warn!(table = %tx.table, error = %err, "loading the table over netlink failed; loading it with nft -f");
                self.last_commits = None;
                self.nft.apply(&load::replacing(tx).text()).await
            }
            Err(err) => Err(err),
        }
    }

    fn learn_rules(&mut self, table: &TableId) -> Result<(), NftError> {
        let rules = self
            .session
            .dump_rules(&table.family, &table.name)
            .map_err(|err| NftError::Netlink(err.to_string()))?;
        self.digests.entry(table.clone()).or_default().learn(&rules);
        Ok(())
    }
}

impl Backend for Kernel {
    /// An elements-only transaction is sent in place: the kernel runs the whole
    /// batch, commit included, within the send, so this blocks for the commit (about
    /// a millisecond; longer only while another client holds the commit lock).
    async fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        self.last_commits = Some(1);
        if let Some(batches) = Self::element_batches(tx) {
            return self
                .session
                .apply(&batches)
                .map_err(|err| NftError::Netlink(err.to_string()));
        }
        match load::split(tx, self.netlink_load_from) {
            Some((structure, elements)) => self.load(tx, structure, elements).await?,
            None => self.nft.apply(&tx.text()).await?,
        }
        // Rules were written: learn their expressions as the kernel holds them now,
        // for the drift check (see RuleDigests). The commit stands either way;
        // without a dump the next read learns them instead.
        if let Err(err) = self.learn_rules(&tx.table) {
            tracing::warn!(table = %tx.table, error = %err, "could not read our rules back after writing them");
            self.digests.remove(&tx.table);
        }
        Ok(())
    }

    /// Reads the table with netlink dumps, between two generation queries that must
    /// agree (a commit in between may have been read half): tried three times, then
    /// the table is read through `nft -j` (also when a set has elements the dump
    /// cannot decode).
    async fn read(&mut self, table: &TableId) -> Result<Option<Observed>, NftError> {
        for _ in 0..3 {
            let before = self.generation().await?;
            let dumped = match self.session.dump_table(&table.family, &table.name) {
                Ok(dumped) => dumped,
                Err(err @ NetlinkError::Unsupported { .. }) => {
                    tracing::debug!(table = %table, error = %err, "reading the table through nft -j");
                    break;
                }
                Err(err) => return Err(NftError::Netlink(err.to_string())),
            };
            if self.generation().await? != before {
                continue;
            }
            let digests = self.digests.entry(table.clone()).or_default();
            return Ok(dumped.map(|dumped| digests.observed(dumped)));
        }
        self.read_listing(table).await
    }

    /// Learns the digests of `desired`'s rules from a staging copy, when `table`
    /// exists and none were learned yet; without them the first read trusts our
    /// comments on the rules it finds.
    async fn prepare(&mut self, table: &TableId, desired: &Table) {
        if self.digests.contains_key(table) || desired.rule_count() == 0 {
            return;
        }
        let exists = super::netlink::family_number(&table.family)
            .and_then(|family| self.session.table_exists(family, &table.name));
        if !matches!(exists, Ok(true)) {
            return;
        }
        match load::rule_digests(&self.nft, &mut self.session, table, desired).await {
            Ok(rules) => self.digests.entry(table.clone()).or_default().learn(&rules),
            Err(err) => {
                tracing::warn!(table = %table, error = %err, "could not learn how our rules look in the kernel; trusting their comments")
            }
        }
    }

    async fn packets(&mut self, table: &TableId) -> Result<BTreeMap<String, u64>, NftError> {
        self.session
            .counters(&table.family, &table.name)
            .map_err(|err| NftError::Netlink(err.to_string()))
    }

    fn commits(&self) -> Option<u32> {
        self.last_commits
    }

    async fn generation(&mut self) -> Result<u32, NftError> {
        self.session
            .generation()
            .map_err(|err| NftError::Netlink(err.to_string()))
    }

    fn scope(&self) -> Option<String> {
        self.netns_id.clone()
    }
}

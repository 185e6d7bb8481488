//! The one reconciler: keeps one table in a [`Backend`] equal to what a controller
//! wants. It starts from what the kernel holds (read once, so a restarted agent
//! applies only the difference: counters and rule handles survive), then applies the
//! difference from what it last applied, kept in memory, without reading back.
//!
//! The periodic check is exact and cheap: every commit to nf_tables in the network
//! namespace (ours or anyone's) increments the ruleset generation, so when it is
//! still the one our own last commit produced, nothing can differ; otherwise the
//! table is read back whole (chains, rules, every element) and any difference is
//! repaired by the diff that follows. Commits by the process's other reconcilers (the
//! firewall's, the proxy's, routing's, each on its own table) are known as theirs and
//! do not make the others read.
//!
//! With [`Reconciler::with_retire_after`], a chain no longer wanted is emptied at
//! once but deleted only by a sync at least that long after ([`RETIRE_AFTER`] for
//! the proxy's per-count chains): kernels before 6.2 may still count a reference to
//! it from the elements the same transaction removed, and refuse the delete.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::backend::Backend;
use super::cli::NftError;
use super::model::{Chain, Table, TableId};
use super::render::{self, Kind, Transaction};

/// How long a chain no longer wanted stays (empty) before a sync deletes it.
pub const RETIRE_AFTER: Duration = Duration::from_secs(1);

/// What one sync did.
#[derive(Clone, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    Applied(Transaction),
}

impl Applied {
    pub fn transaction(&self) -> Option<&Transaction> {
        match self {
            Applied::Nothing => None,
            Applied::Applied(tx) => Some(tx),
        }
    }

    /// The kind of transaction applied, if any.
    pub fn kind(&self) -> Option<Kind> {
        self.transaction().map(|tx| tx.kind)
    }
}

/// Short: the kind and size, not every element.
impl std::fmt::Debug for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Applied::Nothing => f.write_str("Nothing"),
            Applied::Applied(tx) => write!(
                f,
                "{}({} ops, size {})",
                tx.kind.as_str(),
                tx.ops.len(),
                tx.size()
            ),
        }
    }
}

/// What the reconciler knows of the kernel's table.
#[derive(Clone, Debug)]
enum Known {
    /// Read it before the next change.
    Unknown,
    Absent,
    Present(Table),
}

pub struct Reconciler<B> {
    backend: B,
    table: TableId,
    known: Known,
    /// The generation our last commit (or verified read) left: while it is current,
    /// the table is what `known` says.
    verified: Option<u32>,
    metrics: NftMetrics,
    /// Packet counts of the named counters at the last periodic sync.
    packets: BTreeMap<String, u64>,
    /// Whether the periodic sync reads the named counters (the firewall's drops).
    read_counters: bool,
    /// Chains no longer wanted, kept empty until this long after they were dropped.
    retired: BTreeMap<String, Instant>,
    retire_after: Duration,
    /// Periodic checks that found the generation moved and read the table.
    pub reads: u64,
}

impl<B: Backend> Reconciler<B> {
    pub fn new(backend: B, table: TableId) -> Self {
        Self {
            backend,
            table,
            known: Known::Unknown,
            verified: None,
            metrics: NftMetrics::get().clone(),
            packets: BTreeMap::new(),
            read_counters: false,
            retired: BTreeMap::new(),
            retire_after: Duration::ZERO,
            reads: 0,
        }
    }

    /// Deletes chains no longer wanted only `after` they were emptied (by a later
    /// sync); without this, in the same transaction.
    pub fn with_retire_after(mut self, after: Duration) -> Self {
        self.retire_after = after;
        self
    }

    /// Also reads the named counters on each periodic sync (see [`Self::packets`]).
    pub fn with_counters(mut self) -> Self {
        self.read_counters = true;
        self
    }

    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// How long until the oldest emptied chain may be deleted: a sync then removes
    /// it, so a controller asks its runtime for one instead of waiting a whole sync
    /// period (or the next change) with an empty chain left in the table.
    pub fn retiring_in(&self) -> Option<Duration> {
        let oldest = self.retired.values().min()?;
        Some(self.retire_after.saturating_sub(oldest.elapsed()))
    }

    pub fn table(&self) -> &TableId {
        &self.table
    }

    /// The named counters' packets as of the last periodic sync (with
    /// [`Self::with_counters`]) or table read.
    pub fn packets(&self) -> &BTreeMap<String, u64> {
        &self.packets
    }

    /// Forgets what the kernel holds: the next sync reads it.
    pub fn invalidate(&mut self) {
        self.known = Known::Unknown;
        self.verified = None;
    }

    /// Brings the table to `desired`; `periodic` also checks for drift and reads the
    /// counters. On error the next sync reads the table again.
    pub async fn sync(&mut self, desired: &Table, periodic: bool) -> Result<Applied, NftError> {
        let result = self.sync_inner(desired, periodic).await;
        if result.is_err() {
            self.invalidate();
        }
        result
    }

    async fn sync_inner(&mut self, desired: &Table, periodic: bool) -> Result<Applied, NftError> {
        if periodic {
            self.check().await?;
            if self.read_counters {
                self.packets = self.backend.packets(&self.table).await?;
            }
        }
        if matches!(self.known, Known::Unknown) {
            self.backend.prepare(&self.table, desired).await;
            self.load().await?;
        }
        let desired = self.keep_retired(desired);
        let desired = desired.as_ref();
        let tx = match &self.known {
            Known::Present(old) => render::diff(&self.table, old, desired)
                .unwrap_or_else(|| render::replace(&self.table, desired)),
            _ => render::create(&self.table, desired),
        };
        if tx.is_empty() {
            self.known = Known::Present(desired.clone());
            self.record_success();
            return Ok(Applied::Nothing);
        }
        let before = self.backend.generation().await?;
        let tx = match self.backend.apply(&tx).await {
            Ok(()) => tx,
            Err(err) if tx.kind == Kind::Diff => {
                // nft refused a change it should take (nft 1.0.6 cannot add a rule
                // naming an existing `typeof ... th dport` map): replace the table.
                tracing::warn!(table = %self.table, error = %err, "an incremental nftables change failed; replacing the table");
                let replace = render::replace(&self.table, desired);
                self.backend.apply(&replace).await?;
                replace
            }
            Err(err) => return Err(err),
        };
        let after = self.backend.generation().await?;
        // Ours were the only commits in between when the generation moved by as many.
        let alone = (self.backend.commits()).is_some_and(|n| after == before.wrapping_add(n));
        if alone && let Some(scope) = self.backend.scope() {
            OwnCommits::record(&scope, &self.table, before, after);
        }
        self.verified = (self.verified == Some(before) && alone).then_some(after);
        self.known = Known::Present(desired.clone());
        let label = TxLabel {
            table: self.table.name.clone(),
            kind: tx.kind.as_str().into(),
        };
        self.metrics.transactions.get_or_create(&label).inc();
        self.metrics
            .transaction_size
            .get_or_create(&TableLabel {
                table: self.table.name.clone(),
            })
            .observe(tx.size() as f64);
        self.record_success();
        Ok(Applied::Applied(tx))
    }

    /// `desired` plus, empty, the regular chains the kernel has that it dropped less
    /// than `retire_after` ago.
    fn keep_retired<'a>(&mut self, desired: &'a Table) -> Cow<'a, Table> {
        let Known::Present(old) = &self.known else {
            self.retired.clear();
            return Cow::Borrowed(desired);
        };
        if self.retire_after.is_zero() {
            return Cow::Borrowed(desired);
        }
        if old.chains.same(&desired.chains) {
            return Cow::Borrowed(desired);
        }
        let now = Instant::now();
        self.retired
            .retain(|name, _| !desired.chains.contains_key(name));
        let mut kept = Vec::new();
        for (name, chain) in &old.chains {
            if chain.hook.is_some() || desired.chains.contains_key(name) {
                continue;
            }
            let since = *self.retired.entry(name.clone()).or_insert(now);
            if now.duration_since(since) < self.retire_after {
                kept.push(name.clone());
            } else {
                self.retired.remove(name);
            }
        }
        if kept.is_empty() {
            return Cow::Borrowed(desired);
        }
        let mut table = desired.clone();
        for name in kept {
            table.chains.insert(name, Arc::new(Chain::default()));
        }
        Cow::Owned(table)
    }

    /// Reads the table to start from what is there.
    async fn load(&mut self) -> Result<(), NftError> {
        let generation = self.backend.generation().await?;
        let observed = self.backend.read(&self.table).await?;
        self.known = match observed {
            Some(observed) => {
                self.packets = observed.packets;
                Known::Present(observed.table)
            }
            None => Known::Absent,
        };
        self.verified = Some(generation);
        Ok(())
    }

    /// Reads the table back unless the generation says nothing was committed since
    /// ours; a difference is logged and counted, and the sync that follows repairs it.
    async fn check(&mut self) -> Result<(), NftError> {
        let Known::Present(expected) = &self.known else {
            return Ok(());
        };
        let generation = self.backend.generation().await?;
        if let (Some(verified), Some(scope)) = (self.verified, self.backend.scope())
            && OwnCommits::others_only(&scope, &self.table, verified, generation)
        {
            self.verified = Some(generation);
        }
        if self.verified == Some(generation) {
            return Ok(());
        }
        self.reads += 1;
        let expected = expected.clone();
        self.load().await?;
        let differences = match &self.known {
            Known::Present(observed) => render::describe(&self.table, observed, &expected),
            _ => vec!["the table is gone".to_string()],
        };
        if !differences.is_empty() {
            tracing::warn!(table = %self.table, ?differences, "our nftables table was changed by someone else; repairing it");
            self.metrics
                .drift_repairs
                .get_or_create(&TableLabel {
                    table: self.table.name.clone(),
                })
                .inc();
        }
        Ok(())
    }

    fn record_success(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.metrics
            .last_sync
            .get_or_create(&TableLabel {
                table: self.table.name.clone(),
            })
            .set(now);
    }
}

/// The generations this process's reconcilers committed alone, per scope, and the
/// table each changed (the most recent few thousand).
struct OwnCommits;

/// Scope → generation → table.
type Commits = BTreeMap<String, BTreeMap<u32, TableId>>;

impl OwnCommits {
    const KEEP: usize = 4096;

    fn log() -> &'static std::sync::Mutex<Commits> {
        static LOG: OnceLock<std::sync::Mutex<Commits>> = OnceLock::new();
        LOG.get_or_init(Default::default)
    }

    /// Records the generations after `from` up to `to` as `table`'s.
    fn record(scope: &str, table: &TableId, from: u32, to: u32) {
        if let Ok(mut log) = Self::log().lock() {
            let commits = log.entry(scope.to_string()).or_default();
            let mut generation = from;
            while generation != to {
                generation = generation.wrapping_add(1);
                commits.insert(generation, table.clone());
            }
            while commits.len() > Self::KEEP {
                commits.pop_first();
            }
        }
    }

    /// Whether every commit after `from` up to `to` was another table's, by us.
    fn others_only(scope: &str, table: &TableId, from: u32, to: u32) -> bool {
        if to <= from || (to - from) as usize > Self::KEEP {
            return false;
        }
        let Ok(log) = Self::log().lock() else {
            return false;
        };
        let Some(commits) = log.get(scope) else {
            return false;
        };
        (from + 1..=to).all(|g| commits.get(&g).is_some_and(|t| t != table))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TxLabel {
    pub table: String,
    /// `create`, `replace` or `diff`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: String,
}

type SizeHistogram = Family<TableLabel, Histogram, fn() -> Histogram>;

fn size_histogram() -> Histogram {
    // 1 .. ~1M ops+elements
    Histogram::new(exponential_buckets(1.0, 4.0, 11))
}

/// The nftables metrics, one family for every table (labelled by it).
#[derive(Clone)]
pub struct NftMetrics {
    pub transactions: Family<TxLabel, Counter>,
    pub transaction_size: SizeHistogram,
    pub drift_repairs: Family<TableLabel, Counter>,
    pub last_sync: Family<TableLabel, Gauge>,
}

impl NftMetrics {
    /// The process's one set: every reconciler counts into it, whichever controller
    /// created it, and [`NftMetrics::register`] exposes it.
    pub fn get() -> &'static NftMetrics {
        static METRICS: OnceLock<NftMetrics> = OnceLock::new();
        METRICS.get_or_init(|| NftMetrics {
            transactions: Family::default(),
            transaction_size: Family::new_with_constructor(size_histogram),
            drift_repairs: Family::default(),
            last_sync: Family::default(),
        })
    }

    /// Adds the metrics to the agent's registry (once per process: the firewall,
    /// proxy and routing controllers each ask).
    pub fn register(metrics: &crate::telemetry::Metrics) {
        static REGISTERED: OnceLock<()> = OnceLock::new();
        REGISTERED.get_or_init(|| {
            let this = Self::get();
            metrics.register(
                "kubewire_nft_transactions",
                "nftables transactions applied, by table and kind (create, replace, diff)",
                this.transactions.clone(),
            );
            metrics.register(
                "kubewire_nft_transaction_size",
                "Commands plus set elements per nftables transaction, by table",
                this.transaction_size.clone(),
            );
            metrics.register(
                "kubewire_nft_drift_repairs",
                "Times a table was found changed by someone else (or gone) and repaired",
                this.drift_repairs.clone(),
            );
            metrics.register(
                "kubewire_nft_last_sync_timestamp_seconds",
                "When a table was last brought to the desired state (Unix time)",
                this.last_sync.clone(),
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{Elements, Fake, Hook, Rule, Set};

    fn id() -> TableId {
        TableId::new("inet", "t")
    }

    /// A base chain dispatching through a verdict map to `targets` (one element each).
    fn table(targets: &[&str]) -> Table {
        let mut t = Table::default();
        t.chains.insert(
            "base".into(),
            Arc::new(Chain::new(
                Some(Hook::new("filter", "forward", 0)),
                ["ip daddr vmap @dispatch"],
            )),
        );
        let mut elements = Elements::default();
        for (i, target) in targets.iter().enumerate() {
            t.chains.insert(
                target.to_string(),
                Arc::new(Chain::new(None, ["counter accept"])),
            );
            elements.insert(format!("10.0.0.{i}"), format!("jump {target}"));
        }
        t.sets.insert(
            "dispatch".into(),
            Arc::new(Set::new(true, "type ipv4_addr : verdict", None).with_elements(elements)),
        );
        t
    }

    fn kind(applied: &Applied) -> Option<Kind> {
        applied.transaction().map(|tx| tx.kind)
    }

    #[tokio::test]
    async fn a_restart_applies_only_the_difference() {
        let mut first = Reconciler::new(Fake::default(), id());
        let a = table(&["a", "b"]);
        assert_eq!(
            kind(&first.sync(&a, false).await.unwrap()),
            Some(Kind::Create)
        );
        let fake = std::mem::take(first.backend());
        let mut second = Reconciler::new(fake, id());
        assert_eq!(second.sync(&a, false).await.unwrap(), Applied::Nothing);
        let c = table(&["a", "b", "c"]);
        let applied = second.sync(&c, false).await.unwrap();
        assert_eq!(kind(&applied), Some(Kind::Diff));
        assert!(
            !applied
                .transaction()
                .unwrap()
                .ops
                .iter()
                .any(|op| matches!(op, crate::nft::Op::DeleteTable)),
        );
        assert_eq!(second.backend().tables[&id()], c);
    }

    #[tokio::test]
    async fn quiet_periodic_checks_read_nothing_and_tampering_is_repaired() {
        let mut reconciler = Reconciler::new(Fake::default(), id());
        let a = table(&["a"]);
        reconciler.sync(&a, false).await.unwrap();
        for _ in 0..3 {
            assert_eq!(reconciler.sync(&a, true).await.unwrap(), Applied::Nothing);
        }
        assert_eq!(reconciler.reads, 0);
        reconciler.backend().tamper(&id(), |t| {
            let chain = t.as_mut().unwrap().chains.get_mut("a").unwrap();
            Arc::make_mut(chain).rules.push(Rule::new("drop".into()));
        });
        let applied = reconciler.sync(&a, true).await.unwrap();
        assert_eq!(kind(&applied), Some(Kind::Diff));
        assert_eq!(reconciler.reads, 1);
        assert_eq!(reconciler.backend().tables[&id()], a);
        reconciler.backend().tamper(&id(), |t| *t = None);
        let applied = reconciler.sync(&a, true).await.unwrap();
        assert_eq!(kind(&applied), Some(Kind::Create));
        assert_eq!(reconciler.sync(&a, true).await.unwrap(), Applied::Nothing);
        assert_eq!(reconciler.reads, 2);
    }

    #[tokio::test]
    async fn a_dropped_chain_is_emptied_first_and_deleted_later() {
        let mut reconciler =
            Reconciler::new(Fake::default(), id()).with_retire_after(Duration::from_millis(50));
        reconciler.sync(&table(&["a", "b"]), false).await.unwrap();
        assert_eq!(reconciler.retiring_in(), None, "nothing to delete later");
        let only_a = table(&["a"]);
        reconciler.sync(&only_a, false).await.unwrap();
        let due = reconciler.retiring_in().expect("b is to be deleted later");
        assert!(due <= Duration::from_millis(50), "{due:?}");
        let kernel = &reconciler.backend().tables[&id()];
        assert!(kernel.chains["b"].rules.is_empty(), "emptied");
        assert!(
            !kernel.sets["dispatch"]
                .elements
                .values()
                .any(|v| v == "jump b")
        );
        // Not yet: a sync within the delay keeps it.
        assert_eq!(
            reconciler.sync(&only_a, true).await.unwrap(),
            Applied::Nothing
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        let applied = reconciler.sync(&only_a, true).await.unwrap();
        assert_eq!(kind(&applied), Some(Kind::Diff));
        assert_eq!(reconciler.backend().tables[&id()], only_a);
        assert_eq!(reconciler.retiring_in(), None);
    }
}

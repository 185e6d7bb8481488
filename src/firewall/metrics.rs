//! The firewall's Prometheus metrics (sync duration is the agent's, per controller).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::model::Ruleset;
use crate::telemetry::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransactionLabel {
    /// `full` or `incremental`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `namespace/name`, or `-` for drops no policy decided (invalid, uncompiled).
    pub policy: String,
    /// `ingress`, `egress`, or `-`.
    pub direction: String,
}

type SizeHistogram = Family<TransactionLabel, Histogram, fn() -> Histogram>;

fn size_histogram() -> Histogram {
    // 1 .. ~1M commands+elements
    Histogram::new(exponential_buckets(1.0, 4.0, 11))
}

#[derive(Clone)]
pub struct FirewallMetrics {
    pub transactions: Family<TransactionLabel, Counter>,
    pub transaction_size: SizeHistogram,
    pub chains: Gauge,
    pub rules: Gauge,
    pub set_elements: Gauge,
    pub drops: Family<PolicyLabel, Counter>,
    pub drift_repairs: Counter,
}

impl Default for FirewallMetrics {
    fn default() -> Self {
        Self {
            transactions: Family::default(),
            transaction_size: Family::new_with_constructor(size_histogram),
            chains: Gauge::default(),
            rules: Gauge::default(),
            set_elements: Gauge::default(),
            drops: Family::default(),
            drift_repairs: Counter::default(),
        }
    }
}

impl FirewallMetrics {
    /// Creates the metrics and registers them with the agent's registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "kubewire_firewall_nft_transactions",
            "nft transactions applied, by kind (full table or incremental)",
            this.transactions.clone(),
        );
        metrics.register(
            "kubewire_firewall_nft_transaction_size",
            "Commands plus set elements per nft transaction",
            this.transaction_size.clone(),
        );
        metrics.register(
            "kubewire_firewall_chains",
            "Chains in the kubewire table",
            this.chains.clone(),
        );
        metrics.register(
            "kubewire_firewall_rules",
            "Rules in the kubewire table",
            this.rules.clone(),
        );
        metrics.register(
            "kubewire_firewall_set_elements",
            "Set and map elements in the kubewire table",
            this.set_elements.clone(),
        );
        metrics.register(
            "kubewire_firewall_dropped_packets",
            "Packets dropped, per NetworkPolicy isolating the pod and direction",
            this.drops.clone(),
        );
        metrics.register(
            "kubewire_firewall_drift_repairs",
            "Times the table was found changed or missing and rewritten",
            this.drift_repairs.clone(),
        );
        this
    }

    pub fn observe_ruleset(&self, ruleset: &Ruleset) {
        let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.chains.set(int(ruleset.chains.len()));
        self.rules.set(int(ruleset.rule_count()));
        self.set_elements.set(int(ruleset.element_count()));
    }
}

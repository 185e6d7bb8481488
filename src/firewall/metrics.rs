//! The firewall's Prometheus metrics (sync duration is the agent's, per controller;
//! transactions and drift repairs are [`crate::nft::NftMetrics`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::model::Ruleset;
use crate::telemetry::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `namespace/name`, or `-` for drops no policy decided (invalid, uncompiled).
    pub policy: String,
    /// `ingress`, `egress`, or `-`.
    pub direction: String,
}

#[derive(Clone, Default)]
pub struct FirewallMetrics {
    pub chains: Gauge,
    pub rules: Gauge,
    pub set_elements: Gauge,
    pub drops: Family<PolicyLabel, Counter>,
}

impl FirewallMetrics {
    /// Creates the metrics and registers them with the agent's registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
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
        this
    }

    pub fn observe_ruleset(&self, ruleset: &Ruleset) {
        let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.chains.set(int(ruleset.chains.len()));
        self.rules.set(int(ruleset.rule_count()));
        self.set_elements.set(int(ruleset.element_count()));
    }
}

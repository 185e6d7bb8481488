//! The routing controller's own metrics (sync duration and failed syncs are the
//! agent's, per controller).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::telemetry::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    /// What failed: route, neighbour, fdb, link, address, sysctl (a required one),
    /// nftables.
    pub object: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SysctlLabel {
    /// Dotted name, e.g. `net.ipv6.conf.kube-bridge.accept_dad`.
    pub sysctl: String,
}

#[derive(Clone, Default)]
pub struct RoutingMetrics {
    pub routes_installed: Counter,
    pub routes_removed: Counter,
    pub routes: Gauge,
    pub errors: Family<ObjectLabel, Counter>,
    /// Failed writes of optional sysctls (the sync went on without them).
    pub sysctl_failures: Family<SysctlLabel, Counter>,
}

impl RoutingMetrics {
    /// Creates the metrics and registers them with the agent's registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        metrics.register(
            "kubewire_routing_routes_installed",
            "Routes added or replaced by the routing controller",
            this.routes_installed.clone(),
        );
        metrics.register(
            "kubewire_routing_routes_removed",
            "Routes deleted by the routing controller",
            this.routes_removed.clone(),
        );
        metrics.register(
            "kubewire_routing_routes",
            "Routes with the routing controller's proto in the kernel after the last sync",
            this.routes.clone(),
        );
        metrics.register(
            "kubewire_routing_apply_errors",
            "Kernel changes the routing controller could not make, per kind of object",
            this.errors.clone(),
        );
        metrics.register(
            "kubewire_routing_sysctl_failures",
            "Writes of optional sysctls that failed (e.g. read-only /proc/sys); the sync went on without them",
            this.sysctl_failures.clone(),
        );
        this
    }

    /// Failed writes of the optional sysctl `key` so far.
    pub fn sysctl_failures(&self, key: &str) -> u64 {
        self.sysctl_failures
            .get_or_create(&SysctlLabel {
                sysctl: key.to_string(),
            })
            .get()
    }

    pub fn error(&self, object: &str) {
        self.errors
            .get_or_create(&ObjectLabel {
                object: object.to_string(),
            })
            .inc();
    }
}

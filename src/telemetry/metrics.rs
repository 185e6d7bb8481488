//! The agent's Prometheus registry. Core metrics live here; controllers register their
//! own through [`Metrics::register`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BadObjectLabel {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
}

type HistogramFamily = Family<ControllerLabel, Histogram, fn() -> Histogram>;

fn sync_histogram() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    cache_objects: Family<KindLabel, Gauge>,
    watch_restarts: Family<KindLabel, Counter>,
    sync_duration: HistogramFamily,
    sync_errors: Family<ControllerLabel, Counter>,
    bad_objects: Family<ControllerLabel, Gauge>,
    bad_objects_by_kind: Family<BadObjectLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<BuildLabel, Gauge>::default();
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register(
            "kubewire_build_info",
            "kubewire build information",
            build_info,
        );
        let cache_objects = Family::<KindLabel, Gauge>::default();
        registry.register(
            "kubewire_cache_objects",
            "Objects held in the shared watch cache, per kind",
            cache_objects.clone(),
        );
        let watch_restarts = Family::<KindLabel, Counter>::default();
        registry.register(
            "kubewire_watch_restarts",
            "Watch streams that failed and were restarted, per kind",
            watch_restarts.clone(),
        );
        let sync_duration: HistogramFamily = Family::new_with_constructor(sync_histogram);
        registry.register(
            "kubewire_controller_sync_duration_seconds",
            "Time of one controller sync (compile + apply)",
            sync_duration.clone(),
        );
        let sync_errors = Family::<ControllerLabel, Counter>::default();
        registry.register(
            "kubewire_controller_sync_errors",
            "Controller syncs that failed",
            sync_errors.clone(),
        );
        let bad_objects = Family::<ControllerLabel, Gauge>::default();
        registry.register(
            "kubewire_controller_bad_objects",
            "Objects (or fields) the controller could not use in its last sync",
            bad_objects.clone(),
        );
        registry.register_collector(Box::new(super::process::ProcessCollector));
        let bad_objects_by_kind = Family::<BadObjectLabel, Gauge>::default();
        registry.register(
            "kubewire_bad_objects",
            "Objects (or fields) some controller cannot use now, by kind and reason; each is logged once naming object and field",
            bad_objects_by_kind.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            cache_objects,
            watch_restarts,
            sync_duration,
            sync_errors,
            bad_objects,
            bad_objects_by_kind,
        }
    }

    /// Adds a controller's own metric; `name` gets no prefix added.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, metric);
        }
    }

    /// `kind` as the cache names it (`Pod`).
    pub fn set_cache_objects(&self, kind: &str, count: usize) {
        self.cache_objects
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn watch_restarted(&self, kind: &str) {
        self.watch_restarts
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts a controller's newly reported bad objects and uncounts the fixed ones.
    pub fn count_bad_objects(&self, changes: &crate::runtime::BadObjectChanges) {
        let label = |bad: &crate::runtime::BadObject| BadObjectLabel {
            kind: bad.kind.clone(),
            reason: bad.reason.clone(),
        };
        for bad in &changes.new {
            self.bad_objects_by_kind.get_or_create(&label(bad)).inc();
        }
        for bad in &changes.gone {
            self.bad_objects_by_kind.get_or_create(&label(bad)).dec();
        }
    }

    pub fn controller(&self, name: &str) -> ControllerMetrics {
        let label = ControllerLabel {
            controller: name.to_string(),
        };
        ControllerMetrics {
            sync_duration: self.sync_duration.get_or_create(&label).clone(),
            sync_errors: self.sync_errors.get_or_create(&label).clone(),
            bad_objects: self.bad_objects.get_or_create(&label).clone(),
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

/// One controller's handles on the shared sync metrics.
#[derive(Clone)]
pub struct ControllerMetrics {
    sync_duration: Histogram,
    sync_errors: Counter,
    bad_objects: Gauge,
}

impl ControllerMetrics {
    pub fn observe_sync(&self, duration: Duration) {
        self.sync_duration.observe(duration.as_secs_f64());
    }

    pub fn sync_failed(&self) {
        self.sync_errors.inc();
    }

    pub fn set_bad_objects(&self, count: usize) {
        self.bad_objects
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_core_metrics() {
        let metrics = Metrics::new();
        metrics.set_cache_objects("Pod", 3);
        metrics.watch_restarted("Node");
        metrics
            .controller("firewall")
            .observe_sync(Duration::from_millis(5));
        let bad = crate::runtime::BadObject::new("Node", "no_pod_cidr", "Node n1: spec.podCIDRs");
        metrics.count_bad_objects(&crate::runtime::BadObjectChanges {
            new: vec![
                bad.clone(),
                crate::runtime::BadObject::from("Pod a/b: status.podIP"),
            ],
            gone: vec![],
        });
        metrics.count_bad_objects(&crate::runtime::BadObjectChanges {
            new: vec![],
            gone: vec![bad],
        });
        let text = metrics.encode();
        assert!(
            text.contains("kubewire_bad_objects{kind=\"Pod\",reason=\"invalid\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubewire_bad_objects{kind=\"Node\",reason=\"no_pod_cidr\"} 0"),
            "{text}"
        );
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} missing: {text}"
            );
        }
        assert!(text.contains("kubewire_build_info{version=\""), "{text}");
        assert!(
            text.contains("kubewire_cache_objects{kind=\"Pod\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("kubewire_watch_restarts_total{kind=\"Node\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "kubewire_controller_sync_duration_seconds_count{controller=\"firewall\"} 1"
            ),
            "{text}"
        );
    }
}

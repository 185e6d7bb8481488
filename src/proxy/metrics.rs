//! The proxy's Prometheus metrics, whichever backend programs it (kube-proxy's
//! `sync_proxy_rules_*` and `network_programming_duration_seconds`, under kubewire's
//! names): what the last successful sync programmed, how long syncs take, when the
//! last one succeeded, and how long an endpoint change took from the EndpointSlice
//! controller's `endpoints.kubernetes.io/last-change-trigger-time` to the kernel.
//! The slices present at the first sync are taken as already programmed (their
//! trigger times may be days old).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::model::ServiceMap;
use crate::telemetry::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `internal` or `external`.
    pub traffic_policy: String,
}

#[derive(Clone)]
pub struct ProxyMetrics {
    services: Gauge,
    endpoints: Gauge,
    no_local_endpoints: Family<PolicyLabel, Gauge>,
    sync_duration: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    programming: Histogram,
    /// Slice → trigger time already observed; `None` before the first sync.
    seen: Option<BTreeMap<String, String>>,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them with the agent's registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            services: Gauge::default(),
            endpoints: Gauge::default(),
            no_local_endpoints: Family::default(),
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            last_sync: Gauge::default(),
            programming: Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            ]),
            seen: None,
        };
        metrics.register(
            "kubewire_proxy_services",
            "Service ports (per IP family) the proxy programs",
            this.services.clone(),
        );
        metrics.register(
            "kubewire_proxy_endpoints",
            "Endpoints of Service ports the proxy programs, counted per Service port",
            this.endpoints.clone(),
        );
        metrics.register(
            "kubewire_proxy_services_without_local_endpoints",
            "Service ports with a Local traffic policy and no endpoint on this node",
            this.no_local_endpoints.clone(),
        );
        metrics.register(
            "kubewire_proxy_sync_duration_seconds",
            "How long one proxy sync took (successful or not)",
            this.sync_duration.clone(),
        );
        metrics.register(
            "kubewire_proxy_last_successful_sync_timestamp_seconds",
            "When the proxy last programmed the kernel successfully (Unix time)",
            this.last_sync.clone(),
        );
        metrics.register(
            "kubewire_proxy_network_programming_duration_seconds",
            "From an EndpointSlice's last-change-trigger-time to the proxy programming it",
            this.programming.clone(),
        );
        this
    }

    /// A sync that took `took`.
    pub fn sync_took(&self, took: Duration) {
        self.sync_duration.observe(took.as_secs_f64());
    }

    /// After `map` was programmed successfully at `now`.
    pub fn programmed(&mut self, map: &ServiceMap, now: SystemTime) {
        let counts = counts(map);
        self.services.set(counts.services);
        self.endpoints.set(counts.endpoints);
        for (policy, value) in [
            ("internal", counts.no_local_internal),
            ("external", counts.no_local_external),
        ] {
            self.no_local_endpoints
                .get_or_create(&PolicyLabel {
                    traffic_policy: policy.to_string(),
                })
                .set(value);
        }
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.last_sync.set(now_secs);
        if let Some(seen) = &self.seen {
            for latency in new_latencies(seen, &map.trigger_times, now_secs) {
                self.programming.observe(latency);
            }
        }
        self.seen = Some(map.trigger_times.clone());
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    services: i64,
    endpoints: i64,
    no_local_internal: i64,
    no_local_external: i64,
}

fn counts(map: &ServiceMap) -> Counts {
    let mut out = Counts::default();
    for port in &map.ports {
        out.services += 1;
        let mut endpoints: Vec<&SocketAddr> = port
            .cluster_endpoints
            .iter()
            .chain(&port.local_endpoints)
            .collect();
        endpoints.sort();
        endpoints.dedup();
        out.endpoints += endpoints.len() as i64;
        if port.local_endpoints.is_empty() {
            if port.internal_local {
                out.no_local_internal += 1;
            }
            if port.external_local && port.externally_accessible() {
                out.no_local_external += 1;
            }
        }
    }
    out
}

/// Seconds from each trigger time not seen before to `now` (clock skew that puts
/// one in the future gives nothing).
fn new_latencies(
    seen: &BTreeMap<String, String>,
    now_times: &BTreeMap<String, String>,
    now: f64,
) -> Vec<f64> {
    now_times
        .iter()
        .filter(|(slice, time)| seen.get(*slice) != Some(*time))
        .filter_map(|(_, time)| super::time::parse_rfc3339(time))
        .map(|at| now - at)
        .filter(|latency| *latency >= 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_programming_latency() {
        let snapshot = crate::proxy::services::tests_support::snapshot(serde_json::json!([
            {"kind": "Node", "metadata": {"name": "n1"},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}},
            {"kind": "Service", "metadata": {"name": "a", "namespace": "x"},
             "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                      "ports": [{"port": 80, "nodePort": 30080}]}},
            {"kind": "EndpointSlice", "metadata": {"name": "a-1", "namespace": "x",
                "labels": {"kubernetes.io/service-name": "a"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2024-05-01T12:00:00Z"}},
             "addressType": "IPv4", "ports": [{"port": 8080}],
             "endpoints": [{"addresses": ["10.244.2.10"], "nodeName": "n2"}, {"addresses": ["10.244.2.11"], "nodeName": "n2"}]},
            {"kind": "Service", "metadata": {"name": "b", "namespace": "x"},
             "spec": {"clusterIP": "10.96.0.11", "internalTrafficPolicy": "Local", "ports": [{"port": 80}]}},
        ]));
        let map =
            crate::proxy::services::build(&snapshot, "n1", &["10.96.0.0/16".parse().unwrap()]);
        assert_eq!(
            counts(&map),
            Counts {
                services: 2,
                endpoints: 2,
                no_local_internal: 1,
                no_local_external: 1
            }
        );
        assert_eq!(map.trigger_times["x/a-1"], "2024-05-01T12:00:00Z");
        let at = 1_714_564_800.0;
        let seen = BTreeMap::from([("x/a-1".to_string(), "2024-05-01T11:00:00Z".to_string())]);
        assert_eq!(new_latencies(&seen, &map.trigger_times, at + 1.5), [1.5]);
        assert!(new_latencies(&map.trigger_times, &map.trigger_times, at + 1.5).is_empty());
        assert!(new_latencies(&seen, &map.trigger_times, at - 1.0).is_empty());

        let registry = Metrics::new();
        let mut metrics = ProxyMetrics::register(&registry);
        metrics.programmed(
            &map,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_802),
        );
        let text = registry.encode();
        assert!(text.contains("kubewire_proxy_services 2"), "{text}");
        assert!(
            text.contains(
                "kubewire_proxy_services_without_local_endpoints{traffic_policy=\"external\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("kubewire_proxy_last_successful_sync_timestamp_seconds 1714564802"),
            "{text}"
        );
        // The first sync only learns the slices.
        assert!(
            text.contains("kubewire_proxy_network_programming_duration_seconds_count 0"),
            "{text}"
        );
    }
}

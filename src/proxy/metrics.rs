//! The proxy's Prometheus metrics, whichever backend programs it (kube-proxy's
//! `sync_proxy_rules_*` and `network_programming_duration_seconds`, under kubewire's
//! names): what the last successful sync programmed, how long syncs take, when the
//! last one succeeded, and how long an endpoint change took from the EndpointSlice
//! controller's `endpoints.kubernetes.io/last-change-trigger-time` to the kernel.
//! The slices present at the first sync are taken as already programmed (their
//! trigger times may be days old).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::model::{ServiceMap, ServicePort};
use super::services::Changed;
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
    node_address_failures: Counter,
    /// What the last successful sync programmed; `None` before the first.
    programmed: Option<Programmed>,
}

/// The gauges' sums kept per Service, so a sync recounts only the changed ones.
#[derive(Clone, Debug, Default)]
struct Programmed {
    totals: Counts,
    by_service: HashMap<String, Counts>,
    /// Per Service, its slices' trigger times already observed.
    seen: HashMap<String, Vec<(String, String)>>,
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
            node_address_failures: Counter::default(),
            programmed: None,
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
        metrics.register(
            "kubewire_proxy_node_address_read_failures",
            "Failed reads of the node's addresses for --nodeport-addresses CIDRs",
            this.node_address_failures.clone(),
        );
        this
    }

    /// A failed read of the node's addresses.
    pub fn node_address_read_failed(&self) {
        self.node_address_failures.inc();
    }

    /// A sync that took `took`.
    pub fn sync_took(&self, took: Duration) {
        self.sync_duration.observe(took.as_secs_f64());
    }

    /// After `map` was programmed successfully at `now`; `changed` says which
    /// Services changed since the last call (only those are recounted).
    pub fn programmed(&mut self, map: &ServiceMap, changed: &Changed, now: SystemTime) {
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.last_sync.set(now_secs);
        let first = self.programmed.is_none();
        let programmed = self.programmed.get_or_insert_with(Programmed::default);
        let keys: BTreeSet<String> = match changed.services() {
            Some(names) if !first => names.clone(),
            // Every Service: those programmed before and those in the map.
            _ => {
                let mut all: BTreeSet<String> = programmed.by_service.keys().cloned().collect();
                all.extend(programmed.seen.keys().cloned());
                all.extend(map.ports.iter().map(|p| p.service.clone()));
                all
            }
        };
        for key in &keys {
            let key = key.as_str();
            if let Some(old) = programmed.by_service.remove(key) {
                programmed.totals.sub(&old);
            }
            let ports = map.ports_of(key);
            if !ports.is_empty() {
                let counts = counts(ports);
                programmed.totals.add(&counts);
                programmed.by_service.insert(key.to_string(), counts);
            }
            let old = programmed.seen.remove(key).unwrap_or_default();
            let Some(times) = map.trigger_times.get(key) else {
                continue;
            };
            // The first sync only learns the slices (their times may be days old).
            if !first {
                for latency in new_latencies(&old, times, now_secs) {
                    self.programming.observe(latency);
                }
            }
            programmed.seen.insert(key.to_string(), times.clone());
        }
        let totals = &programmed.totals;
        self.services.set(totals.services);
        self.endpoints.set(totals.endpoints);
        for (policy, value) in [
            ("internal", totals.no_local_internal),
            ("external", totals.no_local_external),
        ] {
            self.no_local_endpoints
                .get_or_create(&PolicyLabel {
                    traffic_policy: policy.to_string(),
                })
                .set(value);
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counts {
    services: i64,
    endpoints: i64,
    no_local_internal: i64,
    no_local_external: i64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.services += other.services;
        self.endpoints += other.endpoints;
        self.no_local_internal += other.no_local_internal;
        self.no_local_external += other.no_local_external;
    }

    fn sub(&mut self, other: &Counts) {
        self.services -= other.services;
        self.endpoints -= other.endpoints;
        self.no_local_internal -= other.no_local_internal;
        self.no_local_external -= other.no_local_external;
    }
}

fn counts(ports: &[ServicePort]) -> Counts {
    let mut out = Counts::default();
    for port in ports {
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
fn new_latencies(seen: &[(String, String)], now_times: &[(String, String)], now: f64) -> Vec<f64> {
    now_times
        .iter()
        .filter(|entry| !seen.contains(entry))
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
            counts(&map.ports),
            Counts {
                services: 2,
                endpoints: 2,
                no_local_internal: 1,
                no_local_external: 1
            }
        );
        let slice_time = |time: &str| vec![("x/a-1".to_string(), time.to_string())];
        assert_eq!(map.trigger_times["x/a"], slice_time("2024-05-01T12:00:00Z"));
        let at = 1_714_564_800.0;
        let seen = slice_time("2024-05-01T11:00:00Z");
        let now = &map.trigger_times["x/a"];
        assert_eq!(new_latencies(&seen, now, at + 1.5), [1.5]);
        assert!(new_latencies(now, now, at + 1.5).is_empty());
        assert!(new_latencies(&seen, now, at - 1.0).is_empty());

        let registry = Metrics::new();
        let mut metrics = ProxyMetrics::register(&registry);
        let second = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        metrics.programmed(&map, &Changed::All, second(1_714_564_802));
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

        // Service x/a changes (a new trigger time, one endpoint fewer) and x/b goes:
        // only they are recounted, the new trigger time observed once.
        let mut changed = map.clone();
        changed.ports.retain(|p| p.service == "x/a");
        changed.ports[0].cluster_endpoints.pop();
        changed
            .trigger_times
            .insert("x/a".into(), slice_time("2024-05-01T12:00:01Z"));
        let both = Changed::Services(["x/a".to_string(), "x/b".to_string()].into());
        metrics.programmed(&changed, &both, second(1_714_564_803));
        metrics.programmed(&changed, &both, second(1_714_564_804));
        let text = registry.encode();
        assert!(text.contains("kubewire_proxy_services 1"), "{text}");
        assert!(text.contains("kubewire_proxy_endpoints 1"), "{text}");
        assert!(
            text.contains(
                "kubewire_proxy_services_without_local_endpoints{traffic_policy=\"internal\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("kubewire_proxy_network_programming_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("kubewire_proxy_network_programming_duration_seconds_sum 2"),
            "{text}"
        );
    }
}

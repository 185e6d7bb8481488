//! The IPVS backend's Prometheus metrics: what it keeps in the kernel and the
//! kernel's own counters per virtual service (read by the periodic dump, so they
//! are as fresh as `--sync-period`). The counters are the kernel's totals, so they
//! are exposed as gauges set to the kernel's value.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::compile::Desired;
use crate::ipvs::{ServiceKey, Stats};
use crate::telemetry::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VirtualServiceLabel {
    /// `namespace/name:port/PROTOCOL` of the Service port.
    pub service: String,
    /// The virtual service as `ipvsadm -Ln` names it: `TCP 10.96.0.10:80`.
    pub virtual_service: String,
}

#[derive(Clone, Default)]
pub struct IpvsMetrics {
    pub services: Gauge,
    pub destinations: Gauge,
    pub changes: Counter,
    pub drift_repairs: Counter,
    pub connections: Family<VirtualServiceLabel, Gauge>,
    pub packets_in: Family<VirtualServiceLabel, Gauge>,
    pub packets_out: Family<VirtualServiceLabel, Gauge>,
    pub bytes_in: Family<VirtualServiceLabel, Gauge>,
    pub bytes_out: Family<VirtualServiceLabel, Gauge>,
}

impl IpvsMetrics {
    /// Creates the metrics and registers them with the agent's registry.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self::default();
        let gauges = [
            (
                "kubewire_proxy_ipvs_services",
                "IPVS virtual services kubewire keeps",
                &this.services,
            ),
            (
                "kubewire_proxy_ipvs_destinations",
                "IPVS destinations kubewire keeps (draining ones included)",
                &this.destinations,
            ),
        ];
        for (name, help, gauge) in gauges {
            metrics.register(name, help, gauge.clone());
        }
        metrics.register(
            "kubewire_proxy_ipvs_changes",
            "IPVS services, destinations and VIPs added, changed or deleted",
            this.changes.clone(),
        );
        metrics.register(
            "kubewire_proxy_ipvs_drift_repairs",
            "Periodic dumps that found the kernel changed by someone else",
            this.drift_repairs.clone(),
        );
        let families = [
            (
                "kubewire_proxy_ipvs_connections",
                "Connections scheduled (kernel total)",
                &this.connections,
            ),
            (
                "kubewire_proxy_ipvs_packets_in",
                "Packets in (kernel total)",
                &this.packets_in,
            ),
            (
                "kubewire_proxy_ipvs_packets_out",
                "Packets out (kernel total)",
                &this.packets_out,
            ),
            (
                "kubewire_proxy_ipvs_bytes_in",
                "Bytes in (kernel total)",
                &this.bytes_in,
            ),
            (
                "kubewire_proxy_ipvs_bytes_out",
                "Bytes out (kernel total)",
                &this.bytes_out,
            ),
        ];
        for (name, help, family) in families {
            metrics.register(name, help, family.clone());
        }
        this
    }

    /// Sets the per-service counters from a dump (services no longer there vanish).
    pub fn observe_stats(&self, stats: &[(ServiceKey, Stats)], desired: &Desired) {
        let families = [
            &self.connections,
            &self.packets_in,
            &self.packets_out,
            &self.bytes_in,
            &self.bytes_out,
        ];
        families.iter().for_each(|f| f.clear());
        for (key, stats) in stats {
            let Some(server) = desired.services.get(key) else {
                continue;
            };
            let label = VirtualServiceLabel {
                service: server.owner.clone(),
                virtual_service: key.to_string(),
            };
            let values = [
                stats.connections,
                stats.packets_in,
                stats.packets_out,
                stats.bytes_in,
                stats.bytes_out,
            ];
            for (family, value) in families.iter().zip(values) {
                family
                    .get_or_create(&label)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::{Protocol, Service};
    use crate::proxy::ipvs::compile::VirtualServer;

    #[test]
    fn kernel_counters_are_labelled_with_the_service_port() {
        let registry = Metrics::new();
        let metrics = IpvsMetrics::register(&registry);
        let key = ServiceKey::Address {
            protocol: Protocol::Tcp,
            address: "10.96.0.10".parse().unwrap(),
            port: 80,
        };
        let mut desired = Desired::default();
        desired.services.insert(
            key,
            VirtualServer {
                service: Service::new(key, "rr"),
                destinations: Default::default(),
                owner: "x/web:http/TCP".into(),
            },
        );
        let stats = Stats {
            connections: 7,
            bytes_in: 700,
            ..Stats::default()
        };
        let gone = ServiceKey::Address {
            protocol: Protocol::Udp,
            address: "10.96.0.11".parse().unwrap(),
            port: 53,
        };
        metrics.observe_stats(&[(key, stats), (gone, stats)], &desired);
        let text = registry.encode();
        assert!(
            text.contains(
                "kubewire_proxy_ipvs_connections{service=\"x/web:http/TCP\",virtual_service=\"TCP 10.96.0.10:80\"} 7"
            ),
            "{text}"
        );
        assert!(!text.contains("10.96.0.11"), "{text}");
    }
}

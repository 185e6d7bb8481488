//! Compiles a [`ServiceMap`] into what the IPVS backend keeps in the kernel (pure):
//! one IPVS virtual service per frontend (ClusterIP, externalIP, LoadBalancer IP,
//! NodePort on each node address) with its destinations, the VIP addresses the
//! dummy interface must hold so that the node accepts packets to them, and the
//! nftables glue table ([`crate::proxy::nftables::compile::glue`]) for what IPVS
//! cannot do: masquerade, loadBalancerSourceRanges, reject without endpoints,
//! hairpin.
//!
//! Every frontend gets a virtual service even without usable endpoints (the glue
//! rejects or drops its new connections first), so that scaling to zero drains the
//! destinations gracefully instead of deleting the service under its connections.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::schedule;
use crate::ipvs::{Destination, Service, ServiceKey};
use crate::proxy::model::{FrontendKind, Protocol, ServiceMap, ServicePort};
use crate::proxy::nftables::{compile::glue, ruleset::Ruleset};

/// The dummy interface that holds the VIPs (kube-proxy's and kube-router's name).
pub const DUMMY_INTERFACE: &str = "kube-ipvs0";

/// One virtual service as kubewire wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub service: Service,
    /// Keyed by address and port, as the kernel keys them.
    pub destinations: BTreeMap<SocketAddr, Destination>,
    /// `ns/name:port/PROTO` of the Service port it serves, for messages.
    pub owner: String,
}

/// Everything the IPVS backend keeps in the kernel for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ServiceKey, VirtualServer>,
    /// Addresses on [`DUMMY_INTERFACE`]: ClusterIPs, externalIPs, LoadBalancer IPs.
    pub vips: BTreeSet<IpAddr>,
    pub glue: Ruleset,
}

/// Whether a kernel service is one of ours: kubewire sets scheduler flag 3, which
/// no scheduler reads, on every service it creates, so that `cleanup` and the
/// reconciler never touch a service someone else made, even on a node address.
pub fn is_ours(service: &Service) -> bool {
    service.flags.sched_flag3
}

/// The desired state for `map`, and problems found (annotations, frontends claimed
/// twice).
pub fn compile(map: &ServiceMap) -> (Desired, Vec<String>) {
    let (glue, mut problems) = glue(map);
    let mut desired = Desired {
        glue,
        ..Desired::default()
    };
    let schedulings: Vec<schedule::Scheduling> = map
        .ports
        .iter()
        .map(|port| {
            schedule::parse(
                &port.label(),
                port.scheduler.as_deref(),
                port.sched_flags.as_deref(),
                &mut problems,
            )
        })
        .collect();
    // ClusterIPs first, as the glue claims them: the first claim of an address wins
    // (the glue has reported the others).
    for cluster_ip in [true, false] {
        for (port, scheduling) in map.ports.iter().zip(&schedulings) {
            for frontend in port.frontends(&map.node_port_ips) {
                if (frontend.kind == FrontendKind::ClusterIp) != cluster_ip {
                    continue;
                }
                let key = ServiceKey::Address {
                    protocol: protocol(frontend.protocol),
                    address: frontend.address,
                    port: frontend.port,
                };
                if desired.services.contains_key(&key) {
                    continue;
                }
                if frontend.kind != FrontendKind::NodePort {
                    desired.vips.insert(frontend.address);
                }
                let server = virtual_server(key, port, frontend.kind, scheduling);
                desired.services.insert(key, server);
            }
        }
    }
    (desired, problems)
}

fn virtual_server(
    key: ServiceKey,
    port: &ServicePort,
    kind: FrontendKind,
    scheduling: &schedule::Scheduling,
) -> VirtualServer {
    let mut service = Service::new(key, scheduling.scheduler);
    service.flags.sched_flag3 = true;
    scheduling.apply(&mut service.flags);
    if let Some(timeout) = port.affinity_timeout {
        service.flags.persistent = true;
        service.timeout = timeout;
    }
    let endpoints: &[SocketAddr] = match (port.has_endpoints, kind) {
        (false, _) => &[],
        (true, FrontendKind::ClusterIp) => port.internal_endpoints(),
        (true, _) => port.external_endpoints(),
    };
    VirtualServer {
        service,
        destinations: endpoints
            .iter()
            .map(|e| (*e, Destination::new(e.ip(), e.port())))
            .collect(),
        owner: port.label(),
    }
}

pub fn protocol(protocol: Protocol) -> crate::ipvs::Protocol {
    match protocol {
        Protocol::Tcp => crate::ipvs::Protocol::Tcp,
        Protocol::Udp => crate::ipvs::Protocol::Udp,
        Protocol::Sctp => crate::ipvs::Protocol::Sctp,
    }
}

/// One line per virtual service, as `ipvsadm -Ln` would show it, with the Service
/// port it serves.
pub fn service_line(server: &VirtualServer) -> String {
    let service = &server.service;
    let mut line = format!("{} {}", service.key, service.scheduler);
    let flags = &service.flags;
    for (set, name) in [
        (flags.sched_fallback, "flag-1"),
        (flags.sched_port, "flag-2"),
    ] {
        if set {
            line.push_str(&format!(" {name}"));
        }
    }
    if flags.persistent {
        line.push_str(&format!(" persistent {}", service.timeout));
    }
    line.push_str(&format!("  # {}", server.owner));
    line
}

/// `proxy plan --backend ipvs`: the virtual services and their destinations, the
/// VIPs, then the glue table as `nft -f` text.
pub fn render(desired: &Desired, node: &str) -> String {
    let destinations: usize = desired
        .services
        .values()
        .map(|s| s.destinations.len())
        .sum();
    let mut text = format!(
        "# node {node}: {} IPVS services, {destinations} destinations, {} addresses on {DUMMY_INTERFACE}\n",
        desired.services.len(),
        desired.vips.len()
    );
    text.push_str("# IPVS virtual services (ipvsadm -Ln)\n");
    for server in desired.services.values() {
        let _ = writeln!(text, "{}", service_line(server));
        for destination in server.destinations.values() {
            let _ = writeln!(text, "  -> {destination} Masq {}", destination.weight);
        }
    }
    let _ = writeln!(text, "# addresses on {DUMMY_INTERFACE}");
    for vip in &desired.vips {
        let prefix = if vip.is_ipv6() { 128 } else { 32 };
        let _ = writeln!(text, "{vip}/{prefix}");
    }
    text.push_str("# nftables glue\n");
    text.push_str(&crate::proxy::nftables::ruleset::full(&desired.glue).text());
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::services;
    use serde_json::json;

    fn map(extra: serde_json::Value) -> ServiceMap {
        let mut objects = vec![
            json!({"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}),
            json!({"kind": "Service", "metadata": {"name": "web", "namespace": "x",
                    "annotations": {"kube-router.io/service.scheduler": "mh",
                                    "kube-router.io/service.schedflags": "flag-1,flag-2"}},
             "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                      "sessionAffinity": "ClientIP",
                      "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}),
            json!({"kind": "EndpointSlice", "metadata": {"name": "web-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "web"}},
             "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
             "endpoints": [{"addresses": ["10.244.1.10"], "nodeName": "n1"}, {"addresses": ["10.244.2.10"], "nodeName": "n2"}]}),
            json!({"kind": "Service", "metadata": {"name": "empty", "namespace": "x"},
             "spec": {"clusterIP": "10.96.0.11", "externalIPs": ["10.96.0.10", "203.0.113.7"], "ports": [{"port": 80}]}}),
            json!({"kind": "Service", "metadata": {"name": "lb", "namespace": "x"},
             "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.12", "loadBalancerSourceRanges": ["203.0.113.0/24"],
                      "ports": [{"port": 443, "protocol": "UDP", "nodePort": 30443}]},
             "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}}),
            json!({"kind": "EndpointSlice", "metadata": {"name": "lb-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "lb"}},
             "addressType": "IPv4", "ports": [{"port": 443, "protocol": "UDP"}],
             "endpoints": [{"addresses": ["10.244.3.1"], "nodeName": "n3"}]}),
        ];
        if let serde_json::Value::Array(more) = extra {
            objects.extend(more);
        }
        let snapshot = services::tests_support::snapshot(serde_json::Value::Array(objects));
        services::build(&snapshot, "n1", &["10.96.0.0/16".parse().unwrap()])
    }

    fn table(desired: &Desired) -> Vec<String> {
        let mut out = Vec::new();
        for server in desired.services.values() {
            out.push(service_line(server));
            for d in server.destinations.values() {
                out.push(format!("  -> {d}"));
            }
        }
        out
    }

    #[test]
    fn every_frontend_is_a_virtual_service_with_the_endpoints_its_policy_picks() {
        let (desired, problems) = compile(&map(json!([])));
        assert_eq!(
            table(&desired),
            [
                "TCP 10.96.0.10:80 mh flag-1 flag-2 persistent 10800  # x/web:http/TCP",
                "  -> 10.244.1.10:8080",
                "  -> 10.244.2.10:8080",
                "TCP 10.96.0.11:80 rr  # x/empty:80/TCP",
                // externalTrafficPolicy Local: this node's endpoint only.
                "TCP 192.168.0.1:30080 mh flag-1 flag-2 persistent 10800  # x/web:http/TCP",
                "  -> 10.244.1.10:8080",
                "TCP 203.0.113.7:80 rr  # x/empty:80/TCP",
                "UDP 10.96.0.12:443 rr  # x/lb:443/UDP",
                "  -> 10.244.3.1:443",
                "UDP 192.168.0.1:30443 rr  # x/lb:443/UDP",
                "  -> 10.244.3.1:443",
                "UDP 198.51.100.1:443 rr  # x/lb:443/UDP",
                "  -> 10.244.3.1:443",
            ]
        );
        let vips: Vec<String> = desired.vips.iter().map(IpAddr::to_string).collect();
        assert_eq!(
            vips,
            [
                "10.96.0.10",
                "10.96.0.11",
                "10.96.0.12",
                "198.51.100.1",
                "203.0.113.7"
            ]
        );
        assert!(desired.services.values().all(|s| is_ours(&s.service)));
        // The externalIP that is another Service's ClusterIP is reported (by the
        // glue) and not taken.
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("already served by x/web"));
    }

    #[test]
    fn the_glue_filters_and_masquerades_but_never_dnats() {
        let (desired, _) = compile(&map(json!([])));
        let text = crate::proxy::nftables::ruleset::full(&desired.glue).text();
        assert!(!text.contains("dnat"), "{text}");
        assert!(!text.contains("type nat hook prerouting"), "{text}");
        for expected in [
            "chain mark-prerouting",
            "type filter hook prerouting priority -100",
            "10.96.0.11 . tcp . 80 : goto reject-packet",
            "198.51.100.1 . udp . 443 . 203.0.113.0/24",
            "ip saddr . ip daddr @hairpin4 masquerade",
            "ip saddr != @pod-cidrs4 meta mark set meta mark | 0x4000",
        ] {
            assert!(text.contains(expected), "{expected} not in\n{text}");
        }
        assert!(!desired.glue.sets.contains_key("endpoints4"));
        assert!(!desired.glue.chains.contains_key("endpoints-1"));
        assert_eq!(
            desired.glue.chains["external-local"].rules,
            ["fib saddr type local meta mark set meta mark | 0x4000"]
        );
    }

    #[test]
    fn local_policy_without_local_endpoints_drops_in_the_glue() {
        let mut m = map(json!([]));
        for port in m.ports.iter_mut().filter(|p| p.service == "x/web") {
            port.local_endpoints.clear();
        }
        let (desired, _) = compile(&m);
        let key = ServiceKey::Address {
            protocol: crate::ipvs::Protocol::Tcp,
            address: "192.168.0.1".parse().unwrap(),
            port: 30080,
        };
        assert!(desired.services[&key].destinations.is_empty());
        let text = crate::proxy::nftables::ruleset::full(&desired.glue).text();
        assert!(text.contains("192.168.0.1 . tcp . 30080 : drop"), "{text}");
    }

    #[test]
    fn the_plan_lists_services_vips_and_glue() {
        let (desired, _) = compile(&map(json!([])));
        let text = render(&desired, "n1");
        assert!(text.starts_with(
            "# node n1: 7 IPVS services, 6 destinations, 5 addresses on kube-ipvs0\n"
        ));
        assert!(text.contains("  -> 10.244.1.10:8080 Masq 1\n"));
        assert!(text.contains("\n10.96.0.10/32\n"));
        assert!(text.contains("# nftables glue\n"));
    }
}

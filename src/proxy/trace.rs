//! The reference decision of one node's proxy for one packet (what `proxy trace`
//! prints), read straight off the [`ServiceMap`] with kube-proxy's rules:
//!
//! - a Service port without any usable endpoint rejects on every address;
//! - ClusterIP traffic goes to the internal policy's endpoints (none on this node
//!   under internalTrafficPolicy Local → drop), masqueraded when it does not come from
//!   a pod CIDR (only when pod CIDRs of that family are known, like kube-proxy's
//!   `--cluster-cidr` detector) or always with `--masquerade-all`;
//! - NodePorts answer on the node's NodePort addresses (`--nodeport-addresses`);
//!   "the node's own traffic" is a source among the Node's addresses (the datapath
//!   asks the kernel, `fib saddr type local`, which also knows addresses the Node
//!   object does not list);
//! - external traffic (NodePort on the node's addresses, externalIPs, LB IPs): LB IPs
//!   drop sources outside loadBalancerSourceRanges; under externalTrafficPolicy Cluster
//!   it is always masqueraded; under Local, pod traffic goes to every endpoint
//!   unmasqueraded, the node's own traffic to every endpoint masqueraded, and the rest
//!   to this node's endpoints unmasqueraded (none → drop);
//! - a packet from an endpoint that may land on that same endpoint (hairpin) is
//!   masqueraded;
//! - a ClusterIP on a port no Service serves rejects; the ClusterIP of a Service
//!   another proxy owns is left alone; any other address in a service CIDR drops;
//! - a node address on a `healthCheckNodePort` is the proxy's health server (200
//!   with the count of local endpoints, 503 without); everything else is not the proxy's business (`none`).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use super::model::{FrontendKind, Protocol, ServiceMap, ServicePort};

/// What the proxy does to the packet (the JSON `proxy trace` prints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    Forward {
        /// Every endpoint the packet may go to, sorted (`[fd00::1]:80` for IPv6).
        backends: Vec<String>,
        masquerade: bool,
        /// sessionAffinity ClientIP: a new connection from the same client within
        /// this many seconds of its last one goes where that one went.
        #[serde(skip_serializing_if = "Option::is_none")]
        affinity_seconds: Option<u32>,
    },
    Drop,
    Reject,
    None,
}

/// A verdict and, for people, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub verdict: Verdict,
    pub reason: String,
}

/// The packet `from` → `to`:`port`/`protocol` arriving at (or leaving) the node of `map`.
pub fn trace(map: &ServiceMap, from: IpAddr, to: IpAddr, port: u16, protocol: Protocol) -> Trace {
    if from.is_ipv6() != to.is_ipv6() {
        return done(
            Verdict::None,
            "source and destination are of different IP families",
        );
    }
    // A ClusterIP wins over another Service's externalIP, LB IP or NodePort on the
    // same address and port (as the nftables compiler claims them first).
    let matched = map
        .ports
        .iter()
        .filter(|p| p.protocol == protocol)
        .flat_map(|p| {
            p.frontends(&map.node_port_ips)
                .into_iter()
                .map(move |f| (p, f))
        })
        .filter(|(_, f)| f.address == to && f.port == port)
        .min_by_key(|(_, f)| f.kind != FrontendKind::ClusterIp);
    if let Some((service_port, frontend)) = matched {
        let mut trace = decide(map, service_port, frontend.kind, from);
        trace.reason = format!(
            "{} {} {}: {}",
            service_port.label(),
            frontend.kind.as_str(),
            SocketAddr::new(to, port),
            trace.reason
        );
        return trace;
    }
    if let Some(service_port) = map.ports.iter().find(|p| p.cluster_ip == to) {
        return done(
            Verdict::Reject,
            &format!(
                "{} is the ClusterIP of {}, which serves no {protocol} port {port}",
                to, service_port.service
            ),
        );
    }
    if protocol == Protocol::Tcp
        && (map.node_ips.contains(&to) || map.node_port_ips.contains(&to))
        && let Some(port_of) = map
            .ports
            .iter()
            .find(|p| p.health_check_node_port == Some(port))
    {
        let (wanted, _) = super::health::desired(map);
        let local = wanted.get(&port).map_or(0, |h| h.local_endpoints);
        let answer = if local > 0 {
            format!("200, {local} local endpoints")
        } else {
            "503, no local endpoint".to_string()
        };
        return done(
            Verdict::None,
            &format!(
                "{to}:{port} is the healthCheckNodePort of {}: the proxy's health server answers ({answer})",
                port_of.service
            ),
        );
    }
    if let Some((_, service)) = map.foreign_ips.iter().find(|(ip, _)| *ip == to) {
        return done(
            Verdict::None,
            &format!(
                "{to} is the ClusterIP of {service}, which another proxy owns (service-proxy-name)"
            ),
        );
    }
    if let Some(cidr) = map.service_cidrs.iter().find(|c| c.contains(&to)) {
        return done(
            Verdict::Drop,
            &format!("{to} is in service CIDR {cidr} but is no Service's ClusterIP"),
        );
    }
    done(Verdict::None, "no Service answers on this address and port")
}

fn done(verdict: Verdict, reason: &str) -> Trace {
    Trace {
        verdict,
        reason: reason.to_string(),
    }
}

/// Whether pod CIDRs of `ip`'s family are known and one holds it; `None` when none
/// of that family are known (traffic cannot be told apart, like kube-proxy without a
/// local-traffic detector).
pub fn from_pod(pod_cidrs: &[IpNet], ip: IpAddr) -> Option<bool> {
    let family: Vec<&IpNet> = pod_cidrs
        .iter()
        .filter(|c| matches!(c, IpNet::V6(_)) == ip.is_ipv6())
        .collect();
    (!family.is_empty()).then(|| family.iter().any(|c| c.contains(&ip)))
}

fn decide(map: &ServiceMap, port: &ServicePort, kind: FrontendKind, from: IpAddr) -> Trace {
    if !port.has_endpoints {
        return done(Verdict::Reject, "the Service has no usable endpoints");
    }
    let pod = from_pod(&map.pod_cidrs, from);
    let (endpoints, masquerade, why) = match kind {
        FrontendKind::ClusterIp => {
            if port.internal_endpoints().is_empty() {
                return done(
                    Verdict::Drop,
                    "internalTrafficPolicy Local and no endpoint on this node",
                );
            }
            let off_cluster = map.masquerade_all || pod == Some(false);
            let why = if port.internal_local {
                "to this node's endpoints (internalTrafficPolicy Local)"
            } else if port.topology_zone.is_some() {
                "to the endpoints hinted for this node's zone"
            } else {
                "to every endpoint"
            };
            (port.internal_endpoints(), off_cluster, why)
        }
        _ => {
            if kind == FrontendKind::LoadBalancer && !port.source_allowed(from, &map.node_ips) {
                return done(
                    Verdict::Drop,
                    "the source is outside loadBalancerSourceRanges",
                );
            }
            if !port.external_local {
                (
                    port.cluster_endpoints.as_slice(),
                    true,
                    if port.topology_zone.is_some() {
                        "to the endpoints hinted for this node's zone (externalTrafficPolicy Cluster)"
                    } else {
                        "to every endpoint (externalTrafficPolicy Cluster)"
                    },
                )
            } else if pod == Some(true) {
                (
                    port.cluster_endpoints.as_slice(),
                    false,
                    "pod traffic to every endpoint (externalTrafficPolicy Local does not apply)",
                )
            } else if map.node_ips.contains(&from) {
                (
                    port.cluster_endpoints.as_slice(),
                    true,
                    "the node's own traffic to every endpoint",
                )
            } else if port.local_endpoints.is_empty() {
                return done(
                    Verdict::Drop,
                    "externalTrafficPolicy Local and no endpoint on this node",
                );
            } else {
                (
                    port.local_endpoints.as_slice(),
                    false,
                    "to this node's endpoints (externalTrafficPolicy Local)",
                )
            }
        }
    };
    let hairpin = endpoints.iter().any(|e| e.ip() == from);
    let mut backends: Vec<String> = endpoints.iter().map(SocketAddr::to_string).collect();
    backends.sort();
    let mut reason = why.to_string();
    if masquerade {
        reason.push_str(", masqueraded");
    } else if hairpin {
        reason.push_str(", masqueraded when it lands on its own source (hairpin)");
    }
    if let Some(timeout) = port.affinity_timeout {
        reason.push_str(&format!(
            "; ClientIP affinity: a client's new connection within {timeout}s of its last one goes to the endpoint that one got"
        ));
    }
    Trace {
        verdict: Verdict::Forward {
            backends,
            masquerade: masquerade || hairpin,
            affinity_seconds: port.affinity_timeout,
        },
        reason,
    }
}

/// What the compiled nftables rules do to the same packet: the map compiled and
/// lowered to the table the reconciler applies, and the packet followed through it
/// by [`crate::nft::trace::trace_flow`] (every numgen bucket), with the node's
/// addresses as its local ones. Errors name a rule the tracer cannot evaluate or
/// buckets that disagree on the packet's fate.
pub fn compiled(
    map: &ServiceMap,
    from: IpAddr,
    to: IpAddr,
    port: u16,
    protocol: Protocol,
) -> Result<Verdict, String> {
    use crate::nft::trace::{Fate, Packet, trace_flow};
    if from.is_ipv6() != to.is_ipv6() {
        return Ok(Verdict::None);
    }
    let (ruleset, _) = super::nftables::compile::compile(map);
    let table = super::nftables::ruleset::Lowering::default().lower(&ruleset);
    let mut local = map.node_ips.clone();
    local.extend(&map.node_port_ips);
    let packet = Packet::new(from, to, protocol.nft(), port);
    let flows = trace_flow(&table, &packet, &local).map_err(|e| e.to_string())?;
    let fates: std::collections::BTreeSet<String> = flows
        .iter()
        .map(|f| format!("{:?} dnat={}", f.fate, f.dnat))
        .collect();
    if fates.len() != 1 {
        return Err(format!("the numgen buckets disagree: {fates:?}"));
    }
    let first = &flows[0];
    Ok(match (first.fate, first.dnat) {
        (Fate::Drop, _) => Verdict::Drop,
        (Fate::Reject, _) => Verdict::Reject,
        (Fate::Accept, false) => Verdict::None,
        (Fate::Accept, true) => {
            let backends: std::collections::BTreeSet<String> = flows
                .iter()
                .map(|f| SocketAddr::new(f.daddr, f.dport).to_string())
                .collect();
            Verdict::Forward {
                backends: backends.into_iter().collect(),
                masquerade: flows.iter().any(|f| f.masquerade),
                affinity_seconds: flows.iter().find_map(|f| f.affinity_seconds),
            }
        }
    })
}

/// Whether the compiled rules' verdict is the reference's (both backends keep
/// ClientIP affinity for both families, so they must be equal).
pub fn agrees(reference: &Verdict, compiled: &Verdict) -> bool {
    reference == compiled
}

/// The text `proxy trace` prints for people.
pub fn render_text(trace: &Trace) -> String {
    let head = match &trace.verdict {
        Verdict::Forward {
            backends,
            masquerade,
            ..
        } => format!(
            "forward to {}{}",
            backends.join(", "),
            if *masquerade { " (masqueraded)" } else { "" }
        ),
        Verdict::Drop => "drop".to_string(),
        Verdict::Reject => "reject".to_string(),
        Verdict::None => "none (the proxy does not touch this packet)".to_string(),
    };
    format!("{head}\n  because: {}\n", trace.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::services::{self, SERVICE_NAME_LABEL};
    use serde_json::{Value, json};

    const NODE_IP: &str = "192.168.0.1";
    const OTHER_NODE_IP: &str = "192.168.0.2";
    const POD: &str = "10.244.2.5";
    const EXTERNAL: &str = "203.0.113.9";

    fn cluster(extra: Vec<Value>) -> ServiceMap {
        let mut objects = vec![
            json!({"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24", "fd10:1::/64"]},
                   "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "InternalIP", "address": "fd99::1"}]}}),
            json!({"kind": "Node", "metadata": {"name": "n2"}, "spec": {"podCIDRs": ["10.244.2.0/24", "fd10:2::/64"]},
                   "status": {"addresses": [{"type": "InternalIP", "address": OTHER_NODE_IP}]}}),
        ];
        objects.extend(extra);
        let snapshot = crate::proxy::services::tests_support::snapshot(Value::Array(objects));
        services::build(&snapshot, "n1", &["10.96.0.0/16".parse().unwrap()])
    }

    /// A Service `x/<name>` with `spec`, and a slice with `endpoints` as
    /// (ip, node, ready) on port 8080 ("http").
    fn service(
        name: &str,
        spec: Value,
        status: Value,
        endpoints: &[(&str, &str, bool)],
    ) -> Vec<Value> {
        let family = if endpoints.iter().any(|e| e.0.contains(':')) {
            "IPv6"
        } else {
            "IPv4"
        };
        let eps: Vec<Value> = endpoints
            .iter()
            .map(|(ip, node, ready)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}))
            .collect();
        vec![
            json!({"kind": "Service", "metadata": {"name": name, "namespace": "x"}, "spec": spec, "status": status}),
            json!({"kind": "EndpointSlice", "metadata": {"name": format!("{name}-1"), "namespace": "x",
                   "labels": {SERVICE_NAME_LABEL: name}},
                   "addressType": family, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps}),
        ]
    }

    fn fwd(backends: &[&str], masquerade: bool) -> Verdict {
        Verdict::Forward {
            backends: backends.iter().map(|b| b.to_string()).collect(),
            masquerade,
            affinity_seconds: None,
        }
    }

    fn check(map: &ServiceMap, cases: &[(&str, &str, &str, u16, Protocol, Verdict)]) {
        for (what, from, to, port, protocol, expected) in cases {
            let got = trace(
                map,
                from.parse().unwrap(),
                to.parse().unwrap(),
                *port,
                *protocol,
            );
            assert_eq!(&got.verdict, expected, "{what}: {}", got.reason);
            let (from, to) = (from.parse().unwrap(), to.parse().unwrap());
            let compiled = compiled(map, from, to, *port, *protocol)
                .unwrap_or_else(|e| panic!("{what}: the compiled rules: {e}"));
            assert!(
                agrees(expected, &compiled),
                "{what}: the compiled rules say {compiled:?}"
            );
        }
    }

    const TCP: Protocol = Protocol::Tcp;
    const UDP: Protocol = Protocol::Udp;

    #[test]
    fn cluster_ip() {
        let mut objects = service(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}),
            json!({}),
            &[
                ("10.244.1.10", "n1", true),
                ("10.244.2.10", "n2", true),
                ("10.244.2.11", "n2", false),
            ],
        );
        objects.extend(service(
            "empty",
            json!({"clusterIP": "10.96.0.11", "ports": [{"name": "http", "port": 80}]}),
            json!({}),
            &[("10.244.2.12", "n2", false)],
        ));
        objects.push(
            json!({"kind": "Service", "metadata": {"name": "headless", "namespace": "x"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        );
        let map = cluster(objects);
        let both = ["10.244.1.10:8080", "10.244.2.10:8080"];
        check(
            &map,
            &[
                (
                    "pod to ClusterIP",
                    POD,
                    "10.96.0.10",
                    80,
                    TCP,
                    fwd(&both, false),
                ),
                (
                    "node to ClusterIP is off-cluster",
                    NODE_IP,
                    "10.96.0.10",
                    80,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "outside to ClusterIP is masqueraded",
                    EXTERNAL,
                    "10.96.0.10",
                    80,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "hairpin",
                    "10.244.1.10",
                    "10.96.0.10",
                    80,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "wrong protocol",
                    POD,
                    "10.96.0.10",
                    80,
                    UDP,
                    Verdict::Reject,
                ),
                (
                    "unknown port of a ClusterIP",
                    POD,
                    "10.96.0.10",
                    81,
                    TCP,
                    Verdict::Reject,
                ),
                ("no endpoints", POD, "10.96.0.11", 80, TCP, Verdict::Reject),
                (
                    "unallocated service address",
                    POD,
                    "10.96.0.99",
                    80,
                    TCP,
                    Verdict::Drop,
                ),
                (
                    "not a service",
                    POD,
                    "10.244.1.10",
                    8080,
                    TCP,
                    Verdict::None,
                ),
                (
                    "outside the service CIDR",
                    POD,
                    "10.97.0.1",
                    80,
                    TCP,
                    Verdict::None,
                ),
                (
                    "families differ",
                    "fd10:2::5",
                    "10.96.0.10",
                    80,
                    TCP,
                    Verdict::None,
                ),
            ],
        );
    }

    #[test]
    fn health_check_node_ports_and_foreign_cluster_ips() {
        let mut objects = service(
            "hc",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.40", "externalTrafficPolicy": "Local",
                   "healthCheckNodePort": 32100, "ports": [{"name": "http", "port": 80, "nodePort": 30100}]}),
            json!({}),
            &[("10.244.1.40", "n1", true)],
        );
        objects.push(
            json!({"kind": "Service", "metadata": {"name": "theirs", "namespace": "x",
            "labels": {"service.kubernetes.io/service-proxy-name": "other"}},
            "spec": {"clusterIP": "10.96.0.41", "ports": [{"port": 80}]}}),
        );
        let map = cluster(objects);
        let got = trace(
            &map,
            EXTERNAL.parse().unwrap(),
            NODE_IP.parse().unwrap(),
            32100,
            TCP,
        );
        assert_eq!(got.verdict, Verdict::None);
        assert!(
            got.reason.contains("healthCheckNodePort of x/hc")
                && got.reason.contains("200, 1 local"),
            "{}",
            got.reason
        );
        let got = trace(
            &map,
            POD.parse().unwrap(),
            "10.96.0.41".parse().unwrap(),
            80,
            TCP,
        );
        assert_eq!(got.verdict, Verdict::None);
        assert!(got.reason.contains("another proxy"), "{}", got.reason);
    }

    #[test]
    fn masquerade_all_masquerades_pod_traffic_too() {
        let mut map = cluster(service(
            "web",
            json!({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}),
            json!({}),
            &[("10.244.2.10", "n2", true)],
        ));
        check(
            &map,
            &[(
                "pod",
                POD,
                "10.96.0.10",
                80,
                TCP,
                fwd(&["10.244.2.10:8080"], false),
            )],
        );
        map.masquerade_all = true;
        check(
            &map,
            &[(
                "pod",
                POD,
                "10.96.0.10",
                80,
                TCP,
                fwd(&["10.244.2.10:8080"], true),
            )],
        );
    }

    #[test]
    fn internal_traffic_policy_local() {
        let mut objects = service(
            "local",
            json!({"clusterIP": "10.96.0.20", "internalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}),
            json!({}),
            &[("10.244.1.20", "n1", true), ("10.244.2.20", "n2", true)],
        );
        objects.extend(service(
            "remote",
            json!({"clusterIP": "10.96.0.21", "internalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}),
            json!({}),
            &[("10.244.2.21", "n2", true)],
        ));
        objects.extend(service(
            "nothing",
            json!({"clusterIP": "10.96.0.22", "internalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}),
            json!({}),
            &[],
        ));
        let map = cluster(objects);
        check(
            &map,
            &[
                (
                    "only this node's endpoint",
                    POD,
                    "10.96.0.20",
                    80,
                    TCP,
                    fwd(&["10.244.1.20:8080"], false),
                ),
                (
                    "no local endpoint drops",
                    POD,
                    "10.96.0.21",
                    80,
                    TCP,
                    Verdict::Drop,
                ),
                (
                    "no endpoint at all rejects",
                    POD,
                    "10.96.0.22",
                    80,
                    TCP,
                    Verdict::Reject,
                ),
            ],
        );
    }

    #[test]
    fn node_port_external_ip_and_load_balancer() {
        let spec = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.30", "externalIPs": ["198.51.100.1"],
            "loadBalancerSourceRanges": ["203.0.113.0/24", "192.168.0.0/24"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]});
        let status = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.2"}]}});
        let map = cluster(service(
            "lb",
            spec,
            status,
            &[("10.244.1.30", "n1", true), ("10.244.2.30", "n2", true)],
        ));
        let both = ["10.244.1.30:8080", "10.244.2.30:8080"];
        check(
            &map,
            &[
                (
                    "NodePort on this node",
                    EXTERNAL,
                    NODE_IP,
                    30080,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "NodePort from a pod is masqueraded too",
                    POD,
                    NODE_IP,
                    30080,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "NodePort on another node's IP",
                    EXTERNAL,
                    OTHER_NODE_IP,
                    30080,
                    TCP,
                    Verdict::None,
                ),
                (
                    "NodePort, wrong protocol",
                    EXTERNAL,
                    NODE_IP,
                    30080,
                    UDP,
                    Verdict::None,
                ),
                (
                    "NodePort on the Service port",
                    EXTERNAL,
                    NODE_IP,
                    80,
                    TCP,
                    Verdict::None,
                ),
                (
                    "externalIP",
                    EXTERNAL,
                    "198.51.100.1",
                    80,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "externalIP ignores source ranges",
                    "8.8.8.8",
                    "198.51.100.1",
                    80,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "LB IP from an allowed range",
                    EXTERNAL,
                    "198.51.100.2",
                    80,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "LB IP from elsewhere",
                    "8.8.8.8",
                    "198.51.100.2",
                    80,
                    TCP,
                    Verdict::Drop,
                ),
                (
                    "LB IP from itself, a range holds the node",
                    "198.51.100.2",
                    "198.51.100.2",
                    80,
                    TCP,
                    fwd(&both, true),
                ),
            ],
        );
    }

    #[test]
    fn external_traffic_policy_local() {
        let mut objects = service(
            "np",
            json!({"type": "NodePort", "clusterIP": "10.96.0.40", "externalTrafficPolicy": "Local", "externalIPs": ["198.51.100.4"],
                   "ports": [{"name": "http", "port": 80, "nodePort": 30040}]}),
            json!({}),
            &[("10.244.1.40", "n1", true), ("10.244.2.40", "n2", true)],
        );
        objects.extend(service(
            "far",
            json!({"type": "NodePort", "clusterIP": "10.96.0.41", "externalTrafficPolicy": "Local",
                   "ports": [{"name": "http", "port": 80, "nodePort": 30041}]}),
            json!({}),
            &[("10.244.2.41", "n2", true)],
        ));
        objects.extend(service(
            "gone",
            json!({"type": "NodePort", "clusterIP": "10.96.0.42", "externalTrafficPolicy": "Local",
                   "ports": [{"name": "http", "port": 80, "nodePort": 30042}]}),
            json!({}),
            &[("10.244.2.42", "n2", false)],
        ));
        let map = cluster(objects);
        let both = ["10.244.1.40:8080", "10.244.2.40:8080"];
        check(
            &map,
            &[
                (
                    "outside: local endpoint, source kept",
                    EXTERNAL,
                    NODE_IP,
                    30040,
                    TCP,
                    fwd(&["10.244.1.40:8080"], false),
                ),
                (
                    "externalIP too",
                    EXTERNAL,
                    "198.51.100.4",
                    80,
                    TCP,
                    fwd(&["10.244.1.40:8080"], false),
                ),
                (
                    "pod traffic short-circuits to every endpoint",
                    POD,
                    NODE_IP,
                    30040,
                    TCP,
                    fwd(&both, false),
                ),
                (
                    "node traffic: every endpoint, masqueraded",
                    NODE_IP,
                    NODE_IP,
                    30040,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "ClusterIP unaffected",
                    EXTERNAL,
                    "10.96.0.40",
                    80,
                    TCP,
                    fwd(&both, true),
                ),
                (
                    "outside, no local endpoint: drop",
                    EXTERNAL,
                    NODE_IP,
                    30041,
                    TCP,
                    Verdict::Drop,
                ),
                (
                    "pod, no local endpoint: still served",
                    POD,
                    NODE_IP,
                    30041,
                    TCP,
                    fwd(&["10.244.2.41:8080"], false),
                ),
                (
                    "no endpoints at all: reject",
                    EXTERNAL,
                    NODE_IP,
                    30042,
                    TCP,
                    Verdict::Reject,
                ),
            ],
        );
    }

    #[test]
    fn dual_stack_udp_and_sctp() {
        let spec = json!({"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50", "fd00:96::50"], "type": "NodePort",
            "ports": [{"name": "http", "port": 53, "protocol": "UDP", "nodePort": 30053},
                      {"name": "s", "port": 99, "protocol": "SCTP"}]});
        let mut objects = service("dual", spec, json!({}), &[]);
        objects.push(json!({"kind": "EndpointSlice", "metadata": {"name": "dual-4", "namespace": "x", "labels": {SERVICE_NAME_LABEL: "dual"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 5353, "protocol": "UDP"}, {"name": "s", "port": 9999, "protocol": "SCTP"}],
            "endpoints": [{"addresses": ["10.244.1.50"], "nodeName": "n1"}]}));
        objects.push(json!({"kind": "EndpointSlice", "metadata": {"name": "dual-6", "namespace": "x", "labels": {SERVICE_NAME_LABEL: "dual"}},
            "addressType": "IPv6", "ports": [{"name": "http", "port": 5353, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["fd10:2::50"], "nodeName": "n2"}]}));
        let map = cluster(objects);
        check(
            &map,
            &[
                (
                    "v4 UDP",
                    POD,
                    "10.96.0.50",
                    53,
                    UDP,
                    fwd(&["10.244.1.50:5353"], false),
                ),
                (
                    "v6 UDP",
                    "fd10:2::9",
                    "fd00:96::50",
                    53,
                    UDP,
                    fwd(&["[fd10:2::50]:5353"], false),
                ),
                (
                    "v6 from outside is masqueraded",
                    "2001:db8::1",
                    "fd00:96::50",
                    53,
                    UDP,
                    fwd(&["[fd10:2::50]:5353"], true),
                ),
                (
                    "v6 NodePort",
                    "2001:db8::1",
                    "fd99::1",
                    30053,
                    UDP,
                    fwd(&["[fd10:2::50]:5353"], true),
                ),
                (
                    "SCTP v4",
                    POD,
                    "10.96.0.50",
                    99,
                    Protocol::Sctp,
                    fwd(&["10.244.1.50:9999"], false),
                ),
                (
                    "SCTP v6 has no endpoints",
                    "fd10:2::9",
                    "fd00:96::50",
                    99,
                    Protocol::Sctp,
                    Verdict::Reject,
                ),
            ],
        );
    }

    /// IPv6 ClientIP affinity on every kind of frontend: the compiled rules record
    /// the client after NAT with the Service's timeout, as the reference says.
    #[test]
    fn ipv6_client_ip_affinity() {
        let spec = json!({"clusterIP": "fd00:96::60", "ipFamilies": ["IPv6"], "type": "LoadBalancer",
            "externalTrafficPolicy": "Local", "externalIPs": ["fd00:ee::1"],
            "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 300}},
            "ports": [{"name": "http", "port": 80, "nodePort": 30060}]});
        let status = json!({"loadBalancer": {"ingress": [{"ip": "fd00:1b::1"}]}});
        let objects = service(
            "six",
            spec,
            status,
            &[("fd10:1::60", "n1", true), ("fd10:2::60", "n2", true)],
        );
        let map = cluster(objects);
        let sticky = |backends: &[&str], masquerade: bool| Verdict::Forward {
            backends: backends.iter().map(|b| b.to_string()).collect(),
            masquerade,
            affinity_seconds: Some(300),
        };
        let both = ["[fd10:1::60]:8080", "[fd10:2::60]:8080"];
        check(
            &map,
            &[
                (
                    "ClusterIP from a pod",
                    "fd10:2::9",
                    "fd00:96::60",
                    80,
                    TCP,
                    sticky(&both, false),
                ),
                (
                    "ClusterIP from the node",
                    "fd99::1",
                    "fd00:96::60",
                    80,
                    TCP,
                    sticky(&both, true),
                ),
                (
                    "NodePort from outside: the local endpoint",
                    "2001:db8::1",
                    "fd99::1",
                    30060,
                    TCP,
                    sticky(&["[fd10:1::60]:8080"], false),
                ),
                (
                    "externalIP from a pod: every endpoint",
                    "fd10:2::9",
                    "fd00:ee::1",
                    80,
                    TCP,
                    sticky(&both, false),
                ),
                (
                    "LB IP from outside",
                    "2001:db8::1",
                    "fd00:1b::1",
                    80,
                    TCP,
                    sticky(&["[fd10:1::60]:8080"], false),
                ),
                (
                    "another port rejects",
                    "fd10:2::9",
                    "fd00:96::60",
                    81,
                    TCP,
                    Verdict::Reject,
                ),
            ],
        );
    }

    #[test]
    fn json_shapes() {
        let json = |v: &Verdict| serde_json::to_string(v).unwrap();
        assert_eq!(
            json(&fwd(&["10.180.0.1:80"], false)),
            r#"{"verdict":"forward","backends":["10.180.0.1:80"],"masquerade":false}"#
        );
        assert_eq!(json(&Verdict::Drop), r#"{"verdict":"drop"}"#);
        assert_eq!(json(&Verdict::Reject), r#"{"verdict":"reject"}"#);
        assert_eq!(json(&Verdict::None), r#"{"verdict":"none"}"#);
    }
}

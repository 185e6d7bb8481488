//! The reference semantics: whether NetworkPolicy admits one connection, and why.
//!
//! A connection is allowed iff egress at the source and ingress at the destination
//! both allow it. A pod is isolated for a direction when any policy selecting it has
//! that policy type; an isolated pod admits the union of what its policies' rules
//! admit. Only pods are policed: external addresses and hostNetwork pods are not, and
//! traffic between a pod and its own node is always allowed. The nftables compiler
//! implements exactly this; `firewall matrix` and `firewall explain` print it.

use std::net::IpAddr;

use serde::Serialize;

use super::cluster::{Cluster, PodEndpoint, Protocol};
use super::policy::{Direction, NamespaceScope, Peer, Policy, PortSpec, Rule};

/// One end of a connection.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint<'a> {
    Pod(&'a PodEndpoint),
    /// An address that belongs to no pod (or only to a hostNetwork pod).
    External(IpAddr),
}

impl<'a> Endpoint<'a> {
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Pod(pod) if pod.host_network => format!("{} (hostNetwork)", pod.key()),
            Endpoint::Pod(pod) => pod.key(),
            Endpoint::External(ip) => ip.to_string(),
        }
    }

    /// The pod when it is one that policies apply to.
    fn policed_pod(&self) -> Option<&'a PodEndpoint> {
        match *self {
            Endpoint::Pod(pod) if pod.policed() => Some(pod),
            _ => None,
        }
    }
}

/// A connection attempt: the addresses used, the protocol and destination port.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    pub src: Endpoint<'a>,
    pub dst: Endpoint<'a>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// The decision and its reasons.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    pub egress: DirectionVerdict,
    pub ingress: DirectionVerdict,
}

/// The decision for one direction.
#[derive(Clone, Debug, Serialize)]
pub struct DirectionVerdict {
    pub allowed: bool,
    /// The pod this direction is decided at (the source for egress), if it is a pod.
    pub pod: Option<String>,
    /// Why the direction is not policed at all, if it is not.
    pub not_policed: Option<String>,
    /// Every policy that selects the pod for this direction, in order.
    pub policies: Vec<PolicyTrace>,
}

/// How one policy's rules judged the connection.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyTrace {
    pub policy: String,
    pub allowed: bool,
    pub rules: Vec<RuleTrace>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RuleTrace {
    /// e.g. `spec.ingress[0]`.
    pub rule: String,
    pub allowed: bool,
    /// The peer that matched (`from[1]: pods ...`, or `every peer`), or why none did.
    pub peer: Match,
    /// The port that matched, or why none did.
    pub port: Match,
}

/// Whether part of a rule matched: what matched, or why nothing did.
#[derive(Clone, Debug, Serialize)]
pub struct Match {
    pub matched: bool,
    pub detail: String,
}

impl From<Result<String, String>> for Match {
    fn from(result: Result<String, String>) -> Self {
        match result {
            Ok(detail) => Match {
                matched: true,
                detail,
            },
            Err(detail) => Match {
                matched: false,
                detail,
            },
        }
    }
}

/// Decides `connection` under `policies`.
pub fn evaluate(cluster: &Cluster, policies: &[Policy], connection: &Connection) -> Verdict {
    let node_local = node_local(cluster, connection);
    let egress = decide(
        cluster,
        policies,
        connection,
        Direction::Egress,
        node_local.clone(),
    );
    let ingress = decide(
        cluster,
        policies,
        connection,
        Direction::Ingress,
        node_local,
    );
    Verdict {
        allowed: egress.allowed && ingress.allowed,
        egress,
        ingress,
    }
}

/// Just the yes/no of [`evaluate`], without building traces.
pub fn allowed(cluster: &Cluster, policies: &[Policy], connection: &Connection) -> bool {
    if node_local(cluster, connection).is_some() {
        return true;
    }
    Direction::BOTH.into_iter().all(|direction| {
        let Some(pod) = policed_end(connection, direction) else {
            return true;
        };
        let mut isolated = false;
        for policy in selecting(policies, pod, direction) {
            isolated = true;
            let rules = policy.rules(direction).unwrap_or_default();
            if rules
                .iter()
                .any(|rule| rule_allows(cluster, rule, connection, direction))
            {
                return true;
            }
        }
        !isolated
    })
}

/// The pod whose policies decide `direction`, if that end is a policed pod.
fn policed_end<'a>(connection: &Connection<'a>, direction: Direction) -> Option<&'a PodEndpoint> {
    match direction {
        Direction::Egress => connection.src.policed_pod(),
        Direction::Ingress => connection.dst.policed_pod(),
    }
}

/// Why the connection is between a pod and its own node, if it is.
fn node_local(cluster: &Cluster, connection: &Connection) -> Option<String> {
    let is_node_of = |pod: &Endpoint, other: &Endpoint, other_ip: IpAddr| -> bool {
        let Some(node) = pod.policed_pod().and_then(|p| p.node.as_deref()) else {
            return false;
        };
        match other {
            Endpoint::Pod(other) => other.host_network && other.node.as_deref() == Some(node),
            Endpoint::External(_) => cluster.is_node_address(node, other_ip),
        }
    };
    if is_node_of(&connection.src, &connection.dst, connection.dst_ip)
        || is_node_of(&connection.dst, &connection.src, connection.src_ip)
    {
        Some("traffic between a pod and its own node is always allowed".into())
    } else {
        None
    }
}

fn selecting<'a>(
    policies: &'a [Policy],
    pod: &'a PodEndpoint,
    direction: Direction,
) -> impl Iterator<Item = &'a Policy> + 'a {
    policies.iter().filter(move |policy| {
        policy.rules(direction).is_some()
            && policy.namespace == pod.namespace
            && policy.pod_selector.matches(&pod.labels)
    })
}

fn decide(
    cluster: &Cluster,
    policies: &[Policy],
    connection: &Connection,
    direction: Direction,
    node_local: Option<String>,
) -> DirectionVerdict {
    let end = match direction {
        Direction::Egress => &connection.src,
        Direction::Ingress => &connection.dst,
    };
    let pod_key = match end {
        Endpoint::Pod(pod) => Some(pod.key()),
        Endpoint::External(_) => None,
    };
    let not_policed = |reason: String| DirectionVerdict {
        allowed: true,
        pod: pod_key.clone(),
        not_policed: Some(reason),
        policies: Vec::new(),
    };
    if let Some(reason) = node_local {
        return not_policed(reason);
    }
    let pod = match end {
        Endpoint::External(ip) => {
            return not_policed(format!("{ip} is not a pod; only pods are policed"));
        }
        Endpoint::Pod(pod) if pod.host_network => {
            return not_policed(format!(
                "{} uses the host network; it is never policed",
                pod.key()
            ));
        }
        Endpoint::Pod(pod) => pod,
    };
    let mut traces = Vec::new();
    for policy in selecting(policies, pod, direction) {
        let rules = policy.rules(direction).unwrap_or_default();
        let rule_traces: Vec<RuleTrace> = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| trace_rule(cluster, rule, i, connection, direction))
            .collect();
        traces.push(PolicyTrace {
            policy: policy.key(),
            allowed: rule_traces.iter().any(|r| r.allowed),
            rules: rule_traces,
        });
    }
    DirectionVerdict {
        allowed: traces.is_empty() || traces.iter().any(|t| t.allowed),
        pod: pod_key,
        not_policed: None,
        policies: traces,
    }
}

fn rule_allows(
    cluster: &Cluster,
    rule: &Rule,
    connection: &Connection,
    direction: Direction,
) -> bool {
    let peer_ok = match &rule.peers {
        None => true,
        Some(peers) => peers
            .iter()
            .any(|peer| peer_matches(cluster, peer, connection, direction).is_ok()),
    };
    peer_ok && port_matches(rule, connection).is_ok()
}

fn trace_rule(
    cluster: &Cluster,
    rule: &Rule,
    index: usize,
    connection: &Connection,
    direction: Direction,
) -> RuleTrace {
    let field = direction.peers_field();
    let peer = match &rule.peers {
        None => Ok(format!("every peer (no `{field}`)")),
        Some(peers) => {
            let mut reasons = Vec::new();
            let mut found = None;
            for (j, peer) in peers.iter().enumerate() {
                match peer_matches(cluster, peer, connection, direction) {
                    Ok(()) => {
                        found = Some(format!("{field}[{j}]: {peer}"));
                        break;
                    }
                    Err(reason) => reasons.push(format!("{field}[{j}] ({peer}): {reason}")),
                }
            }
            found.ok_or_else(|| match reasons.is_empty() {
                // Every peer was left out for not parsing: the rule fails closed.
                true => format!("no `{field}` entry parsed: the rule matches no peer"),
                false => reasons.join("; "),
            })
        }
    };
    let port = port_matches(rule, connection);
    RuleTrace {
        rule: format!("spec.{direction}[{index}]"),
        allowed: peer.is_ok() && port.is_ok(),
        peer: peer.into(),
        port: port.into(),
    }
}

/// Whether the other end of the connection is `peer`; the error says why not.
fn peer_matches(
    cluster: &Cluster,
    peer: &Peer,
    connection: &Connection,
    direction: Direction,
) -> Result<(), String> {
    let (other, other_ip) = match direction {
        Direction::Ingress => (&connection.src, connection.src_ip),
        Direction::Egress => (&connection.dst, connection.dst_ip),
    };
    match peer {
        Peer::IpBlock(block) => {
            if block.contains(other_ip) {
                Ok(())
            } else if block.cidr.contains(&other_ip) {
                Err(format!("{other_ip} is excepted"))
            } else {
                Err(format!("{other_ip} is outside {}", block.cidr))
            }
        }
        Peer::Pods { namespaces, pods } => {
            let pod = match other {
                Endpoint::Pod(pod) if pod.policed() => pod,
                Endpoint::Pod(pod) => {
                    return Err(format!(
                        "{} uses the host network, so no pod selector matches it",
                        pod.key()
                    ));
                }
                Endpoint::External(ip) => return Err(format!("{ip} is not a pod")),
            };
            match namespaces {
                NamespaceScope::Policy(ns) if *ns != pod.namespace => {
                    return Err(format!("{} is not in namespace {ns}", pod.key()));
                }
                NamespaceScope::Matching(selector) => {
                    let labels = cluster.namespace_labels(&pod.namespace);
                    if let Some(missing) = selector.first_mismatch(&labels) {
                        return Err(format!(
                            "namespace {} does not match `{missing}`",
                            pod.namespace
                        ));
                    }
                }
                NamespaceScope::Policy(_) => {}
            }
            match pods.first_mismatch(&pod.labels) {
                Some(missing) => Err(format!("{} does not match `{missing}`", pod.key())),
                None => Ok(()),
            }
        }
    }
}

/// Whether the rule's ports admit the connection's destination port.
fn port_matches(rule: &Rule, connection: &Connection) -> Result<String, String> {
    let Some(ports) = &rule.ports else {
        return Ok("every port (no `ports`)".into());
    };
    let mut reasons = Vec::new();
    for (k, port) in ports.iter().enumerate() {
        if port.protocol != connection.protocol {
            reasons.push(format!("ports[{k}] is {}", port.protocol));
            continue;
        }
        let matched = match &port.port {
            PortSpec::Any => true,
            PortSpec::Range(start, end) => (*start..=*end).contains(&connection.port),
            PortSpec::Named(name) => match connection.dst.policed_pod() {
                Some(pod) => match pod.named_port(name, port.protocol) {
                    Some(number) => number == connection.port,
                    None => {
                        reasons.push(format!(
                            "ports[{k}]: {} has no {} port named {name}",
                            pod.key(),
                            port.protocol
                        ));
                        continue;
                    }
                },
                None => {
                    reasons.push(format!(
                        "ports[{k}]: named port {name} only resolves on a pod destination"
                    ));
                    continue;
                }
            },
        };
        if matched {
            return Ok(format!("ports[{k}]: {port}"));
        }
        reasons.push(format!(
            "ports[{k}] ({port}) does not include {}",
            connection.port
        ));
    }
    Err(reasons.join("; "))
}

/// The connection from `src` to `dst`'s primary address, from `src`'s address of the
/// same family; `None` when `src` has no address of that family.
pub fn pod_connection<'a>(
    src: &'a PodEndpoint,
    dst: &'a PodEndpoint,
    port: u16,
    protocol: Protocol,
) -> Option<Connection<'a>> {
    let dst_ip = *dst.ips.first()?;
    let src_ip = src.ip_of_family(dst_ip)?;
    Some(Connection {
        src: Endpoint::Pod(src),
        dst: Endpoint::Pod(dst),
        src_ip,
        dst_ip,
        protocol,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::manifests;
    use crate::firewall::FirewallInput;

    const CLUSTER: &str = "\
kind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 172.31.0.1}]}\n---\n\
kind: Node\nmetadata: {name: n2}\nstatus: {addresses: [{type: InternalIP, address: 172.31.0.2}]}\n---\n\
kind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\n\
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}\n\
status: {podIP: 10.0.1.1}\n---\n\
kind: NetworkPolicy\nmetadata: {name: deny-all, namespace: x}\n\
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n---\n\
kind: NetworkPolicy\nmetadata: {name: outside, namespace: x}\n\
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: http}]}],\n\
       egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{port: 443}, {port: http}]}]}\n";

    fn input() -> FirewallInput {
        let objects = manifests::parse_documents(std::path::Path::new("t.yaml"), CLUSTER).unwrap();
        FirewallInput::from_snapshot(&manifests::snapshot_from_objects(&objects).unwrap())
    }

    #[test]
    fn external_peers_nodes_and_named_ports() {
        let input = input();
        let a = input.cluster.pod("x/a").unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // (from pod?, external address, port, allowed)
        let cases = [
            // The pod's own node, either way, whatever the policies say.
            (false, "172.31.0.1", 22, true),
            (true, "172.31.0.1", 22, true),
            // Another node is just an external address.
            (false, "172.31.0.2", 8080, false),
            // ipBlock admits the external client on the named port of the pod.
            (false, "192.0.2.7", 8080, true),
            (false, "192.0.2.7", 80, false),
            // Egress to the external block on a numeric port; a named port only
            // resolves on a pod, so it admits nothing outside.
            (true, "198.51.100.9", 443, true),
            (true, "198.51.100.9", 8080, false),
            (true, "203.0.113.1", 443, false),
        ];
        for (from_pod, external, port, expected) in cases {
            let pod = Endpoint::Pod(a);
            let outside = Endpoint::External(ip(external));
            let connection = if from_pod {
                Connection {
                    src: pod,
                    dst: outside,
                    src_ip: a.ips[0],
                    dst_ip: ip(external),
                    protocol: Protocol::Tcp,
                    port,
                }
            } else {
                Connection {
                    src: outside,
                    dst: pod,
                    src_ip: ip(external),
                    dst_ip: a.ips[0],
                    protocol: Protocol::Tcp,
                    port,
                }
            };
            let verdict = evaluate(&input.cluster, &input.policies, &connection);
            assert_eq!(
                verdict.allowed, expected,
                "{from_pod} {external} {port}: {verdict:#?}"
            );
            assert_eq!(
                allowed(&input.cluster, &input.policies, &connection),
                expected,
                "fast path disagrees for {from_pod} {external} {port}"
            );
        }
    }
}

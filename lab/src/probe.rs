//! `lab probe`: measures reachability with real packets, from inside the lab's
//! namespaces. For every ordered pair of distinct pods and every declared (port,
//! protocol) of the destination: TCP/SCTP connect + the responder's answer, UDP one
//! datagram (re-sent twice within the timeout) + the answer. `allowed` is true only
//! when the destination pod itself answered; nothing is inferred. Like `firewall
//! matrix`, a pair is probed at the destination's primary address (the first of its
//! podIPs) from the source's address of that family — a dual-stack pair is one row,
//! and a source without that family cannot connect. [`ask`] (and `lab connect`)
//! reaches any one address and returns the whole answer, including the source
//! address the responder saw. With `--services`,
//! each Service port is probed `--tries` times from every pod (ClusterIP) and from the
//! external netns (NodePort on every node, externalIPs, LB ingress IPs), recording
//! who answered. Probes run in parallel, each with a short timeout.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::netns;
use super::responder::{parse_answer, sctp_connect};
use super::topology::{LabPlan, PodPlan, Protocol};
/// One cell of the matrix: the very type `firewall matrix` prints.
pub use kubewire::firewall::matrix::MatrixResult;

/// The `from` of probes sent by the external netns.
pub const EXTERNAL: &str = "external";

#[derive(Clone, Debug, clap::Args)]
pub struct ProbeOptions {
    /// Also probe every pod port from the external netns.
    #[arg(long)]
    pub from_external: bool,
    /// Also probe Service ClusterIPs, NodePorts, externalIPs and LoadBalancer IPs.
    #[arg(long)]
    pub services: bool,
    /// How many times each Service probe is tried.
    #[arg(long, default_value_t = 10)]
    pub tries: u32,
    /// How long one probe waits for its answer.
    #[arg(long, default_value = "1s", value_parser = kubewire::agent::parse_duration)]
    pub timeout: Duration,
    /// How many probes run at once.
    #[arg(long, default_value_t = 128)]
    pub parallel: usize,
    /// Where this run's UDP source ports start in the lab's rotation (see
    /// [`udp_source_port`]); `None` lets the kernel pick.
    #[arg(skip)]
    pub udp_ports_from: Option<u32>,
}

/// UDP source ports a probe run takes in turn, below the kernel's ephemeral range.
const UDP_SOURCE_PORTS: std::ops::Range<u32> = 10_000..30_000;

/// The `index`th UDP source port of the lab's rotation. A UDP probe that reused the
/// 4-tuple of a recent one (an ephemeral port picked again) would match that flow's
/// conntrack entry, still alive for 30 s and more, and measure the earlier policy's
/// verdict instead of the current one; a rotation of 20,000 ports shared by every run
/// of a lab reuses none within that time.
pub fn udp_source_port(index: u32) -> u16 {
    let span = UDP_SOURCE_PORTS.end - UDP_SOURCE_PORTS.start;
    u16::try_from(UDP_SOURCE_PORTS.start + index % span).unwrap_or(0)
}

/// How many UDP source ports a run of these probes takes.
pub fn udp_ports_needed(
    matrix: &[(Probe, MatrixResult)],
    services: Option<&[(Probe, ServiceResult)]>,
    tries: u32,
) -> u32 {
    let udp = |probe: &Probe| probe.protocol == Protocol::Udp;
    let matrix = matrix.iter().filter(|(p, _)| udp(p)).count();
    let services = services
        .unwrap_or_default()
        .iter()
        .filter(|(p, _)| udp(p))
        .count();
    u32::try_from(matrix + services * tries.max(1) as usize).unwrap_or(u32::MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ServiceKind {
    ClusterIP,
    NodePort,
    #[serde(rename = "externalIP")]
    ExternalIP,
    LoadBalancer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceResult {
    pub from: String,
    pub service: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: ServiceKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<String>,
    pub answered_by: Vec<String>,
    pub failures: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub results: Vec<MatrixResult>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub services: Option<Vec<ServiceResult>>,
}

/// One probe to send: from a netns to an address, expecting `expect` to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub from: String,
    pub netns: String,
    pub to: SocketAddr,
    pub protocol: Protocol,
}

/// The pod-to-pod (and, with `from_external`, external-to-pod) probes: pure.
pub fn matrix_probes(plan: &LabPlan, from_external: bool) -> Vec<(Probe, MatrixResult)> {
    let mut sources: Vec<(String, String)> = plan
        .pods
        .iter()
        .filter_map(|p| Some((p.key(), plan.pod_netns(p)?.to_string())))
        .collect();
    if from_external {
        sources.push((EXTERNAL.to_string(), plan.external.netns.clone()));
    }
    let mut probes = Vec::new();
    for (from, from_netns) in &sources {
        for to in &plan.pods {
            let key = to.key();
            if *from == key {
                continue;
            }
            let Some(ip) = to.ips.first() else {
                continue;
            };
            for port in &to.ports {
                probes.push((
                    Probe {
                        from: from.clone(),
                        netns: from_netns.clone(),
                        to: SocketAddr::new(*ip, port.port),
                        protocol: port.protocol,
                    },
                    MatrixResult {
                        from: from.clone(),
                        to: key.clone(),
                        port: port.port,
                        protocol: port.protocol,
                        allowed: false,
                    },
                ));
            }
        }
    }
    probes.sort_by(|a, b| {
        (&a.1.from, &a.1.to, a.1.port, a.1.protocol).cmp(&(
            &b.1.from,
            &b.1.to,
            b.1.port,
            b.1.protocol,
        ))
    });
    probes
}

/// The Service probes for `services` (pure): each result starts with no answers.
pub fn service_probes(plan: &LabPlan, services: &[Service]) -> Vec<(Probe, ServiceResult)> {
    let mut probes = Vec::new();
    let pod_sources: Vec<(String, String)> = plan
        .pods
        .iter()
        .filter_map(|p: &PodPlan| Some((p.key(), plan.pod_netns(p)?.to_string())))
        .collect();
    for service in services {
        let name = format!(
            "{}/{}",
            service.namespace().unwrap_or_default(),
            service.name_any()
        );
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        dedup(&mut cluster_ips);
        let mut external_ips: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        dedup(&mut external_ips);
        let mut lb_ips: Vec<IpAddr> = service
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        dedup(&mut lb_ips);
        for port in spec.ports.iter().flatten() {
            let protocol = port
                .protocol
                .as_deref()
                .and_then(Protocol::parse)
                .unwrap_or(Protocol::Tcp);
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let mut add =
                |from: &str, netns: &str, address: IpAddr, port: u16, kind, node: Option<&str>| {
                    probes.push((
                        Probe {
                            from: from.to_string(),
                            netns: netns.to_string(),
                            to: SocketAddr::new(address, port),
                            protocol,
                        },
                        ServiceResult {
                            from: from.to_string(),
                            service: name.clone(),
                            address,
                            port,
                            protocol,
                            kind,
                            node: node.map(str::to_string),
                            answered_by: Vec::new(),
                            failures: 0,
                        },
                    ));
                };
            for ip in &cluster_ips {
                for (from, netns) in &pod_sources {
                    add(from, netns, *ip, number, ServiceKind::ClusterIP, None);
                }
            }
            let external = plan.external.netns.as_str();
            if let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()) {
                for node in &plan.nodes {
                    for address in node.addresses() {
                        add(
                            EXTERNAL,
                            external,
                            address,
                            node_port,
                            ServiceKind::NodePort,
                            Some(&node.name),
                        );
                    }
                }
            }
            for ip in &external_ips {
                add(
                    EXTERNAL,
                    external,
                    *ip,
                    number,
                    ServiceKind::ExternalIP,
                    None,
                );
            }
            for ip in &lb_ips {
                add(
                    EXTERNAL,
                    external,
                    *ip,
                    number,
                    ServiceKind::LoadBalancer,
                    None,
                );
            }
        }
    }
    probes
}

fn dedup(ips: &mut Vec<IpAddr>) {
    let mut seen = BTreeSet::new();
    ips.retain(|ip| seen.insert(*ip));
}

/// A responder's answer to one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Who answered: a pod's `namespace/name`, or [`EXTERNAL`].
    pub who: String,
    /// The source address the responder saw the probe come from.
    pub peer: Option<IpAddr>,
}

/// Sends one probe; who answered (the answer's first word), if anyone did.
pub async fn send(probe: &Probe, timeout: Duration) -> Option<String> {
    ask(probe, timeout).await.map(|reply| reply.who)
}

/// Sends one probe and returns the whole answer: who answered and the source address
/// they saw (so a test can tell masqueraded traffic from traffic that kept its
/// source). `None` when nothing answered within `timeout`.
pub async fn ask(probe: &Probe, timeout: Duration) -> Option<Reply> {
    ask_from(probe, timeout, 0).await
}

/// [`ask`] from UDP source port `udp_port` (0: the kernel picks).
async fn ask_from(probe: &Probe, timeout: Duration, udp_port: u16) -> Option<Reply> {
    let answer = match probe.protocol {
        Protocol::Tcp => tcp(&probe.netns, probe.to, timeout).await,
        Protocol::Udp => udp(&probe.netns, probe.to, udp_port, timeout).await,
        Protocol::Sctp => sctp(&probe.netns, probe.to, timeout).await,
    }?;
    parse_answer(&answer).map(|(who, peer)| Reply {
        who: who.to_string(),
        peer,
    })
}

/// The netns a probe `from` leaves: a pod's (`namespace/name`), [`EXTERNAL`]'s, or a
/// node's (`node/<name>`).
pub fn source_netns<'a>(plan: &'a LabPlan, from: &str) -> Option<&'a str> {
    if from == EXTERNAL {
        return Some(&plan.external.netns);
    }
    if let Some(node) = from.strip_prefix("node/") {
        return plan.node(node).map(|n| n.netns.as_str());
    }
    plan.pod_netns(plan.pod(from)?)
}

async fn tcp(netns: &str, to: SocketAddr, timeout: Duration) -> Option<String> {
    let socket = netns::run_in_async(netns, move || {
        Ok(if to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        })
    })
    .await
    .ok()?;
    tokio::time::timeout(timeout, async move {
        let mut stream = socket.connect(to).await.ok()?;
        let mut buf = Vec::with_capacity(128);
        (&mut stream).take(512).read_to_end(&mut buf).await.ok()?;
        String::from_utf8(buf).ok()
    })
    .await
    .ok()
    .flatten()
}

async fn udp(netns: &str, to: SocketAddr, port: u16, timeout: Duration) -> Option<String> {
    let socket = netns::run_in_async(netns, move || {
        let any: IpAddr = if to.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        // A port something in the netns holds already: let the kernel pick one.
        let socket = std::net::UdpSocket::bind((any, port))
            .or_else(|_| std::net::UdpSocket::bind((any, 0)))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })
    .await
    .ok()?;
    let socket = tokio::net::UdpSocket::from_std(socket).ok()?;
    socket.connect(to).await.ok()?;
    let attempt = timeout / 3;
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        socket.send(b"probe\n").await.ok()?;
        match tokio::time::timeout(attempt, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => return String::from_utf8(buf[..n].to_vec()).ok(),
            // An ICMP error (port unreachable, no route) ends the probe at once.
            Ok(Err(_)) => return None,
            Err(_) => {}
        }
    }
    None
}

async fn sctp(netns: &str, to: SocketAddr, timeout: Duration) -> Option<String> {
    let connect = netns::run_in_async(netns, move || {
        use std::io::Read;
        let mut stream = sctp_connect(to)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf)?;
        Ok(String::from_utf8(buf[..n].to_vec())?)
    });
    tokio::time::timeout(timeout, connect).await.ok()?.ok()
}

/// Runs every matrix probe (and the Service probes) with at most `parallel` at once.
pub async fn run(
    matrix: Vec<(Probe, MatrixResult)>,
    services: Option<Vec<(Probe, ServiceResult)>>,
    options: &ProbeOptions,
) -> ProbeReport {
    let limit = Arc::new(tokio::sync::Semaphore::new(options.parallel.max(1)));
    let timeout = options.timeout;
    let mut next_udp = options.udp_ports_from;
    let mut udp_port = move |probe: &Probe| match (probe.protocol, next_udp.as_mut()) {
        (Protocol::Udp, Some(index)) => {
            let port = udp_source_port(*index);
            *index = index.wrapping_add(1);
            port
        }
        _ => 0,
    };
    let mut matrix_tasks = Vec::with_capacity(matrix.len());
    for (probe, mut result) in matrix {
        let limit = limit.clone();
        let port = udp_port(&probe);
        matrix_tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.ok();
            let who = ask_from(&probe, timeout, port).await.map(|r| r.who);
            result.allowed = who.as_deref() == Some(result.to.as_str());
            result
        }));
    }
    let mut service_tasks = Vec::new();
    for (probe, result) in services.iter().flatten().cloned() {
        let limit = limit.clone();
        let ports: Vec<u16> = (0..options.tries.max(1))
            .map(|_| udp_port(&probe))
            .collect();
        service_tasks.push(tokio::spawn(async move {
            let mut result = result;
            // The tries run side by side, each from a fresh socket (a fresh source
            // port, so a load balancer may pick another backend each time).
            let answers = futures::future::join_all(ports.iter().map(|port| async {
                let _permit = limit.acquire().await.ok();
                ask_from(&probe, timeout, *port).await.map(|r| r.who)
            }))
            .await;
            let mut answered = BTreeSet::new();
            for answer in answers {
                match answer {
                    Some(who) => {
                        answered.insert(who);
                    }
                    None => result.failures += 1,
                }
            }
            result.answered_by = answered.into_iter().collect();
            result
        }));
    }
    let mut report = ProbeReport::default();
    for task in matrix_tasks {
        if let Ok(result) = task.await {
            report.results.push(result);
        }
    }
    if services.is_some() {
        let mut results = Vec::new();
        for task in service_tasks {
            if let Ok(result) = task.await {
                results.push(result);
            }
        }
        report.services = Some(results);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::plan;
    use kubewire::cache::manifests::{parse_documents, snapshot_from_objects};

    fn lab(yaml: &str) -> (LabPlan, kubewire::cache::Snapshot) {
        let objects = parse_documents(std::path::Path::new("t.yaml"), yaml).unwrap();
        let snapshot = snapshot_from_objects(&objects).unwrap();
        (plan("t", &snapshot).unwrap(), snapshot)
    }

    const PODS: &str = "kind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\n---\n\
        kind: Pod\nmetadata: {name: b, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}\n---\n\
        kind: Service\nmetadata: {name: s, namespace: x}\nspec: {type: NodePort, clusterIP: 10.96.0.10, externalIPs: [192.0.2.7], ports: [{port: 80, nodePort: 30080}]}\n";

    #[test]
    fn udp_source_ports_rotate_below_the_ephemeral_range() {
        assert_eq!(udp_source_port(0), 10_000);
        assert_eq!(udp_source_port(19_999), 29_999);
        assert_eq!(udp_source_port(20_000), 10_000);
        assert_eq!(
            udp_source_port(u32::MAX),
            10_000 + (u32::MAX % 20_000) as u16
        );
    }

    #[test]
    fn matrix_covers_ordered_pairs_and_destination_ports() {
        let (plan, _) = lab(PODS);
        let cells: Vec<_> = matrix_probes(&plan, true)
            .into_iter()
            .map(|(probe, r)| {
                (
                    r.from,
                    r.to,
                    r.port,
                    r.protocol,
                    probe.to.to_string(),
                    probe.netns,
                )
            })
            .collect();
        assert_eq!(
            cells,
            [
                (
                    "external".into(),
                    "x/b".into(),
                    53,
                    Protocol::Udp,
                    "10.244.2.2:53".into(),
                    "kw-t-ext".into()
                ),
                (
                    "external".into(),
                    "x/b".into(),
                    80,
                    Protocol::Tcp,
                    "10.244.2.2:80".into(),
                    "kw-t-ext".into()
                ),
                (
                    "x/a".into(),
                    "x/b".into(),
                    53,
                    Protocol::Udp,
                    "10.244.2.2:53".into(),
                    "kw-t-pod-x.a".into()
                ),
                (
                    "x/a".into(),
                    "x/b".into(),
                    80,
                    Protocol::Tcp,
                    "10.244.2.2:80".into(),
                    "kw-t-pod-x.a".into()
                ),
            ]
        );
    }

    #[test]
    fn service_probes_per_kind() {
        let (plan, snapshot) = lab(PODS);
        let services: Vec<Service> = snapshot.services.iter().map(|s| (**s).clone()).collect();
        let probes: Vec<_> = service_probes(&plan, &services)
            .into_iter()
            .map(|(probe, r)| (r.from, r.kind, probe.to.to_string(), r.node))
            .collect();
        assert_eq!(
            probes,
            [
                (
                    "x/a".into(),
                    ServiceKind::ClusterIP,
                    "10.96.0.10:80".into(),
                    None
                ),
                (
                    "x/b".into(),
                    ServiceKind::ClusterIP,
                    "10.96.0.10:80".into(),
                    None
                ),
                (
                    "external".into(),
                    ServiceKind::NodePort,
                    "192.168.200.11:30080".into(),
                    Some("n1".into())
                ),
                (
                    "external".into(),
                    ServiceKind::NodePort,
                    "192.168.200.12:30080".into(),
                    Some("n2".into())
                ),
                (
                    "external".into(),
                    ServiceKind::ExternalIP,
                    "192.0.2.7:80".into(),
                    None
                ),
            ]
        );
    }

    #[test]
    fn json_matches_the_contract() {
        let report = ProbeReport {
            results: vec![MatrixResult {
                from: "x/a".into(),
                to: "y/b".into(),
                port: 80,
                protocol: Protocol::Tcp,
                allowed: true,
            }],
            services: Some(vec![ServiceResult {
                from: EXTERNAL.into(),
                service: "x/s".into(),
                address: "192.168.50.11".parse().unwrap(),
                port: 30080,
                protocol: Protocol::Tcp,
                kind: ServiceKind::NodePort,
                node: Some("n1".into()),
                answered_by: vec!["x/b".into()],
                failures: 0,
            }]),
        };
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"results":[{"from":"x/a","to":"y/b","port":80,"protocol":"TCP","allowed":true}],"services":[{"from":"external","service":"x/s","address":"192.168.50.11","port":30080,"protocol":"TCP","kind":"nodePort","node":"n1","answered_by":["x/b"],"failures":0}]}"#
        );
        let kinds: Vec<String> = [
            ServiceKind::ClusterIP,
            ServiceKind::ExternalIP,
            ServiceKind::LoadBalancer,
        ]
        .iter()
        .map(|k| serde_json::to_string(k).unwrap())
        .collect();
        assert_eq!(
            kinds,
            [r#""clusterIP""#, r#""externalIP""#, r#""loadBalancer""#]
        );
    }
}

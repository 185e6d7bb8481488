//! `firewall explain`: the verdict for one connection and, per direction (egress at
//! the source, ingress at the destination), which policies select the pod, which rule
//! and peer admitted the connection, or why none did.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Context, bail};
use serde::Serialize;

use super::cluster::{Cluster, Protocol};
use super::evaluate::{self, Connection, DirectionVerdict, Endpoint, Verdict};
use super::input::FirewallInput;

/// `explain --format json`.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub from: String,
    pub to: String,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Resolves `NS/POD` or an IP; an IP that no pod has is an external peer.
pub fn resolve<'a>(cluster: &'a Cluster, text: &str) -> anyhow::Result<Endpoint<'a>> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        let owner = cluster.pod_by_ip(ip).or_else(|| {
            cluster
                .pods
                .iter()
                .find(|p| p.ips.contains(&ip))
                .map(|p| p.as_ref())
        });
        return Ok(owner.map_or(Endpoint::External(ip), Endpoint::Pod));
    }
    if !text.contains('/') {
        bail!("`{text}` is neither NAMESPACE/POD nor an IP address");
    }
    cluster.pod(text).map(Endpoint::Pod).with_context(|| {
        format!(
            "pod {text} is not in the manifests, or has no IP (status.podIP/podIPs) or has finished"
        )
    })
}

pub fn explain(
    input: &FirewallInput,
    from: &str,
    to: &str,
    port: u16,
    protocol: &str,
) -> anyhow::Result<Explanation> {
    let protocol = Protocol::parse(&protocol.to_ascii_uppercase())
        .with_context(|| format!("unknown protocol `{protocol}` (TCP, UDP, SCTP)"))?;
    let src = resolve(&input.cluster, from)?;
    let dst = resolve(&input.cluster, to)?;
    let (src_ip, dst_ip) = addresses(from, to, &src, &dst)?;
    let connection = Connection {
        src,
        dst,
        src_ip,
        dst_ip,
        protocol,
        port,
    };
    Ok(Explanation {
        from: src.describe(),
        to: dst.describe(),
        src_ip,
        dst_ip,
        port,
        protocol,
        verdict: evaluate::evaluate(&input.cluster, &input.policies, &connection),
    })
}

/// The addresses the connection uses: an IP given on the command line as is, a pod's
/// primary address otherwise, the other end's address of the same family.
fn addresses(
    from: &str,
    to: &str,
    src: &Endpoint,
    dst: &Endpoint,
) -> anyhow::Result<(IpAddr, IpAddr)> {
    let given = |text: &str| text.parse::<IpAddr>().ok();
    let primary = |endpoint: &Endpoint| match endpoint {
        Endpoint::Pod(pod) => pod.ips.first().copied(),
        Endpoint::External(ip) => Some(*ip),
    };
    let of_family = |endpoint: &Endpoint, text: &str, like: IpAddr| -> anyhow::Result<IpAddr> {
        if let Some(ip) = given(text) {
            return Ok(ip);
        }
        match endpoint {
            Endpoint::Pod(pod) => pod
                .ip_of_family(like)
                .with_context(|| format!("{} has no address of the family of {like}", pod.key())),
            Endpoint::External(ip) => Ok(*ip),
        }
    };
    let (src_ip, dst_ip) = match (given(from), given(to)) {
        (_, Some(dst_ip)) => (of_family(src, from, dst_ip)?, dst_ip),
        (Some(src_ip), None) => (src_ip, of_family(dst, to, src_ip)?),
        (None, None) => {
            let dst_ip = primary(dst).context("destination has no address")?;
            (of_family(src, from, dst_ip)?, dst_ip)
        }
    };
    if src_ip.is_ipv4() != dst_ip.is_ipv4() {
        bail!("{src_ip} and {dst_ip} are of different address families");
    }
    Ok((src_ip, dst_ip))
}

pub fn render_text(explanation: &Explanation) -> String {
    let mut out = String::new();
    let verdict = &explanation.verdict;
    let _ = writeln!(
        out,
        "{} ({}) -> {} ({}) {}/{}: {}",
        explanation.from,
        explanation.src_ip,
        explanation.to,
        explanation.dst_ip,
        explanation.port,
        explanation.protocol,
        if verdict.allowed { "ALLOWED" } else { "DENIED" }
    );
    direction(&mut out, "egress", "source", &verdict.egress);
    direction(&mut out, "ingress", "destination", &verdict.ingress);
    out
}

fn direction(out: &mut String, name: &str, end: &str, verdict: &DirectionVerdict) {
    let at = verdict.pod.as_deref().unwrap_or(end);
    let word = if verdict.allowed { "allowed" } else { "denied" };
    if let Some(reason) = &verdict.not_policed {
        let _ = writeln!(out, "{name} at {at}: {word}: {reason}");
        return;
    }
    if verdict.policies.is_empty() {
        let _ = writeln!(
            out,
            "{name} at {at}: {word}: no policy selects it for {name}, so it is not isolated"
        );
        return;
    }
    let admitted: Vec<&str> = verdict
        .policies
        .iter()
        .filter(|p| p.allowed)
        .map(|p| p.policy.as_str())
        .collect();
    let _ = writeln!(
        out,
        "{name} at {at}: {word}: isolated by {} polic{}; {}",
        verdict.policies.len(),
        if verdict.policies.len() == 1 {
            "y"
        } else {
            "ies"
        },
        if admitted.is_empty() {
            "none admits the connection".to_string()
        } else {
            format!("admitted by {}", admitted.join(", "))
        }
    );
    for policy in &verdict.policies {
        let _ = writeln!(
            out,
            "  policy {}: {}",
            policy.policy,
            if policy.allowed {
                "admits"
            } else {
                "does not admit"
            }
        );
        if policy.rules.is_empty() {
            let _ = writeln!(out, "    it has no {name} rules: it admits nothing");
        }
        for rule in &policy.rules {
            let status = if rule.allowed { "matches" } else { "no match" };
            let peer = match &rule.peer {
                m if m.matched => format!("peer {}", m.detail),
                m => format!("no peer: {}", m.detail),
            };
            let port = match &rule.port {
                m if m.matched => format!("port {}", m.detail),
                m => format!("no port: {}", m.detail),
            };
            let _ = writeln!(out, "    {}: {status}: {peer}; {port}", rule.rule);
        }
    }
}

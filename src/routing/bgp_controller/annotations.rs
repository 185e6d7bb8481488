//! What a Node's annotations say about its BGP, under `kubewire.io/` or
//! kube-router's `kube-router.io/` (kubewire's wins). Pure; a value that does not
//! parse is a problem naming the Node and the annotation, and only that setting is
//! dropped.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::args::ExternalPeer;

pub const PREFIXES: [&str; 2] = ["kubewire.io/", "kube-router.io/"];

/// A Node's BGP settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeBgp {
    /// `node.asn`: the node's AS instead of `--cluster-asn`.
    pub asn: Option<u32>,
    /// `rr.server`: the node reflects routes for this cluster id.
    pub rr_server: Option<Ipv4Addr>,
    /// `rr.client`: the node is a client of the reflectors with this cluster id.
    pub rr_client: Option<Ipv4Addr>,
    /// `peer.ips`, `peer.asns`, `peer.passwords`: the node's own external peers.
    pub peers: Vec<ExternalPeer>,
    /// `path-prepend.as` and `path-prepend.repeat-n`.
    pub prepend: Option<(u32, u8)>,
    /// `node.bgp.communities`, on every route the node announces.
    pub communities: Vec<u32>,
}

/// The value of `name` under the first prefix that has it, with the full key.
fn annotation<'a>(node: &'a Node, name: &str) -> Option<(String, &'a str)> {
    let annotations = node.metadata.annotations.as_ref()?;
    PREFIXES.iter().find_map(|prefix| {
        let key = format!("{prefix}{name}");
        annotations.get(&key).map(|v| (key, v.trim()))
    })
}

fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl NodeBgp {
    pub fn read(node: &Node, problems: &mut Vec<String>) -> NodeBgp {
        let name = node.name_any();
        let mut bad = |key: &str, message: String| {
            problems.push(format!(
                "Node {name}: metadata.annotations[{key}]: {message}"
            ));
        };
        let mut out = NodeBgp::default();
        if let Some((key, text)) = annotation(node, "node.asn") {
            match parse_asn(text) {
                Ok(asn) => out.asn = Some(asn),
                Err(e) => bad(&key, e),
            }
        }
        for (field, slot) in [
            ("rr.server", &mut out.rr_server),
            ("rr.client", &mut out.rr_client),
        ] {
            if let Some((key, text)) = annotation(node, field) {
                match parse_cluster_id(text) {
                    Ok(id) => *slot = Some(id),
                    Err(e) => bad(&key, e),
                }
            }
        }
        if let (Some(_), Some((key, _))) = (out.rr_server, annotation(node, "rr.client")) {
            bad(
                &key,
                "the node is also a route-reflector server; the client role is ignored".into(),
            );
            out.rr_client = None;
        }
        out.peers = read_peers(node, &mut bad);
        match (
            annotation(node, "path-prepend.as"),
            annotation(node, "path-prepend.repeat-n"),
        ) {
            (None, None) => {}
            (Some((key, asn)), repeat) => {
                let repeat = match repeat {
                    None => Ok(1),
                    Some((rkey, text)) => text
                        .parse::<u8>()
                        .ok()
                        .filter(|n| (1..=32).contains(n))
                        .ok_or_else(|| (rkey, format!("`{text}` is not a count from 1 to 32"))),
                };
                match (parse_asn(asn), repeat) {
                    (Ok(asn), Ok(n)) => out.prepend = Some((asn, n)),
                    (Err(e), _) => bad(&key, e),
                    (_, Err((rkey, e))) => bad(&rkey, e),
                }
            }
            (None, Some((key, _))) => bad(&key, "set without path-prepend.as".into()),
        }
        if let Some((key, text)) = annotation(node, "node.bgp.communities") {
            for item in list(text) {
                match parse_community(item) {
                    Ok(c) => out.communities.push(c),
                    Err(e) => bad(&key, e),
                }
            }
        }
        out
    }
}

fn read_peers(node: &Node, bad: &mut impl FnMut(&str, String)) -> Vec<ExternalPeer> {
    let Some((ips_key, ips)) = annotation(node, "peer.ips") else {
        return vec![];
    };
    let ips: Vec<&str> = list(ips).collect();
    let (asns_key, asns) = annotation(node, "peer.asns")
        .map(|(k, t)| (k, list(t).collect::<Vec<_>>()))
        .unwrap_or_else(|| ("kube-router.io/peer.asns".into(), vec![]));
    let (passwords_key, passwords) = annotation(node, "peer.passwords")
        .map(|(k, t)| (k, t.split(',').map(str::trim).collect::<Vec<_>>()))
        .unwrap_or_default();
    if asns.len() != ips.len() {
        bad(
            &asns_key,
            format!(
                "{} AS numbers for {} peer.ips: no peer is used",
                asns.len(),
                ips.len()
            ),
        );
        return vec![];
    }
    let mut peers = vec![];
    for (i, (ip, asn)) in ips.iter().zip(&asns).enumerate() {
        let address = match ip.parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => {
                bad(&ips_key, format!("`{ip}` is not an IP address"));
                continue;
            }
        };
        let asn = match parse_asn(asn) {
            Ok(a) => a,
            Err(e) => {
                bad(&asns_key, format!("peer {address}: {e}"));
                continue;
            }
        };
        let password = match passwords.get(i).copied() {
            None | Some("") => None,
            Some(text) => match decode_base64(text) {
                Ok(p) => Some(p),
                Err(e) => {
                    bad(&passwords_key, format!("peer {address}: {e}; peer skipped"));
                    continue;
                }
            },
        };
        peers.push(ExternalPeer {
            address,
            asn,
            password,
        });
    }
    peers
}

fn parse_asn(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|a| *a != 0)
        .ok_or_else(|| format!("`{text}` is not an AS number from 1 to 4294967295"))
}

/// kube-router takes a cluster id as a number or in dotted form.
fn parse_cluster_id(text: &str) -> Result<Ipv4Addr, String> {
    text.parse::<Ipv4Addr>()
        .or_else(|_| text.parse::<u32>().map(Ipv4Addr::from))
        .map_err(|_| format!("`{text}` is not a cluster id (a number or a.b.c.d)"))
}

/// `ASN:VALUE`, a 32-bit number, or a well-known name (RFC 1997).
pub fn parse_community(text: &str) -> Result<u32, String> {
    let named = match text.to_ascii_lowercase().as_str() {
        "no-export" => Some(0xFFFF_FF01),
        "no-advertise" => Some(0xFFFF_FF02),
        "no-export-subconfed" => Some(0xFFFF_FF03),
        "no-peer" => Some(0xFFFF_FF04),
        _ => None,
    };
    if let Some(c) = named {
        return Ok(c);
    }
    let parsed = match text.split_once(':') {
        Some((high, low)) => high
            .parse::<u16>()
            .ok()
            .zip(low.parse::<u16>().ok())
            .map(|(h, l)| (u32::from(h) << 16) | u32::from(l)),
        None => text.parse::<u32>().ok(),
    };
    parsed.ok_or_else(|| format!("`{text}` is not a community (ASN:VALUE or a number)"))
}

/// Standard base64 (kube-router's passwords are base64-encoded), decoded to UTF-8.
pub fn decode_base64(text: &str) -> Result<String, String> {
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = vec![];
    let trimmed = text.trim().trim_end_matches('=');
    for c in trimmed.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err("not base64".into()),
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    if trimmed.len() % 4 == 1 {
        return Err("not base64 (truncated)".into());
    }
    String::from_utf8(out).map_err(|_| "the decoded password is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(annotations: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "annotations": annotations}
        }))
        .expect("node")
    }

    #[test]
    fn reads_both_prefixes_and_kubewire_wins() {
        let mut problems = vec![];
        let n = NodeBgp::read(
            &node(serde_json::json!({
                "kube-router.io/node.asn": "65010",
                "kubewire.io/node.asn": "65011",
                "kube-router.io/rr.server": "42",
                "kube-router.io/peer.ips": "192.0.2.1, 2001:db8::1",
                "kube-router.io/peer.asns": "65100,65101",
                "kube-router.io/peer.passwords": "cGFzcw==,",
                "kube-router.io/path-prepend.as": "65010",
                "kube-router.io/path-prepend.repeat-n": "3",
                "kubewire.io/node.bgp.communities": "65010:7,no-export,100",
            })),
            &mut problems,
        );
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(n.asn, Some(65011));
        assert_eq!(n.rr_server, Some(Ipv4Addr::new(0, 0, 0, 42)));
        assert_eq!(n.peers.len(), 2);
        assert_eq!(n.peers[0].password.as_deref(), Some("pass"));
        assert_eq!(n.peers[1].password, None);
        assert_eq!(n.prepend, Some((65010, 3)));
        assert_eq!(n.communities, vec![(65010 << 16) | 7, 0xFFFF_FF01, 100]);
    }

    #[test]
    fn bad_values_are_reported_and_dropped() {
        let mut problems = vec![];
        let n = NodeBgp::read(
            &node(serde_json::json!({
                "kube-router.io/node.asn": "0",
                "kube-router.io/rr.client": "x",
                "kube-router.io/peer.ips": "192.0.2.1,nope",
                "kube-router.io/peer.asns": "65100,65101",
                "kube-router.io/path-prepend.repeat-n": "3",
                "kube-router.io/node.bgp.communities": "70000:1",
            })),
            &mut problems,
        );
        assert_eq!(n.asn, None);
        assert_eq!(n.rr_client, None);
        assert_eq!(n.peers.len(), 1);
        assert_eq!(n.prepend, None);
        assert!(n.communities.is_empty());
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(
            problems
                .iter()
                .all(|p| p.starts_with("Node n1: metadata.annotations["))
        );
        let mut problems = vec![];
        let n = NodeBgp::read(
            &node(serde_json::json!({
                "kube-router.io/peer.ips": "192.0.2.1,192.0.2.2",
                "kube-router.io/peer.asns": "65100",
            })),
            &mut problems,
        );
        assert!(n.peers.is_empty());
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn base64_round_trips_and_refuses_garbage() {
        assert_eq!(decode_base64("a3ViZXdpcmU=").as_deref(), Ok("kubewire"));
        assert_eq!(decode_base64("YQ").as_deref(), Ok("a"));
        assert!(decode_base64("a$b").is_err());
        assert!(decode_base64("abcde").is_err());
    }
}

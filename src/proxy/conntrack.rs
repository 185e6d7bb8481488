//! Conntrack cleanup over netlink (`NETLINK_NETFILTER`, ctnetlink), as kube-proxy
//! does it: a UDP or SCTP flow keeps its DNAT for as long as packets keep coming, so
//! a client that sends without pause (DNS) would keep talking to a removed endpoint.
//! After each sync:
//!
//! - for every frontend that lost an endpoint, entries whose original destination
//!   is the frontend and whose reply source is that endpoint are deleted;
//! - for every frontend that gained its first endpoint, entries whose original
//!   destination is the frontend are deleted (made while it had none).
//!
//! The table is dumped (one family at a time) only when there is something to
//! delete; entries gone meanwhile (`ENOENT`) are fine. A sync looks only at the
//! frontends of the Services that changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};

use super::model::{Protocol, ServiceMap, ServicePort};
use super::services::Changed;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// (protocol, frontend) → endpoints it may send to, for UDP and SCTP frontends.
pub type Flows = BTreeMap<(Protocol, SocketAddr), BTreeSet<SocketAddr>>;

/// The UDP and SCTP frontends of `map` with their endpoints (both policies').
pub fn flows(map: &ServiceMap) -> Flows {
    flows_of(&map.ports, &map.node_port_ips)
}

/// The UDP and SCTP frontends of `ports` with their endpoints.
fn flows_of(ports: &[ServicePort], node_port_ips: &[IpAddr]) -> Flows {
    let mut out = Flows::new();
    for port in ports
        .iter()
        .filter(|p| matches!(p.protocol, Protocol::Udp | Protocol::Sctp))
    {
        for frontend in port.frontends(node_port_ips) {
            let endpoints = out
                .entry((
                    port.protocol,
                    SocketAddr::new(frontend.address, frontend.port),
                ))
                .or_default();
            endpoints.extend(port.cluster_endpoints.iter().copied());
            endpoints.extend(port.local_endpoints.iter().copied());
        }
    }
    out
}

/// Which entries to delete.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stale {
    /// Original destination `frontend`, reply source `endpoint`.
    Endpoint {
        protocol: Protocol,
        frontend: SocketAddr,
        endpoint: SocketAddr,
    },
    /// Original destination `frontend`, whatever the reply.
    Frontend {
        protocol: Protocol,
        frontend: SocketAddr,
    },
}

/// What became stale between two syncs.
pub fn stale(before: &Flows, now: &Flows) -> Vec<Stale> {
    let mut out = Vec::new();
    for ((protocol, frontend), old) in before {
        let new = now.get(&(*protocol, *frontend));
        for endpoint in old {
            if !new.is_some_and(|n| n.contains(endpoint)) {
                out.push(Stale::Endpoint {
                    protocol: *protocol,
                    frontend: *frontend,
                    endpoint: *endpoint,
                });
            }
        }
    }
    for ((protocol, frontend), new) in now {
        let had = before
            .get(&(*protocol, *frontend))
            .is_some_and(|old| !old.is_empty());
        if !had && !new.is_empty() {
            out.push(Stale::Frontend {
                protocol: *protocol,
                frontend: *frontend,
            });
        }
    }
    out
}

/// Remembers the last sync's flows, per Service, and deletes what became stale.
#[derive(Debug, Default)]
pub struct Cleaner {
    /// `None` before the first sync.
    before: Option<Programmed>,
}

/// The flows of the last sync, kept per Service so a sync reads only the changed
/// ones (a frontend two Services share has the endpoints of both).
#[derive(Clone, Debug, Default)]
struct Programmed {
    by_service: HashMap<String, Flows>,
    /// Frontend → the Services that have it.
    owners: BTreeMap<(Protocol, SocketAddr), BTreeSet<String>>,
}

impl Programmed {
    fn new(map: &ServiceMap) -> Self {
        let mut out = Self::default();
        let mut services: Vec<&str> = map.ports.iter().map(|p| p.service.as_str()).collect();
        services.dedup();
        for service in services {
            out.set(service, flows_of(map.ports_of(service), &map.node_port_ips));
        }
        out
    }

    /// Replaces the flows of `service`.
    fn set(&mut self, service: &str, flows: Flows) {
        for frontend in self
            .by_service
            .remove(service)
            .into_iter()
            .flat_map(|f| f.into_keys())
        {
            if let Some(owners) = self.owners.get_mut(&frontend) {
                owners.remove(service);
                if owners.is_empty() {
                    self.owners.remove(&frontend);
                }
            }
        }
        if flows.is_empty() {
            return;
        }
        for frontend in flows.keys() {
            self.owners
                .entry(*frontend)
                .or_default()
                .insert(service.to_string());
        }
        self.by_service.insert(service.to_string(), flows);
    }

    /// `frontends` with the endpoints of every Service that has them.
    fn flows_at<'a>(&self, frontends: impl Iterator<Item = &'a (Protocol, SocketAddr)>) -> Flows {
        let mut out = Flows::new();
        for frontend in frontends {
            let endpoints: BTreeSet<SocketAddr> = self
                .owners
                .get(frontend)
                .into_iter()
                .flatten()
                .filter_map(|service| self.by_service.get(service)?.get(frontend))
                .flatten()
                .copied()
                .collect();
            if self.owners.contains_key(frontend) {
                out.insert(*frontend, endpoints);
            }
        }
        out
    }
}

/// How to take one sync back: the Services' flows before it (all of them when
/// `None`).
type Undo = Option<Vec<(String, Flows)>>;

impl Cleaner {
    /// After `map` is programmed, `changed` saying which Services changed since the
    /// last successful call (only those are read). Returns how many entries were
    /// deleted; on error nothing is recorded, so the next call (with the changes of
    /// both) compares against the older flows again.
    pub async fn sync(&mut self, map: &ServiceMap, changed: &Changed) -> anyhow::Result<usize> {
        // Every Service changing is rare (and costs a whole pass anyway): keep a copy.
        let previous = match changed.services() {
            None => self.before.clone(),
            Some(_) => None,
        };
        let (stale, undo) = self.advance(map, changed);
        match delete_in_background(stale).await {
            Ok(deleted) => Ok(deleted),
            Err(err) => {
                match (undo, &mut self.before) {
                    (Some(undo), Some(before)) => {
                        for (name, flows) in undo {
                            before.set(&name, flows);
                        }
                    }
                    _ => self.before = previous,
                }
                Err(err)
            }
        }
    }

    /// Records `map`'s flows; returns the entries that became stale and how to take
    /// it back.
    fn advance(&mut self, map: &ServiceMap, changed: &Changed) -> (Vec<Stale>, Undo) {
        let (Some(before), Some(names)) = (&mut self.before, changed.services()) else {
            // The first sync, or every Service changed: all flows.
            let after = Programmed::new(map);
            let stale = match &self.before {
                Some(before) => stale(
                    &before.flows_at(before.owners.keys()),
                    &after.flows_at(after.owners.keys()),
                ),
                None => Vec::new(),
            };
            self.before = Some(after);
            return (stale, None);
        };
        let mut frontends = BTreeSet::new();
        let mut undo = Vec::new();
        let mut updates = Vec::new();
        for name in names {
            let flows = flows_of(map.ports_of(name), &map.node_port_ips);
            let old = before.by_service.get(name);
            if old.map_or(flows.is_empty(), |old| *old == flows) {
                continue;
            }
            frontends.extend(old.into_iter().flat_map(|f| f.keys()).copied());
            frontends.extend(flows.keys().copied());
            undo.push((name.clone(), old.cloned().unwrap_or_default()));
            updates.push((name.as_str(), flows));
        }
        let old_flows = before.flows_at(frontends.iter());
        for (name, flows) in updates {
            before.set(name, flows);
        }
        let stale = stale(&old_flows, &before.flows_at(frontends.iter()));
        (stale, Some(undo))
    }
}

/// Deletes the `stale` entries (on a blocking thread: a dump can be large).
async fn delete_in_background(stale: Vec<Stale>) -> anyhow::Result<usize> {
    if stale.is_empty() {
        return Ok(0);
    }
    tokio::task::spawn_blocking(move || delete(&stale)).await?
}

/// One conntrack entry as far as matching needs it.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    protocol: u8,
    original_destination: SocketAddr,
    reply_source: SocketAddr,
    /// The raw CTA_TUPLE_ORIG attribute (and CTA_ZONE), to delete it by.
    key: Vec<u8>,
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

impl Stale {
    fn matches(&self, entry: &Entry) -> bool {
        match self {
            Stale::Endpoint {
                protocol,
                frontend,
                endpoint,
            } => {
                entry.protocol == protocol_number(*protocol)
                    && entry.original_destination == *frontend
                    && entry.reply_source == *endpoint
            }
            Stale::Frontend { protocol, frontend } => {
                entry.protocol == protocol_number(*protocol)
                    && entry.original_destination == *frontend
            }
        }
    }

    fn is_ipv6(&self) -> bool {
        match self {
            Stale::Endpoint { frontend, .. } | Stale::Frontend { frontend, .. } => {
                frontend.is_ipv6()
            }
        }
    }
}

/// Dumps the table of each family concerned and deletes the matching entries.
pub fn delete(stale: &[Stale]) -> anyhow::Result<usize> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut deleted = 0;
    let mut sequence = 1;
    for v6 in [false, true] {
        let wanted: Vec<&Stale> = stale.iter().filter(|s| s.is_ipv6() == v6).collect();
        if wanted.is_empty() {
            continue;
        }
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
        sequence += 1;
        let entries = dump(&socket, family, sequence)?;
        for entry in entries
            .iter()
            .filter(|e| wanted.iter().any(|s| s.matches(e)))
        {
            sequence += 1;
            match request(
                &socket,
                IPCTNL_MSG_CT_DELETE,
                NLM_F_ACK,
                family,
                sequence,
                &entry.key,
            ) {
                Ok(()) => deleted += 1,
                Err(code) if code == libc::ENOENT => {}
                Err(code) => {
                    return Err(std::io::Error::from_raw_os_error(code).into());
                }
            }
        }
    }
    Ok(deleted)
}

/// The bytes of one ctnetlink request.
fn encode(kind: u16, flags: u16, family: u8, sequence: u32, attributes: &[u8]) -> Vec<u8> {
    let length = 16 + 4 + attributes.len();
    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&(length as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&sequence.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: version 0, res_id 0
    out.extend_from_slice(attributes);
    out
}

/// Sends a request and waits for its acknowledgement; `Err(errno)` on failure.
fn request(
    socket: &Socket,
    kind: u16,
    flags: u16,
    family: u8,
    sequence: u32,
    attributes: &[u8],
) -> Result<(), i32> {
    let bytes = encode(kind, flags, family, sequence, attributes);
    socket
        .send(&bytes, 0)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let mut buffer = vec![0u8; 65536];
    loop {
        let n = socket
            .recv(&mut &mut buffer[..], 0)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        for (kind, seq, payload) in messages(&buffer[..n]) {
            if seq == sequence && kind == NLMSG_ERROR {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-libc::EIO);
                return if code == 0 { Ok(()) } else { Err(-code) };
            }
        }
    }
}

/// Every entry of one family.
fn dump(socket: &Socket, family: u8, sequence: u32) -> anyhow::Result<Vec<Entry>> {
    socket.send(
        &encode(IPCTNL_MSG_CT_GET, NLM_F_DUMP, family, sequence, &[]),
        0,
    )?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    loop {
        let n = socket.recv(&mut &mut buffer[..], 0)?;
        for (kind, seq, payload) in messages(&buffer[..n]) {
            if seq != sequence {
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-libc::EIO);
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code).into());
                    }
                }
                kind if kind == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                    if let Some(entry) = payload.get(4..).and_then(parse_entry) {
                        out.push(entry);
                    }
                }
                _ => {}
            }
        }
    }
}

/// (type, sequence, payload) of each netlink message in `bytes`.
fn messages(mut bytes: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let length = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if length < 16 || length > bytes.len() {
            break;
        }
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let sequence = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        out.push((kind, sequence, &bytes[16..length]));
        bytes = &bytes[length.next_multiple_of(4).min(bytes.len())..];
    }
    out
}

/// (type, payload, whole attribute) of each attribute in `bytes`.
fn attributes(mut bytes: &[u8]) -> Vec<(u16, &[u8], &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        if length < 4 || length > bytes.len() {
            break;
        }
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        let padded = length.next_multiple_of(4).min(bytes.len());
        out.push((kind, &bytes[4..length], &bytes[..padded]));
        bytes = &bytes[padded..];
    }
    out
}

/// (protocol, source, destination) of a CTA_TUPLE_* payload.
fn parse_tuple(bytes: &[u8]) -> Option<(u8, SocketAddr, SocketAddr)> {
    let (mut source, mut destination, mut protocol) = (None, None, None);
    let (mut source_port, mut destination_port) = (0u16, 0u16);
    for (kind, payload, _) in attributes(bytes) {
        match kind {
            CTA_TUPLE_IP => {
                for (kind, payload, _) in attributes(payload) {
                    let ip = match payload.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(payload).ok()?),
                        16 => IpAddr::from(<[u8; 16]>::try_from(payload).ok()?),
                        _ => continue,
                    };
                    match kind {
                        1 | 3 => source = Some(ip),
                        2 | 4 => destination = Some(ip),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, payload, _) in attributes(payload) {
                    match (kind, payload) {
                        (CTA_PROTO_NUM, [number, ..]) => protocol = Some(*number),
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => {
                            source_port = u16::from_be_bytes([*a, *b])
                        }
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => {
                            destination_port = u16::from_be_bytes([*a, *b])
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        protocol?,
        SocketAddr::new(source?, source_port),
        SocketAddr::new(destination?, destination_port),
    ))
}

fn parse_entry(bytes: &[u8]) -> Option<Entry> {
    let (mut original, mut reply, mut key) = (None, None, Vec::new());
    for (kind, payload, whole) in attributes(bytes) {
        match kind {
            CTA_TUPLE_ORIG => {
                original = parse_tuple(payload);
                key.extend_from_slice(whole);
            }
            CTA_TUPLE_REPLY => reply = parse_tuple(payload),
            CTA_ZONE => key.extend_from_slice(whole),
            _ => {}
        }
    }
    let (protocol, _, original_destination) = original?;
    let (_, reply_source, _) = reply?;
    Some(Entry {
        protocol,
        original_destination,
        reply_source,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Two UDP Services sharing an externalIP frontend, and one TCP Service.
    fn map(a_endpoints: &[&str], b_endpoints: &[&str]) -> ServiceMap {
        let slice = |service: &str, ips: &[&str]| {
            let endpoints: Vec<serde_json::Value> = ips
                .iter()
                .map(|ip| serde_json::json!({"addresses": [ip], "nodeName": "n2"}))
                .collect();
            serde_json::json!({"kind": "EndpointSlice", "metadata": {"name": format!("{service}-1"), "namespace": "x",
                "labels": {"kubernetes.io/service-name": service}},
             "addressType": "IPv4", "ports": [{"port": 5353, "protocol": "UDP"}], "endpoints": endpoints})
        };
        let snapshot = crate::proxy::services::tests_support::snapshot(serde_json::json!([
            {"kind": "Node", "metadata": {"name": "n1"},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}},
            {"kind": "Service", "metadata": {"name": "a", "namespace": "x"},
             "spec": {"clusterIP": "10.96.0.10", "externalIPs": ["203.0.113.1"],
                      "ports": [{"port": 53, "protocol": "UDP"}]}},
            {"kind": "Service", "metadata": {"name": "b", "namespace": "x"},
             "spec": {"clusterIP": "10.96.0.11", "externalIPs": ["203.0.113.1"],
                      "ports": [{"port": 53, "protocol": "UDP"}]}},
            {"kind": "Service", "metadata": {"name": "c", "namespace": "x"},
             "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 80}]}},
            slice("a", a_endpoints),
            slice("b", b_endpoints),
        ]));
        crate::proxy::services::build(&snapshot, "n1", &["10.96.0.0/16".parse().unwrap()])
    }

    #[test]
    fn a_sync_reads_the_changed_services_and_finds_what_a_full_pass_does() {
        let steps = [
            (map(&["10.244.1.1", "10.244.1.2"], &["10.244.1.2"]), "x/a"),
            // a loses .2 but b still sends the shared frontend there
            (map(&["10.244.1.1"], &["10.244.1.2"]), "x/a"),
            (map(&["10.244.1.1"], &[]), "x/b"),
            (map(&[], &[]), "x/a"),
            (map(&["10.244.1.3"], &[]), "x/a"),
            (map(&["10.244.1.3"], &[]), "x/c"),
        ];
        let mut cleaner = Cleaner::default();
        let (first, _) = cleaner.advance(&steps[0].0, &Changed::All);
        assert!(first.is_empty(), "the first sync only learns");
        for window in steps.windows(2) {
            let [(old, _), (new, service)] = window else {
                unreachable!()
            };
            let changed = Changed::Services([service.to_string()].into());
            let (found, undo) = cleaner.advance(new, &changed);
            assert_eq!(found, stale(&flows(old), &flows(new)), "{service}");
            assert!(undo.is_some());
        }
        let shared = a("203.0.113.1:53");
        let (found, _) = cleaner.advance(&steps[1].0, &Changed::All);
        assert_eq!(found, stale(&flows(&steps[5].0), &flows(&steps[1].0)));
        assert!(found.contains(&Stale::Endpoint {
            protocol: Protocol::Udp,
            frontend: shared,
            endpoint: a("10.244.1.3:5353"),
        }));
    }

    #[test]
    fn lost_endpoints_and_first_endpoints_are_stale() {
        let udp = Protocol::Udp;
        let before: Flows = [
            (
                (udp, a("10.96.0.10:53")),
                [a("10.244.1.5:53"), a("10.244.2.5:53")].into(),
            ),
            ((udp, a("10.96.0.11:53")), BTreeSet::new()),
        ]
        .into();
        let now: Flows = [
            ((udp, a("10.96.0.10:53")), [a("10.244.2.5:53")].into()),
            ((udp, a("10.96.0.11:53")), [a("10.244.2.6:53")].into()),
            ((udp, a("10.96.0.12:53")), [a("10.244.2.7:53")].into()),
        ]
        .into();
        assert_eq!(
            stale(&before, &now),
            [
                Stale::Endpoint {
                    protocol: udp,
                    frontend: a("10.96.0.10:53"),
                    endpoint: a("10.244.1.5:53")
                },
                Stale::Frontend {
                    protocol: udp,
                    frontend: a("10.96.0.11:53")
                },
                Stale::Frontend {
                    protocol: udp,
                    frontend: a("10.96.0.12:53")
                },
            ]
        );
        assert!(stale(&now, &now).is_empty());
    }

    /// An entry as the kernel encodes it: nested tuples, ports big-endian.
    #[test]
    fn entries_parse_from_ctnetlink_attributes() {
        fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
            let mut out = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(payload);
            out.resize(out.len().next_multiple_of(4), 0);
            out
        }
        let tuple = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16| {
            let mut ip = attr(1, &src);
            ip.extend(attr(2, &dst));
            let mut proto = attr(CTA_PROTO_NUM, &[17]);
            proto.extend(attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes()));
            proto.extend(attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()));
            let mut out = attr(CTA_TUPLE_IP | 0x8000, &ip);
            out.extend(attr(CTA_TUPLE_PROTO | 0x8000, &proto));
            out
        };
        let original = attr(
            CTA_TUPLE_ORIG | 0x8000,
            &tuple([10, 244, 1, 9], [10, 96, 0, 10], 40000, 53),
        );
        let mut bytes = original.clone();
        bytes.extend(attr(
            CTA_TUPLE_REPLY | 0x8000,
            &tuple([10, 244, 2, 5], [10, 244, 1, 9], 53, 40000),
        ));
        bytes.extend(attr(7, &[0, 0, 0, 30])); // CTA_TIMEOUT, ignored
        let entry = parse_entry(&bytes).unwrap();
        assert_eq!(entry.protocol, 17);
        assert_eq!(entry.original_destination, a("10.96.0.10:53"));
        assert_eq!(entry.reply_source, a("10.244.2.5:53"));
        assert_eq!(entry.key, original);
        let lost = Stale::Endpoint {
            protocol: Protocol::Udp,
            frontend: a("10.96.0.10:53"),
            endpoint: a("10.244.2.5:53"),
        };
        assert!(lost.matches(&entry));
        let other = Stale::Endpoint {
            protocol: Protocol::Udp,
            frontend: a("10.96.0.10:53"),
            endpoint: a("10.244.2.6:53"),
        };
        assert!(!other.matches(&entry));
    }
}

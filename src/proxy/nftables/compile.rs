//! Compiles a [`ServiceMap`] into the `inet kubewire-proxy` table (pure). The layout
//! has no chain per Service or endpoint: every Service address is a key
//! `address . protocol . port` in per-family maps, so a cluster change is a change
//! of elements only.
//!
//! - `services`: `service-ips` sends a frontend to one of three fixed chains:
//!   `cluster-ip` (masquerade-mark sources outside the pod CIDRs), `external`
//!   (always mark; externalTrafficPolicy Cluster) or `external-local` (pod traffic
//!   and the node's own traffic (marked) to every endpoint, the rest to this node's
//!   endpoints, none → drop);
//! - `cluster-counts` / `local-counts` send a frontend to `endpoints-N` /
//!   `local-endpoints-N`, whose one rule per family is
//!   `dnat to <frontend> . numgen random mod N map @endpoints` (slot → endpoint), so
//!   every endpoint is equally likely. Chains exist for 1..=[`FIXED_COUNTS`]
//!   endpoints, sharing the slot maps `endpoints4/6` and `local-endpoints4/6`, and
//!   for any larger count in use, each with its own slot maps (`endpoints4-20`, see
//!   [`slot_map`]) created in the same transaction, so a Service growing past 16
//!   endpoints is a change, not a table replacement;
//! - the filter chains reject or drop Service ports without usable endpoints
//!   (`no-endpoint-services`), drop sources outside loadBalancerSourceRanges
//!   (`firewall-ips` / `firewall-allow`), reject ClusterIPs on unserved ports and drop
//!   unallocated service-CIDR addresses;
//! - `nat-postrouting` masquerades marked packets (mark 0x4000, like kube-proxy) and
//!   hairpin connections (a DNATed packet whose source is its destination).
//!
//! The IPVS backend uses the same table as its glue ([`glue`]): everything above but
//! the DNAT — no counts, endpoint maps or `endpoints-N` chains, and the `services`
//! dispatch hooked as a filter chain that only sets the masquerade mark, before
//! IPVS (which takes the packet at local-in or local-out) rewrites it.
//!
//! sessionAffinity ClientIP (nftables; IPVS has persistence). IPv4: `affinity4`
//! is a dynamic map `client . frontend → endpoint` that the packet path fills. The
//! dispatch chains first try `dnat to <client . frontend> map @affinity` (a miss
//! falls through to the random pick); after NAT, the `affinity-prerouting` /
//! `affinity-output` chains send every new DNATed connection whose original
//! destination is in `affinity-services` to `affinity-<T>`, which records (or
//! refreshes) `client . frontend → endpoint` with timeout T seconds: one chain per
//! timeout in use, so a Service with a new timeout is the only affinity change that
//! touches a chain. Entries whose endpoint left the frontend are deleted after each
//! sync ([`crate::proxy::affinity`]); replacing the table forgets them all.
//!
//! IPv6 cannot have that map: nft 1.0.6 aborts on any packet-path update of a map
//! whose key or value is wider than 16 bytes (one IPv6 address), and a concatenation
//! of packet fields cannot hold a constant, so a single set `client . frontend .
//! endpoint` could be filled but not asked "which endpoint". IPv6 uses kube-proxy's
//! layout instead, for IPv6 affinity frontends only: one dynamic set of clients per
//! frontend and endpoint (`affinity6-<frontend>-<endpoint>`, no default timeout:
//! each entry carries its Service's), a chain `affinity6-<frontend>` (from
//! `affinity-sticky6`, before the random pick) with one
//! `ip6 saddr @<set> dnat ip6 to <endpoint>` rule per endpoint, and a chain
//! `affinity6-<frontend>-record` (from `affinity-services6`, after NAT) with one
//! `ip6 daddr <endpoint> th dport <port> update @<set> { ip6 saddr timeout T }` rule
//! per endpoint. An endpoint leaving the frontend takes its set, entries included,
//! in the same transaction. So an IPv6 affinity Service's endpoint change touches
//! its chains (an `nft -f` transaction, not elements over netlink).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::incremental::Compiler;
use super::ruleset::{Chain, Ruleset, Set};
use crate::proxy::model::{Frontend, FrontendKind, ServiceMap, ServicePort};
use crate::proxy::services::Changed;

/// `endpoints-N` chains that always exist, so that scaling within this range never
/// changes a chain.
pub const FIXED_COUNTS: usize = 16;

/// Client/frontend pairs the IPv4 affinity map holds at most.
pub const AFFINITY_SIZE: usize = 262_144;

/// Clients one IPv6 affinity set (one frontend's endpoint) holds at most.
pub const AFFINITY6_SIZE: usize = 65_536;

/// The packet mark that asks `nat-postrouting` to masquerade (kube-proxy's).
pub const MASQUERADE_MARK: &str = "0x4000";

/// Which dataplane the table is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dataplane {
    /// The table does everything, DNAT included.
    #[default]
    Nftables,
    /// IPVS balances; the table marks for masquerade, filters and masquerades.
    IpvsGlue,
}

/// The desired table for `map`, and problems found (a frontend claimed twice).
pub fn compile(map: &ServiceMap) -> (Ruleset, Vec<String>) {
    compile_for(map, Dataplane::Nftables)
}

/// The IPVS backend's glue table for `map` (same name, same filter and masquerade
/// rules, no DNAT), and problems found.
pub fn glue(map: &ServiceMap) -> (Ruleset, Vec<String>) {
    compile_for(map, Dataplane::IpvsGlue)
}

/// The whole compile: every Service through the same [`Compiler`] the agent keeps
/// between syncs, into a [`Ruleset`].
fn compile_for(map: &ServiceMap, dataplane: Dataplane) -> (Ruleset, Vec<String>) {
    let mut compiler = Compiler::new(dataplane, declarations(dataplane));
    let problems = compiler.update(map, &Changed::All);
    (compiler.into_sink(), problems)
}

/// The table's sets and maps, empty, and no chains (the [`Compiler`] adds both).
pub fn declarations(dataplane: Dataplane) -> Ruleset {
    let nat = dataplane == Dataplane::Nftables;
    let mut ruleset = Ruleset::default();
    for v6 in [false, true] {
        let f = Family(v6);
        let addr = f.addr_type();
        let frontend = format!("{addr} . inet_proto . inet_service");
        let declare = |map: bool, declaration: String| Set {
            map,
            declaration,
            elements: BTreeMap::new(),
        };
        let mut sets = vec![
            (
                "pod-cidrs",
                declare(false, format!("type {addr}; flags interval;")),
            ),
            (
                "service-cidrs",
                declare(false, format!("type {addr}; flags interval;")),
            ),
            ("cluster-ips", declare(false, format!("type {addr};"))),
            ("foreign-ips", declare(false, format!("type {addr};"))),
            ("hairpin", declare(false, format!("type {addr} . {addr};"))),
            ("firewall-ips", declare(false, format!("type {frontend};"))),
            (
                "firewall-allow",
                declare(false, format!("type {frontend} . {addr}; flags interval;")),
            ),
        ];
        let verdict_maps: &[&str] = if nat {
            &[
                "service-ips",
                "no-endpoint-services",
                "cluster-counts",
                "local-counts",
            ]
        } else {
            &["service-ips", "no-endpoint-services"]
        };
        for name in verdict_maps {
            sets.push((name, declare(true, format!("type {frontend} : verdict;"))));
        }
        let slot_maps: &[&str] = if nat {
            &["endpoints", "local-endpoints"]
        } else {
            &[]
        };
        if nat {
            sets.push((
                "affinity-services",
                declare(true, format!("type {frontend} : verdict;")),
            ));
        }
        if nat && v6 {
            sets.push((
                "affinity-sticky",
                declare(true, format!("type {frontend} : verdict;")),
            ));
        }
        if nat && !v6 {
            sets.push((
                "affinity",
                declare(
                    true,
                    format!(
                        "type {addr} . {frontend} : {addr} . inet_service; size {AFFINITY_SIZE}; flags dynamic,timeout; timeout {}s;",
                        crate::proxy::model::DEFAULT_AFFINITY_TIMEOUT
                    ),
                ),
            ));
        }
        for name in slot_maps {
            sets.push((name, declare(true, slot_map_declaration(f))));
        }
        for (name, set) in sets {
            ruleset.sets.insert(f.name(name).to_string(), set);
        }
    }
    ruleset
}

/// A slot map: `frontend . slot → endpoint`.
fn slot_map_declaration(f: Family) -> String {
    let ip = f.ip();
    format!(
        "typeof {ip} daddr . meta l4proto . th dport . numgen random mod 1 : {ip} daddr . th dport;"
    )
}

/// The slot map of frontends with `n` endpoints: the family's shared one up to
/// [`FIXED_COUNTS`], beyond it one per count (`endpoints4-20`), created with its
/// `endpoints-N` chain. nft 1.0.6 cannot add a rule naming an existing `typeof ...
/// th dport` map to a table, only create both together (and a `tcp dport` typeof
/// would make nft match TCP only), so a new count gets a new map and is a change,
/// not a table replacement.
pub fn slot_map(local: bool, n: usize, v6: bool) -> Cow<'static, str> {
    let f = Family(v6);
    let base = if local {
        "local-endpoints"
    } else {
        "endpoints"
    };
    if n <= FIXED_COUNTS {
        Cow::Borrowed(f.name(base))
    } else {
        Cow::Owned(format!("{}-{n}", f.name(base)))
    }
}

/// The slot maps of count `n` beyond [`FIXED_COUNTS`] (both families), with their
/// declaration.
pub(super) fn count_maps(local: bool, n: usize) -> Vec<(String, String)> {
    if n <= FIXED_COUNTS {
        return Vec::new();
    }
    [false, true]
        .into_iter()
        .map(|v6| {
            (
                slot_map(local, n, v6).into_owned(),
                slot_map_declaration(Family(v6)),
            )
        })
        .collect()
}

/// The elements of the sets that follow the cluster, not its Services: pod CIDRs,
/// other proxies' ClusterIPs, service CIDRs.
pub(super) fn fixed_elements(map: &ServiceMap) -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let f = Family(v6);
        let family_nets = |list: &[IpNet]| -> Vec<String> {
            list.iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .map(IpNet::to_string)
                .collect()
        };
        out.push((f.name("pod-cidrs"), family_nets(&map.pod_cidrs)));
        let foreign: Vec<String> = map
            .foreign_ips
            .iter()
            .filter(|(ip, _)| ip.is_ipv6() == v6)
            .map(|(ip, _)| ip.to_string())
            .collect();
        out.push((f.name("foreign-ips"), foreign));
        out.push((f.name("service-cidrs"), family_nets(&map.service_cidrs)));
    }
    out
}

/// What the fixed chains depend on: endpoint counts and affinity timeouts in use,
/// whether each family has pod CIDRs, `--masquerade-all`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ChainInputs {
    pub counts: BTreeSet<(bool, usize)>,
    pub timeouts: BTreeSet<u32>,
    pub has_pod_cidrs: [bool; 2],
    pub masquerade_all: bool,
    /// The chains owned by frontends ([`Claim::chains`]): name → rules.
    pub claimed: BTreeMap<String, Vec<String>>,
}

pub(super) fn chains_for(inputs: &ChainInputs, dataplane: Dataplane) -> BTreeMap<String, Chain> {
    let mut out = chains(
        &inputs.counts,
        &inputs.timeouts,
        inputs.has_pod_cidrs,
        inputs.masquerade_all,
        dataplane,
    );
    for (name, rules) in &inputs.claimed {
        out.insert(name.clone(), chain(None, rules.clone()));
    }
    out
}

#[derive(Clone, Copy)]
struct Family(bool);

/// Every set of the table, by its name without the family and with each family.
const SET_NAMES: [(&str, &str, &str); 16] = [
    ("pod-cidrs", "pod-cidrs4", "pod-cidrs6"),
    ("service-cidrs", "service-cidrs4", "service-cidrs6"),
    ("cluster-ips", "cluster-ips4", "cluster-ips6"),
    ("foreign-ips", "foreign-ips4", "foreign-ips6"),
    ("hairpin", "hairpin4", "hairpin6"),
    ("firewall-ips", "firewall-ips4", "firewall-ips6"),
    ("firewall-allow", "firewall-allow4", "firewall-allow6"),
    ("service-ips", "service-ips4", "service-ips6"),
    (
        "no-endpoint-services",
        "no-endpoint-services4",
        "no-endpoint-services6",
    ),
    ("cluster-counts", "cluster-counts4", "cluster-counts6"),
    ("local-counts", "local-counts4", "local-counts6"),
    (
        "affinity-services",
        "affinity-services4",
        "affinity-services6",
    ),
    ("affinity", "affinity4", "affinity6"),
    ("affinity-sticky", "affinity-sticky4", "affinity-sticky6"),
    ("endpoints", "endpoints4", "endpoints6"),
    ("local-endpoints", "local-endpoints4", "local-endpoints6"),
];

impl Family {
    fn of(ip: IpAddr) -> Self {
        Family(ip.is_ipv6())
    }
    /// The set's name in this family (`base` is one of [`SET_NAMES`]).
    fn name(self, base: &str) -> &'static str {
        let (_, v4, v6) = SET_NAMES
            .iter()
            .find(|(name, _, _)| *name == base)
            .expect("a set the compiler declares");
        if self.0 { v6 } else { v4 }
    }
    fn ip(self) -> &'static str {
        if self.0 { "ip6" } else { "ip" }
    }
    fn addr_type(self) -> &'static str {
        if self.0 { "ipv6_addr" } else { "ipv4_addr" }
    }
}

/// What one frontend of one Service port puts in the table while it is that
/// frontend's owner (the first to claim it: ClusterIPs before other addresses, then
/// by Service and port).
#[derive(Clone, Debug)]
pub(super) struct Claim {
    pub kind: FrontendKind,
    /// Elements only this frontend has (keys start with the frontend): set, key, value.
    pub elements: Vec<(Cow<'static, str>, String, Option<String>)>,
    /// Elements other frontends may have too (`hairpin`).
    pub shared: Vec<Shared>,
    /// `endpoints-N` chains it jumps to: (local?, N).
    pub counts: Vec<(bool, usize)>,
    /// sessionAffinity timeout chain it jumps to (IPv4).
    pub timeout: Option<u32>,
    /// Regular chains only this frontend uses (IPv6 affinity): name, rules.
    pub chains: Vec<(String, Vec<String>)>,
    /// Sets only this frontend uses (IPv6 affinity): name, declaration.
    pub sets: Vec<(String, String)>,
}

/// An element several frontends may put in the table (a ClusterIP in
/// `cluster-ips`, an endpoint's pair in `hairpin`), kept as the address it is made
/// of and written out only for the sink: at 10,000 Services × 10 endpoints the
/// claims and their reference counts held 100,000 `hairpin` keys twice as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Shared {
    hairpin: bool,
    /// The family of the set (that of the frontend).
    v6: bool,
    ip: IpAddr,
}

impl Shared {
    fn cluster_ip(ip: IpAddr) -> Self {
        Self {
            hairpin: false,
            v6: ip.is_ipv6(),
            ip,
        }
    }

    fn hairpin(f: Family, ip: IpAddr) -> Self {
        Self {
            hairpin: true,
            v6: f.0,
            ip,
        }
    }

    pub(super) fn set(&self) -> &'static str {
        Family(self.v6).name(if self.hairpin {
            "hairpin"
        } else {
            "cluster-ips"
        })
    }

    pub(super) fn key(&self) -> String {
        if self.hairpin {
            format!("{0} . {0}", self.ip)
        } else {
            self.ip.to_string()
        }
    }
}

impl Claim {
    fn put(&mut self, set: impl Into<Cow<'static, str>>, key: String, value: Option<String>) {
        self.elements.push((set.into(), key, value));
    }
}

/// One claimed frontend of a port: whether it is the ClusterIP, its key, its claim.
pub(super) type PortClaim = (bool, String, Claim);

/// What `port` adds: its ClusterIP (for `cluster-ips`, whoever serves it), and one
/// claim per frontend, in order.
pub(super) fn port_claims(
    dataplane: Dataplane,
    map: &ServiceMap,
    port: &ServicePort,
) -> (Shared, Vec<PortClaim>) {
    let cluster_ip = Shared::cluster_ip(port.cluster_ip);
    let claims = port
        .frontends(&map.node_port_ips)
        .iter()
        .map(|frontend| {
            let key = frontend_key(frontend);
            let claim = frontend_claim(dataplane, map, port, frontend, &key);
            (frontend.kind == FrontendKind::ClusterIp, key, claim)
        })
        .collect();
    (cluster_ip, claims)
}

fn frontend_claim(
    dataplane: Dataplane,
    map: &ServiceMap,
    port: &ServicePort,
    frontend: &Frontend,
    key: &str,
) -> Claim {
    let f = Family::of(frontend.address);
    let mut claim = Claim {
        kind: frontend.kind,
        elements: Vec::new(),
        shared: Vec::new(),
        counts: Vec::new(),
        timeout: None,
        chains: Vec::new(),
        sets: Vec::new(),
    };
    if let (Some(timeout), Dataplane::Nftables) = (port.affinity_timeout, dataplane)
        && port.has_endpoints
    {
        if port.is_ipv6() {
            affinity6(&mut claim, port, frontend, key, timeout);
        } else {
            claim.timeout = Some(timeout);
            claim.put(
                f.name("affinity-services"),
                key.to_string(),
                Some(format!("goto affinity-{timeout}")),
            );
        }
    }
    let key = key.to_string();
    if !port.has_endpoints {
        claim.put(
            f.name("no-endpoint-services"),
            key,
            Some("goto reject-packet".into()),
        );
        return claim;
    }
    if frontend.kind == FrontendKind::ClusterIp {
        if port.internal_endpoints().is_empty() {
            claim.put(f.name("no-endpoint-services"), key, Some("drop".into()));
            return claim;
        }
        claim.put(
            f.name("service-ips"),
            key.clone(),
            Some("goto cluster-ip".into()),
        );
        endpoints(
            &mut claim,
            dataplane,
            f,
            false,
            &key,
            port.internal_endpoints(),
        );
        return claim;
    }
    if frontend.kind == FrontendKind::LoadBalancer && !port.source_ranges.is_empty() {
        claim.put(f.name("firewall-ips"), key.clone(), None);
        let mut allowed: Vec<String> = port.source_ranges.iter().map(IpNet::to_string).collect();
        if port.allows_from_node(&map.node_ips) {
            allowed.extend(port.load_balancer_ips.iter().map(IpAddr::to_string));
        }
        for source in allowed {
            claim.put(f.name("firewall-allow"), format!("{key} . {source}"), None);
        }
    }
    if port.external_local && port.local_endpoints.is_empty() && dataplane == Dataplane::IpvsGlue {
        // IPVS has one destination set per address: the local one, empty.
        claim.put(f.name("no-endpoint-services"), key, Some("drop".into()));
        return claim;
    }
    let target = match port.external_local {
        true => "goto external-local",
        false => "goto external",
    };
    claim.put(f.name("service-ips"), key.clone(), Some(target.into()));
    endpoints(
        &mut claim,
        dataplane,
        f,
        false,
        &key,
        &port.cluster_endpoints,
    );
    if port.external_local && !port.local_endpoints.is_empty() {
        endpoints(&mut claim, dataplane, f, true, &key, &port.local_endpoints);
    }
    claim
}

/// IPv6 sessionAffinity of one frontend (see the module's comment): a set of
/// clients per endpoint its DNAT may pick, the chain that sends a known client back
/// to its endpoint, the chain that records a new connection's client.
fn affinity6(claim: &mut Claim, port: &ServicePort, frontend: &Frontend, key: &str, timeout: u32) {
    let reachable: BTreeSet<SocketAddr> = if frontend.kind == FrontendKind::ClusterIp {
        port.internal_endpoints().iter().copied().collect()
    } else {
        port.cluster_endpoints
            .iter()
            .chain(if port.external_local {
                port.local_endpoints.as_slice()
            } else {
                &[]
            })
            .copied()
            .collect()
    };
    if reachable.is_empty() {
        return;
    }
    let id = affinity6_id(frontend);
    let (sticky, record) = (format!("affinity6-{id}"), format!("affinity6-{id}-record"));
    let protocol = frontend.protocol.nft();
    let (mut lookups, mut records) = (Vec::new(), Vec::new());
    for endpoint in &reachable {
        let set = affinity6_set(frontend, endpoint);
        lookups.push(format!(
            "meta l4proto {protocol} ip6 saddr @{set} dnat ip6 to {endpoint}"
        ));
        records.push(format!(
            "ip6 daddr {} th dport {} update @{set} {{ ip6 saddr timeout {timeout}s }}",
            endpoint.ip(),
            endpoint.port()
        ));
        claim.sets.push((
            set,
            format!("type ipv6_addr; size {AFFINITY6_SIZE}; flags dynamic,timeout;"),
        ));
    }
    claim.put(
        "affinity-sticky6",
        key.to_string(),
        Some(format!("jump {sticky}")),
    );
    claim.put(
        "affinity-services6",
        key.to_string(),
        Some(format!("goto {record}")),
    );
    claim.chains.push((sticky, lookups));
    claim.chains.push((record, records));
}

/// A frontend in object names: `fd00::10 . tcp . 80` → `fd00--10-tcp-80` (one name
/// per frontend: addresses have no `-`, and `tcp`, `udp`, `sctp` are not hex).
fn affinity6_id(frontend: &Frontend) -> String {
    format!(
        "{}-{}-{}",
        frontend.address.to_string().replace(':', "-"),
        frontend.protocol.nft(),
        frontend.port
    )
}

/// The set of clients of `frontend` that stick to `endpoint`.
fn affinity6_set(frontend: &Frontend, endpoint: &SocketAddr) -> String {
    format!(
        "affinity6-{}-{}-{}",
        affinity6_id(frontend),
        endpoint.ip().to_string().replace(':', "-"),
        endpoint.port()
    )
}

fn endpoints(
    claim: &mut Claim,
    dataplane: Dataplane,
    f: Family,
    local: bool,
    key: &str,
    endpoints: &[SocketAddr],
) {
    let (counts, chain) = if local {
        ("local-counts", "local-endpoints")
    } else {
        ("cluster-counts", "endpoints")
    };
    if dataplane == Dataplane::IpvsGlue {
        for endpoint in endpoints {
            claim.shared.push(Shared::hairpin(f, endpoint.ip()));
        }
        return;
    }
    let n = endpoints.len();
    claim.counts.push((local, n));
    claim.put(
        f.name(counts),
        key.to_string(),
        Some(format!("goto {chain}-{n}")),
    );
    let slots = slot_map(local, n, f.0);
    for (slot, endpoint) in endpoints.iter().enumerate() {
        claim.put(
            slots.clone(),
            format!("{key} . {slot}"),
            Some(format!("{} . {}", endpoint.ip(), endpoint.port())),
        );
        claim.shared.push(Shared::hairpin(f, endpoint.ip()));
    }
}

fn frontend_key(frontend: &Frontend) -> String {
    format!(
        "{} . {} . {}",
        frontend.address,
        frontend.protocol.nft(),
        frontend.port
    )
}

fn chain(base: Option<&str>, rules: Vec<String>) -> Chain {
    Chain {
        base: base.map(str::to_string),
        rules,
    }
}

fn both(rule: impl Fn(Family) -> String) -> Vec<String> {
    vec![rule(Family(false)), rule(Family(true))]
}

/// The fixed chains, plus `endpoints-N` for every count in use (for the IPVS glue:
/// the fixed chains without DNAT).
fn chains(
    counts: &BTreeSet<(bool, usize)>,
    timeouts: &BTreeSet<u32>,
    has_pod_cidrs: [bool; 2],
    masquerade_all: bool,
    dataplane: Dataplane,
) -> BTreeMap<String, Chain> {
    let nat = dataplane == Dataplane::Nftables;
    let frontend = |f: Family| format!("{} daddr . meta l4proto . th dport", f.ip());
    let mark = format!("meta mark set meta mark | {MASQUERADE_MARK}");
    let mut out = BTreeMap::new();
    let mut add = |name: &str, chain: Chain| {
        out.insert(name.to_string(), chain);
    };
    add(
        "filter-prerouting",
        chain(
            Some("type filter hook prerouting priority dstnat - 10; policy accept;"),
            vec!["ct state new jump service-checks".into()],
        ),
    );
    add(
        "filter-output",
        chain(
            Some("type filter hook output priority -110; policy accept;"),
            vec!["ct state new jump service-checks".into()],
        ),
    );
    let mut checks = both(|f| format!("{} vmap @{}", frontend(f), f.name("no-endpoint-services")));
    checks.extend(both(|f| {
        format!(
            "{0} @{1} {0} . {2} saddr != @{3} drop",
            frontend(f),
            f.name("firewall-ips"),
            f.ip(),
            f.name("firewall-allow")
        )
    }));
    add("service-checks", chain(None, checks));
    add("reject-packet", chain(None, vec!["reject".into()]));
    for (name, hook) in [
        ("filter-forward", "forward"),
        ("filter-output-post-nat", "output"),
    ] {
        add(
            name,
            chain(
                Some(&format!(
                    "type filter hook {hook} priority filter; policy accept;"
                )),
                vec!["ct state new jump cluster-ips-check".into()],
            ),
        );
    }
    // Another proxy's ClusterIPs are its business.
    let mut check = both(|f| format!("{} daddr @{} return", f.ip(), f.name("foreign-ips")));
    check.extend(both(|f| {
        format!("{} daddr @{} reject", f.ip(), f.name("cluster-ips"))
    }));
    check.extend(both(|f| {
        format!("{} daddr @{} drop", f.ip(), f.name("service-cidrs"))
    }));
    add("cluster-ips-check", chain(None, check));
    // IPVS rewrites at local-in and local-out (priority dstnat + 2): the mark is set
    // before, by filter chains; with IPVS no packet is DNATed by conntrack, and a
    // packet from an endpoint to itself only ever crosses postrouting as a hairpin.
    let (hook_kind, hairpin_condition) = if nat {
        ("nat", "ct status dnat ")
    } else {
        ("filter", "")
    };
    for (name, hook) in [("nat-prerouting", "prerouting"), ("nat-output", "output")] {
        add(
            &name.replace("nat-", if nat { "nat-" } else { "mark-" }),
            chain(
                Some(&format!(
                    "type {hook_kind} hook {hook} priority -100; policy accept;"
                )),
                vec!["jump services".into()],
            ),
        );
    }
    let mut postrouting = both(|f| {
        format!(
            "{hairpin_condition}{0} saddr . {0} daddr @{1} masquerade fully-random",
            f.ip(),
            f.name("hairpin")
        )
    });
    postrouting.push(format!(
        "meta mark & {MASQUERADE_MARK} == {MASQUERADE_MARK} meta mark set meta mark ^ {MASQUERADE_MARK} masquerade fully-random"
    ));
    add(
        "nat-postrouting",
        chain(
            Some("type nat hook postrouting priority srcnat; policy accept;"),
            postrouting,
        ),
    );
    add(
        "services",
        chain(
            None,
            both(|f| format!("{} vmap @{}", frontend(f), f.name("service-ips"))),
        ),
    );
    let to_cluster = |f: Family| format!("{} vmap @{}", frontend(f), f.name("cluster-counts"));
    let dnat = |rules: Vec<String>| if nat { rules } else { Vec::new() };
    // A client's earlier endpoint for this frontend, when it has one.
    let sticky = || {
        let (v4, v6) = (Family(false), Family(true));
        dnat(vec![
            format!(
                "dnat {0} to {0} saddr . {1} map @{2}",
                v4.ip(),
                frontend(v4),
                v4.name("affinity")
            ),
            format!("{} vmap @{}", frontend(v6), v6.name("affinity-sticky")),
        ])
    };
    let mut cluster_ip = Vec::new();
    if masquerade_all {
        cluster_ip.push(mark.clone());
    }
    for f in [Family(false), Family(true)] {
        if has_pod_cidrs[usize::from(f.0)] && !masquerade_all {
            cluster_ip.push(format!(
                "{} saddr != @{} {mark}",
                f.ip(),
                f.name("pod-cidrs")
            ));
        }
    }
    cluster_ip.extend(sticky());
    cluster_ip.extend(dnat(both(to_cluster)));
    add("cluster-ip", chain(None, cluster_ip));
    let mut external = vec![mark.clone()];
    external.extend(sticky());
    external.extend(dnat(both(to_cluster)));
    add("external", chain(None, external));
    // The node's own traffic is any from a local address, whichever interface has it.
    let from_node = "fib saddr type local";
    let mut local = Vec::new();
    if !nat {
        // IPVS sends every source to this node's endpoints; only the node's own
        // traffic needs its source rewritten.
        local.push(format!("{from_node} {mark}"));
    }
    if nat {
        // The mark first: the affinity DNAT ends the chain.
        local.push(format!("{from_node} {mark}"));
        local.extend(sticky());
        local.extend(both(|f| {
            format!(
                "{} saddr @{} {}",
                f.ip(),
                f.name("pod-cidrs"),
                to_cluster(f)
            )
        }));
        local.extend(both(|f| format!("{from_node} {}", to_cluster(f))));
        local.extend(both(|f| {
            format!("{} vmap @{}", frontend(f), f.name("local-counts"))
        }));
    }
    if nat {
        local.push("drop".into());
    }
    add("external-local", chain(None, local));
    if nat {
        // After NAT (dstnat at -100): the packet carries the endpoint, conntrack the
        // frontend. `ct original proto-dst` needs a transport protocol to be known.
        let record = both(|f| {
            format!(
                "ct state new ct status dnat meta l4proto {{ tcp, udp, sctp }} ct original {0} daddr . meta l4proto . ct original proto-dst vmap @{1}",
                f.ip(),
                f.name("affinity-services")
            )
        });
        let f = Family(false);
        for (name, hook, priority) in [
            ("affinity-prerouting", "prerouting", "dstnat + 10"),
            ("affinity-output", "output", "-90"),
        ] {
            add(
                name,
                chain(
                    Some(&format!(
                        "type filter hook {hook} priority {priority}; policy accept;"
                    )),
                    record.clone(),
                ),
            );
        }
        for timeout in timeouts {
            let rules = vec![format!(
                "meta l4proto {{ tcp, udp, sctp }} update @{1} {{ {0} saddr . ct original {0} daddr . meta l4proto . ct original proto-dst timeout {timeout}s : {0} daddr . th dport }}",
                f.ip(),
                f.name("affinity")
            )];
            add(&format!("affinity-{timeout}"), chain(None, rules));
        }
    }
    // No DNAT, no endpoint chains.
    let fixed = if nat { FIXED_COUNTS } else { 0 };
    let wanted: BTreeSet<(bool, usize)> = (1..=fixed)
        .flat_map(|n| [(false, n), (true, n)])
        .chain(counts.iter().copied())
        .collect();
    for (is_local, n) in wanted {
        let name = if is_local {
            "local-endpoints"
        } else {
            "endpoints"
        };
        let rules = both(|f| {
            format!(
                "dnat {0} to {1} . numgen random mod {n} map @{2}",
                f.ip(),
                frontend(f),
                slot_map(is_local, n, f.0)
            )
        });
        add(&format!("{name}-{n}"), chain(None, rules));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::services;
    use serde_json::json;

    fn demo_map() -> ServiceMap {
        let snapshot = crate::proxy::services::tests_support::snapshot(json!([
            {"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}},
            {"kind": "Service", "metadata": {"name": "web", "namespace": "x"},
             "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                      "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}},
            {"kind": "EndpointSlice", "metadata": {"name": "web-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "web"}},
             "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
             "endpoints": [{"addresses": ["10.244.1.10"], "nodeName": "n1"}, {"addresses": ["10.244.2.10"], "nodeName": "n2"}]},
            {"kind": "Service", "metadata": {"name": "empty", "namespace": "x"},
             "spec": {"clusterIP": "10.96.0.11", "externalIPs": ["10.96.0.10"], "ports": [{"port": 80}]}},
            {"kind": "Service", "metadata": {"name": "lb", "namespace": "x"},
             "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.12", "loadBalancerSourceRanges": ["203.0.113.0/24"],
                      "ports": [{"port": 443, "protocol": "UDP"}]},
             "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}},
            {"kind": "EndpointSlice", "metadata": {"name": "lb-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "lb"}},
             "addressType": "IPv4", "ports": [{"port": 443, "protocol": "UDP"}],
             "endpoints": [{"addresses": ["10.244.3.1"], "nodeName": "n3"}]},
        ]));
        services::build(&snapshot, "n1", &["10.96.0.0/16".parse().unwrap()])
    }

    fn elements(ruleset: &Ruleset, set: &str) -> Vec<String> {
        ruleset.sets[set]
            .elements
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k} : {v}"),
                None => k.clone(),
            })
            .collect()
    }

    #[test]
    fn frontends_become_map_elements() {
        let (ruleset, problems) = compile(&demo_map());
        assert_eq!(
            elements(&ruleset, "service-ips4"),
            [
                "10.96.0.10 . tcp . 80 : goto cluster-ip",
                "10.96.0.12 . udp . 443 : goto cluster-ip",
                "192.168.0.1 . tcp . 30080 : goto external-local",
                "198.51.100.1 . udp . 443 : goto external",
            ]
        );
        assert_eq!(
            elements(&ruleset, "no-endpoint-services4"),
            ["10.96.0.11 . tcp . 80 : goto reject-packet"]
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with(
            "Service x/empty: externalIP 10.96.0.10 . tcp . 80 is already served by x/web"
        ));
        assert_eq!(
            elements(&ruleset, "cluster-counts4"),
            [
                "10.96.0.10 . tcp . 80 : goto endpoints-2",
                "10.96.0.12 . udp . 443 : goto endpoints-1",
                "192.168.0.1 . tcp . 30080 : goto endpoints-2",
                "198.51.100.1 . udp . 443 : goto endpoints-1",
            ]
        );
        assert_eq!(
            elements(&ruleset, "local-counts4"),
            ["192.168.0.1 . tcp . 30080 : goto local-endpoints-1"]
        );
        assert_eq!(
            elements(&ruleset, "local-endpoints4"),
            ["192.168.0.1 . tcp . 30080 . 0 : 10.244.1.10 . 8080"]
        );
        assert_eq!(
            elements(&ruleset, "endpoints4")[..2],
            [
                "10.96.0.10 . tcp . 80 . 0 : 10.244.1.10 . 8080",
                "10.96.0.10 . tcp . 80 . 1 : 10.244.2.10 . 8080",
            ]
        );
        assert_eq!(
            elements(&ruleset, "firewall-ips4"),
            ["198.51.100.1 . udp . 443"]
        );
        assert_eq!(
            elements(&ruleset, "firewall-allow4"),
            ["198.51.100.1 . udp . 443 . 203.0.113.0/24"]
        );
        assert_eq!(
            elements(&ruleset, "cluster-ips4"),
            ["10.96.0.10", "10.96.0.11", "10.96.0.12"]
        );
        assert!(elements(&ruleset, "service-ips6").is_empty());
    }

    #[test]
    fn masquerade_all_fully_random_and_the_nodes_own_traffic_by_fib() {
        let (plain, _) = compile(&demo_map());
        let mut map = demo_map();
        map.masquerade_all = true;
        let (all, _) = compile(&map);
        assert_eq!(
            all.chains["cluster-ip"].rules[0],
            "meta mark set meta mark | 0x4000"
        );
        assert!(
            !all.chains["cluster-ip"]
                .rules
                .iter()
                .any(|r| r.contains("pod-cidrs"))
        );
        assert!(plain.chains["cluster-ip"].rules[0].starts_with("ip saddr != @pod-cidrs4"));
        assert!(
            plain.chains["nat-postrouting"]
                .rules
                .iter()
                .all(|r| r.ends_with("masquerade fully-random"))
        );
        let local = &plain.chains["external-local"].rules;
        assert!(
            local.contains(&"fib saddr type local meta mark set meta mark | 0x4000".to_string()),
            "{local:?}"
        );
        assert!(
            local.contains(
                &"fib saddr type local ip daddr . meta l4proto . th dport vmap @cluster-counts4"
                    .to_string()
            ),
            "{local:?}"
        );
    }

    #[test]
    fn chains_are_fixed_and_counts_beyond_the_fixed_range_add_one() {
        let (small, _) = compile(&demo_map());
        let mut map = demo_map();
        map.ports[2].cluster_endpoints = (1..=20u16)
            .map(|i| SocketAddr::new("10.244.9.1".parse().unwrap(), i))
            .collect();
        let (large, _) = compile(&map);
        let extra: Vec<&String> = large
            .chains
            .keys()
            .filter(|k| !small.chains.contains_key(*k))
            .collect();
        assert_eq!(extra, ["endpoints-20"]);
        assert_eq!(
            large.chains["endpoints-20"].rules[0],
            "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 20 map @endpoints4-20"
        );
        // Its own slot maps, created with it: the Service's slots are there.
        assert_eq!(
            elements(&large, "endpoints4-20").len(),
            2 * 20,
            "ClusterIP and NodePort"
        );
        assert!(large.sets.contains_key("endpoints6-20"));
        assert!(!small.sets.contains_key("endpoints4-20"));
        assert!(
            elements(&large, "endpoints4")
                .iter()
                .all(|e| !e.starts_with("192.168.0.1 . tcp . 30080 ."))
        );
        // No pod CIDRs of IPv6: only the IPv4 masquerade rule for off-cluster sources.
        assert_eq!(
            small.chains["cluster-ip"].rules[0],
            "ip saddr != @pod-cidrs4 meta mark set meta mark | 0x4000"
        );
        assert!(
            !small.chains["cluster-ip"]
                .rules
                .iter()
                .any(|r| r.contains("pod-cidrs6"))
        );
    }

    #[test]
    fn ipv6_affinity_is_a_client_set_per_frontend_and_endpoint() {
        let objects = |endpoints: &[&str]| {
            let endpoints: Vec<serde_json::Value> = endpoints
                .iter()
                .map(|ip| json!({"addresses": [ip], "nodeName": "n2"}))
                .collect();
            crate::proxy::services::tests_support::snapshot(json!([
                {"kind": "Service", "metadata": {"name": "six", "namespace": "x"},
                 "spec": {"clusterIP": "fd00::10", "ipFamilies": ["IPv6"], "sessionAffinity": "ClientIP",
                          "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                          "ports": [{"port": 53, "protocol": "UDP"}]}},
                {"kind": "EndpointSlice", "metadata": {"name": "six-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "six"}},
                 "addressType": "IPv6", "ports": [{"port": 5353, "protocol": "UDP"}], "endpoints": endpoints},
            ]))
        };
        let cidrs: [IpNet; 1] = ["fd00::/108".parse().unwrap()];
        let (two, _) = compile(&services::build(
            &objects(&["fd10::1", "fd10::2"]),
            "n1",
            &cidrs,
        ));
        let (one, _) = compile(&services::build(&objects(&["fd10::2"]), "n1", &cidrs));
        let set = "affinity6-fd00--10-udp-53-fd10--1-5353";
        assert_eq!(
            two.sets[set].declaration,
            "type ipv6_addr; size 65536; flags dynamic,timeout;"
        );
        assert_eq!(
            two.chains["affinity6-fd00--10-udp-53"].rules[0],
            format!("meta l4proto udp ip6 saddr @{set} dnat ip6 to [fd10::1]:5353")
        );
        assert_eq!(
            two.chains["affinity6-fd00--10-udp-53-record"].rules[0],
            format!("ip6 daddr fd10::1 th dport 5353 update @{set} {{ ip6 saddr timeout 60s }}")
        );
        assert_eq!(
            elements(&two, "affinity-sticky6"),
            ["fd00::10 . udp . 53 : jump affinity6-fd00--10-udp-53"]
        );
        assert_eq!(
            elements(&two, "affinity-services6"),
            ["fd00::10 . udp . 53 : goto affinity6-fd00--10-udp-53-record"]
        );
        // The sticky lookup comes before the random pick.
        let cluster_ip = &two.chains["cluster-ip"].rules;
        let lookup = cluster_ip
            .iter()
            .position(|r| r.contains("@affinity-sticky6"));
        let pick = cluster_ip
            .iter()
            .position(|r| r.contains("@cluster-counts6"));
        assert!(lookup.is_some() && lookup < pick, "{cluster_ip:?}");
        // The endpoint leaves: its set, entries and all, goes; the other stays.
        assert!(!one.sets.contains_key(set));
        assert!(
            one.sets
                .contains_key("affinity6-fd00--10-udp-53-fd10--2-5353")
        );
        assert_eq!(one.chains["affinity6-fd00--10-udp-53"].rules.len(), 1);
        // No IPv4 timeout chain for it.
        assert!(!two.chains.contains_key("affinity-60"));
    }
}

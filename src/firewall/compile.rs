//! The compiler: firewall input → the nftables model for one node. Pure (no I/O),
//! deterministic, and faithful to [`super::evaluate`]: the conformance cases run the
//! same policies through both.
//!
//! Guarantees: only pods scheduled on this node get dispatch entries; hostNetwork pods
//! never do (and never match a pod selector); traffic between the node and its own
//! pods never reaches these chains (it takes the input/output hooks); the number of
//! chains depends on the policies, never on the number of pods; a set is shared by
//! every rule that uses the same selector, ipBlock or port name.
//!
//! [`IncrementalCompiler`] gives the same result as [`compile`] (tested), but when
//! only pods changed since its last run it updates the previous ruleset pod by pod
//! instead of starting over: a pod event costs microseconds, not a full compile.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::cluster::{PodEndpoint, Protocol};
use super::input::FirewallInput;
use super::model::{Chain, ChainKind, Counter, Elements, Family, Members, Ruleset, Set, SetKind};
use super::policy::{Direction, IpBlockMatch, NamespaceScope, Peer, Policy, PortSpec, Rule};

/// What, besides the cluster, decides the ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    pub node: String,
    /// Drop traffic to addresses of this node's pod CIDRs that are not (yet) known pods.
    pub default_deny: bool,
    /// Log dropped packets to this NFLOG group.
    pub log_group: Option<u16>,
}

/// Base chain priorities, relative to `filter`: egress is decided first, then ingress.
/// Any other table's base chains compose with these (a drop anywhere is final).
pub const EGRESS_PRIORITY: i32 = 10;
pub const INGRESS_PRIORITY: i32 = 11;
pub const EGRESS_CHAIN: &str = "pod-egress";
pub const INGRESS_CHAIN: &str = "pod-ingress";
/// Counts packets dropped because the pod they are for has not been compiled yet.
pub const UNCOMPILED_COUNTER: &str = "uncompiled-drops";
/// Accepts IPv6 neighbour and router discovery, which bridged pods need to reach
/// each other at all.
pub const NEIGHBOR_DISCOVERY: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept";
/// Counts packets conntrack considers invalid.
pub const INVALID_COUNTER: &str = "invalid-drops";

pub fn compile(input: &FirewallInput, options: &CompileOptions) -> Ruleset {
    Compiler::new(input, options, families(input), Ruleset::default()).run()
}

/// Compiles one snapshot after another, reusing the previous ruleset when only pods
/// changed (same policies, namespaces, nodes and address families).
#[derive(Debug)]
pub struct IncrementalCompiler {
    options: CompileOptions,
    /// The last input, the address families of its pods, and what it compiled to.
    previous: Option<(FirewallInput, Vec<Family>, Ruleset)>,
}

impl IncrementalCompiler {
    pub fn new(options: CompileOptions) -> Self {
        Self {
            options,
            previous: None,
        }
    }

    pub fn compile(&mut self, input: FirewallInput) -> Ruleset {
        let families = families(&input);
        let ruleset = match self.previous.take() {
            Some((old_input, old_families, old_ruleset))
                if (Arc::ptr_eq(&old_input.policies, &input.policies)
                    || old_input.policies == input.policies)
                    && old_input.cluster.namespaces == input.cluster.namespaces
                    && old_input.cluster.nodes == input.cluster.nodes
                    && old_families == families =>
            {
                let mut compiler =
                    Compiler::new(&input, &self.options, families.clone(), old_ruleset);
                let changed = changed_pods(&old_input.cluster.pods, &input.cluster.pods);
                // Every removal first: a new pod may have taken a removed pod's address.
                for old in changed.iter().filter_map(|(old, _)| *old) {
                    compiler.remove_pod(old);
                }
                for new in changed.iter().filter_map(|(_, new)| *new) {
                    compiler.add_pod(new);
                }
                if !changed.is_empty() {
                    compiler.collect_garbage();
                }
                compiler.ruleset
            }
            _ => Compiler::new(&input, &self.options, families.clone(), Ruleset::default()).run(),
        };
        self.previous = Some((input, families, ruleset.clone()));
        ruleset
    }
}

/// The address families the cluster's policed pods use.
fn families(input: &FirewallInput) -> Vec<Family> {
    let families: BTreeSet<Family> = input
        .cluster
        .pods
        .iter()
        .filter(|p| p.policed())
        .flat_map(|p| p.ips.iter().map(|ip| Family::of(*ip)))
        .collect();
    families.into_iter().collect()
}

/// Pods that differ between two lists sorted by (namespace, name): (old, new).
fn changed_pods<'a>(
    old: &'a [Arc<PodEndpoint>],
    new: &'a [Arc<PodEndpoint>],
) -> Vec<(Option<&'a PodEndpoint>, Option<&'a PodEndpoint>)> {
    let mut changed = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                changed.push((Some(old[i].as_ref()), None));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                changed.push((None, Some(new[j].as_ref())));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if !Arc::ptr_eq(&old[i], &new[j]) && old[i] != new[j] {
                    changed.push((Some(old[i].as_ref()), Some(new[j].as_ref())));
                }
                i += 1;
                j += 1;
            }
        }
    }
    changed
}

struct Compiler<'a> {
    input: &'a FirewallInput,
    /// Chains and counters that removed map entries pointed to: the only things an
    /// incremental update can leave unused.
    released: BTreeSet<String>,
    options: &'a CompileOptions,
    families: Vec<Family>,
    /// Policed pods by namespace, gathered when first needed (a pod change that
    /// compiles no new set never needs it).
    pods_by_namespace: OnceCell<BTreeMap<&'a str, Vec<&'a PodEndpoint>>>,
    policies_by_namespace: BTreeMap<&'a str, Vec<&'a Policy>>,
    ruleset: Ruleset,
}

impl<'a> Compiler<'a> {
    fn new(
        input: &'a FirewallInput,
        options: &'a CompileOptions,
        families: Vec<Family>,
        ruleset: Ruleset,
    ) -> Self {
        let mut policies_by_namespace: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
        for policy in input.policies.iter() {
            policies_by_namespace
                .entry(&policy.namespace)
                .or_default()
                .push(policy);
        }
        Self {
            input,
            released: BTreeSet::new(),
            options,
            families,
            pods_by_namespace: OnceCell::new(),
            policies_by_namespace,
            ruleset,
        }
    }

    fn pods_by_namespace(&self) -> &BTreeMap<&'a str, Vec<&'a PodEndpoint>> {
        self.pods_by_namespace.get_or_init(|| {
            let mut by_namespace: BTreeMap<&str, Vec<&PodEndpoint>> = BTreeMap::new();
            for pod in self.input.cluster.pods.iter().filter(|p| p.policed()) {
                by_namespace
                    .entry(&pod.namespace)
                    .or_default()
                    .push(pod.as_ref());
            }
            by_namespace
        })
    }

    fn is_local(&self, pod: &PodEndpoint) -> bool {
        pod.policed() && pod.node.as_deref() == Some(self.options.node.as_str())
    }

    fn run(mut self) -> Ruleset {
        let local: Vec<&PodEndpoint> = self
            .input
            .cluster
            .pods
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| self.is_local(p))
            .collect();
        for family in self.families.clone() {
            for direction in Direction::BOTH {
                self.add_set(dispatch_map(direction, family), SetKind::Dispatch(family));
                self.add_set(counter_map(direction, family), SetKind::CounterMap(family));
            }
        }
        for direction in Direction::BOTH {
            for pod in &local {
                self.dispatch(pod, direction);
            }
        }
        if self.options.default_deny {
            self.uncompiled_pods(&local);
        }
        self.base_chains();
        self.ruleset
    }

    /// Takes a pod's addresses out of every set and map.
    fn remove_pod(&mut self, pod: &PodEndpoint) {
        let ips: Vec<String> = pod.ips.iter().map(|ip| ip.to_string()).collect();
        let holding: Vec<String> = self
            .ruleset
            .sets
            .iter()
            .filter(|(_, set)| !matches!(set.members, Members::Other) || set.kind.is_map())
            .filter(|(_, set)| ips.iter().any(|ip| set.elements.has_address(ip)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in holding {
            let Some(set) = self.ruleset.sets.get_mut(&name) else {
                continue;
            };
            let set = Arc::make_mut(set);
            for ip in &ips {
                for value in set.elements.remove_address(ip) {
                    self.released.insert(reference(&value).to_string());
                }
            }
        }
    }

    /// Puts a pod's addresses into every set and map it belongs in, compiling chains
    /// its policies need and do not have yet.
    fn add_pod(&mut self, pod: &PodEndpoint) {
        if !pod.policed() {
            return;
        }
        let local = self.is_local(pod);
        let namespace_labels = self.input.cluster.namespace_labels(&pod.namespace);
        let mut additions: Vec<(String, Vec<String>)> = Vec::new();
        for (name, set) in self.ruleset.sets.iter() {
            let family = match set.kind {
                SetKind::Addr(f) | SetKind::NamedPort(f) => f,
                _ => continue,
            };
            let ips = pod.ips.iter().filter(|ip| Family::of(**ip) == family);
            let entries: Vec<String> = match &set.members {
                Members::Peer(peer) if peer_selects(peer, pod, &namespace_labels) => {
                    ips.map(|ip| ip.to_string()).collect()
                }
                Members::LocalPods if local => ips.map(|ip| ip.to_string()).collect(),
                Members::NamedPort(name) => ips
                    .flat_map(|ip| {
                        pod.ports
                            .iter()
                            .filter(|p| p.name.as_deref() == Some(name.as_str()))
                            .map(move |p| named_port_element(*ip, p.protocol, p.port))
                    })
                    .collect(),
                _ => continue,
            };
            if entries
                .iter()
                .any(|entry| !set.elements.contains_key(entry))
            {
                additions.push((name.clone(), entries));
            }
        }
        for (name, entries) in additions {
            if let Some(set) = self.ruleset.sets.get_mut(&name) {
                let elements = &mut Arc::make_mut(set).elements;
                for entry in entries {
                    elements.insert(entry, String::new());
                }
            }
        }
        if local {
            for direction in Direction::BOTH {
                self.dispatch(pod, direction);
            }
        }
    }

    /// Drops the chains, sets and counters that removed map entries pointed to and
    /// nothing refers to any more (a full compile would not create them), so an
    /// incremental result equals a full one.
    fn collect_garbage(&mut self) {
        let mut candidates: Vec<String> = std::mem::take(&mut self.released)
            .into_iter()
            .filter(|name| !name.is_empty())
            .collect();
        let mut released_sets: BTreeSet<String> = BTreeSet::new();
        while let Some(name) = candidates.pop() {
            if self.referenced(&name) {
                continue;
            }
            if let Some(chain) = self.ruleset.chains.remove(&name) {
                for rule in &chain.rules {
                    if let Some(target) = rule.strip_prefix("jump ") {
                        candidates.push(target.to_string());
                    }
                    released_sets.extend(
                        rule.split(' ')
                            .filter_map(|word| word.strip_prefix('@'))
                            .map(String::from),
                    );
                }
            } else if name != INVALID_COUNTER && name != UNCOMPILED_COUNTER {
                self.ruleset.counters.remove(&name);
            }
        }
        for set in released_sets {
            let needle = format!("@{set}");
            let used = self.ruleset.chains.values().any(|c| {
                c.rules
                    .iter()
                    .any(|r| r.split(' ').any(|word| word == needle))
            });
            if !used {
                self.ruleset.sets.remove(&set);
            }
        }
    }

    /// Whether a map entry or a group chain refers to the chain or counter `name`.
    fn referenced(&self, name: &str) -> bool {
        // Verdict maps refer to chains, counter maps to counters.
        let is_chain = self.ruleset.chains.contains_key(name);
        let by_map = self.ruleset.sets.values().any(|set| {
            let refers = match set.kind {
                SetKind::Dispatch(_) => is_chain,
                SetKind::CounterMap(_) => !is_chain,
                _ => false,
            };
            refers && set.elements.values().any(|value| reference(value) == name)
        });
        by_map
            || self.ruleset.chains.values().any(|chain| {
                chain.kind == ChainKind::Group
                    && chain
                        .rules
                        .iter()
                        .any(|r| r.strip_prefix("jump ") == Some(name))
            })
    }

    /// Adds the dispatch and counter map entries of one local pod for one direction,
    /// compiling the chains they point to on first use.
    fn dispatch(&mut self, pod: &PodEndpoint, direction: Direction) {
        let selecting: Vec<&Policy> = self
            .policies_by_namespace
            .get(pod.namespace.as_str())
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| p.rules(direction).is_some() && p.pod_selector.matches(&pod.labels))
            .collect();
        if selecting.is_empty() {
            return;
        }
        let with_rules: Vec<&Policy> = selecting
            .iter()
            .copied()
            .filter(|p| p.rules(direction).is_some_and(|r| !r.is_empty()))
            .collect();
        let verdict = match with_rules.as_slice() {
            [] => "continue".to_string(),
            [policy] => format!("jump {}", self.policy_chain(policy, direction)),
            several => format!("jump {}", self.group_chain(several, direction)),
        };
        let counter = self.counter(&selecting, direction);
        for ip in &pod.ips {
            let family = Family::of(*ip);
            self.insert(
                &dispatch_map(direction, family),
                ip.to_string(),
                verdict.clone(),
            );
            self.insert(
                &counter_map(direction, family),
                ip.to_string(),
                quote(&counter),
            );
        }
    }

    /// Sets an element, copying the set first only if another ruleset shares it
    /// and the element changes.
    fn insert(&mut self, set: &str, key: String, value: String) {
        let Some(set) = self.ruleset.sets.get_mut(set) else {
            return;
        };
        if Arc::get_mut(set).is_none() && set.elements.get(&key) == Some(&value) {
            return;
        }
        Arc::make_mut(set).elements.insert(key, value);
    }

    fn add_set(&mut self, name: String, kind: SetKind) {
        self.ruleset
            .sets
            .entry(name)
            .or_insert_with(|| Arc::new(Set::new(kind, None, Members::Other)));
    }

    fn counter(&mut self, policies: &[&Policy], direction: Direction) -> String {
        let keys: Vec<String> = policies.iter().map(|p| p.key()).collect();
        let name = match keys.as_slice() {
            [key] => bounded(format!("{direction}-drops/{key}")),
            _ => format!("{direction}-drops/group-{}", hash(&keys.join(" "))),
        };
        if !self.ruleset.counters.contains_key(&name) {
            self.ruleset.counters.insert(
                name.clone(),
                Arc::new(Counter {
                    direction: Some(direction),
                    policies: keys,
                }),
            );
        }
        name
    }

    fn group_chain(&mut self, policies: &[&Policy], direction: Direction) -> String {
        let keys: Vec<String> = policies.iter().map(|p| p.key()).collect();
        let name = format!("{direction}/group-{}", hash(&keys.join(" ")));
        if !self.ruleset.chains.contains_key(&name) {
            let rules = policies
                .iter()
                .map(|p| format!("jump {}", self.policy_chain(p, direction)))
                .collect();
            self.ruleset.chains.insert(
                name.clone(),
                Arc::new(Chain {
                    kind: ChainKind::Group,
                    rules,
                }),
            );
        }
        name
    }

    /// The chain of one policy's rules for one direction: each rule becomes one nft
    /// rule per (peer, port, family) that accepts; no match falls through.
    fn policy_chain(&mut self, policy: &Policy, direction: Direction) -> String {
        let name = bounded(format!("{direction}/{}", policy.key()));
        if self.ruleset.chains.contains_key(&name) {
            return name;
        }
        let mut rules: Vec<String> = Vec::new();
        for (i, rule) in policy
            .rules(direction)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            for text in self.rule(rule, direction) {
                let text = format!("{text} comment \"{direction}[{i}]\"");
                if !rules.contains(&text) {
                    rules.push(text);
                }
            }
        }
        self.ruleset.chains.insert(
            name.clone(),
            Arc::new(Chain {
                kind: ChainKind::Policy,
                rules,
            }),
        );
        name
    }

    fn rule(&mut self, rule: &Rule, direction: Direction) -> Vec<String> {
        let address = match direction {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        };
        // Each peer as (family it is limited to, match text); `None` family = any.
        let mut peers: Vec<(Option<Family>, String)> = Vec::new();
        match &rule.peers {
            None => peers.push((None, String::new())),
            Some(list) => {
                for peer in list {
                    for family in self.families.clone() {
                        let set = match peer {
                            Peer::Pods { .. } => self.peer_set(peer, family),
                            Peer::IpBlock(block) if Family::of(block.cidr.addr()) == family => {
                                self.block_set(block, family)
                            }
                            Peer::IpBlock(_) => continue,
                        };
                        peers.push((
                            Some(family),
                            format!("{} {address} @{set}", family.keyword()),
                        ));
                    }
                }
            }
        }
        let mut ports: Vec<(Option<Protocol>, &PortSpec)> = Vec::new();
        match &rule.ports {
            None => ports.push((None, &PortSpec::Any)),
            Some(list) => ports.extend(list.iter().map(|p| (Some(p.protocol), &p.port))),
        }
        let mut out = Vec::new();
        for (peer_family, peer) in &peers {
            for (protocol, port) in &ports {
                let families: Vec<Option<Family>> = match (peer_family, port) {
                    (Some(family), _) => vec![Some(*family)],
                    (None, PortSpec::Named(_)) => self.families.iter().copied().map(Some).collect(),
                    (None, _) => vec![None],
                };
                for family in families {
                    let port = match (protocol, port) {
                        (None, _) => String::new(),
                        (Some(p), PortSpec::Any) => format!("meta l4proto {}", p.nft()),
                        (Some(p), PortSpec::Range(a, b)) if a == b => {
                            format!("{} dport {a}", p.nft())
                        }
                        (Some(p), PortSpec::Range(a, b)) => format!("{} dport {a}-{b}", p.nft()),
                        (Some(p), PortSpec::Named(name)) => {
                            let Some(family) = family else { continue };
                            let set = self.named_port_set(name, family);
                            format!(
                                "meta l4proto {} {} daddr . meta l4proto . th dport @{set}",
                                p.nft(),
                                family.keyword()
                            )
                        }
                    };
                    let parts: Vec<&str> = [peer.as_str(), port.as_str(), "accept"]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect();
                    out.push(parts.join(" "));
                }
            }
        }
        out
    }

    /// The set of addresses of the pods a peer selects, shared by every rule using it.
    fn peer_set(&mut self, peer: &Peer, family: Family) -> String {
        let description = peer.to_string();
        let name = format!("pods{}/{}", family.suffix(), hash(&description));
        if self.ruleset.sets.contains_key(&name) {
            return name;
        }
        let Peer::Pods { namespaces, pods } = peer else {
            return name;
        };
        let namespace_names: Vec<&str> = match namespaces {
            NamespaceScope::Policy(ns) => vec![ns.as_str()],
            NamespaceScope::Matching(selector) => self
                .pods_by_namespace()
                .keys()
                .copied()
                .filter(|ns| selector.matches(&self.input.cluster.namespace_labels(ns)))
                .collect(),
        };
        let mut elements = BTreeMap::new();
        for ns in namespace_names {
            for pod in self.pods_by_namespace().get(ns).into_iter().flatten() {
                if pods.matches(&pod.labels) {
                    for ip in pod.ips.iter().filter(|ip| Family::of(**ip) == family) {
                        elements.insert(ip.to_string(), String::new());
                    }
                }
            }
        }
        let set = Set::new(
            SetKind::Addr(family),
            Some(description),
            Members::Peer(peer.clone()),
        );
        self.ruleset
            .sets
            .insert(name.clone(), Arc::new(set.with_elements(elements)));
        name
    }

    fn block_set(&mut self, block: &IpBlockMatch, family: Family) -> String {
        let description = block.to_string();
        let name = format!("block{}/{}", family.suffix(), hash(&description));
        if !self.ruleset.sets.contains_key(&name) {
            let elements: Elements = ranges(block)
                .into_iter()
                .map(|(start, end)| (range_element(start, end), String::new()))
                .collect();
            let set = Set::new(SetKind::Interval(family), Some(description), Members::Other);
            self.ruleset
                .sets
                .insert(name.clone(), Arc::new(set.with_elements(elements)));
        }
        name
    }

    /// `address . protocol . port` of every pod that declares a port named `port`.
    fn named_port_set(&mut self, port: &str, family: Family) -> String {
        let name = format!("port{}/{port}", family.suffix());
        if !self.ruleset.sets.contains_key(&name) {
            let mut elements = BTreeMap::new();
            for pod in self.pods_by_namespace().values().flatten() {
                for declared in pod.ports.iter().filter(|p| p.name.as_deref() == Some(port)) {
                    for ip in pod.ips.iter().filter(|ip| Family::of(**ip) == family) {
                        elements.insert(
                            named_port_element(*ip, declared.protocol, declared.port),
                            String::new(),
                        );
                    }
                }
            }
            let set = Set::new(
                SetKind::NamedPort(family),
                Some(format!("pods serving a port named {port}")),
                Members::NamedPort(port.to_string()),
            );
            self.ruleset
                .sets
                .insert(name.clone(), Arc::new(set.with_elements(elements)));
        }
        name
    }

    /// `--firewall-default-deny`: this node's pod CIDRs, and the local pods compiled.
    fn uncompiled_pods(&mut self, local: &[&PodEndpoint]) {
        let cidrs = self
            .input
            .cluster
            .nodes
            .get(&self.options.node)
            .map(|n| n.pod_cidrs.clone())
            .unwrap_or_default();
        for family in Family::BOTH {
            let cidr_elements: BTreeMap<String, String> = cidrs
                .iter()
                .filter(|c| Family::of(c.addr()) == family)
                .map(|c| {
                    let block = IpBlockMatch {
                        cidr: *c,
                        except: Vec::new(),
                    };
                    let (start, end) = ranges(&block)[0];
                    (range_element(start, end), String::new())
                })
                .collect();
            if cidr_elements.is_empty() {
                continue;
            }
            let local_elements: Elements = local
                .iter()
                .flat_map(|p| p.ips.iter())
                .filter(|ip| Family::of(**ip) == family)
                .map(|ip| (ip.to_string(), String::new()))
                .collect();
            let cidrs = Set::new(
                SetKind::Interval(family),
                Some(format!("pod CIDRs of node {}", self.options.node)),
                Members::Other,
            );
            self.ruleset.sets.insert(
                format!("node-pod-cidrs{}", family.suffix()),
                Arc::new(cidrs.with_elements(cidr_elements)),
            );
            let local = Set::new(
                SetKind::Addr(family),
                Some("pods of this node that have been compiled".into()),
                Members::LocalPods,
            );
            self.ruleset.sets.insert(
                format!("local-pods{}", family.suffix()),
                Arc::new(local.with_elements(local_elements)),
            );
        }
        self.ruleset.counters.insert(
            UNCOMPILED_COUNTER.into(),
            Arc::new(Counter {
                direction: None,
                policies: Vec::new(),
            }),
        );
    }

    fn base_chains(&mut self) {
        let log = match self.options.log_group {
            Some(group) => format!(" log prefix \"kubewire drop: \" group {group}"),
            None => String::new(),
        };
        self.ruleset.counters.insert(
            INVALID_COUNTER.into(),
            Arc::new(Counter {
                direction: None,
                policies: Vec::new(),
            }),
        );
        for direction in Direction::BOTH {
            let (chain, priority, address) = match direction {
                Direction::Egress => (EGRESS_CHAIN, EGRESS_PRIORITY, "saddr"),
                Direction::Ingress => (INGRESS_CHAIN, INGRESS_PRIORITY, "daddr"),
            };
            let mut rules = vec!["ct state established,related accept".to_string()];
            if direction == Direction::Egress {
                rules.push(format!(
                    "ct state invalid counter name \"{INVALID_COUNTER}\" drop"
                ));
            }
            if self.families.contains(&Family::V6) {
                // IPv6 neighbour discovery between pods on one bridge is link
                // plumbing, like ARP, not a connection policies speak about.
                rules.push(NEIGHBOR_DISCOVERY.to_string());
            }
            if direction == Direction::Ingress {
                for family in Family::BOTH {
                    let cidrs = format!("node-pod-cidrs{}", family.suffix());
                    if self.ruleset.sets.contains_key(&cidrs) {
                        rules.push(format!(
                            "{k} daddr @{cidrs} {k} daddr != @local-pods{s} counter name \"{UNCOMPILED_COUNTER}\"{log} drop",
                            k = family.keyword(),
                            s = family.suffix()
                        ));
                    }
                }
            }
            for family in &self.families {
                rules.push(format!(
                    "{} {address} vmap @{}",
                    family.keyword(),
                    dispatch_map(direction, *family)
                ));
            }
            for family in &self.families {
                rules.push(format!(
                    "counter name {} {address} map @{}{log} drop",
                    family.keyword(),
                    counter_map(direction, *family)
                ));
            }
            self.ruleset.chains.insert(
                chain.to_string(),
                Arc::new(Chain {
                    kind: ChainKind::Base { priority },
                    rules,
                }),
            );
        }
    }
}

fn dispatch_map(direction: Direction, family: Family) -> String {
    format!("{direction}-dispatch{}", family.suffix())
}

fn counter_map(direction: Direction, family: Family) -> String {
    format!("{direction}-counters{}", family.suffix())
}

/// Whether `peer` selects `pod` (whose namespace has `namespace_labels`).
fn peer_selects(
    peer: &Peer,
    pod: &PodEndpoint,
    namespace_labels: &super::selector::Labels,
) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => {
            let namespace_ok = match namespaces {
                NamespaceScope::Policy(ns) => *ns == pod.namespace,
                NamespaceScope::Matching(selector) => selector.matches(namespace_labels),
            };
            pod.policed() && namespace_ok && pods.matches(&pod.labels)
        }
        Peer::IpBlock(_) => false,
    }
}

fn named_port_element(ip: IpAddr, protocol: Protocol, port: u16) -> String {
    format!("{ip} . {} . {port}", protocol.nft())
}

/// The chain or counter a map value refers to (`jump NAME`, `"NAME"`), or "".
fn reference(value: &str) -> &str {
    value
        .strip_prefix("jump ")
        .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
        .unwrap_or("")
}

fn quote(text: &str) -> String {
    format!("\"{text}\"")
}

/// Keeps object names within nft's limit (255 bytes), stably.
fn bounded(name: String) -> String {
    const MAX: usize = 200;
    if name.len() <= MAX {
        return name;
    }
    let mut cut = MAX - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{}", &name[..cut], hash(&name))
}

/// FNV-1a, 64 bits, as 16 hex digits: stable names across runs and versions.
pub fn hash(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The address ranges of `cidr` minus every `except`, sorted and disjoint.
pub fn ranges(block: &IpBlockMatch) -> Vec<(IpAddr, IpAddr)> {
    let bounds = |net: &ipnet::IpNet| -> (u128, u128) {
        match net {
            ipnet::IpNet::V4(n) => (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
            ),
            ipnet::IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
        }
    };
    let v4 = block.cidr.addr().is_ipv4();
    let mut pieces = vec![bounds(&block.cidr)];
    let mut excepts: Vec<(u128, u128)> = block.except.iter().map(bounds).collect();
    excepts.sort();
    for (ex_start, ex_end) in excepts {
        let mut next = Vec::new();
        for (start, end) in pieces {
            if ex_end < start || ex_start > end {
                next.push((start, end));
                continue;
            }
            if ex_start > start {
                next.push((start, ex_start - 1));
            }
            if ex_end < end {
                next.push((ex_end + 1, end));
            }
        }
        pieces = next;
    }
    let addr = |value: u128| -> IpAddr {
        if v4 {
            IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX)))
        } else {
            IpAddr::V6(Ipv6Addr::from(value))
        }
    };
    pieces
        .into_iter()
        .map(|(start, end)| (addr(start), addr(end)))
        .collect()
}

fn range_element(start: IpAddr, end: IpAddr) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::manifests;

    fn input(yaml: &str) -> FirewallInput {
        let objects = manifests::parse_documents(std::path::Path::new("t.yaml"), yaml).unwrap();
        FirewallInput::from_snapshot(&manifests::snapshot_from_objects(&objects).unwrap())
    }

    fn options(node: &str) -> CompileOptions {
        CompileOptions {
            node: node.into(),
            default_deny: false,
            log_group: None,
        }
    }

    fn pod(name: &str, node: &str, ip: &str, labels: &str) -> String {
        format!(
            "kind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{{labels}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, ports: [{{containerPort: 8080, name: http}}]}}]}}\n\
             status: {{podIP: {ip}}}\n---\n"
        )
    }

    const POLICIES: &str = "\
kind: NetworkPolicy\nmetadata: {name: web, namespace: x}\n\
spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: http}, {port: 9000, endPort: 9100, protocol: UDP}]}]}\n---\n\
kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\n\
spec: {podSelector: {}, policyTypes: [Ingress]}\n---\n\
kind: NetworkPolicy\nmetadata: {name: out, namespace: x}\n\
spec: {podSelector: {matchLabels: {app: web}}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]}]}\n---\n";

    #[test]
    fn policy_chains_sets_and_dispatch() {
        let yaml = [
            pod("w1", "n1", "10.0.1.1", "app: web"),
            pod("w2", "n2", "10.0.2.1", "app: web"),
            pod("c1", "n2", "10.0.2.2", "app: client"),
            POLICIES.to_string(),
        ]
        .concat();
        let ruleset = compile(&input(&yaml), &options("n1"));
        let chains: Vec<&str> = ruleset.chains.keys().map(String::as_str).collect();
        assert_eq!(
            chains,
            ["egress/x/out", "ingress/x/web", "pod-egress", "pod-ingress"],
            "a single policy with rules is jumped to directly: no group chain"
        );
        let clients = format!("pods4/{}", hash("pods app=client in namespace x"));
        assert_eq!(
            ruleset.chains["ingress/x/web"].rules,
            [
                format!(
                    "ip saddr @{clients} meta l4proto tcp ip daddr . meta l4proto . th dport @port4/http accept comment \"ingress[0]\""
                ),
                format!("ip saddr @{clients} udp dport 9000-9100 accept comment \"ingress[0]\""),
            ]
        );
        assert_eq!(
            ruleset.sets[&clients].elements.keys().collect::<Vec<_>>(),
            ["10.0.2.2"],
            "peer sets hold pods of every node"
        );
        assert_eq!(
            ruleset.sets["port4/http"]
                .elements
                .keys()
                .collect::<Vec<_>>(),
            [
                "10.0.1.1 . tcp . 8080",
                "10.0.2.1 . tcp . 8080",
                "10.0.2.2 . tcp . 8080"
            ]
        );
        let block = format!("block4/{}", hash("ipBlock 10.0.0.0/8 except 10.1.0.0/16"));
        assert_eq!(
            ruleset.sets[&block].elements.keys().collect::<Vec<_>>(),
            ["10.0.0.0-10.0.255.255", "10.2.0.0-10.255.255.255"]
        );
        // Only the local pod is dispatched: jump to its only policy chain with rules,
        // its drops counted for both policies isolating it.
        let dispatch = &ruleset.sets["ingress-dispatch4"].elements;
        assert_eq!(dispatch.len(), 1);
        assert_eq!(dispatch["10.0.1.1"], "jump ingress/x/web");
        let counter = ruleset.sets["ingress-counters4"].elements["10.0.1.1"]
            .trim_matches('"')
            .to_string();
        // `out` has egress rules and no policyTypes: it isolates ingress too.
        assert_eq!(
            ruleset.counters[&counter].policies,
            ["x/deny", "x/out", "x/web"]
        );
        assert_eq!(
            ruleset.sets["egress-dispatch4"].elements["10.0.1.1"],
            "jump egress/x/out"
        );
        assert!(
            !ruleset.sets.contains_key("ingress-dispatch6"),
            "no IPv6 pods, no IPv6 maps"
        );
    }

    #[test]
    fn chains_do_not_grow_with_pods() {
        let few = [
            pod("w1", "n1", "10.0.1.1", "app: web"),
            POLICIES.to_string(),
        ]
        .concat();
        let mut many = POLICIES.to_string();
        for i in 0..200 {
            let labels = if i % 2 == 0 {
                "app: web"
            } else {
                "app: client"
            };
            many.push_str(&pod(
                &format!("p{i}"),
                "n1",
                &format!("10.0.{}.{}", i / 200, i % 200 + 2),
                labels,
            ));
        }
        let few = compile(&input(&few), &options("n1"));
        let many = compile(&input(&many), &options("n1"));
        assert_eq!(
            few.chains.keys().collect::<Vec<_>>(),
            many.chains.keys().collect::<Vec<_>>()
        );
        assert_eq!(few.rule_count(), many.rule_count());
        assert!(many.element_count() > few.element_count() + 400);
    }

    #[test]
    fn isolation_without_rules_continues_to_the_drop() {
        let yaml = [
            pod("a", "n1", "10.0.1.1", "app: other"),
            POLICIES.to_string(),
        ]
        .concat();
        let yaml = yaml.trim_end_matches("---\n");
        let ruleset = compile(&input(yaml), &options("n1"));
        assert_eq!(
            ruleset.sets["ingress-dispatch4"].elements["10.0.1.1"],
            "continue"
        );
        assert!(ruleset.sets["egress-dispatch4"].elements.is_empty());
        assert!(
            ruleset.chains["pod-ingress"]
                .rules
                .iter()
                .any(|r| r == "counter name ip daddr map @ingress-counters4 drop")
        );
    }

    #[test]
    fn a_peer_that_does_not_parse_matches_nothing_and_the_pod_stays_isolated() {
        let policy = |from: &str| {
            format!(
                "kind: NetworkPolicy\nmetadata: {{name: web, namespace: x}}\n\
                 spec: {{podSelector: {{matchLabels: {{app: web}}}}, ingress: [{{from: [{from}]}}]}}\n"
            )
        };
        let pods = [
            pod("w1", "n1", "10.0.1.1", "app: web"),
            pod("c1", "n1", "10.0.1.2", "app: client"),
        ]
        .concat();
        // Only a bad ipBlock: isolated, nothing admitted (before: the policy was
        // dropped and w1 was open to everyone).
        let input_bad = input(&format!(
            "{pods}{}",
            policy("{ipBlock: {cidr: 10.0.0.0/33}}")
        ));
        assert_eq!(input_bad.errors.len(), 1, "{:?}", input_bad.errors);
        assert_eq!(input_bad.errors[0].reason, "invalid_peer");
        let ruleset = compile(&input_bad, &options("n1"));
        let dispatch = &ruleset.sets["ingress-dispatch4"].elements["10.0.1.1"];
        let admitted = ruleset
            .chains
            .get("ingress/x/web")
            .map_or(0, |chain| chain.rules.len());
        assert!(
            dispatch == "continue" || (dispatch == "jump ingress/x/web" && admitted == 0),
            "w1 must be isolated with nothing admitted: {dispatch}, {admitted} rules"
        );
        assert!(
            !ruleset.sets["ingress-dispatch4"]
                .elements
                .contains_key("10.0.1.2")
        );
        // Beside a good peer: exactly the good peer's rule.
        let both = input(&format!(
            "{pods}{}",
            policy("{ipBlock: {cidr: 10.0.0.0/33}}, {podSelector: {matchLabels: {app: client}}}")
        ));
        let good = input(&format!(
            "{pods}{}",
            policy("{podSelector: {matchLabels: {app: client}}}")
        ));
        let (both, good) = (
            compile(&both, &options("n1")),
            compile(&good, &options("n1")),
        );
        assert_eq!(both.chains["ingress/x/web"].rules.len(), 1);
        assert_eq!(both.chains, good.chains);
        assert_eq!(both.sets, good.sets);
    }

    #[test]
    fn a_pod_claiming_anothers_address_takes_nothing_from_it() {
        let claimant = |name: &str, node: &str, started: &str| {
            format!(
                "kind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: web}}}}\n\
                 spec: {{nodeName: {node}, containers: [{{name: c, ports: [{{containerPort: 8080, name: http}}]}}]}}\n\
                 status: {{phase: Running, podIP: 10.0.1.1, startTime: '{started}'}}\n---\n"
            )
        };
        let owner = claimant("owner", "n1", "2026-01-02T00:00:00Z");
        // A stale status on another node, started before the owner.
        let stale = claimant("stale", "n2", "2026-01-01T00:00:00Z");
        let client = pod("c1", "n2", "10.0.2.2", "app: client");
        let with = |pods: &[&str]| input(&format!("{}{POLICIES}", pods.concat()));
        let alone = with(&[&owner, &client]);
        let both = with(&[&owner, &stale, &client]);
        let reported: Vec<(&str, &str)> = both
            .errors
            .iter()
            .map(|e| (e.message.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            reported,
            [(
                "Pod x/stale: status.podIPs[0].ip: 10.0.1.1 is also claimed by Pod x/owner, which owns it (running, most recently started); ignored here",
                "duplicate_pod_ip"
            )]
        );
        for node in ["n1", "n2"] {
            let full = compile(&alone, &options(node));
            assert_eq!(
                compile(&both, &options(node)),
                full,
                "{node}: the stale pod changes nothing"
            );
            // Deleting the stale pod leaves the owner's entries (before: they vanished
            // on every node until an unrelated change).
            let mut compiler = IncrementalCompiler::new(options(node));
            compiler.compile(alone.clone());
            compiler.compile(both.clone());
            assert_eq!(
                compiler.compile(alone.clone()),
                full,
                "{node}: stale pod deleted"
            );
            // Deleting the owner hands the address to the remaining claimant.
            let stale_only = with(&[&stale, &client]);
            assert!(stale_only.errors.is_empty());
            assert_eq!(
                compiler.compile(with(&[&owner, &stale, &client])),
                full,
                "{node}: stale pod back"
            );
            assert_eq!(
                compiler.compile(stale_only.clone()),
                compile(&stale_only, &options(node)),
                "{node}: owner deleted"
            );
        }
    }

    #[test]
    fn incremental_equals_full_compile() {
        use crate::firewall::cluster::PodEndpoint;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netpol/cases");
        let load = |case: &str| {
            FirewallInput::from_snapshot(&manifests::load_snapshot(&root.join(case)).unwrap())
        };
        // Each step changes only pods, so the incremental path is taken.
        type Mutation = fn(&mut Vec<PodEndpoint>);
        let mutations: [(&str, Mutation); 8] = [
            ("relabel a peer", |pods| {
                Arc::make_mut(&mut pods[1].labels).insert("pod2".into(), "updated".into());
            }),
            ("relabel a target", |pods| {
                Arc::make_mut(&mut pods[0].labels).insert("pod".into(), "z".into());
            }),
            ("remove a pod", |pods| {
                pods.remove(2);
            }),
            ("add a pod", |pods| {
                let mut pod = pods[0].clone();
                pod.name = "new".into();
                pod.ips = vec!["10.244.1.99".parse().unwrap()];
                Arc::make_mut(&mut pod.labels).insert("pod".into(), "a".into());
                pods.push(pod);
                pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            }),
            ("move a pod to the other node", |pods| {
                pods[3].node = Some("n1".into());
                pods[3].ips = vec!["10.244.1.98".parse().unwrap()];
            }),
            ("rename a port", |pods| {
                for port in &mut pods[4].ports {
                    if port.name.as_deref() == Some("serve-80-tcp") {
                        port.name = Some("renamed".into());
                    }
                }
            }),
            ("an address moves to another pod", |pods| {
                let ip = pods[0].ips[0];
                pods[0].ips = vec!["10.244.1.97".parse().unwrap()];
                pods[5].ips = vec![ip];
            }),
            ("nothing", |_| {}),
        ];
        for case in [
            "u22-ingress-from-updated-pod/1",
            "u17-ingress-named-port/1",
            "u28-deny-egress-client-side/1",
            "s06-selector-operators/1",
        ] {
            for node in ["n1", "n2"] {
                let mut options = options(node);
                options.default_deny = true;
                let mut incremental = IncrementalCompiler::new(options.clone());
                let mut input = load(case);
                assert_eq!(
                    incremental.compile(input.clone()),
                    compile(&input, &options)
                );
                for (what, mutate) in &mutations {
                    // Unchanged pods keep their `Arc`, as with the watch cache.
                    let before = input.cluster.pods.clone();
                    let mut pods: Vec<PodEndpoint> = before.iter().map(|p| (**p).clone()).collect();
                    mutate(&mut pods);
                    input.cluster.pods = pods
                        .into_iter()
                        .map(|pod| {
                            before
                                .iter()
                                .find(|old| ***old == pod)
                                .cloned()
                                .unwrap_or_else(|| Arc::new(pod))
                        })
                        .collect();
                    assert_eq!(
                        incremental.compile(input.clone()),
                        compile(&input, &options),
                        "{case} on {node}: {what}"
                    );
                }
                // A policy change falls back to a full compile, and still agrees.
                Arc::make_mut(&mut input.policies).pop();
                assert_eq!(
                    incremental.compile(input.clone()),
                    compile(&input, &options)
                );
            }
        }
    }

    #[test]
    fn ranges_subtract_excepts() {
        let block = |cidr: &str, except: &[&str]| IpBlockMatch {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        };
        let text = |b: &IpBlockMatch| -> Vec<String> {
            ranges(b)
                .into_iter()
                .map(|(s, e)| range_element(s, e))
                .collect()
        };
        assert_eq!(text(&block("10.0.0.0/30", &[])), ["10.0.0.0-10.0.0.3"]);
        assert_eq!(
            text(&block("10.0.0.0/24", &["10.0.0.0/25", "10.0.0.200/32"])),
            ["10.0.0.128-10.0.0.199", "10.0.0.201-10.0.0.255"]
        );
        assert_eq!(
            text(&block("0.0.0.0/0", &["0.0.0.0/1"])),
            ["128.0.0.0-255.255.255.255"]
        );
        assert_eq!(text(&block("fd00::/127", &["fd00::1/128"])), ["fd00::"]);
    }
}

//! The compiler the agent keeps between syncs: every Service's compiled part (its
//! claims, one per frontend) is kept, so a changed Service or EndpointSlice
//! recompiles that Service only and changes the desired table in place (a
//! [`Sink`]: the [`Ruleset`] of a whole compile, or the lowered [`nft::Table`] the
//! reconciler diffs, where an untouched set or shard stays shared with the last
//! sync and so costs nothing to compare).
//!
//! A frontend (`address . protocol . port`) may be claimed by more than one Service
//! port; the first claim (ClusterIPs before other addresses, then by Service, port
//! and frontend) is the one in the table, and the others are reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::compile::{
    ChainInputs, Claim, Dataplane, Shared, chains_for, count_maps, declarations, fixed_elements,
    port_claims,
};
use super::ruleset::{Chain, Lowering, Ruleset};
use crate::nft::{self, Hook, Objects};
use crate::proxy::model::{ServiceMap, ServicePort};
use crate::proxy::services::Changed;

/// Where the compiler writes.
pub trait Sink {
    fn insert(&mut self, set: &str, key: String, value: Option<String>);
    fn remove(&mut self, set: &str, key: &str);
    /// Makes `keys` the elements of plain set `set`.
    fn fill(&mut self, set: &str, keys: &[String]);
    /// Declares map `name`, empty.
    fn add_map(&mut self, name: &str, declaration: &str);
    /// Declares (plain) set `name`, empty.
    fn add_set(&mut self, name: &str, declaration: &str);
    fn remove_set(&mut self, name: &str);
    fn set_chains(&mut self, chains: BTreeMap<String, Chain>);
}

impl Sink for Ruleset {
    fn insert(&mut self, set: &str, key: String, value: Option<String>) {
        if let Some(set) = self.sets.get_mut(set) {
            set.elements.insert(key, value);
        }
    }

    fn remove(&mut self, set: &str, key: &str) {
        if let Some(set) = self.sets.get_mut(set) {
            set.elements.remove(key);
        }
    }

    fn fill(&mut self, set: &str, keys: &[String]) {
        if let Some(set) = self.sets.get_mut(set) {
            set.elements = keys.iter().map(|k| (k.clone(), None)).collect();
        }
    }

    fn add_map(&mut self, name: &str, declaration: &str) {
        self.sets.insert(
            name.to_string(),
            super::ruleset::Set {
                map: true,
                declaration: declaration.to_string(),
                elements: BTreeMap::new(),
            },
        );
    }

    fn add_set(&mut self, name: &str, declaration: &str) {
        self.sets.insert(
            name.to_string(),
            super::ruleset::Set {
                map: false,
                declaration: declaration.to_string(),
                elements: BTreeMap::new(),
            },
        );
    }

    fn remove_set(&mut self, name: &str) {
        self.sets.remove(name);
    }

    fn set_chains(&mut self, chains: BTreeMap<String, Chain>) {
        self.chains = chains;
    }
}

impl Sink for nft::Table {
    fn insert(&mut self, set: &str, key: String, value: Option<String>) {
        if let Some(set) = self.sets.get_mut(set) {
            let set = Arc::make_mut(set);
            let key = if set.interval() {
                nft::model::canonical(&key)
            } else {
                key
            };
            set.elements.insert(key, value.unwrap_or_default());
        }
    }

    fn remove(&mut self, set: &str, key: &str) {
        if let Some(set) = self.sets.get_mut(set) {
            let set = Arc::make_mut(set);
            if set.interval() {
                set.elements.remove(&nft::model::canonical(key));
            } else {
                set.elements.remove(key);
            }
        }
    }

    fn fill(&mut self, name: &str, keys: &[String]) {
        let Some(old) = self.sets.get(name) else {
            return;
        };
        let elements: nft::Elements = keys.iter().map(|k| (k.clone(), String::new())).collect();
        let new = (**old).clone().with_elements(elements);
        if new != **old {
            self.sets.insert(name.to_string(), Arc::new(new));
        }
    }

    fn add_map(&mut self, name: &str, declaration: &str) {
        self.sets.insert(
            name.to_string(),
            Arc::new(nft::Set::new(true, declaration, None)),
        );
    }

    fn add_set(&mut self, name: &str, declaration: &str) {
        self.sets.insert(
            name.to_string(),
            Arc::new(nft::Set::new(false, declaration, None)),
        );
    }

    fn remove_set(&mut self, name: &str) {
        self.sets.remove(name);
    }

    fn set_chains(&mut self, chains: BTreeMap<String, Chain>) {
        let mut lowered = Objects::default();
        for (name, chain) in chains {
            let hook = chain.base.as_deref().and_then(Hook::parse);
            let new = nft::Chain::new(hook, chain.rules);
            let kept = self.chains.get(&name).filter(|old| ***old == new).cloned();
            lowered.insert(name, kept.unwrap_or_else(|| Arc::new(new)));
        }
        let unchanged = lowered.len() == self.chains.len()
            && lowered
                .iter()
                .zip(self.chains.iter())
                .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y));
        if !unchanged {
            self.chains = lowered;
        }
    }
}

/// A claim's place in line for its frontend: (not a ClusterIP, Service, port index,
/// frontend index); the least is the owner.
type Rank = (bool, String, usize, usize);

/// The claims on one frontend, sorted by rank (the owner first). Almost always one:
/// a vector of it is a tenth of the smallest B-tree node.
type Claims = Vec<(Rank, Claim)>;

/// What one Service has in the compiler.
#[derive(Default)]
struct Fragment {
    /// Its ports' `cluster-ips` elements.
    cluster_ips: Vec<Shared>,
    /// Its claims, by frontend.
    frontends: Vec<(String, Rank)>,
}

/// The owners' claims applied to the sink, with the reference counts of what
/// several owners may share.
struct Output<S> {
    sink: S,
    shared: HashMap<Shared, usize>,
    counts: BTreeMap<(bool, usize), usize>,
    timeouts: BTreeMap<u32, usize>,
    /// The owners' own chains ([`Claim::chains`]).
    chains: BTreeMap<String, Vec<String>>,
}

impl<S: Sink> Output<S> {
    fn share(&mut self, shared: &Shared) {
        let count = self.shared.entry(*shared).or_default();
        *count += 1;
        if *count == 1 {
            self.sink.insert(shared.set(), shared.key(), None);
        }
    }

    fn unshare(&mut self, shared: &Shared) {
        let Some(count) = self.shared.get_mut(shared) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.shared.remove(shared);
            self.sink.remove(shared.set(), &shared.key());
        }
    }

    fn apply(&mut self, claim: &Claim) {
        // A count's own maps first: its elements go there.
        for &(local, n) in &claim.counts {
            let users = self.counts.entry((local, n)).or_default();
            *users += 1;
            if *users == 1 {
                for (name, declaration) in count_maps(local, n) {
                    self.sink.add_map(&name, &declaration);
                }
            }
        }
        for (name, declaration) in &claim.sets {
            self.sink.add_set(name, declaration);
        }
        for (set, key, value) in &claim.elements {
            self.sink.insert(set, key.clone(), value.clone());
        }
        for shared in &claim.shared {
            self.share(shared);
        }
        self.chains.extend(claim.chains.iter().cloned());
        if let Some(timeout) = claim.timeout {
            *self.timeouts.entry(timeout).or_default() += 1;
        }
    }

    fn unapply(&mut self, claim: &Claim) {
        for (set, key, _) in &claim.elements {
            self.sink.remove(set, key);
        }
        for shared in &claim.shared {
            self.unshare(shared);
        }
        for (name, _) in &claim.sets {
            self.sink.remove_set(name);
        }
        for (name, _) in &claim.chains {
            self.chains.remove(name);
        }
        for &(local, n) in &claim.counts {
            if release(&mut self.counts, &(local, n)) {
                for (name, _) in count_maps(local, n) {
                    self.sink.remove_set(&name);
                }
            }
        }
        if let Some(timeout) = &claim.timeout {
            release(&mut self.timeouts, timeout);
        }
    }
}

/// Drops one user of `key`; whether it was the last.
fn release<K: Ord>(counts: &mut BTreeMap<K, usize>, key: &K) -> bool {
    let Some(count) = counts.get_mut(key) else {
        return false;
    };
    *count -= 1;
    if *count == 0 {
        counts.remove(key);
        return true;
    }
    false
}

/// The compiled table, kept up to date one Service at a time.
pub struct Compiler<S> {
    dataplane: Dataplane,
    out: Output<S>,
    services: HashMap<String, Fragment>,
    /// Every claim per frontend, owner first.
    claims: HashMap<String, Claims>,
    /// Frontends with more than one claim.
    contested: BTreeSet<String>,
    /// What every Service's claims depend on besides the Service: where NodePorts
    /// listen and the node's addresses.
    context: Option<(Vec<IpAddr>, Vec<IpAddr>)>,
    fixed: Option<Vec<(&'static str, Vec<String>)>>,
    chains: Option<ChainInputs>,
}

impl Compiler<nft::Table> {
    /// A compiler into the lowered table (what the agent keeps).
    pub fn table(dataplane: Dataplane) -> Self {
        Self::new(
            dataplane,
            Lowering::default().lower(&declarations(dataplane)),
        )
    }
}

impl<S: Sink> Compiler<S> {
    /// Starts from `sink`: the table's sets, declared and empty.
    pub fn new(dataplane: Dataplane, sink: S) -> Self {
        Self {
            dataplane,
            out: Output {
                sink,
                shared: HashMap::new(),
                counts: BTreeMap::new(),
                timeouts: BTreeMap::new(),
                chains: BTreeMap::new(),
            },
            services: HashMap::new(),
            claims: HashMap::new(),
            contested: BTreeSet::new(),
            context: None,
            fixed: None,
            chains: None,
        }
    }

    pub fn sink(&self) -> &S {
        &self.out.sink
    }

    pub fn into_sink(self) -> S {
        self.out.sink
    }

    /// Brings the sink to `map`, recompiling the `changed` Services (every one when
    /// the node's addresses changed); returns the problems found (frontends claimed
    /// twice), all of them, not only the new ones.
    pub fn update(&mut self, map: &ServiceMap, changed: &Changed) -> Vec<String> {
        let context = (map.node_port_ips.clone(), map.node_ips.clone());
        if matches!(changed, Changed::All) || self.context.as_ref() != Some(&context) {
            let mut names: BTreeSet<String> = self.services.keys().cloned().collect();
            names.extend(map.ports.iter().map(|p| p.service.clone()));
            for name in &names {
                self.recompile(map, name);
            }
            self.context = Some(context);
        } else if let Changed::Services(names) = changed {
            for name in names {
                self.recompile(map, name);
            }
        }
        let fixed = fixed_elements(map);
        if self.fixed.as_ref() != Some(&fixed) {
            for (set, keys) in &fixed {
                self.out.sink.fill(set, keys);
            }
            self.fixed = Some(fixed);
        }
        let has_pod_cidrs = |v6: bool| map.pod_cidrs.iter().any(|n| n.addr().is_ipv6() == v6);
        let inputs = ChainInputs {
            counts: self.out.counts.keys().copied().collect(),
            timeouts: self.out.timeouts.keys().copied().collect(),
            has_pod_cidrs: [has_pod_cidrs(false), has_pod_cidrs(true)],
            masquerade_all: map.masquerade_all,
            claimed: self.out.chains.clone(),
        };
        if self.chains.as_ref() != Some(&inputs) {
            self.out
                .sink
                .set_chains(chains_for(&inputs, self.dataplane));
            self.chains = Some(inputs);
        }
        self.problems()
    }

    fn recompile(&mut self, map: &ServiceMap, name: &str) {
        self.remove_service(name);
        let ports = ports_of(map, name);
        if ports.is_empty() {
            return;
        }
        let mut fragment = Fragment::default();
        for (index, port) in ports.iter().enumerate() {
            let (cluster_ip, claims) = port_claims(self.dataplane, map, port);
            self.out.share(&cluster_ip);
            fragment.cluster_ips.push(cluster_ip);
            for (frontend, (is_cluster_ip, key, mut claim)) in claims.into_iter().enumerate() {
                let rank = (!is_cluster_ip, name.to_string(), index, frontend);
                fragment.frontends.push((key.clone(), rank.clone()));
                // Kept until the Service changes: without the room its lists grew.
                claim.elements.shrink_to_fit();
                claim.shared.shrink_to_fit();
                claim.counts.shrink_to_fit();
                self.add_claim(key, rank, claim);
            }
        }
        fragment.cluster_ips.shrink_to_fit();
        fragment.frontends.shrink_to_fit();
        self.services.insert(name.to_string(), fragment);
    }

    fn add_claim(&mut self, key: String, rank: Rank, claim: Claim) {
        let entry = self.claims.entry(key.clone()).or_default();
        let at = entry.partition_point(|(other, _)| *other < rank);
        if at == 0 {
            if let Some((_, previous)) = entry.first() {
                self.out.unapply(previous);
            }
            self.out.apply(&claim);
        }
        match entry.get_mut(at) {
            Some(same) if same.0 == rank => same.1 = claim,
            _ => {
                // Room for this one only: a first push would make room for four.
                entry.reserve_exact(1);
                entry.insert(at, (rank, claim));
            }
        }
        if entry.len() > 1 {
            self.contested.insert(key);
        }
    }

    fn remove_service(&mut self, name: &str) {
        let Some(fragment) = self.services.remove(name) else {
            return;
        };
        for cluster_ip in &fragment.cluster_ips {
            self.out.unshare(cluster_ip);
        }
        for (key, rank) in fragment.frontends {
            let Some(entry) = self.claims.get_mut(&key) else {
                continue;
            };
            let Ok(at) = entry.binary_search_by(|(other, _)| other.cmp(&rank)) else {
                continue;
            };
            let (_, claim) = entry.remove(at);
            if at == 0 {
                self.out.unapply(&claim);
                if let Some((_, next)) = entry.first() {
                    self.out.apply(next);
                }
            }
            if entry.len() < 2 {
                self.contested.remove(&key);
            }
            if entry.is_empty() {
                self.claims.remove(&key);
            }
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut out: Vec<(&Rank, String)> = Vec::new();
        for key in &self.contested {
            let Some(entry) = self.claims.get(key) else {
                continue;
            };
            let mut claims = entry.iter();
            let Some((owner, _)) = claims.next() else {
                continue;
            };
            for (rank, claim) in claims {
                out.push((
                    rank,
                    format!(
                        "Service {}: {} {key} is already served by {}; ignored",
                        rank.1,
                        claim.kind.as_str(),
                        owner.1
                    ),
                ));
            }
        }
        out.sort();
        out.into_iter().map(|(_, problem)| problem).collect()
    }
}

/// The ports of Service `name` (the map's ports are sorted by Service).
fn ports_of<'a>(map: &'a ServiceMap, name: &str) -> &'a [ServicePort] {
    let start = map.ports.partition_point(|p| p.service.as_str() < name);
    let end = map.ports.partition_point(|p| p.service.as_str() <= name);
    &map.ports[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::nftables::compile::compile;
    use crate::proxy::services::{self, Incremental, Options};
    use serde_json::{Value, json};

    fn node() -> Value {
        json!({"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}})
    }

    fn service(name: &str, spec: Value) -> Value {
        json!({"kind": "Service", "metadata": {"name": name, "namespace": "x"}, "spec": spec})
    }

    fn slice(service: &str, family: &str, ips: &[String]) -> Value {
        let endpoints: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "nodeName": if ip.ends_with(".1.10") { "n1" } else { "n2" }}))
            .collect();
        json!({"kind": "EndpointSlice",
               "metadata": {"name": format!("{service}-{family}"), "namespace": "x",
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": family, "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints})
    }

    fn ips(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{}", 10 + i)).collect()
    }

    /// Each step's objects, one object changed, added or removed at a time.
    fn steps() -> Vec<Vec<Value>> {
        let web = |extra: Value| {
            let mut spec = json!({"type": "NodePort", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                                  "ports": [{"name": "http", "port": 80, "nodePort": 30080}]});
            if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
                spec.extend(extra.clone());
            }
            service("web", spec)
        };
        let other = service(
            "other",
            json!({"clusterIP": "10.96.0.11", "externalIPs": ["10.96.0.10"],
                   "ports": [{"name": "http", "port": 80}]}),
        );
        let v6 = service(
            "six",
            json!({"clusterIP": "fd00::10", "ipFamilies": ["IPv6"], "ports": [{"name": "http", "port": 53, "protocol": "UDP"}]}),
        );
        let base = vec![
            node(),
            web(json!({})),
            slice("web", "IPv4", &ips("10.244.1.", 1)),
        ];
        let mut steps = vec![base.clone()];
        let mut now = base;
        let mut step = |now: &mut Vec<Value>, change: &dyn Fn(&mut Vec<Value>)| {
            change(now);
            steps.push(now.clone());
        };
        step(&mut now, &|o| o.push(other.clone()));
        step(&mut now, &|o| {
            o.push(slice("other", "IPv4", &ips("10.244.2.", 2)))
        });
        for n in [2, 17, 20, 3] {
            step(&mut now, &|o| {
                o[2] = slice("web", "IPv4", &ips("10.244.1.", n))
            });
        }
        step(&mut now, &|o| {
            o[1] = web(json!({"sessionAffinity": "ClientIP"}))
        });
        step(&mut now, &|o| o.push(v6.clone()));
        step(&mut now, &|o| {
            o.push(slice("six", "IPv6", &["fd00:244::10".to_string()]))
        });
        // IPv6 affinity: per-frontend sets and chains come, change and go.
        let six = now.len() - 2;
        step(&mut now, &|o| {
            o[six]["spec"]["sessionAffinity"] = json!("ClientIP");
            o[six]["spec"]["ports"][0]["protocol"] = json!("TCP");
        });
        step(&mut now, &|o| {
            o[six + 1] = slice("six", "IPv6", &ips("fd00:244::", 2))
        });
        step(&mut now, &|o| {
            o[six + 1] = slice("six", "IPv6", &ips("fd00:244::", 1))
        });
        // The owner of 10.96.0.10:80 goes: `other`'s externalIP takes it.
        step(&mut now, &|o| {
            o.remove(1);
        });
        step(&mut now, &|o| o.insert(1, web(json!({}))));
        step(&mut now, &|o| {
            o.retain(|v| v["metadata"]["name"] != "other-IPv4");
        });
        steps
    }

    fn keep_unchanged<T: PartialEq>(new: &mut [Arc<T>], old: &[Arc<T>]) {
        for object in new.iter_mut() {
            if let Some(same) = old.iter().find(|o| ***o == **object) {
                *object = same.clone();
            }
        }
    }

    #[test]
    fn a_table_kept_one_service_at_a_time_equals_a_whole_compile() {
        let options = Options {
            node: "n1".into(),
            default_service_cidrs: vec![
                "10.96.0.0/16".parse().unwrap(),
                "fd00::/112".parse().unwrap(),
            ],
            ..Options::default()
        };
        let mut services = Incremental::default();
        let mut compiler = Compiler::table(Dataplane::Nftables);
        let mut last = crate::cache::Snapshot::default();
        let mut affinity6_sets = BTreeSet::new();
        for (i, objects) in steps().into_iter().enumerate() {
            let mut snapshot = services::tests_support::snapshot(Value::Array(objects));
            // As the cache does: an unchanged object is the same `Arc`.
            keep_unchanged(&mut snapshot.services, &last.services);
            keep_unchanged(&mut snapshot.endpoint_slices, &last.endpoint_slices);
            last = snapshot.clone();
            let changed = services.update(&snapshot, &options);
            if i > 0 {
                let Changed::Services(names) = &changed else {
                    panic!("step {i}: everything recompiled");
                };
                assert!(names.len() <= 1, "step {i}: {names:?}");
            }
            let problems = compiler.update(services.map(), &changed);
            let whole = services::build_with(&snapshot, &options);
            assert_eq!(services.map(), &whole, "step {i}: the service map");
            let (ruleset, expected_problems) = compile(&whole);
            assert_eq!(problems, expected_problems, "step {i}");
            let expected = Lowering::default().lower(&ruleset);
            assert_eq!(compiler.sink(), &expected, "step {i}");
            affinity6_sets.insert(
                compiler
                    .sink()
                    .sets
                    .keys()
                    .filter(|name| name.starts_with("affinity6-"))
                    .count(),
            );
        }
        assert_eq!(
            affinity6_sets,
            BTreeSet::from([0, 1, 2]),
            "IPv6 affinity sets"
        );
        let endpoints_20 = compiler.sink().chains.get("endpoints-20");
        assert!(
            endpoints_20.is_none(),
            "a count no longer in use is dropped"
        );
    }
}

//! Builds the [`ServiceMap`] of one node from a snapshot, with kube-proxy's semantics:
//!
//! - a Service is skipped when headless (`clusterIP: None` or empty) or ExternalName,
//!   and a Service or EndpointSlice is skipped when labelled
//!   `service.kubernetes.io/service-proxy-name` (another proxy owns it) or
//!   `service.kubernetes.io/headless`; a Service is served once per ClusterIP family
//!   (`clusterIPs`), and its externalIPs, LB ingress IPs (`ipMode: Proxy` ones
//!   excluded), source ranges, NodePorts and endpoints are taken from that family only;
//! - NodePorts listen on the node's primary IP of each family (its first InternalIP,
//!   else ExternalIP), or with `--nodeport-addresses` CIDRs on its addresses within them;
//! - endpoints come from the EndpointSlices labelled `kubernetes.io/service-name`
//!   whose port has the Service port's name and protocol (that is how a named
//!   `targetPort` is resolved: the slice carries the number; a port without a number
//!   or with 0 is reported and skipped); the first address of each endpoint; `ready`
//!   and `serving` default to true, `terminating` to false; when two slices list one
//!   address, the copy on this node wins;
//! - Cluster policy uses ready endpoints, else serving-and-terminating ones; Local
//!   policy uses this node's ready endpoints, else its serving-and-terminating ones;
//! - topology: when every ready endpoint has zone hints and one is hinted for this
//!   node's zone (`topology.kubernetes.io/zone`), Cluster policy keeps only the ready
//!   endpoints hinted for it (how `trafficDistribution: PreferClose` and topology-aware
//!   routing reach the proxy); otherwise hints are ignored;
//! - externalTrafficPolicy only exists for NodePort and LoadBalancer Services.
//!
//! Bad fields of one object are reported in [`ServiceMap::errors`] and skipped; they
//! never stop the others.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::args::NodePortAddresses;
use super::model::{DEFAULT_AFFINITY_TIMEOUT, Protocol, ServiceMap, ServicePort};
use crate::cache::{EndpointSlice, Snapshot};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Services (and slices) with this label belong to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Slices (and Services) with this label are headless: nothing to proxy.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The EndpointSlice controller's time of the change a slice reflects.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The Node label that names its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// How to read the snapshot for one node.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub node: String,
    /// Used when the snapshot has no ServiceCIDR objects.
    pub default_service_cidrs: Vec<IpNet>,
    pub nodeport_addresses: NodePortAddresses,
    pub masquerade_all: bool,
    /// The addresses on this node's interfaces (from the kernel; empty offline, where
    /// the Node's status addresses stand in), for `--nodeport-addresses` CIDRs.
    pub local_addresses: Vec<IpAddr>,
}

/// Builds `node`'s service map with the default options. `default_service_cidrs`
/// are used when the snapshot has no ServiceCIDR objects.
pub fn build(snapshot: &Snapshot, node: &str, default_service_cidrs: &[IpNet]) -> ServiceMap {
    build_with(
        snapshot,
        &Options {
            node: node.to_string(),
            default_service_cidrs: default_service_cidrs.to_vec(),
            ..Options::default()
        },
    )
}

/// Whether another proxy owns the object, or it is headless.
fn not_ours(labels: &BTreeMap<String, String>) -> bool {
    labels.contains_key(SERVICE_PROXY_NAME_LABEL) || labels.contains_key(HEADLESS_LABEL)
}

/// Builds the service map of `options.node`.
pub fn build_with(snapshot: &Snapshot, options: &Options) -> ServiceMap {
    let mut builder = Incremental::default();
    builder.update(snapshot, options);
    builder.map
}

/// Which Services may have changed since the last update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Every one (the first update, or the node's addresses, zone or CIDRs changed).
    All,
    /// These (`namespace/name`), and no other.
    Services(BTreeSet<String>),
}

impl Changed {
    /// No Service.
    pub fn none() -> Self {
        Changed::Services(BTreeSet::new())
    }

    /// Adds what `other` says changed (the changes of a sync that failed, kept for
    /// the next one).
    pub fn merge(&mut self, other: Changed) {
        match (&mut *self, other) {
            (Changed::All, _) => {}
            (_, Changed::All) => *self = Changed::All,
            (Changed::Services(mine), Changed::Services(theirs)) => mine.extend(theirs),
        }
    }

    /// The changed Services, or `None` for every one.
    pub fn services(&self) -> Option<&BTreeSet<String>> {
        match self {
            Changed::All => None,
            Changed::Services(names) => Some(names),
        }
    }
}

/// What every Service's ports depend on besides the Service and its slices.
#[derive(Debug, PartialEq)]
struct Context {
    node: String,
    node_ips: Vec<IpAddr>,
    node_port_ips: Vec<IpAddr>,
    zone: Option<String>,
    pod_cidrs: Vec<IpNet>,
    service_cidrs: Vec<IpNet>,
    masquerade_all: bool,
    errors: Vec<String>,
}

impl Context {
    fn read(snapshot: &Snapshot, options: &Options) -> Self {
        let node = options.node.as_str();
        let mut errors = Vec::new();
        let node_ips = node_ips(snapshot, node);
        let node_port_ips = node_port_ips(snapshot, node, options, &node_ips);
        let zone = snapshot
            .node(node)
            .and_then(|n| n.labels().get(ZONE_LABEL).cloned())
            .filter(|z| !z.is_empty());
        let pod_cidrs = pod_cidrs(snapshot, &mut errors);
        let mut service_cidrs: Vec<IpNet> = Vec::new();
        for object in &snapshot.service_cidrs {
            let name = object.name_any();
            for (i, cidr) in object
                .spec
                .iter()
                .flat_map(|s| s.cidrs.iter().flatten())
                .enumerate()
            {
                match cidr.parse::<IpNet>() {
                    Ok(net) => service_cidrs.push(net.trunc()),
                    Err(err) => errors.push(format!(
                        "ServiceCIDR {name}: spec.cidrs[{i}] {cidr:?}: {err}"
                    )),
                }
            }
        }
        if snapshot.service_cidrs.is_empty() {
            service_cidrs = options
                .default_service_cidrs
                .iter()
                .map(IpNet::trunc)
                .collect();
        }
        service_cidrs.sort();
        service_cidrs.dedup();
        Self {
            node: node.to_string(),
            node_ips,
            node_port_ips,
            zone,
            pod_cidrs,
            service_cidrs,
            masquerade_all: options.masquerade_all,
            errors,
        }
    }
}

/// What one Service contributed besides its ports.
#[derive(Debug, Default)]
struct Entry {
    errors: Vec<String>,
    /// Its slices' trigger times, for [`ServiceMap::trigger_times`].
    triggers: Vec<(String, String)>,
    /// Its ClusterIPs when another proxy owns it.
    foreign: Vec<(IpAddr, String)>,
}

impl Entry {
    /// Whether it adds to the map's errors or foreign IPs.
    fn has_extras(&self) -> bool {
        !self.errors.is_empty() || !self.foreign.is_empty()
    }
}

/// Keeps one node's service map between syncs: a Service whose object or
/// EndpointSlices changed (by pointer: the cache hands out one `Arc` per object
/// version) is read again, the rest is kept.
#[derive(Default)]
pub struct Incremental {
    map: ServiceMap,
    context: Option<Context>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    /// Our slices per Service (`namespace/name`), by name.
    by_service: HashMap<String, Vec<Arc<EndpointSlice>>>,
    /// The Services with errors or foreign IPs (few): what [`Self::assemble`] walks,
    /// instead of every Service.
    extras: BTreeMap<String, Entry>,
}

impl Incremental {
    pub fn map(&self) -> &ServiceMap {
        &self.map
    }

    /// Brings the map to `snapshot`; says which Services changed.
    pub fn update(&mut self, snapshot: &Snapshot, options: &Options) -> Changed {
        let mut changed = BTreeSet::new();
        for (old, new) in differences(&self.services, &snapshot.services) {
            if let Some(service) = old.or(new) {
                changed.insert(object_key(&**service));
            }
        }
        for (old, new) in differences(&self.slices, &snapshot.endpoint_slices) {
            if let Some(old) = old
                && let Some(key) = slice_service(old)
            {
                if let Some(list) = self.by_service.get_mut(&key) {
                    list.retain(|s| !Arc::ptr_eq(s, old));
                    if list.is_empty() {
                        self.by_service.remove(&key);
                    }
                }
                changed.insert(key);
            }
            if let Some(new) = new
                && let Some(key) = slice_service(new)
            {
                if !not_ours(new.labels()) {
                    let list = self.by_service.entry(key.clone()).or_default();
                    let at = list.partition_point(|s| s.name_any() < new.name_any());
                    list.insert(at, new.clone());
                }
                changed.insert(key);
            }
        }
        self.services = snapshot.services.clone();
        self.slices = snapshot.endpoint_slices.clone();
        let context = Context::read(snapshot, options);
        let all = self.context.as_ref() != Some(&context);
        self.context = Some(context);
        if all {
            self.map.ports.clear();
            self.map.trigger_times.clear();
            self.extras.clear();
            for service in &snapshot.services {
                let key = object_key(&**service);
                let (ports, entry) = self.read_service(&key, service);
                self.map.ports.extend(ports);
                self.add_entry(&key, entry);
            }
            self.map.ports.sort_by(|a, b| {
                (&a.service, &a.name, a.protocol, a.is_ipv6()).cmp(&(
                    &b.service,
                    &b.name,
                    b.protocol,
                    b.is_ipv6(),
                ))
            });
        } else {
            for key in &changed {
                self.reread(snapshot, key);
            }
        }
        self.assemble();
        if all {
            Changed::All
        } else {
            Changed::Services(changed)
        }
    }

    /// Reads Service `key` again (or drops it when gone).
    fn reread(&mut self, snapshot: &Snapshot, key: &str) {
        self.extras.remove(key);
        self.map.trigger_times.remove(key);
        let ports = &mut self.map.ports;
        let start = ports.partition_point(|p| p.service.as_str() < key);
        let end = ports.partition_point(|p| p.service.as_str() <= key);
        let Some((namespace, name)) = key.split_once('/') else {
            ports.drain(start..end);
            return;
        };
        let found = snapshot
            .services
            .binary_search_by(|s| {
                (
                    s.metadata.namespace.as_deref().unwrap_or(""),
                    s.metadata.name.as_deref().unwrap_or(""),
                )
                    .cmp(&(namespace, name))
            })
            .ok()
            .and_then(|at| snapshot.services.get(at));
        let Some(service) = found else {
            self.map.ports.drain(start..end);
            return;
        };
        let (mut new, entry) = self.read_service(key, service);
        new.sort_by(|a, b| {
            (&a.name, a.protocol, a.is_ipv6()).cmp(&(&b.name, b.protocol, b.is_ipv6()))
        });
        self.map.ports.splice(start..end, new);
        self.add_entry(key, entry);
    }

    /// The ports of one Service, and what else it contributes.
    fn read_service(&self, key: &str, service: &Service) -> (Vec<ServicePort>, Entry) {
        let mut entry = Entry::default();
        if service.labels().contains_key(SERVICE_PROXY_NAME_LABEL) {
            let spec = service.spec.as_ref();
            let ips = spec
                .and_then(|s| s.cluster_ips.clone())
                .filter(|ips| !ips.is_empty())
                .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
                .unwrap_or_default();
            entry.foreign = ips
                .iter()
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| (ip, key.to_string()))
                .collect();
        }
        if not_ours(service.labels()) {
            return (Vec::new(), entry);
        }
        let Some(context) = &self.context else {
            return (Vec::new(), entry);
        };
        let slices: Vec<&EndpointSlice> = self
            .by_service
            .get(key)
            .into_iter()
            .flatten()
            .map(|s| &**s)
            .collect();
        let ports = service_ports(
            service,
            key,
            &slices,
            (&context.node, context.zone.as_deref()),
            &mut entry.errors,
        );
        if !ports.is_empty() {
            for slice in &slices {
                if let Some(time) = slice.annotations().get(TRIGGER_TIME_ANNOTATION) {
                    entry.triggers.push((object_key(*slice), time.clone()));
                }
            }
        }
        (ports, entry)
    }

    fn add_entry(&mut self, key: &str, mut entry: Entry) {
        if !entry.triggers.is_empty() {
            let triggers = std::mem::take(&mut entry.triggers);
            self.map.trigger_times.insert(key.to_string(), triggers);
        }
        if entry.has_extras() {
            self.extras.insert(key.to_string(), entry);
        }
    }

    /// The map's fields that are not per port.
    fn assemble(&mut self) {
        let Some(context) = &self.context else {
            return;
        };
        let map = &mut self.map;
        map.node = context.node.clone();
        map.node_ips = context.node_ips.clone();
        map.node_port_ips = context.node_port_ips.clone();
        map.masquerade_all = context.masquerade_all;
        map.pod_cidrs = context.pod_cidrs.clone();
        map.service_cidrs = context.service_cidrs.clone();
        map.errors = context.errors.clone();
        map.foreign_ips.clear();
        for entry in self.extras.values() {
            map.errors.extend(entry.errors.iter().cloned());
            map.foreign_ips.extend(entry.foreign.iter().cloned());
        }
    }
}

/// `namespace/name`.
fn object_key(object: &impl ResourceExt) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The Service (`namespace/name`) a slice belongs to, by its label.
fn slice_service(slice: &EndpointSlice) -> Option<String> {
    let service = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some(format!(
        "{}/{}",
        slice.namespace().unwrap_or_default(),
        service
    ))
}

/// One object's old and new version; `None` where it did not exist.
type Difference<'a, T> = (Option<&'a Arc<T>>, Option<&'a Arc<T>>);

/// The objects that differ between two lists sorted by (namespace, name): (old,
/// new), either missing when added or deleted. The same `Arc` is the same version,
/// so an unchanged list costs one pointer comparison per object.
fn differences<'a, T: ResourceExt>(old: &'a [Arc<T>], new: &'a [Arc<T>]) -> Vec<Difference<'a, T>> {
    let id = |o: &'a Arc<T>| {
        (
            o.meta().namespace.as_deref().unwrap_or(""),
            o.meta().name.as_deref().unwrap_or(""),
        )
    };
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) => match id(a).cmp(&id(b)) {
                std::cmp::Ordering::Equal => {
                    out.push((Some(a), Some(b)));
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    out.push((Some(a), None));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push((None, Some(b)));
                    j += 1;
                }
            },
            (Some(a), None) => {
                out.push((Some(a), None));
                i += 1;
            }
            (None, Some(b)) => {
                out.push((None, Some(b)));
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// Where NodePorts listen: the primary IP of each family (kube-proxy's node IPs: the
/// first InternalIP of each family, else the first ExternalIP), or every address of
/// the node (the kernel's, else the Node's) within the CIDRs.
fn node_port_ips(
    snapshot: &Snapshot,
    node: &str,
    options: &Options,
    node_ips: &[IpAddr],
) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = match &options.nodeport_addresses {
        NodePortAddresses::Primary => {
            let addresses: Vec<(String, IpAddr)> = snapshot
                .node(node)
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|a| Some((a.type_.clone(), a.address.parse().ok()?)))
                .collect();
            let mut primary = Vec::new();
            for v6 in [false, true] {
                let first = |kind: &str| {
                    addresses
                        .iter()
                        .find(|(t, ip)| t == kind && ip.is_ipv6() == v6)
                        .map(|(_, ip)| *ip)
                };
                primary.extend(first("InternalIP").or_else(|| first("ExternalIP")));
            }
            primary
        }
        NodePortAddresses::Cidrs(cidrs) => {
            let candidates = if options.local_addresses.is_empty() {
                node_ips
            } else {
                options.local_addresses.as_slice()
            };
            candidates
                .iter()
                .filter(|ip| cidrs.iter().any(|c| c.contains(*ip)))
                .copied()
                .collect()
        }
    };
    out.sort();
    out.dedup();
    out
}

/// The node's own addresses: every `status.addresses[]` entry that is an IP.
fn node_ips(snapshot: &Snapshot, node: &str) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = snapshot
        .node(node)
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| a.address.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The union of every Node's pod CIDRs, read as every controller reads them
/// ([`crate::node::pod_cidrs`]: kubewire's annotation overrides, else
/// `spec.podCIDRs`, else `spec.podCIDR`).
fn pod_cidrs(snapshot: &Snapshot, errors: &mut Vec<String>) -> Vec<IpNet> {
    let mut cidrs = BTreeSet::new();
    for node in &snapshot.nodes {
        let (found, problems) = crate::node::pod_cidrs(node);
        cidrs.extend(found.into_iter().map(|c| c.cidr));
        errors.extend(problems.iter().map(ToString::to_string));
    }
    cidrs.into_iter().collect()
}

/// One endpoint as kube-proxy sees it.
#[derive(Clone, Debug)]
struct Endpoint {
    address: SocketAddr,
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// `hints.forZones[].name`.
    zones: Vec<String>,
}

/// The ports of one Service for this node (`at`: its name and zone).
fn service_ports(
    service: &Service,
    key: &str,
    slices: &[&EndpointSlice],
    at: (&str, Option<&str>),
    errors: &mut Vec<String>,
) -> Vec<ServicePort> {
    let (node, zone) = at;
    let Some(spec) = service.spec.as_ref() else {
        errors.push(format!("Service {key}: spec is missing"));
        return Vec::new();
    };
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if service_type == "ExternalName" {
        return Vec::new();
    }
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    let listed: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    for (i, text) in listed.into_iter().enumerate() {
        if text.is_empty() || text == "None" {
            return Vec::new();
        }
        match text.parse::<IpAddr>() {
            Ok(ip) if !cluster_ips.iter().any(|c| c.is_ipv6() == ip.is_ipv6()) => {
                cluster_ips.push(ip);
            }
            Ok(_) => errors.push(format!(
                "Service {key}: spec.clusterIPs[{i}] {text}: a second address of one family"
            )),
            Err(err) => errors.push(format!(
                "Service {key}: spec.clusterIPs[{i}] {text:?}: {err}"
            )),
        }
    }
    let external_ips = parse_ips(
        spec.external_ips.iter().flatten(),
        key,
        "spec.externalIPs",
        errors,
    );
    let lb_ips: Vec<IpAddr> = {
        let ingress = service
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_ref());
        parse_ips(ingress, key, "status.loadBalancer.ingress[].ip", errors)
    };
    let mut source_ranges = Vec::new();
    for (i, text) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        match text.trim().parse::<IpNet>() {
            Ok(net) => source_ranges.push(net.trunc()),
            Err(err) => errors.push(format!(
                "Service {key}: spec.loadBalancerSourceRanges[{i}] {text:?}: {err}"
            )),
        }
    }
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = matches!(service_type, "NodePort" | "LoadBalancer")
        && spec.external_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });

    let health_check_node_port = match spec.health_check_node_port.filter(|_| external_local) {
        None | Some(0) => None,
        Some(p) => match u16::try_from(p) {
            Ok(p) => Some(p),
            Err(_) => {
                errors.push(format!(
                    "Service {key}: spec.healthCheckNodePort {p} is out of range"
                ));
                None
            }
        },
    };
    let mut out = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let text = port.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::parse(text) else {
            errors.push(format!(
                "Service {key}: spec.ports[{i}].protocol {text:?} is not TCP, UDP or SCTP"
            ));
            continue;
        };
        let Ok(number) = u16::try_from(port.port).map_err(|_| {
            errors.push(format!(
                "Service {key}: spec.ports[{i}].port {} is out of range",
                port.port
            ))
        }) else {
            continue;
        };
        let node_port = match port.node_port.filter(|p| *p != 0) {
            None => None,
            Some(p) => match u16::try_from(p) {
                Ok(p) => Some(p),
                Err(_) => {
                    errors.push(format!(
                        "Service {key}: spec.ports[{i}].nodePort {p} is out of range"
                    ));
                    None
                }
            },
        };
        let name = port.name.clone().unwrap_or_default();
        for cluster_ip in &cluster_ips {
            let v6 = cluster_ip.is_ipv6();
            let endpoints = endpoints_for(slices, &name, protocol, v6, node, key, errors);
            let mut service_port = ServicePort {
                service: key.to_string(),
                name: name.clone(),
                protocol,
                port: number,
                cluster_ip: *cluster_ip,
                node_port,
                external_ips: same_family(&external_ips, v6),
                load_balancer_ips: same_family(&lb_ips, v6),
                source_ranges: source_ranges
                    .iter()
                    .filter(|r| matches!(r, IpNet::V6(_)) == v6)
                    .copied()
                    .collect(),
                internal_local,
                external_local,
                affinity_timeout,
                cluster_endpoints: Vec::new(),
                local_endpoints: Vec::new(),
                has_endpoints: false,
                scheduler: annotation(service, "service.scheduler"),
                sched_flags: annotation(service, "service.schedflags"),
                topology_zone: None,
                health_check_node_port,
            };
            categorize(&mut service_port, &endpoints, zone);
            out.push(service_port);
        }
    }
    out
}

fn parse_ips<'a>(
    texts: impl Iterator<Item = &'a String>,
    key: &str,
    field: &str,
    errors: &mut Vec<String>,
) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for text in texts {
        match text.trim().parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(err) => errors.push(format!("Service {key}: {field} {text:?}: {err}")),
        }
    }
    ips
}

/// A Service annotation under kubewire's prefix, else kube-router's (whose users
/// migrate with their annotations as they are).
fn annotation(service: &Service, name: &str) -> Option<String> {
    let annotations = service.metadata.annotations.as_ref()?;
    ["kubewire.io/", "kube-router.io/"]
        .iter()
        .find_map(|prefix| annotations.get(&format!("{prefix}{name}")))
        .map(|value| value.trim().to_string())
}

fn same_family(ips: &[IpAddr], v6: bool) -> Vec<IpAddr> {
    ips.iter()
        .filter(|ip| ip.is_ipv6() == v6)
        .copied()
        .collect()
}

/// The endpoints of one Service port in one family, deduplicated by address.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    v6: bool,
    node: &str,
    key: &str,
    errors: &mut Vec<String>,
) -> Vec<Endpoint> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    let mut seen: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    let mut out: Vec<Endpoint> = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        let matching = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == protocol.as_str()
        });
        let Some(matching) = matching else {
            continue;
        };
        let slice_name = format!(
            "{}/{}",
            slice.namespace().unwrap_or_default(),
            slice.name_any()
        );
        let number = match matching.port.map(u16::try_from) {
            Some(Ok(number)) if number != 0 => number,
            Some(Ok(_)) | None => {
                errors.push(format!(
                    "EndpointSlice {slice_name} (of Service {key}): ports[{port_name:?}].port is missing or 0; its endpoints are not used"
                ));
                continue;
            }
            Some(Err(_)) => {
                errors.push(format!(
                    "EndpointSlice {slice_name} (of Service {key}): ports[{port_name:?}].port {} is out of range",
                    matching.port.unwrap_or_default()
                ));
                continue;
            }
        };
        for (i, endpoint) in slice.endpoints.iter().enumerate() {
            let Some(text) = endpoint.addresses.first() else {
                continue;
            };
            let address = match text.parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv6() == v6 => ip,
                Ok(_) | Err(_) => {
                    errors.push(format!(
                        "EndpointSlice {slice_name}: endpoints[{i}].addresses[0] {text:?} is not an {family} address"
                    ));
                    continue;
                }
            };
            let address = SocketAddr::new(address, number);
            let local = endpoint.node_name.as_deref() == Some(node);
            // kube-proxy: a later copy replaces an earlier one only if it is local.
            let existing = seen.get(&address).copied();
            if existing.is_some() && !local {
                continue;
            }
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let parsed = Endpoint {
                address,
                local,
                ready,
                serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                zones: endpoint
                    .hints
                    .iter()
                    .flat_map(|h| h.for_zones.iter().flatten())
                    .map(|z| z.name.clone())
                    .collect(),
            };
            match existing {
                Some(index) => out[index] = parsed,
                None => {
                    seen.insert(address, out.len());
                    out.push(parsed);
                }
            }
        }
    }
    out
}

/// kube-proxy's canUseTopology: every ready endpoint has zone hints and one is
/// hinted for `zone`.
fn can_use_topology(endpoints: &[Endpoint], zone: Option<&str>) -> bool {
    let Some(zone) = zone else {
        return false;
    };
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    ready.iter().all(|e| !e.zones.is_empty())
        && ready.iter().any(|e| e.zones.iter().any(|z| z == zone))
}

/// kube-proxy's CategorizeEndpoints, with zone topology for the Cluster policy.
fn categorize(port: &mut ServicePort, endpoints: &[Endpoint], zone: Option<&str>) {
    let pick = |filter: &dyn Fn(&Endpoint) -> bool| -> Vec<SocketAddr> {
        let mut picked: Vec<SocketAddr> = endpoints
            .iter()
            .filter(|e| filter(e))
            .map(|e| e.address)
            .collect();
        picked.sort_by_key(|a| a.to_string());
        picked
    };
    let fallback = |e: &Endpoint| e.serving && e.terminating;
    if port.uses_cluster_endpoints() {
        let topology = can_use_topology(endpoints, zone).then_some(zone).flatten();
        port.cluster_endpoints =
            pick(&|e| e.ready && topology.is_none_or(|z| e.zones.iter().any(|h| h == z)));
        port.topology_zone = topology.map(str::to_string);
        if port.cluster_endpoints.is_empty() {
            port.cluster_endpoints = pick(&fallback);
        }
        port.has_endpoints = !port.cluster_endpoints.is_empty();
    }
    if port.uses_local_endpoints() {
        port.has_endpoints |= endpoints.iter().any(|e| e.ready || fallback(e));
        port.local_endpoints = pick(&|e| e.ready && e.local);
        if port.local_endpoints.is_empty() {
            port.local_endpoints = pick(&|e| fallback(e) && e.local);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use std::sync::Arc;

    /// A snapshot from YAML-ish JSON objects.
    pub fn snapshot(objects: serde_json::Value) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for object in objects.as_array().unwrap() {
            match object["kind"].as_str().unwrap() {
                "Node" => snapshot
                    .nodes
                    .push(Arc::new(serde_json::from_value(object.clone()).unwrap())),
                "Service" => snapshot
                    .services
                    .push(Arc::new(serde_json::from_value(object.clone()).unwrap())),
                "EndpointSlice" => snapshot
                    .endpoint_slices
                    .push(Arc::new(serde_json::from_value(object.clone()).unwrap())),
                "ServiceCIDR" => snapshot
                    .service_cidrs
                    .push(Arc::new(serde_json::from_value(object.clone()).unwrap())),
                other => panic!("unexpected kind {other}"),
            }
        }
        snapshot.sorted()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::snapshot;
    use super::*;

    fn nodes() -> Vec<serde_json::Value> {
        vec![
            serde_json::json!({"kind": "Node", "metadata": {"name": "n1"},
                "spec": {"podCIDRs": ["10.244.1.0/24"]},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                                         {"type": "Hostname", "address": "n1"}]}}),
            serde_json::json!({"kind": "Node", "metadata": {"name": "n2"},
                "spec": {"podCIDR": "10.244.2.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}),
        ]
    }

    fn service(spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"kind": "Service", "metadata": {"name": "s", "namespace": "x"}, "spec": spec})
    }

    fn slice(
        name: &str,
        family: &str,
        ports: serde_json::Value,
        endpoints: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({"kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "x", "labels": {SERVICE_NAME_LABEL: "s"}},
            "addressType": family, "ports": ports, "endpoints": endpoints})
    }

    fn ep(ip: &str, node: &str, conditions: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"addresses": [ip], "nodeName": node, "conditions": conditions})
    }

    fn build_from(objects: Vec<serde_json::Value>) -> ServiceMap {
        let mut all = nodes();
        all.extend(objects);
        build(
            &snapshot(serde_json::Value::Array(all)),
            "n1",
            &["10.96.0.0/12".parse().unwrap()],
        )
    }

    fn addrs(list: &[SocketAddr]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn node_ips_pod_cidrs_and_service_cidrs() {
        let map = build_from(vec![]);
        assert_eq!(map.node_ips, ["192.168.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            map.pod_cidrs,
            [
                "10.244.1.0/24".parse::<IpNet>().unwrap(),
                "10.244.2.0/24".parse().unwrap()
            ]
        );
        assert_eq!(
            map.service_cidrs,
            ["10.96.0.0/12".parse::<IpNet>().unwrap()]
        );
        let map = build_from(vec![serde_json::json!({"kind": "ServiceCIDR",
            "metadata": {"name": "k"}, "spec": {"cidrs": ["10.100.0.0/16", "fd00:100::/108"]}})]);
        assert_eq!(
            map.service_cidrs,
            [
                "10.100.0.0/16".parse::<IpNet>().unwrap(),
                "fd00:100::/108".parse().unwrap()
            ]
        );
    }

    #[test]
    fn skipped_services() {
        let http = serde_json::json!([{"port": 80}]);
        let cases = [
            (
                "headless",
                serde_json::json!({"clusterIP": "None", "ports": http}),
            ),
            ("no clusterIP", serde_json::json!({"ports": http})),
            (
                "ExternalName",
                serde_json::json!({"type": "ExternalName", "externalName": "a.example", "ports": http}),
            ),
        ];
        for (what, spec) in cases {
            assert!(build_from(vec![service(spec)]).ports.is_empty(), "{what}");
        }
    }

    #[test]
    fn addresses_by_family() {
        let map = build_from(vec![
            serde_json::json!({"kind": "Service", "metadata": {"name": "s", "namespace": "x"},
                "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
                "externalIPs": ["1.1.1.1", "fd01::1"], "loadBalancerSourceRanges": ["5.0.0.0/8", " fd05::/64"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "2.2.2.2"}, {"ip": "3.3.3.3", "ipMode": "Proxy"}, {"hostname": "lb"}]}}}),
        ]);
        assert_eq!(map.ports.len(), 2, "{:?}", map.errors);
        let (v4, v6) = (&map.ports[0], &map.ports[1]);
        assert_eq!(v4.cluster_ip.to_string(), "10.96.0.1");
        assert_eq!(v4.external_ips, ["1.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(v4.load_balancer_ips, ["2.2.2.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(v4.source_ranges, ["5.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(v4.node_port, Some(30080));
        assert_eq!(v6.cluster_ip.to_string(), "fd00::1");
        assert_eq!(v6.external_ips, ["fd01::1".parse::<IpAddr>().unwrap()]);
        assert!(v6.load_balancer_ips.is_empty());
        assert_eq!(v6.source_ranges, ["fd05::/64".parse::<IpNet>().unwrap()]);
        let frontends: Vec<String> = v4
            .frontends(&map.node_port_ips)
            .iter()
            .map(|f| format!("{} {}:{}", f.kind.as_str(), f.address, f.port))
            .collect();
        assert_eq!(
            frontends,
            [
                "clusterIP 10.96.0.1:80",
                "externalIP 1.1.1.1:80",
                "loadBalancer 2.2.2.2:80",
                "nodePort 192.168.0.1:30080"
            ]
        );
        assert!(
            v6.frontends(&map.node_port_ips)
                .iter()
                .all(|f| f.kind != super::super::model::FrontendKind::NodePort)
        );
    }

    #[test]
    fn bad_fields_are_reported_and_skipped() {
        let map = build_from(vec![service(serde_json::json!({"clusterIP": "10.96.0.1",
            "externalIPs": ["nope"], "ports": [{"port": 80, "protocol": "ICMP"}, {"name": "b", "port": 81}]}))]);
        assert_eq!(map.ports.len(), 1);
        assert_eq!(map.ports[0].name, "b");
        assert_eq!(map.errors.len(), 2, "{:?}", map.errors);
        assert!(
            map.errors[0].contains("Service x/s: spec.externalIPs \"nope\""),
            "{:?}",
            map.errors
        );
        assert!(
            map.errors[1].contains("spec.ports[0].protocol"),
            "{:?}",
            map.errors
        );
    }

    /// (what, service spec extras, endpoints, cluster endpoints, local endpoints, has endpoints)
    #[test]
    fn endpoint_categories() {
        let ready = serde_json::json!({"ready": true});
        let unready = serde_json::json!({"ready": false, "serving": false});
        let term_serving =
            serde_json::json!({"ready": false, "serving": true, "terminating": true});
        let term_dead = serde_json::json!({"ready": false, "serving": false, "terminating": true});
        let none = serde_json::json!({});
        type Case<'a> = (
            &'a str,
            serde_json::Value,
            Vec<serde_json::Value>,
            Vec<&'a str>,
            Vec<&'a str>,
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "ready ones, conditions default to ready",
                serde_json::json!({}),
                vec![
                    ep("10.0.0.1", "n1", ready.clone()),
                    ep("10.0.0.2", "n2", none.clone()),
                    ep("10.0.0.3", "n2", unready.clone()),
                ],
                vec!["10.0.0.1:8080", "10.0.0.2:8080"],
                vec![],
                true,
            ),
            (
                "fall back to serving terminating",
                serde_json::json!({}),
                vec![
                    ep("10.0.0.1", "n1", term_serving.clone()),
                    ep("10.0.0.2", "n2", term_dead.clone()),
                    ep("10.0.0.3", "n2", unready.clone()),
                ],
                vec!["10.0.0.1:8080"],
                vec![],
                true,
            ),
            (
                "no fallback when one is ready",
                serde_json::json!({}),
                vec![
                    ep("10.0.0.1", "n1", term_serving.clone()),
                    ep("10.0.0.2", "n2", ready.clone()),
                ],
                vec!["10.0.0.2:8080"],
                vec![],
                true,
            ),
            (
                "nothing usable",
                serde_json::json!({}),
                vec![
                    ep("10.0.0.2", "n2", term_dead.clone()),
                    ep("10.0.0.3", "n2", unready.clone()),
                ],
                vec![],
                vec![],
                false,
            ),
            (
                "iTP Local: only local, no cluster set",
                serde_json::json!({"internalTrafficPolicy": "Local"}),
                vec![
                    ep("10.0.0.1", "n1", ready.clone()),
                    ep("10.0.0.2", "n2", ready.clone()),
                ],
                vec![],
                vec!["10.0.0.1:8080"],
                true,
            ),
            (
                "iTP Local without local endpoints still has endpoints",
                serde_json::json!({"internalTrafficPolicy": "Local"}),
                vec![ep("10.0.0.2", "n2", ready.clone())],
                vec![],
                vec![],
                true,
            ),
            (
                "eTP Local: cluster set kept for short-circuit",
                serde_json::json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
                vec![
                    ep("10.0.0.1", "n1", ready.clone()),
                    ep("10.0.0.2", "n2", ready.clone()),
                ],
                vec!["10.0.0.1:8080", "10.0.0.2:8080"],
                vec!["10.0.0.1:8080"],
                true,
            ),
            (
                "local fallback to serving terminating",
                serde_json::json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
                vec![
                    ep("10.0.0.1", "n1", term_serving.clone()),
                    ep("10.0.0.2", "n2", ready.clone()),
                ],
                vec!["10.0.0.2:8080"],
                vec!["10.0.0.1:8080"],
                true,
            ),
            (
                "eTP Local ignored on ClusterIP services",
                serde_json::json!({"externalTrafficPolicy": "Local", "externalIPs": ["1.1.1.1"]}),
                vec![
                    ep("10.0.0.1", "n1", ready.clone()),
                    ep("10.0.0.2", "n2", ready.clone()),
                ],
                vec!["10.0.0.1:8080", "10.0.0.2:8080"],
                vec![],
                true,
            ),
        ];
        for (what, extra, endpoints, cluster, local, has) in cases {
            let mut spec = serde_json::json!({"clusterIP": "10.96.0.1",
                "ports": [{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080}]});
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            if spec.get("type").is_none() {
                spec["ports"][0].as_object_mut().unwrap().remove("nodePort");
            }
            let map = build_from(vec![
                service(spec),
                slice(
                    "s-1",
                    "IPv4",
                    serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
                    serde_json::Value::Array(endpoints),
                ),
            ]);
            let port = &map.ports[0];
            assert_eq!(addrs(&port.cluster_endpoints), cluster, "{what}: cluster");
            assert_eq!(addrs(&port.local_endpoints), local, "{what}: local");
            assert_eq!(port.has_endpoints, has, "{what}: has endpoints");
        }
    }

    #[test]
    fn slices_match_by_port_name_protocol_family_and_label() {
        let ready = serde_json::json!({"ready": true});
        let mut other = slice(
            "other",
            "IPv4",
            serde_json::json!([{"name": "http", "port": 1}]),
            serde_json::json!([ep("10.0.0.9", "n1", ready.clone())]),
        );
        other["metadata"]["labels"][SERVICE_NAME_LABEL] = "t".into();
        let map = build_from(vec![
            service(serde_json::json!({"clusterIP": "10.96.0.1",
                "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]})),
            slice(
                "a",
                "IPv4",
                serde_json::json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
                serde_json::json!([
                    ep("10.0.0.1", "n1", ready.clone()),
                    ep("10.0.0.2", "n2", ready.clone())
                ]),
            ),
            // a second slice repeating an endpoint, and one with the port under another protocol
            slice(
                "b",
                "IPv4",
                serde_json::json!([{"name": "http", "port": 8080}]),
                serde_json::json!([
                    ep("10.0.0.2", "n2", ready.clone()),
                    ep("10.0.0.3", "n2", ready.clone())
                ]),
            ),
            slice(
                "c",
                "IPv4",
                serde_json::json!([{"name": "dns", "port": 53, "protocol": "TCP"}]),
                serde_json::json!([ep("10.0.0.4", "n2", ready.clone())]),
            ),
            slice(
                "d",
                "IPv6",
                serde_json::json!([{"name": "http", "port": 8080}]),
                serde_json::json!([ep("fd00::5", "n2", ready.clone())]),
            ),
            other,
        ]);
        let dns = &map.ports[0];
        assert_eq!((dns.name.as_str(), dns.protocol), ("dns", Protocol::Udp));
        assert_eq!(
            addrs(&dns.cluster_endpoints),
            ["10.0.0.1:5353", "10.0.0.2:5353"]
        );
        let http = &map.ports[1];
        assert_eq!(
            addrs(&http.cluster_endpoints),
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
        );
    }

    #[test]
    fn services_and_slices_of_another_proxy_or_headless_are_skipped() {
        let ready = serde_json::json!({"ready": true});
        let mut foreign =
            service(serde_json::json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}));
        foreign["metadata"]["labels"] = serde_json::json!({SERVICE_PROXY_NAME_LABEL: "other"});
        assert!(build_from(vec![foreign]).ports.is_empty());
        let mut headless =
            service(serde_json::json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}));
        headless["metadata"]["labels"] = serde_json::json!({HEADLESS_LABEL: ""});
        assert!(build_from(vec![headless]).ports.is_empty());
        let mut theirs = slice(
            "b",
            "IPv4",
            serde_json::json!([{"port": 8080}]),
            serde_json::json!([ep("10.0.0.2", "n2", ready.clone())]),
        );
        theirs["metadata"]["labels"][SERVICE_PROXY_NAME_LABEL] = "other".into();
        let map = build_from(vec![
            service(serde_json::json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]})),
            slice(
                "a",
                "IPv4",
                serde_json::json!([{"port": 8080}]),
                serde_json::json!([ep("10.0.0.1", "n2", ready.clone())]),
            ),
            theirs,
        ]);
        assert_eq!(addrs(&map.ports[0].cluster_endpoints), ["10.0.0.1:8080"]);
    }

    #[test]
    fn slice_ports_without_a_number_are_reported_and_skipped() {
        let ready = serde_json::json!({"ready": true});
        let map = build_from(vec![
            service(
                serde_json::json!({"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]}),
            ),
            slice(
                "none",
                "IPv4",
                serde_json::json!([{"name": "http"}]),
                serde_json::json!([ep("10.0.0.1", "n2", ready.clone())]),
            ),
            slice(
                "zero",
                "IPv4",
                serde_json::json!([{"name": "http", "port": 0}]),
                serde_json::json!([ep("10.0.0.2", "n2", ready.clone())]),
            ),
            slice(
                "good",
                "IPv4",
                serde_json::json!([{"name": "http", "port": 8080}]),
                serde_json::json!([ep("10.0.0.3", "n2", ready.clone())]),
            ),
        ]);
        assert_eq!(addrs(&map.ports[0].cluster_endpoints), ["10.0.0.3:8080"]);
        assert_eq!(map.errors.len(), 2, "{:?}", map.errors);
        assert!(
            map.errors[0].starts_with(
                "EndpointSlice x/none (of Service x/s): ports[\"http\"].port is missing or 0"
            ),
            "{:?}",
            map.errors
        );
        assert!(
            map.errors[1].starts_with("EndpointSlice x/zero"),
            "{:?}",
            map.errors
        );
    }

    #[test]
    fn the_local_copy_of_an_endpoint_wins_and_serving_defaults_to_true() {
        let not_ready = serde_json::json!({"ready": false, "terminating": true});
        let ready = serde_json::json!({"ready": true});
        let spec = serde_json::json!({"type": "NodePort", "clusterIP": "10.96.0.1", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80, "nodePort": 30080}]});
        // The remote copy first, the local one second, and the other way round.
        for (first, second) in [("n2", "n1"), ("n1", "n2")] {
            let map = build_from(vec![
                service(spec.clone()),
                slice(
                    "a",
                    "IPv4",
                    serde_json::json!([{"port": 8080}]),
                    serde_json::json!([ep("10.0.0.1", first, ready.clone())]),
                ),
                slice(
                    "b",
                    "IPv4",
                    serde_json::json!([{"port": 8080}]),
                    serde_json::json!([ep("10.0.0.1", second, ready.clone())]),
                ),
            ]);
            assert_eq!(
                addrs(&map.ports[0].local_endpoints),
                ["10.0.0.1:8080"],
                "{first} then {second}"
            );
        }
        // Terminating without a serving condition counts as serving: the fallback.
        let map = build_from(vec![
            service(serde_json::json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]})),
            slice(
                "a",
                "IPv4",
                serde_json::json!([{"port": 8080}]),
                serde_json::json!([ep("10.0.0.1", "n2", not_ready)]),
            ),
        ]);
        assert_eq!(addrs(&map.ports[0].cluster_endpoints), ["10.0.0.1:8080"]);
    }

    #[test]
    fn zone_hints_pick_this_zones_endpoints_or_none_are_used() {
        let hinted = |ip: &str, zone: &str| {
            serde_json::json!({"addresses": [ip], "nodeName": "n2", "conditions": {"ready": true},
                "hints": {"forZones": [{"name": zone}]}})
        };
        let plain = serde_json::json!({"addresses": ["10.0.0.9"], "nodeName": "n2"});
        let run = |zone: Option<&str>, endpoints: Vec<serde_json::Value>| {
            let mut objects = nodes();
            if let Some(zone) = zone {
                objects[0]["metadata"]["labels"] = serde_json::json!({ZONE_LABEL: zone});
            }
            objects.push(service(serde_json::json!({"clusterIP": "10.96.0.1",
                "trafficDistribution": "PreferClose", "ports": [{"port": 80}]})));
            objects.push(slice(
                "a",
                "IPv4",
                serde_json::json!([{"port": 8080}]),
                serde_json::Value::Array(endpoints),
            ));
            let map = build(
                &snapshot(serde_json::Value::Array(objects)),
                "n1",
                &["10.96.0.0/12".parse().unwrap()],
            );
            (
                addrs(&map.ports[0].cluster_endpoints),
                map.ports[0].topology_zone.clone(),
            )
        };
        let two = || vec![hinted("10.0.0.1", "a"), hinted("10.0.0.2", "b")];
        assert_eq!(
            run(Some("a"), two()),
            (vec!["10.0.0.1:8080".to_string()], Some("a".to_string()))
        );
        assert_eq!(
            run(Some("c"), two()).0.len(),
            2,
            "no hint for this zone: all"
        );
        assert_eq!(run(None, two()).0.len(), 2, "node without a zone: all");
        let mut partial = two();
        partial.push(plain);
        assert_eq!(
            run(Some("a"), partial).0.len(),
            3,
            "an endpoint without hints: all"
        );
    }

    #[test]
    fn node_port_addresses_primary_or_cidrs() {
        let mut objects = vec![
            serde_json::json!({"kind": "Node", "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.1"},
                {"type": "InternalIP", "address": "192.168.0.1"}, {"type": "InternalIP", "address": "192.168.1.1"},
                {"type": "ExternalIP", "address": "fd00::1"}]}}),
        ];
        objects.push(service(
            serde_json::json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}),
        ));
        let snapshot = snapshot(serde_json::Value::Array(objects));
        let options = |nodeport_addresses, local: &[&str]| Options {
            node: "n1".into(),
            default_service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            nodeport_addresses,
            masquerade_all: true,
            local_addresses: local.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let ips = |map: ServiceMap| -> Vec<String> {
            map.node_port_ips.iter().map(ToString::to_string).collect()
        };
        let primary = build_with(&snapshot, &options(NodePortAddresses::Primary, &[]));
        assert!(primary.masquerade_all);
        assert_eq!(ips(primary), ["192.168.0.1", "fd00::1"]);
        let cidrs = NodePortAddresses::Cidrs(vec![
            "192.168.0.0/16".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]);
        assert_eq!(
            ips(build_with(&snapshot, &options(cidrs.clone(), &[]))),
            ["192.168.0.1", "192.168.1.1"]
        );
        assert_eq!(
            ips(build_with(
                &snapshot,
                &options(cidrs, &["10.1.1.1", "192.168.5.5", "127.0.0.1"])
            )),
            ["10.1.1.1", "192.168.5.5"]
        );
    }

    #[test]
    fn session_affinity_timeout() {
        let cases = [
            (serde_json::json!({}), None),
            (
                serde_json::json!({"sessionAffinity": "ClientIP"}),
                Some(10_800),
            ),
            (
                serde_json::json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
                Some(60),
            ),
            (
                serde_json::json!({"sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
                None,
            ),
        ];
        for (extra, expected) in cases {
            let mut spec = serde_json::json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]});
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            assert_eq!(
                build_from(vec![service(spec)]).ports[0].affinity_timeout,
                expected,
                "{extra}"
            );
        }
    }
}

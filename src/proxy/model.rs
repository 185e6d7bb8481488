//! The service model every proxy backend and `proxy trace` share: what one node's
//! kube-proxy would serve, per Service port and IP family, with the endpoint sets its
//! traffic policies pick already resolved for this node. Pure data; built by
//! [`super::services`].

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

pub use crate::firewall::cluster::Protocol;

/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Everything one node's proxy serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMap {
    /// The node this map is for.
    pub node: String,
    /// The node's own addresses (its Node's status.addresses), as far as the API
    /// tells: the sources `proxy trace` counts as the node's own traffic (the datapath
    /// asks the kernel: `fib saddr type local`).
    pub node_ips: Vec<IpAddr>,
    /// Where NodePorts listen (`--nodeport-addresses`): the node's primary IP of each
    /// family, or its addresses within the given CIDRs.
    pub node_port_ips: Vec<IpAddr>,
    /// `--masquerade-all`: every ClusterIP packet is masqueraded.
    pub masquerade_all: bool,
    /// The union of every Node's pod CIDRs (spec.podCIDRs, or kubewire's annotation
    /// override): what counts as pod traffic.
    pub pod_cidrs: Vec<IpNet>,
    /// ServiceCIDR objects' ranges, else `--service-cluster-ip-range`.
    pub service_cidrs: Vec<IpNet>,
    /// Every served Service port, one per (Service, port, IP family), sorted by
    /// (service, port name, protocol, family).
    pub ports: Vec<ServicePort>,
    /// Objects or fields that had to be left out, naming the object and field.
    pub errors: Vec<String>,
    /// ClusterIPs of Services another proxy owns (`service-proxy-name`), with the
    /// Service: left alone, not dropped as unallocated.
    pub foreign_ips: Vec<(IpAddr, String)>,
    /// Per served Service (`namespace/name`), its EndpointSlices (`namespace/name`)
    /// with their `endpoints.kubernetes.io/last-change-trigger-time`, for the network
    /// programming latency metric (per Service, so a sync reads only the changed ones).
    pub trigger_times: std::collections::BTreeMap<String, Vec<(String, String)>>,
}

impl ServiceMap {
    /// The ports of Service `service` (`namespace/name`): a slice of the sorted
    /// `ports`, found by binary search.
    pub fn ports_of(&self, service: &str) -> &[ServicePort] {
        let start = self.ports.partition_point(|p| p.service.as_str() < service);
        let end = self
            .ports
            .partition_point(|p| p.service.as_str() <= service);
        &self.ports[start..end]
    }
}

/// One port of one Service in one IP family (the family of its ClusterIP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name`.
    pub service: String,
    /// `spec.ports[].name` (may be empty).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster_ip: IpAddr,
    pub node_port: Option<u16>,
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of this family (VIP mode only).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of this family; empty = no filter.
    pub source_ranges: Vec<IpNet>,
    /// internalTrafficPolicy: Local.
    pub internal_local: bool,
    /// externalTrafficPolicy: Local (only NodePort and LoadBalancer Services).
    pub external_local: bool,
    /// sessionAffinity: ClientIP, with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Endpoints for "Cluster" policy: ready ones, else serving-and-terminating ones.
    /// Empty when the port never uses the Cluster policy. Sorted.
    pub cluster_endpoints: Vec<SocketAddr>,
    /// This node's endpoints for "Local" policy: ready local ones, else serving-and-
    /// terminating local ones. Empty when the port never uses the Local policy. Sorted.
    pub local_endpoints: Vec<SocketAddr>,
    /// Whether any endpoint is usable at all (kube-proxy's `hasAnyEndpoints`): without
    /// one every address of the port rejects; with one, an empty policy set drops.
    pub has_endpoints: bool,
    /// The IPVS scheduler the Service asks for (`kubewire.io/service.scheduler`, else
    /// `kube-router.io/service.scheduler`), as written; read by the IPVS backend only.
    pub scheduler: Option<String>,
    /// Its `…/service.schedflags`, as written.
    pub sched_flags: Option<String>,
    /// The zone whose topology hints picked `cluster_endpoints`, when they did.
    pub topology_zone: Option<String>,
    /// `spec.healthCheckNodePort` of an externalTrafficPolicy Local Service.
    pub health_check_node_port: Option<u16>,
}

/// How a packet reaches a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

impl FrontendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "clusterIP",
            FrontendKind::ExternalIp => "externalIP",
            FrontendKind::LoadBalancer => "loadBalancer",
            FrontendKind::NodePort => "nodePort",
        }
    }

    /// Everything but the ClusterIP is "external" traffic (externalTrafficPolicy).
    pub fn is_external(self) -> bool {
        self != FrontendKind::ClusterIp
    }
}

/// One destination (address, protocol, port) a Service port answers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub address: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub kind: FrontendKind,
}

impl ServicePort {
    /// `ns/name:port-name` (or `ns/name:number` for an unnamed port), for messages.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("{}:{}/{}", self.service, self.port, self.protocol)
        } else {
            format!("{}:{}/{}", self.service, self.name, self.protocol)
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.cluster_ip.is_ipv6()
    }

    /// kube-proxy's ExternallyAccessible: a NodePort, an externalIP or an LB IP.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// kube-proxy's UsesClusterEndpoints.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_local || self.externally_accessible()
    }

    /// kube-proxy's UsesLocalEndpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_local || (self.external_local && self.externally_accessible())
    }

    /// The endpoints ClusterIP traffic goes to.
    pub fn internal_endpoints(&self) -> &[SocketAddr] {
        if self.internal_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }

    /// The endpoints external traffic from outside the cluster goes to.
    pub fn external_endpoints(&self) -> &[SocketAddr] {
        if self.external_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }

    /// Every address this port answers on with NodePorts on `node_port_ips` (those of
    /// this port's family), ClusterIP first.
    pub fn frontends(&self, node_port_ips: &[IpAddr]) -> Vec<Frontend> {
        let frontend = |address, port, kind| Frontend {
            address,
            protocol: self.protocol,
            port,
            kind,
        };
        let mut out = vec![frontend(
            self.cluster_ip,
            self.port,
            FrontendKind::ClusterIp,
        )];
        out.extend(
            self.external_ips
                .iter()
                .map(|ip| frontend(*ip, self.port, FrontendKind::ExternalIp)),
        );
        out.extend(
            self.load_balancer_ips
                .iter()
                .map(|ip| frontend(*ip, self.port, FrontendKind::LoadBalancer)),
        );
        if let Some(node_port) = self.node_port {
            out.extend(
                node_port_ips
                    .iter()
                    .filter(|ip| ip.is_ipv6() == self.is_ipv6())
                    .map(|ip| frontend(*ip, node_port, FrontendKind::NodePort)),
            );
        }
        out
    }

    /// Whether loadBalancerSourceRanges let `source` reach LB IP `lb_ip`: any range
    /// holding it, or (as kube-proxy allows a node to reach its own VIP) the LB IP
    /// itself when a range holds one of the node's addresses.
    pub fn source_allowed(&self, source: IpAddr, node_ips: &[IpAddr]) -> bool {
        self.source_ranges.is_empty()
            || self.source_ranges.iter().any(|r| r.contains(&source))
            || (self.allows_from_node(node_ips) && self.load_balancer_ips.contains(&source))
    }

    /// Whether a source range holds one of the node's addresses.
    pub fn allows_from_node(&self, node_ips: &[IpAddr]) -> bool {
        self.source_ranges
            .iter()
            .any(|r| node_ips.iter().any(|ip| r.contains(ip)))
    }
}

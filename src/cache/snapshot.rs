//! A consistent, read-only view of the cluster that the pure compilers consume.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use kube::ResourceExt;

use super::{EndpointSlice, Kind, Pod};

/// Every object of every watched kind, each list sorted by (namespace, name) so that
/// compilers are deterministic whatever order the watch delivered them in.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub nodes: Vec<Arc<Node>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub network_policies: Vec<Arc<NetworkPolicy>>,
    pub service_cidrs: Vec<Arc<ServiceCIDR>>,
}

impl Snapshot {
    /// Sorts every list by (namespace, name); call after filling the lists by hand.
    pub fn sorted(mut self) -> Self {
        sort_by_key(&mut self.nodes);
        sort_by_key(&mut self.namespaces);
        sort_by_key(&mut self.pods);
        sort_by_key(&mut self.services);
        sort_by_key(&mut self.endpoint_slices);
        sort_by_key(&mut self.network_policies);
        sort_by_key(&mut self.service_cidrs);
        self
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.name_any() == name)
    }

    pub fn namespace(&self, name: &str) -> Option<&Arc<Namespace>> {
        self.namespaces.iter().find(|n| n.name_any() == name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Arc<Pod>> {
        self.pods
            .iter()
            .find(|p| p.namespace().as_deref() == Some(namespace) && p.name_any() == name)
    }

    /// Pods scheduled to `node` (`spec.nodeName`).
    pub fn pods_on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Arc<Pod>> + 'a {
        self.pods
            .iter()
            .filter(move |p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
    }

    pub fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::Node => self.nodes.len(),
            Kind::Namespace => self.namespaces.len(),
            Kind::Pod => self.pods.len(),
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.endpoint_slices.len(),
            Kind::NetworkPolicy => self.network_policies.len(),
            Kind::ServiceCIDR => self.service_cidrs.len(),
        }
    }
}

fn sort_by_key<K: kube::Resource>(objects: &mut [Arc<K>]) {
    objects.sort_by(|a, b| {
        (a.meta().namespace.as_deref(), a.meta().name.as_deref())
            .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
    });
}

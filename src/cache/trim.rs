//! Drops what no controller reads before an object enters the cache, so 5k pods stay
//! small: bookkeeping metadata (managed fields, resource versions, owners, uids but a
//! pod's), annotations and labels no controller reads, and the bulky parts of pods,
//! nodes and endpoint slices. What is kept is what `src/firewall`, `src/proxy`,
//! `src/routing` (BGP included), `src/cni` and the lab's kubelet read.
//!
//! Every list is also cut to its length: a list parsed from JSON grows by doubling
//! (one container, or one Service port, takes room for four), and in the cache it
//! never grows again.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{EndpointSlice, Pod};
use kube::Resource;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Annotation and label prefixes the proxy and BGP read settings under.
const SETTING_PREFIXES: [&str; 2] = ["kubewire.io/", "kube-router.io/"];

/// The EndpointSlice annotation the proxy's programming-latency metric reads.
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Trims metadata of any kind: what only the API server and clients that write need.
pub fn trim_object<K: Resource>(object: &mut K) {
    trim_meta(object.meta_mut());
}

fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.resource_version = None;
    meta.self_link = None;
    meta.generate_name = None;
    meta.generation = None;
    meta.finalizers = None;
    meta.owner_references = None;
    meta.uid = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    drop_empty(meta);
}

/// Keeps only the annotations and labels for which `keep` holds.
fn keep_only(meta: &mut ObjectMeta, keep: impl Fn(&str) -> bool) {
    for map in [meta.annotations.as_mut(), meta.labels.as_mut()]
        .into_iter()
        .flatten()
    {
        map.retain(|key, _| keep(key));
    }
    drop_empty(meta);
}

/// An empty map still holds no allocation, but `None` reads the same to every reader.
fn drop_empty(meta: &mut ObjectMeta) {
    if meta.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        meta.annotations = None;
    }
    if meta.labels.as_ref().is_some_and(|l| l.is_empty()) {
        meta.labels = None;
    }
}

/// Gives back a list's unused room.
fn fit<T>(list: &mut Option<Vec<T>>) {
    if let Some(list) = list.as_mut() {
        list.shrink_to_fit();
    }
}

fn fit_selector(selector: Option<&mut LabelSelector>) {
    if let Some(selector) = selector {
        fit(&mut selector.match_expressions);
        for expression in selector.match_expressions.iter_mut().flatten() {
            fit(&mut expression.values);
        }
    }
}

fn is_setting(key: &str) -> bool {
    SETTING_PREFIXES
        .iter()
        .any(|prefix| key.starts_with(prefix))
}

/// Trims a Node down to what routing, CNI, firewall and proxy read: its labels,
/// annotations (pod CIDRs, BGP settings), spec and addresses.
pub fn trim_node(node: &mut Node) {
    trim_object(node);
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.conditions = None;
        status.node_info = None;
        status.capacity = None;
        status.allocatable = None;
        status.daemon_endpoints = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
        status.config = None;
        status.features = None;
        status.runtime_handlers = None;
        fit(&mut status.addresses);
    }
    if let Some(spec) = node.spec.as_mut() {
        fit(&mut spec.pod_cidrs);
    }
}

/// Trims what [`Pod`] keeps beyond what is read: its metadata's annotations and
/// bookkeeping (the spec and status were cut down while parsing). The uid stays (the
/// lab's kubelet tells a re-created pod by it), and so do the creation and deletion
/// times (the firewall's address claims, the kubelet).
pub fn trim_pod(pod: &mut Pod) {
    let uid = pod.metadata.uid.take();
    trim_object(pod);
    pod.metadata.uid = uid;
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers.shrink_to_fit();
        for container in &mut spec.containers {
            fit(&mut container.ports);
        }
    }
    if let Some(status) = pod.status.as_mut() {
        fit(&mut status.pod_ips);
    }
}

/// A Service keeps the labels the proxy filters by (`service.kubernetes.io/…`) and the
/// kubewire/kube-router annotations (proxy scheduler and flags, BGP announcements).
pub fn trim_service(service: &mut Service) {
    trim_object(service);
    keep_only(&mut service.metadata, |key| {
        key.starts_with("service.kubernetes.io/") || is_setting(key)
    });
    if let Some(spec) = service.spec.as_mut() {
        fit(&mut spec.ports);
        fit(&mut spec.cluster_ips);
        fit(&mut spec.ip_families);
        fit(&mut spec.external_ips);
        fit(&mut spec.load_balancer_source_ranges);
    }
    let balancer = service
        .status
        .as_mut()
        .and_then(|s| s.load_balancer.as_mut());
    if let Some(balancer) = balancer {
        fit(&mut balancer.ingress);
        for ingress in balancer.ingress.iter_mut().flatten() {
            fit(&mut ingress.ports);
        }
    }
}

/// An EndpointSlice keeps its Service's name, the `service.kubernetes.io/…` labels and
/// the trigger-time annotation; of each endpoint (which [`EndpointSlice`] already
/// reads without its target, hostname or topology), the first address only (the only
/// one used) and not the node hints.
pub fn trim_endpoint_slice(slice: &mut EndpointSlice) {
    trim_object(slice);
    keep_only(&mut slice.metadata, |key| {
        key == "kubernetes.io/service-name"
            || key == TRIGGER_TIME
            || key.starts_with("service.kubernetes.io/")
            || is_setting(key)
    });
    for endpoint in &mut slice.endpoints {
        if let Some(hints) = endpoint.hints.as_mut() {
            hints.for_nodes = None;
            fit(&mut hints.for_zones);
        }
        endpoint.addresses.truncate(1);
        endpoint.addresses.shrink_to_fit();
    }
    slice.endpoints.shrink_to_fit();
    fit(&mut slice.ports);
}

/// A NetworkPolicy is read by its spec alone (and, like every kind, keeps what it
/// has under kubewire's and kube-router's prefixes).
pub fn trim_network_policy(policy: &mut NetworkPolicy) {
    trim_object(policy);
    keep_only(&mut policy.metadata, is_setting);
    let Some(spec) = policy.spec.as_mut() else {
        return;
    };
    fit(&mut spec.policy_types);
    fit_selector(spec.pod_selector.as_mut());
    fit(&mut spec.ingress);
    fit(&mut spec.egress);
    let ingress = spec.ingress.iter_mut().flatten();
    let ingress = ingress.map(|rule| (&mut rule.from, &mut rule.ports));
    let egress = spec.egress.iter_mut().flatten();
    let egress = egress.map(|rule| (&mut rule.to, &mut rule.ports));
    for (peers, ports) in ingress.chain(egress) {
        fit(ports);
        fit(peers);
        for peer in peers.iter_mut().flatten() {
            fit_selector(peer.pod_selector.as_mut());
            fit_selector(peer.namespace_selector.as_mut());
            if let Some(block) = peer.ip_block.as_mut() {
                fit(&mut block.except);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_pod_metadata_but_keeps_ports_and_ips() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "uid": "u1", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}],
                         "annotations": {LAST_APPLIED: "{}", "keep": "no"},
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "env": [{"name": "X"}],
                     "ports": [{"containerPort": 80, "name": "http"}]}]},
            "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        trim_pod(&mut pod);
        assert!(pod.metadata.managed_fields.is_none() && pod.metadata.annotations.is_none());
        assert!(pod.metadata.resource_version.is_none());
        assert_eq!(pod.labels().len(), 1);
        assert_eq!(pod.metadata.uid.as_deref(), Some("u1"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].container_port,
            80
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn keeps_the_labels_annotations_and_endpoint_fields_controllers_read() {
        let mut service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "namespace": "x", "uid": "u",
                "labels": {"app": "web", "service.kubernetes.io/service-proxy-name": "other"},
                "annotations": {LAST_APPLIED: "{}", "note": "x",
                    "kube-router.io/service.scheduler": "mh", "kubewire.io/service.advertise.clusterip": "false"}},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}
        }))
        .unwrap();
        trim_service(&mut service);
        let meta = &service.metadata;
        assert_eq!(
            meta.labels.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["service.kubernetes.io/service-proxy-name"]
        );
        assert_eq!(
            meta.annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [
                "kube-router.io/service.scheduler",
                "kubewire.io/service.advertise.clusterip"
            ]
        );
        assert!(meta.uid.is_none());
        assert_eq!(
            service.spec.unwrap().cluster_ip.as_deref(),
            Some("10.96.0.1")
        );

        let mut slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s-1", "namespace": "x",
                "labels": {"kubernetes.io/service-name": "s", "endpointslice.kubernetes.io/managed-by": "c"},
                "annotations": {TRIGGER_TIME: "2026-01-01T00:00:00Z", "other": "x"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "s", "uid": "u"}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n1", "zone": "z",
                "conditions": {"ready": false, "serving": true},
                "hints": {"forZones": [{"name": "z"}]},
                "targetRef": {"kind": "Pod", "name": "p", "namespace": "x"}}],
            "ports": [{"port": 80}]
        }))
        .unwrap();
        trim_endpoint_slice(&mut slice);
        let meta = &slice.metadata;
        assert_eq!(
            meta.labels.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["kubernetes.io/service-name"]
        );
        assert_eq!(
            meta.annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [TRIGGER_TIME]
        );
        assert!(meta.owner_references.is_none());
        let endpoint = &slice.endpoints[0];
        assert_eq!(endpoint.addresses, ["10.0.0.1"]);
        assert_eq!(endpoint.node_name.as_deref(), Some("n1"));
        assert_eq!(endpoint.conditions.as_ref().unwrap().ready, Some(false));
        assert_eq!(
            endpoint.hints.as_ref().unwrap().for_zones.as_ref().unwrap()[0].name,
            "z"
        );
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(80));

        let mut policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x", "labels": {"a": "b"}, "annotations": {"c": "d", "kubewire.io/x": "y"}},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}}
        }))
        .unwrap();
        trim_network_policy(&mut policy);
        assert!(policy.metadata.labels.is_none());
        assert_eq!(
            policy
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["kubewire.io/x"]
        );
        assert_eq!(policy.metadata.name.as_deref(), Some("p"));
        assert!(
            policy
                .spec
                .unwrap()
                .pod_selector
                .unwrap()
                .match_labels
                .is_some()
        );
    }
}

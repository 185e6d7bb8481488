//! Drops what no controller reads before an object enters the cache, so 5k pods stay
//! small: managed fields, the last-applied annotation, and the bulky parts of pods.

use k8s_openapi::api::core::v1::Node;

use super::Pod;
use kube::Resource;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Trims metadata of any kind.
pub fn trim_object<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
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
    }
}

/// Trims what [`Pod`] keeps beyond what is read: its metadata's annotations and
/// owners (the spec and status were cut down while parsing).
pub fn trim_pod(pod: &mut Pod) {
    trim_object(pod);
    pod.metadata.annotations = None;
    pod.metadata.owner_references = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_pod_metadata_but_keeps_ports_and_ips() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "managedFields": [{"manager": "kubectl"}],
                         "annotations": {LAST_APPLIED: "{}", "keep": "no"},
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "env": [{"name": "X"}],
                     "ports": [{"containerPort": 80, "name": "http"}]}]},
            "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        trim_pod(&mut pod);
        assert!(pod.metadata.managed_fields.is_none() && pod.metadata.annotations.is_none());
        assert_eq!(pod.metadata.labels.as_ref().unwrap().len(), 1);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].container_port,
            80
        );
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
    }
}

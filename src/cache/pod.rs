//! A Pod as kubewire reads it: the same JSON as the API's Pod, deserialized into only
//! the fields a controller (or the lab's kubelet) reads — name, namespace, labels,
//! uid, deletion, node, host network, container ports, phase, pod addresses and
//! start time. Every other field is skipped while parsing, never allocated: the API's `Pod`
//! type is 2.2 KB before its first container (2.1 KB each), this one under a third
//! of that with containers of about 50 bytes — the bulk of the cache's memory at
//! 5,000 pods. Its labels are held apart from `metadata`, as one shared copy per
//! distinct set ([`super::labels`]); [`Pod::labels`] reads them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PodIP;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};

use super::labels::{self, Labels};

/// `metadata.labels` is always `None`: the labels are in [`Pod::labels`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(from = "PodObject", into = "PodObject")]
pub struct Pod {
    pub metadata: ObjectMeta,
    labels: Arc<Labels>,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

impl Pod {
    /// The pod's labels (an inherent method, so it is what `pod.labels()` calls, not
    /// `ResourceExt::labels`, which would read the always-empty `metadata.labels`).
    pub fn labels(&self) -> &Arc<Labels> {
        &self.labels
    }
}

/// The Pod as the API writes it.
#[derive(Clone, Default, Deserialize, Serialize)]
struct PodObject {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<PodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<PodStatus>,
}

impl From<PodObject> for Pod {
    fn from(mut object: PodObject) -> Self {
        let labels = labels::intern(object.metadata.labels.take().unwrap_or_default());
        Pod {
            metadata: object.metadata,
            labels,
            spec: object.spec,
            status: object.status,
        }
    }
}

impl From<Pod> for PodObject {
    fn from(mut pod: Pod) -> Self {
        if !pod.labels.is_empty() {
            pod.metadata.labels = Some(Arc::unwrap_or_clone(pod.labels));
        }
        PodObject {
            metadata: pod.metadata,
            spec: pod.spec,
            status: pod.status,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// A container's name and the ports it declares (named ports resolve against them).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<ContainerPort>>,
}

/// A declared port: its number, name and protocol (the API's also has a host IP and
/// port, which nothing reads). Names and protocols repeat across pods: one shared copy.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub container_port: i32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "labels::shared_text",
        serialize_with = "labels::text"
    )]
    pub name: Option<Arc<str>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "labels::shared_text",
        serialize_with = "labels::text"
    )]
    pub protocol: Option<Arc<str>>,
}

/// The pod's phase (one shared copy of each), addresses and start; not its host's
/// addresses, which nothing reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "labels::shared_text",
        serialize_with = "labels::text"
    )]
    pub phase: Option<Arc<str>>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs", skip_serializing_if = "Option::is_none")]
    pub pod_ips: Option<Vec<PodIP>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
}

watched_as!(Pod, k8s_openapi::api::core::v1::Pod);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_api_pod_has_and_skips_the_rest() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "hostNetwork": false, "restartPolicy": "Always",
                     "containers": [{"name": "c", "image": "nginx", "env": [{"name": "X"}],
                                     "ports": [{"containerPort": 80, "name": "http"}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                       "hostIP": "192.0.2.1", "startTime": "2026-01-01T00:00:00Z",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let ours: Pod = serde_json::from_value(json.clone()).unwrap();
        let api: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json).unwrap();
        let mut api_meta = api.metadata.clone();
        assert_eq!(Some(&**ours.labels()), api_meta.labels.take().as_ref());
        assert_eq!(ours.metadata, api_meta);
        let again: Pod = serde_json::from_value(serde_json::to_value(&ours).unwrap()).unwrap();
        assert_eq!(again, ours, "serializes back to what it read");
        assert!(
            Arc::ptr_eq(again.labels(), ours.labels()),
            "one shared label set"
        );
        let (spec, api_spec) = (ours.spec.unwrap(), api.spec.unwrap());
        assert_eq!(spec.node_name, api_spec.node_name);
        assert_eq!(spec.host_network, api_spec.host_network);
        let (port, api_port) = (
            &spec.containers[0].ports.as_ref().unwrap()[0],
            &api_spec.containers[0].ports.as_ref().unwrap()[0],
        );
        assert_eq!(port.container_port, api_port.container_port);
        assert_eq!(port.name.as_deref(), api_port.name.as_deref());
        assert_eq!(port.protocol.as_deref(), api_port.protocol.as_deref());
        let (status, api_status) = (ours.status.unwrap(), api.status.unwrap());
        assert_eq!(status.pod_ip, api_status.pod_ip);
        assert_eq!(status.pod_ips, api_status.pod_ips);
        assert_eq!(status.start_time, api_status.start_time);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(size_of::<Pod>() * 3 < size_of::<k8s_openapi::api::core::v1::Pod>());
        assert!(size_of::<Container>() * 20 < size_of::<k8s_openapi::api::core::v1::Container>());
    }
}

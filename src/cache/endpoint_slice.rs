//! An EndpointSlice as kubewire reads it: the API's JSON, deserialized into only the
//! fields the proxy and BGP read — metadata, address type, ports, and of each
//! endpoint its addresses, conditions, zone hints and node. The API's `Endpoint` is
//! 352 bytes (its target reference alone is seven strings); this one is under a
//! fifth of that, and a slice holds one per pod of its Service.

use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointHints, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<EndpointPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<EndpointConditions>,
    /// Boxed: most endpoints have none, and inline they would be 48 of every
    /// endpoint's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hints: Option<Box<EndpointHints>>,
    /// Shared: a cluster's endpoints name a few nodes over and over.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::labels::shared_text",
        serialize_with = "super::labels::text"
    )]
    pub node_name: Option<std::sync::Arc<str>>,
}

watched_as!(
    EndpointSlice,
    k8s_openapi::api::discovery::v1::EndpointSlice
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_api_slice_has_and_skips_the_rest() {
        let json = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "s"}},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00::1"], "nodeName": "n1", "zone": "z", "hostname": "h",
                           "conditions": {"ready": false, "serving": true, "terminating": true},
                           "hints": {"forZones": [{"name": "z"}]},
                           "targetRef": {"kind": "Pod", "name": "p", "namespace": "x"}}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"}]
        });
        let ours: EndpointSlice = serde_json::from_value(json.clone()).unwrap();
        let api: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(json).unwrap();
        assert_eq!(ours.metadata, api.metadata);
        assert_eq!(ours.address_type, api.address_type);
        assert_eq!(ours.ports, api.ports);
        let (endpoint, api_endpoint) = (&ours.endpoints[0], &api.endpoints[0]);
        assert_eq!(endpoint.addresses, api_endpoint.addresses);
        assert_eq!(endpoint.conditions, api_endpoint.conditions);
        assert_eq!(endpoint.hints.as_deref(), api_endpoint.hints.as_ref());
        assert_eq!(
            endpoint.node_name.as_deref(),
            api_endpoint.node_name.as_deref()
        );
        assert!(size_of::<Endpoint>() * 5 < size_of::<k8s_openapi::api::discovery::v1::Endpoint>());
    }
}

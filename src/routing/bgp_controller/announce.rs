//! What this node announces (pure): its pod CIDRs and, per the `--advertise-*`
//! flags and each Service's `service.advertise.*` annotations, service IPs as host
//! routes. External and LoadBalancer IPs of an `externalTrafficPolicy: Local`
//! Service (the ClusterIP of an `internalTrafficPolicy: Local` one) are announced
//! only while this node has a ready endpoint of it, so routers send that traffic
//! only to nodes that serve it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cache::EndpointSlice;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::annotations::PREFIXES;
use super::args::Advertise;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service's `service.advertise.<what>` annotation, when it says true or false.
fn service_override(service: &Service, what: &str, problems: &mut Vec<String>) -> Option<bool> {
    let annotations = service.metadata.annotations.as_ref()?;
    PREFIXES.iter().find_map(|prefix| {
        let key = format!("{prefix}service.advertise.{what}");
        let value = annotations.get(&key)?;
        match value.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                problems.push(format!(
                    "Service {}/{}: metadata.annotations[{key}]: `{value}` is neither true nor false",
                    service.namespace().unwrap_or_default(),
                    service.name_any()
                ));
                None
            }
        }
    })
}

/// Whether `node` has a ready endpoint of the Service.
fn has_local_endpoint(service: &Service, node: &str, slices: &[Arc<EndpointSlice>]) -> bool {
    let namespace = service.namespace();
    let name = service.name_any();
    slices
        .iter()
        .filter(|s| s.namespace() == namespace && s.labels().get(SERVICE_NAME_LABEL) == Some(&name))
        .flat_map(|s| s.endpoints.iter())
        .any(|e| {
            e.node_name.as_deref() == Some(node)
                && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
        })
}

fn host_route(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Every prefix this node announces, with what it is (for `routing plan`).
pub fn announcements(
    advertise: &Advertise,
    node: &str,
    pod_cidrs: &[IpNet],
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    problems: &mut Vec<String>,
) -> BTreeMap<IpNet, String> {
    let mut out = BTreeMap::new();
    if advertise.pod_cidr {
        for cidr in pod_cidrs {
            out.insert(cidr.trunc(), "pod CIDR".to_string());
        }
    }
    for service in services {
        let Some(spec) = &service.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let id = format!(
            "Service {}/{}",
            service.namespace().unwrap_or_default(),
            service.name_any()
        );
        let cluster_ip =
            service_override(service, "clusterip", problems).unwrap_or(advertise.cluster_ip);
        let external_ip =
            service_override(service, "externalip", problems).unwrap_or(advertise.external_ip);
        let loadbalancer_ip = service_override(service, "loadbalancerip", problems)
            .unwrap_or(advertise.loadbalancer_ip);
        let mut bad_ip = |field: &str, text: &str| {
            problems.push(format!("{id}: {field}: `{text}` is not an IP address"));
        };
        let local_only = |policy: Option<&String>| {
            policy.map(String::as_str) == Some("Local")
                && !has_local_endpoint(service, node, slices)
        };

        if cluster_ip && !local_only(spec.internal_traffic_policy.as_ref()) {
            let ips = spec
                .cluster_ips
                .clone()
                .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                .unwrap_or_default();
            for text in ips.iter().filter(|t| !t.is_empty() && *t != "None") {
                match text.parse::<IpAddr>() {
                    Ok(ip) => {
                        out.insert(host_route(ip), format!("{id} ClusterIP"));
                    }
                    Err(_) => bad_ip("spec.clusterIPs", text),
                }
            }
        }
        let external_withdrawn = local_only(spec.external_traffic_policy.as_ref());
        if external_ip && !external_withdrawn {
            for text in spec.external_ips.iter().flatten() {
                match text.parse::<IpAddr>() {
                    Ok(ip) => {
                        out.insert(host_route(ip), format!("{id} externalIP"));
                    }
                    Err(_) => bad_ip("spec.externalIPs", text),
                }
            }
        }
        if loadbalancer_ip && !external_withdrawn && spec.type_.as_deref() == Some("LoadBalancer") {
            let ingress = service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            for text in ingress.into_iter().flatten().filter_map(|i| i.ip.as_ref()) {
                match text.parse::<IpAddr>() {
                    Ok(ip) => {
                        out.insert(host_route(ip), format!("{id} LoadBalancer IP"));
                    }
                    Err(_) => bad_ip("status.loadBalancer.ingress[].ip", text),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(json).expect("service"))
    }

    fn slice(service: &str, node: &str, ready: bool) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("{service}-x"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": node,
                               "conditions": {"ready": ready}}]
            }))
            .expect("slice"),
        )
    }

    fn lb(name: &str, etp: &str, annotations: serde_json::Value) -> Arc<Service> {
        service(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "externalIPs": ["198.51.100.7"], "externalTrafficPolicy": etp},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}
        }))
    }

    fn prefixes(map: &BTreeMap<IpNet, String>) -> Vec<String> {
        map.keys().map(ToString::to_string).collect()
    }

    #[test]
    fn pod_cidrs_and_flagged_service_ips() {
        let pods = ["10.244.1.0/24".parse().expect("net")];
        let services = vec![lb("web", "Cluster", serde_json::json!({}))];
        let mut problems = vec![];
        let all = Advertise {
            pod_cidr: true,
            cluster_ip: true,
            external_ip: true,
            loadbalancer_ip: true,
        };
        let got = announcements(&all, "n1", &pods, &services, &[], &mut problems);
        assert_eq!(
            prefixes(&got),
            [
                "10.96.0.10/32",
                "10.244.1.0/24",
                "198.51.100.7/32",
                "203.0.113.9/32"
            ]
        );
        let lb_only = Advertise {
            pod_cidr: false,
            loadbalancer_ip: true,
            ..Advertise::default()
        };
        let got = announcements(&lb_only, "n1", &pods, &services, &[], &mut problems);
        assert_eq!(prefixes(&got), ["203.0.113.9/32"]);
        assert!(problems.is_empty());
    }

    #[test]
    fn annotations_opt_out_and_in() {
        let services = vec![lb(
            "web",
            "Cluster",
            serde_json::json!({"kube-router.io/service.advertise.loadbalancerip": "false",
                               "kubewire.io/service.advertise.clusterip": "true",
                               "kube-router.io/service.advertise.externalip": "maybe"}),
        )];
        let mut problems = vec![];
        let flags = Advertise {
            loadbalancer_ip: true,
            ..Advertise::default()
        };
        let got = announcements(&flags, "n1", &[], &services, &[], &mut problems);
        assert_eq!(prefixes(&got), ["10.96.0.10/32"]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("service.advertise.externalip"));
    }

    #[test]
    fn local_traffic_policy_needs_a_ready_local_endpoint() {
        let services = vec![lb("web", "Local", serde_json::json!({}))];
        let flags = Advertise {
            cluster_ip: true,
            loadbalancer_ip: true,
            external_ip: true,
            ..Advertise::default()
        };
        let mut problems = vec![];
        let none = announcements(&flags, "n1", &[], &services, &[], &mut problems);
        assert_eq!(prefixes(&none), ["10.96.0.10/32"]);
        let elsewhere = [slice("web", "n2", true), slice("web", "n1", false)];
        let got = announcements(&flags, "n1", &[], &services, &elsewhere, &mut problems);
        assert_eq!(prefixes(&got), ["10.96.0.10/32"]);
        let here = [slice("web", "n1", true)];
        let got = announcements(&flags, "n1", &[], &services, &here, &mut problems);
        assert_eq!(
            prefixes(&got),
            ["10.96.0.10/32", "198.51.100.7/32", "203.0.113.9/32"]
        );
    }
}

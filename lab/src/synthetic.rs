//! Synthetic clusters of a chosen size, for benchmarks and scale tests: realistic
//! shapes (labelled pods spread over nodes and namespaces, services with endpoint
//! slices, policies selecting by labels) generated deterministically from the size.

use serde_json::{Value, json};

use kubewire::cache::Kind;
use kubewire::cache::manifests::{ManifestObject, apply_defaults};

#[derive(Clone, Copy, Debug)]
pub struct ClusterSize {
    pub nodes: usize,
    pub namespaces: usize,
    pub pods: usize,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub policies: usize,
}

impl ClusterSize {
    /// The size issue 2 measures the cache at.
    pub const BENCH: ClusterSize = ClusterSize {
        nodes: 10,
        namespaces: 100,
        pods: 5_000,
        services: 1_000,
        endpoints_per_service: 5,
        policies: 500,
    };
}

/// Generates the objects; pod i lives in namespace i % namespaces on node i % nodes
/// with IP 10.(i/65536+64).(i/256%256).(i%256) from its node's /16-free plan.
pub fn generate(size: ClusterSize) -> Vec<ManifestObject> {
    let mut objects = Vec::new();
    let mut push = |kind: Kind, mut value: Value| {
        apply_defaults(kind, &mut value);
        objects.push(ManifestObject { kind, value });
    };
    for n in 0..size.nodes {
        push(
            Kind::Node,
            json!({"kind": "Node", "metadata": {"name": format!("node-{n}")},
            "spec": {"podCIDRs": [format!("10.{}.{}.0/24", 100 + n / 256, n % 256)]},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", n / 250, n % 250 + 2)}]}}),
        );
    }
    let namespaces = size.namespaces.max(1);
    for ns in 0..namespaces {
        push(
            Kind::Namespace,
            json!({"kind": "Namespace", "metadata": {"name": format!("ns-{ns}"),
            "labels": {"team": format!("team-{}", ns % 10)}}}),
        );
    }
    let pod_ip = |i: usize| format!("10.{}.{}.{}", 64 + i / 65_536, (i / 256) % 256, i % 256);
    for i in 0..size.pods {
        let tier = ["web", "api", "db"][i % 3];
        push(
            Kind::Pod,
            json!({"kind": "Pod", "metadata": {"name": format!("pod-{i}"), "namespace": format!("ns-{}", i % namespaces),
            "labels": {"app": format!("app-{}", i % 50), "tier": tier}},
            "spec": {"nodeName": format!("node-{}", i % size.nodes.max(1)),
                "containers": [{"name": "main", "image": "registry.example/app:1",
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": pod_ip(i), "podIPs": [{"ip": pod_ip(i)}]}}),
        );
    }
    for s in 0..size.services {
        let namespace = format!("ns-{}", s % namespaces);
        let name = format!("svc-{s}");
        push(
            Kind::Service,
            json!({"kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": "ClusterIP", "clusterIP": format!("10.96.{}.{}", s / 250, s % 250 + 1),
                "selector": {"app": format!("app-{}", s % 50)},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
        );
        let endpoints: Vec<Value> = (0..size.endpoints_per_service)
            .map(|e| {
                let pod = (s * size.endpoints_per_service + e) % size.pods.max(1);
                json!({"addresses": [pod_ip(pod)], "conditions": {"ready": true},
                       "nodeName": format!("node-{}", pod % size.nodes.max(1)),
                       "targetRef": {"kind": "Pod", "name": format!("pod-{pod}"), "namespace": format!("ns-{}", pod % namespaces)}})
            })
            .collect();
        push(
            Kind::EndpointSlice,
            json!({"kind": "EndpointSlice", "metadata": {"name": format!("{name}-abcde"), "namespace": namespace,
            "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
        );
    }
    for p in 0..size.policies {
        push(
            Kind::NetworkPolicy,
            json!({"kind": "NetworkPolicy", "metadata": {"name": format!("policy-{p}"), "namespace": format!("ns-{}", p % namespaces)},
            "spec": {"podSelector": {"matchLabels": {"app": format!("app-{}", p % 50)}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"tier": "web"}}},
                    {"namespaceSelector": {"matchLabels": {"team": format!("team-{}", p % 10)}}},
                    {"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24"]}}],
                    "ports": [{"port": "http"}, {"port": 53, "protocol": "UDP"}]}]}}),
        );
    }
    objects
}

/// Multi-document YAML (each document in JSON flow style, which is YAML).
pub fn to_yaml(objects: &[ManifestObject]) -> String {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&object.value.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubewire::cache::manifests::{parse_documents, snapshot_from_objects};

    #[test]
    fn generated_cluster_round_trips_through_the_manifest_loader() {
        let size = ClusterSize {
            nodes: 2,
            namespaces: 3,
            pods: 20,
            services: 4,
            endpoints_per_service: 2,
            policies: 5,
        };
        let yaml = to_yaml(&generate(size));
        let objects = parse_documents(std::path::Path::new("gen.yaml"), &yaml).unwrap();
        let snapshot = snapshot_from_objects(&objects).unwrap();
        assert_eq!(snapshot.len(Kind::Pod), 20);
        assert_eq!(snapshot.len(Kind::Namespace), 3);
        assert_eq!(snapshot.len(Kind::EndpointSlice), 4);
        assert_eq!(snapshot.len(Kind::NetworkPolicy), 5);
        assert_eq!(snapshot.pods_on_node("node-1").count(), 10);
    }
}

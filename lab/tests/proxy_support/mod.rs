//! What the proxy's integration tests (and the proxy benchmark) share: `proxy trace`
//! run as the binary, and the service map of a synthetic cluster.
#![allow(dead_code)]

use kubewire::cache::manifests::snapshot_from_objects;
use kubewire::proxy::model::ServiceMap;
use kubewire::proxy::services;
use kubewire_lab::synthetic::{ClusterSize, generate};

use crate::common::{kubewire, success};

/// Node node-0's service map of a synthetic cluster with `services` Services of
/// `endpoints` endpoints each.
pub fn service_map(services: usize, endpoints: usize) -> ServiceMap {
    let size = ClusterSize {
        nodes: 3,
        namespaces: 5,
        pods: services * endpoints,
        services,
        endpoints_per_service: endpoints,
        policies: 0,
    };
    let snapshot = snapshot_from_objects(&generate(size)).unwrap();
    services::build(&snapshot, "node-0", &["10.96.0.0/12".parse().unwrap()])
}

/// `kubewire proxy trace … --format json` on `manifests`: the JSON line it prints.
pub fn trace(
    manifests: &str,
    node: &str,
    from: &str,
    to: &str,
    port: u64,
    protocol: &str,
) -> String {
    let port = port.to_string();
    let args = [
        "proxy",
        "trace",
        "--manifests",
        manifests,
        "--node",
        node,
        "--from",
        from,
        "--to",
        to,
        "--port",
        &port,
        "--protocol",
        protocol,
        "--format",
        "json",
    ];
    success(kubewire(&args), &args.join(" ")).trim().to_string()
}

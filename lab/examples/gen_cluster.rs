//! Prints a synthetic cluster as multi-document YAML, for benchmarks:
//! `cargo run --example gen_cluster -- [pods] [services] [policies] [namespaces] [nodes] > cluster.yaml`
//! (defaults: the issue-2 size, 5,000 pods / 1,000 services / 500 policies / 100 namespaces / 10 nodes).

use kubewire_lab::synthetic::{ClusterSize, generate, to_yaml};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let default = ClusterSize::BENCH;
    let arg = |i: usize, fallback: usize| args.get(i).copied().unwrap_or(fallback);
    let size = ClusterSize {
        pods: arg(0, default.pods),
        services: arg(1, default.services),
        policies: arg(2, default.policies),
        namespaces: arg(3, default.namespaces),
        nodes: arg(4, default.nodes),
        endpoints_per_service: default.endpoints_per_service,
    };
    print!("{}", to_yaml(&generate(size)));
}

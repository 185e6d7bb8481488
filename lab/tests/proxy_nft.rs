//! The nftables backend against a real kernel (root), each test in its own network
//! namespace: full load, element-level updates, drift repair, cleanup; and an
//! `#[ignore]`d benchmark that prints what a 10,000-Service table costs.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::Netns;
use kubewire::cache::manifests::snapshot_from_objects;
use kubewire::proxy::model::ServiceMap;
use kubewire::proxy::nftables::apply::{Applied, Reconciler};
use kubewire::proxy::nftables::compile::compile;
use kubewire::proxy::nftables::nft::ProxyNft;
use kubewire::proxy::services;
use kubewire::runtime::SyncReason;
use kubewire_lab::synthetic::{ClusterSize, generate};

fn service_map(services: usize, endpoints: usize) -> ServiceMap {
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

fn elements_in_kernel(netns: &Netns, map: &str) -> usize {
    let out = common::sh(
        "ip",
        &[
            "netns",
            "exec",
            &netns.name,
            "nft",
            "-j",
            "list",
            "map",
            "inet",
            "kubewire-proxy",
            map,
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["nftables"][1]["map"]["elem"]
        .as_array()
        .map_or(0, Vec::len)
}

fn chain_exists(netns: &Netns, chain: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            "nft",
            "list",
            "chain",
            "inet",
            "kubewire-proxy",
            chain,
        ])
        .output()
        .unwrap()
        .status
        .success()
}

fn endpoints(n: u16) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| SocketAddr::new("10.77.0.1".parse().unwrap(), i))
        .collect()
}

async fn sync(reconciler: &mut Reconciler, map: &ServiceMap, reason: SyncReason) -> Applied {
    reconciler.sync(compile(map).0, reason).await.unwrap()
}

#[tokio::test]
async fn full_load_then_element_diffs_drift_repair_and_cleanup() {
    let netns = Netns::new("kwpxnft");
    let nft = ProxyNft::in_netns(&netns.name);
    let mut reconciler = Reconciler::new(nft.clone());
    let mut map = service_map(10, 3);
    let (ruleset, _) = compile(&map);
    let applied = reconciler
        .sync(ruleset.clone(), SyncReason::Start)
        .await
        .unwrap();
    assert!(matches!(applied, Applied::Full { .. }), "{applied:?}");
    assert_eq!(elements_in_kernel(&netns, "endpoints4"), 30);
    assert_eq!(
        reconciler.sync(ruleset, SyncReason::Change).await.unwrap(),
        Applied::Nothing
    );

    // Remove one Service and scale another to 5 endpoints: elements only.
    map.ports.remove(0);
    map.ports[0].cluster_endpoints = endpoints(5);
    let applied = sync(&mut reconciler, &map, SyncReason::Change).await;
    assert!(
        matches!(applied, Applied::Incremental { .. }),
        "{applied:?}"
    );
    assert_eq!(elements_in_kernel(&netns, "endpoints4"), 8 * 3 + 5);
    assert_eq!(elements_in_kernel(&netns, "service-ips4"), 9);

    // 20 endpoints need a chain that does not exist yet: the table is replaced.
    map.ports[0].cluster_endpoints = endpoints(20);
    let applied = sync(&mut reconciler, &map, SyncReason::Change).await;
    assert!(matches!(applied, Applied::Full { .. }), "{applied:?}");
    assert!(chain_exists(&netns, "endpoints-20"));
    assert_eq!(elements_in_kernel(&netns, "endpoints4"), 8 * 3 + 20);

    // Back to 3: the chain goes, element by element.
    map.ports[0].cluster_endpoints.truncate(3);
    let applied = sync(&mut reconciler, &map, SyncReason::Change).await;
    assert!(
        matches!(applied, Applied::Incremental { .. }),
        "{applied:?}"
    );
    assert!(!chain_exists(&netns, "endpoints-20"));
    let (ruleset, _) = compile(&map);

    // Someone deletes a chain: the periodic check notices and the table is rewritten.
    common::sh(
        "ip",
        &[
            "netns",
            "exec",
            &netns.name,
            "nft",
            "delete",
            "chain",
            "inet",
            "kubewire-proxy",
            "endpoints-16",
        ],
    );
    let applied = reconciler
        .sync(ruleset, SyncReason::Periodic)
        .await
        .unwrap();
    assert!(matches!(applied, Applied::Full { .. }), "{applied:?}");

    assert!(nft.delete_table().await.unwrap());
    assert!(!nft.delete_table().await.unwrap());
}

/// `cargo test --release --test proxy_nft -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn bench_10k_services_10_endpoints() {
    let started = Instant::now();
    let mut map = service_map(10_000, 10);
    println!(
        "service map (10,000 services x 10 endpoints): {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let (ruleset, _) = compile(&map);
    println!(
        "compile: {:?} ({} elements, {} chains)",
        started.elapsed(),
        ruleset.element_count(),
        ruleset.chains.len()
    );
    let netns = Netns::new("kwpxbench");
    let mut reconciler = Reconciler::new(ProxyNft::in_netns(&netns.name));
    let started = Instant::now();
    reconciler.sync(ruleset, SyncReason::Start).await.unwrap();
    println!("full load: {:?}", started.elapsed());
    map.ports[0].cluster_endpoints.pop();
    let (ruleset, _) = compile(&map);
    let started = Instant::now();
    let applied = reconciler
        .sync(ruleset.clone(), SyncReason::Change)
        .await
        .unwrap();
    println!(
        "one service loses an endpoint: {:?} ({applied:?})",
        started.elapsed()
    );
    let started = Instant::now();
    reconciler
        .sync(ruleset, SyncReason::Periodic)
        .await
        .unwrap();
    println!(
        "periodic drift check, nothing to do: {:?}",
        started.elapsed()
    );
}

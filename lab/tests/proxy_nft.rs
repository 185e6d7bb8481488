//! The nftables backend against a real kernel (root), each test in its own network
//! namespace: full load, element-level updates, drift repair, cleanup. (What a
//! 10,000-Service table costs: the `proxy` benchmark, lab/benches/proxy.rs.)

mod common;
mod proxy_support;

use std::net::SocketAddr;

use common::Netns;
use kubewire::nft::Kind;
use kubewire::nft::Nft;
use kubewire::proxy::model::ServiceMap;
use kubewire::proxy::nftables::apply::{Applied, Reconciler};
use kubewire::proxy::nftables::compile::compile;
use kubewire::runtime::SyncReason;
use proxy_support::service_map;

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
    let nft = Nft::in_netns(&netns.name);
    let mut reconciler = Reconciler::new(nft.clone());
    let mut map = service_map(10, 3);
    let (ruleset, _) = compile(&map);
    let applied = reconciler
        .sync(ruleset.clone(), SyncReason::Start)
        .await
        .unwrap();
    assert!(
        matches!(applied.kind(), Some(Kind::Create | Kind::Replace)),
        "{applied:?}"
    );
    assert_eq!(elements_in_kernel(&netns, "endpoints4"), 30);
    assert_eq!(
        reconciler.sync(ruleset, SyncReason::Change).await.unwrap(),
        Applied::Nothing
    );

    // Remove one Service and scale another to 5 endpoints: elements only.
    map.ports.remove(0);
    map.ports[0].cluster_endpoints = endpoints(5);
    let applied = sync(&mut reconciler, &map, SyncReason::Change).await;
    assert!(applied.kind() == Some(Kind::Diff), "{applied:?}");
    assert_eq!(elements_in_kernel(&netns, "endpoints4"), 8 * 3 + 5);
    assert_eq!(elements_in_kernel(&netns, "service-ips4"), 9);

    // 20 endpoints need a chain that does not exist yet: created by the same diff
    // that first jumps to it, with its own slot map (nft 1.0.6 refuses a new rule
    // naming an existing `typeof ... th dport` map, not one created with it).
    map.ports[0].cluster_endpoints = endpoints(20);
    let applied = sync(&mut reconciler, &map, SyncReason::Change).await;
    assert!(applied.kind() == Some(Kind::Diff), "{applied:?}");
    let ops = &applied.transaction().unwrap().ops;
    assert!(
        !ops.iter()
            .any(|op| matches!(op, kubewire::nft::Op::DeleteTable)),
        "{ops:?}"
    );
    assert!(chain_exists(&netns, "endpoints-20"));
    assert_eq!(elements_in_kernel(&netns, "endpoints4"), 8 * 3);
    assert_eq!(elements_in_kernel(&netns, "endpoints4-20"), 20);

    // Back to 3: element changes.
    map.ports[0].cluster_endpoints.truncate(3);
    let applied = sync(&mut reconciler, &map, SyncReason::Change).await;
    assert!(applied.kind() == Some(Kind::Diff), "{applied:?}");
    // The chain is emptied now and deleted by a sync a second later (kernels before
    // 6.2 may still see it referenced by the elements this transaction removed).
    assert!(chain_exists(&netns, "endpoints-20"));
    let (ruleset, _) = compile(&map);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let applied = reconciler
        .sync(ruleset.clone(), SyncReason::Periodic)
        .await
        .unwrap();
    assert!(applied.kind() == Some(Kind::Diff), "{applied:?}");
    assert!(!chain_exists(&netns, "endpoints-20"));

    // Someone deletes a chain: the periodic check notices; re-adding its rule (it
    // names the existing shared endpoints map) needs a replacement, see above.
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
    assert!(
        matches!(applied.kind(), Some(Kind::Create | Kind::Replace)),
        "{applied:?}"
    );

    assert!(chain_exists(&netns, "endpoints-16"));
    // A staging table a failed full load left behind goes with ours.
    nft.apply("add table inet kubewire-proxy-staging { flags dormant; }\n")
        .await
        .unwrap();
    let tables = || {
        common::sh(
            "ip",
            &["netns", "exec", &netns.name, "nft", "list", "tables"],
        )
    };
    assert!(tables().contains("kubewire-proxy-staging"), "{}", tables());
    assert!(nft.delete_table("inet", "kubewire-proxy").await.unwrap());
    assert!(!tables().contains("kubewire-proxy"), "{}", tables());
    assert!(!nft.delete_table("inet", "kubewire-proxy").await.unwrap());
}

/// IPv6 ClientIP affinity against a real kernel: its per-frontend chains and per-
/// endpoint client sets come with a diff; a client in a set (added here as the packet
/// path would) survives a fresh read of the table (a restarted agent: nothing to
/// apply) and a new timeout, and leaves with its endpoint's set, by a diff.
#[tokio::test]
async fn ipv6_affinity_sets_come_and_go_by_diff_and_survive_a_fresh_read() {
    let netns = Netns::new("kwpx6");
    let nft = Nft::in_netns(&netns.name);
    let mut reconciler = Reconciler::new(nft.clone());
    let mut map = service_map(1, 2);
    sync(&mut reconciler, &map, SyncReason::Start).await;
    let mut six = map.ports[0].clone();
    six.service = "zz/six".into();
    six.cluster_ip = "fd00::10".parse().unwrap();
    six.node_port = None;
    six.external_ips.clear();
    six.load_balancer_ips.clear();
    six.local_endpoints.clear();
    six.cluster_endpoints = vec![
        "[fd10::1]:8080".parse().unwrap(),
        "[fd10::2]:8080".parse().unwrap(),
    ];
    six.affinity_timeout = Some(60);
    map.ports.push(six);
    let applied = sync(&mut reconciler, &map, SyncReason::Change).await;
    assert!(applied.kind() == Some(Kind::Diff), "{applied:?}");
    assert!(chain_exists(&netns, "affinity6-fd00--10-tcp-80"));
    let set = "affinity6-fd00--10-tcp-80-fd10--1-8080";
    let table = ["inet", "kubewire-proxy"];
    netns.exec(
        "nft",
        &[
            "add",
            "element",
            table[0],
            table[1],
            set,
            "{ fd99::7 timeout 60s }",
        ],
    );
    let list = || netns.try_exec("nft", &["list", "set", table[0], table[1], set]);

    let mut restarted = Reconciler::new(nft.clone());
    let applied = sync(&mut restarted, &map, SyncReason::Start).await;
    assert_eq!(applied, Applied::Nothing);
    assert!(list().1.contains("fd99::7 "), "{:?}", list());

    // A new timeout rewrites the record chain only: the entry stays. So does an
    // IPv4 entry through its Service's new timeout (a new `affinity-<T>` chain).
    map.ports[0].affinity_timeout = Some(60);
    let applied = sync(&mut restarted, &map, SyncReason::Change).await;
    assert!(applied.kind() == Some(Kind::Diff), "{applied:?}");
    let v4 = format!(
        "{{ 10.0.0.9 . {} . tcp . {} timeout 60s : 10.77.0.1 . 1 }}",
        map.ports[0].cluster_ip, map.ports[0].port
    );
    netns.exec(
        "nft",
        &["add", "element", table[0], table[1], "affinity4", &v4],
    );
    map.ports[0].affinity_timeout = Some(90);
    map.ports[1].affinity_timeout = Some(90);
    let applied = sync(&mut restarted, &map, SyncReason::Change).await;
    assert!(applied.kind() == Some(Kind::Diff), "{applied:?}");
    assert!(list().1.contains("fd99::7 "), "{:?}", list());
    assert!(chain_exists(&netns, "affinity-90"));
    assert_eq!(elements_in_kernel(&netns, "affinity4"), 1);

    map.ports[1].cluster_endpoints.remove(0);
    let started = std::time::Instant::now();
    let applied = sync(&mut restarted, &map, SyncReason::Change).await;
    eprintln!(
        "an IPv6 affinity endpoint removed: {applied:?} in {:?}",
        started.elapsed()
    );
    assert!(applied.kind() == Some(Kind::Diff), "{applied:?}");
    assert!(!list().0, "the removed endpoint's set is still there");
    assert!(chain_exists(&netns, "affinity6-fd00--10-tcp-80-record"));
}

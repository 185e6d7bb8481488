//! Route installation for 1,000 nodes: kubewire's apply layer next to `ip -batch`
//! installing the same routes, in the same run (root; prints numbers, asserts none).
//!
//! `cargo bench -p kubewire-lab --bench run -- routing`

use std::time::{Duration, Instant};

use kubewire::cache::manifests::snapshot_from_objects;
use kubewire::network::{OverlayEncap, OverlayType};
use kubewire::routing::apply::Reconciler;
use kubewire::routing::compile::{self, HostFacts};
use kubewire::routing::diff;
use kubewire::routing::metrics::RoutingMetrics;
use kubewire::routing::model::{ROUTE_PROTOCOL, RoutingPlan};
use kubewire::routing::netlink::{Netlink, RouteSpec};
use kubewire::runtime::SyncReason;
use kubewire_lab::synthetic::{ClusterSize, generate};

use crate::routing_support::{Netns, options};
use crate::{Outcome, require_root};

const PEERS: usize = 1_000;
const ROUNDS: usize = 5;

/// node-0 and 1,000 peers on one /16 (the synthetic cluster's addressing).
fn plan(overlay_type: OverlayType) -> (kubewire::cache::Snapshot, RoutingPlan) {
    let size = ClusterSize {
        nodes: PEERS + 1,
        namespaces: 1,
        pods: 0,
        services: 0,
        endpoints_per_service: 0,
        policies: 0,
    };
    let snapshot = snapshot_from_objects(&generate(size)).expect("synthetic cluster");
    let host = HostFacts {
        local_subnets: vec!["192.168.0.0/16".parse().unwrap()],
        underlay_mtu: Some(1500),
    };
    let plan = compile::compile(
        &snapshot,
        "node-0",
        &options(overlay_type, OverlayEncap::Vxlan),
        &host,
    )
    .expect("compile");
    assert_eq!(plan.routes.len(), PEERS);
    (snapshot, plan)
}

/// A namespace with node-0's underlay: a veth (this kernel has no dummy) holding
/// 192.168.0.2/16. No packet is sent.
fn node_namespace() -> Netns {
    let ns = Netns::new("kwr-bench");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "wire",
    ]);
    ns.ip(&["addr", "add", "192.168.0.2/16", "dev", "eth0"]);
    ns.ip(&["link", "set", "wire", "up"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns
}

fn count_routes(ns: &Netns) -> usize {
    ns.ip(&["route", "show", "proto", &ROUTE_PROTOCOL.to_string()])
        .lines()
        .count()
}

/// The apply layer's route step: dump our routes, diff, one batched replace.
fn kubewire_routes(plan: &RoutingPlan) -> Duration {
    let ns = node_namespace();
    let specs: Vec<RouteSpec> = plan
        .routes
        .iter()
        .map(|r| RouteSpec {
            destination: r.destination,
            gateway: r.gateway,
            oif: None,
            onlink: false,
        })
        .collect();
    let elapsed = ns.block_on(|| async {
        let netlink = Netlink::connect().expect("netlink");
        let started = Instant::now();
        let actual = netlink.routes(ROUTE_PROTOCOL).await.expect("dump");
        let changes = diff::routes(&specs, &actual);
        let results = netlink.replace_routes(&changes.replace).await;
        let elapsed = started.elapsed();
        assert!(results.iter().all(Result::is_ok), "a route failed");
        elapsed
    });
    assert_eq!(count_routes(&ns), PEERS);
    elapsed
}

/// `ip -batch` with the same routes (process start included, as a script would pay).
fn ip_batch(plan: &RoutingPlan) -> Duration {
    let ns = node_namespace();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let script: String = plan
        .routes
        .iter()
        .map(|r| {
            format!(
                "route add {} via {} proto {ROUTE_PROTOCOL}\n",
                r.destination, r.gateway
            )
        })
        .collect();
    std::fs::write(file.path(), script).expect("write batch");
    let path = file.path().to_str().expect("utf-8 path").to_string();
    let started = Instant::now();
    ns.ip(&["-batch", &path]);
    let elapsed = started.elapsed();
    assert_eq!(count_routes(&ns), PEERS);
    elapsed
}

/// A whole sync from nothing (compile, bridge, sysctls, tunnel, FDB and neighbours,
/// routes, nftables), then a second one with nothing to change.
fn full_sync(overlay_type: OverlayType) -> (Duration, Duration) {
    let (snapshot, _) = plan(overlay_type);
    let ns = node_namespace();
    let options = options(overlay_type, OverlayEncap::Vxlan);
    ns.block_on(|| async {
        let mut reconciler = Reconciler::connect(RoutingMetrics::default()).expect("netlink");
        let started = Instant::now();
        let (report, _) = reconciler
            .sync(&snapshot, "node-0", &options, SyncReason::Start)
            .await
            .expect("first sync");
        let first = started.elapsed();
        assert_eq!(report.routes_replaced, PEERS);
        let started = Instant::now();
        let (report, _) = reconciler
            .sync(&snapshot, "node-0", &options, SyncReason::Change)
            .await
            .expect("second sync");
        assert!(!report.changed_anything(), "{report:?}");
        (first, started.elapsed())
    })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Routes for 1,000 nodes, then whole routing syncs.
pub fn run() -> Outcome {
    require_root()?;
    let (_, plan) = plan(OverlayType::Subnet);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let rounds = crate::report::scale(ROUNDS, 3);
    for _ in 0..rounds {
        ours.push(kubewire_routes(&plan));
        theirs.push(ip_batch(&plan));
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let direct: Vec<_> = (0..3).map(|_| full_sync(OverlayType::Subnet)).collect();
    let vxlan: Vec<_> = (0..3).map(|_| full_sync(OverlayType::Full)).collect();
    let first = |runs: &[(Duration, Duration)]| median(runs.iter().map(|r| r.0).collect());
    let again = |runs: &[(Duration, Duration)]| median(runs.iter().map(|r| r.1).collect());
    crate::report::millis_versus("routes_1000_nodes", ours, theirs, "ip -batch");
    crate::report::millis("full_sync_direct", first(&direct));
    crate::report::millis("resync_noop_direct", again(&direct));
    crate::report::millis("full_sync_vxlan", first(&vxlan));
    crate::report::millis("resync_noop_vxlan", again(&vxlan));
    println!("routes for {PEERS} nodes, median of {rounds} runs, each in a fresh namespace:");
    println!(
        "  kubewire apply layer (dump + diff + batched netlink) {:>10}",
        ms(ours)
    );
    println!(
        "  ip -batch, same routes (process start included)      {:>10}",
        ms(theirs)
    );
    println!(
        "  ratio kubewire / ip -batch                            {:>9.2}x (goal <= 1.5x)",
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    println!("whole routing sync for {PEERS} peers (median of 3):");
    println!(
        "  direct routes: first sync {}, no-op re-sync {}",
        ms(first(&direct)),
        ms(again(&direct))
    );
    println!(
        "  vxlan (routes + {PEERS} FDB + {PEERS} neighbour entries): first sync {}, no-op re-sync {}",
        ms(first(&vxlan)),
        ms(again(&vxlan))
    );
    Ok(())
}

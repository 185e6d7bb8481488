//! The service proxy's nftables backend at 10,000 Services of 10 endpoints each
//! (root; prints numbers, asserts none), driven as the agent drives it: from a cache
//! snapshot through the kept service map ([`services::Incremental`]), the kept
//! compiled table ([`kubewire::proxy::Nftables`]) and its reconciler, into a network
//! namespace. Measured: the full load, one endpoint change from the cache's
//! snapshot to the kernel (compile included), the periodic drift check with nothing
//! to do, a restart that finds the table in place, one Service scaled from 10 to 40
//! endpoints one at a time (the transaction kinds it took), and this process's
//! memory after the first sync and after 100 changes.
//! `cargo bench -p kubewire-lab --bench run -- proxy`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubewire::cache::EndpointSlice;
use kubewire::cache::Snapshot;
use kubewire::cache::manifests::snapshot_from_objects;
use kubewire::nft::{Backend, Kernel, Nft};
use kubewire::proxy::nftables::apply::Applied;
use kubewire::proxy::nftables::ruleset;
use kubewire::proxy::services::{Changed, Incremental, Options};
use kubewire::proxy::{
    BindAddress, Nftables, ProxyArgs, ProxyBackend, ProxyController, ServiceMapArgs,
};
use kubewire::runtime::{Controller, SyncReason};
use kubewire::telemetry::Metrics;
use kubewire_lab::synthetic::{ClusterSize, generate};

use crate::common::Netns;
use crate::{Outcome, require_program, require_root};

pub fn run() -> Outcome {
    require_root()?;
    require_program("nft", "nftables")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench_10k_services_10_endpoints());
    Ok(())
}

/// The agent's proxy state: the kept service map and the nftables backend.
struct Agent {
    options: Options,
    services: Incremental,
    nftables: Nftables,
}

impl Agent {
    /// One sync as the proxy controller does it: the service map, then the compile
    /// and the kernel. Returns what was applied and the time to the kernel.
    async fn sync(&mut self, snapshot: &Snapshot, reason: SyncReason) -> (Applied, Duration) {
        let started = Instant::now();
        let changed = self.services.update(snapshot, &self.options);
        let (applied, _) = self
            .nftables
            .sync(self.services.map(), &changed, reason)
            .await
            .expect("sync");
        (applied, started.elapsed())
    }
}

fn kind(applied: &Applied) -> &'static str {
    applied.kind().map_or("nothing", |k| k.as_str())
}

/// The snapshot with endpoint slice `index` given `endpoints` endpoints (copies of
/// its first, on other addresses), as a new object version.
fn with_endpoints(snapshot: &Snapshot, index: usize, endpoints: usize) -> Snapshot {
    let mut next = snapshot.clone();
    let mut slice: EndpointSlice = (*next.endpoint_slices[index]).clone();
    let template = slice.endpoints[0].clone();
    slice.endpoints = (0..endpoints)
        .map(|i| {
            let mut endpoint = template.clone();
            endpoint.addresses = vec![format!("10.250.{}.{}", i / 250, i % 250 + 1)];
            endpoint
        })
        .collect();
    next.endpoint_slices[index] = Arc::new(slice);
    next
}

/// Resident memory of this process (the agent's part: the snapshot, service map,
/// compiled table and the reconciler's copy, plus the bench's own), MiB.
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A [`ProxyController`] in this thread's namespace: its first sync (the table is in
/// place), then 100 one-endpoint changes; the time of each.
async fn controller_changes(snapshot: &Snapshot) -> (Vec<Duration>, Duration) {
    let args = ProxyArgs {
        proxy_backend: ProxyBackend::Nftables,
        ipvs_graceful_period: Duration::from_secs(30),
        map: ServiceMapArgs {
            nodeport_addresses: Default::default(),
            masquerade_all: false,
        },
        healthz_bind_address: BindAddress(None),
    };
    let mut controller = ProxyController::new(
        "node-0".into(),
        vec!["10.96.0.0/12".parse().expect("cidr")],
        &args,
        &Metrics::new(),
    )
    .expect("controller");
    let started = Instant::now();
    controller
        .sync(snapshot, SyncReason::Start)
        .await
        .expect("sync");
    let first = started.elapsed();
    let mut now = snapshot.clone();
    let slices = now.endpoint_slices.len();
    let mut times = Vec::new();
    for i in 0..100 {
        let index = (i * 89 + 5) % slices;
        let count = now.endpoint_slices[index].endpoints.len();
        now = with_endpoints(&now, index, if count == 10 { 9 } else { 10 });
        let started = Instant::now();
        controller
            .sync(&now, SyncReason::Change)
            .await
            .expect("sync");
        times.push(started.elapsed());
    }
    (times, first)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn bench_10k_services_10_endpoints() {
    let started = Instant::now();
    let size = ClusterSize {
        nodes: 3,
        namespaces: 5,
        pods: crate::report::scale(100_000, 10_000),
        services: crate::report::scale(10_000, 1_000),
        endpoints_per_service: 10,
        policies: 0,
    };
    let snapshot = snapshot_from_objects(&generate(size)).expect("snapshot");
    println!(
        "snapshot ({} services x 10 endpoints): {:?}",
        size.services,
        started.elapsed()
    );
    let options = Options {
        node: "node-0".into(),
        default_service_cidrs: vec!["10.96.0.0/12".parse().expect("cidr")],
        ..Options::default()
    };
    let netns = Netns::new("kwpxbench");
    let mut agent = Agent {
        options: options.clone(),
        services: Incremental::default(),
        nftables: Nftables::new(Nft::in_netns(&netns.name)),
    };

    // The parts of a full load, then the load itself.
    let started = Instant::now();
    let mut parts = Incremental::default();
    let changed = parts.update(&snapshot, &options);
    let map_took = started.elapsed();
    crate::report::millis("service_map", map_took);
    let started = Instant::now();
    let mut compiler = Nftables::new(Nft::in_netns(&netns.name)).compiler;
    compiler.update(parts.map(), &changed);
    crate::report::millis("compile", started.elapsed());
    println!(
        "  service map {map_took:?}, compile {:?} ({} elements, {} chains)",
        started.elapsed(),
        compiler.sink().element_count(),
        compiler.sink().chains.len()
    );
    drop((parts, compiler));
    let (applied, took) = agent.sync(&snapshot, SyncReason::Start).await;
    crate::report::millis("full_load", took);
    println!(
        "full load (snapshot to kernel, compile included): {took:?} ({})",
        kind(&applied)
    );
    let after_first = rss_mib();

    // One endpoint fewer, then back, in Services spread over the map.
    let slices = snapshot.endpoint_slices.len();
    let mut now = snapshot.clone();
    let mut times = Vec::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..100 {
        let index = (i * 97) % slices;
        let count = now.endpoint_slices[index].endpoints.len();
        let count = if count == 10 { 9 } else { 10 };
        now = with_endpoints(&now, index, count);
        let (applied, took) = agent.sync(&now, SyncReason::Change).await;
        times.push(took);
        *kinds.entry(kind(&applied)).or_default() += 1;
    }
    crate::report::millis("one_endpoint_change", median(times.clone()));
    println!(
        "one endpoint change, snapshot to kernel (compile included), 100 changes: median {:?}, max {:?}; transactions {kinds:?}",
        median(times.clone()),
        times.iter().max().copied().unwrap_or_default()
    );
    let after_changes = rss_mib();
    // Where one change's time goes: the service map, the compile, the kernel.
    let count = now.endpoint_slices[3].endpoints.len();
    now = with_endpoints(&now, 3, if count == 10 { 9 } else { 10 });
    let started = Instant::now();
    let changed = agent.services.update(&now, &agent.options);
    let map_took = started.elapsed();
    let started = Instant::now();
    agent
        .nftables
        .compiler
        .update(agent.services.map(), &changed);
    let compile_took = started.elapsed();
    let started = Instant::now();
    let applied = agent
        .nftables
        .reconciler
        .sync_table(agent.nftables.compiler.sink(), SyncReason::Change)
        .await
        .expect("sync");
    println!(
        "  one change: service map {map_took:?}, compile {compile_took:?}, diff and kernel {:?} ({})",
        started.elapsed(),
        kind(&applied)
    );

    let mut periodic = Vec::new();
    for _ in 0..5 {
        let (applied, took) = agent.sync(&now, SyncReason::Periodic).await;
        periodic.push(took);
        assert_eq!(applied, Applied::Nothing);
    }
    crate::report::millis("periodic_sync_noop", median(periodic.clone()));
    println!(
        "periodic sync, nothing to do (median of 5, service map and compile included): {:?}; reads by the drift check: {}",
        median(periodic),
        agent.nftables.reconciler.inner().reads
    );
    let mut kernel = Kernel::new(Nft::in_netns(&netns.name));
    kernel.generation().await.expect("generation"); // opens the socket
    let started = Instant::now();
    let observed = kernel
        .read(&ruleset::table_id())
        .await
        .expect("read")
        .expect("table");
    crate::report::millis("table_read_back", started.elapsed());
    println!(
        "  the whole table read back (when someone else committed): {:?} ({} elements)",
        started.elapsed(),
        observed.table.element_count()
    );

    // A restarted agent: reads the table and applies nothing.
    let mut restarted = Agent {
        options: options.clone(),
        services: Incremental::default(),
        nftables: Nftables::new(Nft::in_netns(&netns.name)),
    };
    let (applied, took) = restarted.sync(&now, SyncReason::Start).await;
    crate::report::millis("restart_table_in_place", took);
    println!(
        "restart with the table in place: {took:?} ({})",
        kind(&applied)
    );

    // One Service from 10 to 40 endpoints, one at a time.
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut times = Vec::new();
    let index = 1;
    for n in 11..=40 {
        now = with_endpoints(&now, index, n);
        let (applied, took) = restarted.sync(&now, SyncReason::Change).await;
        times.push(took);
        *kinds.entry(kind(&applied)).or_default() += 1;
    }
    crate::report::millis("scale_one_service_step", median(times.clone()));
    crate::report::figure(
        "scale_one_service_replaces",
        kinds.get("replace").copied().unwrap_or(0) as f64,
        "transactions",
    );
    println!(
        "one service scaled 10 -> 40 endpoints one at a time: transactions {kinds:?}; median {:?}, max {:?}",
        median(times.clone()),
        times.iter().max().copied().unwrap_or_default()
    );
    // What the map says changed for one slice: that Service only.
    let mut probe = Incremental::default();
    probe.update(&now, &options);
    let next = with_endpoints(&now, index, 5);
    if let Changed::Services(names) = probe.update(&next, &options) {
        println!("  Services recompiled for one slice change: {names:?}");
    }
    // The same change through the proxy controller, as the agent runs it: the map,
    // the compile and the kernel, then conntrack, the health ports and the metrics
    // (last: it writes the table the agents above kept).
    let (controller_times, controller_first) = netns.block_on(|| controller_changes(&now));
    crate::report::millis(
        "one_endpoint_change_controller",
        median(controller_times.clone()),
    );
    println!(
        "one endpoint change through the proxy controller (everything a sync does), 100 changes: median {:?}, max {:?} (its first sync, reading the table in place: {controller_first:?})",
        median(controller_times.clone()),
        controller_times.iter().max().copied().unwrap_or_default()
    );

    match (after_first, after_changes) {
        (Some(first), Some(changes)) => {
            crate::report::figure("bench_process_rss_after_first_sync", first, "MiB");
            crate::report::figure("bench_process_rss_after_100_changes", changes, "MiB");
            println!(
                "memory (this process: snapshot, service map, compiled table, reconciler): {first:.0} MiB after the first sync, {changes:.0} MiB after 100 changes"
            )
        }
        _ => println!("memory: /proc/self/status unreadable"),
    }
}

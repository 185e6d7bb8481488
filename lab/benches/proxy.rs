//! The service proxy's nftables backend at 10,000 Services of 10 endpoints each
//! (root; prints numbers, asserts none): building the service map, compiling, the
//! full load into a network namespace, one endpoint removed, the periodic drift
//! check with nothing to do (and the whole-table read it falls back to when someone
//! else committed), a restart that finds the table in place, and one Service scaled
//! from 10 to 40 endpoints one at a time (the transaction kinds it took).
//! `cargo bench -p kubewire-lab --bench run -- proxy`

use std::collections::BTreeMap;
use std::time::Instant;

use kubewire::nft::{Backend, Kernel, Nft};
use kubewire::proxy::nftables::apply::{Applied, Reconciler};
use kubewire::proxy::nftables::compile::compile;
use kubewire::proxy::nftables::ruleset;
use kubewire::runtime::SyncReason;

use crate::common::Netns;
use crate::proxy_support::service_map;
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

async fn bench_10k_services_10_endpoints() {
    let started = Instant::now();
    let mut map = service_map(crate::report::scale(10_000, 1_000), 10);
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
    crate::report::millis("compile", started.elapsed());
    let netns = Netns::new("kwpxbench");
    let mut reconciler = Reconciler::new(Nft::in_netns(&netns.name));
    let started = Instant::now();
    reconciler.sync(ruleset, SyncReason::Start).await.unwrap();
    println!("full load: {:?}", started.elapsed());
    crate::report::millis("full_load", started.elapsed());
    map.ports[0].cluster_endpoints.pop();
    let (ruleset, _) = compile(&map);
    let started = Instant::now();
    let applied = reconciler
        .sync(ruleset.clone(), SyncReason::Change)
        .await
        .unwrap();
    println!(
        "one service loses an endpoint (compiled already; lowering, diff, kernel): {:?} ({applied:?})",
        started.elapsed()
    );
    crate::report::millis("one_endpoint_removed", started.elapsed());
    let mut periodic = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let applied = reconciler
            .sync(ruleset.clone(), SyncReason::Periodic)
            .await
            .unwrap();
        periodic.push(started.elapsed());
        assert_eq!(applied, Applied::Nothing);
    }
    periodic.sort();
    println!(
        "periodic sync, nothing to do (median of 5, lowering included): {:?}; reads by the drift check: {}",
        periodic[2],
        reconciler.inner().reads
    );
    crate::report::millis("periodic_sync_noop", periodic[2]);
    let mut kernel = Kernel::new(Nft::in_netns(&netns.name));
    kernel.generation().await.unwrap(); // opens the socket
    let started = Instant::now();
    kernel.generation().await.unwrap();
    println!(
        "  the drift check's generation query: {:?}",
        started.elapsed()
    );
    // Where a change's time goes outside the kernel: lowering the compiled ruleset
    // (every set's fingerprint, the changed ones patched) and the table diff.
    let mut lowering = ruleset::Lowering::default();
    let before = lowering.lower(&ruleset);
    let mut fewer = map.clone();
    fewer.ports[0].cluster_endpoints.pop();
    let (changed, _) = compile(&fewer);
    let started = Instant::now();
    let after = lowering.lower(&changed);
    let lowered = started.elapsed();
    let started = Instant::now();
    let tx = kubewire::nft::render::diff(&ruleset::table_id(), &before, &after).unwrap();
    println!(
        "  one endpoint fewer: lowering {lowered:?}, table diff {:?} ({} ops)",
        started.elapsed(),
        tx.ops.len()
    );
    let started = Instant::now();
    let observed = kernel.read(&ruleset::table_id()).await.unwrap().unwrap();
    println!(
        "  the whole table read back (when someone else committed): {:?} ({} elements)",
        started.elapsed(),
        observed.table.element_count()
    );
    drop(reconciler);

    // A restarted agent: reads the table and applies nothing.
    let mut restarted = Reconciler::new(Nft::in_netns(&netns.name));
    let started = Instant::now();
    let applied = restarted
        .sync(ruleset.clone(), SyncReason::Start)
        .await
        .unwrap();
    println!(
        "restart with the table in place: {:?} ({applied:?})",
        started.elapsed()
    );
    crate::report::millis("restart_table_in_place", started.elapsed());

    // One Service from 10 to 40 endpoints, one at a time.
    let template = map.ports[1].cluster_endpoints[0];
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut times = Vec::new();
    map.ports[1].cluster_endpoints.truncate(10);
    for n in 11..=40u16 {
        map.ports[1]
            .cluster_endpoints
            .push(std::net::SocketAddr::new(template.ip(), 20_000 + n));
        let (ruleset, _) = compile(&map);
        let started = Instant::now();
        let applied = restarted.sync(ruleset, SyncReason::Change).await.unwrap();
        times.push(started.elapsed());
        let kind = applied.kind().map_or("nothing", |k| k.as_str());
        *kinds.entry(kind.to_string()).or_default() += 1;
    }
    times.sort();
    println!(
        "one service scaled 10 -> 40 endpoints one at a time: transactions {kinds:?}; median {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    crate::report::millis("scale_one_service_step", times[times.len() / 2]);
}

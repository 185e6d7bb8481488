//! The service proxy's nftables backend at 10,000 Services of 10 endpoints each
//! (root; prints numbers, asserts none): building the service map, compiling, the
//! full load into a network namespace, one endpoint removed, and the periodic drift
//! check with nothing to do. `cargo bench -p kubewire-lab --bench run -- proxy`

use std::time::Instant;

use kubewire::proxy::nftables::apply::Reconciler;
use kubewire::proxy::nftables::compile::compile;
use kubewire::proxy::nftables::nft::ProxyNft;
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

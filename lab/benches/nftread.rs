//! Reading the proxy's table back at 10,000 Services × 10 endpoints (root; prints
//! numbers, asserts only that both readers agree): the netlink dump the drift check
//! and a restarted agent use, against the `nft -j list table` reader it replaced.
//! `cargo bench -p kubewire-lab --bench run -- nftread`

use std::time::{Duration, Instant};

use kubewire::nft::{self, Backend, Kernel, Nft};
use kubewire::proxy::nftables::compile::compile;
use kubewire::proxy::nftables::ruleset;

use crate::common::Netns;
use crate::proxy_support::service_map;
use crate::{Outcome, require_program, require_root};

pub fn run() -> Outcome {
    require_root()?;
    require_program("nft", "nftables")?;
    let (compiled, _) = compile(&service_map(10_000, 10));
    let table = ruleset::Lowering::default().lower(&compiled);
    let id = ruleset::table_id();
    let netns = Netns::new("kwreadbench");
    netns.block_on(|| async {
        let mut reconciler = nft::Reconciler::new(Kernel::new(Nft::default()), id.clone());
        reconciler.sync(&table, false).await.expect("full load");
        let mut kernel = Kernel::new(Nft::default());
        kernel.generation().await.expect("socket");
        let median = |mut times: Vec<Duration>| {
            times.sort();
            times[times.len() / 2]
        };
        let mut dumped = None;
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            dumped = kernel.read(&id).await.expect("netlink read");
            times.push(started.elapsed());
        }
        let dumped = dumped.expect("the table");
        println!(
            "netlink dump read (median of 5): {:?} ({} elements, {} rules, {} chains)",
            median(times),
            dumped.table.element_count(),
            dumped.table.rule_count(),
            dumped.table.chains.len()
        );
        let mut listed = None;
        let mut times = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            listed = kernel.read_listing(&id).await.expect("nft -j read");
            times.push(started.elapsed());
        }
        println!(
            "`nft -j list table` read (median of 3): {:?}",
            median(times)
        );
        assert_eq!(Some(dumped), listed, "the two readers differ");
        let started = Instant::now();
        let left = nft::render::describe(&id, &listed.expect("listed").table, &table);
        println!(
            "  the drift diff of a read against the wanted table: {:?} ({} differences)",
            started.elapsed(),
            left.len()
        );
    });
    Ok(())
}

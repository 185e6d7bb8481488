//! Loading and reading the proxy's table at 10,000 Services × 10 endpoints (root;
//! prints numbers, asserts only that both readers agree): the full load over netlink
//! (structure staged by `nft`, elements encoded by us, one transaction) against one
//! `nft -f`, replacing the table, what a restarted agent's learning of its rules
//! costs; the netlink dump the drift check and a restarted agent use, against the
//! `nft -j list table` reader it replaced.
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
        let median = |mut times: Vec<Duration>| {
            times.sort();
            times[times.len() / 2]
        };
        // The kernel's part of a full load, each way (the table deleted in between).
        let create = nft::render::create(&id, &table);
        let mut by_nft = Kernel::new(Nft::default()).with_netlink_load_from(usize::MAX);
        let started = Instant::now();
        by_nft.apply(&create).await.expect("nft -f load");
        let nft_took = started.elapsed();
        Nft::default()
            .delete_table(&id.family, &id.name)
            .await
            .expect("delete");
        let mut kernel = Kernel::new(Nft::default());
        kernel.generation().await.expect("socket");
        let started = Instant::now();
        kernel.apply(&create).await.expect("netlink load");
        let netlink_took = started.elapsed();
        crate::report::millis_versus("full_load_kernel", netlink_took, nft_took, "nft -f");
        println!(
            "full load of {} elements, the kernel's part: {netlink_took:?} over netlink (nft -f: {nft_took:?})",
            table.element_count()
        );
        let started = Instant::now();
        kernel
            .apply(&nft::render::replace(&id, &table))
            .await
            .expect("netlink replace");
        crate::report::millis("replace_kernel", started.elapsed());
        println!("  replacing it (one transaction): {:?}", started.elapsed());
        let started = Instant::now();
        let mut restarted = Kernel::new(Nft::default());
        restarted.prepare(&id, &table).await;
        crate::report::millis("restart_learn_rules", started.elapsed());
        println!(
            "  a restarted agent learning how its rules look (staged, dumped): {:?}",
            started.elapsed()
        );
        let mut reconciler = nft::Reconciler::new(Kernel::new(Nft::default()), id.clone());
        assert_eq!(
            reconciler.sync(&table, false).await.expect("sync"),
            nft::Applied::Nothing
        );
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

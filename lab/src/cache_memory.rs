//! `kubewire-lab cache-memory` (hidden, for the memory benchmark): the agent's watch
//! cache alone, over every kind kubewire reads, in this process — the resident memory
//! before it starts and once it has synced, so the cache's own cost is measured apart
//! from what the controllers compile.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubewire::cache::{Cache, Kind};
use kubewire::telemetry::Metrics;

#[derive(Debug, clap::Args)]
pub struct CacheMemoryArgs {
    /// A kubeconfig for the API server to list from.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Only these kinds (repeatable; default: every kind kubewire reads).
    #[arg(long = "kind", value_parser = parse_kind)]
    pub kinds: Vec<Kind>,
}

fn parse_kind(name: &str) -> Result<Kind, String> {
    Kind::from_name(name).ok_or_else(|| format!("`{name}` is not a kind kubewire reads"))
}

pub async fn run(args: CacheMemoryArgs) -> anyhow::Result<()> {
    let client = kubewire::agent::client_from_kubeconfig(&args.kubeconfig).await?;
    let before = resident_kib()?;
    let started = Instant::now();
    let kinds = if args.kinds.is_empty() {
        Kind::ALL.to_vec()
    } else {
        args.kinds.clone()
    };
    let cache = Cache::start(client, &kinds, Metrics::new(), Duration::from_secs(30)).await;
    cache.wait_synced(Duration::from_secs(120)).await?;
    let synced = started.elapsed();
    // What a long-running agent holds: the freed list buffers returned first.
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe { libc::malloc_trim(0) };
    let after = resident_kib()?;
    let snapshot = cache.snapshot();
    let counts: Vec<String> = kinds
        .iter()
        .map(|kind| format!("{kind} {}", snapshot.len(*kind)))
        .collect();
    println!(
        "cache: RSS {:.1} MiB before, {:.1} MiB synced (+{:.1} MiB) after {:.2}s; {}",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0,
        synced.as_secs_f64(),
        counts.join(", ")
    );
    cache.stop();
    Ok(())
}

fn resident_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))
}

//! One real agent (`kubewire run`, nftables proxy backend, in a network namespace)
//! against the embedded API server holding 10,000 Services × 10 endpoints (their
//! EndpointSlices; no Pod objects): after its first full sync, one EndpointSlice is
//! patched 100 times, one write at a time (the next after the previous reached the
//! kernel, and a pause), each putting a never-seen address in place. Measured: from
//! the API write to the first kernel change that names the address (`nft monitor` in
//! the agent's namespace, the soak benchmark's), p50/p90/max; the agent's resident
//! memory after the first sync and after the 100 changes. `--quick`: 1,000 Services.
//!
//! `cargo bench -p kubewire-lab --bench run -- proxy_agent`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kubewire::cache::Kind;
use kubewire_lab::apiserver::{ApiServer, ApiServerConfig, write_kubeconfig};
use kubewire_lab::harness::Netns;
use kubewire_lab::synthetic::{ClusterSize, generate};
use serde_json::json;

use crate::soak::{Agents, Probe, Probes, monitor, percentile, rss_kib, start_agent, wait_healthy};
use crate::{Outcome, report, require_program, require_root};

/// How many writes are measured.
const WRITES: usize = 100;
/// Between one write reaching the kernel and the next: more than the change
/// signal's coalescing window, so each write is an isolated event.
const PAUSE: Duration = Duration::from_millis(100);

pub fn run() -> Outcome {
    require_root()?;
    require_program("nft", "nftables")?;
    let netns = Netns::new("kwpxagent");
    // The synthetic node-0's InternalIP on an interface, as on a real node.
    netns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    netns.ip(&["addr", "add", "192.168.0.2/16", "dev", "eth0"]);
    for link in ["lo", "eth0", "eth1"] {
        netns.ip(&["link", "set", link, "up"]);
    }
    let dir = tempfile::Builder::new()
        .prefix("kubewire-proxy-agent-")
        .tempdir()
        .expect("temp dir");
    netns.run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(bench(&netns, dir.path()))
    });
    Ok(())
}

async fn bench(netns: &Netns, dir: &std::path::Path) {
    let services = report::scale(10_000, 1_000);
    let size = ClusterSize {
        nodes: 3,
        namespaces: 5,
        // One pod address per endpoint (the pods themselves are left out).
        pods: services * 10,
        services,
        endpoints_per_service: 10,
        policies: 0,
    };
    let mut seed = generate(size);
    seed.retain(|o| o.kind != Kind::Pod);
    for object in &mut seed {
        kubewire::cache::manifests::apply_defaults(object.kind, &mut object.value);
    }
    let slice = seed
        .iter()
        .find(|o| o.kind == Kind::EndpointSlice)
        .map(|o| o.value.clone())
        .expect("a slice");
    let server = ApiServer::start(ApiServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        history: 10_000,
        bookmark_interval: Duration::from_secs(10),
        seed,
    })
    .await
    .expect("API server");
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&format!("http://{}", server.addr()), &kubeconfig).expect("kubeconfig");
    let client = kubewire::agent::client_from_kubeconfig(&kubeconfig)
        .await
        .expect("client");
    println!("cluster: {services} services x 10 endpoints; one agent (node-0)");

    let started = Instant::now();
    let agents = Agents {
        children: vec![start_agent(netns, 0, &kubeconfig, dir)],
    };
    let pid = agents.children[0].id();
    tokio::task::block_in_place(|| wait_healthy(0, Duration::from_secs(300)));
    let healthy = started.elapsed();
    println!(
        "agent healthy (first full sync) after {:.1}s",
        healthy.as_secs_f64()
    );
    report::figure("agent_healthy", healthy.as_secs_f64(), "s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_first = rss_kib(pid) as f64 / 1024.0;

    let probes: Probes = Arc::default();
    let lost = Arc::new(AtomicU64::new(0));
    let mut nft_monitor = monitor(&netns.name, 0, probes.clone(), lost.clone());
    // `nft monitor` reads the ruleset before it listens.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let namespace = slice["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = slice["metadata"]["name"].as_str().unwrap_or_default();
    let slices: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let mut endpoints = slice["endpoints"].clone();
    let mut latencies = Vec::new();
    let mut unseen = 0;
    // One write more than measured: the first warms the path up.
    for n in 0..=WRITES {
        let ip = format!("10.250.{}.{}", n / 250, n % 250 + 1);
        endpoints[0]["addresses"] = json!([ip]);
        let written = Instant::now();
        probes.lock().unwrap_or_else(|e| e.into_inner()).insert(
            ip.clone(),
            Probe {
                written,
                seen: [None, None],
            },
        );
        slices
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"endpoints": endpoints})),
            )
            .await
            .expect("patching the EndpointSlice");
        let seen = loop {
            let seen = probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&ip)
                .and_then(|p| p.seen[0]);
            if seen.is_some() || written.elapsed() > Duration::from_secs(5) {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        match seen {
            Some(at) if n > 0 => latencies.push((at - written).as_secs_f64() * 1000.0),
            Some(_) => {}
            None => unseen += 1,
        }
        tokio::time::sleep(PAUSE).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_changes = rss_kib(pid) as f64 / 1024.0;
    let _ = nft_monitor.kill();
    let _ = nft_monitor.wait();
    drop(agents);
    server.shutdown().await;

    latencies.sort_by(f64::total_cmp);
    let (p50, p90) = (percentile(&latencies, 0.5), percentile(&latencies, 0.9));
    let max = latencies.last().copied().unwrap_or(0.0);
    println!(
        "API write to kernel, one EndpointSlice patched {} times: p50 {p50:.1} ms, p90 {p90:.1} ms, max {max:.1} ms",
        latencies.len()
    );
    report::figure("write_to_kernel_p50", p50, "ms");
    report::figure("write_to_kernel_p90", p90, "ms");
    report::figure("write_to_kernel_max", max, "ms");
    if unseen > 0 {
        println!("{unseen} writes not seen by `nft monitor` within 5 s");
    }
    report::figure("writes_not_seen", unseen as f64, "writes");
    let lost = lost.load(Ordering::Relaxed);
    if lost > 0 {
        println!("`nft monitor` printed {lost} warnings (events it could not print)");
    }
    println!(
        "agent RSS: {rss_first:.0} MiB after the first sync, {rss_changes:.0} MiB after {} changes",
        WRITES + 1
    );
    report::figure("agent_rss_after_first_sync", rss_first, "MiB");
    report::figure("agent_rss_after_100_changes", rss_changes, "MiB");
}

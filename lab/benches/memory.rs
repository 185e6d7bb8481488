//! Benchmark (prints, asserts nothing about size): resident memory of an agent whose
//! cache holds the issue-2 cluster (5,000 Pods, 1,000 Services, 1,000 EndpointSlices,
//! 500 NetworkPolicies) next to the same agent over an empty cluster; each as
//! deployed (every controller: router, firewall, service proxy, CNI), and with the CNI
//! controller, the firewall, the proxy or the router alone. The agent watches only the
//! kinds its controllers read, so they differ. Each figure is split into where it lives
//! (the binary and libraries, glibc's main heap, other anonymous memory: the other
//! arenas and thread stacks). Each agent runs in a network namespace of its own (node
//! n1's address on a veth), with the embedded API server started in that namespace
//! (root).
//! `cargo bench -p kubewire-lab --bench run -- memory`

use std::time::{Duration, Instant};

use kubewire::cache::manifests;
use kubewire_lab::apiserver::write_kubeconfig;
use kubewire_lab::synthetic::{ClusterSize, generate};

use crate::agent_support::{Agent, NODES, free_port, http_get, start_server};
use crate::common::{Netns, temp_dir};
use crate::{Outcome, require_program, require_root};

/// Which controllers run, and the flags that say so. The report keys each row by
/// its label's first word, so those differ.
const CONTROLLERS: [(&str, &[&str]); 5] = [
    (
        "every controller (router, firewall, proxy, cni)",
        &[
            "--run-router=true",
            "--run-firewall=true",
            "--run-service-proxy=true",
            "--run-cni=true",
        ],
    ),
    (
        "CNI only",
        &[
            "--run-router=false",
            "--run-firewall=false",
            "--run-service-proxy=false",
            "--run-cni=true",
        ],
    ),
    (
        "firewall only",
        &[
            "--run-router=false",
            "--run-firewall=true",
            "--run-service-proxy=false",
            "--run-cni=false",
        ],
    ),
    (
        "proxy only",
        &[
            "--run-router=false",
            "--run-firewall=false",
            "--run-service-proxy=true",
            "--run-cni=false",
        ],
    ),
    (
        "router only",
        &[
            "--run-router=true",
            "--run-firewall=false",
            "--run-service-proxy=false",
            "--run-cni=false",
        ],
    ),
];

/// Rows to run, by key (`every,proxy`): all when unset.
const ROWS_ENV: &str = "KUBEWIRE_BENCH_MEMORY_ROWS";
/// A directory to copy each agent's `/proc/PID/smaps` into (`smaps.PID`).
const SMAPS_ENV: &str = "KUBEWIRE_BENCH_MEMORY_SMAPS";

pub fn run() -> Outcome {
    require_root()?;
    require_program("nft", "nftables")?;
    for (label, size) in [
        (
            "empty (1 node)",
            ClusterSize {
                nodes: 1,
                namespaces: 1,
                pods: 0,
                services: 0,
                endpoints_per_service: 0,
                policies: 0,
            },
        ),
        (
            "issue-2 size",
            crate::report::scale(ClusterSize::BENCH, crate::report::QUICK_CLUSTER),
        ),
    ] {
        for (controllers, flags) in CONTROLLERS {
            let key = controllers.split(' ').next().unwrap_or(controllers);
            if let Ok(rows) = std::env::var(ROWS_ENV)
                && !rows.split(',').any(|r| r == key)
            {
                continue;
            }
            let (rss_mib, healthy, cache, breakdown) = measure(size, flags);
            println!(
                "{label}, {controllers}: RSS {:.1} MiB, healthy after {:.2}s",
                rss_mib,
                healthy.as_secs_f64()
            );
            crate::report::figure(
                &format!("rss.{}.{}", label.split(' ').next().unwrap_or(label), key),
                rss_mib,
                "MiB",
            );
            println!("    {breakdown}");
            for line in cache {
                println!("    {line}");
            }
        }
    }
    Ok(())
}

/// Starts the API server with a cluster of `size` (node n1 in it) and the agent with
/// `flags` in a new network namespace: the agent's resident memory (MiB) 2 s after it
/// became healthy, the time until it did, its `kubewire_cache_objects` lines (sorted)
/// and where the resident memory is (see [`breakdown`]).
fn measure(size: ClusterSize, flags: &[&str]) -> (f64, Duration, Vec<String>, String) {
    let mut seed = generate(size);
    // The agent's node, with a CIDR the CNI controller can use.
    seed.retain(|o| o.kind != kubewire::cache::Kind::Node || o.value["metadata"]["name"] != "n1");
    seed.extend(manifests::parse_documents(std::path::Path::new("n1.yaml"), NODES).unwrap());
    let ns = Netns::new("kwmem");
    // Node n1's underlay: a veth (this kernel may have no dummy) holding its InternalIP.
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "wire",
    ]);
    ns.ip(&["addr", "add", "192.0.2.11/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "wire", "up"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    let dir = temp_dir();
    ns.run(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(start_server(seed));
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&server.url(), &kubeconfig).unwrap();
        let addr = free_port();
        let started = Instant::now();
        let mut agent = Agent::spawn(
            &kubeconfig,
            &dir.path().join("cni"),
            addr,
            &[flags, &["--log-level", "warn"]].concat(),
        );
        agent.wait_healthy(addr, Duration::from_secs(120));
        let healthy = started.elapsed();
        // Nobody reads its warnings: keep the pipe from filling up.
        if let Some(mut stderr) = agent.child.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        }
        std::thread::sleep(Duration::from_secs(2));
        let (_, metrics) = http_get(addr, "/metrics").unwrap();
        let mut cache: Vec<String> = metrics
            .lines()
            .filter(|l| l.starts_with("kubewire_cache_objects{"))
            .map(String::from)
            .collect();
        cache.sort();
        let rss_mib = resident_kib(agent.child.id()) as f64 / 1024.0;
        let breakdown = breakdown(agent.child.id());
        if let Ok(dir) = std::env::var(SMAPS_ENV) {
            let to = std::path::Path::new(&dir).join(format!("smaps.{}", agent.child.id()));
            let _ = std::fs::copy(format!("/proc/{}/smaps", agent.child.id()), to);
        }
        drop(agent);
        runtime.block_on(server.shutdown());
        (rss_mib, healthy, cache, breakdown)
    })
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Where the resident memory is: the binary and libraries (file-backed), the main
/// heap (`[heap]`: glibc's main arena), other anonymous mappings (glibc's per-thread
/// arenas and thread stacks), and the threads (each may bring an arena).
fn breakdown(pid: u32) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut file, mut heap, mut anon, mut name) = (0u64, 0u64, 0u64, String::new());
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: `start-end perms offset dev inode [path]`.
            name = line.split_whitespace().nth(5).unwrap_or("").to_string();
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match name.as_str() {
                "[heap]" => heap += kib,
                "" | "[stack]" | "[anon]" => anon += kib,
                n if n.starts_with('/') => file += kib,
                _ => anon += kib,
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .map_or("?", str::trim)
        .to_string();
    let mib = |kib: u64| kib as f64 / 1024.0;
    format!(
        "resident: file {:.1} MiB, [heap] {:.1} MiB, other anonymous {:.1} MiB; {threads} threads",
        mib(file),
        mib(heap),
        mib(anon)
    )
}

//! The firewall benchmark (prints numbers, asserts no timings):
//! `cargo bench -p kubewire-lab --bench run -- firewall`.
//!
//! 5,000 pods in 100 namespaces on one node, 1,000 NetworkPolicies: compile time,
//! full apply into a network namespace, one pod label change through the controller
//! path (read, incremental compile, diff, kernel; transaction size), the same change's
//! kernel cost through `nft -f`, through netlink from a socket per transaction (the
//! old path: closing the socket waits for an RCU grace period after a delete) and
//! from one socket kept open, the periodic drift check, and the connection rate
//! through a policed pod with 10 vs 1,000 policies (per-packet cost must not grow
//! with policies).

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kubewire::cache::Pod;
use kubewire::cache::Snapshot;
use kubewire::firewall::FirewallInput;
use kubewire::firewall::apply::{Applied, Reconciler};
use kubewire::firewall::compile::{self, CompileOptions, IncrementalCompiler};
use kubewire::firewall::input::InputReader;
use kubewire::firewall::metrics::FirewallMetrics;
use kubewire::firewall::model::{FAMILY, TABLE};
use kubewire::firewall::render;
use kubewire::nft::netlink::{self, ElementBatch};
use kubewire::nft::{Backend, Kernel, Nft};
use kubewire::runtime::SyncReason;
use serde_json::json;

use crate::firewall_support::NetNs;
use crate::firewall_support::cluster::TestCluster;
use crate::{Outcome, require_program, require_root};

const NODE: &str = "bench";
/// 100 namespaces (5,000 pods); 20 (1,000 pods) under `--quick`.
fn namespaces() -> usize {
    crate::report::scale(100, 20)
}

/// Policies: 1,000; 200 under `--quick`.
fn policies() -> usize {
    crate::report::scale(1000, 200)
}
const PODS_PER_NAMESPACE: usize = 50;
const APPS_PER_NAMESPACE: usize = 10;

fn pod_ip(index: usize) -> String {
    format!("10.128.{}.{}", index / 250, index % 250 + 2)
}

/// A cluster like a real one: each namespace runs 10 apps of 5 pods (frontend or
/// backend); its policies let an app be reached from the next app on a numbered and
/// a named port, from frontends of the same team's namespaces, from an ipBlock, and
/// restrict some apps' egress to their team and DNS. `relabel` moves pod 0 of
/// namespace 0 to another app.
fn cluster(policies: usize, relabel: bool) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.nodes.push(Arc::new(
        serde_json::from_value::<Node>(json!({
            "metadata": {"name": NODE},
            "spec": {"podCIDR": "10.128.0.0/16", "podCIDRs": ["10.128.0.0/16"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.31.0.11"}]}
        }))
        .unwrap(),
    ));
    for n in 0..namespaces() {
        snapshot.namespaces.push(Arc::new(
            serde_json::from_value::<Namespace>(json!({
                "metadata": {"name": format!("ns{n}"), "labels": {
                    "kubernetes.io/metadata.name": format!("ns{n}"),
                    "team": format!("team{}", n % 10),
                    "env": if n % 2 == 0 { "prod" } else { "dev" },
                }}
            }))
            .unwrap(),
        ));
        for p in 0..PODS_PER_NAMESPACE {
            let index = n * PODS_PER_NAMESPACE + p;
            let mut app = p % APPS_PER_NAMESPACE;
            if relabel && index == 0 {
                app = 5;
            }
            snapshot.pods.push(Arc::new(
                serde_json::from_value::<Pod>(json!({
                    "metadata": {"name": format!("pod{p}"), "namespace": format!("ns{n}"), "labels": {
                        "app": format!("app{app}"),
                        "tier": if app < 5 { "frontend" } else { "backend" },
                    }},
                    "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": [
                        {"containerPort": 8080, "name": "http"},
                        {"containerPort": 9090, "name": "metrics"},
                    ]}]},
                    "status": {"phase": "Running", "podIP": pod_ip(index), "podIPs": [{"ip": pod_ip(index)}]}
                }))
                .unwrap(),
            ));
        }
    }
    for i in 0..policies {
        let n = i % namespaces();
        let k = (i / namespaces()) % APPS_PER_NAMESPACE;
        let mut spec = json!({
            "podSelector": {"matchLabels": {"app": format!("app{k}")}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", (k + 1) % APPS_PER_NAMESPACE)}}}],
                 "ports": [{"port": 8080}, {"port": "http"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team{}", n % 10)}},
                           "podSelector": {"matchLabels": {"tier": "frontend"}}}],
                 "ports": [{"port": 8080}]},
                {"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": [format!("192.168.{k}.0/24")]}}],
                 "ports": [{"port": 9090, "endPort": 9099}]},
            ],
        });
        if k.is_multiple_of(3) {
            spec["egress"] = json!([
                {"to": [{"namespaceSelector": {"matchLabels": {"team": format!("team{}", n % 10)}}}]},
                {"ports": [{"port": 53, "protocol": "UDP"}]},
            ]);
        }
        snapshot.network_policies.push(Arc::new(
            serde_json::from_value::<NetworkPolicy>(json!({
                "metadata": {"name": format!("policy{i}"), "namespace": format!("ns{n}")},
                "spec": spec,
            }))
            .unwrap(),
        ));
    }
    snapshot.sorted()
}

/// The snapshot after one pod (ns0/pod0) moved to another app: every other object is
/// the same `Arc`, as the watch cache would hand it out.
fn relabel_one_pod(snapshot: &Snapshot) -> Snapshot {
    let changed = cluster(0, true);
    let mut next = snapshot.clone();
    let index = next
        .pods
        .iter()
        .position(|p| {
            p.metadata.name.as_deref() == Some("pod0")
                && p.metadata.namespace.as_deref() == Some("ns0")
        })
        .unwrap();
    next.pods[index] = changed.pods[index].clone();
    next
}

fn options() -> CompileOptions {
    CompileOptions {
        node: NODE.into(),
        default_deny: true,
        log_group: None,
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

pub fn run() -> Outcome {
    require_root()?;
    require_program("nft", "nftables")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(benchmark());
    Ok(())
}

async fn benchmark() {
    let snapshot = cluster(policies(), false);
    let input = FirewallInput::from_snapshot(&snapshot);
    assert!(input.errors.is_empty(), "{:?}", input.errors);
    println!(
        "cluster: {} pods, {} namespaces, {} policies, all pods on node {NODE}",
        input.cluster.pods.len(),
        input.cluster.namespaces.len(),
        input.policies.len()
    );

    // Compile (snapshot → input → ruleset), the controller's pure part.
    let mut samples = Vec::new();
    let mut ruleset = compile::compile(&input, &options());
    for _ in 0..7 {
        let started = Instant::now();
        let input = FirewallInput::from_snapshot(&snapshot);
        ruleset = compile::compile(&input, &options());
        samples.push(started.elapsed());
    }
    let (mut reads, mut compiles) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let started = Instant::now();
        let input = FirewallInput::from_snapshot(&snapshot);
        reads.push(started.elapsed());
        let started = Instant::now();
        compile::compile(&input, &options());
        compiles.push(started.elapsed());
    }
    println!(
        "compile: {} (median of 7; snapshot to ruleset: reading the snapshot {}, compiling {}): \
         {} chains, {} rules, {} sets and maps, {} elements",
        ms(median(samples.clone())),
        ms(median(reads)),
        ms(median(compiles)),
        ruleset.chains.len(),
        ruleset.rule_count(),
        ruleset.sets.len(),
        ruleset.element_count()
    );
    crate::report::millis("compile", median(samples));

    // Full apply into an empty namespace, then again over an existing table.
    let ns = NetNs::new("bench");
    let nft = Nft::in_netns(&ns.name);
    let full = kubewire::nft::render::replace(&render::table_id(), &render::table(&ruleset));
    println!(
        "full transaction: {} bytes of nft text, size {}",
        full.text().len(),
        full.size()
    );
    if let Ok(path) = std::env::var("KUBEWIRE_BENCH_SAVE_PLAN") {
        std::fs::write(path, full.text()).unwrap();
    }
    for label in [
        "full apply (empty namespace)",
        "full apply (replacing the table)",
    ] {
        let started = Instant::now();
        nft.apply(&full.text()).await.unwrap();
        println!("{label}: {}", ms(started.elapsed()));
        crate::report::millis(
            if label.contains("empty") {
                "full_apply"
            } else {
                "full_apply_replacing"
            },
            started.elapsed(),
        );
    }

    // One pod label change the way the controller sees it: the watch cache hands out
    // a new snapshot in which one pod object is new; the reader converts just that
    // pod, the incremental compiler updates just its elements, the reconciler sends
    // the difference over netlink.
    let mut reader = InputReader::default();
    let mut compiler = IncrementalCompiler::new(options());
    let mut reconciler = Reconciler::new(nft.clone(), FirewallMetrics::default());
    let desired = compiler.compile(reader.read(&snapshot));
    reconciler.sync(desired, SyncReason::Start).await.unwrap();
    let relabelled = relabel_one_pod(&snapshot);
    let (mut totals, mut reads, mut compiles, mut diffs, mut kernels) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for round in 0..20 {
        let snapshot = if round % 2 == 0 {
            &relabelled
        } else {
            &snapshot
        };
        let started = Instant::now();
        let input = reader.read(snapshot);
        let read = started.elapsed();
        let desired = compiler.compile(input);
        let compiled = started.elapsed();
        let applied = reconciler.sync(desired, SyncReason::Change).await.unwrap();
        totals.push(started.elapsed());
        reads.push(read);
        compiles.push(compiled - read);
        diffs.push(reconciler.last_sync().diff);
        kernels.push(reconciler.last_sync().kernel);
        last = Some(applied);
    }
    match last {
        Some(Applied::Incremental { transaction }) => {
            println!(
                "one pod label change: {} total (median of 20: read {}, incremental compile {}, \
                 diff {}, kernel {}); transaction: {} commands, size {}, elements only: {}, \
                 sent over netlink: {}",
                ms(median(totals.clone())),
                ms(median(reads)),
                ms(median(compiles)),
                ms(median(diffs)),
                ms(median(kernels)),
                transaction.ops.len(),
                transaction.size(),
                transaction.elements_only(),
                Kernel::element_batches(&transaction).is_some()
            );
            crate::report::millis("one_label_change", median(totals.clone()));
            for line in transaction.text().lines() {
                println!("    {line}");
            }
        }
        other => panic!("a label change should be incremental, got {other:?}"),
    }
    // The periodic sync with nothing to do: the drift check (the ruleset generation,
    // unchanged since our last commit) and the drop counters' read.
    let mut periodic = Vec::new();
    for _ in 0..10 {
        let desired = compiler.compile(reader.read(&snapshot));
        let started = Instant::now();
        let applied = reconciler
            .sync(desired, SyncReason::Periodic)
            .await
            .unwrap();
        periodic.push(started.elapsed());
        assert_eq!(applied, Applied::Nothing);
    }
    let mut kernel = Kernel::new(nft.clone());
    let id = render::table_id();
    let (mut generation, mut counters, mut read) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        kernel.generation().await.unwrap();
        generation.push(started.elapsed());
        let started = Instant::now();
        kernel.packets(&id).await.unwrap();
        counters.push(started.elapsed());
    }
    for _ in 0..3 {
        let started = Instant::now();
        kernel.read(&id).await.unwrap();
        read.push(started.elapsed());
    }
    println!(
        "periodic sync, nothing to do: {} (median of 10; of which the drift check's \
         generation query {}, the drop counters' read {}); the whole table read back, \
         when someone else committed: {}; reads done by the checks: {}",
        ms(median(periodic.clone())),
        ms(median(generation)),
        ms(median(counters)),
        ms(median(read)),
        reconciler.inner().reads
    );
    crate::report::millis("periodic_sync_noop", median(periodic.clone()));
    drop(reconciler);
    // The kernel part alone, three ways: `nft -f` (a process, which reads the table's
    // cache first); netlink from a socket per transaction (closing a socket waits for
    // the RCU grace period after which the kernel frees deleted elements); netlink
    // from one socket kept open (what the reconciler does).
    let full_now = compile::compile(&FirewallInput::from_snapshot(&snapshot), &options());
    let changed = compile::compile(&FirewallInput::from_snapshot(&relabelled), &options());
    let forth = render::diff(&full_now, &changed).unwrap();
    let back = render::diff(&changed, &full_now).unwrap();
    let batches = [
        Kernel::element_batches(&forth).unwrap(),
        Kernel::element_batches(&back).unwrap(),
    ];
    // New keys of plain sets: adding them is all the change does there.
    let adds_only: Vec<ElementBatch> = batches[0]
        .iter()
        .filter(|b| !b.delete && !b.is_map())
        .cloned()
        .collect();
    let undo_adds: Vec<ElementBatch> = adds_only
        .iter()
        .map(|b| ElementBatch {
            delete: true,
            ..b.clone()
        })
        .collect();
    let netns = nft.netns().map(String::from);
    let mut cli = Vec::new();
    for round in 0..6 {
        let diff = if round % 2 == 0 { &forth } else { &back };
        let started = Instant::now();
        nft.apply(&diff.text()).await.unwrap();
        cli.push(started.elapsed());
    }
    let (per_transaction, kept_open, adds_per_transaction) = tokio::task::block_in_place(|| {
        let (mut per_transaction, mut kept_open, mut adds) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..20 {
            let started = Instant::now();
            netlink::apply(netns.as_deref(), &batches[round % 2]).unwrap();
            per_transaction.push(started.elapsed());
        }
        let mut session = netlink::Session::new(netns.as_deref());
        for round in 0..20 {
            let started = Instant::now();
            session.apply(&batches[round % 2]).unwrap();
            kept_open.push(started.elapsed());
        }
        for _ in 0..10 {
            // Let the kernel free what the last delete released first.
            std::thread::sleep(Duration::from_millis(100));
            let started = Instant::now();
            netlink::apply(netns.as_deref(), &adds_only).unwrap();
            adds.push(started.elapsed());
            session.apply(&undo_adds).unwrap();
        }
        (per_transaction, kept_open, adds)
    });
    println!(
        "the same change, kernel only (median): `nft -f` {}; netlink from a socket per \
         transaction {} (its {} set adds alone, no delete: {}); netlink from one socket kept \
         open {}",
        ms(median(cli.clone())),
        ms(median(per_transaction)),
        adds_only.iter().map(|b| b.elements.len()).sum::<usize>(),
        ms(median(adds_per_transaction)),
        ms(median(kept_open.clone()))
    );
    crate::report::millis_versus(
        "one_label_change_kernel",
        median(kept_open.clone()),
        median(cli.clone()),
        "nft -f",
    );

    drop(ns);

    connection_rates().await;
}

/// Connections per second from a client pod to a policed server pod with no table,
/// then with 10 and with 1,000 policies.
async fn connection_rates() {
    // ns0/pod0 runs app0, isolated by policy0 (present in both runs), which admits
    // app1 on 8080: ns0/pod1.
    let server_index = 0;
    let client_index = 1;
    let big = cluster(policies(), false);
    let small = cluster(10, false);
    // The two pods' own small topology: the node with its bridge, and two pod namespaces.
    let pair = Snapshot {
        nodes: big.nodes.clone(),
        namespaces: big.namespaces.clone(),
        pods: big
            .pods
            .iter()
            .filter(|p| {
                let ip = p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default();
                ip == pod_ip(server_index) || ip == pod_ip(client_index)
            })
            .cloned()
            .collect(),
        ..Snapshot::default()
    };
    let pair_input = FirewallInput::from_snapshot(&pair);
    let test_cluster = TestCluster::build(&pair_input);
    let client = test_cluster.pod_netns["ns0/pod1"].clone();
    let server: SocketAddr = format!("{}:8080", pod_ip(server_index)).parse().unwrap();
    let node = test_cluster.node(NODE);
    node.exec("sysctl", &["-qw", "net.netfilter.nf_conntrack_max=1000000"]);
    let nft = Nft::in_netns(&node.name);
    let mut configs = vec![("no kubewire table", None)];
    for (label, snapshot) in [("10 policies", &small), ("1,000 policies", &big)] {
        let ruleset = compile::compile(&FirewallInput::from_snapshot(snapshot), &options());
        println!(
            "  ({label}: {} chains, {} elements; the server's dispatch entry: `{}`)",
            ruleset.chains.len(),
            ruleset.element_count(),
            ruleset.sets["ingress-dispatch4"].elements[&pod_ip(server_index)]
        );
        configs.push((label, Some(render::full(&ruleset).text())));
    }
    // Rounds interleave the configurations, so load from elsewhere on the machine
    // hits them alike. Besides the rate, the CPU time the client's thread spends per
    // connection (its SYN, the SYN-ACK and the rest pass the forward hook in softirq
    // context on that thread, mostly) is measured: it does not depend on waiting for
    // a CPU on a busy machine.
    let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::new(); configs.len()];
    for _ in 0..crate::report::scale(8, 3) {
        for (i, (_, text)) in configs.iter().enumerate() {
            match text {
                None => {
                    let _ = nft.delete_table(FAMILY, TABLE).await;
                }
                Some(text) => nft.apply(text).await.unwrap(),
            }
            let sample = tokio::task::block_in_place(|| {
                connect_rate(&client, server, Duration::from_millis(700))
            });
            samples[i].push(sample);
        }
    }
    for ((label, _), samples) in configs.iter().zip(samples) {
        let mut rates: Vec<f64> = samples.iter().map(|s| s.0).collect();
        let mut cpu: Vec<f64> = samples.iter().map(|s| s.1).collect();
        rates.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        println!(
            "through the policed pod, {label}: median {:.0} connections/s (min {:.0}, max {:.0}); \
             client CPU per connection: median {:.1} µs (min {:.1}) — 8 rounds of 0.7 s",
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1],
            cpu[cpu.len() / 2],
            cpu[0]
        );
        let key = label.replace(',', "").replace(' ', "_");
        crate::report::figure(
            &format!("connections_per_s.{key}"),
            rates[rates.len() / 2],
            "conn/s",
        );
        crate::report::figure(
            &format!("client_cpu_per_connection.{key}"),
            cpu[cpu.len() / 2],
            "us",
        );
    }
}

/// New TCP connections per second from namespace `ns` to `to` for `window`, and the
/// CPU time (user + system) the connecting thread used per connection, in µs.
fn connect_rate(ns: &str, to: SocketAddr, window: Duration) -> (f64, f64) {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let _ = std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
                let cpu_before = thread_cpu();
                let started = Instant::now();
                let mut count = 0u64;
                let mut failures = 0u64;
                while started.elapsed() < window {
                    match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                        Ok(stream) => {
                            drop(stream);
                            count += 1;
                        }
                        Err(_) => failures += 1,
                    }
                }
                let cpu = thread_cpu() - cpu_before;
                assert!(
                    failures < count / 10 + 1,
                    "{failures} failed connections, {count} made"
                );
                let count = count.max(1) as f64;
                (
                    count / started.elapsed().as_secs_f64(),
                    cpu.as_secs_f64() * 1e6 / count,
                )
            })
            .join()
            .unwrap()
    })
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut time) };
    assert_eq!(result, 0);
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

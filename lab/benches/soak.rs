//! Churn and soak (root): two real agents (`kubewire run`, every controller, nodes
//! node-0 and node-1, each in a network namespace of its own joined by a veth) watch
//! the embedded API server holding 2,000 pods, 500 services with their endpoint
//! slices and 100 policies (the pods are API objects: no netns each). Then 100
//! object changes per second for 5 minutes go through the API (pod labels, endpoint
//! readiness, pods created, addressed and deleted); `--quick`: 500 pods, 100
//! services, 20 s. Measured:
//!
//! - each agent's resident memory at the start, its peak (sampled every second) and
//!   at the end;
//! - from an API write to the kernel reflecting it: 4 of the 100 writes a second are
//!   probes that put a never-seen address in place (an endpoint's address; a new
//!   pod's address in a policy's peer set); `nft monitor` in each node says when the
//!   kernel has it;
//! - at the end, the difference between what the agents programmed and what the
//!   offline verbs (`kubewire firewall plan`, `kubewire proxy plan`) compute from the
//!   API server's final objects, both read back from the kernel (the plan loaded into
//!   a scratch namespace) and compared by the agents' own drift check: it must be
//!   empty.
//!
//! `cargo bench -p kubewire-lab --bench run -- [--quick] soak`

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubewire::cache::Kind;
use kubewire::cache::manifests::ManifestObject;
use kubewire_lab::apiserver::{ApiServer, ApiServerConfig, write_kubeconfig};
use kubewire_lab::harness::Netns;
use kubewire_lab::synthetic::{ClusterSize, generate};
use serde_json::{Value, json};

use crate::agent_support::http_get;
use crate::{Outcome, report, require_program, require_root};

const NODES: [&str; 2] = ["node-0", "node-1"];
/// Each node's underlay address (the synthetic cluster's InternalIPs).
const NODE_IPS: [&str; 2] = ["192.168.0.2", "192.168.0.3"];
const HEALTH_PORT: u16 = 19090;
const PROBE_EVERY: u64 = 25;

struct Settings {
    size: ClusterSize,
    duration: Duration,
    rate: u64,
}

fn settings() -> Settings {
    let full = Settings {
        size: ClusterSize {
            nodes: 10,
            // Coprime with the node count: each namespace has pods on every node.
            namespaces: 21,
            pods: 2_000,
            services: 500,
            endpoints_per_service: 5,
            policies: 100,
        },
        duration: Duration::from_secs(300),
        rate: 100,
    };
    let quick = Settings {
        size: ClusterSize {
            pods: 500,
            services: 100,
            policies: 25,
            ..full.size
        },
        duration: Duration::from_secs(20),
        rate: 100,
    };
    report::scale(full, quick)
}

pub fn run() -> Outcome {
    require_root()?;
    require_program("nft", "nftables")?;
    let settings = settings();
    let nodes = [Netns::new("kwsoak0"), Netns::new("kwsoak1")];
    nodes[0].ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &nodes[1].name,
    ]);
    for (ns, ip) in nodes.iter().zip(NODE_IPS) {
        ns.ip(&["addr", "add", &format!("{ip}/16"), "dev", "eth0"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    let dir = tempfile::Builder::new()
        .prefix("kubewire-soak-")
        .tempdir()
        .expect("temp dir");
    // The API server, the writer and the measurements live in node-0's namespace.
    nodes[0].run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(soak(&settings, &nodes, dir.path()))
    });
    Ok(())
}

/// A seed object's stored form, as the API server would list it.
fn seed(size: ClusterSize) -> Vec<ManifestObject> {
    let mut objects = generate(size);
    let object = |kind, value: Value| ManifestObject { kind, value };
    objects.push(object(
        Kind::Namespace,
        json!({"kind": "Namespace", "metadata": {"name": "soak", "labels": {"kubernetes.io/metadata.name": "soak"}}}),
    ));
    // One anchor pod per agent's node, isolated by a policy that admits every pod of
    // the namespace: each probe pod's address lands in both nodes' peer sets.
    for (i, node) in NODES.iter().enumerate() {
        objects.push(object(
            Kind::Pod,
            json!({"kind": "Pod", "metadata": {"name": format!("anchor-{i}"), "namespace": "soak", "labels": {"role": "anchor"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": format!("10.252.0.{}", i + 1), "podIPs": [{"ip": format!("10.252.0.{}", i + 1)}]}}),
        ));
    }
    objects.push(object(
        Kind::NetworkPolicy,
        json!({"kind": "NetworkPolicy", "metadata": {"name": "anchor", "namespace": "soak"},
            "spec": {"podSelector": {"matchLabels": {"role": "anchor"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 8080}]}]}}),
    ));
    for object in &mut objects {
        kubewire::cache::manifests::apply_defaults(object.kind, &mut object.value);
    }
    objects
}

/// A probe: when it was written, and when each node's kernel had its address.
#[derive(Clone)]
pub(crate) struct Probe {
    pub(crate) written: Instant,
    pub(crate) seen: [Option<Instant>; 2],
}

pub(crate) type Probes = Arc<Mutex<HashMap<String, Probe>>>;

/// `nft monitor` in a node, every line timestamped: marks the probes it names;
/// counts in `lost` the warnings it prints (e.g. `Unable to cache set_elem. Set not
/// found.` for a set created before it started: an event it cannot print, so a probe
/// may be seen only when its address shows up again).
pub(crate) fn monitor(netns: &str, node: usize, probes: Probes, lost: Arc<AtomicU64>) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft monitor");
    let stderr = child.stderr.take().expect("piped");
    let node_name = NODES[node];
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lost.fetch_add(1, Ordering::Relaxed) == 0 {
                println!("nft monitor in {node_name}: {line}");
            }
        }
    });
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let now = Instant::now();
            if !line.contains("10.25") {
                continue;
            }
            let mut probes = probes.lock().unwrap_or_else(|e| e.into_inner());
            for word in line.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
                if let Some(probe) = probes.get_mut(word)
                    && probe.seen[node].is_none()
                {
                    probe.seen[node] = Some(now);
                }
            }
        }
    });
    child
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub(crate) struct Agents {
    pub(crate) children: Vec<Child>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn health_addr(node: usize) -> SocketAddr {
    let ip = if node == 0 {
        "127.0.0.1"
    } else {
        NODE_IPS[node]
    };
    format!("{ip}:{HEALTH_PORT}").parse().expect("address")
}

pub(crate) fn start_agent(netns: &Netns, node: usize, kubeconfig: &Path, dir: &Path) -> Child {
    let addr = health_addr(node).to_string();
    Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .arg(crate::common::kubewire_bin())
        .args(["run", "--node-name", NODES[node], "--mtu", "1400"])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cni-conf-dir")
        .arg(dir.join(format!("cni-{node}")))
        .args(["--metrics-addr", &addr, "--health-addr", &addr])
        .args([
            "--run-router=true",
            "--run-firewall=true",
            "--run-service-proxy=true",
            "--run-cni=true",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the agent")
}

pub(crate) fn wait_healthy(node: usize, within: Duration) {
    let started = Instant::now();
    while !matches!(http_get(health_addr(node), "/healthz"), Some((200, _))) {
        assert!(
            started.elapsed() < within,
            "agent {} not healthy within {within:?}",
            NODES[node]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What one change does; the writer cycles through these.
struct Writer {
    client: kube::Client,
    slices: HashMap<(String, String), Value>,
    slice_names: Vec<(String, String)>,
    pods: usize,
    namespaces: usize,
    next_probe: u32,
    churn: u32,
}

impl Writer {
    fn unique_ip(prefix: &str, n: u32) -> String {
        format!("{prefix}.{}.{}", n / 250, n % 250 + 1)
    }

    async fn patch_slice(&mut self, index: usize, change: impl FnOnce(&mut Value)) {
        let key = self.slice_names[index % self.slice_names.len()].clone();
        let Some(slice) = self.slices.get_mut(&key) else {
            return;
        };
        change(&mut slice["endpoints"]);
        let patch = json!({"endpoints": slice["endpoints"].clone()});
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.0);
        api.patch(&key.1, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patching an EndpointSlice");
    }

    /// The `tick`-th change; probes register in `probes` just before their write.
    async fn change(&mut self, tick: u64, probes: &Probes) {
        let register = |ip: &str| {
            probes.lock().unwrap_or_else(|e| e.into_inner()).insert(
                ip.to_string(),
                Probe {
                    written: Instant::now(),
                    seen: [None, None],
                },
            );
        };
        if tick.is_multiple_of(PROBE_EVERY) {
            let n = self.next_probe;
            self.next_probe += 1;
            if n.is_multiple_of(2) {
                // An endpoint moves to a new address: every node's proxy table.
                let ip = Self::unique_ip("10.250", n);
                register(&ip);
                self.patch_slice(n as usize, |endpoints| {
                    endpoints[0]["addresses"] = json!([ip]);
                })
                .await;
            } else {
                // A new pod gets its address: both anchors' peer sets.
                let ip = Self::unique_ip("10.251", n);
                let name = format!("probe-{n}");
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), "soak");
                let pod: Pod =
                    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "soak"},
                    "spec": {"nodeName": "node-9", "containers": [{"name": "c"}]}}))
                    .expect("pod");
                pods.create(&PostParams::default(), &pod)
                    .await
                    .expect("creating a probe pod");
                register(&ip);
                let status =
                    json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .expect("addressing a probe pod");
                // Keep about 20 probe pods: the oldest goes.
                if n >= 41 {
                    let _ = pods
                        .delete(&format!("probe-{}", n - 40), &Default::default())
                        .await;
                }
            }
            return;
        }
        match tick % 3 {
            0 => {
                // A pod changes app: policies select it or stop to.
                let i = (tick as usize / 3) % self.pods;
                let app = if (tick / 3 / self.pods as u64).is_multiple_of(2) {
                    (i + 1) % 50
                } else {
                    i % 50
                };
                let pods: Api<Pod> =
                    Api::namespaced(self.client.clone(), &format!("ns-{}", i % self.namespaces));
                let patch = json!({"metadata": {"labels": {"app": format!("app-{app}")}}});
                pods.patch(
                    &format!("pod-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .expect("relabelling a pod");
            }
            1 => {
                // An endpoint turns ready or not ready.
                self.patch_slice(tick as usize / 3, |endpoints| {
                    let ready = &mut endpoints[1]["conditions"]["ready"];
                    *ready = json!(!ready.as_bool().unwrap_or(true));
                })
                .await;
            }
            _ => {
                // A pod comes (the next tick of this kind gives it its address) or goes.
                let n = self.churn;
                self.churn += 1;
                let slot = n / 2;
                let namespace = format!("ns-{}", slot as usize % self.namespaces);
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                let name = format!("churn-{slot}");
                if n.is_multiple_of(2) {
                    if slot >= 100 {
                        let old = slot - 100;
                        let namespace = format!("ns-{}", old as usize % self.namespaces);
                        let _ = Api::<Pod>::namespaced(self.client.clone(), &namespace)
                            .delete(&format!("churn-{old}"), &Default::default())
                            .await;
                    }
                    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace,
                            "labels": {"app": format!("app-{}", slot % 50), "tier": "web"}},
                        "spec": {"nodeName": format!("node-{}", slot % 10), "containers": [{"name": "c"}]}}))
                    .expect("pod");
                    pods.create(&PostParams::default(), &pod)
                        .await
                        .expect("creating a pod");
                } else {
                    let ip = Self::unique_ip("10.253", slot % 50_000);
                    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
                    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await
                        .expect("addressing a pod");
                }
            }
        }
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn soak(settings: &Settings, nodes: &[Netns; 2], dir: &Path) {
    let seed = seed(settings.size);
    let server = ApiServer::start(ApiServerConfig {
        listen: "0.0.0.0:0".parse().expect("address"),
        history: 100_000,
        bookmark_interval: Duration::from_secs(10),
        seed: seed.clone(),
    })
    .await
    .expect("API server");
    let port = server.addr().port();
    let mut kubeconfigs = Vec::new();
    for (node, ip) in ["127.0.0.1", NODE_IPS[0]].iter().enumerate() {
        let path = dir.join(format!("kubeconfig-{node}"));
        write_kubeconfig(&format!("http://{ip}:{port}"), &path).expect("kubeconfig");
        kubeconfigs.push(path);
    }
    let client = kubewire::agent::client_from_kubeconfig(&kubeconfigs[0])
        .await
        .expect("client");
    println!(
        "cluster: {} pods, {} services, {} policies on {} nodes; agents on {}",
        settings.size.pods,
        settings.size.services,
        settings.size.policies,
        settings.size.nodes,
        NODES.join(", ")
    );
    let started = Instant::now();
    let mut agents = Agents {
        children: Vec::new(),
    };
    for (node, netns) in nodes.iter().enumerate() {
        agents
            .children
            .push(start_agent(netns, node, &kubeconfigs[node], dir));
    }
    tokio::task::block_in_place(|| {
        for node in 0..2 {
            wait_healthy(node, Duration::from_secs(180));
        }
    });
    let healthy = started.elapsed();
    println!("both agents healthy after {:.1}s", healthy.as_secs_f64());
    report::figure("agents_healthy", healthy.as_secs_f64(), "s");
    // Let the first syncs settle before the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let probes: Probes = Arc::default();
    let lost = Arc::new(AtomicU64::new(0));
    let mut monitors: Vec<Child> = nodes
        .iter()
        .enumerate()
        .map(|(node, netns)| monitor(&netns.name, node, probes.clone(), lost.clone()))
        .collect();
    let pids: Vec<u32> = agents.children.iter().map(Child::id).collect();
    let start_rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let peak = Arc::new(Mutex::new(start_rss.clone()));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pids) = (peak.clone(), sampling.clone(), pids.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let mut peak = peak.lock().unwrap_or_else(|e| e.into_inner());
                for (i, pid) in pids.iter().enumerate() {
                    peak[i] = peak[i].max(rss_kib(*pid));
                }
                drop(peak);
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let mut slices: HashMap<(String, String), Value> = HashMap::new();
    for object in seed.iter().filter(|o| o.kind == Kind::EndpointSlice) {
        let meta = &object.value["metadata"];
        let key = (
            meta["namespace"].as_str().unwrap_or_default().to_string(),
            meta["name"].as_str().unwrap_or_default().to_string(),
        );
        slices.insert(key, object.value.clone());
    }
    let mut slice_names: Vec<(String, String)> = slices.keys().cloned().collect();
    slice_names.sort();
    let mut writer = Writer {
        client,
        slices,
        slice_names,
        pods: settings.size.pods,
        namespaces: settings.size.namespaces,
        next_probe: 0,
        churn: 0,
    };
    let period = Duration::from_secs(1) / settings.rate as u32;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let churn_started = Instant::now();
    let mut changes = 0u64;
    while churn_started.elapsed() < settings.duration {
        ticker.tick().await;
        writer.change(changes, &probes).await;
        changes += 1;
    }
    let churned = churn_started.elapsed();
    let rate = changes as f64 / churned.as_secs_f64();
    println!(
        "{changes} changes in {:.1}s: {rate:.1}/s",
        churned.as_secs_f64()
    );
    report::figure("changes", changes as f64, "changes");
    report::figure("change_rate", rate, "1/s");

    // Every probe reflected, or 15 s.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(15) {
        let all = probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .all(|p| p.seen.iter().all(Option::is_some));
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let end_rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let peak = peak.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (i, node) in NODES.iter().enumerate() {
        println!(
            "{node} agent RSS: start {} MiB, peak {} MiB, end {} MiB",
            start_rss[i] / 1024,
            peak[i] / 1024,
            end_rss[i] / 1024
        );
        report::figure(
            &format!("rss_start.{node}"),
            start_rss[i] as f64 / 1024.0,
            "MiB",
        );
        report::figure(&format!("rss_peak.{node}"), peak[i] as f64 / 1024.0, "MiB");
        report::figure(
            &format!("rss_end.{node}"),
            end_rss[i] as f64 / 1024.0,
            "MiB",
        );
    }

    let probes = probes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut missing = 0;
    let mut all = Vec::new();
    for (i, node) in NODES.iter().enumerate() {
        let mut latencies: Vec<f64> = probes
            .values()
            .filter_map(|p| Some((p.seen[i]? - p.written).as_secs_f64() * 1000.0))
            .collect();
        missing += probes.len() - latencies.len();
        latencies.sort_by(f64::total_cmp);
        println!(
            "{node}: API write to kernel, {} probes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0.0)
        );
        all.extend(latencies);
    }
    all.sort_by(f64::total_cmp);
    report::figure("write_to_kernel_p50", percentile(&all, 0.5), "ms");
    report::figure("write_to_kernel_p99", percentile(&all, 0.99), "ms");
    report::figure(
        "write_to_kernel_max",
        all.last().copied().unwrap_or(0.0),
        "ms",
    );
    report::figure("probes_not_seen_by_monitor", missing as f64, "probes");
    let lost = lost.load(Ordering::Relaxed);
    report::figure("nft_monitor_warnings", lost as f64, "lines");
    if lost > 0 {
        println!(
            "`nft monitor` printed {lost} warnings (events it could not print): a late probe may be one it missed"
        );
    }
    if missing > 0 {
        println!(
            "{missing} probe writes were not seen by `nft monitor` (the final comparison checks the kernel has every one)"
        );
    }

    let differences = tokio::task::block_in_place(|| drift(&server, nodes, dir));
    report::figure("final_drift_differences", differences as f64, "differences");
    for monitor in &mut monitors {
        let _ = monitor.kill();
        let _ = monitor.wait();
    }
    drop(agents);
    server.shutdown().await;
    assert_eq!(differences, 0, "the kernel differs from the desired state");
}

/// The API server's objects as manifests YAML.
fn dump(server: &ApiServer, path: &Path) {
    let mut out = String::new();
    for kind in Kind::ALL {
        let objects = server
            .read(|state| state.list_at(kind, None, None, state.resource_version()))
            .unwrap_or_default();
        for (_, object) in objects {
            let mut object = (*object).clone();
            object["apiVersion"] = json!(kind.api_version());
            object["kind"] = json!(kind.as_str());
            out.push_str("---\n");
            out.push_str(&object.to_string());
            out.push('\n');
        }
    }
    std::fs::write(path, out).expect("writing the manifests");
}

/// Each node's firewall and proxy tables against the offline plans from the final
/// objects, both as the kernel lists them; the number of differences (retried for
/// up to 20 s while the agents catch up).
fn drift(server: &ApiServer, nodes: &[Netns; 2], dir: &Path) -> usize {
    let manifests = dir.join("final");
    std::fs::create_dir_all(&manifests).expect("dir");
    dump(server, &manifests.join("cluster.yaml"));
    let manifests = manifests.display().to_string();
    let started = Instant::now();
    let mut total = 0;
    for (i, node) in NODES.iter().enumerate() {
        let plans = [
            (
                "kubewire",
                vec![
                    "firewall",
                    "plan",
                    "--manifests",
                    &manifests,
                    "--node",
                    node,
                ],
            ),
            (
                "kubewire-proxy",
                vec![
                    "proxy",
                    "plan",
                    "--manifests",
                    &manifests,
                    "--node",
                    node,
                    "--backend",
                    "nftables",
                ],
            ),
        ];
        for (table, args) in plans {
            let output = Command::new(crate::common::kubewire_bin())
                .args(&args)
                .output()
                .expect("kubewire plan");
            assert!(
                output.status.success(),
                "kubewire {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            let scratch = Netns::new("kwsoakplan");
            scratch.nft(&String::from_utf8_lossy(&output.stdout));
            let list = |netns: &str| -> BTreeMap<String, Value> {
                let listing = kubewire_lab::harness::sh(
                    "ip",
                    &[
                        "netns", "exec", netns, "nft", "-j", "list", "table", "inet", table,
                    ],
                );
                normalize(&serde_json::from_str(&listing).unwrap_or(Value::Null))
            };
            let expected = list(&scratch.name);
            assert!(
                sensitive(&expected),
                "the plan for {node} lists no element to compare"
            );
            let differences = loop {
                let observed = list(&nodes[i].name);
                let differences = compare(&observed, &expected);
                if differences.is_empty() || started.elapsed() > Duration::from_secs(20) {
                    break differences;
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            println!(
                "{node} {table}: {} differences from `kubewire {} {}`",
                differences.len(),
                args[0],
                args[1]
            );
            for line in differences.iter().take(20) {
                println!("    {line}");
            }
            total += differences.len();
        }
    }
    total
}

/// A `nft -j list table` listing as comparable items: by chain, rule (its chain and
/// place), set, map or counter; without handles, counter values and the
/// `#fingerprint` the agent adds to comments (the offline plan carries none); the
/// elements sorted.
fn normalize(listing: &Value) -> BTreeMap<String, Value> {
    fn clean(value: &mut Value) {
        match value {
            Value::Object(object) => {
                object.remove("handle");
                if let Some(counter) = object.get_mut("counter")
                    && let Some(counter) = counter.as_object_mut()
                {
                    for field in ["packets", "bytes"] {
                        if counter.contains_key(field) {
                            counter.insert(field.into(), json!(0));
                        }
                    }
                }
                if let Some(Value::String(comment)) = object.get("comment") {
                    let kept = match comment.rsplit_once('#') {
                        Some((before, tag))
                            if tag.len() == 8 && tag.chars().all(|c| c.is_ascii_hexdigit()) =>
                        {
                            before.trim_end().to_string()
                        }
                        _ => comment.clone(),
                    };
                    if kept.is_empty() {
                        object.remove("comment");
                    } else {
                        object.insert("comment".into(), json!(kept));
                    }
                }
                if let Some(Value::Array(elements)) = object.get_mut("elem") {
                    elements.sort_by_key(|e| e.to_string());
                }
                object.values_mut().for_each(clean);
            }
            Value::Array(items) => items.iter_mut().for_each(clean),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    let mut places: HashMap<String, usize> = HashMap::new();
    for item in listing["nftables"].as_array().into_iter().flatten() {
        let Some((what, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        if what == "metainfo" || what == "table" {
            continue;
        }
        let mut body = body.clone();
        clean(&mut body);
        let key = if what == "rule" {
            let chain = body["chain"].as_str().unwrap_or_default().to_string();
            let place = places.entry(chain.clone()).or_default();
            *place += 1;
            format!("rule {chain} #{place}")
        } else {
            format!("{what} {}", body["name"].as_str().unwrap_or_default())
        };
        out.insert(key, body);
    }
    out
}

/// What differs between the agent's table and the planned one, one line per item.
fn compare(observed: &BTreeMap<String, Value>, expected: &BTreeMap<String, Value>) -> Vec<String> {
    let short = |v: &Value| v.to_string().chars().take(300).collect::<String>();
    let mut out = Vec::new();
    for (key, ours) in expected {
        match observed.get(key) {
            None => out.push(format!("{key} is missing: {}", short(ours))),
            Some(theirs) if theirs != ours => {
                out.push(format!("{key}: {} planned {}", short(theirs), short(ours)))
            }
            Some(_) => {}
        }
    }
    for (key, theirs) in observed {
        if !expected.contains_key(key) {
            out.push(format!("unexpected {key}: {}", short(theirs)));
        }
    }
    out
}

/// Whether [`compare`] sees one element fewer in `table` (so an empty comparison
/// means something).
fn sensitive(table: &BTreeMap<String, Value>) -> bool {
    let mut fewer = table.clone();
    let Some(elements) = fewer.values_mut().find_map(|item| {
        item.get_mut("elem")?
            .as_array_mut()
            .filter(|e| !e.is_empty())
    }) else {
        return false;
    };
    elements.pop();
    !compare(&fewer, table).is_empty()
}

//! `kubewire run` as a process against the embedded API server: start-up, the shared
//! cache feeding a controller, /healthz and /metrics, a clear failure when the cache
//! cannot sync, and (ignored, run by hand) the agent's memory at scale.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubewire::cache::manifests;
use kubewire_lab::apiserver::{ApiServer, ApiServerConfig, write_kubeconfig};
use kubewire_lab::synthetic::{ClusterSize, generate};

const NODES: &str = "\
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 192.0.2.11}]}
";

async fn start_server(seed: Vec<manifests::ManifestObject>) -> ApiServer {
    ApiServer::start(ApiServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        history: 10_000,
        bookmark_interval: Duration::from_secs(1),
        seed,
    })
    .await
    .unwrap()
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A plain HTTP/1.0 GET: (status code, body); None while nothing listens.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: kubewire\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

struct Agent {
    child: Child,
}

impl Agent {
    fn start(
        kubeconfig: &std::path::Path,
        cni_dir: &std::path::Path,
        addr: SocketAddr,
        extra: &[&str],
    ) -> Agent {
        let child = Command::new(common::kubewire_bin())
            .args([
                "run",
                "--node-name",
                "n1",
                "--run-router=false",
                "--run-firewall=false",
                "--mtu",
                "1400",
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cni-conf-dir")
            .arg(cni_dir)
            .args([
                "--metrics-addr",
                &addr.to_string(),
                "--health-addr",
                &addr.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Agent { child }
    }

    fn wait_healthy(&mut self, addr: SocketAddr, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, body)) = http_get(addr, "/healthz") {
                return body;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut stderr = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                panic!("agent exited ({status}):\n{stderr}");
            }
            assert!(
                Instant::now() < deadline,
                "agent not healthy within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_syncs_serves_health_and_metrics_and_follows_changes() {
    let seed = manifests::parse_documents(std::path::Path::new("nodes.yaml"), NODES).unwrap();
    let server = start_server(seed).await;
    let dir = common::temp_dir();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&server.url(), &kubeconfig).unwrap();
    let cni_dir = dir.path().join("cni");
    let addr = free_port();
    let mut agent = Agent::start(&kubeconfig, &cni_dir, addr, &[]);

    let health = tokio::task::block_in_place(|| agent.wait_healthy(addr, Duration::from_secs(30)));
    assert!(health.contains("cni"), "{health}");
    let conflist = std::fs::read_to_string(cni_dir.join("05-kubewire.conflist")).unwrap();
    assert!(conflist.contains("10.244.1.0/24"), "{conflist}");

    let (status, metrics) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    for expected in [
        "kubewire_build_info{version=",
        "kubewire_cache_objects{kind=\"Node\"} 1",
        "kubewire_controller_sync_duration_seconds_count{controller=\"cni\"}",
    ] {
        assert!(metrics.contains(expected), "no {expected} in\n{metrics}");
    }

    // A change of the Node's pod CIDR reaches the controller through the cache.
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let patch = serde_json::json!({"spec": {"podCIDRs": ["10.244.9.0/24"]}});
    nodes
        .patch(
            "n1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let conflist = std::fs::read_to_string(cni_dir.join("05-kubewire.conflist")).unwrap();
        if conflist.contains("10.244.9.0/24") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "conflist never followed the Node: {conflist}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// `--master` replaces the kubeconfig's address (here one where nothing listens), as
/// the kube-proxy-replacement variant needs: the agent syncs through the real one.
#[tokio::test(flavor = "multi_thread")]
async fn master_replaces_the_kubeconfig_address() {
    let seed = manifests::parse_documents(std::path::Path::new("nodes.yaml"), NODES).unwrap();
    let server = start_server(seed).await;
    let dir = common::temp_dir();
    let kubeconfig = dir.path().join("kubeconfig");
    let unreachable = free_port();
    write_kubeconfig(&format!("http://{unreachable}"), &kubeconfig).unwrap();
    let cni_dir = dir.path().join("cni");
    let addr = free_port();
    let master = server.url();
    let mut agent = Agent::start(&kubeconfig, &cni_dir, addr, &["--master", &master]);
    let health = tokio::task::block_in_place(|| agent.wait_healthy(addr, Duration::from_secs(30)));
    assert!(health.contains("cni"), "{health}");
    let conflist = std::fs::read_to_string(cni_dir.join("05-kubewire.conflist")).unwrap();
    assert!(conflist.contains("10.244.1.0/24"), "{conflist}");
}

#[test]
fn start_up_fails_naming_the_kinds_that_never_synced() {
    let dir = common::temp_dir();
    let kubeconfig = dir.path().join("kubeconfig");
    // Held, never accepted: every list hangs, and no other test can take this port
    // (a freed port could be reused by a concurrent test's API server, which would
    // let the agent sync and run forever).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    write_kubeconfig(
        &format!("http://{}", silent.local_addr().unwrap()),
        &kubeconfig,
    )
    .unwrap();
    let mut command = Command::new(common::kubewire_bin());
    command
        .args([
            "cni",
            "run",
            "--node-name",
            "n1",
            "--cache-sync-timeout",
            "1s",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
        ]);
    let output = common::output_within(command, Duration::from_secs(30));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("did not sync within 1s: no complete list of Node")
            && !stderr.contains("Pod"),
        "{stderr}"
    );
    drop(silent);
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Benchmark (prints, asserts nothing about size): resident memory of an agent whose
/// cache holds the issue-2 cluster (5,000 Pods, 1,000 Services, 1,000 EndpointSlices,
/// 500 NetworkPolicies) next to the same agent over an empty cluster.
/// `cargo test --release --test agent -- --ignored --nocapture cache_memory`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn cache_memory_at_scale() {
    let mut results = Vec::new();
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
        ("issue-2 size", ClusterSize::BENCH),
    ] {
        let mut seed = generate(size);
        // The agent's node, with a CIDR the CNI controller can use.
        seed.retain(|o| {
            o.kind != kubewire::cache::Kind::Node || o.value["metadata"]["name"] != "n1"
        });
        seed.extend(manifests::parse_documents(std::path::Path::new("n1.yaml"), NODES).unwrap());
        let server = start_server(seed).await;
        let dir = common::temp_dir();
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&server.url(), &kubeconfig).unwrap();
        let addr = free_port();
        let started = Instant::now();
        let mut agent = Agent::start(
            &kubeconfig,
            &dir.path().join("cni"),
            addr,
            &["--log-level", "warn"],
        );
        tokio::task::block_in_place(|| agent.wait_healthy(addr, Duration::from_secs(120)));
        let synced = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_, metrics) = http_get(addr, "/metrics").unwrap();
        let pods = metrics
            .lines()
            .find(|l| l.starts_with("kubewire_cache_objects{kind=\"Pod\"}"))
            .unwrap_or("")
            .to_string();
        results.push(format!(
            "{label}: RSS {} MiB, healthy after {:.2}s ({pods})",
            resident_kib(agent.child.id()) / 1024,
            synced.as_secs_f64()
        ));
        drop(agent);
        server.shutdown().await;
    }
    for line in results {
        println!("{line}");
    }
}

/// A cluster before Kubernetes 1.33 serves no ServiceCIDR: the agent must not wait for
/// it. Against an API server without the kind, the proxy-only agent becomes healthy,
/// programs the `--service-cluster-ip-range` range, and names the missing kind once.
#[test]
fn without_the_service_cidr_kind_the_proxy_uses_the_flag_range() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.99.0.10, ports: [{port: 80, protocol: TCP}]}
";
    let seed = manifests::parse_documents(
        std::path::Path::new("cluster.yaml"),
        &format!("{NODES}---\n{SERVICE}"),
    )
    .unwrap();
    let ns = common::Netns::new("kwcidr");
    let dir = common::temp_dir();
    let (stderr, table) = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut state = kubewire_lab::apiserver::ApiState::seeded(seed, 10_000).unwrap();
        state.disable_kinds(&[kubewire::cache::Kind::ServiceCIDR]);
        let config = ApiServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            history: 10_000,
            bookmark_interval: Duration::from_secs(1),
            seed: Vec::new(),
        };
        let server = runtime
            .block_on(ApiServer::start_with_state(config, state))
            .unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&server.url(), &kubeconfig).unwrap();
        let addr = free_port();
        let mut agent = Agent::start(
            &kubeconfig,
            &dir.path().join("cni"),
            addr,
            &[
                "--run-cni=false",
                "--run-service-proxy=true",
                "--service-cluster-ip-range",
                "10.99.0.0/16",
            ],
        );
        let health = agent.wait_healthy(addr, Duration::from_secs(30));
        assert_eq!(health.trim(), "ok: proxy");
        let table = common::sh("nft", &["list", "table", "inet", "kubewire-proxy"]);
        let _ = agent.child.kill();
        let mut stderr = String::new();
        if let Some(mut pipe) = agent.child.stderr.take() {
            pipe.read_to_string(&mut stderr).unwrap();
        }
        runtime.block_on(server.shutdown());
        (stderr, table)
    });
    assert!(table.contains("10.99.0.0/16"), "{table}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("does not serve this kind"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("ServiceCIDR"), "{}", warnings[0]);
}

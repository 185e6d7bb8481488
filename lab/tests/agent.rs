//! `kubewire run` as a process against the embedded API server: start-up, the shared
//! cache feeding a controller, /healthz and /metrics, a clear failure when the cache
//! cannot sync, and the proxy without the ServiceCIDR kind. (The agent's memory at
//! scale: the `memory` benchmark, lab/benches/memory.rs.)

mod agent_support;
mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::{Agent, NODES, free_port, http_get, start_server};
use kubewire::cache::manifests;
use kubewire_lab::apiserver::{ApiServer, ApiServerConfig, write_kubeconfig};

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

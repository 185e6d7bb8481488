//! `kill -9` and restart of a real agent (root; in a network namespace, against the
//! embedded API server): the restarted agent reads the firewall's and the proxy's
//! tables and applies only the difference (none), so no table is deleted and every
//! handle (the table's own included, which a re-created table would not keep) and
//! counter is as before.

mod agent_support;
mod common;

use std::time::{Duration, Instant};

use agent_support::{Agent, NODES, free_port, http_get};
use kubewire::cache::manifests;
use kubewire_lab::apiserver::{ApiServer, ApiServerConfig, write_kubeconfig};

const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {kubernetes.io/metadata.name: default}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {}}], ports: [{port: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.99.0.10, ports: [{port: 80, targetPort: 8080, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.10], conditions: {ready: true}}]
ports: [{port: 8080, protocol: TCP}]
";

/// Both tables with every handle and counter (`nft -a -j list table`).
fn tables() -> String {
    ["kubewire", "kubewire-proxy"]
        .iter()
        .map(|t| common::sh("nft", &["-a", "-j", "list", "table", "inet", t]))
        .collect()
}

#[test]
fn a_killed_and_restarted_agent_keeps_its_tables_handles_and_counters() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let seed = manifests::parse_documents(
        std::path::Path::new("cluster.yaml"),
        &format!("{NODES}---\n{CLUSTER}"),
    )
    .unwrap();
    let ns = common::Netns::new("kwrestart");
    let dir = common::temp_dir();
    ns.run(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = ApiServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            history: 10_000,
            bookmark_interval: Duration::from_secs(1),
            seed,
        };
        let server = runtime.block_on(ApiServer::start(config)).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&server.url(), &kubeconfig).unwrap();
        let args = [
            "--run-cni=false",
            "--run-router=false",
            "--run-service-proxy=true",
            "--proxy-backend=nftables",
            "--service-cluster-ip-range",
            "10.99.0.0/16",
        ];
        let start = || {
            let addr = free_port();
            let mut agent = Agent::spawn(&kubeconfig, &dir.path().join("cni"), addr, &args);
            let health = agent.wait_healthy(addr, Duration::from_secs(30));
            assert!(
                health.contains("firewall") && health.contains("proxy"),
                "{health}"
            );
            (agent, addr)
        };
        let (mut first, _) = start();
        let before = tables();
        assert!(before.contains("10.244.1.10"), "{before}");
        first.child.kill().unwrap(); // SIGKILL: nothing of the agent runs after this
        first.child.wait().unwrap();

        let (second, addr) = start();
        // Healthy means each controller synced once; its nft metrics say so too.
        let deadline = Instant::now() + Duration::from_secs(10);
        let metrics = loop {
            let (_, metrics) = http_get(addr, "/metrics").unwrap();
            if metrics
                .contains("kubewire_nft_last_sync_timestamp_seconds{table=\"kubewire-proxy\"}")
                && metrics.contains("kubewire_nft_last_sync_timestamp_seconds{table=\"kubewire\"}")
            {
                break metrics;
            }
            assert!(Instant::now() < deadline, "{metrics}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            !metrics.contains("kubewire_nft_transactions_total{"),
            "the restarted agent changed a table:\n{metrics}"
        );
        assert_eq!(tables(), before, "a table, handle or counter changed");
        drop(second);
        runtime.block_on(server.shutdown());
    });
}

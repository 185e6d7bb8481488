//! Faults around the agent, as integration tests: the API server hung (TCP open, no
//! answers) for a while — reported within 30 s, the agent converges once it answers —
//! and hung for longer than its watch history (the agent relists after 410 Gone and
//! converges); `kubewire cleanup` leaving other owners' nftables tables as they were.
//!
//! The hung server is the embedded one, frozen in place ([`ApiServer::freeze`]).
//! `KUBEWIRE_FAULT_FREEZE` (seconds, default 35) sets how long the first test keeps
//! it frozen; the 60 s is `KUBEWIRE_FAULT_FREEZE=60` (README: slower suite).

mod agent_support;
mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use agent_support::{Agent, NODES, free_port, http_get, start_server};
use kubewire::cache::Kind;
use kubewire::cache::manifests;
use kubewire_lab::apiserver::{ApiServer, write_kubeconfig};
use serde_json::json;

/// How long the hung-server test keeps the server frozen.
fn freeze_for() -> Duration {
    let seconds = std::env::var("KUBEWIRE_FAULT_FREEZE")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(35);
    Duration::from_secs(seconds)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

fn scrape(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Writes node n1 with `cidr` straight into the store (as another client would).
fn set_pod_cidr(server: &ApiServer, cidr: &str) {
    server.write(|state| {
        let node = json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]}});
        state.put(Kind::Node, node).unwrap();
    });
}

/// Waits until the agent's CNI conflist names `cidr`.
fn wait_conflist(cni_dir: &std::path::Path, cidr: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let conflist =
            std::fs::read_to_string(cni_dir.join("05-kubewire.conflist")).unwrap_or_default();
        if conflist.contains(cidr) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the agent never converged to {cidr}: {conflist}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stderr_of(mut agent: Agent) -> String {
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let mut text = String::new();
    if let Some(mut stderr) = agent.child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    text
}

async fn agent_against(server: &ApiServer) -> (Agent, std::net::SocketAddr, tempfile::TempDir) {
    let dir = common::temp_dir();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&server.url(), &kubeconfig).unwrap();
    let addr = free_port();
    let mut agent = Agent::start(&kubeconfig, &dir.path().join("cni"), addr, &[]);
    tokio::task::block_in_place(|| agent.wait_healthy(addr, Duration::from_secs(30)));
    (agent, addr, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_api_server_is_reported_within_30s_and_the_agent_converges_after() {
    let seed = manifests::parse_documents(std::path::Path::new("nodes.yaml"), NODES).unwrap();
    let server = start_server(seed).await;
    let (agent, addr, dir) = agent_against(&server).await;
    let cni_dir = dir.path().join("cni");
    tokio::task::block_in_place(|| {
        common::wait_for("kubewire_apiserver_up 1", || {
            (metric(&scrape(addr), "kubewire_apiserver_up") == Some(1.0)).then_some(())
        })
    });

    server.freeze();
    let frozen = Instant::now();
    // A change the agent cannot see while the server hangs.
    set_pod_cidr(&server, "10.244.7.0/24");
    let detected = tokio::task::block_in_place(|| {
        loop {
            if metric(&scrape(addr), "kubewire_apiserver_up") == Some(0.0) {
                break frozen.elapsed();
            }
            assert!(
                frozen.elapsed() < Duration::from_secs(30),
                "a hung API server was not reported within 30 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    println!("hung API server reported after {detected:?}");
    let (status, body) = http_get(addr, "/healthz").unwrap();
    assert_eq!(
        status, 200,
        "a hung API server does not fail /healthz: {body}"
    );
    assert!(body.contains("apiserver: not answering"), "{body}");
    let metrics = scrape(addr);
    assert!(
        metric(&metrics, "kubewire_apiserver_probe_failures_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );

    tokio::time::sleep(freeze_for().saturating_sub(frozen.elapsed())).await;
    server.thaw();
    let thawed = Instant::now();
    let converged = tokio::task::block_in_place(|| {
        wait_conflist(&cni_dir, "10.244.7.0/24", Duration::from_secs(20))
    });
    println!(
        "frozen {:?}; converged {converged:?} after the thaw",
        thawed - frozen
    );
    tokio::task::block_in_place(|| {
        common::wait_for("kubewire_apiserver_up 1 again", || {
            (metric(&scrape(addr), "kubewire_apiserver_up") == Some(1.0)).then_some(())
        })
    });
    let (_, body) = http_get(addr, "/healthz").unwrap();
    assert!(!body.contains("apiserver"), "{body}");
    let log = stderr_of(agent);
    let stopped = log.matches("the API server is not answering").count();
    assert_eq!(stopped, 1, "one log line per outage:\n{log}");
    assert!(log.contains("the API server answers again"), "{log}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_past_the_watch_history_the_agent_relists_after_410_and_converges() {
    let seed = manifests::parse_documents(std::path::Path::new("nodes.yaml"), NODES).unwrap();
    let server = start_server(seed).await;
    let (agent, addr, dir) = agent_against(&server).await;
    let cni_dir = dir.path().join("cni");

    server.freeze();
    for i in 0..20 {
        set_pod_cidr(&server, &format!("10.244.{}.0/24", 100 + i));
    }
    // Only the last change is kept: the agent's watches are behind the history.
    server.compact(1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.thaw();
    let converged = tokio::task::block_in_place(|| {
        wait_conflist(&cni_dir, "10.244.119.0/24", Duration::from_secs(30))
    });
    println!("converged {converged:?} after the thaw, through a relist");
    let metrics = scrape(addr);
    assert!(
        metric(&metrics, "kubewire_watch_restarts_total{kind=\"Node\"}").unwrap_or(0.0) >= 1.0,
        "the Node watch got its 410 and restarted:\n{metrics}"
    );
    let log = stderr_of(agent);
    assert!(log.contains("watch failed"), "{log}");
    server.shutdown().await;
}

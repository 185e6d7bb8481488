//! What the agent tests share with the `memory` benchmark: node n1, the embedded API
//! server, plain HTTP to /healthz and /metrics, and `kubewire run` as a process.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubewire::cache::manifests;
use kubewire_lab::apiserver::{ApiServer, ApiServerConfig};

/// The agent's node.
pub const NODES: &str = "\
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 192.0.2.11}]}
";

pub async fn start_server(seed: Vec<manifests::ManifestObject>) -> ApiServer {
    ApiServer::start(ApiServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        history: 10_000,
        bookmark_interval: Duration::from_secs(1),
        seed,
    })
    .await
    .unwrap()
}

pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A plain HTTP/1.0 GET: (status code, body); None while nothing listens.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
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

/// `kubewire run` for node n1, killed when dropped.
pub struct Agent {
    pub child: Child,
}

impl Agent {
    /// The agent with the CNI controller only (router and firewall off; the proxy is
    /// off by default) and `extra` flags.
    pub fn start(
        kubeconfig: &std::path::Path,
        cni_dir: &std::path::Path,
        addr: SocketAddr,
        extra: &[&str],
    ) -> Agent {
        let cni_only = ["--run-router=false", "--run-firewall=false"];
        Agent::spawn(kubeconfig, cni_dir, addr, &[&cni_only, extra].concat())
    }

    /// The agent with `args` after the flags every test gives (node, MTU, kubeconfig,
    /// CNI config dir, metrics and health address): each controller runs unless
    /// `args` turn it off (the proxy only when they turn it on).
    pub fn spawn(
        kubeconfig: &std::path::Path,
        cni_dir: &std::path::Path,
        addr: SocketAddr,
        args: &[&str],
    ) -> Agent {
        let child = Command::new(crate::common::kubewire_bin())
            .args(["run", "--node-name", "n1", "--mtu", "1400"])
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
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Agent { child }
    }

    pub fn wait_healthy(&mut self, addr: SocketAddr, timeout: Duration) -> String {
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

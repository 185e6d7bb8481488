//! `kubewire lab control-plane` (hidden): the lab's API server and its
//! [`kubelet`](super::kubelet), run in the background by `lab up`.
//!
//! How the API server is reached. The server itself listens on 127.0.0.1 (a free
//! port) in the **host** namespace, so `kubectl --kubeconfig $(kubewire lab
//! kubeconfig)` works from the host with no interface added there. Agents live in
//! node namespaces, which cannot reach the host's loopback; so this same process also
//! opens a listener *inside the fabric netns* on every address, port
//! [`FABRIC_APISERVER_PORT`] (a socket belongs to the namespace it was created in),
//! and relays each connection to the server. Each node's kubeconfig points at its
//! underlay gateway (`http://<gateway>:6443`), which every node reaches on-link. The
//! host's namespace thus gets no interface, route or address at all.
//!
//! With an external API server (`lab up --apiserver-kubeconfig`, see
//! [`super::external`]) no server is started: the relay dials that server, the host
//! kubeconfig is `up`'s copy of the given one, and each node's kubeconfig names the
//! server with the agents' ServiceAccount token: a server on the host's loopback at
//! the same address, relayed inside each node netns (so its certificate matches);
//! any other through the fabric relay, checked against the server's own name
//! (`tls-server-name`; kube-rs with rustls checks the dialled address instead, so
//! there the certificate must also name the lab's gateways).
//!
//! Writes `<state>/kubeconfig` (host) and `<state>/nodes/<node>/kubeconfig`, then
//! prints `ready` on stdout; runs until SIGTERM. The kubelet, a client of the API
//! server like any other, starts and stops the Pods created and deleted after `lab
//! up` finished; it logs to this process's log (`<state>/apiserver.log`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use super::netns;
use super::state::{LabState, LabStateFile};
use super::topology::FABRIC_APISERVER_PORT;
use super::{agent_identity, agents, external, kubelet};
use crate::apiserver::{ApiServer, ApiServerConfig, write_kubeconfig};
use kubewire::cache::Kind;
use kubewire::cache::manifests::ManifestObject;

pub const SEED_FILE: &str = "seed.json";
/// This process's role in the lab state.
pub const ROLE: &str = "apiserver";
pub const HOST_KUBECONFIG: &str = "kubeconfig";

#[derive(Debug, clap::Args)]
pub struct ControlPlaneArgs {
    /// The lab's state dir (its plan and seed).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Watch history kept by the API server (resourceVersions).
    #[arg(long, default_value_t = 10_000)]
    pub history: usize,
}

/// Writes the seed as a JSON array of objects.
pub fn write_seed(dir: &Path, seed: &[ManifestObject]) -> anyhow::Result<()> {
    let values: Vec<&Value> = seed.iter().map(|o| &o.value).collect();
    let path = dir.join(SEED_FILE);
    std::fs::write(&path, serde_json::to_vec(&values)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_seed(dir: &Path) -> anyhow::Result<Vec<ManifestObject>> {
    let path = dir.join(SEED_FILE);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let values: Vec<Value> =
        serde_json::from_slice(&text).with_context(|| format!("{}", path.display()))?;
    values
        .into_iter()
        .map(|value| {
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .and_then(Kind::from_name)
                .with_context(|| format!("{}: an object without a known kind", path.display()))?;
            Ok(ManifestObject { kind, value })
        })
        .collect()
}

pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    kubewire::telemetry::init_logging("info", kubewire::telemetry::LogFormat::Text);
    let state = LabState::load(&args.state_dir)?
        .with_context(|| format!("no lab state in {}", args.state_dir.display()))?;
    let plan = state.plan()?.clone();
    let host_kubeconfig = state.dir.join(HOST_KUBECONFIG);
    let (server, upstream) = match &state.external {
        None => {
            let server = ApiServer::start(ApiServerConfig {
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                history: args.history,
                bookmark_interval: std::time::Duration::from_secs(30),
                seed: read_seed(&state.dir)?,
            })
            .await
            .context("starting the API server")?;
            write_kubeconfig(&server.url(), &host_kubeconfig)
                .with_context(|| format!("writing {}", host_kubeconfig.display()))?;
            let upstream = server.addr();
            (Some(server), upstream)
        }
        Some(external) => {
            let upstream = tokio::net::lookup_host(&external.upstream)
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .with_context(|| format!("resolving the API server {}", external.upstream))?;
            (None, upstream)
        }
    };
    let token = match &state.external {
        Some(_) => {
            let path = agent_identity::token_path(&state.dir);
            let token = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(token.trim().to_string())
        }
        None => None,
    };
    for node in &plan.nodes {
        let gateway = plan.gateway_of(node).to_string();
        let path = agents::kubeconfig(&state.node_dir(&node.name));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match (&state.external, &token) {
            (Some(external), Some(token)) => {
                let url = external::agent_url(external, &gateway, FABRIC_APISERVER_PORT);
                agent_identity::write_private(
                    &path,
                    &external::agent_kubeconfig(external, &url, token),
                )?;
            }
            _ => {
                let url = format!("http://{gateway}:{FABRIC_APISERVER_PORT}");
                write_kubeconfig(&url, &path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    let listener = netns::run_in(&plan.fabric_netns, || {
        let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, FABRIC_APISERVER_PORT))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .context("listening in the fabric netns")?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    // A server on the host's loopback is relayed from the same address in every
    // node netns (loopback is per namespace), so the agents dial the address its
    // certificate names.
    let mut loopback_relays = Vec::new();
    if let Some(addr) = state.external.as_ref().and_then(|e| e.loopback_upstream()) {
        for node in &plan.nodes {
            let listener = netns::run_in(&node.netns, move || {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .with_context(|| format!("listening on {addr} in {}", node.netns))?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            loopback_relays.push(tokio::spawn(relay(listener, upstream)));
        }
    }
    let client = kubewire::agent::client_from_kubeconfig(&host_kubeconfig).await?;
    let supervisor = tokio::spawn(super::supervise::run(
        LabStateFile::new(&state.dir),
        crate::binaries::agent()?,
    ));
    let kubelet = tokio::spawn(async move {
        if let Err(err) = kubelet::run(LabStateFile::new(&state.dir), client).await {
            tracing::error!(error = %format!("{err:#}"), "the kubelet stopped");
        }
    });
    println!("ready");
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::select! {
        result = relay(listener, upstream) => result?,
        _ = terminated() => {}
    }
    kubelet.abort();
    supervisor.abort();
    for relay in loopback_relays {
        relay.abort();
    }
    if let Some(server) = server {
        server.shutdown().await;
    }
    Ok(())
}

/// Relays every connection accepted in the fabric to the API server.
async fn relay(listener: tokio::net::TcpListener, upstream: SocketAddr) -> anyhow::Result<()> {
    loop {
        let (mut inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

async fn terminated() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

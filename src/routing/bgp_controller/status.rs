//! The running speaker's status, for `kubewire routing peers`: a small HTTP server
//! on `--bgp-status-addr` (loopback by default) answers `GET /bgp/peers` with JSON,
//! and the command reads it with a plain HTTP/1.0 request.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::peers::PeerKind;
use crate::routing::bgp::SpeakerObserver;

/// One neighbour as `routing peers` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub address: IpAddr,
    pub asn: u32,
    /// mesh, reflector-client, reflector, flag or annotation.
    pub kind: String,
    /// The Node, for iBGP peers.
    pub node: Option<String>,
    pub state: String,
    pub uptime_seconds: Option<u64>,
    pub prefixes_received: usize,
    pub prefixes_accepted: usize,
    pub prefixes_advertised: usize,
    pub updates_received: u64,
    pub updates_sent: u64,
    pub flaps: u64,
}

/// What the endpoint serves: the speaker and what the controller last planned.
#[derive(Default, Clone)]
pub struct StatusSource {
    pub observer: Option<SpeakerObserver>,
    pub kinds: BTreeMap<IpAddr, (PeerKind, Option<String>)>,
    pub announced: BTreeMap<IpNet, String>,
}

pub type SharedStatus = Arc<Mutex<StatusSource>>;

pub async fn peer_views(source: &SharedStatus) -> Vec<PeerView> {
    let (observer, kinds) = match source.lock() {
        Ok(s) => (s.observer.clone(), s.kinds.clone()),
        Err(_) => return vec![],
    };
    let Some(observer) = observer else {
        return vec![];
    };
    observer
        .peers()
        .await
        .into_iter()
        .map(|p| {
            let (kind, node) = kinds.get(&p.address).cloned().unzip();
            PeerView {
                address: p.address,
                asn: p.asn,
                kind: kind
                    .and_then(|k| serde_json::to_value(k).ok())
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                node: node.flatten(),
                state: p.state.to_string(),
                uptime_seconds: p.uptime.map(|u| u.as_secs()),
                prefixes_received: p.prefixes_received,
                prefixes_accepted: p.prefixes_accepted,
                prefixes_advertised: p.prefixes_advertised,
                updates_received: p.updates_in,
                updates_sent: p.updates_out,
                flaps: p.flaps,
            }
        })
        .collect()
}

/// Serves `/bgp/peers` and `/bgp/announced` until the task is dropped.
pub async fn serve(addr: SocketAddr, source: SharedStatus) -> anyhow::Result<()> {
    let peers_source = source.clone();
    let router = Router::new()
        .route(
            "/bgp/peers",
            get(move || {
                let source = peers_source.clone();
                async move { axum::Json(peer_views(&source).await) }
            }),
        )
        .route(
            "/bgp/announced",
            get(move || {
                let announced = source
                    .lock()
                    .map(|s| s.announced.clone())
                    .unwrap_or_default();
                async move { axum::Json(announced) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    axum::serve(listener, router).await?;
    Ok(())
}

/// Reads `path` from a running agent's status endpoint.
pub async fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))?
    .with_context(|| {
        format!(
            "connecting to the agent's BGP status endpoint {addr} (is it running with --run-bgp?)"
        )
    })?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{addr}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.") || head.split(' ').nth(1) != Some("200") {
        anyhow::bail!("{addr}{path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// `routing peers` as a table.
pub fn render_peers(peers: &[PeerView]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>10} {:<18} {:<12} {:>9} {:>9} {:>9} {:>10} {:>6}  NODE",
        "PEER", "ASN", "KIND", "STATE", "UPTIME", "RECEIVED", "ACCEPTED", "ADVERTISED", "FLAPS"
    );
    for p in peers {
        let uptime = p.uptime_seconds.map_or("-".to_string(), |s| {
            format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
        });
        let _ = writeln!(
            out,
            "{:<40} {:>10} {:<18} {:<12} {:>9} {:>9} {:>9} {:>10} {:>6}  {}",
            p.address,
            p.asn,
            p.kind,
            p.state,
            uptime,
            p.prefixes_received,
            p.prefixes_accepted,
            p.prefixes_advertised,
            p.flaps,
            p.node.as_deref().unwrap_or("-")
        );
    }
    out
}

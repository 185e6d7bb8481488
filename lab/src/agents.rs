//! One `kubewire run` per lab node, inside the node's netns (`ip netns exec`, so it
//! also sees the node's own /sys): per-node kubeconfig (the API server through the
//! fabric gateway), CNI conf dir `<state>/nodes/<node>/cni`, host-local leases in
//! `<state>/nodes/<node>/ipam` (a node's /var/lib/cni, kept inside the lab), /metrics
//! and /healthz on the node's own 127.0.0.1, every `--agent-arg` appended, output to
//! `<state>/nodes/<node>/agent.log`. Health is read from inside the netns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::netns;
use super::process::{self, ProcessRecord};
use super::state::LabStateFile;
use super::topology::NodePlan;

/// Inside each node netns (loopback is per namespace, so every node uses the same).
pub const HEALTH_ADDR: &str = "127.0.0.1:20244";
pub const METRICS_ADDR: &str = "127.0.0.1:20245";
/// The conflist name `kubewire run` writes (its `--cni-conf-file` default).
pub const CONFLIST: &str = "05-kubewire.conflist";

pub fn kubeconfig(node_dir: &Path) -> PathBuf {
    node_dir.join("kubeconfig")
}

pub fn cni_conf_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("cni")
}

pub fn conflist(node_dir: &Path) -> PathBuf {
    cni_conf_dir(node_dir).join(CONFLIST)
}

/// The lab has no kube-proxy, so its agents run the service proxy too unless the
/// lab's `--agent-arg`s say otherwise (a flag given twice would be refused).
fn default_controllers(agent_args: &[String]) -> Vec<&'static str> {
    let mentions_proxy = agent_args
        .iter()
        .any(|arg| arg.starts_with("--run-service-proxy"));
    if mentions_proxy {
        Vec::new()
    } else {
        vec!["--run-service-proxy=true"]
    }
}

/// Starts the node's agent and records it.
pub fn start(
    state: &LabStateFile,
    node: &NodePlan,
    exe: &Path,
    agent_args: &[String],
) -> anyhow::Result<ProcessRecord> {
    let lab = state.snapshot()?;
    let dir = lab.node_dir(&node.name);
    std::fs::create_dir_all(cni_conf_dir(&dir))
        .with_context(|| format!("creating {}", cni_conf_dir(&dir).display()))?;
    let mut command = netns::command_in(&node.netns, exe);
    command
        .arg("run")
        .arg("--kubeconfig")
        .arg(kubeconfig(&dir))
        .args(["--node-name", &node.name])
        .arg("--cni-conf-dir")
        .arg(cni_conf_dir(&dir))
        .args(["--cni-conf-file", CONFLIST])
        .arg("--cni-ipam-data-dir")
        .arg(dir.join("ipam"))
        .args(["--metrics-addr", METRICS_ADDR, "--health-addr", HEALTH_ADDR])
        .args(default_controllers(agent_args))
        .args(agent_args);
    let role = format!("agent {}", node.name);
    let (record, _child) =
        process::spawn(&lab.name, &role, command, &dir.join("agent.log"), false)?;
    state.update(|s| s.processes.push(record.clone()))?;
    Ok(record)
}

/// Waits until the node's conflist exists; fails early if the agent exits.
pub async fn wait_conflist(
    node_dir: &Path,
    agent: &ProcessRecord,
    timeout: Duration,
) -> anyhow::Result<PathBuf> {
    let path = conflist(node_dir);
    let deadline = Instant::now() + timeout;
    loop {
        if path.exists() {
            return Ok(path);
        }
        check_alive(agent)?;
        if Instant::now() > deadline {
            bail!(
                "{} wrote no CNI config {} within {timeout:?}; its log ends:\n{}",
                agent.role,
                path.display(),
                process::tail(&agent.log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the agent's /healthz answers 200 (every controller synced).
pub async fn wait_healthy(
    node: &NodePlan,
    agent: &ProcessRecord,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_alive(agent)?;
        let last = match http_get(&node.netns, HEALTH_ADDR, "/healthz").await {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => format!("{status}: {}", body.trim()),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
            bail!(
                "{} not healthy within {timeout:?} (/healthz: {last}); its log ends:\n{}",
                agent.role,
                process::tail(&agent.log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check_alive(agent: &ProcessRecord) -> anyhow::Result<()> {
    if !agent.is_alive() {
        bail!(
            "{} exited; its log ends:\n{}",
            agent.role,
            process::tail(&agent.log, 15)
        );
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET from inside `netns`: (status, body).
pub async fn http_get(netns: &str, addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let addr: SocketAddr = addr.parse().context("address")?;
    let socket = netns::run_in_async(netns, || Ok(tokio::net::TcpSocket::new_v4()?)).await?;
    let exchange = async {
        let mut stream = socket.connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .context("timed out")??;
    parse_response(&response).with_context(|| format!("GET http://{addr}{path} in netns {netns}"))
}

fn parse_response(response: &str) -> anyhow::Result<(u16, String)> {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("not an HTTP response")?;
    Ok((status, body.to_string()))
}

/// What one controller of an agent did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerActivity {
    pub controller: String,
    pub syncs: u64,
    pub failed: u64,
}

/// A node's controllers, or why its /metrics could not be read.
pub type NodeActivity = (String, Result<Vec<ControllerActivity>, String>);

/// What each controller of an agent did, from its /metrics.
pub fn controller_activity(metrics: &str) -> Vec<ControllerActivity> {
    let mut activity: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for line in metrics.lines() {
        let (name, rest) = match line.split_once('{') {
            Some(split) => split,
            None => continue,
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(controller) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("controller=\""))
            .and_then(|l| l.strip_suffix('"'))
        else {
            continue;
        };
        let value = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        let Some(value) = value else { continue };
        let entry = activity.entry(controller.to_string()).or_default();
        match name {
            "kubewire_controller_sync_duration_seconds_count" => entry.0 = value as u64,
            "kubewire_controller_sync_errors_total" => entry.1 = value as u64,
            _ => {}
        }
    }
    activity
        .into_iter()
        .map(|(controller, (syncs, failed))| ControllerActivity {
            controller,
            syncs,
            failed,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses() {
        assert_eq!(
            parse_response("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nno\n")
                .unwrap(),
            (503, "no\n".to_string())
        );
        assert!(parse_response("garbage").is_err());
    }

    #[test]
    fn activity_from_openmetrics() {
        let text = "# TYPE kubewire_controller_sync_duration_seconds histogram\n\
            kubewire_controller_sync_duration_seconds_sum{controller=\"cni\"} 0.01\n\
            kubewire_controller_sync_duration_seconds_count{controller=\"cni\"} 3\n\
            kubewire_controller_sync_duration_seconds_bucket{le=\"0.001\",controller=\"cni\"} 1\n\
            kubewire_controller_sync_errors_total{controller=\"routing\"} 2\n\
            kubewire_controller_sync_duration_seconds_count{controller=\"routing\"} 5\n";
        assert_eq!(
            controller_activity(text),
            [
                ControllerActivity {
                    controller: "cni".into(),
                    syncs: 3,
                    failed: 0
                },
                ControllerActivity {
                    controller: "routing".into(),
                    syncs: 5,
                    failed: 2
                }
            ]
        );
    }
}

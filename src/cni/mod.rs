//! The node's CNI configuration: a conflist for `bridge` (on kube-bridge, with
//! `host-local` IPAM over the Node's pod CIDRs) + `portmap` + `loopback`, derived from
//! the Node and kept on disk while the agent runs.
//!
//! [`model`] is the conflist as types, [`compile`] builds it from a snapshot (pure),
//! [`link`] asks the kernel for the node interface's MTU, [`apply`] writes the file
//! atomically and only on change, [`exclusive`] moves other networks' files aside so
//! the runtime picks ours. (The lab crate runs conflists the way a container runtime
//! does.)
//!
//! `loopback` ends the chain instead of living in a separate `99-loopback.conf`:
//! runtimes load only the first config file of the directory, so a separate file is
//! never run by them (CRI runtimes bring `lo` up on their own), while in the chain it
//! is harmless — it ignores `CNI_IFNAME`, brings `lo` up idempotently and passes
//! `prevResult` through unchanged — and makes the conflist complete for a runtime that
//! does not (the lab wires its pods with exactly this conflist).

pub mod apply;
mod args;
pub mod cmd;
pub mod compile;
pub mod exclusive;
pub mod link;
pub mod model;

pub use args::{CniArgs, CniConfig};

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;

use crate::cache::{Kind, Snapshot};
use crate::runtime::{Controller, SyncReason, Synced};
use crate::telemetry::Metrics;
use apply::WriteOutcome;

/// Keeps this node's conflist on disk in step with its Node.
pub struct CniController {
    node: String,
    config: std::sync::Arc<CniConfig>,
    writes: Counter,
}

impl CniController {
    pub fn new(node: String, config: CniConfig, metrics: &Metrics) -> Self {
        let writes = Counter::<u64>::default();
        metrics.register(
            "kubewire_cni_config_writes",
            "Times the CNI conflist was (re)written because its content changed",
            writes.clone(),
        );
        Self {
            node,
            config: std::sync::Arc::new(config),
            writes,
        }
    }
}

impl Controller for CniController {
    fn name(&self) -> &'static str {
        "cni"
    }

    fn kinds(&self) -> &'static [Kind] {
        &[Kind::Node]
    }

    async fn sync(&mut self, snapshot: &Snapshot, _reason: SyncReason) -> anyhow::Result<Synced> {
        let (snapshot, node, config) = (snapshot.clone(), self.node.clone(), self.config.clone());
        let outcome = tokio::task::spawn_blocking(move || sync(&snapshot, &node, &config))
            .await
            .context("the CNI sync task panicked")??;
        if outcome == WriteOutcome::Written {
            self.writes.inc();
            tracing::info!(path = %self.config.conf_path.display(), "wrote the CNI config");
        }
        Ok(Synced::default())
    }

    /// Removes the conflist if this agent wrote it (its network name is `kubewire`)
    /// and puts back the configurations --cni-exclusive moved aside.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        let path = self.config.conf_path.clone();
        let (removed, restored) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> anyhow::Result<_> {
                let removed = apply::remove_if_ours(&path)?;
                let restored = exclusive::restore(conf_dir(&path))?;
                Ok((removed, restored))
            }
        })
        .await
        .context("the CNI cleanup task panicked")??;
        if removed {
            tracing::info!(path = %path.display(), "removed the CNI config");
        }
        for name in restored {
            tracing::info!(%name, "restored a CNI config kubewire had moved aside");
        }
        Ok(())
    }
}

/// One sync: compile this node's conflist (asking the kernel for the interface MTU
/// unless `--mtu` is set) and write it if it changed.
pub fn sync(
    snapshot: &Snapshot,
    node_name: &str,
    config: &CniConfig,
) -> anyhow::Result<WriteOutcome> {
    let link_mtu = match config.network.pod_mtu {
        Some(_) => compile::DEFAULT_LINK_MTU,
        None => {
            let node =
                snapshot
                    .node(node_name)
                    .ok_or_else(|| compile::CniConfigError::NodeNotFound {
                        node: node_name.to_string(),
                    })?;
            let ip = compile::node_ip(node, &config.network)?;
            let (interface, mtu) = link::link_mtu_for_address(ip)
                .with_context(|| format!("Node {node_name}: finding the pod MTU"))?;
            tracing::debug!(%ip, %interface, mtu, "node interface");
            mtu
        }
    };
    let conflist = compile::compile(snapshot, node_name, config, link_mtu)?;
    let outcome = apply::write_conflist(&config.conf_path, conflist)?;
    if config.exclusive {
        // After ours is in place, so the directory never lacks a configuration.
        let ours = config
            .conf_path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", config.conf_path.display()))?;
        let done = exclusive::set_aside_others(conf_dir(&config.conf_path), ours)?;
        for name in &done.moved {
            tracing::warn!(%name, "moved another CNI config aside (--cni-exclusive): renamed {name}{}", exclusive::BACKUP_SUFFIX);
        }
        for name in &done.removed {
            tracing::info!(%name, "removed a stale kubewire CNI config");
        }
    }
    Ok(outcome)
}

/// The directory of the conflist at `path`.
fn conf_dir(path: &std::path::Path) -> &std::path::Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::Parser;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        cni: CniArgs,
        #[command(flatten)]
        network: crate::network::NetworkArgs,
    }

    fn args(extra: &[&str]) -> CniConfig {
        let flags = Flags::parse_from(["kubewire"].iter().chain(extra));
        flags.cni.config(&flags.network.config())
    }

    fn snapshot(node: serde_json::Value) -> Snapshot {
        let node: Node = serde_json::from_value(node).unwrap();
        Snapshot {
            nodes: vec![Arc::new(node)],
            ..Default::default()
        }
    }

    #[test]
    fn sync_writes_on_change_only_and_cleanup_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let dir_flag = dir.path().to_str().unwrap();
        let args = args(&["--cni-conf-dir", dir_flag, "--mtu", "1400"]);
        let node = |cidr: &str| {
            snapshot(json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": [cidr]}}))
        };
        assert_eq!(
            sync(&node("10.244.1.0/24"), "n1", &args).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(
            sync(&node("10.244.1.0/24"), "n1", &args).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(
            sync(&node("10.244.7.0/24"), "n1", &args).unwrap(),
            WriteOutcome::Written
        );
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&args.conf_path).unwrap()).unwrap();
        assert_eq!(
            written["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.7.0/24"
        );
        assert_eq!(written["plugins"][0]["mtu"], 1400);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut controller = CniController::new("n1".into(), args.clone(), &Metrics::new());
        runtime.block_on(controller.cleanup()).unwrap();
        assert!(!args.conf_path.exists());
    }

    /// --cni-exclusive (the default) moves another network's config aside on sync and
    /// cleanup brings it back; with it off, the other config stays.
    #[test]
    fn exclusive_sync_sets_other_configs_aside_and_cleanup_restores_them() {
        let dir = tempfile::tempdir().unwrap();
        let dir_flag = dir.path().to_str().unwrap();
        let other = dir.path().join("10-containerd-net.conflist");
        let other_text = r#"{"cniVersion":"1.0.0","name":"containerd-net","plugins":[]}"#;
        std::fs::write(&other, other_text).unwrap();
        let state =
            snapshot(json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}}));

        let shared = args(&[
            "--cni-conf-dir",
            dir_flag,
            "--mtu",
            "1400",
            "--cni-exclusive=false",
        ]);
        sync(&state, "n1", &shared).unwrap();
        assert!(other.exists(), "--cni-exclusive=false leaves it");

        let args = args(&["--cni-conf-dir", dir_flag, "--mtu", "1400"]);
        assert!(args.exclusive, "on by default");
        assert_eq!(
            args.conf_path.file_name().unwrap(),
            "05-kubewire.conflist",
            "sorts before 10-…"
        );
        assert_eq!(sync(&state, "n1", &args).unwrap(), WriteOutcome::Unchanged);
        assert!(!other.exists());
        let backup = dir.path().join("10-containerd-net.conflist.kubewire.bak");
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), other_text);

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut controller = CniController::new("n1".into(), args.clone(), &Metrics::new());
        runtime.block_on(controller.cleanup()).unwrap();
        assert!(!args.conf_path.exists());
        assert!(!backup.exists());
        assert_eq!(std::fs::read_to_string(&other).unwrap(), other_text);
    }

    #[test]
    fn sync_without_mtu_asks_the_kernel_for_the_node_interface() {
        let dir = tempfile::tempdir().unwrap();
        let dir_flag = dir.path().to_str().unwrap();
        let state = snapshot(json!({
            "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.250"}]}
        }));
        let err = sync(&state, "n1", &args(&["--cni-conf-dir", dir_flag])).unwrap_err();
        assert!(
            format!("{err:#}").contains(
                "no interface of this network namespace has the node address 192.0.2.250"
            ),
            "{err:#}"
        );
        // 127.0.0.1 is on lo everywhere: the pod MTU is lo's minus the VXLAN overhead.
        let args = args(&["--cni-conf-dir", dir_flag, "--node-ip", "127.0.0.1"]);
        sync(&state, "n1", &args).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&args.conf_path).unwrap()).unwrap();
        let lo = link::interface_mtu("lo").unwrap();
        assert_eq!(written["plugins"][0]["mtu"], lo - 50);
        let missing = sync(&state, "n9", &args).unwrap_err().to_string();
        assert_eq!(missing, "Node n9 not found");
    }
}

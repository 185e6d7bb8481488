//! The node's CNI configuration: a conflist for `bridge` (on kube-bridge, with
//! `host-local` IPAM over the Node's pod CIDRs) + `portmap` + `loopback`, derived from
//! the Node and kept on disk while the agent runs.
//!
//! [`model`] is the conflist as types, [`compile`] builds it from a snapshot (pure),
//! [`link`] asks the kernel for the node interface's MTU, [`apply`] writes the file
//! atomically and only on change. (The lab crate runs conflists the way a container
//! runtime does.)
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
pub mod link;
pub mod model;

pub use args::CniArgs;

use std::path::PathBuf;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;

use crate::agent::{AgentArgs, ControllerContext, reconcile_loop};
use crate::cache::{Kind, Snapshot};
use apply::WriteOutcome;

/// Watches this node's Node and keeps the conflist on disk in step with it.
pub async fn run_controller(ctx: ControllerContext) -> anyhow::Result<()> {
    let writes = Counter::<u64>::default();
    ctx.metrics.register(
        "kubewire_cni_config_writes",
        "Times the CNI conflist was (re)written because its content changed",
        writes.clone(),
    );
    let args = ctx.args.clone();
    let node_name = ctx.node_name.clone();
    reconcile_loop(&ctx, &[Kind::Node], |snapshot, _reason| {
        let (args, node_name, writes) = (args.clone(), node_name.clone(), writes.clone());
        async move {
            let path = args.cni.conf_path();
            let outcome = tokio::task::spawn_blocking(move || sync(&snapshot, &node_name, &args))
                .await
                .context("the CNI sync task panicked")??;
            if outcome == WriteOutcome::Written {
                writes.inc();
                tracing::info!(path = %path.display(), "wrote the CNI config");
            }
            Ok(())
        }
    })
    .await
}

/// One sync: compile this node's conflist (asking the kernel for the interface MTU
/// unless `--mtu` is set) and write it if it changed.
pub fn sync(
    snapshot: &Snapshot,
    node_name: &str,
    args: &AgentArgs,
) -> anyhow::Result<WriteOutcome> {
    let link_mtu = match args.cni.mtu {
        Some(_) => compile::DEFAULT_LINK_MTU,
        None => {
            let node =
                snapshot
                    .node(node_name)
                    .ok_or_else(|| compile::CniConfigError::NodeNotFound {
                        node: node_name.to_string(),
                    })?;
            let ip = compile::node_ip(node, &args.routing)?;
            let (interface, mtu) = link::link_mtu_for_address(ip)
                .with_context(|| format!("Node {node_name}: finding the pod MTU"))?;
            tracing::debug!(%ip, %interface, mtu, "node interface");
            mtu
        }
    };
    let conflist = compile::compile(snapshot, node_name, &args.cni, &args.routing, link_mtu)?;
    let path: PathBuf = args.cni.conf_path();
    apply::write_conflist(&path, conflist)
}

/// Removes the conflist if this agent wrote it (its network name is `kubewire`).
pub async fn cleanup(args: &AgentArgs) -> anyhow::Result<()> {
    let path = args.cni.conf_path();
    let removed = tokio::task::spawn_blocking({
        let path = path.clone();
        move || apply::remove_if_ours(&path)
    })
    .await
    .context("the CNI cleanup task panicked")??;
    if removed {
        tracing::info!(path = %path.display(), "removed the CNI config");
    }
    Ok(())
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
        agent: AgentArgs,
    }

    fn args(extra: &[&str]) -> AgentArgs {
        Flags::parse_from(["kubewire"].iter().chain(extra)).agent
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
            serde_json::from_slice(&std::fs::read(args.cni.conf_path()).unwrap()).unwrap();
        assert_eq!(
            written["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.7.0/24"
        );
        assert_eq!(written["plugins"][0]["mtu"], 1400);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(cleanup(&args)).unwrap();
        assert!(!args.cni.conf_path().exists());
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
            serde_json::from_slice(&std::fs::read(args.cni.conf_path()).unwrap()).unwrap();
        let lo = link::interface_mtu("lo").unwrap();
        assert_eq!(written["plugins"][0]["mtu"], lo - 50);
        let missing = sync(&state, "n9", &args).unwrap_err().to_string();
        assert_eq!(missing, "Node n9 not found");
    }
}

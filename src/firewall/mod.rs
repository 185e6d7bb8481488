//! The NetworkPolicy firewall: policies compiled into one `inet kubewire` nftables
//! table of fixed chains, sets and verdict maps.
//!
//! [`policy`] and [`cluster`] read a snapshot into validated NetworkPolicy semantics;
//! [`evaluate`] is the reference decision for one connection (what `matrix` and
//! `explain` print).

mod args;
pub mod cluster;
pub mod cmd;
pub mod compile;
pub mod conformance;
pub mod evaluate;
pub mod explain;
pub mod input;
pub mod matrix;
pub mod model;
pub mod policy;
pub mod render;
pub mod selector;

pub use args::FirewallArgs;
pub use input::FirewallInput;

use crate::agent::{AgentArgs, ControllerContext};

pub async fn run_controller(_ctx: ControllerContext) -> anyhow::Result<()> {
    anyhow::bail!("the firewall controller is not built yet (issue 4)")
}

/// Removes the firewall's nftables table.
pub async fn cleanup(_args: &AgentArgs) -> anyhow::Result<()> {
    Ok(())
}

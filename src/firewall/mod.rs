//! The NetworkPolicy firewall: policies compiled into one `inet kubewire` nftables
//! table of fixed chains, sets and verdict maps.

mod args;
pub mod cmd;

pub use args::FirewallArgs;

use crate::agent::{AgentArgs, ControllerContext};

pub async fn run_controller(_ctx: ControllerContext) -> anyhow::Result<()> {
    anyhow::bail!("the firewall controller is not built yet (issue 4)")
}

/// Removes the firewall's nftables table.
pub async fn cleanup(_args: &AgentArgs) -> anyhow::Result<()> {
    Ok(())
}

//! The node's CNI configuration: a conflist for bridge + host-local + portmap +
//! loopback, derived from the Node's pod CIDRs.

mod args;
pub mod cmd;

pub use args::CniArgs;

use crate::agent::{AgentArgs, ControllerContext};

pub async fn run_controller(_ctx: ControllerContext) -> anyhow::Result<()> {
    anyhow::bail!("the CNI controller is not built yet (issue 2)")
}

/// Removes the conflist this agent wrote.
pub async fn cleanup(_args: &AgentArgs) -> anyhow::Result<()> {
    Ok(())
}

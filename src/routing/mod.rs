//! Pod networking across nodes: the node's bridge, pod-CIDR routes to other nodes
//! (direct, or through a VXLAN/IPIP overlay) and pod egress masquerade.

mod args;
pub mod cmd;
pub mod compile;
pub mod model;
pub mod nodes;
pub mod ruleset;

pub use args::{OverlayEncap, OverlayType, RoutingArgs};

use crate::agent::{AgentArgs, ControllerContext};

pub async fn run_controller(_ctx: ControllerContext) -> anyhow::Result<()> {
    anyhow::bail!("the routing controller is not built yet (issue 5)")
}

/// Removes the routes, tunnels, bridge and nftables table this controller created.
pub async fn cleanup(_args: &AgentArgs) -> anyhow::Result<()> {
    Ok(())
}

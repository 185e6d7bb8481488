use crate::network::NetworkConfig;

use super::compile::CompileOptions;

/// The routing controller's own flags (the node's network is in
/// [`crate::network::NetworkArgs`]).
#[derive(Clone, Debug, clap::Args)]
pub struct RoutingArgs {
    /// Masquerade pod traffic that leaves the cluster to the node's address.
    #[arg(long, env = "KUBEWIRE_POD_EGRESS_MASQUERADE", default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_egress_masquerade: bool,
    #[command(flatten)]
    pub bgp: super::bgp_controller::BgpArgs,
}

impl RoutingArgs {
    /// The BGP speaker's configuration; `None` without `--run-bgp`.
    pub fn bgp_config(&self) -> anyhow::Result<Option<super::bgp_controller::BgpConfig>> {
        self.bgp.config()
    }

    pub fn config(&self, network: &NetworkConfig) -> CompileOptions {
        CompileOptions {
            network: network.clone(),
            pod_egress_masquerade: self.pod_egress_masquerade,
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct FirewallArgs {
    /// Drop traffic to a newly started local pod until its policies are compiled.
    #[arg(long, env = "KUBEWIRE_FIREWALL_DEFAULT_DENY", default_value_t = false, action = clap::ArgAction::Set)]
    pub firewall_default_deny: bool,
    /// Log denied packets to this NFLOG group.
    #[arg(long, env = "KUBEWIRE_FIREWALL_LOG_GROUP")]
    pub firewall_log_group: Option<u16>,
}

impl FirewallArgs {
    /// The compile settings for `node`.
    pub fn config(&self, node: &str) -> super::compile::CompileOptions {
        super::compile::CompileOptions {
            node: node.to_string(),
            default_deny: self.firewall_default_deny,
            log_group: self.firewall_log_group,
        }
    }
}

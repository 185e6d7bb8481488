//! The command line, exactly as `CONTRACT.md` fixes it. Each controller module owns
//! its own subcommands; this file only composes them.

use clap::{Parser, Subcommand};

use crate::agent::{self, AgentArgs, ControllerKind};

#[derive(Debug, Parser)]
#[command(
    name = "kubewire",
    version,
    about = "One node agent for the whole Kubernetes cluster network"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every enabled controller over one shared watch cache (the DaemonSet entry point).
    Run(Box<AgentArgs>),
    /// Pod-CIDR routes, overlays and BGP.
    #[command(subcommand)]
    Routing(ControllerCommand<crate::routing::cmd::RoutingCommand>),
    /// The NetworkPolicy firewall.
    #[command(subcommand)]
    Firewall(ControllerCommand<crate::firewall::cmd::FirewallCommand>),
    /// The service proxy (IPVS or nftables).
    #[command(subcommand)]
    Proxy(ControllerCommand<crate::proxy::cmd::ProxyCommand>),
    /// The node's CNI configuration.
    #[command(subcommand)]
    Cni(ControllerCommand<crate::cni::cmd::CniCommand>),
    /// Remove everything the agent programmed on this node, then exit.
    Cleanup(Box<AgentArgs>),
    /// A real multi-node cluster network on this machine (runs `kubewire-lab`, a
    /// separate binary, with the same arguments).
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// A controller's subcommands: `run` (that controller alone, with the agent's flags)
/// and its own offline verbs.
#[derive(Debug, Subcommand)]
pub enum ControllerCommand<Verbs: Subcommand> {
    /// Run this controller alone.
    Run(Box<AgentArgs>),
    #[command(flatten)]
    Offline(Verbs),
}

/// Runs the parsed command on a fresh tokio runtime (`lab` hands over to its binary).
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Lab { args } => return exec_lab(args),
        command => command,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        use ControllerCommand::{Offline, Run};
        match command {
            Command::Run(args) => agent::run(*args, &ControllerKind::ALL).await,
            Command::Routing(Run(args)) => agent::run(*args, &[ControllerKind::Routing]).await,
            Command::Firewall(Run(args)) => agent::run(*args, &[ControllerKind::Firewall]).await,
            Command::Proxy(Run(args)) => agent::run(*args, &[ControllerKind::Proxy]).await,
            Command::Cni(Run(args)) => agent::run(*args, &[ControllerKind::Cni]).await,
            Command::Routing(Offline(cmd)) => crate::routing::cmd::dispatch(cmd).await,
            Command::Firewall(Offline(cmd)) => crate::firewall::cmd::dispatch(cmd).await,
            Command::Proxy(Offline(cmd)) => crate::proxy::cmd::dispatch(cmd).await,
            Command::Cni(Offline(cmd)) => crate::cni::cmd::dispatch(cmd).await,
            Command::Cleanup(args) => agent::cleanup(*args).await,
            Command::Lab { .. } => Ok(()),
        }
    });
    // A blocking task stuck in the kernel or a resolver must not keep the process
    // alive after the command has its answer.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// `kubewire lab …`: replaces this process with `kubewire-lab …` from beside this
/// binary (else from `$PATH`). The lab is a separate binary so that the agent image
/// carries none of it.
fn exec_lab(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    const LAB: &str = "kubewire-lab";
    let beside = std::env::current_exe()?.with_file_name(LAB);
    let program = if beside.is_file() {
        beside
    } else {
        std::path::PathBuf::from(LAB)
    };
    let err = std::process::Command::new(&program).args(args).exec();
    anyhow::bail!(
        "cannot run {} ({err}): the lab is built by `cargo build --workspace` and is not part of the agent image",
        program.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}

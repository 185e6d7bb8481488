//! Where the lab finds the programs it starts: itself (responders, the control plane)
//! and the agent, which is a separate binary so the DaemonSet image carries no lab code.

use std::path::PathBuf;

use anyhow::Context;

/// The agent binary's name, looked for beside the lab's own binary.
pub const AGENT: &str = "kubewire";

/// The running lab binary, which also serves the lab's hidden subcommands.
pub fn lab() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the kubewire-lab binary")
}

/// The agent binary: `$KUBEWIRE_AGENT_BINARY`, else `kubewire` beside this binary
/// (cargo builds both into one target directory) or one directory up (cargo's `deps/`,
/// where test and bench executables live), else `kubewire` on `$PATH`.
pub fn agent() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBEWIRE_AGENT_BINARY") {
        return Ok(PathBuf::from(path));
    }
    let exe = lab()?;
    let beside = exe.with_file_name(AGENT);
    let above = exe
        .parent()
        .and_then(|dir| dir.parent())
        .map(|dir| dir.join(AGENT));
    if let Some(found) = [Some(beside.clone()), above]
        .into_iter()
        .flatten()
        .find(|candidate| candidate.is_file())
    {
        return Ok(found);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(AGENT))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "no agent binary: set KUBEWIRE_AGENT_BINARY, or put `{AGENT}` beside {} or on PATH (cargo build --workspace builds both)",
                beside.display()
            )
        })
}

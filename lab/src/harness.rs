//! What integration tests share about running at all: a test that cannot run here
//! (no root, a kernel without a feature) says why and is recorded as skipped — never
//! silently passed. `scripts/test` sets `KUBEWIRE_SKIP_LOG` and prints the list.

use std::io::Write;

/// Records the calling test as skipped for `reason`: one line on stderr, and one in
/// `$KUBEWIRE_SKIP_LOG` when set. The caller returns right after.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| {
            stem.rsplit_once('-')
                .map_or(stem.clone(), |(name, _)| name.to_string())
        })
        .unwrap_or_default();
    let line = format!("{binary}::{test}: {reason}");
    eprintln!("skipped: {line}");
    if let Some(path) = std::env::var_os("KUBEWIRE_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// True when running as root; otherwise records the test as skipped.
pub fn require_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip("needs root (network namespaces, nftables)");
    }
    root
}

//! The `nft` CLI as a transaction runner: a script on stdin is applied by the kernel
//! as one nftables transaction, all or nothing. Used for the routing table's rare
//! whole-table replacements; nothing on a per-packet or per-pod path.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(std::io::Error),
    #[error("nft -f - failed: {0}")]
    Failed(String),
}

/// Runs `nft -f -` with `script` in the calling thread's network namespace.
pub async fn apply(script: &str) -> Result<(), NftError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(NftError::Spawn)?;
    }
    let output = child.wait_with_output().await.map_err(NftError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NftError::Failed(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}

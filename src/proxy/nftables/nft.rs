//! The thin adapter to the kernel for the proxy's table: `nft -f` transactions
//! (through the shared [`crate::nft`] runner), a terse listing of `inet kubewire-proxy`, and its
//! deletion. Nothing else in the proxy touches nftables.

use serde_json::Value;

use super::ruleset::{FAMILY, TABLE};
use crate::nft::{Nft, NftError};

/// `nft`, on $PATH in this network namespace or (tests) inside a named one.
#[derive(Clone, Debug, Default)]
pub struct ProxyNft {
    runner: Nft,
}

impl ProxyNft {
    pub fn in_netns(name: &str) -> Self {
        Self {
            runner: Nft::in_netns(name),
        }
    }

    /// One atomic `nft -f` transaction.
    pub async fn apply(&self, text: &str) -> Result<(), NftError> {
        self.runner.apply(text).await
    }

    /// `nft -j list chains inet`: every inet chain without rules, which the CLI reads
    /// without fetching any set (cheap however large the maps are).
    pub async fn list_chains(&self) -> anyhow::Result<Value> {
        self.list(&["-j", "list", "chains", FAMILY])
            .await
            .map(Option::unwrap_or_default)
    }

    /// `nft -j -t list table inet kubewire-proxy` (elements left out of the output,
    /// but nft 1.0.6 still reads them: 6 s at 230k elements); `Ok(None)` when the
    /// table does not exist.
    pub async fn list_terse(&self) -> anyhow::Result<Option<Value>> {
        self.list(&["-j", "-t", "list", "table", FAMILY, TABLE])
            .await
    }

    /// `nft -j list map inet kubewire-proxy NAME` (with its elements); `Ok(None)` when
    /// the table does not exist.
    pub async fn list_map(&self, name: &str) -> anyhow::Result<Option<Value>> {
        self.list(&["-j", "list", "map", FAMILY, TABLE, name]).await
    }

    async fn list(&self, args: &[&str]) -> anyhow::Result<Option<Value>> {
        Ok(self.runner.list_json(args).await?)
    }

    /// Deletes the table; `Ok(false)` when there was none.
    pub async fn delete_table(&self) -> Result<bool, NftError> {
        self.runner.delete_table(FAMILY, TABLE).await
    }
}

//! Sends the firewall's rendered [`Transaction`]s to the kernel, each as one atomic
//! transaction: an elements-only one straight to nf_tables over [`netlink`] (no
//! process, no cache read), anything else as one `nft -f` through [`crate::nft`].
//! Listing and deleting the table go through [`Nft`] with [`super::model::TABLE`].

use super::netlink;
use super::render::Transaction;
use crate::nft::{Nft, NftError};

/// Applies `transaction` in the network namespace `nft` runs in.
pub async fn apply_transaction(nft: &Nft, transaction: &Transaction) -> Result<(), NftError> {
    if let Some(batches) = transaction.element_batches() {
        let netns = nft.netns().map(str::to_string);
        return tokio::task::spawn_blocking(move || netlink::apply(netns.as_deref(), &batches))
            .await
            .map_err(|err| NftError::Netlink(err.to_string()))?
            .map_err(|err| NftError::Netlink(err.to_string()));
    }
    nft.apply(&transaction.text()).await
}

//! Sends the firewall's rendered [`Transaction`]s to the kernel, each as one atomic
//! transaction: an elements-only one straight to nf_tables over a kept-open
//! [`netlink::Session`] (no process, no cache read, no socket close), anything else
//! as one `nft -f` through [`crate::nft`]. Listing and deleting the table go through
//! [`Nft`] with [`super::model::TABLE`].

use super::netlink;
use super::render::Transaction;
use crate::nft::{Nft, NftError};

/// The firewall's way into one network namespace's nf_tables.
#[derive(Debug)]
pub struct Kernel {
    nft: Nft,
    session: netlink::Session,
}

impl Kernel {
    pub fn new(nft: Nft) -> Self {
        let session = netlink::Session::new(nft.netns());
        Self { nft, session }
    }

    pub fn nft(&self) -> &Nft {
        &self.nft
    }

    /// Applies `transaction`. An elements-only one is sent in place: the kernel runs
    /// the whole batch, commit included, within the send, so this blocks for the
    /// commit (about a millisecond; longer only while another nf_tables client of
    /// this network namespace holds the commit lock).
    pub async fn apply(&mut self, transaction: &Transaction) -> Result<(), NftError> {
        match transaction.element_batches() {
            Some(batches) => self
                .session
                .apply(&batches)
                .map_err(|err| NftError::Netlink(err.to_string())),
            None => self.nft.apply(&transaction.text()).await,
        }
    }
}

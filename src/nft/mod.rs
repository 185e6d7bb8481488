//! One nftables layer for every controller (firewall, proxy, routing): a typed
//! [`model`] of a table, transactions rendered from it ([`render`]: create, replace,
//! or the difference between two tables), a [`Backend`] that applies them (the
//! [`Kernel`]: netlink for element changes, `nft -f` otherwise; or the in-memory
//! [`Fake`]), the kernel's state read back into the same model ([`read`]), and one
//! [`Reconciler`] with an exact drift check. Only tables a controller names are
//! ever touched.

pub mod backend;
mod cli;
pub mod codec;
pub mod dump;
pub mod elements;
pub mod fake;
pub mod load;
pub mod model;
pub mod netlink;
pub mod read;
pub mod reconcile;
pub mod render;
pub mod trace;

pub use backend::{Backend, Kernel};
pub use cli::{Nft, NftError, enable_bridge_netfilter, listing_items};
pub use fake::Fake;
pub use model::{Chain, Counter, Elements, Hook, Objects, Rule, Set, Table, TableId};
pub use reconcile::{Applied, NftMetrics, Reconciler};
pub use render::{Kind, Op, Transaction};

//! The nftables backend: the service map compiled ([`compile`]) into one
//! `inet kubewire-proxy` table of fixed chains and per-family maps ([`ruleset`]),
//! kept up to date one Service at a time ([`incremental`]) and in the kernel by
//! [`apply`] through the shared [`crate::nft`] layer.

pub mod apply;
pub mod compile;
pub mod incremental;
pub mod ruleset;

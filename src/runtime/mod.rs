//! The controller runtime: how every controller is run. A [`Controller`] says which
//! kinds it reads and how to bring the kernel in line with one snapshot; [`run`]
//! drives it — one sync at start, then one after every (coalesced) change of its kinds
//! and every sync period (the drift check), retrying failures with [`Backoff`],
//! marking health, timing syncs and reporting each bad object once.
//!
//! The runtime knows nothing of any controller and no controller knows the agent that
//! wires them together.

mod backoff;
mod bad_objects;
mod controller;
mod error_once;
mod run;

pub use backoff::Backoff;
pub use bad_objects::{BadObject, BadObjectChanges, BadObjects};
pub use controller::{Controller, SyncReason, Synced};
pub use error_once::ErrorOnce;
pub use run::{Runtime, run};

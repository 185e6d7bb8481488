//! kubewire: one node agent for the whole cluster network.
//!
//! Every controller reads one shared watch cache ([`cache`]) and is split into a pure
//! compiler (snapshot → desired dataplane model) and a reconciler that applies the
//! difference to the kernel, run by [`runtime`]. [`agent`] wires the enabled
//! controllers together.

pub mod agent;
pub mod cache;
pub mod cli;
pub mod cni;
pub mod firewall;
pub mod ipvs;
pub mod network;
pub mod nft;
pub mod node;
pub mod offline;
pub mod proxy;
pub mod routing;
pub mod runtime;
pub mod telemetry;

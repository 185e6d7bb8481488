//! kubewire: one node agent for the whole cluster network.
//!
//! Every controller reads one shared watch cache ([`cache`]) and is split into a pure
//! compiler (snapshot → desired dataplane model) and a reconciler that applies the
//! difference to the kernel. [`agent`] runs the enabled controllers side by side.

pub mod agent;
pub mod cache;
pub mod cli;
pub mod cni;
pub mod firewall;
pub mod ipvs;
pub mod lab;
pub mod nft;
pub mod node;
pub mod proxy;
pub mod routing;
pub mod synthetic;
pub mod telemetry;

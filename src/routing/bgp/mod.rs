//! A native BGP speaker (RFC 4271) for announcing the node's routes to routers and
//! learning theirs, without a routing daemon beside the agent.
//!
//! Shaped like holo: the protocol is pure and the kernel is thin.
//! - `message` is the only user of `netgauze-bgp-pkt` (besides its `Origin` enum in
//!   `route`): bytes ↔ messages, OPEN capabilities, UPDATE ↔ route changes;
//!   malformed input becomes a NOTIFICATION.
//! - `route` is the speaker's own route model (plain attribute values).
//! - `fsm` is the session state machine: events in, actions out, no sockets.
//! - `rib` (Adj-RIB-In, Loc-RIB with best-path selection, Adj-RIB-Out) and `policy`
//!   (import filter, export rewriting) are pure bookkeeping.
//! - `socket` makes the TCP sockets (MD5, TTL), `session` drives one neighbour's FSM
//!   with them, and `speaker` owns the RIBs and is the API the agent uses.

pub mod config;
pub mod fsm;
pub mod message;
pub mod policy;
pub mod rib;
pub mod route;
pub mod session;
pub mod socket;
pub mod speaker;

pub use config::{Families, PeerConfig, SpeakerConfig};
pub use speaker::{PeerStatus, RouteAttrs, RouteEvent, Speaker, SpeakerHandle, SpeakerObserver};

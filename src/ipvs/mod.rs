//! The kernel's IPVS (IP Virtual Server) load balancer over generic netlink: the
//! kernel adapter the proxy's IPVS backend is to program it through, and the only
//! place in kubewire that speaks to IPVS.
//!
//! No maintained Rust crate speaks the `IPVS` generic-netlink family, so it is
//! written here on `netlink-packet-generic`, after the kernel's
//! `include/uapi/linux/ip_vs.h` and `net/netfilter/ipvs/ip_vs_ctl.c`:
//!
//! - [`model`]: services, destinations, counters and timeouts as Rust types;
//! - [`attr`]: attribute numbers, byte orders, and a reader that names the attribute
//!   in every decoding error;
//! - [`value`]: the kernel's numbers for families, protocols, flags, netmasks and
//!   forwarding methods;
//! - [`message`]: the [`GenlFamily`](netlink_packet_generic::GenlFamily) payload and
//!   requests built from the model; [`reply`]: the kernel's answers read back (both
//!   pure, tested byte for byte against messages captured from `ipvsadm`);
//! - [`socket`]: [`Ipvs`], one socket with the family id resolved once, acknowledged
//!   requests, dumps, and errors that carry the errno and what was being done.
//!
//! A kernel without IPVS answers [`IpvsError::Unavailable`] when the handle is
//! opened, so the proxy can fall back to nftables.

pub mod attr;
pub mod error;
pub mod message;
pub mod model;
pub mod reply;
pub mod socket;
pub mod value;

pub use error::IpvsError;
pub use message::{EncodeError, IpvsMessage};
pub use model::{
    Destination, DestinationStatus, Family, ForwardMethod, Info, Protocol, Service, ServiceFlags,
    ServiceKey, ServiceStatus, Stats, Timeouts, Tunnel, TunnelChecksum, TunnelType,
};
pub use socket::Ipvs;

#[cfg(test)]
mod tests;

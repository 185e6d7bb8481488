//! The IPVS backend of the service proxy: the same [`ServiceMap`](super::model::ServiceMap)
//! as the nftables backend, balanced by the kernel's IPVS instead of DNAT rules.
//!
//! - [`schedule`]: the scheduler annotations (kube-router's names);
//! - [`compile`]: pure, the map → virtual services, destinations, VIPs and the
//!   nftables glue table;
//! - [`diff`]: pure, kernel state + desired state → the changes, with graceful
//!   termination;
//! - [`metrics`]: what is kept, and the kernel's counters per virtual service;
//! - [`apply`]: the reconciler, the only part that speaks to the kernel (through
//!   [`crate::ipvs`], rtnetlink and the nftables backend's reconciler).
//!
//! What differs from the nftables backend, by IPVS's design: one destination set per
//! address, so with externalTrafficPolicy Local every source (pods and the node
//! too) reaches only this node's endpoints; sessionAffinity ClientIP is IPVS
//! persistence, in both families (the nftables backend has it for IPv4 only).

pub mod apply;
pub mod compile;
pub mod diff;
pub mod metrics;
pub mod schedule;

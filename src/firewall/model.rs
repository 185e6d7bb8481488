//! The desired state of one node's `inet kubewire` nftables table, as plain data.
//!
//! The table's shape is fixed: two base chains on the forward hook (`pod-egress`, then
//! `pod-ingress`), a chain per NetworkPolicy direction that has rules, and a chain per
//! distinct set of such policies that select the same local pod. Everything that grows
//! with pods lives in set and map elements: the peers' addresses, the named ports, and
//! the dispatch maps from a local pod's address to its chain and drop counter. So a
//! pod, label or namespace change is an element change, and a packet costs one map
//! lookup per direction however many pods and policies there are.

use std::fmt;

use super::policy::{Direction, Peer};
pub use crate::nft::elements::{ElementChanges, Elements, Objects, SHARDS, SMALL};

/// The table every kubewire firewall rule lives in; nothing else is ever touched.
pub const TABLE: &str = "kubewire";
pub const FAMILY: &str = "inet";

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: std::net::IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// The payload keyword: `ip` or `ip6`.
    pub fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The set name suffix: `4` or `6`.
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
        }
    }

    pub fn addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

/// The whole table. Its parts are shared (`Arc`) between a ruleset and the next one
/// compiled from it, so keeping the applied ruleset and diffing against it is cheap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Objects<Chain>,
    /// Sets and maps, by name.
    pub sets: Objects<Set>,
    /// Named counters, by name.
    pub counters: Objects<Counter>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub kind: ChainKind,
    pub rules: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainKind {
    /// One NetworkPolicy's rules for one direction; ends without a verdict.
    Policy,
    /// Jumps to each policy chain of a set of policies selecting the same pods.
    Group,
    /// A base chain on the forward hook at `filter + priority`.
    Base { priority: i32 },
}

/// A named set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    pub comment: Option<String>,
    /// What the elements are derived from (not part of the table).
    pub members: Members,
    /// Element → value (empty for sets), in nft syntax.
    pub elements: Elements,
}

/// What decides a set's elements, so that a pod change can update just that pod's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Members {
    /// Addresses of the pods a peer selects.
    Peer(Peer),
    /// `address . protocol . port` of the pods declaring a port of this name.
    NamedPort(String),
    /// Addresses of this node's pods.
    LocalPods,
    /// Decided by the policies alone (ipBlock, pod CIDRs) or by dispatch.
    Other,
}

impl Set {
    pub fn new(kind: SetKind, comment: Option<String>, members: Members) -> Self {
        Self {
            kind,
            comment,
            members,
            elements: Elements::default(),
        }
    }

    pub fn with_elements(mut self, elements: impl Into<Elements>) -> Self {
        self.elements = elements.into();
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// Addresses (peer pods, local pods).
    Addr(Family),
    /// Address ranges (ipBlock, pod CIDRs).
    Interval(Family),
    /// address . protocol . port (a named port on every pod that declares it).
    NamedPort(Family),
    /// Local pod address → verdict (the chain that decides its traffic).
    Dispatch(Family),
    /// Local pod address → the counter its drops count in.
    CounterMap(Family),
}

impl SetKind {
    pub fn is_map(self) -> bool {
        matches!(self, SetKind::Dispatch(_) | SetKind::CounterMap(_))
    }

    /// The body of the set's declaration, without elements.
    pub fn declaration(self) -> String {
        match self {
            SetKind::Addr(f) => format!("type {}", f.addr_type()),
            SetKind::Interval(f) => format!("type {}; flags interval", f.addr_type()),
            SetKind::NamedPort(f) => format!("type {} . inet_proto . inet_service", f.addr_type()),
            SetKind::Dispatch(f) => format!("type {} : verdict", f.addr_type()),
            SetKind::CounterMap(f) => format!("type {} : counter", f.addr_type()),
        }
    }
}

/// A drop counter of the pods isolated by a set of policies, for one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    pub direction: Option<Direction>,
    /// `namespace/name` of every policy isolating the pods whose drops count here.
    pub policies: Vec<String>,
}

impl Ruleset {
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
}

impl Set {
    /// One element in nft syntax (`key` or `key : value`).
    pub fn element(&self, key: &str) -> String {
        match self.elements.get(key) {
            Some(value) if !value.is_empty() => format!("{key} : {value}"),
            _ => key.to_string(),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

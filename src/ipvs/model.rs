//! The IPVS configuration in kernel terms but Rust types: virtual services, their
//! real servers (destinations), the counters the kernel keeps for both, and the global
//! connection timeouts. Nothing here knows how netlink encodes it ([`super::message`]
//! and [`super::reply`] do), so a reconciler can build and compare these values
//! without a socket.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// The address family of a service or a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family an address belongs to.
    pub fn of(address: IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The longest prefix of this family: the netmask that makes persistence per
    /// client address.
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
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

/// The transport protocol of an address-based service (IPVS balances these three).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// What identifies a virtual service to the kernel; every service command names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    /// Packets to `address:port` over `protocol` (a ClusterIP, a node port).
    Address {
        protocol: Protocol,
        address: IpAddr,
        port: u16,
    },
    /// Packets of one address family carrying a firewall mark, set by nftables rules:
    /// how one service can cover many addresses or ports.
    Fwmark { family: Family, mark: u32 },
}

impl ServiceKey {
    pub fn family(&self) -> Family {
        match self {
            ServiceKey::Address { address, .. } => Family::of(*address),
            ServiceKey::Fwmark { family, .. } => *family,
        }
    }
}

/// Reads as `ipvsadm -Ln` names services: `TCP 10.96.0.1:80`, `UDP [fd00::1]:53`,
/// `FWM 42 IPv4`.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceKey::Address {
                protocol,
                address,
                port,
            } => write!(f, "{protocol} {}", SocketText(*address, *port)),
            ServiceKey::Fwmark { family, mark } => write!(f, "FWM {mark} {family}"),
        }
    }
}

/// `address:port` with IPv6 addresses in brackets.
pub(crate) struct SocketText(pub IpAddr, pub u16);

impl fmt::Display for SocketText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(address) => write!(f, "{address}:{}", self.1),
            IpAddr::V6(address) => write!(f, "[{address}]:{}", self.1),
        }
    }
}

/// Service flags (`IP_VS_SVC_F_*`). The scheduler flags mean what the service's
/// scheduler makes of them: `sh` and `mh` read flag 1 as "fall back to another real
/// server when the chosen one is unavailable" and flag 2 as "hash the source port
/// too"; other schedulers ignore them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceFlags {
    /// Connections from one client (see [`Service::netmask`]) go to the same real
    /// server for [`Service::timeout`] seconds.
    pub persistent: bool,
    /// Set by the kernel on every service it has in its tables; read-only: requests
    /// never carry it (a new service sent with it would never be hashed).
    pub hashed: bool,
    /// Schedule every UDP datagram on its own (no connection entry kept).
    pub one_packet: bool,
    /// `IP_VS_SVC_F_SCHED1`: sh-fallback for `sh`, mh-fallback for `mh`.
    pub sched_fallback: bool,
    /// `IP_VS_SVC_F_SCHED2`: sh-port for `sh`, mh-port for `mh`.
    pub sched_port: bool,
    /// `IP_VS_SVC_F_SCHED3`: no in-tree scheduler reads it.
    pub sched_flag3: bool,
}

/// A virtual service: what the kernel keeps besides its destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// The scheduler module's name: `rr`, `wrr`, `lc`, `sh`, `mh`, …
    pub scheduler: String,
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (meaningful with [`ServiceFlags::persistent`]).
    pub timeout: u32,
    /// Persistence granularity as a prefix length: clients whose addresses share this
    /// prefix stick to one real server (32 or 128: each client on its own).
    pub netmask: u8,
    /// Persistence engine (`sip`), if any.
    pub persistence_engine: Option<String>,
}

impl Service {
    /// A service without persistence, as `ipvsadm -A` makes one.
    pub fn new(key: ServiceKey, scheduler: &str) -> Service {
        Service {
            key,
            scheduler: scheduler.to_string(),
            flags: ServiceFlags::default(),
            timeout: 0,
            netmask: key.family().max_prefix(),
            persistence_engine: None,
        }
    }
}

/// Tunnel encapsulation of the tunnel forwarding method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TunnelType {
    #[default]
    Ipip,
    /// Generic UDP encapsulation, to [`Tunnel::port`].
    Gue,
    Gre,
}

/// How the outer header of a GUE or GRE tunnel is checksummed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TunnelChecksum {
    #[default]
    None,
    Checksum,
    RemoteChecksum,
}

/// The tunnel a tunnelled destination is reached through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tunnel {
    pub kind: TunnelType,
    /// The UDP port of a GUE tunnel (0 for the others).
    pub port: u16,
    pub checksum: TunnelChecksum,
}

/// How packets reach a destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ForwardMethod {
    /// NAT: the destination address (and port) are rewritten; what kube-proxy uses.
    #[default]
    Masquerade,
    /// The destination is this node.
    Local,
    /// Encapsulated to the destination (which keeps the virtual address).
    Tunnel(Tunnel),
    /// Direct routing: the frame is sent to the destination unchanged.
    Route,
    /// Cache bypass.
    Bypass,
}

/// A real server of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub address: IpAddr,
    pub port: u16,
    pub forward: ForwardMethod,
    /// Relative share of new connections; 0 takes the destination out of scheduling
    /// while its connections drain.
    pub weight: u32,
    /// No new connections above this many (0: no limit).
    pub upper_threshold: u32,
    /// Scheduling resumes below this many after the upper threshold was hit.
    pub lower_threshold: u32,
}

impl Destination {
    /// A masqueraded destination of weight 1 without thresholds.
    pub fn new(address: IpAddr, port: u16) -> Destination {
        Destination {
            address,
            port,
            forward: ForwardMethod::Masquerade,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    /// The destination's own family; it differs from the service's only for tunnels.
    pub fn family(&self) -> Family {
        Family::of(self.address)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketText(self.address, self.port).fmt(f)
    }
}

/// Counters the kernel keeps per service and per destination: totals since creation
/// (or the last zeroing) and rates estimated over the last seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    pub connections: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Connections per second.
    pub cps: u64,
    pub packets_in_per_second: u64,
    pub packets_out_per_second: u64,
    pub bytes_in_per_second: u64,
    pub bytes_out_per_second: u64,
}

/// A destination as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationStatus {
    pub destination: Destination,
    pub active_connections: u32,
    pub inactive_connections: u32,
    /// Persistence templates pointing at this destination.
    pub persistent_connections: u32,
    pub stats: Stats,
}

/// A service as the kernel reports it, with its destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    pub service: Service,
    pub stats: Stats,
    pub destinations: Vec<DestinationStatus>,
}

/// The global connection timeouts (`ipvsadm --set`). On reading, a protocol the
/// kernel was built without is `None`; on writing, `None` leaves a timeout unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Established TCP connections.
    pub tcp: Option<Duration>,
    /// TCP connections after a FIN.
    pub tcp_fin: Option<Duration>,
    pub udp: Option<Duration>,
}

/// What `ipvsadm` prints in its first line: the IPVS version and the size of the
/// connection hash table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// `(major, minor, patch)`, e.g. `(1, 2, 1)`.
    pub version: (u8, u8, u8),
    pub connection_table_size: u32,
}

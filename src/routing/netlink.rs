//! The routing controller's only way to the kernel's routing state: a thin rtnetlink
//! adapter (links, addresses, routes, neighbour and FDB entries) over one long-lived
//! netlink socket. Changes are sent in batches — many messages in one datagram, one
//! acknowledgement each, mapped back to the message that caused it — so installing a
//! thousand routes costs a handful of round trips, not a thousand.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_sys::AsyncSocket;

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol,
};
use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, IpProtocol, RouteNetlinkMessage};
use rtnetlink::proto::{ConnectionHandle, sys::SocketAddr};
use rtnetlink::{
    LinkBridge, LinkDummy, LinkIp6Tnl, LinkIpIp, LinkMessageBuilder, LinkUnspec, LinkVxlan,
};

use super::model::{IpipDevice, Mac, ROUTE_PROTOCOL, VxlanDevice};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{0}")]
    Kernel(io::Error),
    #[error("the netlink connection is closed")]
    Closed,
    #[error("no acknowledgement from the kernel")]
    NoAck,
    #[error("unexpected netlink reply: {0}")]
    Unexpected(String),
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel(err) => err.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// Messages per datagram when the socket's receive buffer could be enlarged (each
/// message's acknowledgement must fit in it), and when it could not.
const LARGE_BATCH: usize = 256;
const SMALL_BATCH: usize = 32;
const RECEIVE_BUFFER: libc::c_int = 8 << 20;

/// One rtnetlink socket in the network namespace of the thread that opened it.
pub struct Netlink {
    handle: ConnectionHandle<RouteNetlinkMessage>,
    batch_size: usize,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// A network interface as far as routing cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub mac: Option<Mac>,
    pub alias: Option<String>,
    pub vxlan: Option<VxlanInfo>,
    /// `local` and `remote` of an IP tunnel.
    pub tunnel_endpoints: Option<(Option<IpAddr>, Option<IpAddr>)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub local: Option<IpAddr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
}

/// An interface address with its prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub address: IpNet,
    /// `IFA_PROTO`: who added it (ours is [`ROUTE_PROTOCOL`]).
    pub protocol: Option<u8>,
}

/// A route of the main table as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
    /// The message as dumped, to delete exactly this route.
    raw: RouteMessage,
}

impl KernelRoute {
    #[cfg(test)]
    pub(crate) fn for_tests(
        destination: IpNet,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
        onlink: bool,
    ) -> KernelRoute {
        KernelRoute {
            destination,
            gateway,
            oif,
            onlink,
            protocol: ROUTE_PROTOCOL,
            raw: RouteMessage::default(),
        }
    }
}

/// A route to install with `proto` [`ROUTE_PROTOCOL`] in the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub destination: IpNet,
    pub gateway: IpAddr,
    /// Given for tunnel routes (together with `onlink`).
    pub oif: Option<u32>,
    pub onlink: bool,
}

/// A neighbour (ARP/NDP) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub address: IpAddr,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

/// A VXLAN forwarding-database entry: frames for `mac` go to `destination`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: Mac,
    pub destination: Option<IpAddr>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace; must be called on a
    /// tokio runtime (the connection runs as a task of it).
    pub fn connect() -> io::Result<Netlink> {
        let (mut connection, handle, _) =
            rtnetlink::proto::new_connection(netlink_sys::protocols::NETLINK_ROUTE)?;
        // Every acknowledgement, success or not, comes back, so each message of a
        // batch gets its own result.
        connection.set_forward_ack(true);
        let fd = connection.socket_mut().socket_mut().as_raw_fd();
        let batch_size = if force_receive_buffer(fd, RECEIVE_BUFFER).is_ok() {
            LARGE_BATCH
        } else {
            SMALL_BATCH
        };
        Ok(Netlink {
            handle,
            batch_size,
            connection: tokio::spawn(connection),
        })
    }

    /// Sends `messages` (each with `flags` | REQUEST | ACK) in batches and returns one
    /// result per message, in order.
    async fn batch(&self, messages: Vec<(RouteNetlinkMessage, u16)>) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(messages.len());
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let chunk: Vec<NetlinkMessage<RouteNetlinkMessage>> = messages
                .by_ref()
                .take(self.batch_size)
                .map(|(payload, flags)| {
                    let mut message = NetlinkMessage::from(payload);
                    message.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
                    message
                })
                .collect();
            let sent = chunk.len();
            let mut acks = Vec::with_capacity(sent);
            match self.handle.request_batch(chunk, SocketAddr::new(0, 0)) {
                Ok(mut responses) => {
                    while let Some(response) = responses.next().await {
                        match response.payload {
                            NetlinkPayload::Error(err) => acks.push(match err.code {
                                None => Ok(()),
                                Some(code) => Err(NetlinkError::Kernel(
                                    io::Error::from_raw_os_error(-code.get()),
                                )),
                            }),
                            other => acks.push(Err(NetlinkError::Unexpected(format!("{other:?}")))),
                        }
                    }
                }
                Err(_) => acks.extend((0..sent).map(|_| Err(NetlinkError::Closed))),
            }
            acks.resize_with(sent, || Err(NetlinkError::NoAck));
            results.extend(acks);
        }
        results
    }

    async fn one(&self, message: RouteNetlinkMessage, flags: u16) -> Result<()> {
        self.batch(vec![(message, flags)])
            .await
            .pop()
            .unwrap_or(Err(NetlinkError::NoAck))
    }

    /// A dump request; returns every message of the reply.
    async fn dump(&self, message: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut responses = self
            .handle
            .request(request, SocketAddr::new(0, 0))
            .map_err(|_| NetlinkError::Closed)?;
        let mut out = Vec::new();
        while let Some(response) = responses.next().await {
            match response.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(err) => {
                    if let Some(code) = err.code {
                        return Err(NetlinkError::Kernel(io::Error::from_raw_os_error(
                            -code.get(),
                        )));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    // ---- links ----

    pub async fn links(&self) -> Result<Vec<Link>> {
        let replies = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(&link)),
                _ => None,
            })
            .collect())
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.links().await?.into_iter().find(|l| l.name == name))
    }

    /// Creates a bridge, down: the caller sets its sysctls and then brings it up
    /// with [`Netlink::set_link`] (an MTU set that way also sticks when ports with a
    /// larger MTU join). Returns its index.
    pub async fn add_bridge(&self, name: &str, alias: &str) -> Result<u32> {
        // A MAC of its own: a bridge without one takes the lowest of its ports', so
        // deleting a pod could change it under every other pod of the node, whose
        // cached gateway MAC then goes nowhere until their ARP entries expire.
        let builder = LinkMessageBuilder::<LinkBridge>::new(name).address(bridge_mac().to_vec());
        self.add_link(builder.build()).await?;
        let index = self
            .link(name)
            .await?
            .map(|l| l.index)
            .ok_or(NetlinkError::Unexpected(format!(
                "{name} vanished right after it was created"
            )))?;
        // The kernel ignores IFLA_IFALIAS when creating a link; set it afterwards.
        let message = LinkUnspec::new_with_index(index).alias(alias).build();
        self.one(RouteNetlinkMessage::SetLink(message), 0).await?;
        Ok(index)
    }

    /// Creates a dummy interface, left down (addresses on it are local all the same:
    /// what the IPVS proxy needs its VIPs for). Returns its index.
    pub async fn add_dummy(&self, name: &str) -> Result<u32> {
        self.add_link(LinkMessageBuilder::<LinkDummy>::new(name).build())
            .await?;
        self.link(name)
            .await?
            .map(|l| l.index)
            .ok_or(NetlinkError::Unexpected(format!(
                "{name} vanished right after it was created"
            )))
    }

    pub async fn add_vxlan(&self, device: &VxlanDevice) -> Result<()> {
        let mut builder = LinkVxlan::new(&device.name, device.vni)
            .port(device.port)
            .learning(false)
            .address(device.mac.0.to_vec())
            .up();
        builder = match device.local {
            IpAddr::V4(ip) => builder.local(ip),
            IpAddr::V6(ip) => builder.local6(ip),
        };
        if let Some(mtu) = device.mtu {
            builder = builder.mtu(mtu);
        }
        self.add_link(builder.build()).await
    }

    pub async fn add_ip_tunnel(&self, device: &IpipDevice) -> Result<()> {
        let message = match device.local {
            IpAddr::V4(ip) => {
                let mut builder = LinkIpIp::new(&device.name).local(ip).up();
                if let Some(mtu) = device.mtu {
                    builder = builder.mtu(mtu);
                }
                builder.build()
            }
            IpAddr::V6(ip) => {
                let mut builder = LinkIp6Tnl::new(&device.name)
                    .local(ip)
                    .mode(IpProtocol::Ipv6)
                    .up();
                if let Some(mtu) = device.mtu {
                    builder = builder.mtu(mtu);
                }
                builder.build()
            }
        };
        self.add_link(message).await
    }

    async fn add_link(&self, message: LinkMessage) -> Result<()> {
        self.one(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
    }

    /// Sets the link up, and its MTU and MAC when given.
    pub async fn set_link(&self, index: u32, mtu: Option<u32>, mac: Option<Mac>) -> Result<()> {
        let mut builder = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = mac {
            builder = builder.address(mac.0.to_vec());
        }
        self.one(RouteNetlinkMessage::SetLink(builder.build()), 0)
            .await
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.one(RouteNetlinkMessage::DelLink(message), 0).await
    }

    // ---- addresses ----

    pub async fn addresses(&self) -> Result<Vec<Address>> {
        let replies = self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(address) => parse_address(&address),
                _ => None,
            })
            .collect())
    }

    /// Adds `address` to the link, marked with our protocol, without duplicate
    /// address detection (a gateway must be usable at once).
    pub async fn add_address(&self, index: u32, address: IpNet) -> Result<()> {
        let message = address_message(index, address, true);
        self.one(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
    }

    pub async fn delete_address(&self, index: u32, address: IpNet) -> Result<()> {
        let message = address_message(index, address, false);
        self.one(RouteNetlinkMessage::DelAddress(message), 0).await
    }

    // ---- routes ----

    /// The main table's routes with `protocol`, both families.
    pub async fn routes(&self, protocol: u8) -> Result<Vec<KernelRoute>> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            let replies = self.dump(RouteNetlinkMessage::GetRoute(request)).await?;
            routes.extend(replies.into_iter().filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(route) => parse_route(route),
                _ => None,
            }));
        }
        Ok(routes
            .into_iter()
            .filter(|route| route.protocol == protocol)
            .collect())
    }

    /// Adds or replaces each route; one result per route, in order.
    pub async fn replace_routes(&self, routes: &[RouteSpec]) -> Vec<Result<()>> {
        let messages = routes
            .iter()
            .map(|route| {
                (
                    RouteNetlinkMessage::NewRoute(route_message(route)),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
            })
            .collect();
        self.batch(messages).await
    }

    /// Deletes each route exactly as dumped; one result per route, in order.
    pub async fn delete_routes(&self, routes: &[KernelRoute]) -> Vec<Result<()>> {
        let messages = routes
            .iter()
            .map(|route| (RouteNetlinkMessage::DelRoute(route.raw.clone()), 0))
            .collect();
        self.batch(messages).await
    }

    // ---- neighbours and FDB ----

    /// IPv4 and IPv6 neighbour entries of one link.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = NeighbourMessage::default();
            request.header.family = family;
            let replies = self
                .dump(RouteNetlinkMessage::GetNeighbour(request))
                .await?;
            out.extend(replies.into_iter().filter_map(|reply| match reply {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => {
                    parse_neighbour(&n)
                }
                _ => None,
            }));
        }
        Ok(out)
    }

    /// The forwarding database of one (VXLAN) link.
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Bridge;
        let replies = self
            .dump(RouteNetlinkMessage::GetNeighbour(request))
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => parse_fdb(&n),
                _ => None,
            })
            .collect())
    }

    /// Adds or replaces permanent neighbour entries (`address → mac`) on `index`.
    pub async fn replace_neighbours(
        &self,
        index: u32,
        entries: &[(IpAddr, Mac)],
    ) -> Vec<Result<()>> {
        let messages = entries
            .iter()
            .map(|(address, mac)| {
                (
                    RouteNetlinkMessage::NewNeighbour(neighbour_message(
                        index,
                        *address,
                        Some(*mac),
                    )),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
            })
            .collect();
        self.batch(messages).await
    }

    pub async fn delete_neighbours(&self, index: u32, addresses: &[IpAddr]) -> Vec<Result<()>> {
        let messages = addresses
            .iter()
            .map(|address| {
                (
                    RouteNetlinkMessage::DelNeighbour(neighbour_message(index, *address, None)),
                    0,
                )
            })
            .collect();
        self.batch(messages).await
    }

    /// Adds or replaces FDB entries (`mac → destination`) on the VXLAN link `index`.
    pub async fn replace_fdb(&self, index: u32, entries: &[(Mac, IpAddr)]) -> Vec<Result<()>> {
        let messages = entries
            .iter()
            .map(|(mac, destination)| {
                (
                    RouteNetlinkMessage::NewNeighbour(fdb_message(index, *mac, Some(*destination))),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
            })
            .collect();
        self.batch(messages).await
    }

    pub async fn delete_fdb(&self, entries: &[FdbEntry]) -> Vec<Result<()>> {
        let messages = entries
            .iter()
            .map(|entry| {
                (
                    RouteNetlinkMessage::DelNeighbour(fdb_message(
                        entry.index,
                        entry.mac,
                        entry.destination,
                    )),
                    0,
                )
            })
            .collect();
        self.batch(messages).await
    }
}

/// `SO_RCVBUFFORCE` (root only): room for a whole batch of acknowledgements.
fn force_receive_buffer(fd: libc::c_int, bytes: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the connection; the option value is a
    // c_int that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn parse_link(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        kind: None,
        mtu: None,
        up: message.header.flags.contains(LinkFlags::Up),
        mac: None,
        alias: None,
        vxlan: None,
        tunnel_endpoints: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
            LinkAttribute::Address(bytes) => {
                link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac)
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.clone()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            link.vxlan = Some(parse_vxlan(data))
                        }
                        LinkInfo::Data(InfoData::IpTunnel(data)) => {
                            link.tunnel_endpoints = Some(parse_tunnel(data))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(data: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo::default();
    for item in data {
        match item {
            InfoVxlan::Id(vni) => info.vni = Some(*vni),
            InfoVxlan::Local(ip) => info.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => info.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(port) => info.port = Some(*port),
            InfoVxlan::Learning(learning) => info.learning = Some(*learning),
            _ => {}
        }
    }
    info
}

fn parse_tunnel(data: &[InfoIpTunnel]) -> (Option<IpAddr>, Option<IpAddr>) {
    let mut local = None;
    let mut remote = None;
    for item in data {
        match item {
            InfoIpTunnel::Local(ip) => local = Some(*ip),
            InfoIpTunnel::Remote(ip) => remote = Some(*ip),
            _ => {}
        }
    }
    (local, remote)
}

fn parse_address(message: &AddressMessage) -> Option<Address> {
    let mut ip = None;
    let mut local = None;
    let mut protocol = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Address(a) => ip = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Protocol(p) => protocol = Some(u8::from(*p)),
            _ => {}
        }
    }
    // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
    let ip = local.or(ip)?;
    Some(Address {
        index: message.header.index,
        address: IpNet::new(ip, message.header.prefix_len).ok()?,
        protocol,
    })
}

fn address_message(index: u32, address: IpNet, ours: bool) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.index = index;
    message.header.prefix_len = address.prefix_len();
    message.header.family = family(address.addr());
    message
        .attributes
        .push(AddressAttribute::Local(address.addr()));
    message
        .attributes
        .push(AddressAttribute::Address(address.addr()));
    if ours {
        if address.addr().is_ipv6() {
            message.header.flags = AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        message
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                ROUTE_PROTOCOL,
            )));
    }
    message
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(ip) => RouteAddress::Inet(ip),
        IpAddr::V6(ip) => RouteAddress::Inet6(ip),
    }
}

fn from_route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn route_message(route: &RouteSpec) -> RouteMessage {
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    header.address_family = family(route.destination.addr());
    header.destination_prefix_length = route.destination.prefix_len();
    header.table = RouteHeader::RT_TABLE_MAIN;
    header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    header.scope = RouteScope::Universe;
    header.kind = RouteType::Unicast;
    if route.onlink {
        header.flags = RouteFlags::Onlink;
    }
    message
        .attributes
        .push(RouteAttribute::Destination(route_address(
            route.destination.network(),
        )));
    message
        .attributes
        .push(RouteAttribute::Gateway(route_address(route.gateway)));
    if let Some(oif) = route.oif {
        message.attributes.push(RouteAttribute::Oif(oif));
    }
    message
}

fn parse_route(message: RouteMessage) -> Option<KernelRoute> {
    let header = &message.header;
    let mut table = u32::from(header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => destination = from_route_address(d),
            RouteAttribute::Gateway(g) => gateway = from_route_address(g),
            RouteAttribute::Oif(o) => oif = Some(*o),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || header.kind != RouteType::Unicast {
        return None;
    }
    let destination = match (destination, header.address_family) {
        (Some(ip), _) => IpNet::new(ip, header.destination_prefix_length).ok()?,
        (None, AddressFamily::Inet) => IpNet::new(IpAddr::from([0u8; 4]), 0).ok()?,
        (None, _) => IpNet::new(IpAddr::from([0u16; 8]), 0).ok()?,
    };
    Some(KernelRoute {
        destination,
        gateway,
        oif,
        onlink: header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(header.protocol),
        raw: message,
    })
}

fn neighbour_message(index: u32, address: IpAddr, mac: Option<Mac>) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = family(address);
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.kind = RouteType::Unspec;
    message
        .attributes
        .push(NeighbourAttribute::Destination(match address {
            IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
            IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
        }));
    if let Some(mac) = mac {
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        message
            .attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::from(
                ROUTE_PROTOCOL,
            )));
    }
    message
}

fn fdb_message(index: u32, mac: Mac, destination: Option<IpAddr>) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message.header.kind = RouteType::Unspec;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    if let Some(destination) = destination {
        message
            .attributes
            .push(NeighbourAttribute::Destination(match destination {
                IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
                IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
            }));
    }
    message
}

fn neighbour_fields(message: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let mut address = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                address = Some(IpAddr::V4(*ip))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                address = Some(IpAddr::V6(*ip))
            }
            // FDB entries (family AF_BRIDGE) carry their destination as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                address = match bytes.len() {
                    4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(bytes.as_slice())
                        .ok()
                        .map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac)
            }
            _ => {}
        }
    }
    (address, mac)
}

fn parse_neighbour(message: &NeighbourMessage) -> Option<Neighbour> {
    let (address, mac) = neighbour_fields(message);
    Some(Neighbour {
        index: message.header.ifindex,
        address: address?,
        mac,
        permanent: message.header.state == NeighbourState::Permanent,
    })
}

fn parse_fdb(message: &NeighbourMessage) -> Option<FdbEntry> {
    let (destination, mac) = neighbour_fields(message);
    Some(FdbEntry {
        index: message.header.ifindex,
        mac: mac?,
        destination,
    })
}

/// A random, locally administered unicast MAC (random from the kernel; a clock
/// fallback, as any distinct value will do).
fn bridge_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into `mac`.
    let filled = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if filled != mac.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        mac.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

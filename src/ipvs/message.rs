//! IPVS generic-netlink messages: the [`GenlFamily`] payload and the requests built
//! from the model ([`super::reply`] reads the answers). Pure: bytes in, bytes out, so
//! every encoding is tested without a kernel ([`super::socket`] does the I/O).

use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{DecodeError, Emitable, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use super::attr::{Attr, Attrs, cmd, dest, svc};
use super::model::{Destination, Family, Service, ServiceKey, Timeouts};
use super::value;

/// The family's name and version as the kernel registers them.
pub const FAMILY_NAME: &str = "IPVS";
pub const FAMILY_VERSION: u8 = 1;

/// The kernel takes scheduler names of at most 15 bytes (`IP_VS_SCHEDNAME_MAXLEN`
/// with its NUL) and persistence engine names of at most 16.
const SCHED_NAME_MAX: usize = 15;
const PE_NAME_MAX: usize = 16;

/// `IPVS_CMD_*`, numbered as in the kernel's enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    NewService = 1,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    NewDaemon,
    DelDaemon,
    GetDaemon,
    SetConfig,
    GetConfig,
    SetInfo,
    GetInfo,
    Zero,
    Flush,
}

impl Command {
    const ALL: [Command; 17] = [
        Command::NewService,
        Command::SetService,
        Command::DelService,
        Command::GetService,
        Command::NewDest,
        Command::SetDest,
        Command::DelDest,
        Command::GetDest,
        Command::NewDaemon,
        Command::DelDaemon,
        Command::GetDaemon,
        Command::SetConfig,
        Command::GetConfig,
        Command::SetInfo,
        Command::GetInfo,
        Command::Zero,
        Command::Flush,
    ];

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(number: u8) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.number() == number)
    }
}

/// One IPVS message: a command and its first-level attributes. Received messages
/// keep nested attributes as raw values; [`super::reply`] decodes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub command: Command,
    pub attrs: Vec<Attr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.command.number()
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let command = Command::from_number(header.cmd)
            .ok_or_else(|| DecodeError::from(format!("unknown IPVS command {}", header.cmd)))?;
        let attrs = Attrs::parse(buf, "IPVS message")?;
        Ok(IpvsMessage {
            command,
            attrs: attrs.into_values(),
        })
    }
}

impl IpvsMessage {
    fn new(command: Command, attrs: Vec<Attr>) -> IpvsMessage {
        IpvsMessage { command, attrs }
    }

    /// The first level of a received message as an attribute reader.
    pub fn top(&self) -> Attrs<'_> {
        Attrs::from_entries(
            self.attrs
                .iter()
                .filter_map(|a| match a {
                    Attr::Value(kind, value) => Some((*kind, value.as_slice())),
                    Attr::Nest(..) => None,
                })
                .collect(),
        )
    }

    pub fn add_service(service: &Service) -> Result<IpvsMessage, EncodeError> {
        Ok(Self::new(Command::NewService, vec![service_attr(service)?]))
    }

    pub fn edit_service(service: &Service) -> Result<IpvsMessage, EncodeError> {
        Ok(Self::new(Command::SetService, vec![service_attr(service)?]))
    }

    pub fn delete_service(key: &ServiceKey) -> IpvsMessage {
        Self::new(Command::DelService, vec![key_attr(key)])
    }

    pub fn get_service(key: &ServiceKey) -> IpvsMessage {
        Self::new(Command::GetService, vec![key_attr(key)])
    }

    /// Sent as a dump: every service.
    pub fn dump_services() -> IpvsMessage {
        Self::new(Command::GetService, Vec::new())
    }

    pub fn add_destination(key: &ServiceKey, destination: &Destination) -> IpvsMessage {
        Self::new(
            Command::NewDest,
            vec![key_attr(key), destination_attr(destination)],
        )
    }

    pub fn edit_destination(key: &ServiceKey, destination: &Destination) -> IpvsMessage {
        Self::new(
            Command::SetDest,
            vec![key_attr(key), destination_attr(destination)],
        )
    }

    pub fn delete_destination(key: &ServiceKey, address: IpAddr, port: u16) -> IpvsMessage {
        let identity = Attr::nest(cmd::DEST, destination_identity(address, port));
        Self::new(Command::DelDest, vec![key_attr(key), identity])
    }

    /// Sent as a dump: the destinations of one service.
    pub fn dump_destinations(key: &ServiceKey) -> IpvsMessage {
        Self::new(Command::GetDest, vec![key_attr(key)])
    }

    /// Timeouts left `None` are not sent, so the kernel keeps them.
    pub fn set_timeouts(timeouts: &Timeouts) -> IpvsMessage {
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let attrs = [
            (cmd::TIMEOUT_TCP, timeouts.tcp),
            (cmd::TIMEOUT_TCP_FIN, timeouts.tcp_fin),
            (cmd::TIMEOUT_UDP, timeouts.udp),
        ]
        .into_iter()
        .filter_map(|(id, timeout)| timeout.map(|t| Attr::u32(id, seconds(t))))
        .collect();
        Self::new(Command::SetConfig, attrs)
    }

    pub fn get_timeouts() -> IpvsMessage {
        Self::new(Command::GetConfig, Vec::new())
    }

    pub fn get_info() -> IpvsMessage {
        Self::new(Command::GetInfo, Vec::new())
    }

    /// Removes every service (and so every destination).
    pub fn flush() -> IpvsMessage {
        Self::new(Command::Flush, Vec::new())
    }

    /// Zeroes the counters of one service, or of all.
    pub fn zero(key: Option<&ServiceKey>) -> IpvsMessage {
        Self::new(Command::Zero, key.map(key_attr).into_iter().collect())
    }
}

/// A model value the kernel cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("scheduler name `{0}` is longer than {SCHED_NAME_MAX} bytes")]
    SchedulerName(String),
    #[error("persistence engine name `{0}` is longer than {PE_NAME_MAX} bytes")]
    PersistenceEngine(String),
    #[error("netmask /{netmask} is longer than an {family} address")]
    Netmask { netmask: u8, family: Family },
}

/// The attributes that identify a service.
fn key_attrs(key: &ServiceKey) -> Vec<Attr> {
    match *key {
        ServiceKey::Address {
            protocol,
            address,
            port,
        } => vec![
            Attr::u16(svc::AF, value::af(Family::of(address))),
            Attr::u16(svc::PROTOCOL, value::protocol_number(protocol)),
            Attr::address(svc::ADDR, address),
            Attr::port(svc::PORT, port),
        ],
        ServiceKey::Fwmark { family, mark } => vec![
            Attr::u16(svc::AF, value::af(family)),
            Attr::u32(svc::FWMARK, mark),
        ],
    }
}

fn key_attr(key: &ServiceKey) -> Attr {
    Attr::nest(cmd::SERVICE, key_attrs(key))
}

/// The whole service, as NEW_SERVICE and SET_SERVICE need it, in `ipvsadm`'s order.
fn service_attr(service: &Service) -> Result<Attr, EncodeError> {
    if service.scheduler.len() > SCHED_NAME_MAX {
        return Err(EncodeError::SchedulerName(service.scheduler.clone()));
    }
    let family = service.key.family();
    if service.netmask > family.max_prefix() {
        return Err(EncodeError::Netmask {
            netmask: service.netmask,
            family,
        });
    }
    let mut attrs = key_attrs(&service.key);
    attrs.push(Attr::string(svc::SCHED_NAME, &service.scheduler));
    if let Some(engine) = &service.persistence_engine {
        if engine.len() > PE_NAME_MAX {
            return Err(EncodeError::PersistenceEngine(engine.clone()));
        }
        attrs.push(Attr::string(svc::PE_NAME, engine));
    }
    // struct ip_vs_flags { flags, mask } in host order: the mask says which flags
    // this sets (all, as ipvsadm does). HASHED is the kernel's own; it keeps it on an
    // edit.
    let bits = value::flag_bits(&service.flags) & !value::IP_VS_SVC_F_HASHED;
    let mut flags = bits.to_ne_bytes().to_vec();
    flags.extend_from_slice(&u32::MAX.to_ne_bytes());
    attrs.push(Attr::Value(svc::FLAGS.kind, flags));
    attrs.push(Attr::u32(svc::TIMEOUT, service.timeout));
    let netmask = value::netmask_bytes(family, service.netmask);
    attrs.push(Attr::Value(svc::NETMASK.kind, netmask.to_vec()));
    Ok(Attr::nest(cmd::SERVICE, attrs))
}

/// The whole destination, as NEW_DEST and SET_DEST need it, in `ipvsadm`'s order.
/// The tunnel attributes go with every method (zero but for tunnels), as `ipvsadm`
/// sends them.
fn destination_attr(destination: &Destination) -> Attr {
    let (method, tunnel_type, tunnel_port, tunnel_flags) = value::forwarding(destination.forward);
    let mut attrs = destination_identity(destination.address, destination.port);
    attrs.extend([
        Attr::u32(dest::FWD_METHOD, method),
        Attr::u32(dest::WEIGHT, destination.weight),
        Attr::u8(dest::TUN_TYPE, tunnel_type),
        Attr::port(dest::TUN_PORT, tunnel_port),
        Attr::u16(dest::TUN_FLAGS, tunnel_flags),
        Attr::u32(dest::U_THRESH, destination.upper_threshold),
        Attr::u32(dest::L_THRESH, destination.lower_threshold),
    ]);
    Attr::nest(cmd::DEST, attrs)
}

/// What identifies a destination within its service. The family goes along: a
/// tunnelled destination may differ from its service's.
fn destination_identity(address: IpAddr, port: u16) -> Vec<Attr> {
    vec![
        Attr::u16(dest::ADDR_FAMILY, value::af(Family::of(address))),
        Attr::address(dest::ADDR, address),
        Attr::port(dest::PORT, port),
    ]
}

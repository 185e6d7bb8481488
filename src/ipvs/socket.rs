//! The socket adapter: one generic-netlink socket, the IPVS family id resolved once,
//! and one blocking request/reply exchange per operation. Requests are acknowledged
//! (`NLM_F_ACK`), so every change either succeeds or returns the kernel's errno
//! together with what was being done; dumps are read to their end however many
//! datagrams the kernel splits them into.
//!
//! Calls block for the microseconds the kernel takes; async callers run them on a
//! blocking thread.

use std::fmt::Debug;
use std::net::IpAddr;

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload, ParseableParametrized,
};
use netlink_packet_generic::constants::GENL_ID_CTRL;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::error::IpvsError;
use super::message::{FAMILY_NAME, IpvsMessage};
use super::model::{
    Destination, DestinationStatus, Info, Service, ServiceKey, ServiceStatus, SocketText, Timeouts,
};
use super::reply;

/// Why one exchange failed, before it is told what was being done.
#[derive(Debug)]
enum Failure {
    Errno(i32),
    Io(std::io::Error),
    Decode(DecodeError),
}

impl Failure {
    fn into_error(self, action: String) -> IpvsError {
        match self {
            Failure::Errno(errno) => IpvsError::Kernel { action, errno },
            Failure::Io(source) => IpvsError::Io { action, source },
            Failure::Decode(source) => IpvsError::Decode { action, source },
        }
    }
}

/// A handle on the kernel's IPVS tables (of the network namespace it was opened in).
pub struct Ipvs {
    socket: Socket,
    family_id: u16,
    sequence: u32,
}

impl Ipvs {
    /// Opens a socket and resolves the IPVS family, which loads the `ip_vs` module
    /// when it is available; [`IpvsError::Unavailable`] when the kernel has none.
    pub fn new() -> Result<Ipvs, IpvsError> {
        let action = || format!("resolving generic netlink family {FAMILY_NAME}");
        let socket = open().map_err(|e| Failure::Io(e).into_error(action()))?;
        let mut ipvs = Ipvs {
            socket,
            family_id: 0,
            sequence: 0,
        };
        let request = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.to_string())],
        };
        let replies = match ipvs.exchange(request, GENL_ID_CTRL, false) {
            Ok(replies) => replies,
            Err(Failure::Errno(libc::ENOENT)) => return Err(IpvsError::Unavailable),
            Err(failure) => return Err(failure.into_error(action())),
        };
        ipvs.family_id = replies
            .iter()
            .flat_map(|reply| &reply.nlas)
            .find_map(|nla| match nla {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| {
                Failure::Decode(DecodeError::from("CTRL_ATTR_FAMILY_ID missing"))
                    .into_error(action())
            })?;
        Ok(ipvs)
    }

    /// The id the kernel gave the IPVS family.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// Every service with its destinations and counters: one dump of the services,
    /// then one of each service's destinations (the kernel dumps both only
    /// separately), so a change made meanwhile may show half.
    pub fn services(&mut self) -> Result<Vec<ServiceStatus>, IpvsError> {
        let action = || "listing IPVS services".to_string();
        let replies = self.ipvs(IpvsMessage::dump_services(), true, action)?;
        let mut services = Vec::with_capacity(replies.len());
        for reply in &replies {
            let (service, stats) =
                reply::read_service(reply).map_err(|e| Failure::Decode(e).into_error(action()))?;
            let destinations = self.destinations(&service.key)?;
            services.push(ServiceStatus {
                service,
                stats,
                destinations,
            });
        }
        Ok(services)
    }

    /// One service with its destinations, `None` when the kernel has no such service.
    pub fn service(&mut self, key: &ServiceKey) -> Result<Option<ServiceStatus>, IpvsError> {
        let action = || format!("reading service {key}");
        let replies = match self.ipvs(IpvsMessage::get_service(key), false, action) {
            Ok(replies) => replies,
            Err(error) if error.errno() == Some(libc::ESRCH) => return Ok(None),
            Err(error) => return Err(error),
        };
        let Some(reply) = replies.first() else {
            return Ok(None);
        };
        let (service, stats) =
            reply::read_service(reply).map_err(|e| Failure::Decode(e).into_error(action()))?;
        let destinations = self.destinations(key)?;
        Ok(Some(ServiceStatus {
            service,
            stats,
            destinations,
        }))
    }

    pub fn add_service(&mut self, service: &Service) -> Result<(), IpvsError> {
        let action = || format!("adding service {}", service.key);
        let request = IpvsMessage::add_service(service).map_err(|source| IpvsError::Encode {
            action: action(),
            source,
        })?;
        self.ipvs(request, false, action).map(drop)
    }

    /// Changes scheduler, flags, timeout and netmask of an existing service.
    pub fn edit_service(&mut self, service: &Service) -> Result<(), IpvsError> {
        let action = || format!("editing service {}", service.key);
        let request = IpvsMessage::edit_service(service).map_err(|source| IpvsError::Encode {
            action: action(),
            source,
        })?;
        self.ipvs(request, false, action).map(drop)
    }

    /// Deletes a service and its destinations.
    pub fn delete_service(&mut self, key: &ServiceKey) -> Result<(), IpvsError> {
        let action = || format!("deleting service {key}");
        self.ipvs(IpvsMessage::delete_service(key), false, action)
            .map(drop)
    }

    /// The destinations of a service (none when the service does not exist: the
    /// kernel's dump does not tell the two apart).
    pub fn destinations(&mut self, key: &ServiceKey) -> Result<Vec<DestinationStatus>, IpvsError> {
        let action = || format!("listing destinations of {key}");
        let replies = self.ipvs(IpvsMessage::dump_destinations(key), true, action)?;
        replies
            .iter()
            .map(|reply| reply::read_destination(reply, key.family()))
            .collect::<Result<_, _>>()
            .map_err(|e| Failure::Decode(e).into_error(action()))
    }

    pub fn add_destination(
        &mut self,
        key: &ServiceKey,
        destination: &Destination,
    ) -> Result<(), IpvsError> {
        let action = || format!("adding destination {destination} to {key}");
        self.ipvs(
            IpvsMessage::add_destination(key, destination),
            false,
            action,
        )
        .map(drop)
    }

    /// Changes forwarding method, weight and thresholds of an existing destination.
    pub fn edit_destination(
        &mut self,
        key: &ServiceKey,
        destination: &Destination,
    ) -> Result<(), IpvsError> {
        let action = || format!("editing destination {destination} of {key}");
        self.ipvs(
            IpvsMessage::edit_destination(key, destination),
            false,
            action,
        )
        .map(drop)
    }

    pub fn delete_destination(
        &mut self,
        key: &ServiceKey,
        address: IpAddr,
        port: u16,
    ) -> Result<(), IpvsError> {
        let action = || {
            format!(
                "deleting destination {} from {key}",
                SocketText(address, port)
            )
        };
        self.ipvs(
            IpvsMessage::delete_destination(key, address, port),
            false,
            action,
        )
        .map(drop)
    }

    /// Deletes every service and destination.
    pub fn flush(&mut self) -> Result<(), IpvsError> {
        self.ipvs(IpvsMessage::flush(), false, || "flushing IPVS".to_string())
            .map(drop)
    }

    /// Zeroes the counters of one service, or of every service.
    pub fn zero(&mut self, key: Option<&ServiceKey>) -> Result<(), IpvsError> {
        let action = || match key {
            Some(key) => format!("zeroing the counters of {key}"),
            None => "zeroing the IPVS counters".to_string(),
        };
        self.ipvs(IpvsMessage::zero(key), false, action).map(drop)
    }

    pub fn timeouts(&mut self) -> Result<Timeouts, IpvsError> {
        let action = || "reading IPVS timeouts".to_string();
        let replies = self.ipvs(IpvsMessage::get_timeouts(), false, action)?;
        let reply = replies.first().ok_or_else(|| no_reply(action()))?;
        reply::read_timeouts(reply).map_err(|e| Failure::Decode(e).into_error(action()))
    }

    /// Sets the timeouts given; `None` ones stay as they are.
    pub fn set_timeouts(&mut self, timeouts: &Timeouts) -> Result<(), IpvsError> {
        let action = || "setting IPVS timeouts".to_string();
        self.ipvs(IpvsMessage::set_timeouts(timeouts), false, action)
            .map(drop)
    }

    pub fn info(&mut self) -> Result<Info, IpvsError> {
        let action = || "reading IPVS version".to_string();
        let replies = self.ipvs(IpvsMessage::get_info(), false, action)?;
        let reply = replies.first().ok_or_else(|| no_reply(action()))?;
        reply::read_info(reply).map_err(|e| Failure::Decode(e).into_error(action()))
    }

    /// One IPVS request; `action` says what it does, for errors.
    fn ipvs(
        &mut self,
        request: IpvsMessage,
        dump: bool,
        action: impl Fn() -> String,
    ) -> Result<Vec<IpvsMessage>, IpvsError> {
        let family = self.family_id;
        self.exchange(request, family, dump)
            .map_err(|failure| failure.into_error(action()))
    }

    /// Sends one request and reads its replies: up to the acknowledgement, or for a
    /// dump up to its end. Replies to earlier requests (another sequence number) are
    /// skipped.
    fn exchange<F>(&mut self, payload: F, family: u16, dump: bool) -> Result<Vec<F>, Failure>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + Debug,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let request = encode_request(payload, family, sequence, dump);
        self.socket.send(&request, 0).map_err(Failure::Io)?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(Failure::Io)?;
            if read_datagram(&datagram, sequence, &mut replies)? == Progress::Complete {
                return Ok(replies);
            }
        }
    }
}

/// Whether a request's answer is complete.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Pending,
    Complete,
}

/// Reads the messages of one datagram that answer request `sequence` into `replies`:
/// complete at the acknowledgement or at the end of a dump, an error when the kernel
/// refused. Messages of other requests are skipped without being decoded.
fn read_datagram<F>(
    datagram: &[u8],
    sequence: u32,
    replies: &mut Vec<F>,
) -> Result<Progress, Failure>
where
    F: ParseableParametrized<[u8], GenlHeader> + Debug,
{
    let mut offset = 0;
    while offset < datagram.len() {
        let bytes = &datagram[offset..];
        let header = NetlinkBuffer::new_checked(bytes).map_err(Failure::Decode)?;
        let length = header.length() as usize;
        offset += length.next_multiple_of(4);
        if header.sequence_number() != sequence {
            continue;
        }
        let message = NetlinkMessage::<GenlMessage<F>>::deserialize(&bytes[..length])
            .map_err(Failure::Decode)?;
        match message.payload {
            NetlinkPayload::InnerMessage(reply) => replies.push(reply.payload),
            NetlinkPayload::Error(error) => {
                return match error.code {
                    None => Ok(Progress::Complete),
                    Some(code) => Err(Failure::Errno(-code.get())),
                };
            }
            NetlinkPayload::Done(done) => {
                return match done.code {
                    0 => Ok(Progress::Complete),
                    code => Err(Failure::Errno(-code)),
                };
            }
            NetlinkPayload::Overrun(_) => {
                return Err(Failure::Decode(DecodeError::from(
                    "the kernel reported an overrun",
                )));
            }
            _ => {}
        }
    }
    Ok(Progress::Pending)
}

/// A generic-netlink socket connected to the kernel.
fn open() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_GENERIC)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// The bytes of one request: acknowledged, or a dump (which ends with NLMSG_DONE
/// instead; the kernel sends no acknowledgement after a dump).
pub(crate) fn encode_request<F>(payload: F, family: u16, sequence: u32, dump: bool) -> Vec<u8>
where
    F: GenlFamily + Emitable + Debug,
{
    let mut genl = GenlMessage::from_payload(payload);
    genl.set_resolved_family_id(family);
    let mut message = NetlinkMessage::from(genl);
    message.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
    message.header.sequence_number = sequence;
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

fn no_reply(action: String) -> IpvsError {
    Failure::Decode(DecodeError::from("no reply")).into_error(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_acknowledged_and_dumps_are_not() {
        let flush = encode_request(IpvsMessage::flush(), 32, 7, false);
        let mut expected = Vec::new();
        expected.extend_from_slice(&20u32.to_ne_bytes());
        expected.extend_from_slice(&32u16.to_ne_bytes()); // the family id
        expected.extend_from_slice(&0x0005u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_ACK
        expected.extend_from_slice(&7u32.to_ne_bytes());
        expected.extend_from_slice(&0u32.to_ne_bytes());
        expected.extend_from_slice(&[17, 1, 0, 0]); // IPVS_CMD_FLUSH, version 1
        assert_eq!(flush, expected);

        let dump = encode_request(IpvsMessage::dump_services(), 32, 8, true);
        assert_eq!(dump[6..8], 0x0301u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_DUMP
    }

    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const NLM_F_MULTI: u16 = 2;
    /// A GET_INFO reply (IPVS 1.2.1, 4096 entries), as the kernel sent it.
    const INFO: [u8; 20] = [
        0x0e, 1, 0, 0, 8, 0, 1, 0, 1, 2, 1, 0, 8, 0, 2, 0, 0, 0x10, 0, 0,
    ];

    /// One netlink message: nlmsghdr (to port 0) and payload, padded.
    fn nlmsg(kind: u16, flags: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    /// NLMSG_ERROR with `code` (0: an acknowledgement) for a request of `sequence`.
    fn error(sequence: u32, code: i32) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend(nlmsg(32, 5, sequence, &[]));
        nlmsg(NLMSG_ERROR, 0, sequence, &payload)
    }

    fn read(datagram: &[u8], replies: &mut Vec<IpvsMessage>) -> Result<Progress, Failure> {
        read_datagram(datagram, 5, replies)
    }

    #[test]
    fn a_dump_is_read_across_datagrams_to_its_end() {
        let mut replies = Vec::new();
        let first = [
            nlmsg(32, NLM_F_MULTI, 5, &INFO),
            nlmsg(32, NLM_F_MULTI, 5, &INFO),
        ]
        .concat();
        assert_eq!(read(&first, &mut replies).ok(), Some(Progress::Pending));
        let done = nlmsg(NLMSG_DONE, NLM_F_MULTI, 5, &0i32.to_ne_bytes());
        assert_eq!(read(&done, &mut replies).ok(), Some(Progress::Complete));
        assert_eq!(replies.len(), 2);
        let info = reply::read_info(&replies[1]).expect("info");
        assert_eq!(info.version, (1, 2, 1));
    }

    #[test]
    fn a_reply_is_complete_at_its_acknowledgement() {
        let mut replies = Vec::new();
        let datagram = [nlmsg(32, 0, 5, &INFO), error(5, 0)].concat();
        assert_eq!(read(&datagram, &mut replies).ok(), Some(Progress::Complete));
        assert_eq!(replies.len(), 1);
    }

    #[test]
    fn a_refusal_is_its_errno() {
        let mut replies = Vec::new();
        match read(&error(5, -libc::EEXIST), &mut replies) {
            Err(Failure::Errno(errno)) => assert_eq!(errno, libc::EEXIST),
            other => panic!("{other:?}"),
        }
        // A dump can end in an error too.
        let done = nlmsg(NLMSG_DONE, NLM_F_MULTI, 5, &(-libc::EPERM).to_ne_bytes());
        match read(&done, &mut replies) {
            Err(Failure::Errno(errno)) => assert_eq!(errno, libc::EPERM),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_to_other_requests_are_skipped_undecoded() {
        let mut replies = Vec::new();
        let datagram = [nlmsg(32, 0, 4, &[0xff; 9]), error(5, 0)].concat();
        assert_eq!(read(&datagram, &mut replies).ok(), Some(Progress::Complete));
        assert!(replies.is_empty());
    }

    #[test]
    fn truncated_or_unreadable_messages_are_errors() {
        let mut replies = Vec::new();
        let mut truncated = nlmsg(32, 0, 5, &INFO);
        truncated.truncate(30);
        assert!(matches!(
            read(&truncated, &mut replies),
            Err(Failure::Decode(_))
        ));
        // Shorter than a genlmsghdr.
        let short = nlmsg(32, 0, 5, &[0x0e, 1]);
        assert!(matches!(
            read(&short, &mut replies),
            Err(Failure::Decode(_))
        ));
        // An IPVS command this module does not know.
        let unknown = nlmsg(32, 0, 5, &[99, 1, 0, 0]);
        assert!(matches!(
            read(&unknown, &mut replies),
            Err(Failure::Decode(_))
        ));
    }
}

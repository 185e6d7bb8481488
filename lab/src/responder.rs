//! `kubewire lab responder` (hidden): the process inside each lab Pod. It listens on
//! every declared containerPort — TCP, UDP, and SCTP where the kernel has it — on all
//! addresses, and answers each connection (TCP/SCTP: at once on accept) or datagram
//! (UDP: to its sender) with one line `namespace/name from <peer-ip>`. The first
//! word is the contract's answer (who answered); the peer address is what this pod
//! saw, so tests can check source NAT. It prints `ready` on stdout once every port is
//! bound, and fails if a TCP or UDP port cannot be bound.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use super::topology::{PodPort, Protocol};

#[derive(Debug, clap::Args)]
pub struct ResponderArgs {
    /// The pod's `namespace/name`, the answer's first word.
    #[arg(long)]
    pub pod: String,
    /// A port to answer on, `80/TCP`, `53/UDP` or `9/SCTP` (repeatable).
    #[arg(long = "port", value_parser = parse_port)]
    pub ports: Vec<PodPort>,
}

pub fn parse_port(text: &str) -> Result<PodPort, String> {
    let (port, protocol) = text.split_once('/').unwrap_or((text, "TCP"));
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{text}`: not a port like 80/TCP"))?;
    let protocol = Protocol::parse(&protocol.to_ascii_uppercase())
        .ok_or_else(|| format!("`{text}`: protocol is TCP, UDP or SCTP"))?;
    Ok(PodPort { port, protocol })
}

pub fn format_port(port: &PodPort) -> String {
    format!("{}/{}", port.port, port.protocol.as_str())
}

/// The answer line for a peer.
pub fn answer(pod: &str, peer: IpAddr) -> String {
    format!("{pod} from {}\n", peer.to_canonical())
}

/// Splits an answer into (who answered, the peer address they saw).
pub fn parse_answer(text: &str) -> Option<(&str, Option<IpAddr>)> {
    let mut words = text.split_whitespace();
    let who = words.next()?;
    let peer = match (words.next(), words.next()) {
        (Some("from"), Some(ip)) => ip.parse().ok(),
        _ => None,
    };
    Some((who, peer))
}

pub async fn run(args: ResponderArgs) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for port in &args.ports {
        let pod = args.pod.clone();
        match port.protocol {
            Protocol::Tcp => {
                let listener = bind_tcp(port.port)
                    .await
                    .with_context(|| format!("binding {}", format_port(port)))?;
                tasks.spawn(serve_tcp(listener, pod));
            }
            Protocol::Udp => {
                let socket = bind_udp(port.port)
                    .await
                    .with_context(|| format!("binding {}", format_port(port)))?;
                tasks.spawn(serve_udp(socket, pod));
            }
            Protocol::Sctp => match sctp_listener(port.port) {
                Ok(listener) => {
                    std::thread::spawn(move || serve_sctp(listener, pod));
                }
                Err(err) => eprintln!(
                    "responder {}: {}: SCTP unavailable ({err}); not answering it",
                    args.pod,
                    format_port(port)
                ),
            },
        }
    }
    println!("ready");
    use std::io::Write;
    std::io::stdout().flush()?;
    match tasks.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(err)) => Err(anyhow::anyhow!("responder task failed: {err}")),
        None => std::future::pending().await,
    }
}

/// Both families on one socket where IPv6 exists, else IPv4 only.
async fn bind_tcp(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(listener) => Ok(listener),
        Err(_) => tokio::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await,
    }
}

async fn bind_udp(port: u16) -> std::io::Result<tokio::net::UdpSocket> {
    match tokio::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(socket) => Ok(socket),
        Err(_) => tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).await,
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, pod: String) -> anyhow::Result<()> {
    loop {
        let (mut stream, peer) = listener.accept().await?;
        let line = answer(&pod, peer.ip());
        tokio::spawn(async move {
            let _ = stream.write_all(line.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Answers each datagram from the address it was sent to. A socket bound to the
/// wildcard address would otherwise reply from whatever source the route to the peer
/// picks — for a node address reached from one of the node's own pods, the pod
/// bridge's gateway — and the client's connected socket would drop that answer.
async fn serve_udp(socket: tokio::net::UdpSocket, pod: String) -> anyhow::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let ipv6 = socket.local_addr()?.is_ipv6();
    if ipv6 {
        // Also reports IPv4 destinations, v4-mapped, on a dual-stack socket.
        setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    let mut buf = [0u8; 1500];
    loop {
        socket.readable().await?;
        let (peer, local) = match socket.try_io(tokio::io::Interest::READABLE, || {
            receive(socket.as_raw_fd(), &mut buf)
        }) {
            Ok(received) => received,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err.into()),
        };
        let line = answer(&pod, peer.ip());
        socket.writable().await?;
        let _ = socket.try_io(tokio::io::Interest::WRITABLE, || {
            reply(socket.as_raw_fd(), line.as_bytes(), peer, local)
        });
    }
}

/// One datagram: who sent it and the local address it was sent to.
fn receive(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(SocketAddr, Option<IpAddr>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    let mut space = nix::cmsg_space!(libc::in6_pktinfo, libc::in_pktinfo);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let message = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut space), MsgFlags::empty())?;
    let peer = message.address.and_then(|address| {
        if let Some(v4) = address.as_sockaddr_in() {
            Some(SocketAddr::V4((*v4).into()))
        } else {
            address
                .as_sockaddr_in6()
                .map(|v6| SocketAddr::V6((*v6).into()))
        }
    });
    let peer = peer.ok_or_else(|| std::io::Error::other("a datagram without a sender"))?;
    let mut local = None;
    for cmsg in message.cmsgs()? {
        match cmsg {
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            }
            _ => {}
        }
    }
    Ok((peer, local))
}

/// Sends `data` to `peer` from `local` (when known).
fn reply(
    fd: std::os::fd::RawFd,
    data: &[u8],
    peer: SocketAddr,
    local: Option<IpAddr>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
    let v6_info;
    let v4_info;
    let cmsgs: Vec<ControlMessage> = match local {
        Some(IpAddr::V6(address)) => {
            v6_info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: address.octets(),
                },
                ipi6_ifindex: 0,
            };
            vec![ControlMessage::Ipv6PacketInfo(&v6_info)]
        }
        Some(IpAddr::V4(address)) => {
            v4_info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(address).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            vec![ControlMessage::Ipv4PacketInfo(&v4_info)]
        }
        None => Vec::new(),
    };
    let to = SockaddrStorage::from(peer);
    Ok(sendmsg(
        fd,
        &[std::io::IoSlice::new(data)],
        &cmsgs,
        MsgFlags::empty(),
        Some(&to),
    )?)
}

/// An SCTP one-to-one socket behaves like TCP for accept/read/write, so std's TCP
/// types carry it.
fn sctp_listener(port: u16) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockProtocol, SockType, SockaddrIn, bind, listen, socket,
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
    )?;
    listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN))?;
    Ok(std::net::TcpListener::from(fd))
}

fn serve_sctp(listener: std::net::TcpListener, pod: String) {
    use std::io::Write;
    while let Ok((mut stream, peer)) = listener.accept() {
        let _ = stream.write_all(answer(&pod, peer.ip()).as_bytes());
    }
}

/// Connects an SCTP stream from the current thread's netns (see `netns::run_in`).
pub fn sctp_connect(to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, connect, socket,
    };
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )?;
    match to {
        SocketAddr::V4(v4) => connect(fd.as_raw_fd(), &SockaddrIn::from(v4))?,
        SocketAddr::V6(v6) => connect(fd.as_raw_fd(), &SockaddrIn6::from(v6))?,
    }
    // SAFETY: `fd` is a connected stream socket we own; ownership moves into the stream.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(
            parse_port("53/udp"),
            Ok(PodPort {
                port: 53,
                protocol: Protocol::Udp
            })
        );
        assert_eq!(parse_port("80").map(|p| p.protocol), Ok(Protocol::Tcp));
        assert!(parse_port("80/ICMP").is_err());
        assert!(parse_port("x/TCP").is_err());
    }

    #[test]
    fn answers_round_trip() {
        let mapped: IpAddr = "::ffff:10.244.1.5".parse().unwrap();
        let line = answer("ns/web", mapped);
        assert_eq!(line, "ns/web from 10.244.1.5\n");
        assert_eq!(
            parse_answer(&line),
            Some(("ns/web", Some("10.244.1.5".parse().unwrap())))
        );
        assert_eq!(parse_answer("ns/web\n"), Some(("ns/web", None)));
        assert_eq!(parse_answer(""), None);
    }

    #[tokio::test]
    async fn answers_tcp_and_udp_on_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = listener.local_addr().unwrap();
        tokio::spawn(serve_tcp(listener, "ns/a".into()));
        let udp_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp = udp_socket.local_addr().unwrap();
        tokio::spawn(serve_udp(udp_socket, "ns/a".into()));

        let mut stream = tokio::net::TcpStream::connect(tcp).await.unwrap();
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut text)
            .await
            .unwrap();
        assert_eq!(text, "ns/a from 127.0.0.1\n");

        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"?", udp).await.unwrap();
        let mut buf = [0u8; 100];
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ns/a from 127.0.0.1\n");
    }

    /// The route back to 127.0.0.1 prefers source 127.0.0.1, so a wildcard socket
    /// that let the route choose would answer a datagram sent to 127.0.0.2 from the
    /// wrong address, and the client's connected socket would never see it.
    #[tokio::test]
    async fn udp_answers_from_the_address_it_was_sent_to() {
        let socket = bind_udp(0).await.unwrap();
        let port = socket.local_addr().unwrap().port();
        tokio::spawn(serve_udp(socket, "ns/a".into()));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(("127.0.0.2", port)).await.unwrap();
        client.send(b"?").await.unwrap();
        let mut buf = [0u8; 100];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("no answer from 127.0.0.2")
            .unwrap();
        assert_eq!(&buf[..n], b"ns/a from 127.0.0.1\n");
    }
}

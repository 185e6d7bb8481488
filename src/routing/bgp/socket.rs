//! The kernel side of BGP's TCP connections: listening and connecting sockets with
//! TCP-MD5 signatures (RFC 2385, `TCP_MD5SIG`) and the TTL of eBGP sessions.
//!
//! Nothing else in the speaker makes a socket, so every socket option lives here.
//! MD5 keys are per neighbour address and must be on the listening socket before the
//! neighbour's SYN arrives, and on the connecting socket before `connect`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// `struct tcp_md5sig` of `linux/tcp.h` (libc has the option, not the struct).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; 80],
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets (or with `key` empty, removes) the MD5 key for segments to and from `peer`.
/// `socket_v6`: the socket is IPv6, where an IPv4 peer is written as a mapped
/// address.
pub fn set_md5(fd: RawFd, socket_v6: bool, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > 80 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 key longer than 80 bytes",
        ));
    }
    // SAFETY: all-zero is a valid value for this plain C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let storage = &mut sig.addr as *mut libc::sockaddr_storage;
    match (peer, socket_v6) {
        (IpAddr::V4(a), false) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *storage.cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
        }
        (IpAddr::V4(_), true) | (IpAddr::V6(_), _) => {
            let a = match peer {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *storage.cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

/// Sets the TTL (IPv4) or hop limit (IPv6) of the socket's packets.
pub fn set_ttl(fd: RawFd, v6: bool, ttl: u8) -> io::Result<()> {
    let value = libc::c_int::from(ttl);
    if v6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &value)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &value)
    }
}

/// A listening socket on `addr` with the MD5 keys of the neighbours that have
/// passwords. IPv6 listeners are IPv6-only, so one of each family can share a port.
pub fn listen(addr: SocketAddr, keys: &[(IpAddr, Vec<u8>)]) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        let s = TcpSocket::new_v6()?;
        setsockopt(s.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &1)?;
        s
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    for (peer, key) in keys {
        if peer.is_ipv6() == addr.is_ipv6() {
            set_md5(socket.as_raw_fd(), addr.is_ipv6(), *peer, key)?;
        }
    }
    socket.bind(addr)?;
    socket.listen(64)
}

/// How to open one outgoing session connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub peer: SocketAddr,
    pub local: Option<IpAddr>,
    pub md5_key: Option<Vec<u8>>,
    pub ttl: Option<u8>,
    pub timeout: Duration,
}

pub async fn connect(opts: &ConnectOptions) -> io::Result<TcpStream> {
    let v6 = opts.peer.is_ipv6();
    let socket = if v6 {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if let Some(key) = &opts.md5_key {
        set_md5(socket.as_raw_fd(), v6, opts.peer.ip(), key)?;
    }
    if let Some(ttl) = opts.ttl {
        set_ttl(socket.as_raw_fd(), v6, ttl)?;
    }
    if let Some(local) = opts.local {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    let stream = tokio::time::timeout(opts.timeout, socket.connect(opts.peer))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop_limit(fd: RawFd) -> i32 {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len point to live locals of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_UNICAST_HOPS,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        value
    }

    #[tokio::test]
    async fn connect_signs_and_sets_the_ttl() {
        let key = b"kubewire".to_vec();
        let localhost: IpAddr = "127.0.0.1".parse().expect("addr");
        let listener = listen(
            SocketAddr::new(localhost, 0),
            &[
                (localhost, key.clone()),
                ("::1".parse().expect("addr"), key.clone()),
            ],
        )
        .expect("listens");
        let opts = ConnectOptions {
            peer: listener.local_addr().expect("bound"),
            local: None,
            md5_key: Some(key),
            ttl: Some(7),
            timeout: Duration::from_secs(5),
        };
        let (stream, accepted) = tokio::join!(connect(&opts), listener.accept());
        let stream = stream.expect("signed connection to a listener with the same key");
        accepted.expect("accepted");
        assert_eq!(stream.ttl().expect("ttl"), 7);
    }

    #[tokio::test]
    async fn ipv6_hop_limit_and_mapped_md5_keys() {
        let socket = TcpSocket::new_v6().expect("socket");
        set_ttl(socket.as_raw_fd(), true, 9).expect("hop limit");
        assert_eq!(hop_limit(socket.as_raw_fd()), 9);
        // An IPv4 neighbour's key on an IPv6 socket is set as a mapped address.
        set_md5(
            socket.as_raw_fd(),
            true,
            "192.0.2.1".parse().expect("addr"),
            b"k",
        )
        .expect("mapped key");
        assert!(
            set_md5(
                socket.as_raw_fd(),
                true,
                "::1".parse().expect("addr"),
                &[0; 81]
            )
            .is_err()
        );
    }
}

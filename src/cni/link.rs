//! Kernel adapter: the node interface that carries an address, and its MTU, both
//! asked of the calling thread's network namespace.
//!
//! The MTU comes from `SIOCGIFMTU` rather than `/sys/class/net/<if>/mtu`: sysfs shows
//! the interfaces of the namespace that mounted it, which is not this one when the
//! agent entered a node namespace with `setns` alone (the lab can run agents that way).

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use anyhow::Context;
use nix::ifaddrs::getifaddrs;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The interface that has `ip` and that interface's MTU.
pub fn link_mtu_for_address(ip: IpAddr) -> anyhow::Result<(String, u32)> {
    let interface = interface_with_address(ip)?;
    let mtu = interface_mtu(&interface)?;
    Ok((interface, mtu))
}

/// The name of the interface that carries `ip`.
pub fn interface_with_address(ip: IpAddr) -> anyhow::Result<String> {
    let addresses = getifaddrs().context("listing interface addresses (getifaddrs)")?;
    for entry in addresses {
        let Some(address) = entry.address else {
            continue;
        };
        let found = match ip {
            IpAddr::V4(v4) => address.as_sockaddr_in().map(|a| a.ip()) == Some(v4),
            IpAddr::V6(v6) => address.as_sockaddr_in6().map(|a| a.ip()) == Some(v6),
        };
        if found {
            return Ok(entry.interface_name);
        }
    }
    anyhow::bail!("no interface of this network namespace has the node address {ip}")
}

/// The MTU of `interface`.
pub fn interface_mtu(interface: &str) -> anyhow::Result<u32> {
    let name = interface.as_bytes();
    anyhow::ensure!(
        !name.is_empty() && name.len() < libc::IFNAMSIZ && !name.contains(&0),
        "`{interface}` is not an interface name"
    );
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a socket to ask interface MTUs")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads ifr_name (NUL-terminated above, the rest is zero) and
    // writes ifru_mtu of the request we own; the socket is open for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the MTU of {interface} (SIOCGIFMTU)"));
    }
    // SAFETY: a successful SIOCGIFMTU filled the ifru_mtu member of the union.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).with_context(|| format!("{interface} reports MTU {mtu}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_mtu_and_carries_127_0_0_1() {
        assert_eq!(
            interface_with_address("127.0.0.1".parse().unwrap()).unwrap(),
            "lo"
        );
        assert!(interface_mtu("lo").unwrap() >= 1500);
    }

    #[test]
    fn missing_interface_and_address_are_errors() {
        let err = interface_mtu("kwnosuch0").unwrap_err();
        assert!(format!("{err:#}").contains("reading the MTU of kwnosuch0"));
        assert!(interface_mtu("a-name-that-is-too-long").is_err());
        let err = interface_with_address("192.0.2.77".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("192.0.2.77"), "{err}");
    }
}

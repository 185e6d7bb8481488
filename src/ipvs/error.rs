//! What can go wrong talking to IPVS, always with what was being done.

use netlink_packet_core::DecodeError;
use nix::errno::Errno;

use super::message::EncodeError;

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The kernel has no IPVS: not built, module missing, or not loadable here. The
    /// proxy falls back to nftables on this error.
    #[error("the kernel has no IPVS (generic netlink family \"IPVS\" not found)")]
    Unavailable,
    /// The kernel refused a request.
    #[error("{action}: {}", errno_text(*errno))]
    Kernel { action: String, errno: i32 },
    /// A model value the kernel cannot take; nothing was sent.
    #[error("{action}: {source}")]
    Encode { action: String, source: EncodeError },
    /// The kernel answered something this module cannot read.
    #[error("{action}: malformed reply: {source}")]
    Decode { action: String, source: DecodeError },
    #[error("{action}: netlink socket: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
}

impl IpvsError {
    /// The kernel's errno, for a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// `File exists (EEXIST)`: the message a person reads and the name a person searches.
pub fn errno_text(errno: i32) -> String {
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => format!("error {errno}"),
        known => format!("{} ({known:?})", known.desc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_name_the_errno() {
        let error = IpvsError::Kernel {
            action: "adding destination 10.0.0.5:80 to TCP 10.96.0.1:80".into(),
            errno: libc::EEXIST,
        };
        assert_eq!(
            error.to_string(),
            "adding destination 10.0.0.5:80 to TCP 10.96.0.1:80: File exists (EEXIST)"
        );
        assert_eq!(errno_text(libc::ESRCH), "No such process (ESRCH)");
        assert_eq!(errno_text(100_000), "error 100000");
    }
}

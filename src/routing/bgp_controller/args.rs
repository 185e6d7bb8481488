//! The BGP flags, with kube-router's names, and the typed configuration they
//! resolve to. Checked once at start: a flag that cannot work stops the agent
//! instead of running a half-configured speaker.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::annotations::decode_base64;

/// The BGP speaker's flags (part of the routing controller's).
#[derive(Clone, Debug, clap::Args)]
pub struct BgpArgs {
    /// Run the BGP speaker in the routing controller: iBGP between nodes, external
    /// peers, pod CIDR and service IP announcements.
    #[arg(long, env = "KUBEWIRE_RUN_BGP", default_value_t = false, action = clap::ArgAction::Set)]
    pub run_bgp: bool,
    /// The AS of every node without a `node.asn` annotation.
    #[arg(long, env = "KUBEWIRE_CLUSTER_ASN", default_value_t = 64512)]
    pub cluster_asn: u32,
    /// iBGP sessions between every pair of nodes of the same AS (route-reflector
    /// clients only peer with their servers).
    #[arg(long, env = "KUBEWIRE_NODES_FULL_MESH", default_value_t = true, action = clap::ArgAction::Set)]
    pub nodes_full_mesh: bool,
    /// External BGP peers of every node (comma-separated).
    #[arg(long, env = "KUBEWIRE_PEER_ROUTER_IPS", value_delimiter = ',')]
    pub peer_router_ips: Vec<IpAddr>,
    /// The AS of each `--peer-router-ips` entry, in the same order.
    #[arg(long, env = "KUBEWIRE_PEER_ROUTER_ASNS", value_delimiter = ',')]
    pub peer_router_asns: Vec<u32>,
    /// Base64-encoded TCP-MD5 passwords of the `--peer-router-ips`, in the same
    /// order (an empty entry: no password).
    #[arg(long, env = "KUBEWIRE_PEER_ROUTER_PASSWORDS", value_delimiter = ',')]
    pub peer_router_passwords: Vec<String>,
    /// The IP TTL of sessions with external peers more than one hop away.
    #[arg(long, env = "KUBEWIRE_PEER_ROUTER_MULTIHOP_TTL")]
    pub peer_router_multihop_ttl: Option<u8>,
    /// Graceful restart (RFC 4724): peers keep this node's routes while it restarts,
    /// and it keeps theirs while they do.
    #[arg(long, env = "KUBEWIRE_BGP_GRACEFUL_RESTART", default_value_t = false, action = clap::ArgAction::Set)]
    pub bgp_graceful_restart: bool,
    /// How long peers keep this node's routes while it restarts.
    #[arg(long, env = "KUBEWIRE_BGP_GRACEFUL_RESTART_TIME", default_value = "90s", value_parser = crate::agent::parse_duration)]
    pub bgp_graceful_restart_time: Duration,
    /// The BGP identifier; else the node's IPv4 address.
    #[arg(long, env = "KUBEWIRE_ROUTER_ID")]
    pub router_id: Option<Ipv4Addr>,
    /// Announce Services' ClusterIPs.
    #[arg(long, env = "KUBEWIRE_ADVERTISE_CLUSTER_IP", default_value_t = false, action = clap::ArgAction::Set)]
    pub advertise_cluster_ip: bool,
    /// Announce Services' externalIPs.
    #[arg(long, env = "KUBEWIRE_ADVERTISE_EXTERNAL_IP", default_value_t = false, action = clap::ArgAction::Set)]
    pub advertise_external_ip: bool,
    /// Announce LoadBalancer Services' ingress IPs.
    #[arg(long, env = "KUBEWIRE_ADVERTISE_LOADBALANCER_IP", default_value_t = false, action = clap::ArgAction::Set)]
    pub advertise_loadbalancer_ip: bool,
    /// Announce this node's pod CIDRs.
    #[arg(long, env = "KUBEWIRE_ADVERTISE_POD_CIDR", default_value_t = true, action = clap::ArgAction::Set)]
    pub advertise_pod_cidr: bool,
    /// The TCP port of BGP sessions (listening and connecting).
    #[arg(long, env = "KUBEWIRE_BGP_PORT", default_value_t = 179)]
    pub bgp_port: u16,
    /// The hold time offered to peers (0, or at least 3s).
    #[arg(long, env = "KUBEWIRE_BGP_HOLDTIME", default_value = "90s", value_parser = crate::agent::parse_duration)]
    pub bgp_holdtime: Duration,
    /// Where `kubewire routing peers` reads the speaker's sessions (HTTP, JSON).
    #[arg(
        long,
        env = "KUBEWIRE_BGP_STATUS_ADDR",
        default_value = "127.0.0.1:20246"
    )]
    pub bgp_status_addr: SocketAddr,
}

/// An external neighbour from flags or a Node's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalPeer {
    pub address: IpAddr,
    pub asn: u32,
    pub password: Option<String>,
}

/// Which service IPs are announced unless a Service says otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Advertise {
    pub pod_cidr: bool,
    pub cluster_ip: bool,
    pub external_ip: bool,
    pub loadbalancer_ip: bool,
}

/// The BGP speaker's resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpConfig {
    pub cluster_asn: u32,
    pub nodes_full_mesh: bool,
    pub peers: Vec<ExternalPeer>,
    pub multihop_ttl: Option<u8>,
    /// The restart time when graceful restart is on.
    pub graceful_restart: Option<Duration>,
    pub router_id: Option<Ipv4Addr>,
    pub advertise: Advertise,
    pub port: u16,
    pub hold_time: u16,
    pub status_addr: SocketAddr,
}

impl BgpArgs {
    /// The configuration, or `None` without `--run-bgp`; an error names the flag
    /// that cannot work.
    pub fn config(&self) -> anyhow::Result<Option<BgpConfig>> {
        if !self.run_bgp {
            return Ok(None);
        }
        if self.cluster_asn == 0 {
            anyhow::bail!("--cluster-asn: AS 0 is reserved");
        }
        if self.peer_router_asns.len() != self.peer_router_ips.len() {
            anyhow::bail!(
                "--peer-router-asns: {} AS numbers for {} --peer-router-ips",
                self.peer_router_asns.len(),
                self.peer_router_ips.len()
            );
        }
        if !self.peer_router_passwords.is_empty()
            && self.peer_router_passwords.len() != self.peer_router_ips.len()
        {
            anyhow::bail!(
                "--peer-router-passwords: {} passwords for {} --peer-router-ips",
                self.peer_router_passwords.len(),
                self.peer_router_ips.len()
            );
        }
        let mut peers = vec![];
        for (i, (address, asn)) in self
            .peer_router_ips
            .iter()
            .zip(&self.peer_router_asns)
            .enumerate()
        {
            if *asn == 0 {
                anyhow::bail!("--peer-router-asns: peer {address} has AS 0");
            }
            let password = match self.peer_router_passwords.get(i).map(String::as_str) {
                None | Some("") => None,
                Some(text) => Some(decode_base64(text).map_err(|e| {
                    anyhow::anyhow!("--peer-router-passwords: entry {}: {e}", i + 1)
                })?),
            };
            peers.push(ExternalPeer {
                address: *address,
                asn: *asn,
                password,
            });
        }
        let hold_time = u16::try_from(self.bgp_holdtime.as_secs())
            .ok()
            .filter(|h| *h == 0 || *h >= 3)
            .ok_or_else(|| anyhow::anyhow!("--bgp-holdtime: must be 0 or 3s to 65535s"))?;
        Ok(Some(BgpConfig {
            cluster_asn: self.cluster_asn,
            nodes_full_mesh: self.nodes_full_mesh,
            peers,
            multihop_ttl: self.peer_router_multihop_ttl,
            graceful_restart: self
                .bgp_graceful_restart
                .then_some(self.bgp_graceful_restart_time),
            router_id: self.router_id,
            advertise: Advertise {
                pod_cidr: self.advertise_pod_cidr,
                cluster_ip: self.advertise_cluster_ip,
                external_ip: self.advertise_external_ip,
                loadbalancer_ip: self.advertise_loadbalancer_ip,
            },
            port: self.bgp_port,
            hold_time,
            status_addr: self.bgp_status_addr,
        }))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bgp: BgpArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<Option<BgpConfig>> {
        let cli = Cli::try_parse_from(std::iter::once("kubewire").chain(args.iter().copied()))?;
        cli.bgp.config()
    }

    #[test]
    fn flags_resolve_and_mismatches_are_refused() {
        assert_eq!(config(&[]).expect("parses"), None);
        let c = config(&[
            "--run-bgp=true",
            "--cluster-asn=4200000000",
            "--peer-router-ips=192.0.2.1,192.0.2.2",
            "--peer-router-asns=65001,65002",
            "--peer-router-passwords=c2VjcmV0,",
            "--bgp-graceful-restart=true",
        ])
        .expect("parses")
        .expect("enabled");
        assert_eq!(c.cluster_asn, 4_200_000_000);
        assert_eq!(c.peers[0].password.as_deref(), Some("secret"));
        assert_eq!(c.peers[1].password, None);
        assert_eq!(c.graceful_restart, Some(Duration::from_secs(90)));
        assert!(c.advertise.pod_cidr && !c.advertise.loadbalancer_ip);
        for bad in [
            &["--run-bgp=true", "--cluster-asn=0"][..],
            &["--run-bgp=true", "--peer-router-ips=192.0.2.1"],
            &[
                "--run-bgp=true",
                "--peer-router-ips=192.0.2.1",
                "--peer-router-asns=1",
                "--peer-router-passwords=a,b",
            ],
            &[
                "--run-bgp=true",
                "--peer-router-ips=192.0.2.1",
                "--peer-router-asns=1",
                "--peer-router-passwords=!!!",
            ],
            &["--run-bgp=true", "--bgp-holdtime=2s"],
        ] {
            assert!(config(bad).is_err(), "{bad:?}");
        }
    }
}

use std::path::PathBuf;

use crate::network::NetworkConfig;

/// The CNI controller's own flags (the pod MTU is the node network's `--mtu`).
#[derive(Clone, Debug, clap::Args)]
pub struct CniArgs {
    /// Where the conflist is written.
    #[arg(long, env = "KUBEWIRE_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The conflist's file name in --cni-conf-dir. Runtimes load the first
    /// configuration file by name; `05-` sorts before the usual `10-…` ones.
    #[arg(
        long,
        env = "KUBEWIRE_CNI_CONF_FILE",
        default_value = "05-kubewire.conflist"
    )]
    pub cni_conf_file: String,
    /// Move every other network configuration in --cni-conf-dir aside (renamed
    /// `NAME.kubewire.bak`, which no runtime loads), so the runtime cannot pick another
    /// one; `kubewire cleanup` puts them back. Off for chaining set-ups (Multus).
    #[arg(long, env = "KUBEWIRE_CNI_EXCLUSIVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub cni_exclusive: bool,
    /// Where host-local keeps its leases (the conflist's ipam.dataDir); else the
    /// plugin's default, /var/lib/cni/networks.
    #[arg(long, env = "KUBEWIRE_CNI_IPAM_DATA_DIR")]
    pub cni_ipam_data_dir: Option<PathBuf>,
}

impl CniArgs {
    pub fn config(&self, network: &NetworkConfig) -> CniConfig {
        CniConfig {
            conf_path: self.cni_conf_dir.join(&self.cni_conf_file),
            exclusive: self.cni_exclusive,
            ipam_data_dir: self.cni_ipam_data_dir.clone(),
            network: network.clone(),
        }
    }
}

/// What the CNI controller writes, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniConfig {
    /// The conflist's path: --cni-conf-dir / --cni-conf-file.
    pub conf_path: PathBuf,
    /// Whether other configurations in its directory are moved aside (--cni-exclusive).
    pub exclusive: bool,
    /// host-local's `dataDir`, when not its default.
    pub ipam_data_dir: Option<PathBuf>,
    pub network: NetworkConfig,
}

use std::path::PathBuf;

use crate::network::NetworkConfig;

/// The CNI controller's own flags (the pod MTU is the node network's `--mtu`).
#[derive(Clone, Debug, clap::Args)]
pub struct CniArgs {
    /// Where the conflist is written.
    #[arg(long, env = "KUBEWIRE_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The conflist's file name in --cni-conf-dir.
    #[arg(
        long,
        env = "KUBEWIRE_CNI_CONF_FILE",
        default_value = "10-kubewire.conflist"
    )]
    pub cni_conf_file: String,
    /// Where host-local keeps its leases (the conflist's ipam.dataDir); else the
    /// plugin's default, /var/lib/cni/networks.
    #[arg(long, env = "KUBEWIRE_CNI_IPAM_DATA_DIR")]
    pub cni_ipam_data_dir: Option<PathBuf>,
}

impl CniArgs {
    pub fn config(&self, network: &NetworkConfig) -> CniConfig {
        CniConfig {
            conf_path: self.cni_conf_dir.join(&self.cni_conf_file),
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
    /// host-local's `dataDir`, when not its default.
    pub ipam_data_dir: Option<PathBuf>,
    pub network: NetworkConfig,
}

use std::path::PathBuf;

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
    /// The pod MTU; else the node interface's MTU minus the overlay overhead.
    #[arg(long, env = "KUBEWIRE_MTU")]
    pub mtu: Option<u32>,
    /// Where host-local keeps its leases (the conflist's ipam.dataDir); else the
    /// plugin's default, /var/lib/cni/networks.
    #[arg(long, env = "KUBEWIRE_CNI_IPAM_DATA_DIR")]
    pub cni_ipam_data_dir: Option<PathBuf>,
}

impl CniArgs {
    /// The conflist's path: --cni-conf-dir / --cni-conf-file.
    pub fn conf_path(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.cni_conf_file)
    }
}

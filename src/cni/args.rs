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
}

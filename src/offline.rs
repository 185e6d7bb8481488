//! What the offline verbs (`plan`, `matrix`, `explain`, `trace`) share: reading the
//! cluster from `--manifests`, `--format`, and printing the answer.

/// `--format text|json` of the offline verbs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// `--manifests PATH`, shared by every offline verb.
#[derive(Clone, Debug, clap::Args)]
pub struct ManifestsArg {
    /// A YAML file, or a directory read recursively (*.yaml, *.yml).
    #[arg(long, env = "KUBEWIRE_MANIFESTS")]
    pub manifests: std::path::PathBuf,
}

impl ManifestsArg {
    pub fn load(&self) -> anyhow::Result<crate::cache::Snapshot> {
        Ok(crate::cache::manifests::load_snapshot(&self.manifests)?)
    }
}

/// `--manifests PATH --node NAME`, shared by the offline verbs that answer for one
/// node.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeManifestsArg {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    #[arg(long)]
    pub node: String,
}

/// Prints an offline verb's answer, or passes on its error untouched.
pub fn print(answer: anyhow::Result<String>) -> anyhow::Result<()> {
    print!("{}", answer?);
    Ok(())
}

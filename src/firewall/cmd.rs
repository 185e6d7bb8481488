use super::FirewallInput;
use crate::offline::{self, ManifestsArg, NodeManifestsArg, OutputFormat};

/// The firewall's offline verbs.
#[derive(Debug, clap::Subcommand)]
pub enum FirewallCommand {
    /// The nftables ruleset this node would apply, as `nft -f` text.
    Plan(PlanArgs),
    /// The reachability the policies imply, for every ordered pair of pods.
    Matrix(MatrixArgs),
    /// The verdict for one connection and which policies and rules decided it.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: NodeManifestsArg,
    #[command(flatten)]
    pub firewall: super::FirewallArgs,
}

#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub manifests: ManifestsArg,
    /// NS/POD or an IP address.
    #[arg(long)]
    pub from: String,
    /// NS/POD or an IP address.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

pub async fn dispatch(cmd: FirewallCommand) -> anyhow::Result<()> {
    match cmd {
        FirewallCommand::Plan(args) => offline::print(plan(&args)),
        FirewallCommand::Matrix(args) => offline::print(matrix(&args)),
        FirewallCommand::Explain(args) => offline::print(explain(&args)),
    }
}

/// Loads the manifests and reads them as firewall input, reporting on stderr every
/// policy or field that had to be left out.
fn load(manifests: &ManifestsArg) -> anyhow::Result<FirewallInput> {
    let input = FirewallInput::from_snapshot(&manifests.load()?);
    for error in &input.errors {
        eprintln!("kubewire: warning: {error}");
    }
    Ok(input)
}

/// `firewall plan`, as the text it prints: the transaction that replaces the table.
pub fn plan(args: &PlanArgs) -> anyhow::Result<String> {
    let node = &args.target.node;
    let input = load(&args.target.manifests)?;
    let options = args.firewall.config(node);
    if !input.cluster.nodes.contains_key(node)
        && !input
            .cluster
            .pods
            .iter()
            .any(|p| p.node.as_deref() == Some(node.as_str()))
    {
        eprintln!("kubewire: warning: no Node {node} and no pod scheduled to it");
    }
    let ruleset = super::compile::compile(&input, &options);
    let mut text = super::render::full(&ruleset).text();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// `firewall matrix`, as the text it prints.
pub fn matrix(args: &MatrixArgs) -> anyhow::Result<String> {
    let input = load(&args.manifests)?;
    let matrix = super::matrix::compute(&input);
    Ok(match args.format {
        OutputFormat::Json => format!("{}\n", serde_json::to_string(&matrix)?),
        OutputFormat::Text => super::matrix::render_text(&matrix),
    })
}

/// `firewall explain`, as the text it prints.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<String> {
    let input = load(&args.manifests)?;
    let explanation =
        super::explain::explain(&input, &args.from, &args.to, args.port, &args.protocol)?;
    Ok(match args.format {
        OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(&explanation)?),
        OutputFormat::Text => super::explain::render_text(&explanation),
    })
}

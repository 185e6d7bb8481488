use super::model::{Protocol, ServiceMap};
use super::services;
use crate::offline::{self, NodeManifestsArg, OutputFormat};

/// The service proxy's offline verbs.
#[derive(Debug, clap::Subcommand)]
pub enum ProxyCommand {
    /// The IPVS virtual/real servers and nftables rules this node would program.
    Plan(PlanArgs),
    /// What this node's proxy does to one packet.
    Trace(TraceArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: NodeManifestsArg,
    /// `auto` plans for nftables (a plan does not look at this machine's kernel).
    #[arg(long, value_enum, default_value_t = super::ProxyBackend::Nftables)]
    pub backend: super::ProxyBackend,
    /// Service CIDRs when the manifests have no ServiceCIDR objects.
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: Vec<ipnet::IpNet>,
    #[command(flatten)]
    pub map: super::args::ServiceMapArgs,
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub target: NodeManifestsArg,
    #[arg(long)]
    pub from: std::net::IpAddr,
    #[arg(long)]
    pub to: std::net::IpAddr,
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.0/12")]
    pub service_cluster_ip_range: Vec<ipnet::IpNet>,
    #[command(flatten)]
    pub map: super::args::ServiceMapArgs,
}

pub async fn dispatch(cmd: ProxyCommand) -> anyhow::Result<()> {
    match cmd {
        ProxyCommand::Plan(args) => offline::print(plan(&args)),
        ProxyCommand::Trace(args) => offline::print(trace(&args)),
    }
}

/// Loads the manifests into `node`'s service map, reporting on stderr every object or
/// field that had to be left out.
fn load(
    target: &NodeManifestsArg,
    service_cidrs: &[ipnet::IpNet],
    args: &super::args::ServiceMapArgs,
) -> anyhow::Result<ServiceMap> {
    let node = target.node.as_str();
    let snapshot = target.manifests.load()?;
    if snapshot.node(node).is_none() {
        eprintln!("kubewire: warning: no Node {node}: it has no addresses, so no NodePorts");
    }
    let map = services::build_with(
        &snapshot,
        &services::Options {
            node: node.to_string(),
            default_service_cidrs: service_cidrs.to_vec(),
            nodeport_addresses: args.nodeport_addresses.clone(),
            masquerade_all: args.masquerade_all,
            local_addresses: Vec::new(),
        },
    );
    for error in &map.errors {
        eprintln!("kubewire: warning: {error}");
    }
    Ok(map)
}

/// `proxy plan`, as the text it prints: for nftables, the transaction that replaces
/// the table.
pub fn plan(args: &PlanArgs) -> anyhow::Result<String> {
    let map = load(&args.target, &args.service_cluster_ip_range, &args.map)?;
    if args.backend == super::ProxyBackend::Ipvs {
        let (desired, problems) = super::ipvs::compile::compile(&map);
        for problem in &problems {
            eprintln!("kubewire: warning: {problem}");
        }
        return Ok(super::ipvs::compile::render(&desired, &map.node));
    }
    let (ruleset, problems) = super::nftables::compile::compile(&map);
    for problem in &problems {
        eprintln!("kubewire: warning: {problem}");
    }
    let mut text = format!(
        "# node {}: {} service ports, {} map elements\n",
        map.node,
        map.ports.len(),
        ruleset.element_count()
    );
    text.push_str(&super::nftables::ruleset::full(&ruleset).text());
    Ok(text)
}

/// `proxy trace`, as the text it prints.
pub fn trace(args: &TraceArgs) -> anyhow::Result<String> {
    let protocol = Protocol::parse(&args.protocol.to_ascii_uppercase()).ok_or_else(|| {
        anyhow::anyhow!("--protocol {}: expected TCP, UDP or SCTP", args.protocol)
    })?;
    let map = load(&args.target, &args.service_cluster_ip_range, &args.map)?;
    let trace = super::trace::trace(&map, args.from, args.to, args.port, protocol);
    // The answer is checked against the compiled nftables rules themselves.
    let compiled = super::trace::compiled(&map, args.from, args.to, args.port, protocol)
        .map_err(|e| anyhow::anyhow!("tracing the compiled nftables rules: {e}"))?;
    if !super::trace::agrees(&trace.verdict, &compiled) {
        anyhow::bail!(
            "the compiled nftables rules disagree: they say {}, the reference says {}",
            serde_json::to_string(&compiled)?,
            serde_json::to_string(&trace.verdict)?
        );
    }
    Ok(match args.format {
        OutputFormat::Json => format!("{}\n", serde_json::to_string(&trace.verdict)?),
        OutputFormat::Text => super::trace::render_text(&trace),
    })
}

//! `kubewire routing run|plan`.

use std::fmt::Write;

use ipnet::IpNet;
use serde::Serialize;

use super::bgp_controller::peers::PeerKind;
use super::bgp_controller::{self, BgpPlan, status};
use super::compile::{self, HostFacts};
use super::model::{RoutingPlan, Tunnel};
use super::ruleset;
use crate::network::NetworkArgs;
use crate::offline::{self, NodeManifestsArg, OutputFormat};

/// The routing controller's offline verbs.
#[derive(Debug, clap::Subcommand)]
pub enum RoutingCommand {
    /// The bridge, routes, tunnels and nftables rules this node would install, and
    /// its BGP peers and the prefixes it would announce (marked as not running
    /// without `--run-bgp`, the speaker's switch in the agent).
    Plan(Box<RoutingPlanArgs>),
    /// The running agent's BGP sessions: state, uptime, prefixes received,
    /// accepted and advertised (read from its `--bgp-status-addr`).
    Peers(RoutingPeersArgs),
}

#[derive(Debug, clap::Args)]
pub struct RoutingPeersArgs {
    /// The agent's BGP status endpoint (its `--bgp-status-addr`).
    #[arg(
        long,
        env = "KUBEWIRE_BGP_STATUS_ADDR",
        default_value = "127.0.0.1:20246"
    )]
    pub bgp_status_addr: std::net::SocketAddr,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct RoutingPlanArgs {
    #[command(flatten)]
    pub target: NodeManifestsArg,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub routing: super::RoutingArgs,
    /// A subnet the node reaches without a router (repeatable). The agent reads these
    /// from the kernel; without the flag the plan assumes the /24 (IPv4) and /64
    /// (IPv6) around each node address.
    #[arg(long = "local-subnet", value_delimiter = ',')]
    pub local_subnets: Vec<IpNet>,
    /// The MTU of the node's underlay interface (the agent reads it from the kernel).
    #[arg(long, default_value_t = 1500)]
    pub underlay_mtu: u32,
}

pub async fn dispatch(cmd: RoutingCommand) -> anyhow::Result<()> {
    match cmd {
        RoutingCommand::Plan(args) => offline::print(plan(&args)),
        RoutingCommand::Peers(args) => {
            let body = status::fetch(args.bgp_status_addr, "/bgp/peers").await?;
            let peers: Vec<status::PeerView> = serde_json::from_str(&body)
                .map_err(|e| anyhow::anyhow!("the agent's answer is not a peer list: {e}"))?;
            match args.format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&peers)?),
                OutputFormat::Text => print!("{}", status::render_peers(&peers)),
            }
            Ok(())
        }
    }
}

/// The BGP part of `routing plan`, as JSON.
#[derive(Serialize)]
struct BgpPlanOutput {
    /// Whether the agent, run with these flags, runs the speaker (`--run-bgp`).
    running: bool,
    asn: u32,
    router_id: std::net::Ipv4Addr,
    route_reflector: bool,
    peers: Vec<BgpPeerOutput>,
    announce: std::collections::BTreeMap<IpNet, String>,
    import_deny: Vec<IpNet>,
}

#[derive(Serialize)]
struct BgpPeerOutput {
    address: std::net::IpAddr,
    asn: u32,
    kind: PeerKind,
    node: Option<String>,
    password: bool,
    multihop_ttl: Option<u8>,
}

fn bgp_output(plan: &BgpPlan, running: bool) -> BgpPlanOutput {
    let id = &plan.speaker.identity;
    BgpPlanOutput {
        running,
        asn: id.asn,
        router_id: id.router_id,
        route_reflector: id.route_reflector,
        peers: plan
            .speaker
            .peers
            .iter()
            .map(|p| {
                let (kind, node) = plan
                    .speaker
                    .kinds
                    .get(&p.address)
                    .cloned()
                    .unwrap_or((PeerKind::Flag, None));
                BgpPeerOutput {
                    address: p.address,
                    asn: p.asn,
                    kind,
                    node,
                    password: p.password.is_some(),
                    multihop_ttl: p.multihop_ttl,
                }
            })
            .collect(),
        announce: plan.announce_why.clone(),
        import_deny: plan.speaker.import.deny.clone(),
    }
}

fn render_bgp(bgp: &BgpSection) -> String {
    let bgp = match bgp {
        BgpSection::Planned(bgp) => bgp,
        BgpSection::Unplannable(why) => {
            return format!("\nbgp (not running: --run-bgp=false)\n  cannot plan: {why}\n");
        }
    };
    let mut out = String::new();
    if !bgp.running {
        out.push_str("\nbgp (not running: the agent runs the speaker with --run-bgp)");
    } else {
        out.push_str("\nbgp");
    }
    let _ = writeln!(
        out,
        "\n  AS {} router id {}{}",
        bgp.asn,
        bgp.router_id,
        if bgp.route_reflector {
            " (route reflector)"
        } else {
            ""
        }
    );
    for p in &bgp.peers {
        let kind = serde_json::to_value(p.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  peer {} AS {} ({kind}{}){}{}",
            p.address,
            p.asn,
            p.node
                .as_ref()
                .map(|n| format!(", Node {n}"))
                .unwrap_or_default(),
            if p.password { " md5" } else { "" },
            p.multihop_ttl
                .map(|t| format!(" multihop ttl {t}"))
                .unwrap_or_default()
        );
    }
    for (prefix, why) in &bgp.announce {
        let _ = writeln!(out, "  announce {prefix}    # {why}");
    }
    let _ = writeln!(out, "  never imported: {}", join(&bgp.import_deny));
    out
}

/// The BGP part of the plan: what the speaker would announce, or why that cannot
/// be planned (only when the agent would not run it).
#[derive(Serialize)]
#[serde(untagged)]
enum BgpSection {
    Planned(BgpPlanOutput),
    Unplannable(String),
}

/// The JSON form: the plan plus the nftables table as `nft -f` text.
#[derive(Serialize)]
struct PlanOutput<'a> {
    #[serde(flatten)]
    plan: &'a RoutingPlan,
    nftables_ruleset: String,
    bgp: BgpSection,
}

/// `routing plan` output.
pub fn plan(args: &RoutingPlanArgs) -> anyhow::Result<String> {
    let snapshot = args.target.manifests.load()?;
    let options = args.routing.config(&args.network.config());
    let node_ips = compile::node_ips(&snapshot, &args.target.node, &options.network)?;
    let assumed = args.local_subnets.is_empty();
    let local_subnets = if assumed {
        node_ips
            .iter()
            .filter_map(|ip| IpNet::new(*ip, if ip.is_ipv4() { 24 } else { 64 }).ok())
            .map(|net| net.trunc())
            .collect()
    } else {
        args.local_subnets.clone()
    };
    let host = HostFacts {
        local_subnets,
        underlay_mtu: Some(args.underlay_mtu),
    };
    let mut plan = compile::compile(&snapshot, &args.target.node, &options, &host)?;
    // The BGP paths are planned whether or not the agent would run the speaker, so
    // an operator sees what turning it on would announce; a plan that cannot be made
    // fails the command only when the speaker is meant to run.
    let running = args.routing.bgp.run_bgp;
    let bgp = match plan_bgp(args, &snapshot, &mut plan, &options.network.service_cidrs) {
        Ok(bgp) => BgpSection::Planned(bgp_output(&bgp, running)),
        Err(e) if running => return Err(e),
        Err(e) => BgpSection::Unplannable(e.to_string()),
    };
    Ok(match args.format {
        OutputFormat::Json => {
            let output = PlanOutput {
                plan: &plan,
                nftables_ruleset: ruleset::render(&plan.nftables),
                bgp,
            };
            serde_json::to_string_pretty(&output)? + "\n"
        }
        OutputFormat::Text => {
            let text = render_text(&plan, assumed);
            // The BGP section goes before the nftables table.
            match text.split_once("\nnftables\n") {
                Some((head, tail)) => {
                    format!("{head}{}\nnftables\n{tail}", render_bgp(&bgp))
                }
                None => text + &render_bgp(&bgp),
            }
        }
    })
}

/// The BGP speaker's plan as if `--run-bgp` were given.
fn plan_bgp(
    args: &RoutingPlanArgs,
    snapshot: &crate::cache::Snapshot,
    plan: &mut RoutingPlan,
    service_cidrs: &[IpNet],
) -> anyhow::Result<BgpPlan> {
    let mut bgp_args = args.routing.bgp.clone();
    bgp_args.run_bgp = true;
    let config = bgp_args
        .config()?
        .ok_or_else(|| anyhow::anyhow!("BGP: no configuration"))?;
    let mut problems = vec![];
    let bgp = bgp_controller::plan(&config, snapshot, plan, service_cidrs, &mut problems)
        .map_err(|e| anyhow::anyhow!("BGP: {e}"))?;
    plan.problems.extend(problems);
    Ok(bgp)
}

fn join<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_string();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plan for people: one section per kind of kernel object, in `ip` syntax.
pub fn render_text(plan: &RoutingPlan, subnets_assumed: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node {} ({})", plan.node, join(&plan.node_ips));
    let _ = writeln!(out, "pod CIDRs: {}", join(&plan.pod_cidrs));
    let _ = writeln!(
        out,
        "local subnets: {}{}",
        join(&plan.local_subnets),
        if subnets_assumed {
            " (assumed; pass --local-subnet)"
        } else {
            ""
        }
    );

    let bridge = &plan.bridge;
    let mtu = bridge.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
    let _ = writeln!(out, "\nbridge {}{mtu}", bridge.name);
    for address in &bridge.addresses {
        let _ = writeln!(out, "  address {address}");
    }

    out.push_str("\nsysctls\n");
    for sysctl in &plan.sysctls {
        let optional = if sysctl.optional { " (optional)" } else { "" };
        let _ = writeln!(out, "  {} = {}{optional}", sysctl.key, sysctl.value);
    }

    out.push_str("\ntunnels\n");
    match &plan.tunnel {
        None => out.push_str("  none (--overlay-type=none)\n"),
        Some(Tunnel::Vxlan(vxlan)) => {
            let mtu = vxlan.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} vxlan id {} dstport {} local {} nolearning address {}{mtu}",
                vxlan.name, vxlan.vni, vxlan.port, vxlan.local, vxlan.mac
            );
            for address in &vxlan.addresses {
                let _ = writeln!(out, "    address {address}");
            }
            for peer in &plan.vxlan_peers {
                let _ = writeln!(
                    out,
                    "  peer {}: fdb {} dst {} self permanent",
                    peer.node, peer.mac, peer.underlay
                );
                for vtep in &peer.vtep_addresses {
                    let _ = writeln!(out, "    neigh {vtep} lladdr {} nud permanent", peer.mac);
                }
            }
        }
        Some(Tunnel::Ipip(ipip)) => {
            for device in &ipip.devices {
                let kind = if device.local.is_ipv4() {
                    "ipip"
                } else {
                    "ip6tnl mode ip6ip6"
                };
                let mtu = device.mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
                let _ = writeln!(out, "  {} {kind} local {}{mtu}", device.name, device.local);
            }
        }
    }

    out.push_str("\nroutes\n");
    if plan.routes.is_empty() {
        out.push_str("  none\n");
    }
    for route in &plan.routes {
        let _ = writeln!(out, "  {route}    # {}, {}", route.source, route.path);
    }
    if !plan.unrouted.is_empty() {
        out.push_str("\nnot routed\n");
        for unrouted in &plan.unrouted {
            let _ = writeln!(
                out,
                "  {} ({}): {}",
                unrouted.destination, unrouted.source, unrouted.reason
            );
        }
    }
    if !plan.problems.is_empty() {
        out.push_str("\nproblems\n");
        for problem in &plan.problems {
            let _ = writeln!(out, "  {problem}");
        }
    }
    out.push_str("\nnftables\n");
    out.push_str(&ruleset::render(&plan.nftables));
    out
}

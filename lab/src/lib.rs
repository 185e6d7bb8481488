//! The lab: a real multi-node cluster network on this machine — a netns per node and
//! per pod, an underlay through a fabric netns, the embedded API server, one agent per
//! node — and probes that measure who reaches whom with real packets.
//!
//! [`topology`] plans it (pure), [`lifecycle`] builds and removes it, recording every
//! namespace and process in [`state`]; [`netns`] is the only module that touches
//! namespaces, [`process`] the only one that starts or signals processes.
//! [`pods`] starts and stops one pod (netns, CNI, responder, status) — for the
//! manifests' pods during `lab up`, and afterwards for [`kubelet`], which keeps the
//! lab's pods equal to the API server's Pods as they are created and deleted.
//! [`control_plane`] (the API server and the kubelet) and [`responder`] are the hidden
//! subcommands the lab runs in the background; [`probe`] measures and [`report`]
//! prints for people. [`external`], [`external_objects`] and [`agent_identity`] put
//! the lab on an existing
//! API server instead of the embedded one (`lab up --apiserver-kubeconfig`).

pub mod agent_identity;
pub mod agents;
pub mod apiserver;
pub mod binaries;
pub mod bird;
pub mod cache_memory;
pub mod cni_exec;
pub mod control_plane;
pub mod external;
pub mod external_objects;
pub mod harness;
pub mod kubelet;
pub mod lifecycle;
pub mod netns;
pub mod pods;
pub mod probe;
pub mod process;
pub mod report;
pub mod responder;
pub mod state;
pub mod supervise;
pub mod synthetic;
pub mod topology;

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Service;
use kube::Api;

use kubewire::offline::OutputFormat;
use lifecycle::{LabArg, UpArgs};
use probe::{ProbeOptions, ProbeReport};
use state::{LabState, LabStateFile};

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build the lab from manifests and return once every agent is healthy.
    Up(UpArgs),
    /// Remove the lab: every namespace, process and file it made (also after a crash).
    Down(LabArg),
    /// Measure pod-to-pod reachability (and Services) with real packets.
    Probe(ProbeArgs),
    /// Connect from a pod, a node or the external netns to one address and print the
    /// answer: who answered and the source address they saw.
    Connect(ConnectArgs),
    /// up, probe, down in one command.
    Run(RunArgs),
    /// Print the path of a kubeconfig for the lab's API server (usable from the host).
    Kubeconfig(LabArg),
    /// Nodes, pods, addresses and agent health.
    Status(LabArg),
    /// Only the embedded API server, in the foreground, seeded from manifests.
    Apiserver(apiserver::ApiServerArgs),
    /// The process inside each lab pod (started by `lab up`).
    #[command(hide = true)]
    Responder(responder::ResponderArgs),
    /// The lab's API server and its fabric relay (started by `lab up`).
    #[command(hide = true)]
    ControlPlane(control_plane::ControlPlaneArgs),
    /// The agent's watch cache alone and its memory (for the memory benchmark).
    #[command(hide = true)]
    CacheMemory(cache_memory::CacheMemoryArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub lab: LabArg,
    #[command(flatten)]
    pub options: ProbeOptions,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub lab: LabArg,
    /// Where the connection starts: `namespace/pod`, `external` or `node/<name>`.
    #[arg(long)]
    pub from: String,
    /// The address to connect to, `10.244.2.5:80` or `[fd00::5]:80`.
    #[arg(long)]
    pub to: std::net::SocketAddr,
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    pub protocol: topology::Protocol,
    /// How long to wait for the answer.
    #[arg(long, default_value = "1s", value_parser = kubewire::agent::parse_duration)]
    pub timeout: Duration,
}

fn parse_protocol(text: &str) -> Result<topology::Protocol, String> {
    topology::Protocol::parse(&text.to_ascii_uppercase())
        .ok_or_else(|| format!("`{text}`: the protocol is TCP, UDP or SCTP"))
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub up: UpArgs,
    #[command(flatten)]
    pub options: ProbeOptions,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

pub async fn dispatch(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up(args) => {
            init_logging();
            let lab = lifecycle::up(&args).await?;
            let plan = lab.plan()?;
            println!(
                "lab {} is up: {} nodes, {} pods (state in {})",
                lab.name,
                plan.nodes.len(),
                plan.pods.len(),
                lab.dir.display()
            );
            Ok(())
        }
        LabCommand::Down(args) => {
            init_logging();
            if lifecycle::down(&args).await? {
                println!("lab {} is down", args.name);
            } else {
                println!("lab {} is not up", args.name);
            }
            Ok(())
        }
        LabCommand::Probe(args) => {
            init_logging();
            let lab = args.lab.load_up()?;
            let report = probe(&lab, &args.options).await?;
            print_report(&report, args.format, args.options.tries)
        }
        LabCommand::Connect(args) => {
            init_logging();
            let lab = args.lab.load_up()?;
            let reply = connect(&lab, &args.from, args.to, args.protocol, args.timeout).await?;
            match reply.peer {
                Some(peer) => println!("{} from {peer}", reply.who),
                None => println!("{}", reply.who),
            }
            Ok(())
        }
        LabCommand::Run(args) => {
            init_logging();
            run(args).await
        }
        LabCommand::Kubeconfig(args) => {
            let lab = args.load_up()?;
            let path = lab
                .kubeconfig
                .with_context(|| format!("lab {} has no kubeconfig", args.name))?;
            println!("{}", path.display());
            Ok(())
        }
        LabCommand::Status(args) => {
            // Also for a lab that did not finish coming up: that is when it helps.
            let lab = LabState::load(&args.dir())?
                .with_context(|| format!("lab {} is not up", args.name))?;
            print!("{}", status(&lab).await?);
            Ok(())
        }
        LabCommand::Apiserver(args) => apiserver::run_foreground(args).await,
        LabCommand::Responder(args) => responder::run(args).await,
        LabCommand::ControlPlane(args) => control_plane::run(args).await,
        LabCommand::CacheMemory(args) => cache_memory::run(args).await,
    }
}

fn init_logging() {
    kubewire::telemetry::init_logging("warn", kubewire::telemetry::LogFormat::Text);
}

/// Probes a lab that is up.
pub async fn probe(lab: &LabState, options: &ProbeOptions) -> anyhow::Result<ProbeReport> {
    let plan = lab.plan()?;
    let matrix = probe::matrix_probes(plan, options.from_external);
    let services = if options.services {
        let kubeconfig = lab
            .kubeconfig
            .as_ref()
            .with_context(|| format!("lab {} has no kubeconfig", lab.name))?;
        let client = kubewire::agent::client_from_kubeconfig(kubeconfig).await?;
        let services = Api::<Service>::all(client)
            .list(&Default::default())
            .await
            .context("listing Services in the lab's API server")?;
        Some(probe::service_probes(plan, &services.items))
    } else {
        None
    };
    let needed = probe::udp_ports_needed(&matrix, services.as_deref(), options.tries);
    let from = LabStateFile::new(&lab.dir).update(|state| {
        let from = state.udp_ports_taken;
        state.udp_ports_taken = from.wrapping_add(needed);
        from
    })?;
    let options = ProbeOptions {
        udp_ports_from: Some(from),
        ..options.clone()
    };
    Ok(probe::run(matrix, services, &options).await)
}

/// One connection from `from` (see [`probe::source_netns`]) to `to`; an error when
/// nobody answered within `timeout`.
pub async fn connect(
    lab: &LabState,
    from: &str,
    to: std::net::SocketAddr,
    protocol: topology::Protocol,
    timeout: Duration,
) -> anyhow::Result<probe::Reply> {
    let plan = lab.plan()?;
    let netns = probe::source_netns(plan, from).with_context(|| {
        format!(
            "--from {from}: not a pod of lab {}, `{}` or `node/<name>`",
            lab.name,
            probe::EXTERNAL
        )
    })?;
    let probe = probe::Probe {
        from: from.to_string(),
        netns: netns.to_string(),
        to,
        protocol,
    };
    probe::ask(&probe, timeout).await.with_context(|| {
        format!(
            "{from}: no answer from {to} ({}) within {timeout:?}",
            protocol.as_str()
        )
    })
}

fn print_report(report: &ProbeReport, format: OutputFormat, tries: u32) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string(report)?),
        OutputFormat::Text => print!("{}", report::probe_text(report, tries)),
    }
    Ok(())
}

/// `lab run`: up, probe, down — down also when up or the probe fails, or on Ctrl-C.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let work = async {
        let lab = lifecycle::up(&args.up).await?;
        let up_time = started.elapsed();
        let report = probe(&lab, &args.options).await?;
        let summary = controller_activity(&lab).await;
        anyhow::Ok((report, summary, up_time))
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let probed = started.elapsed();
    let down = lifecycle::down(&args.up.lab).await;
    let (report, summary, up_time) = outcome?;
    down?;
    print_report(&report, args.format, args.options.tries)?;
    if args.format == OutputFormat::Text {
        println!();
        print!("{}", report::controller_summary(&summary));
        println!(
            "\nlab {}: up {:.1}s, probed {:.1}s, down {:.1}s",
            args.up.lab.name,
            up_time.as_secs_f64(),
            (probed - up_time).as_secs_f64(),
            (started.elapsed() - probed).as_secs_f64()
        );
    }
    Ok(())
}

async fn controller_activity(lab: &LabState) -> Vec<agents::NodeActivity> {
    let Ok(plan) = lab.plan() else {
        return Vec::new();
    };
    let mut per_node = Vec::new();
    for node in &plan.nodes {
        let metrics = agents::http_get(&node.netns, agents::METRICS_ADDR, "/metrics").await;
        let activity = match metrics {
            Ok((200, body)) => Ok(agents::controller_activity(&body)),
            Ok((status, _)) => Err(format!("HTTP {status}")),
            Err(err) => Err(format!("{err:#}")),
        };
        per_node.push((node.name.clone(), activity));
    }
    per_node
}

fn join(ips: &[std::net::IpAddr]) -> String {
    let texts: Vec<String> = ips.iter().map(ToString::to_string).collect();
    texts.join(",")
}

async fn status(lab: &LabState) -> anyhow::Result<String> {
    use std::fmt::Write;
    let plan = lab.plan()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab {}{} (state in {})",
        lab.name,
        if lab.complete {
            ""
        } else {
            ", not completely up"
        },
        lab.dir.display()
    );
    let _ = writeln!(out, "nodes:");
    for node in &plan.nodes {
        // The agent is whatever answers the node's /healthz: the lab's own, one the
        // control plane restarted, or one started by hand.
        let recorded = lab
            .processes
            .iter()
            .rev()
            .find(|p| p.role == format!("agent {}", node.name))
            .is_some_and(|p| p.is_alive());
        let asked = tokio::time::timeout(
            Duration::from_secs(3),
            agents::http_get(&node.netns, agents::HEALTH_ADDR, "/healthz"),
        )
        .await;
        let health = match (asked, recorded) {
            (Ok(Ok((code, body))), _) => format!(
                "agent running, healthz {code} {}{}",
                body.trim().replace('\n', "; "),
                if recorded {
                    ""
                } else {
                    " (not started by the lab)"
                }
            ),
            (Ok(Err(_)), false) => "agent not running".to_string(),
            (Ok(Err(err)), true) => format!("agent running, healthz unreachable: {err:#}"),
            (Err(_), _) => "agent not answering (healthz timed out)".to_string(),
        };
        let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  {:<12} {:<15} pods {:<28} netns {}  {health}",
            node.name,
            join(&node.addresses()),
            cidrs.join(","),
            node.netns
        );
    }
    let _ = writeln!(out, "pods:");
    for pod in &plan.pods {
        let key = pod.key();
        let ips: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
        let responder = lab
            .processes
            .iter()
            .find(|p| p.role == format!("responder {key}"));
        let answering = match responder {
            Some(p) if p.is_alive() => "answering",
            Some(_) => "responder not running",
            None => "no ports",
        };
        let ports: Vec<String> = pod.ports.iter().map(responder::format_port).collect();
        let _ = writeln!(
            out,
            "  {:<28} {:<10} {:<16} {:<20} {answering}{}",
            key,
            pod.node,
            ips.join(","),
            ports.join(","),
            if pod.host_network {
                " (hostNetwork)"
            } else {
                ""
            }
        );
    }
    let responder = lab
        .processes
        .iter()
        .find(|p| p.role == lifecycle::EXTERNAL_RESPONDER);
    let ports: Vec<String> = topology::EXTERNAL_PORTS
        .iter()
        .map(responder::format_port)
        .collect();
    let _ = writeln!(
        out,
        "external: {} in netns {}, {} on {}",
        join(&plan.external.addresses()),
        plan.external.netns,
        match responder {
            Some(p) if p.is_alive() => "answering",
            Some(_) => "responder not running",
            None => "no responder",
        },
        ports.join(",")
    );
    if let Some(kubeconfig) = &lab.kubeconfig {
        let _ = writeln!(out, "kubeconfig: {}", kubeconfig.display());
    }
    Ok(out)
}

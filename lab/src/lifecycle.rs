//! `lab up` and `lab down`: carry a [`LabPlan`] out, and undo exactly what the state
//! records. `up` records each namespace before creating it and each process right
//! after starting it, so whatever point it dies at, `down` (or the next `up`) can
//! remove everything. A failed `up` tears down what it built before returning.
//!
//! Order of `up`: fabric, external and node namespaces with their veths and
//! addresses → the external netns's responder → the control plane (the API server,
//! seeded with the completed manifests, and the lab's kubelet) → one agent per node
//! → wait for each node's conflist → the manifests' pods ([`pods::start`]: netns,
//! CNI ADD, responder, status) → wait until every agent is healthy → the state is
//! marked complete, and from then on the kubelet starts and stops the Pods created
//! and deleted through the API server. `down` reverses it: the control plane stops
//! first (so the kubelet changes nothing more), then agents and responders (and any
//! other process found inside the lab's namespaces), CNI DEL for every wired pod,
//! namespaces (pods, nodes, external, fabric), then the state dir.
//!
//! With `--apiserver-kubeconfig` ([`external`]) the control plane relays that server
//! instead of running one: `up` creates the agents' RBAC, their token and the
//! manifests' objects there before starting it, and `down` deletes them after the
//! processes are stopped.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;

use super::control_plane::{self, HOST_KUBECONFIG};
use super::process::{self, ProcessRecord};
use super::state::{self, LabState, LabStateFile};
use super::topology::{self, LabPlan, NodePlan};
use super::{agent_identity, agents, external, external_objects, netns, pods};
use kubewire::cache::manifests;

/// The role of the process answering in the external netns.
pub const EXTERNAL_RESPONDER: &str = "responder external";

/// Flags naming a lab, shared by every `lab` verb.
#[derive(Clone, Debug, clap::Args)]
pub struct LabArg {
    /// The lab's name: part of every netns name, so two labs can run side by side.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Where the lab records what it created (default /run/kubewire/lab/<name>).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl LabArg {
    pub fn dir(&self) -> PathBuf {
        state::state_dir(&self.name, self.state_dir.as_deref())
    }

    /// The state of a lab that is up (complete).
    pub fn load_up(&self) -> anyhow::Result<LabState> {
        let state = LabState::load(&self.dir())?.with_context(|| {
            format!(
                "lab {} is not up (no state in {})",
                self.name,
                self.dir().display()
            )
        })?;
        if !state.complete {
            bail!(
                "lab {} did not finish coming up; run `kubewire lab down --name {}`",
                self.name,
                self.name
            );
        }
        Ok(state)
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub manifests: kubewire::offline::ManifestsArg,
    #[command(flatten)]
    pub lab: LabArg,
    /// An argument passed to every agent, e.g. `--agent-arg=--proxy-backend=ipvs`
    /// (repeatable).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// Where the CNI plugins are (repeatable; default /opt/cni/bin, /usr/lib/cni).
    #[arg(long = "cni-bin-dir")]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// How long agents may take to write their CNI config and become healthy.
    #[arg(long, default_value = "60s", value_parser = kubewire::agent::parse_duration)]
    pub agent_timeout: Duration,
    /// Run on this existing API server instead of the embedded one: the manifests'
    /// objects are created there (and deleted by `down`), the agents use a token of
    /// the ServiceAccount of manifests/base.
    #[arg(long)]
    pub apiserver_kubeconfig: Option<PathBuf>,
}

/// Brings the lab up; on failure removes whatever it had built.
pub async fn up(args: &UpArgs) -> anyhow::Result<LabState> {
    topology::validate_lab_name(&args.lab.name).map_err(anyhow::Error::msg)?;
    let objects = manifests::load_objects(&args.manifests.manifests)?;
    let snapshot = manifests::snapshot_from_objects(&objects)?;
    let plan = topology::plan(&args.lab.name, &snapshot).map_err(anyhow::Error::msg)?;
    for warning in &plan.warnings {
        eprintln!("kubewire lab: warning: {warning}");
    }
    let dir = args.lab.dir();
    clear_previous(&args.lab.name, &dir).await?;
    if let Some(taken) = plan.all_netns().into_iter().find(|n| netns::exists(n)) {
        bail!(
            "netns {taken} already exists but is not recorded in {}: another lab named {} with a different --state-dir?",
            dir.display(),
            args.lab.name
        );
    }
    let mut lab = state::create_dir(&args.lab.name, &dir)?;
    lab.plan = Some(plan.clone());
    lab.cni_bin_dirs = plugin_dirs(&args.cni_bin_dirs);
    lab.agent_args = args.agent_args.clone();
    lab.save()?;
    let shared = LabStateFile::new(&dir);
    match build(&shared, &plan, &objects, args).await {
        Ok(()) => {
            shared.update(|s| s.complete = true)?;
            shared.snapshot()
        }
        Err(err) => {
            if let Ok(lab) = shared.snapshot() {
                let plugin_dirs = plugin_dirs(&args.cni_bin_dirs);
                if let Err(cleanup) = teardown(&lab, &plugin_dirs).await {
                    eprintln!("kubewire lab: cleaning up after the failed up: {cleanup:#}");
                }
            }
            Err(err)
        }
    }
}

fn plugin_dirs(given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        crate::cni_exec::default_plugin_dirs()
    } else {
        given.to_vec()
    }
}

/// A previous lab of this name: refuse if it is up and running, else clean it up.
async fn clear_previous(name: &str, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !LabState::file(dir).exists() {
        bail!(
            "state dir {} exists and is not a lab's; choose another --state-dir",
            dir.display()
        );
    }
    let Some(previous) = LabState::load(dir)? else {
        return Ok(());
    };
    let all_alive =
        !previous.processes.is_empty() && previous.processes.iter().all(|p| p.is_alive());
    if previous.complete && all_alive {
        bail!("lab {name} is already up; `kubewire lab down --name {name}` first");
    }
    eprintln!("kubewire lab: removing the remains of an earlier lab {name}");
    teardown(&previous, &plugin_dirs(&previous.cni_bin_dirs)).await
}

async fn build(
    shared: &LabStateFile,
    plan: &LabPlan,
    objects: &[manifests::ManifestObject],
    args: &UpArgs,
) -> anyhow::Result<()> {
    let exe = crate::binaries::lab()?;
    let agent_exe = crate::binaries::agent()?;
    let plugin_dirs = plugin_dirs(&args.cni_bin_dirs);
    underlay(shared, plan)?;
    let dir = shared.snapshot()?.dir;
    pods::spawn_responder(
        shared,
        &plan.external.netns,
        super::probe::EXTERNAL,
        &topology::EXTERNAL_PORTS,
        EXTERNAL_RESPONDER,
        &dir.join("external-responder.log"),
        &exe,
    )
    .await?;
    let seed = topology::seed_objects(plan, objects);
    match &args.apiserver_kubeconfig {
        Some(kubeconfig) => on_external_server(shared, kubeconfig, &seed).await?,
        None => control_plane::write_seed(&dir, &seed)?,
    }
    start_control_plane(shared, &exe).await?;

    let mut agents_started: Vec<(NodePlan, ProcessRecord)> = Vec::new();
    for node in &plan.nodes {
        let record = agents::start(shared, node, &agent_exe, &args.agent_args)?;
        agents_started.push((node.clone(), record));
    }
    let lab = shared.snapshot()?;
    let conflists = futures::future::try_join_all(agents_started.iter().map(|(node, record)| {
        let node_dir = lab.node_dir(&node.name);
        async move {
            let path = agents::wait_conflist(&node_dir, record, args.agent_timeout).await?;
            anyhow::Ok((node.name.clone(), path))
        }
    }))
    .await?;

    let runtime = pods::PodRuntime {
        state: shared.clone(),
        client: kubewire::agent::client_from_kubeconfig(&lab.dir.join(HOST_KUBECONFIG)).await?,
        exe,
        plugin_dirs,
    };
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(plan.pods.iter())
        .map(|pod| {
            let conflist = conflists
                .iter()
                .find(|(node, _)| *node == pod.node)
                .map(|(_, path)| path.clone());
            let runtime = &runtime;
            async move {
                let conflist =
                    conflist.with_context(|| format!("no conflist for node {}", pod.node))?;
                pods::start(runtime, plan, pod, &conflist).await
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    futures::future::try_join_all(
        agents_started
            .iter()
            .map(|(node, record)| agents::wait_healthy(node, record, args.agent_timeout)),
    )
    .await?;
    Ok(())
}

/// Takes the external API server of `kubeconfig` for the lab's: its copy becomes the
/// lab's host kubeconfig, the agents get their identity, the seed its objects there.
async fn on_external_server(
    shared: &LabStateFile,
    kubeconfig: &Path,
    seed: &[manifests::ManifestObject],
) -> anyhow::Result<()> {
    let external = external::describe(kubeconfig)?;
    let copy = external::host_kubeconfig(shared.dir());
    std::fs::copy(kubeconfig, &copy)
        .with_context(|| format!("copying {} to {}", kubeconfig.display(), copy.display()))?;
    shared.update(|s| s.external = Some(external))?;
    let client = kubewire::agent::client_from_kubeconfig(&copy).await?;
    let account = agent_identity::set_up(shared, &client).await?;
    tracing::info!(%account, "the agents use this ServiceAccount's token");
    external_objects::seed(shared, &client, seed).await
}

/// The `ip -batch` lines of the underlay, per netns (pure; see [`underlay`]). IPv6
/// addresses skip DAD (`nodad`): the lab's links are new and their addresses planned
/// unique, as on a long-settled underlay.
pub fn underlay_commands(plan: &LabPlan) -> Vec<(String, Vec<String>)> {
    let mut fabric = Vec::new();
    for subnet in &plan.subnets {
        fabric.push(format!("link add {} type bridge", subnet.bridge));
        fabric.push(format!(
            "addr add {}/{} dev {}",
            subnet.gateway,
            subnet.subnet.prefix_len(),
            subnet.bridge
        ));
        if let (Some(gateway), Some(net)) = (subnet.gateway6, subnet.subnet6) {
            fabric.push(format!(
                "addr add {gateway}/{} dev {} nodad",
                net.prefix_len(),
                subnet.bridge
            ));
        }
        fabric.push(format!("link set {} up", subnet.bridge));
    }
    let mut hosts: Vec<(String, Vec<IpAddr>, usize, String)> = plan
        .nodes
        .iter()
        .map(|n| {
            (
                n.netns.clone(),
                n.addresses(),
                n.subnet,
                n.fabric_port.clone(),
            )
        })
        .collect();
    hosts.push((
        plan.external.netns.clone(),
        plan.external.addresses(),
        plan.external.subnet,
        plan.external.fabric_port.clone(),
    ));
    let mut per_netns = Vec::new();
    for (netns_name, addresses, subnet_index, port) in hosts {
        let subnet = &plan.subnets[subnet_index];
        fabric.push(format!(
            "link add {port} type veth peer name eth0 netns {netns_name}"
        ));
        fabric.push(format!("link set {port} master {} up", subnet.bridge));
        let mut lines = Vec::new();
        let mut routes = Vec::new();
        for address in addresses {
            match (address, subnet.subnet6, subnet.gateway6) {
                (IpAddr::V4(_), _, _) => {
                    lines.push(format!(
                        "addr add {address}/{} dev eth0",
                        subnet.subnet.prefix_len()
                    ));
                    routes.push(format!("route add default via {}", subnet.gateway));
                }
                (IpAddr::V6(_), Some(net), Some(gateway)) => {
                    lines.push(format!(
                        "addr add {address}/{} dev eth0 nodad",
                        net.prefix_len()
                    ));
                    routes.push(format!("route add default via {gateway}"));
                }
                (IpAddr::V6(_), _, _) => {}
            }
        }
        lines.push("link set eth0 up".to_string());
        lines.extend(routes);
        per_netns.push((netns_name, lines));
    }
    for vip in &plan.service_vips {
        let hops: Vec<IpAddr> = plan
            .nodes
            .iter()
            .flat_map(|n| n.addresses())
            .filter(|a| a.is_ipv4() == vip.is_ipv4())
            .collect();
        let prefix = if vip.is_ipv4() { 32 } else { 128 };
        match hops.as_slice() {
            [] => {}
            [hop] => fabric.push(format!("route add {vip}/{prefix} via {hop}")),
            hops => {
                let hops: Vec<String> = hops.iter().map(|h| format!("nexthop via {h}")).collect();
                fabric.push(format!("route add {vip}/{prefix} {}", hops.join(" ")));
            }
        }
    }
    let mut commands = vec![(plan.fabric_netns.clone(), fabric)];
    commands.extend(per_netns);
    commands
}

/// Creates the fabric, external and node namespaces and wires them. The fabric and
/// the nodes forward both families; no lab namespace runs IPv6 DAD on its links.
fn underlay(shared: &LabStateFile, plan: &LabPlan) -> anyhow::Result<()> {
    let mut names = vec![plan.fabric_netns.clone(), plan.external.netns.clone()];
    names.extend(plan.nodes.iter().map(|n| n.netns.clone()));
    for name in &names {
        shared.update(|s| s.netns.push(name.clone()))?;
        netns::add(name)?;
    }
    for name in &names {
        let forwarding = if name == &plan.external.netns {
            "0"
        } else {
            "1"
        };
        netns::sysctl(name, "net/ipv4/ip_forward", forwarding)?;
        if netns::ipv6_available() {
            netns::sysctl(name, "net/ipv6/conf/all/forwarding", forwarding)?;
        }
        if forwarding == "1" {
            netns::sysctl(name, "net/ipv4/conf/all/rp_filter", "0")?;
            netns::sysctl(name, "net/ipv4/conf/default/rp_filter", "0")?;
        }
    }
    for (name, lines) in underlay_commands(plan) {
        netns::batch(&name, &lines)?;
    }
    Ok(())
}

async fn start_control_plane(shared: &LabStateFile, exe: &Path) -> anyhow::Result<()> {
    let lab = shared.snapshot()?;
    let mut command = std::process::Command::new(exe);
    command.args(["control-plane", "--state-dir"]).arg(&lab.dir);
    let (record, mut child) = process::spawn(
        &lab.name,
        control_plane::ROLE,
        command,
        &lab.dir.join("apiserver.log"),
        true,
    )?;
    shared.update(|s| s.processes.push(record.clone()))?;
    process::wait_ready(&record, &mut child, Duration::from_secs(30)).await?;
    shared.update(|s| s.kubeconfig = Some(s.dir.join(HOST_KUBECONFIG)))?;
    Ok(())
}

/// Removes everything `state` records (see the module doc for the order).
pub async fn teardown(state: &LabState, plugin_dirs: &[PathBuf]) -> anyhow::Result<()> {
    let started = Instant::now();
    // The control plane first: its kubelet starts and stops pods, recording them in
    // the state; once it is gone the state on disk is final.
    let control: Vec<ProcessRecord> = state
        .processes
        .iter()
        .filter(|p| p.role == control_plane::ROLE)
        .cloned()
        .collect();
    process::terminate(&control, &[], Duration::from_secs(3));
    let state = &LabState::load(&state.dir)?.unwrap_or_else(|| state.clone());
    let inodes: Vec<u64> = state.netns.iter().filter_map(|n| netns::inode(n)).collect();
    let in_lab = netns::processes_in(&inodes);
    let others: Vec<ProcessRecord> = state
        .processes
        .iter()
        .filter(|p| p.role != control_plane::ROLE)
        .cloned()
        .collect();
    process::terminate(&others, &in_lab, Duration::from_secs(3));
    let mut problems = Vec::new();
    // The external API server's objects: when they cannot all be deleted, the state
    // dir stays, so that a later `down` tries again.
    let mut keep_state = false;
    if state.external.is_some() {
        let kubeconfig = external::host_kubeconfig(&state.dir);
        if let Err(err) = external_objects::cleanup(state, &kubeconfig).await {
            problems.push(format!(
                "{err:#} (state kept in {} for another `lab down`)",
                state.dir.display()
            ));
            keep_state = true;
        }
    }
    if let Ok(plan) = state.plan() {
        let dels = plan
            .pods
            .iter()
            .filter(|p| state.wired_pods.contains(&p.key()))
            .map(|pod| pods::unwire(state, pod, plugin_dirs));
        for result in futures::future::join_all(dels).await {
            if let Err(err) = result {
                // The pod's netns and its node's go away below, which removes
                // whatever the DEL did not.
                tracing::debug!(error = %format!("{err:#}"), "CNI DEL");
            }
        }
    }
    for name in state.netns.iter().rev() {
        if let Err(err) = netns::delete(name) {
            problems.push(format!("{err:#}"));
        }
    }
    if keep_state {
        // Nothing of the host is left to remove: only the server's objects.
        let kept = LabState {
            netns: Vec::new(),
            processes: Vec::new(),
            wired_pods: Vec::new(),
            complete: false,
            ..state.clone()
        };
        if let Err(err) = kept.save() {
            problems.push(format!("{err:#}"));
        }
    } else if let Err(err) = state::remove_dir(state) {
        problems.push(format!("{err:#}"));
    }
    tracing::debug!(elapsed = ?started.elapsed(), "lab torn down");
    if !problems.is_empty() {
        bail!(
            "lab {} was not removed completely: {}",
            state.name,
            problems.join("; ")
        );
    }
    Ok(())
}

/// `lab down`: removes the lab (also after a crash); a lab that is not there is fine.
pub async fn down(lab: &LabArg) -> anyhow::Result<bool> {
    let dir = lab.dir();
    let Some(state) = LabState::load(&dir)? else {
        return Ok(false);
    };
    teardown(&state, &plugin_dirs(&state.cni_bin_dirs)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubewire::cache::manifests::{parse_documents, snapshot_from_objects};

    #[test]
    fn underlay_wires_bridges_veths_and_vip_routes() {
        let yaml = "kind: Service\nmetadata: {name: s}\nspec: {externalIPs: [192.0.2.7], ports: [{port: 80}]}\n";
        let objects = parse_documents(Path::new("t.yaml"), yaml).unwrap();
        let plan = topology::plan("t", &snapshot_from_objects(&objects).unwrap()).unwrap();
        let commands = underlay_commands(&plan);
        assert_eq!(commands[0].0, "kw-t-fabric");
        assert_eq!(
            commands[0].1,
            [
                "link add br0 type bridge",
                "addr add 192.168.200.1/24 dev br0",
                "link set br0 up",
                "link add br1 type bridge",
                "addr add 172.30.255.1/24 dev br1",
                "link set br1 up",
                "link add kwn0 type veth peer name eth0 netns kw-t-node-n1",
                "link set kwn0 master br0 up",
                "link add kwn1 type veth peer name eth0 netns kw-t-node-n2",
                "link set kwn1 master br0 up",
                "link add kwext type veth peer name eth0 netns kw-t-ext",
                "link set kwext master br1 up",
                "route add 192.0.2.7/32 nexthop via 192.168.200.11 nexthop via 192.168.200.12",
            ]
        );
        assert_eq!(
            commands[1],
            (
                "kw-t-node-n1".to_string(),
                vec![
                    "addr add 192.168.200.11/24 dev eth0".to_string(),
                    "link set eth0 up".to_string(),
                    "route add default via 192.168.200.1".to_string(),
                ]
            )
        );
        assert_eq!(commands[3].0, "kw-t-ext");
    }

    #[test]
    fn dual_stack_underlay_adds_ipv6_addresses_and_routes() {
        let yaml = "kind: Node\nmetadata: {name: a}\nspec: {podCIDRs: [10.244.1.0/24, 'fd00:1::/64']}\n\
                    status: {addresses: [{type: InternalIP, address: 192.168.50.11}, {type: InternalIP, address: 'fd00:50::11'}]}\n---\n\
                    kind: Service\nmetadata: {name: s}\nspec: {externalIPs: [192.0.2.7, '2001:db8::7'], ports: [{port: 80}]}\n";
        let objects = parse_documents(Path::new("t.yaml"), yaml).unwrap();
        let plan = topology::plan("t", &snapshot_from_objects(&objects).unwrap()).unwrap();
        let commands = underlay_commands(&plan);
        let fabric = &commands[0].1;
        for line in [
            "addr add fd00:50::1/64 dev br0 nodad",
            "addr add fd00:0:ffff:ffff::1/64 dev br1 nodad",
            "route add 192.0.2.7/32 via 192.168.50.11",
            "route add 2001:db8::7/128 via fd00:50::11",
        ] {
            assert!(fabric.iter().any(|l| l == line), "{line} in {fabric:#?}");
        }
        assert_eq!(
            commands[1].1,
            [
                "addr add 192.168.50.11/24 dev eth0",
                "addr add fd00:50::11/64 dev eth0 nodad",
                "link set eth0 up",
                "route add default via 192.168.50.1",
                "route add default via fd00:50::1",
            ]
        );
        assert_eq!(
            commands[2],
            (
                "kw-t-ext".to_string(),
                vec![
                    "addr add 172.30.255.2/24 dev eth0".to_string(),
                    "addr add fd00:0:ffff:ffff::2/64 dev eth0 nodad".to_string(),
                    "link set eth0 up".to_string(),
                    "route add default via 172.30.255.1".to_string(),
                    "route add default via fd00:0:ffff:ffff::1".to_string(),
                ]
            )
        );
    }
}

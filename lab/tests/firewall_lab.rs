//! `--firewall-default-deny` end to end (root): real namespaces, the lab's API server
//! and kubelet, one agent per node running every default controller, real packets.
//!
//! kube-router's start-up race (their issue #873) is a pod that runs before its
//! node's firewall has compiled it, and so gets traffic no policy decided. Here the
//! race is made certain instead of hoped for: node n1's agent is frozen (SIGSTOP)
//! while the lab's kubelet starts a new Pod on n1, so the firewall cannot know it.
//! With default deny, only its own node reaches the pod (the pod is wired, its
//! responder listens) until the agent runs again and compiles it; without default
//! deny (the control) pods on both nodes reach it while it is still unknown.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use common::{kubewire, success, temp_dir, unique, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kubewire_lab::process::ProcessRecord;
use kubewire_lab::state::LabState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Two nodes (made up by the lab: pod CIDRs 10.244.1.0/24 and 10.244.2.0/24); the
/// client and an older pod on n1, a remote client on n2.
const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: x, labels: {app: old}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: x, labels: {app: remote}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 80}]}]}
";

/// A policy that isolates only pods nobody runs: the firewall has policies to
/// compile, and none of them is why a packet to the new pod is dropped.
const POLICIES: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-nobody, namespace: x}
spec:
  podSelector: {matchLabels: {app: nobody}}
  policyTypes: [Ingress, Egress]
";

/// The port the new pod serves.
const NEW_PORT: u16 = 8080;

/// A lab with its own name and state dir; `lab down` runs when it is dropped.
struct Lab {
    name: String,
    manifests: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Lab {
    fn up(default_deny: bool) -> Lab {
        let lab = Lab {
            name: unique("fw"),
            manifests: temp_dir(),
            state: temp_dir(),
        };
        std::fs::write(lab.manifests.path().join("pods.yaml"), PODS).unwrap();
        std::fs::write(lab.manifests.path().join("policies.yaml"), POLICIES).unwrap();
        let manifests = lab.manifests.path().display().to_string();
        let deny = format!("--agent-arg=--firewall-default-deny={default_deny}");
        success(lab.run("up", &["--manifests", &manifests, &deny]), "lab up");
        lab
    }

    fn state_dir(&self) -> PathBuf {
        self.state.path().join("lab")
    }

    /// `kubewire lab <verb> --name N --state-dir D extra…`.
    fn run(&self, verb: &str, extra: &[&str]) -> Output {
        let state = self.state_dir().display().to_string();
        let mut args = vec!["lab", verb, "--name", &self.name, "--state-dir", &state];
        args.extend_from_slice(extra);
        kubewire(&args)
    }

    /// Who answered a TCP connection from `from` to `to` within 2 s, if anyone.
    fn connect(&self, from: &str, to: SocketAddr) -> Option<String> {
        let to = to.to_string();
        let output = self.run("connect", &["--from", from, "--to", &to, "--timeout", "2s"]);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// The agent process of `node`, as the lab recorded it.
    fn agent(&self, node: &str) -> ProcessRecord {
        let state = LabState::load(&self.state_dir())
            .unwrap()
            .expect("lab state");
        let role = format!("agent {node}");
        let record = state
            .processes
            .into_iter()
            .find(|p| p.role == role)
            .unwrap_or_else(|| panic!("no {role} in the lab state"));
        assert!(record.is_alive(), "{role} is not running");
        // `ip netns exec` execs the agent: the recorded pid is `kubewire run` itself.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", record.pid)).unwrap();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        assert!(
            args.contains(&&b"run"[..])
                && args
                    .windows(2)
                    .any(|w| w == [b"--node-name", node.as_bytes()]),
            "pid {} is not `kubewire run --node-name {node}`: {}",
            record.pid,
            String::from_utf8_lossy(&cmdline)
        );
        record
    }

    /// Packets the firewall of `node` dropped for an uncompiled local pod.
    fn uncompiled_drops(&self, node: &str) -> u64 {
        let netns = format!("kw-{}-node-{node}", self.name);
        let json = common::sh(
            "ip",
            &[
                "netns",
                "exec",
                &netns,
                "nft",
                "-j",
                "list",
                "counter",
                "inet",
                "kubewire",
                "uncompiled-drops",
            ],
        );
        let listing: serde_json::Value = serde_json::from_str(&json).unwrap();
        listing["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["counter"]["packets"].as_u64()))
            .unwrap_or_else(|| panic!("no uncompiled-drops counter in {netns}:\n{json}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run("down", &[]);
    }
}

/// A process stopped with SIGSTOP; SIGCONT when thawed or dropped.
struct Frozen {
    pid: Pid,
    thawed: bool,
}

impl Frozen {
    fn new(process: &ProcessRecord) -> Frozen {
        let pid = Pid::from_raw(process.pid);
        kill(pid, Signal::SIGSTOP).unwrap();
        let frozen = Frozen { pid, thawed: false };
        wait_for(&format!("{} to stop", process.role), || {
            (process_state(process.pid) == Some('T')).then_some(())
        });
        frozen
    }

    fn thaw(&mut self) {
        if !self.thawed {
            let _ = kill(self.pid, Signal::SIGCONT);
            self.thawed = true;
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// The state letter of /proc/<pid>/stat (`T`: stopped).
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// A lab whose node n1 got the Pod x/new (port [`NEW_PORT`]) while n1's agent was
/// frozen, and still is.
struct FrozenAgentLab {
    // Fields drop in order: the agent runs again before the lab goes down.
    agent: Frozen,
    lab: Lab,
    /// x/old's address and port.
    old: SocketAddr,
    /// x/new's address and port.
    new: SocketAddr,
}

fn frozen_agent_lab(default_deny: bool) -> FrozenAgentLab {
    let lab = Lab::up(default_deny);
    let kubeconfig = success(lab.run("kubeconfig", &[]), "lab kubeconfig");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = common::kube_client(&runtime, &kubeconfig);
    let pods = Api::<Pod>::namespaced(client, "x");
    let address = |name: &str| -> Option<SocketAddr> {
        let pod = runtime.block_on(pods.get_opt(name)).unwrap()?;
        let status = pod.status?;
        (status.phase.as_deref() == Some("Running")).then_some(())?;
        let ip = status.pod_ip?.parse().ok()?;
        Some(SocketAddr::new(
            ip,
            if name == "new" { NEW_PORT } else { 80 },
        ))
    };
    let old = address("old").expect("x/old runs after lab up");

    let agent = Frozen::new(&lab.agent("n1"));
    let new: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "new", "namespace": "x", "labels": {"app": "new"}},
        "spec": {"nodeName": "n1",
            "containers": [{"name": "c", "ports": [{"containerPort": NEW_PORT}]}]},
    }))
    .unwrap();
    runtime
        .block_on(pods.create(&Default::default(), &new))
        .unwrap();
    let new = wait_for("x/new Running with an address", || address("new"));
    assert!(
        Path::new("/run/netns")
            .join(format!("kw-{}-pod-x.new", lab.name))
            .exists(),
        "x/new has its netns"
    );
    FrozenAgentLab {
        agent,
        lab,
        old,
        new,
    }
}

/// With default deny, a pod the agent has not compiled gets no traffic from other
/// pods, on its node or another; its own node reaches it (so it is wired and
/// listening), compiled pods are unaffected, and the drops are the default-deny
/// rule's. Once the agent runs again, it compiles the pod and the pod answers
/// (no policy isolates it).
#[test]
fn a_pod_its_agent_has_not_compiled_gets_no_traffic_with_default_deny() {
    let started = Instant::now();
    let mut frozen = frozen_agent_lab(true);
    let lab = &frozen.lab;
    let (old, new) = (frozen.old, frozen.new);
    let drops_before = lab.uncompiled_drops("n1");

    let answered = lab.connect("node/n1", new);
    assert!(
        answered.as_deref().is_some_and(|a| a.starts_with("x/new")),
        "x/new is wired and listens (its node reaches it): {answered:?}"
    );
    let answered = lab.connect("x/client", old);
    assert!(
        answered.as_deref().is_some_and(|a| a.starts_with("x/old")),
        "a compiled pod still answers while the agent is frozen: {answered:?}"
    );
    assert_eq!(
        lab.connect("x/client", new),
        None,
        "same node: an uncompiled pod gets no traffic"
    );
    assert_eq!(
        lab.connect("x/remote", new),
        None,
        "other node: an uncompiled pod gets no traffic"
    );
    let drops_after = lab.uncompiled_drops("n1");
    assert!(
        drops_after > drops_before,
        "the default-deny rule dropped them (uncompiled-drops {drops_before} -> {drops_after})"
    );

    frozen.agent.thaw();
    let thawed = Instant::now();
    for from in ["x/client", "x/remote"] {
        let answered = wait_for(&format!("{from} to reach x/new once compiled"), || {
            lab.connect(from, new)
        });
        assert!(answered.starts_with("x/new"), "{answered}");
    }
    eprintln!(
        "default deny: x/new reached {:.1}s after the agent resumed; test {:.1}s",
        thawed.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The control: without default deny, the same uncompiled pod answers pods on both
/// nodes while its agent is frozen — the race kube-router has.
#[test]
fn a_pod_its_agent_has_not_compiled_gets_traffic_without_default_deny() {
    let frozen = frozen_agent_lab(false);
    for from in ["x/client", "x/remote"] {
        let answered = frozen.lab.connect(from, frozen.new);
        assert!(
            answered.as_deref().is_some_and(|a| a.starts_with("x/new")),
            "{from} reaches the uncompiled x/new: {answered:?}"
        );
    }
}

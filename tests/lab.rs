//! The lab end to end (root): real namespaces, the embedded API server, one agent
//! per node, CNI-wired pods and real packets. Each test uses its own lab name and
//! state dir, so they run side by side.
//!
//! Agents run here with only the CNI controller (`BRIDGE_ONLY`): these tests pin
//! down what bridge + CNI alone give — pods on one node reach each other, pods on
//! different nodes do not (no pod-CIDR routes exist between nodes until the routing
//! controller installs them; the fabric never routes pod CIDRs, and the bridge
//! plugin does not masquerade).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use common::{HostSnapshot, kubewire, success, temp_dir, unique};
use serde_json::Value;

const BRIDGE_ONLY: [&str; 2] = [
    "--agent-arg=--run-router=false",
    "--agent-arg=--run-firewall=false",
];

fn write(dir: &Path, file: &str, yaml: &str) {
    std::fs::write(dir.join(file), yaml).unwrap();
}

fn pod(namespace: &str, name: &str, node: &str, ports: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}\n\
         spec: {{nodeName: {node}{extra}, containers: [{{name: c, ports: [{ports}]}}]}}\n---\n"
    )
}

const WEB: &str = "{containerPort: 80}, {containerPort: 53, protocol: UDP}";
const API: &str = "{containerPort: 8080}";

/// Runs `lab down` for its lab when dropped, so a failing test leaves nothing behind.
/// Declare it after the state dir's TempDir: it must drop first.
struct DownOnDrop(Vec<String>);

impl DownOnDrop {
    fn new(name: &str, state_dir: Option<&Path>) -> DownOnDrop {
        let mut args = vec![
            "lab".to_string(),
            "down".into(),
            "--name".into(),
            name.into(),
        ];
        if let Some(dir) = state_dir {
            args.extend(["--state-dir".to_string(), dir.display().to_string()]);
        }
        DownOnDrop(args)
    }
}

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        let _ = kubewire(&args);
    }
}

fn snapshot(name: &str, dirs: &[&Path]) -> HostSnapshot {
    HostSnapshot::take(&format!("kw-{name}-"), ("KUBEWIRE_LAB", name), dirs)
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

type Cell = (String, String, u64, String);

fn cells(report: &Value) -> BTreeMap<Cell, bool> {
    report["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                (
                    r["from"].as_str().unwrap().to_string(),
                    r["to"].as_str().unwrap().to_string(),
                    r["port"].as_u64().unwrap(),
                    r["protocol"].as_str().unwrap().to_string(),
                ),
                r["allowed"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Every (from, to, port, protocol) the matrix must hold: ordered pairs of distinct
/// pods × the destination's ports.
fn full_matrix(pods: &[(&str, &[(u64, &str)])]) -> BTreeSet<Cell> {
    let mut all = BTreeSet::new();
    for (from, _) in pods {
        for (to, ports) in pods {
            if from != to {
                for (port, protocol) in *ports {
                    all.insert((
                        from.to_string(),
                        to.to_string(),
                        *port,
                        protocol.to_string(),
                    ));
                }
            }
        }
    }
    all
}

#[test]
fn lab_run_same_node_full_matrix_and_the_host_is_left_as_it_was() {
    let name = unique("s");
    let manifests = temp_dir();
    write(
        manifests.path(),
        "pods.yaml",
        &(pod("x", "web", "n1", WEB, "")
            + &pod("x", "api", "n1", API, "")
            + &pod("z", "other", "n1", API, "")),
    );
    let run_dir = Path::new("/run/kubewire");
    let before = snapshot(&name, &[run_dir]);
    let _down = DownOnDrop::new(&name, None);
    let mut args = vec![
        "lab",
        "run",
        "--manifests",
        manifests.path().to_str().unwrap(),
        "--name",
        &name,
        "--format",
        "json",
    ];
    args.extend(BRIDGE_ONLY);
    let report = json(&success(kubewire(&args), "lab run"));
    let cells = cells(&report);
    let expected = full_matrix(&[
        ("x/web", &[(80, "TCP"), (53, "UDP")]),
        ("x/api", &[(8080, "TCP")]),
        ("z/other", &[(8080, "TCP")]),
    ]);
    assert_eq!(cells.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let refused: Vec<_> = cells.iter().filter(|(_, allowed)| !**allowed).collect();
    assert!(
        refused.is_empty(),
        "same-node pods must all answer: {refused:?}"
    );
    assert_eq!(
        snapshot(&name, &[run_dir]),
        before,
        "lab run left something behind"
    );
}

#[test]
fn cross_node_pods_are_unreachable_without_the_router_and_services_are_reported() {
    let name = unique("c");
    let manifests = temp_dir();
    let state = temp_dir();
    let state_dir = state.path().join("lab");
    let pods = pod("x", "a", "n1", WEB, "")
        + &pod("x", "b", "n1", API, "")
        + &pod("x", "c", "n2", API, "")
        + &pod("x", "h", "n2", API, ", hostNetwork: true");
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: x}\n\
        spec: {type: NodePort, clusterIP: 10.96.0.20, ports: [{port: 8080, nodePort: 30080}]}\n";
    write(manifests.path(), "pods.yaml", &(pods + service));
    let lab = [
        "--name",
        name.as_str(),
        "--state-dir",
        state_dir.to_str().unwrap(),
    ];
    let _down = DownOnDrop::new(&name, Some(&state_dir));
    let mut up = vec![
        "lab",
        "up",
        "--manifests",
        manifests.path().to_str().unwrap(),
    ];
    up.extend(lab);
    up.extend(BRIDGE_ONLY);
    success(kubewire(&up), "lab up");

    let mut probe = vec![
        "lab",
        "probe",
        "--format",
        "json",
        "--services",
        "--tries",
        "2",
        "--from-external",
    ];
    probe.extend(lab);
    let probed = kubewire(&probe);
    let mut down = vec!["lab", "down"];
    down.extend(lab);
    success(kubewire(&down), "lab down");
    let report = json(&success(probed, "lab probe"));

    // Same node: the CNI bridge joins the pods, and a hostNetwork pod is the node
    // itself (the pod's gateway). Different nodes: no route to the other pod CIDR
    // (and no route back to ours when the target is the other node's address).
    let node: BTreeMap<&str, &str> =
        [("x/a", "n1"), ("x/b", "n1"), ("x/c", "n2"), ("x/h", "n2")].into();
    let mut wrong = Vec::new();
    let mut external = Vec::new();
    for ((from, to, port, protocol), allowed) in cells(&report) {
        if from == "external" {
            external.push((to, allowed));
            continue;
        }
        let expected = node[from.as_str()] == node[to.as_str()];
        if allowed != expected {
            wrong.push(format!(
                "{from} -> {to} {port}/{protocol}: {allowed}, expected {expected}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The external netns reaches only the hostNetwork pod (a node address on the
    // underlay); pod CIDRs are not routed by the fabric.
    assert_eq!(
        external
            .iter()
            .filter(|(_, allowed)| *allowed)
            .map(|(to, _)| to.as_str())
            .collect::<Vec<_>>(),
        ["x/h"]
    );
    assert_eq!(external.len(), 5);

    // No service proxy runs here: every Service probe fails, and all are reported.
    let services = report["services"].as_array().expect("services");
    let kinds: Vec<(&str, &str)> = services
        .iter()
        .map(|s| (s["kind"].as_str().unwrap(), s["from"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds.iter().filter(|k| k.0 == "clusterIP").count(), 4);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == ("nodePort", "external"))
            .count(),
        2
    );
    for service in services {
        assert_eq!(service["answered_by"], Value::Array(vec![]), "{service}");
        assert_eq!(service["failures"], 2, "{service}");
    }
}

/// The agent's /metrics, fetched from inside its node netns.
fn agent_metrics(netns: &str) -> String {
    let script =
        "exec 3<>/dev/tcp/127.0.0.1/20245; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3";
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "bash", "-c", script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn kill_lab_processes(name: &str) -> usize {
    let pids = common::processes_with_env("KUBEWIRE_LAB", name);
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    pids.len()
}

#[test]
fn status_kubeconfig_and_recovery_after_a_crash() {
    let name = unique("k");
    let manifests = temp_dir();
    let state = temp_dir();
    let state_dir = state.path().join("lab");
    write(
        manifests.path(),
        "pods.yaml",
        &(pod("x", "a", "n1", WEB, "") + &pod("x", "b", "n2", API, "")),
    );
    let before = snapshot(&name, &[state.path()]);
    let lab = [
        "--name",
        name.as_str(),
        "--state-dir",
        state_dir.to_str().unwrap(),
    ];
    let _down = DownOnDrop::new(&name, Some(&state_dir));
    let mut up = vec![
        "lab",
        "up",
        "--manifests",
        manifests.path().to_str().unwrap(),
    ];
    up.extend(lab);
    up.extend(BRIDGE_ONLY);
    success(kubewire(&up), "lab up");

    // Pods carry the status the lab wrote like a kubelet; kubectl reaches the API
    // server from the host.
    let mut kubeconfig = vec!["lab", "kubeconfig"];
    kubeconfig.extend(lab);
    let path = success(kubewire(&kubeconfig), "lab kubeconfig");
    let pods = common::sh(
        "kubectl",
        &[
            "--kubeconfig",
            path.trim(),
            "get",
            "pods",
            "-A",
            "-o",
            "json",
        ],
    );
    let pods = json(&pods);
    let statuses: Vec<(String, String, String)> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (
                "a".to_string(),
                "Running".to_string(),
                "10.244.1.2".to_string()
            ),
            (
                "b".to_string(),
                "Running".to_string(),
                "10.244.2.2".to_string()
            ),
        ]
    );
    // A change made with kubectl reaches the agents (through the fabric relay).
    let service = manifests.path().join("late-service.yaml");
    write(
        manifests.path(),
        "late-service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: x}\nspec: {ports: [{port: 80}]}\n",
    );
    common::sh(
        "kubectl",
        &[
            "--kubeconfig",
            path.trim(),
            "apply",
            "--validate=false",
            "-f",
            service.to_str().unwrap(),
        ],
    );
    let node_netns = format!("kw-{name}-node-n2");
    let deadline = Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let metrics = agent_metrics(&node_netns);
        if metrics.contains("kubewire_cache_objects{kind=\"Service\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never saw the new Service:\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let mut status = vec!["lab", "status"];
    status.extend(lab);
    let status = success(kubewire(&status), "lab status");
    assert_eq!(status.matches("healthz 200").count(), 2, "{status}");

    // A crash: every lab process dies at once. `up` again cleans up and rebuilds.
    assert!(kill_lab_processes(&name) >= 5);
    success(kubewire(&up), "lab up after a crash");
    assert!(kill_lab_processes(&name) >= 5);
    let mut down = vec!["lab", "down"];
    down.extend(lab);
    success(kubewire(&down), "lab down after a crash");
    assert_eq!(
        snapshot(&name, &[state.path()]),
        before,
        "the crashed lab left something behind"
    );
}

/// Prints the wall time of `lab run` on the demo (3 nodes, 9 pods). Run with
/// `cargo test --release --test lab -- --ignored --nocapture demo_wall_time`.
#[test]
#[ignore]
fn demo_wall_time() {
    let name = unique("d");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo");
    let started = Instant::now();
    let _down = DownOnDrop::new(&name, None);
    let mut args = vec![
        "lab",
        "run",
        "--manifests",
        demo.to_str().unwrap(),
        "--name",
        &name,
    ];
    args.extend(BRIDGE_ONLY);
    let output = success(kubewire(&args), "lab run (demo)");
    println!("{output}");
    println!(
        "demo lab: 3 nodes, 9 pods, up + probe + down in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

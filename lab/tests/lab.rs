//! The lab end to end (root): real namespaces, the embedded API server, one agent
//! per node, CNI-wired pods and real packets. Each test uses its own lab name and
//! state dir, so they run side by side.
//!
//! Most tests run the agents with only the CNI controller (`BRIDGE_ONLY`) and pin
//! down what bridge + CNI alone give — pods on one node reach each other, pods on
//! different nodes do not (no pod-CIDR routes exist between nodes without the
//! routing controller; the fabric never routes pod CIDRs, and the bridge plugin does
//! not masquerade). `demo_measured_matrix_is_the_predicted_one` runs every default
//! controller and checks the measurement against `firewall matrix`.

mod common;
mod lab_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{kubewire, success, wait_for};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use lab_support::TestLab;
use serde_json::Value;

fn pod(namespace: &str, name: &str, node: &str, ports: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}\n\
         spec: {{nodeName: {node}{extra}, containers: [{{name: c, ports: [{ports}]}}]}}\n---\n"
    )
}

const WEB: &str = "{containerPort: 80}, {containerPort: 53, protocol: UDP}";
const API: &str = "{containerPort: 8080}";

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
    let lab = TestLab::new("s", true);
    lab.write(
        "pods.yaml",
        &(pod("x", "web", "n1", WEB, "")
            + &pod("x", "api", "n1", API, "")
            + &pod("z", "other", "n1", API, "")),
    );
    let before = lab.host();
    let report = json(&success(lab.run("run", &["--format", "json"]), "lab run"));
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
    assert_eq!(lab.host(), before, "lab run left something behind");
}

#[test]
fn cross_node_pods_are_unreachable_without_the_router_and_services_are_reported() {
    let lab = TestLab::new("c", false);
    let pods = pod("x", "a", "n1", WEB, "")
        + &pod("x", "b", "n1", API, "")
        + &pod("x", "c", "n2", API, "")
        + &pod("x", "h", "n2", API, ", hostNetwork: true");
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: x}\n\
        spec: {type: NodePort, clusterIP: 10.96.0.20, ports: [{port: 8080, nodePort: 30080}]}\n";
    lab.write("pods.yaml", &(pods + service));
    success(lab.run("up", &[]), "lab up");
    let probe = [
        "--format",
        "json",
        "--services",
        "--tries",
        "2",
        "--from-external",
    ];
    let probed = lab.run("probe", &probe);
    success(lab.run("down", &[]), "lab down");
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
    let lab = TestLab::new("k", false);
    lab.write(
        "pods.yaml",
        &(pod("x", "a", "n1", WEB, "") + &pod("x", "b", "n2", API, "")),
    );
    let before = lab.host();
    success(lab.run("up", &[]), "lab up");

    // Pods carry the status the lab wrote like a kubelet; a client on the host
    // reaches the API server through `lab kubeconfig`.
    let kubeconfig = success(lab.run("kubeconfig", &[]), "lab kubeconfig");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        let config = kube::config::Kubeconfig::read_from(kubeconfig.trim()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    });
    let pods = runtime
        .block_on(Api::<Pod>::all(client.clone()).list(&Default::default()))
        .unwrap();
    let statuses: Vec<String> = pods
        .items
        .iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            format!(
                "{} {} {}",
                p.metadata.name.as_deref().unwrap_or_default(),
                status.phase.unwrap_or_default(),
                status.pod_ip.unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(statuses, ["a Running 10.244.1.2", "b Running 10.244.2.2"]);

    // A change made through the API server reaches the agents (via the fabric relay):
    // a label on their Node makes n2's CNI controller (which watches Nodes) sync again.
    let node_netns = format!("kw-{}-node-n2", lab.name);
    let syncs = || {
        let metrics = agent_metrics(&node_netns);
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(
                    "kubewire_controller_sync_duration_seconds_count{controller=\"cni\"} ",
                )
            })
            .and_then(|count| count.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let synced_before = syncs();
    let label = serde_json::json!({"metadata": {"labels": {"kubewire.io/test": "late"}}});
    runtime
        .block_on(Api::<Node>::all(client).patch(
            "n2",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&label),
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while syncs() <= synced_before {
        assert!(
            Instant::now() < deadline,
            "the agent never saw the Node change:\n{}",
            agent_metrics(&node_netns)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let status = success(lab.run("status", &[]), "lab status");
    assert_eq!(status.matches("healthz 200").count(), 2, "{status}");

    // A crash: every lab process dies at once. `up` again cleans up and rebuilds.
    assert!(kill_lab_processes(&lab.name) >= 5);
    success(lab.run("up", &[]), "lab up after a crash");
    assert!(kill_lab_processes(&lab.name) >= 5);
    success(lab.run("down", &[]), "lab down after a crash");
    assert_eq!(lab.host(), before, "the crashed lab left something behind");
}

/// A Pod made through the API server, `name` in namespace x, with `spec` (JSON).
fn api_pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "x"},
        "spec": spec,
    }))
    .unwrap()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The lab's kubelet: Pods created through the API server after `up` get a netns,
/// an address (their status says which) and a responder, and show in the probe
/// matrix; an unbound one is bound to a node; one that cannot start is retried
/// without holding the others back; deleted ones are unwired; one deleted and made
/// again under its name is wired afresh; `down` still leaves nothing.
#[test]
fn pods_created_and_deleted_while_the_lab_runs_are_wired_and_unwired() {
    let lab = TestLab::new("kl", false);
    lab.write("pods.yaml", &pod("x", "a", "n1", WEB, ""));
    let before = lab.host();
    let started = Instant::now();
    success(lab.run("up", &[]), "lab up");
    let up_time = started.elapsed();
    let kubeconfig = success(lab.run("kubeconfig", &[]), "lab kubeconfig");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = common::kube_client(&runtime, &kubeconfig);
    let pods = Api::<Pod>::namespaced(client, "x");
    let create = |pod: Pod| {
        runtime
            .block_on(pods.create(&Default::default(), &pod))
            .unwrap()
    };
    let delete = |name: &str| {
        runtime
            .block_on(pods.delete(name, &Default::default()))
            .unwrap();
    };
    let running = |name: &str| {
        let pod = runtime.block_on(pods.get_opt(name)).unwrap()?;
        let status = pod.status.clone()?;
        (status.phase.as_deref() == Some("Running")).then_some(())?;
        Some((pod.spec?.node_name?, status.pod_ip?, pod.metadata.uid?))
    };

    // One that cannot start: a hostNetwork pod on the port the node's agent holds.
    let created = Instant::now();
    create(api_pod(
        "bad",
        serde_json::json!({"nodeName": "n1", "hostNetwork": true,
            "containers": [{"name": "c", "ports": [{"containerPort": 20244}]}]}),
    ));
    create(api_pod(
        "new",
        serde_json::json!({"nodeName": "n1",
            "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}),
    ));
    create(api_pod(
        "free",
        serde_json::json!({"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}),
    ));
    let (node, ip, uid) = wait_for("x/new Running", || running("new"));
    let new_time = created.elapsed();
    assert_eq!((node.as_str(), ip.as_str()), ("n1", "10.244.1.3"));
    let (node, ip, _) = wait_for("x/free Running", || running("free"));
    assert_eq!(
        (node.as_str(), ip.as_str()),
        ("n2", "10.244.2.2"),
        "an unbound pod goes to the node with the fewest pods"
    );
    let new_netns = format!("kw-{}-pod-x.new", lab.name);
    assert!(netns_exists(&new_netns));

    let probed = json(&success(
        lab.run("probe", &["--format", "json"]),
        "lab probe",
    ));
    let measured = cells(&probed);
    let cell = |from: &str, to: &str, port: u64| {
        measured
            .get(&(from.into(), to.into(), port, "TCP".into()))
            .copied()
    };
    assert_eq!(cell("x/a", "x/new", 8080), Some(true), "{measured:#?}");
    assert_eq!(cell("x/new", "x/a", 80), Some(true), "{measured:#?}");
    // No router runs: the pod on the other node is there, and honestly unreachable.
    assert_eq!(cell("x/a", "x/free", 8080), Some(false), "{measured:#?}");
    let status = success(lab.run("status", &[]), "lab status");
    assert!(status.contains("x/new"), "{status}");
    assert!(
        running("bad").is_none(),
        "x/bad cannot bind its port and never runs"
    );
    let log = std::fs::read_to_string(lab.state.as_ref().unwrap().path().join("lab/apiserver.log"))
        .unwrap();
    assert!(
        log.contains("x/bad") && log.contains("pod not started"),
        "{log}"
    );

    // Deleted: its netns goes, and so does it from the matrix.
    let deleted = Instant::now();
    delete("bad");
    delete("new");
    wait_for("x/new's netns to go", || {
        (!netns_exists(&new_netns)).then_some(())
    });
    let gone_time = deleted.elapsed();
    let probed = json(&success(
        lab.run("probe", &["--format", "json"]),
        "lab probe",
    ));
    let keys: BTreeSet<String> = cells(&probed)
        .into_keys()
        .flat_map(|(from, to, _, _)| [from, to])
        .collect();
    assert_eq!(keys, BTreeSet::from(["x/a".into(), "x/free".into()]));

    // Deleted and made again at once: another Pod (uid), wired afresh.
    create(api_pod(
        "new",
        serde_json::json!({"nodeName": "n1",
            "containers": [{"name": "c", "ports": [{"containerPort": 9090}]}]}),
    ));
    let (_, _, again) = wait_for("x/new Running again", || running("new"));
    assert_ne!(again, uid);
    delete("free");
    create(api_pod(
        "free",
        serde_json::json!({"nodeName": "n1",
            "containers": [{"name": "c", "ports": [{"containerPort": 7070}]}]}),
    ));
    let (node, _, _) = wait_for("the second x/free Running", || {
        running("free").filter(|(node, _, _)| node == "n1")
    });
    assert_eq!(node, "n1");
    let probed = json(&success(
        lab.run("probe", &["--format", "json"]),
        "lab probe",
    ));
    let measured = cells(&probed);
    assert_eq!(
        measured.get(&("x/a".into(), "x/free".into(), 7070, "TCP".into())),
        Some(&true),
        "{measured:#?}"
    );
    assert!(!netns_exists(&format!("kw-{}-pod-x.bad", lab.name)));

    let down = Instant::now();
    success(lab.run("down", &[]), "lab down");
    let down_time = down.elapsed();
    assert_eq!(lab.host(), before, "the lab left something behind");
    eprintln!(
        "kubelet lab: up {:.1}s, new pod running {:.1}s after create, unwired {:.1}s after delete, down {:.1}s, total {:.1}s",
        up_time.as_secs_f64(),
        new_time.as_secs_f64(),
        gone_time.as_secs_f64(),
        down_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// With every controller the agents run by default (routing, firewall, CNI), the
/// matrix measured on the demo is exactly the one `firewall matrix` predicts: pods
/// reach each other across nodes and subnets, and the NetworkPolicies hold.
#[test]
fn demo_measured_matrix_is_the_predicted_one() {
    let lab = TestLab::new("m", false).with_default_controllers();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    for file in ["nodes.yaml", "pods.yaml", "services.yaml", "policies.yaml"] {
        lab.write(file, &std::fs::read_to_string(demo.join(file)).unwrap());
    }
    let predicted = json(&success(
        kubewire(&[
            "firewall",
            "matrix",
            "--manifests",
            demo.to_str().unwrap(),
            "--format",
            "json",
        ]),
        "firewall matrix",
    ));
    let measured = json(&success(lab.run("run", &["--format", "json"]), "lab run"));
    let predicted = cells(&predicted);
    let measured = cells(&measured);
    assert_eq!(predicted.len(), 80);
    let differences: Vec<String> = predicted
        .iter()
        .filter(|(cell, allowed)| measured.get(*cell) != Some(*allowed))
        .map(|(cell, allowed)| {
            format!(
                "{cell:?}: predicted {allowed}, measured {:?}",
                measured.get(cell)
            )
        })
        .collect();
    assert!(differences.is_empty(), "{differences:#?}");
    assert_eq!(measured.len(), predicted.len());
    assert!(
        measured.values().any(|allowed| !allowed),
        "the policies deny some"
    );
}

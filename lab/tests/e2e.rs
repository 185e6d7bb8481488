//! The lab against a real kube-apiserver (root): set `KUBEWIRE_E2E_KUBECONFIG` to an
//! admin kubeconfig of a server with kube-controller-manager (`scripts/real-apiserver
//! start` prints it); without it every test here reports itself skipped.
//!
//! - The NetworkPolicy conformance suite and the service proxy's lab checks, with
//!   `lab up --apiserver-kubeconfig`: Nodes and Pods live on that server, the agents
//!   authenticate with a token of the ServiceAccount `manifests/base` creates (so
//!   its RBAC is what lets them work), EndpointSlices of selector Services come from
//!   kube-controller-manager.
//! - An agent with that token is healthy, may read but not write, and programs a
//!   NetworkPolicy made through the server; `lab down` leaves nothing of the lab
//!   there.
//! - `kubectl apply -k manifests/` and the kube-proxy-replacement variant are
//!   accepted (`KUBEWIRE_E2E_KUBECTL`: the kubectl to use; skipped without it).
//!
//! One server holds one lab's Nodes and Pods at a time: the tests take turns.

mod common;
mod lab_support;
mod netpol_support;
mod proxy_support;
mod service_lab;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{kubewire, success, temp_dir, wait_for};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, PostParams};
use kubewire_lab::harness::{require_root, skip};
use kubewire_lab::state::LabState;
use lab_support::TestLab;
use serde_json::{Value, json};

static ONE_LAB: Mutex<()> = Mutex::new(());

/// The server's admin kubeconfig and this test's turn on it; `None` (the test is
/// recorded as skipped) without `KUBEWIRE_E2E_KUBECONFIG` or root.
fn real_server() -> Option<(PathBuf, MutexGuard<'static, ()>)> {
    let Some(path) = std::env::var_os("KUBEWIRE_E2E_KUBECONFIG").filter(|p| !p.is_empty()) else {
        skip("needs a real API server: KUBEWIRE_E2E_KUBECONFIG (scripts/real-apiserver start)");
        return None;
    };
    if !require_root() {
        return None;
    }
    let turn = ONE_LAB
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Some((PathBuf::from(path), turn))
}

fn up_args(kubeconfig: &Path) -> Vec<String> {
    vec![
        "--apiserver-kubeconfig".into(),
        kubeconfig.display().to_string(),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn netpol_conformance_on_a_real_api_server() {
    let Some((kubeconfig, _turn)) = real_server() else {
        return;
    };
    netpol_support::run_suite(&netpol_support::Suite {
        up_args: up_args(&kubeconfig),
        jobs: Some(1),
        only_valid_objects: true,
    });
}

#[test]
fn demo_services_on_a_real_api_server() {
    let Some((kubeconfig, _turn)) = real_server() else {
        return;
    };
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    // As with the embedded server: 9 pods × 2 ClusterIPs + 3 NodePorts, all served
    // (here through kube-controller-manager's EndpointSlices).
    let answered =
        service_lab::probes_match_trace_with(&manifests, "nftables", 24, &up_args(&kubeconfig));
    assert_eq!(answered, 21);
}

#[test]
fn every_proxy_rule_on_a_real_api_server() {
    let Some((kubeconfig, _turn)) = real_server() else {
        return;
    };
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/proxy");
    let answered =
        service_lab::probes_match_trace_with(&manifests, "nftables", 24, &up_args(&kubeconfig));
    assert_eq!(answered, 32 + 1 + 2 + 1);
}

const TWO_PODS: &str = "
kind: Pod
metadata: {name: a, namespace: e2e, labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
kind: Pod
metadata: {name: b, namespace: e2e, labels: {pod: b}}
spec: {nodeName: n2, containers: [{name: c, ports: [{containerPort: 80}]}]}
";

/// `lab connect --from FROM --to TO`: who answered, or `None`.
fn connect(lab: &TestLab, from: &str, to: &str) -> Option<String> {
    let mut args = lab.args("connect");
    args.extend(["--from", from, "--to", to, "--timeout", "1s"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = kubewire(&args);
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[test]
fn agents_with_the_manifests_service_account_program_a_change() {
    let Some((kubeconfig, _turn)) = real_server() else {
        return;
    };
    let manifests = temp_dir();
    std::fs::write(manifests.path().join("pods.yaml"), TWO_PODS).unwrap();
    let lab = TestLab::new("kwe2e", false);
    let mut up = lab.args("up");
    up.extend(["--manifests".into(), manifests.path().display().to_string()]);
    up.extend(up_args(&kubeconfig));
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    // `up` returns once every agent's /healthz is 200: each has listed and watched
    // everything it needs with the ServiceAccount's token.
    let started = Instant::now();
    success(kubewire(&up), "lab up");
    eprintln!(
        "lab up on the real server: {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let state_dir = lab.state_dir();
    let state = LabState::load(&state_dir).unwrap().unwrap();
    let plan = state.plan().unwrap();
    let ip = |name: &str| {
        let pod = plan.pods.iter().find(|p| p.name == name).unwrap();
        pod.ips[0]
    };
    let (a, b) = (ip("a"), ip("b"));

    // The agents hold a token, no admin credentials.
    let node_config: Value = serde_json::from_str(
        &std::fs::read_to_string(state.node_dir("n1").join("kubeconfig")).unwrap(),
    )
    .unwrap();
    let user = &node_config["users"][0]["user"];
    let token = user["token"].as_str().expect("a token").to_string();
    assert!(user.get("client-certificate-data").is_none(), "{user}");

    // That token reads what the agent watches and can change nothing: the
    // ClusterRole of manifests/base is all it has.
    let runtime = runtime();
    let external = kubewire_lab::external::describe(&kubeconfig).unwrap();
    let url = format!("{}://{}", external.scheme, external.upstream);
    let as_agent = temp_dir();
    let as_agent = as_agent.path().join("kubeconfig");
    std::fs::write(
        &as_agent,
        kubewire_lab::external::agent_kubeconfig(&external, &url, &token),
    )
    .unwrap();
    let agent = common::kube_client(&runtime, as_agent.to_str().unwrap());
    let admin = common::kube_client(&runtime, kubeconfig.to_str().unwrap());
    runtime.block_on(async {
        let pods = Api::<Pod>::namespaced(agent.clone(), "e2e")
            .list(&Default::default())
            .await
            .expect("the agent lists Pods");
        assert_eq!(pods.items.len(), 2);
        let forbidden = |result: Result<_, kube::Error>| {
            matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
        };
        let policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "by-the-agent", "namespace": "e2e"},
            "spec": {"podSelector": {}},
        }))
        .unwrap();
        assert!(forbidden(
            Api::<NetworkPolicy>::namespaced(agent.clone(), "e2e")
                .create(&PostParams::default(), &policy)
                .await
                .map(|_| ())
        ));
        assert!(forbidden(
            Api::<Secret>::namespaced(agent.clone(), "kube-system")
                .list(&Default::default())
                .await
                .map(|_| ())
        ));
    });

    // A change made through the server reaches the dataplane.
    let to_b = format!("{b}:80");
    let to_a = format!("{a}:80");
    assert_eq!(
        connect(&lab, "e2e/a", &to_b)
            .as_deref()
            .map(|w| w.split(' ').next()),
        Some(Some("e2e/b"))
    );
    let deny_b: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "deny-b", "namespace": "e2e"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]},
    }))
    .unwrap();
    runtime
        .block_on(
            Api::<NetworkPolicy>::namespaced(admin.clone(), "e2e")
                .create(&PostParams::default(), &deny_b),
        )
        .unwrap();
    let changed = Instant::now();
    wait_for("the agents to deny e2e/a -> e2e/b", || {
        connect(&lab, "e2e/a", &to_b).is_none().then_some(())
    });
    eprintln!(
        "NetworkPolicy through the real server to the dataplane: {:.1}s",
        changed.elapsed().as_secs_f64()
    );
    assert!(
        connect(&lab, "e2e/b", &to_a).is_some(),
        "only b's ingress is denied"
    );

    // `down` removes the lab's Nodes, Namespace (with the policy) and Pods.
    drop(lab);
    runtime.block_on(async {
        for node in ["n1", "n2"] {
            let left = Api::<Node>::all(admin.clone()).get_opt(node).await.unwrap();
            assert!(left.is_none(), "Node {node} left on the server");
        }
        let left = Api::<Namespace>::all(admin.clone())
            .get_opt("e2e")
            .await
            .unwrap();
        assert!(left.is_none(), "Namespace e2e left on the server");
    });
}

/// `kubectl --kubeconfig K args…`: (success, stdout, stderr).
fn kubectl(kubectl: &str, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(kubectl);
    command.arg("--kubeconfig").arg(kubeconfig).args(args);
    let output = common::output_within(command, Duration::from_secs(120));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn kubectl_applies_the_manifests_and_the_replacement_variant() {
    let Some(binary) = std::env::var("KUBEWIRE_E2E_KUBECTL")
        .ok()
        .filter(|k| !k.is_empty())
    else {
        skip(
            "needs KUBEWIRE_E2E_KUBECTL (the kubectl built with the server) and a real API server",
        );
        return;
    };
    let Some((kubeconfig, _turn)) = real_server() else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = repo.join("manifests");
    let replacement = repo.join("manifests/kube-proxy-replacement");
    let (base, replacement) = (base.to_str().unwrap(), replacement.to_str().unwrap());
    let run = |args: &[&str]| {
        let (ok, stdout, stderr) = kubectl(&binary, &kubeconfig, args);
        assert!(ok, "kubectl {}:\n{stdout}\n{stderr}", args.join(" "));
        stdout
    };
    let applied = run(&["apply", "-k", base]);
    for object in [
        "serviceaccount/kubewire",
        "clusterrole.rbac.authorization.k8s.io/kubewire",
        "clusterrolebinding.rbac.authorization.k8s.io/kubewire",
        "configmap/kubewire-config",
        "daemonset.apps/kubewire",
    ] {
        assert!(applied.contains(object), "{object} not applied:\n{applied}");
    }
    run(&["apply", "-k", replacement]);
    let master = run(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "kubewire-config",
        "-o",
        "jsonpath={.data.KUBEWIRE_MASTER} {.data.KUBEWIRE_RUN_SERVICE_PROXY}",
    ]);
    assert_eq!(master, "https://192.0.2.1:6443 true");
    let daemonset = run(&[
        "get",
        "daemonset",
        "-n",
        "kube-system",
        "kubewire",
        "-o",
        "jsonpath={.spec.template.spec.serviceAccountName}",
    ]);
    assert_eq!(daemonset, "kubewire");
    run(&["delete", "-k", replacement, "--ignore-not-found"]);
}

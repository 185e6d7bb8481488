//! The service proxy's lab checks, shared by `proxy_lab` (the embedded API server)
//! and `e2e` (a real kube-apiserver): a lab run with `--services`, every Service
//! probe's `answered_by` compared with the pods `proxy trace` names as backends for
//! that node and source.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::{kubewire, success};
use crate::lab_support::TestLab;
use kube::ResourceExt;
use serde_json::Value;

pub const AGENT_ARGS: [&str; 2] = [
    "--agent-arg=--run-service-proxy=true",
    "--agent-arg=--run-firewall=false",
];

/// Probes from the lab's external namespace are traced from this off-cluster address
/// (outside every loadBalancerSourceRange of the examples, like the lab's own).
pub const EXTERNAL_SOURCE: &str = "192.0.2.1";

pub fn trace(
    manifests: &Path,
    node: &str,
    from: &str,
    to: &str,
    port: u64,
    protocol: &str,
) -> Value {
    let out =
        crate::proxy_support::trace(manifests.to_str().unwrap(), node, from, to, port, protocol);
    serde_json::from_str(&out).unwrap()
}

/// Runs the lab on `manifests` with the proxy `backend` and checks every Service
/// probe (each tried `tries` times) against `proxy trace`. Returns how many probes
/// were answered.
pub fn probes_match_trace(manifests: &Path, backend: &str, tries: u32) -> usize {
    probes_match_trace_with(manifests, backend, tries, &[])
}

/// [`probes_match_trace`] with more `lab run` arguments (`--apiserver-kubeconfig F`).
pub fn probes_match_trace_with(
    manifests: &Path,
    backend: &str,
    tries: u32,
    extra: &[String],
) -> usize {
    let lab = TestLab::new("kwpx", false);
    let mut args = lab.args("run");
    args.extend(["--manifests".into(), manifests.display().to_string()]);
    args.extend(AGENT_ARGS.iter().map(|a| a.to_string()));
    args.push(format!("--agent-arg=--proxy-backend={backend}"));
    args.extend(extra.iter().cloned());
    args.extend(
        [
            "--services",
            "--tries",
            &tries.to_string(),
            "--format",
            "json",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report: Value = serde_json::from_str(&success(kubewire(&args), "lab run")).unwrap();
    report_matches_trace(manifests, &report)
}

/// Checks every Service probe of a `lab probe --services` report against `proxy
/// trace`; returns how many probes were answered.
pub fn report_matches_trace(manifests: &Path, report: &Value) -> usize {
    let snapshot = kubewire::cache::manifests::load_snapshot(manifests).unwrap();
    let pod_ip = |key: &str| -> (String, String) {
        let (ns, name) = key.split_once('/').unwrap();
        let pod = snapshot.pod(ns, name).unwrap();
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        (ip, node)
    };
    let pods_at = |backends: &Value| -> BTreeSet<String> {
        let ips: BTreeSet<String> = backends
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().rsplit_once(':').unwrap().0.to_string())
            .collect();
        snapshot
            .pods
            .iter()
            .filter(|p| !p.spec.as_ref().unwrap().host_network.unwrap_or(false))
            .filter(|p| ips.contains(p.status.as_ref().unwrap().pod_ip.as_deref().unwrap()))
            .map(|p| format!("{}/{}", p.namespace().unwrap(), p.name_any()))
            .collect()
    };
    let nodes: Vec<String> = snapshot.nodes.iter().map(|n| n.name_any()).collect();
    let probes = report["services"]
        .as_array()
        .expect("services in the report");
    assert!(!probes.is_empty());
    let mut answered = 0;
    for probe in probes {
        let (from, to) = (
            probe["from"].as_str().unwrap(),
            probe["address"].as_str().unwrap(),
        );
        let (port, protocol) = (
            probe["port"].as_u64().unwrap(),
            probe["protocol"].as_str().unwrap(),
        );
        let (source, candidate_nodes) = match (from, probe["node"].as_str()) {
            ("external", Some(node)) => (EXTERNAL_SOURCE.to_string(), vec![node.to_string()]),
            ("external", None) => (EXTERNAL_SOURCE.to_string(), nodes.clone()),
            (pod, _) => {
                let (ip, node) = pod_ip(pod);
                (ip, vec![node])
            }
        };
        // The fabric may hand an externalIP or LB IP to any node: all must agree.
        let traces: BTreeSet<String> = candidate_nodes
            .iter()
            .map(|node| trace(manifests, node, &source, to, port, protocol).to_string())
            .collect();
        assert_eq!(traces.len(), 1, "nodes disagree on {probe}: {traces:?}");
        let verdict: Value = serde_json::from_str(traces.first().unwrap()).unwrap();
        let expected = match verdict["verdict"].as_str().unwrap() {
            "forward" => pods_at(&verdict["backends"]),
            _ => BTreeSet::new(),
        };
        let got: BTreeSet<String> = probe["answered_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, expected, "probe {probe} vs trace {verdict}");
        if !expected.is_empty() {
            assert_eq!(probe["failures"], 0, "probe {probe}");
            answered += 1;
        }
    }
    answered
}

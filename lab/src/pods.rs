//! Pods, the way a kubelet and its container runtime would run them: a netns per Pod
//! wired by the node's CNI chain (the conflist the node's agent wrote, plugins run
//! inside the node netns through [`crate::cni_exec`]), the planned addresses
//! requested from host-local the CNI way (`"args": {"cni": {"ips": [...]}}` in the
//! network config, one per family) and checked against the result, the ADD result
//! kept for the DEL on teardown, a responder process answering on the Pod's ports,
//! and the Pod's status (podIP(s), hostIP, phase Running) written to the API server.
//! `hostNetwork` Pods skip CNI and run their responder in the node netns.
//!
//! [`start`] and [`stop`] are the one way a pod of the lab starts and stops, for the
//! manifests' pods in `lab up` and for the Pods [`super::kubelet`] picks up later:
//! each step is recorded in the state as it happens, so `lab down` undoes a pod
//! whatever point it reached.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::netns;
use super::process::{self, ProcessRecord};
use super::responder::format_port;
use super::state::{LabState, LabStateFile};
use super::topology::{LabPlan, PodPlan, PodPort};
use crate::cni_exec::{Attachment, CniResult, PluginRunner};

const CNI_RESULT: &str = "cni-result.json";
const POD_IFNAME: &str = "eth0";

fn attachment(pod: &PodPlan, netns_name: &str) -> Attachment {
    Attachment {
        container_id: pod.container_id.clone(),
        netns: netns::path(netns_name),
        ifname: POD_IFNAME.into(),
        cni_args: vec![
            ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
            ("K8S_POD_NAME".into(), pod.name.clone()),
            (
                "K8S_POD_INFRA_CONTAINER_ID".into(),
                pod.container_id.clone(),
            ),
        ],
        capability_args: Default::default(),
    }
}

/// `conflist` with the pod's planned addresses requested from every plugin that has
/// an IPAM section (CNI's `args.cni.ips` convention, which host-local honours for
/// several addresses at once; `CNI_ARGS` `IP=` takes only one).
fn request_ips(mut conflist: Value, ips: &[IpAddr]) -> Value {
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let plugins = conflist
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten();
    for plugin in plugins.filter(|p| p.get("ipam").is_some()) {
        if let Some(plugin) = plugin.as_object_mut() {
            plugin.insert("args".into(), json!({"cni": {"ips": ips}}));
        }
    }
    conflist
}

fn read_conflist(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// Creates the pod's netns and runs CNI ADD with the node's conflist; returns the
/// pod's addresses (the node's for hostNetwork pods).
pub async fn wire(
    state: &LabStateFile,
    plan: &LabPlan,
    pod: &PodPlan,
    conflist: &Path,
    plugin_dirs: &[PathBuf],
) -> anyhow::Result<Vec<IpAddr>> {
    let key = pod.key();
    let Some(pod_netns) = pod.netns.clone() else {
        return Ok(pod.ips.clone());
    };
    let node = plan
        .node(&pod.node)
        .with_context(|| format!("Pod {key}: node {} is not in the lab", pod.node))?;
    let lab = state.update(|s| {
        s.netns.push(pod_netns.clone());
        s.clone()
    })?;
    netns::add(&pod_netns).with_context(|| format!("Pod {key}"))?;
    let conflist = request_ips(read_conflist(conflist)?, &pod.ips);
    let runner = PluginRunner {
        plugin_dirs: plugin_dirs.to_vec(),
        node_netns: Some(node.netns.clone()),
    };
    let attach = attachment(pod, &pod_netns);
    let result = tokio::task::spawn_blocking(move || runner.add(&conflist, &attach))
        .await?
        .with_context(|| format!("Pod {key}: CNI ADD on node {}", pod.node))?;
    let dir = lab.pod_dir(&key);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(CNI_RESULT),
        serde_json::to_vec_pretty(&result.raw)?,
    )
    .with_context(|| format!("writing {}", dir.join(CNI_RESULT).display()))?;
    state.update(|s| s.wired_pods.push(key.clone()))?;
    let got: BTreeSet<IpAddr> = result.pod_ips().into_iter().collect();
    let wanted: BTreeSet<IpAddr> = pod.ips.iter().copied().collect();
    if got != wanted {
        bail!(
            "Pod {key}: CNI gave {got:?}, the lab asked for {wanted:?} (host-local args.cni.ips)"
        );
    }
    Ok(pod.ips.clone())
}

/// CNI DEL for a pod wired earlier (best effort: its netns goes away anyway).
pub async fn unwire(
    state: &LabState,
    pod: &PodPlan,
    plugin_dirs: &[PathBuf],
) -> anyhow::Result<()> {
    let (Some(pod_netns), Ok(plan)) = (pod.netns.clone(), state.plan()) else {
        return Ok(());
    };
    let Some(node) = plan.node(&pod.node) else {
        return Ok(());
    };
    let conflist_path = super::agents::conflist(&state.node_dir(&node.name));
    if !netns::exists(&node.netns) || !conflist_path.exists() {
        return Ok(());
    }
    let conflist = read_conflist(&conflist_path)?;
    let prev = std::fs::read(state.pod_dir(&pod.key()).join(CNI_RESULT))
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .and_then(|raw| CniResult::from_value(raw).ok());
    let runner = PluginRunner {
        plugin_dirs: plugin_dirs.to_vec(),
        node_netns: Some(node.netns.clone()),
    };
    let attach = attachment(pod, &pod_netns);
    let key = pod.key();
    tokio::task::spawn_blocking(move || runner.del(&conflist, &attach, prev.as_ref()))
        .await?
        .with_context(|| format!("Pod {key}: CNI DEL"))
}

/// Starts the pod's responder and waits until it has bound every port.
pub async fn start_responder(
    state: &LabStateFile,
    plan: &LabPlan,
    pod: &PodPlan,
    exe: &Path,
) -> anyhow::Result<Option<ProcessRecord>> {
    if pod.ports.is_empty() {
        return Ok(None);
    }
    let key = pod.key();
    let netns_name = plan
        .pod_netns(pod)
        .with_context(|| format!("Pod {key}: no netns"))?;
    let log = state.snapshot()?.pod_dir(&key).join("responder.log");
    let role = format!("responder {key}");
    let record = spawn_responder(state, netns_name, &key, &pod.ports, &role, &log, exe).await?;
    Ok(Some(record))
}

/// Starts `kubewire lab responder` in `netns`, answering as `who` on `ports`, records
/// it as `role` and waits until it has bound every port.
pub async fn spawn_responder(
    state: &LabStateFile,
    netns_name: &str,
    who: &str,
    ports: &[PodPort],
    role: &str,
    log: &Path,
    exe: &Path,
) -> anyhow::Result<ProcessRecord> {
    let mut command = netns::command_in(netns_name, exe);
    command.args(["responder", "--pod", who]);
    for port in ports {
        command.arg("--port").arg(format_port(port));
    }
    let lab_name = state.snapshot()?.name;
    let (record, mut child) = process::spawn(&lab_name, role, command, log, true)?;
    state.update(|s| s.processes.push(record.clone()))?;
    process::wait_ready(&record, &mut child, Duration::from_secs(10)).await?;
    Ok(record)
}

/// Writes the pod's status like a kubelet once its sandbox and responder run;
/// returns the Pod's uid.
pub async fn report_running(
    client: &kube::Client,
    plan: &LabPlan,
    pod: &PodPlan,
    ips: &[IpAddr],
) -> anyhow::Result<Option<String>> {
    let node = plan
        .node(&pod.node)
        .with_context(|| format!("Pod {}: node {} is not in the lab", pod.key(), pod.node))?;
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    // As a kubelet: the time it started the pod (which pod owns an address two
    // Pods claim depends on it).
    let started =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
        .map(|kind| json!({"type": kind, "status": "True", "lastTransitionTime": started}));
    let mut patch = json!({
        "status": {
            "phase": "Running",
            "startTime": started,
            "hostIP": node.address.to_string(),
            "hostIPs": super::topology::host_ips(node),
            "podIP": ips.first(),
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            // Ready, as a kubelet says once the containers run: a real
            // kube-controller-manager puts only ready pods in EndpointSlices as ready.
            "conditions": conditions,
        }
    });
    with_uid_precondition(&mut patch, pod);
    let written = Api::<Pod>::namespaced(client.clone(), &pod.namespace)
        .patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("Pod {}: writing status", pod.key()))?;
    Ok(written.metadata.uid)
}

/// Adds the pod's uid, when known, to a merge patch: the API server then refuses it
/// for another Pod made since under the same name.
pub fn with_uid_precondition(patch: &mut Value, pod: &PodPlan) {
    if let Some(uid) = &pod.uid {
        patch["metadata"] = json!({"uid": uid});
    }
}

/// What starting and stopping pods takes, in `lab up` and in the kubelet alike.
#[derive(Clone)]
pub struct PodRuntime {
    pub state: LabStateFile,
    /// A client of the lab's API server, for Pod status.
    pub client: kube::Client,
    /// The kubewire binary, run as each pod's responder.
    pub exe: PathBuf,
    pub plugin_dirs: Vec<PathBuf>,
}

/// Starts a pod of `plan`: its netns and CNI ADD with `conflist` (the pod's node's),
/// its responder, its status Running with its addresses, and its uid in the state.
/// A failure leaves what was done recorded; [`stop`] undoes it.
pub async fn start(
    runtime: &PodRuntime,
    plan: &LabPlan,
    pod: &PodPlan,
    conflist: &Path,
) -> anyhow::Result<()> {
    let ips = wire(&runtime.state, plan, pod, conflist, &runtime.plugin_dirs).await?;
    start_responder(&runtime.state, plan, pod, &runtime.exe).await?;
    let uid = report_running(&runtime.client, plan, pod, &ips).await?;
    let key = pod.key();
    runtime.state.update(|s| {
        let planned = s
            .plan
            .as_mut()
            .and_then(|plan| plan.pods.iter_mut().find(|p| p.key() == key));
        if let Some(planned) = planned {
            planned.uid = uid;
        }
    })?;
    Ok(())
}

/// Stops a pod the lab runs and forgets it: its responder (and anything else left in
/// its netns), CNI DEL, its netns and files, and its place in the plan. A failed
/// CNI DEL or netns deletion does not stop the other steps; they are reported after.
pub async fn stop(runtime: &PodRuntime, pod: &PodPlan) -> anyhow::Result<()> {
    let key = pod.key();
    let role = format!("responder {key}");
    let lab = runtime.state.snapshot()?;
    let responders: Vec<ProcessRecord> = lab
        .processes
        .iter()
        .filter(|p| p.role == role)
        .cloned()
        .collect();
    let inside = pod
        .netns
        .as_deref()
        .and_then(netns::inode)
        .map(|inode| netns::processes_in(&[inode]))
        .unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        process::terminate(&responders, &inside, Duration::from_secs(3));
    })
    .await?;
    runtime
        .state
        .update(|s| s.processes.retain(|p| p.role != role))?;
    let mut problems = Vec::new();
    if lab.wired_pods.contains(&key) {
        if let Err(err) = unwire(&lab, pod, &runtime.plugin_dirs).await {
            problems.push(format!("{err:#}"));
        }
        runtime
            .state
            .update(|s| s.wired_pods.retain(|k| *k != key))?;
    }
    if let Some(pod_netns) = &pod.netns {
        match netns::delete(pod_netns) {
            Ok(()) => runtime
                .state
                .update(|s| s.netns.retain(|n| n != pod_netns))?,
            Err(err) => problems.push(format!("Pod {key}: {err:#}")),
        }
    }
    let dir = lab.pod_dir(&key);
    match std::fs::remove_dir_all(&dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            problems.push(format!("removing {}: {err}", dir.display()));
        }
        _ => {}
    }
    runtime.state.update(|s| {
        if let Some(plan) = s.plan.as_mut() {
            plan.pods.retain(|p| p.key() != key);
        }
    })?;
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

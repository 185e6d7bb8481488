//! The lab's kubelet, run inside `lab control-plane`: keeps the pods the lab runs
//! (the pods of the plan in its state) equal to the Pods the API server holds for the
//! lab's nodes, as the kubelets of a cluster would, so that a Pod applied with
//! `kubectl --kubeconfig $(kubewire lab kubeconfig)` gets a netns, an address and a
//! responder, and a deleted one loses them.
//!
//! Guarantees:
//! - It acts only once `lab up` has marked the lab complete: the manifests' pods are
//!   `up`'s to start, and every pod is started by one code path ([`pods::start`]).
//! - A Pod is the lab's when `spec.nodeName` names a lab node, or is empty: then the
//!   kubelet places it like a scheduler ([`topology::place_pod`]) and binds it by
//!   writing `spec.nodeName`. Pods bound to other nodes are left alone.
//! - A Pod the lab does not run is started (placed and recorded in the plan first,
//!   so its addresses are held); a pod of the plan whose Pod is gone, is being
//!   deleted, or was made again under the same name (another uid) is stopped
//!   ([`pods::stop`]) before anything starts.
//! - A pod that fails to start is stopped again (nothing half-made stays), logged
//!   with its name, and retried after a backoff (200 ms doubling to 30 s) of its own;
//!   the other pods go on. A node whose agent has not written its CNI config yet is
//!   one such failure: its pods wait for it.
//!
//! [`decide`] is the pure part: the API's Pods and the plan in, what to stop and start
//! out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kubewire::cache::Pod;
use serde_json::json;

use super::agents;
use super::pods::{self, PodRuntime};
use super::state::LabStateFile;
use super::topology::{self, LabPlan, PodPlan};
use kubewire::cache::{Cache, Kind};
use kubewire::runtime::Backoff;
use kubewire::telemetry::Metrics;

/// How many pods start (or stop) at once.
const PARALLEL: usize = 4;

/// What one sync does.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Pods of the plan to stop, first.
    pub stop: Vec<PodPlan>,
    /// Pods of the API to start, after.
    pub start: Vec<Arc<Pod>>,
    /// Pods bound to a node the lab does not have: `(namespace/name, node)`.
    pub foreign: Vec<(String, String)>,
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Compares the Pods of the API with the pods of `plan` (pure).
pub fn decide(api: &[Arc<Pod>], plan: &LabPlan) -> Decision {
    let mut decision = Decision::default();
    let mut wanted: BTreeMap<String, &Arc<Pod>> = BTreeMap::new();
    for pod in api {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if let Some(node) = node.filter(|n| plan.node(n).is_none()) {
            decision.foreign.push((key(pod), node.to_string()));
            continue;
        }
        wanted.insert(key(pod), pod);
    }
    let mut running = BTreeSet::new();
    for planned in &plan.pods {
        let key = planned.key();
        let same = wanted.get(&key).is_some_and(|pod| {
            planned.uid.is_none() || planned.uid.as_deref() == pod.metadata.uid.as_deref()
        });
        if same {
            running.insert(key);
        } else {
            decision.stop.push(planned.clone());
        }
    }
    decision.start = wanted
        .into_iter()
        .filter(|(key, _)| !running.contains(key))
        .map(|(_, pod)| pod.clone())
        .collect();
    decision
}

/// Per-pod retry times after failed starts.
#[derive(Default)]
pub struct Retries {
    pods: BTreeMap<String, (Backoff, Instant)>,
}

impl Retries {
    /// Whether `key` may be tried at `now`.
    pub fn due(&self, key: &str, now: Instant) -> bool {
        self.pods.get(key).is_none_or(|(_, at)| *at <= now)
    }

    /// Records a failure at `now`; returns the delay until the next try.
    pub fn failed(&mut self, key: &str, now: Instant) -> Duration {
        let (backoff, at) = self
            .pods
            .entry(key.to_string())
            .or_insert_with(|| (Backoff::default(), now));
        let delay = backoff.next_delay();
        *at = now + delay;
        delay
    }

    /// Forgets `key` (it started).
    pub fn forget(&mut self, key: &str) {
        self.pods.remove(key);
    }

    /// Forgets every pod not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.pods.retain(|key, _| keep(key));
    }

    /// When the next retry is due.
    pub fn next(&self) -> Option<Instant> {
        self.pods.values().map(|(_, at)| *at).min()
    }
}

/// Runs the kubelet until the process ends; fails only when it cannot begin.
pub async fn run(state: LabStateFile, client: kube::Client) -> anyhow::Result<()> {
    wait_for_up(&state).await?;
    let lab = state.snapshot()?;
    let plugin_dirs = if lab.cni_bin_dirs.is_empty() {
        crate::cni_exec::default_plugin_dirs()
    } else {
        lab.cni_bin_dirs.clone()
    };
    let runtime = PodRuntime {
        state,
        client: client.clone(),
        exe: crate::binaries::lab()?,
        plugin_dirs,
    };
    let cache = Cache::start(
        client,
        &[Kind::Pod],
        Metrics::new(),
        Duration::from_secs(10),
    )
    .await;
    while let Err(err) = cache.wait_synced(Duration::from_secs(30)).await {
        tracing::warn!(error = %err, "kubelet: waiting for the API server");
    }
    tracing::info!("kubelet: watching Pods");
    let mut changes = cache.subscribe(&[Kind::Pod]);
    let mut retries = Retries::default();
    let mut reported = BTreeSet::new();
    let mut backoff = Backoff::default();
    loop {
        if let Err(err) = sync(&runtime, &cache, &mut retries, &mut reported).await {
            let retry_in = backoff.next_delay();
            tracing::error!(error = %format!("{err:#}"), ?retry_in, "kubelet: sync failed");
            tokio::time::sleep(retry_in).await;
            continue;
        }
        backoff.reset();
        let next = retries.next().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = changes.changed() => {}
            _ = sleep_until(next) => {}
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits until `lab up` has started the manifests' pods and marked the lab complete.
async fn wait_for_up(state: &LabStateFile) -> anyhow::Result<()> {
    tracing::info!("kubelet: waiting for `lab up` to start the manifests' pods");
    while !state.snapshot()?.complete {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// One pass: stop what is gone, then start what is new and due.
async fn sync(
    runtime: &PodRuntime,
    cache: &Cache,
    retries: &mut Retries,
    reported: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
    let lab = runtime.state.snapshot()?;
    let decision = decide(&cache.snapshot().pods, lab.plan()?);
    for (key, node) in &decision.foreign {
        if reported.insert(key.clone()) {
            tracing::info!(pod = %key, node = %node, "kubelet: Pod bound to a node the lab does not have; left alone");
        }
    }
    // Futures are collected before they run: a lazy iterator held across an await
    // would keep its closures in the spawned task (not provably Send).
    let stops: Vec<_> = decision.stop.iter().map(|pod| async move {
        match pods::stop(runtime, pod).await {
            Ok(()) => tracing::info!(pod = %pod.key(), node = %pod.node, "kubelet: pod stopped"),
            Err(err) => {
                tracing::warn!(pod = %pod.key(), error = %format!("{err:#}"), "kubelet: pod stopped, not cleanly");
            }
        }
    }).collect();
    futures::stream::iter(stops)
        .buffer_unordered(PARALLEL)
        .collect::<Vec<()>>()
        .await;

    let now = Instant::now();
    let starts: Vec<_> = decision
        .start
        .iter()
        .filter(|pod| retries.due(&key(pod), now))
        .map(|pod| async move { (key(pod), start(runtime, pod).await) })
        .collect();
    let results: Vec<(String, anyhow::Result<PodPlan>)> = futures::stream::iter(starts)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let waiting: BTreeSet<String> = decision.start.iter().map(|p| key(p)).collect();
    retries.retain(|key| waiting.contains(key));
    for (key, result) in results {
        match result {
            Ok(pod) => {
                retries.forget(&key);
                let ips: Vec<String> = pod.ips.iter().map(ToString::to_string).collect();
                tracing::info!(pod = %key, node = %pod.node, ips = %ips.join(","), "kubelet: pod started");
            }
            Err(err) => {
                let retry_in = retries.failed(&key, Instant::now());
                tracing::warn!(pod = %key, error = %format!("{err:#}"), ?retry_in, "kubelet: pod not started");
            }
        }
    }
    Ok(())
}

/// Places, binds and starts one Pod; on failure stops what was made.
async fn start(runtime: &PodRuntime, pod: &Pod) -> anyhow::Result<PodPlan> {
    let placed = runtime.state.update(|s| -> anyhow::Result<PodPlan> {
        let plan = s.plan.as_mut().context("the lab state has no plan")?;
        let placed = topology::place_pod(plan, pod).map_err(anyhow::Error::msg)?;
        plan.pods.push(placed.clone());
        Ok(placed)
    })??;
    let started = async {
        let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        if bound.is_none() {
            bind(&runtime.client, &placed).await?;
        }
        let lab = runtime.state.snapshot()?;
        let conflist = agents::conflist(&lab.node_dir(&placed.node));
        if !placed.host_network && !conflist.exists() {
            bail!(
                "Pod {}: waiting for node {}'s agent to write its CNI config {}",
                placed.key(),
                placed.node,
                conflist.display()
            );
        }
        pods::start(runtime, lab.plan()?, &placed, &conflist).await
    };
    match started.await {
        Ok(()) => Ok(placed),
        Err(err) => {
            if let Err(cleanup) = pods::stop(runtime, &placed).await {
                tracing::warn!(pod = %placed.key(), error = %format!("{cleanup:#}"), "kubelet: undoing a failed start");
            }
            Err(err)
        }
    }
}

/// Binds the Pod to its node, as the scheduler would.
async fn bind(client: &kube::Client, pod: &PodPlan) -> anyhow::Result<()> {
    let mut patch = json!({"spec": {"nodeName": pod.node}});
    pods::with_uid_precondition(&mut patch, pod);
    Api::<Pod>::namespaced(client.clone(), &pod.namespace)
        .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("Pod {}: binding it to node {}", pod.key(), pod.node))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubewire::cache::manifests::{parse_documents, snapshot_from_objects, typed};
    use std::path::Path;

    fn plan_of(yaml: &str) -> LabPlan {
        let objects = parse_documents(Path::new("t.yaml"), yaml).unwrap();
        topology::plan("t", &snapshot_from_objects(&objects).unwrap()).unwrap()
    }

    fn pod(name: &str, node: Option<&str>, uid: &str, deleting: bool) -> Arc<Pod> {
        let mut value = json!({
            "metadata": {"name": name, "namespace": "x", "uid": uid},
            "spec": {"containers": [{"name": "c"}]},
        });
        if let Some(node) = node {
            value["spec"]["nodeName"] = json!(node);
        }
        if deleting {
            value["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        Arc::new(typed(&value).unwrap())
    }

    fn names(decision: &Decision) -> (Vec<String>, Vec<String>, Vec<String>) {
        (
            decision.stop.iter().map(PodPlan::key).collect(),
            decision.start.iter().map(|p| key(p)).collect(),
            decision
                .foreign
                .iter()
                .map(|(key, _)| key.clone())
                .collect(),
        )
    }

    #[test]
    fn decides_which_pods_to_stop_and_start() {
        let manifest = "kind: Pod\nmetadata: {name: NAME, namespace: x}\nspec: {nodeName: n1, containers: [{name: c}]}\n---\n";
        let mut plan = plan_of(
            &["a", "b", "c", "d", "e"]
                .map(|n| manifest.replace("NAME", n))
                .concat(),
        );
        // a: started by `up` before its uid was known; b, c, d, e: uid recorded.
        for planned in plan.pods.iter_mut().skip(1) {
            planned.uid = Some(format!("uid-{}", planned.name));
        }
        let api = vec![
            pod("a", Some("n1"), "uid-a", false),
            pod("b", Some("n1"), "uid-b", false),
            // c was deleted and made again under its name.
            pod("c", Some("n1"), "uid-c2", false),
            // d is being deleted; e is gone from the API.
            pod("d", Some("n1"), "uid-d", true),
            // New: unbound, bound to a lab node, bound elsewhere, being deleted.
            pod("f", None, "uid-f", false),
            pod("g", Some("n2"), "uid-g", false),
            pod("h", Some("elsewhere"), "uid-h", false),
            pod("i", None, "uid-i", true),
        ];
        let decision = decide(&api, &plan);
        assert_eq!(
            names(&decision),
            (
                vec!["x/c".into(), "x/d".into(), "x/e".into()],
                vec!["x/c".into(), "x/f".into(), "x/g".into()],
                vec!["x/h".into()],
            )
        );
        assert_eq!(decision.foreign[0].1, "elsewhere");
        // Once done, nothing is left to do.
        plan.pods
            .retain(|p| !["c", "d", "e"].contains(&p.name.as_str()));
        for (name, uid) in [("c", "uid-c2"), ("f", "uid-f"), ("g", "uid-g")] {
            let mut planned = plan.pods[0].clone();
            planned.name = name.into();
            planned.uid = Some(uid.into());
            plan.pods.push(planned);
        }
        let decision = decide(&api, &plan);
        assert_eq!(names(&decision), (vec![], vec![], vec!["x/h".into()]));
    }

    #[test]
    fn a_bound_pod_moved_off_the_lab_is_stopped() {
        let mut plan = plan_of(
            "kind: Pod\nmetadata: {name: a, namespace: x}\nspec: {nodeName: n1, containers: [{name: c}]}\n",
        );
        plan.pods[0].uid = Some("u".into());
        let decision = decide(&[pod("a", Some("other"), "u", false)], &plan);
        assert_eq!(
            names(&decision),
            (vec!["x/a".into()], vec![], vec!["x/a".into()])
        );
    }

    #[test]
    fn retries_back_off_per_pod() {
        let mut retries = Retries::default();
        let now = Instant::now();
        assert!(retries.due("x/a", now));
        assert_eq!(retries.failed("x/a", now), Duration::from_millis(200));
        assert!(!retries.due("x/a", now));
        assert!(retries.due("x/b", now), "other pods go on");
        assert!(retries.due("x/a", now + Duration::from_millis(200)));
        assert_eq!(retries.failed("x/a", now), Duration::from_millis(400));
        assert_eq!(retries.next(), Some(now + Duration::from_millis(400)));
        retries.retain(|key| key != "x/a");
        assert!(retries.due("x/a", now));
        assert_eq!(retries.next(), None);
    }
}

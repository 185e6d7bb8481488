//! The NetworkPolicy conformance suite through a real lab, shared by `netpol_lab`
//! (the embedded API server) and `e2e` (a real kube-apiserver): [`run_suite`].
//!
//! The cases (tests/netpol/cases) run through a real lab (root):
//! every step of every case is measured with real packets by `kubewire lab probe`,
//! with every controller the agents run by default, and compared row by row with the
//! step's expected.txt — the same comparison `tests/firewall_conformance.rs` makes of
//! `firewall matrix`.
//!
//! One lab per case, brought up with step 1. A later step is applied through the
//! lab's API server, like `kubectl apply` would (objects gone: delete; new: create;
//! changed: update), and the agents must react to the watch; only a step that adds,
//! removes or moves a pod gets a fresh lab (so a pod's address never depends on the
//! steps before it; tests/lab.rs covers pods added to a running lab). Before
//! each probe every node's `inet kubewire` table must equal what the firewall
//! compiles from what the API server holds, and the firewall must have synced since
//! the change: the probe measures the converged state, not a race with it.
//!
//! SCTP: the responders answer SCTP only where the kernel has it, which CI's does
//! not, so every SCTP probe fails there. The SCTP rows are compared only where the
//! kernel has SCTP (in the VM harness: `tests/vm/run netpol_lab`); elsewhere only the
//! TCP and UDP rows are, and the summary line says which.
//!
//! Cases run `KUBEWIRE_NETPOL_LAB_JOBS` at a time (default 2). `KUBEWIRE_NETPOL_CASES`
//! (a comma list of name prefixes) limits the run to some cases;
//! `KUBEWIRE_NETPOL_PROBE_TIMEOUT` (e.g. `3s`) is `lab probe --timeout`, for slow
//! (emulated) machines.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{kubewire, temp_dir, unique};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kubewire::cache::manifests::{self, ManifestObject};
use kubewire::cache::{Kind, Snapshot};
use kubewire::firewall::FirewallInput;
use kubewire::firewall::apply::{Observed, differences};
use kubewire::firewall::cluster::Protocol;
use kubewire::firewall::compile::{self, CompileOptions};
use kubewire::firewall::conformance::{self, Case};
use kubewire::firewall::matrix::{self, Matrix, MatrixResult};
use kubewire::firewall::model::{FAMILY, TABLE};
use kubewire::nft::Nft;
use kubewire_lab::agents;
use kubewire_lab::state::LabState;
use serde_json::{Value, json};

/// How long the agents may take to bring the dataplane to a changed cluster.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

fn all_cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/netpol/cases");
    let cases = conformance::cases(&root).unwrap();
    match std::env::var("KUBEWIRE_NETPOL_CASES") {
        Ok(list) if !list.trim().is_empty() => cases
            .into_iter()
            .filter(|c| list.split(',').any(|p| c.name.starts_with(p.trim())))
            .collect(),
        _ => cases,
    }
}

/// Whether this kernel has SCTP (creating a socket loads the module where it can).
fn kernel_has_sctp() -> bool {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .is_ok()
}

/// The rows the lab measures for real on this kernel (see the module doc).
fn measured_here(row: &MatrixResult, sctp: bool) -> bool {
    sctp || row.protocol != Protocol::Sctp
}

/// A lab that is up; `lab down` runs when it is dropped.
struct Lab {
    name: String,
    state: tempfile::TempDir,
    client: kube::Client,
}

impl Lab {
    fn state_dir(&self) -> PathBuf {
        self.state.path().join("lab")
    }

    fn run(name: &str, state_dir: &Path, verb: &str, extra: &[&str]) -> std::process::Output {
        let state_dir = state_dir.display().to_string();
        let mut args = vec!["lab", verb, "--name", name, "--state-dir", &state_dir];
        args.extend_from_slice(extra);
        kubewire(&args)
    }

    fn up(
        manifests: &Path,
        runtime: &tokio::runtime::Runtime,
        suite: &Suite,
    ) -> Result<Lab, String> {
        let name = unique("np");
        let state = temp_dir();
        let state_dir = state.path().join("lab");
        let manifests = manifests.display().to_string();
        // The cases probe pods only: the agents run without the service proxy, which
        // has labs of its own (and would make each lab slower to come up in the VM).
        let mut args = vec![
            "--manifests",
            &manifests,
            "--agent-arg=--run-service-proxy=false",
        ];
        args.extend(suite.up_args.iter().map(String::as_str));
        let output = Self::run(&name, &state_dir, "up", &args);
        if !output.status.success() {
            let _ = Self::run(&name, &state_dir, "down", &[]);
            return Err(format!(
                "lab up failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        // From here on the guard brings the lab down, whatever happens.
        let kubeconfig = Self::run(&name, &state_dir, "kubeconfig", &[]);
        let client = if kubeconfig.status.success() {
            let path = String::from_utf8_lossy(&kubeconfig.stdout)
                .trim()
                .to_string();
            runtime
                .block_on(kubewire::agent::client_from_kubeconfig(Path::new(&path)))
                .map_err(|e| format!("kube client: {e:#}"))
        } else {
            Err(format!(
                "lab kubeconfig failed: {}",
                String::from_utf8_lossy(&kubeconfig.stderr)
            ))
        };
        let client = match client {
            Ok(client) => client,
            Err(err) => {
                let _ = Self::run(&name, &state_dir, "down", &[]);
                return Err(err);
            }
        };
        Ok(Lab {
            name,
            state,
            client,
        })
    }

    fn probe(&self) -> Result<Matrix, String> {
        // Every probe at once: a denied one waits out its whole timeout.
        let mut args = vec!["--format", "json", "--parallel", "1024"];
        let timeout = std::env::var("KUBEWIRE_NETPOL_PROBE_TIMEOUT").unwrap_or_default();
        if !timeout.is_empty() {
            args.extend(["--timeout", timeout.as_str()]);
        }
        let output = Self::run(&self.name, &self.state_dir(), "probe", &args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "lab probe failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        serde_json::from_str(&stdout).map_err(|e| format!("lab probe printed no matrix ({e})"))
    }

    /// (node, netns) of every node of the lab.
    fn nodes(&self) -> Vec<(String, String)> {
        let state = LabState::load(&self.state_dir()).unwrap().unwrap();
        state
            .plan()
            .unwrap()
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.netns.clone()))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Self::run(&self.name, &self.state_dir(), "down", &[]);
    }
}

// ---- applying a step through the API server ----

type Key = (Kind, String, String);

fn key(object: &ManifestObject) -> Key {
    let text = |pointer: &str| {
        object
            .value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (
        object.kind,
        text("/metadata/namespace"),
        text("/metadata/name"),
    )
}

fn by_key(objects: &[ManifestObject]) -> BTreeMap<Key, Value> {
    // Later duplicates win, as in the manifests loader.
    objects.iter().map(|o| (key(o), o.value.clone())).collect()
}

/// What a pod is to the lab apart from its labels and annotations: where it runs,
/// its addresses and ports. Pods the lab wired at `up` must keep all of it.
fn wiring(pod: &Value) -> Value {
    let mut pod = pod.clone();
    if let Some(metadata) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("labels");
        metadata.remove("annotations");
    }
    pod
}

/// Whether the lab of `before` can become `after` through its API server alone: the
/// same pods (apart from labels) and the same nodes.
fn reachable_by_api(before: &[ManifestObject], after: &[ManifestObject]) -> bool {
    let wired = |objects: &[ManifestObject]| -> BTreeMap<Key, Value> {
        by_key(objects)
            .into_iter()
            .filter(|((kind, _, _), _)| matches!(kind, Kind::Pod | Kind::Node))
            .map(|(key, value)| {
                let value = if key.0 == Kind::Pod {
                    wiring(&value)
                } else {
                    value
                };
                (key, value)
            })
            .collect()
    };
    wired(before) == wired(after)
}

fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Node => ApiResource::erase::<Node>(&()),
        Kind::Namespace => ApiResource::erase::<Namespace>(&()),
        Kind::Pod => ApiResource::erase::<Pod>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
        Kind::ServiceCIDR => ApiResource::erase::<ServiceCIDR>(&()),
    }
}

fn dynamic_api(client: &kube::Client, kind: Kind, namespace: &str) -> Api<DynamicObject> {
    let resource = api_resource(kind);
    if kind.namespaced() {
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    }
}

/// Makes the API server hold `after` instead of `before`, like `kubectl apply` of the
/// new step plus `kubectl delete` of what it no longer has. A changed pod keeps what
/// the lab gave it (node, status) and takes the new labels and annotations.
async fn apply_step(
    client: &kube::Client,
    before: &[ManifestObject],
    after: &[ManifestObject],
) -> Result<(), String> {
    let before = by_key(before);
    let after = by_key(after);
    let label = |(kind, ns, name): &Key| format!("{kind} {ns}/{name}");
    for key @ (kind, ns, name) in before.keys().filter(|k| !after.contains_key(*k)) {
        dynamic_api(client, *kind, ns)
            .delete(name, &DeleteParams::default())
            .await
            .map_err(|e| format!("deleting {}: {e}", label(key)))?;
    }
    for (key @ (kind, ns, name), value) in &after {
        let api = dynamic_api(client, *kind, ns);
        match before.get(key) {
            None => {
                let object: DynamicObject = serde_json::from_value(value.clone())
                    .map_err(|e| format!("{}: {e}", label(key)))?;
                match api.create(&PostParams::default(), &object).await {
                    Ok(_) => {}
                    // A real server holds every Namespace in use, also those the
                    // step before left implicit: the step's object updates it.
                    Err(kube::Error::Api(status))
                        if status.code == 409 && *kind == Kind::Namespace =>
                    {
                        let current = api
                            .get(name)
                            .await
                            .map_err(|e| format!("reading {}: {e}", label(key)))?;
                        let mut new = value.clone();
                        new["metadata"]["resourceVersion"] =
                            json!(current.metadata.resource_version);
                        let object: DynamicObject = serde_json::from_value(new)
                            .map_err(|e| format!("{}: {e}", label(key)))?;
                        api.replace(name, &PostParams::default(), &object)
                            .await
                            .map_err(|e| format!("updating {}: {e}", label(key)))?;
                    }
                    Err(e) => return Err(format!("creating {}: {e}", label(key))),
                }
            }
            Some(old) if old == value => {}
            Some(_) => {
                let current = api
                    .get(name)
                    .await
                    .map_err(|e| format!("reading {}: {e}", label(key)))?;
                let mut current =
                    serde_json::to_value(current).map_err(|e| format!("{}: {e}", label(key)))?;
                let mut new = value.clone();
                if *kind == Kind::Pod {
                    for field in ["labels", "annotations"] {
                        current["metadata"][field] =
                            new["metadata"].get(field).cloned().unwrap_or(Value::Null);
                    }
                    new = current;
                } else {
                    new["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                    if let Some(status) = current.get("status") {
                        new["status"] = status.clone();
                    }
                }
                let object: DynamicObject =
                    serde_json::from_value(new).map_err(|e| format!("{}: {e}", label(key)))?;
                api.replace(name, &PostParams::default(), &object)
                    .await
                    .map_err(|e| format!("updating {}: {e}", label(key)))?;
            }
        }
    }
    Ok(())
}

// ---- waiting for the agents ----

/// Everything the lab's API server holds, as the agents' caches see it.
async fn server_snapshot(client: &kube::Client) -> Result<Snapshot, String> {
    async fn list<K>(client: &kube::Client) -> Result<Vec<Arc<K>>, String>
    where
        K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
        K::Scope: 'static,
    {
        let list = Api::<K>::all(client.clone())
            .list(&Default::default())
            .await
            .map_err(|e| format!("listing {}: {e}", K::kind(&())))?;
        Ok(list.items.into_iter().map(Arc::new).collect())
    }
    Ok(Snapshot {
        nodes: list(client).await?,
        namespaces: list(client).await?,
        pods: list(client).await?,
        services: list(client).await?,
        endpoint_slices: list(client).await?,
        network_policies: list(client).await?,
        service_cidrs: list(client).await?,
    }
    .sorted())
}

/// How `node`'s table differs from what the firewall compiles from `input`.
async fn table_differences(input: &FirewallInput, node: &str, netns: &str) -> Vec<String> {
    let options = CompileOptions {
        node: node.to_string(),
        default_deny: false,
        log_group: None,
    };
    let desired = compile::compile(input, &options);
    match Nft::in_netns(netns).list_table(FAMILY, TABLE, false).await {
        Ok(listing) => differences(&desired, &Observed::from_json(&listing), true),
        Err(err) => vec![format!("listing the table: {err}")],
    }
}

/// Each node's agent's /metrics (nodes whose agent does not answer are left out).
async fn metrics(nodes: &[(String, String)]) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for (node, netns) in nodes {
        if let Ok((200, body)) = agents::http_get(netns, agents::METRICS_ADDR, "/metrics").await {
            all.insert(node.clone(), body);
        }
    }
    all
}

/// Successful firewall syncs of each node's agent.
async fn firewall_syncs(nodes: &[(String, String)]) -> BTreeMap<String, u64> {
    metrics(nodes)
        .await
        .into_iter()
        .map(|(node, body)| {
            let syncs = agents::controller_activity(&body)
                .into_iter()
                .find(|a| a.controller == "firewall")
                .map_or(0, |a| a.syncs);
            (node, syncs)
        })
        .collect()
}

/// Each node's firewall's count of bad objects it left out (`None`: not reported).
async fn bad_objects(nodes: &[(String, String)]) -> BTreeMap<String, Option<u64>> {
    metrics(nodes)
        .await
        .into_iter()
        .map(|(node, body)| {
            let count = body.lines().find_map(|line| {
                line.strip_prefix("kubewire_controller_bad_objects{controller=\"firewall\"} ")?
                    .trim()
                    .parse()
                    .ok()
            });
            (node, count)
        })
        .collect()
}

/// Waits until every node's firewall synced after `since` (when given) and its
/// table equals what the firewall compiles from the API server's objects.
async fn converge(
    client: &kube::Client,
    nodes: &[(String, String)],
    since: Option<&BTreeMap<String, u64>>,
) -> Result<(), String> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let input = FirewallInput::from_snapshot(&server_snapshot(client).await?);
    loop {
        let mut pending = Vec::new();
        if let Some(since) = since {
            let now = firewall_syncs(nodes).await;
            for (node, _) in nodes {
                let (before, after) = (since.get(node), now.get(node));
                if after.is_none() || after <= before {
                    pending.push(format!("{node}: no firewall sync since the change"));
                }
            }
        }
        if pending.is_empty() {
            for (node, netns) in nodes {
                for difference in table_differences(&input, node, netns).await {
                    pending.push(format!("{node}: {difference}"));
                }
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the agents did not converge within {CONVERGE_TIMEOUT:?}: {}",
                pending.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- one case ----

#[derive(Default)]
struct Timing {
    up: Duration,
    change: Duration,
    probe: Duration,
    down: Duration,
}

#[derive(Default)]
struct Outcome {
    steps: usize,
    labs: usize,
    failures: Vec<String>,
    timing: Timing,
}

/// The measured rows compared with the expectations and with the rows
/// `firewall matrix` has for the step (no more, no fewer).
fn compare(step: &Path, measured: &Matrix, sctp: bool) -> Vec<String> {
    let expectation = Case::expectation(step).unwrap();
    let measured = Matrix {
        results: measured
            .results
            .iter()
            .filter(|r| measured_here(r, sctp))
            .cloned()
            .collect(),
    };
    let mut problems: Vec<String> = expectation
        .compare(&measured)
        .iter()
        .map(ToString::to_string)
        .collect();
    let predicted = matrix::compute(&FirewallInput::from_snapshot(
        &manifests::load_snapshot(step).unwrap(),
    ));
    let cell = |r: &MatrixResult| (r.from.clone(), r.to.clone(), r.port, r.protocol);
    let predicted: BTreeSet<_> = predicted
        .results
        .iter()
        .filter(|r| measured_here(r, sctp))
        .map(cell)
        .collect();
    let probed: BTreeSet<_> = measured.results.iter().map(cell).collect();
    for (from, to, port, protocol) in predicted.difference(&probed) {
        problems.push(format!("{from} -> {to} {port}/{protocol}: not probed"));
    }
    for (from, to, port, protocol) in probed.difference(&predicted) {
        problems.push(format!(
            "{from} -> {to} {port}/{protocol}: probed, but not a row of firewall matrix"
        ));
    }
    if measured.results.is_empty() {
        problems.push("no row measured".into());
    }
    problems
}

fn run_case(case: &Case, runtime: &tokio::runtime::Runtime, sctp: bool, suite: &Suite) -> Outcome {
    let mut outcome = Outcome::default();
    let mut lab: Option<Lab> = None;
    let mut previous: Option<Vec<ManifestObject>> = None;
    for (index, step) in case.steps.iter().enumerate() {
        let label = format!("{} step {}", case.name, index + 1);
        let objects = manifests::load_objects(step).unwrap();
        let started = Instant::now();
        let live = match (&lab, &previous) {
            (Some(lab), Some(before)) if reachable_by_api(before, &objects) => {
                let since = runtime.block_on(firewall_syncs(&lab.nodes()));
                let changed = runtime
                    .block_on(apply_step(&lab.client, before, &objects))
                    .and_then(|()| {
                        runtime.block_on(converge(&lab.client, &lab.nodes(), Some(&since)))
                    });
                outcome.timing.change += started.elapsed();
                Some(changed)
            }
            _ => None,
        };
        let result = match live {
            Some(result) => result,
            None => {
                if let Some(old) = lab.take() {
                    let down = Instant::now();
                    drop(old);
                    outcome.timing.down += down.elapsed();
                }
                let up = Instant::now();
                let fresh = Lab::up(step, runtime, suite).and_then(|fresh| {
                    runtime.block_on(converge(&fresh.client, &fresh.nodes(), None))?;
                    Ok(fresh)
                });
                outcome.timing.up += up.elapsed();
                outcome.labs += 1;
                fresh.map(|fresh| lab = Some(fresh))
            }
        };
        previous = Some(objects);
        outcome.steps += 1;
        if let Err(err) = result {
            outcome.failures.push(format!("{label}: {err}"));
            // Later steps build on this one: start them from a fresh lab.
            lab = None;
            continue;
        }
        let Some(current) = &lab else { continue };
        // Bad objects are left out and reported, never fatal (the pure runner checks
        // the reports' text; here every agent must count them and go on).
        let expected_bad = Case::expectation(step).unwrap().errors().len() as u64;
        let nodes = current.nodes();
        let counted = runtime.block_on(bad_objects(&nodes));
        for (node, _) in &nodes {
            let count = counted.get(node).copied().flatten();
            if count != Some(expected_bad) {
                outcome.failures.push(format!(
                    "{label}: node {node}'s firewall counts {count:?} bad objects, expected {expected_bad}"
                ));
            }
        }
        let probe = Instant::now();
        let measured = current.probe();
        outcome.timing.probe += probe.elapsed();
        match measured {
            Ok(measured) => outcome.failures.extend(
                compare(step, &measured, sctp)
                    .into_iter()
                    .map(|m| format!("{label}: {m}")),
            ),
            Err(err) => outcome.failures.push(format!("{label}: {err}")),
        }
    }
    let down = Instant::now();
    drop(lab);
    outcome.timing.down += down.elapsed();
    outcome
}

/// How the suite runs its labs.
#[derive(Clone, Debug, Default)]
pub struct Suite {
    /// Added to every `lab up` (e.g. `--apiserver-kubeconfig F`).
    pub up_args: Vec<String>,
    /// Labs at a time, instead of `KUBEWIRE_NETPOL_LAB_JOBS` (one API server shared
    /// by all labs holds one lab's Nodes and Pods at a time).
    pub jobs: Option<usize>,
    /// Leave out the cases whose steps hold objects the firewall must refuse: a real
    /// API server refuses them first (its validation), so they cannot be applied.
    pub only_valid_objects: bool,
}

/// Every selected case through the lab; panics listing every mismatch.
pub fn run_suite(suite: &Suite) {
    let started = Instant::now();
    let mut cases = all_cases();
    let selected = cases.len();
    if suite.only_valid_objects {
        cases.retain(|case| {
            case.steps
                .iter()
                .all(|step| Case::expectation(step).unwrap().errors().is_empty())
        });
    }
    let left_out = selected - cases.len();
    assert!(!cases.is_empty(), "no case selected");
    let jobs: usize = suite
        .jobs
        .or_else(|| {
            std::env::var("KUBEWIRE_NETPOL_LAB_JOBS")
                .ok()
                .and_then(|j| j.parse().ok())
        })
        .unwrap_or(2)
        .max(1);
    let sctp = kernel_has_sctp();
    let queue = Arc::new(Mutex::new(cases.iter().cloned().collect::<VecDeque<_>>()));
    let outcomes = Arc::new(Mutex::new(Vec::<(String, Outcome)>::new()));
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (queue, outcomes) = (queue.clone(), outcomes.clone());
            let suite = suite.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                loop {
                    let Some(case) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let outcome = run_case(&case, &runtime, sctp, &suite);
                    outcomes.lock().unwrap().push((case.name.clone(), outcome));
                }
            })
        })
        .collect();
    // Join every worker before failing, so each brings its labs down.
    let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
    for result in joined {
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
    let mut outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));

    let mut timing = Timing::default();
    let (mut steps, mut labs, mut failures, mut failed_cases) = (0, 0, Vec::new(), 0);
    for (_, outcome) in &outcomes {
        steps += outcome.steps;
        labs += outcome.labs;
        timing.up += outcome.timing.up;
        timing.change += outcome.timing.change;
        timing.probe += outcome.timing.probe;
        timing.down += outcome.timing.down;
        failed_cases += usize::from(!outcome.failures.is_empty());
        failures.extend(outcome.failures.iter().cloned());
    }
    println!(
        "netpol through the lab: {} cases, {steps} steps, {labs} labs, {jobs} at a time: \
         {:.1}s wall (summed over cases: up {:.1}s, live changes {:.1}s, probes {:.1}s, \
         down {:.1}s); {} cases passed ({left_out} with objects an API server refuses left out); \
         rows compared: {}",
        outcomes.len(),
        started.elapsed().as_secs_f64(),
        timing.up.as_secs_f64(),
        timing.change.as_secs_f64(),
        timing.probe.as_secs_f64(),
        timing.down.as_secs_f64(),
        outcomes.len() - failed_cases,
        if sctp {
            "TCP, UDP and SCTP"
        } else {
            "TCP and UDP (this kernel has no SCTP)"
        },
    );
    assert!(
        failures.is_empty(),
        "{} mismatches in {failed_cases} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

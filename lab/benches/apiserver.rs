//! The embedded API server with 7,500 objects (prints numbers, asserts none): `lab
//! apiserver` as its own process (start-up, resident memory, lists of 5,000 pods in
//! one request and in pages), then in process the watch throughput of 5,000 patches
//! to 4 watchers. `cargo bench -p kubewire-lab --bench run -- apiserver`

use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, WatchParams};
use serde_json::{Value, json};

use crate::Outcome;
use crate::apiserver_support::{ServerProcess, collect, pod, start};

/// 5,000 pods in 50 namespaces on 20 nodes, 1,000 services with one 5-endpoint slice
/// each, 500 policies.
fn large_cluster() -> Vec<Value> {
    let mut objects = Vec::new();
    for i in 0..5000 {
        let mut p = pod(
            &format!("ns{}", i % 50),
            &format!("pod-{i}"),
            &format!("n{}", i % 20),
            &format!("app{}", i % 100),
        );
        p["status"]["podIP"] = json!(format!(
            "10.{}.{}.{}",
            200 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
        objects.push(p);
    }
    for i in 0..1000 {
        objects.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns{}", i % 50)},
            "spec": {"clusterIP": format!("10.96.{}.{}", i / 256, i % 256),
                     "selector": {"app": format!("app{}", i % 100)},
                     "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}));
        let endpoints: Vec<Value> = (0..5)
            .map(|j| json!({"addresses": [format!("10.200.{}.{}", i % 256, j)], "conditions": {"ready": true}}))
            .collect();
        objects.push(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc-{i}-abc"), "namespace": format!("ns{}", i % 50),
                         "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"port": 8080, "protocol": "TCP"}]}),
        );
    }
    for i in 0..500 {
        objects.push(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("pol-{i}"), "namespace": format!("ns{}", i % 50)},
            "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", i % 100)}},
                     "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 8080}]}]}}),
        );
    }
    objects
}

/// Lists every pod, in one request or in pages; returns how many.
async fn list_all_pods(pods: &Api<Pod>, page: Option<u32>) -> usize {
    let mut total = 0;
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default();
        if let Some(page) = page {
            params = params.limit(page);
        }
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let list = pods.list(&params).await.unwrap();
        total += list.items.len();
        token = list.metadata.continue_;
        if token.is_none() {
            return total;
        }
    }
}

pub fn run() -> Outcome {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(benchmark_list_and_watch());
    Ok(())
}

/// Prints the server's memory, list times and watch throughput with
/// [`large_cluster`].
async fn benchmark_list_and_watch() {
    let objects = large_cluster();
    // The command, as its own process, for its memory.
    let manifests: Vec<String> = objects.iter().map(Value::to_string).collect();
    let started = Instant::now();
    let process = ServerProcess::spawn(&manifests.join("\n---\n"));
    println!(
        "`lab apiserver` loaded 7,500 objects and listens after {:?}",
        started.elapsed()
    );
    let (rss, _) = memory_mib(&process);
    println!("server resident memory, idle: {rss:.1} MiB");
    crate::report::figure("rss_idle_7500_objects", rss, "MiB");
    let pods: Api<Pod> = Api::all(process.client().await);
    for (label, page) in [("one request", None), ("pages of 500", Some(500))] {
        let started = Instant::now();
        assert_eq!(list_all_pods(&pods, page).await, 5000);
        println!("list 5,000 pods ({label}): {:?}", started.elapsed());
        crate::report::millis(
            &format!("list_5000_pods.{}", label.replace(' ', "_")),
            started.elapsed(),
        );
    }
    let (rss, peak) = memory_mib(&process);
    println!("server resident memory after the lists: {rss:.1} MiB (peak {peak:.1} MiB)");
    drop(process);
    // In process, for watch throughput.
    let (server, client) = start(objects, 10_000).await;
    let pods: Api<Pod> = Api::all(client.clone());
    let rv = server.read(|state| state.resource_version()).to_string();
    let watchers = 4;
    let events = crate::report::scale(5000, 1000);
    let mut streams = Vec::new();
    for _ in 0..watchers {
        streams.push(
            pods.watch(&WatchParams::default().timeout(120), &rv)
                .await
                .unwrap()
                .boxed(),
        );
    }
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for i in 0..events {
            let api: Api<Pod> = Api::namespaced(client.clone(), &format!("ns{}", i % 50));
            let patch = Patch::Merge(json!({"metadata": {"labels": {"rev": i.to_string()}}}));
            api.patch(&format!("pod-{i}"), &PatchParams::default(), &patch)
                .await
                .unwrap();
        }
    });
    let readers: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(async move { collect(s, events, false).await.len() }))
        .collect();
    writer.await.unwrap();
    let writes = started.elapsed();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), events);
    }
    let elapsed = started.elapsed();
    println!(
        "{events} patches in {writes:?} ({:.0}/s); {watchers} watchers received all {events} events in {elapsed:?} ({:.0} events/s delivered)",
        events as f64 / writes.as_secs_f64(),
        (events * watchers) as f64 / elapsed.as_secs_f64()
    );
    crate::report::figure("patches_per_s", events as f64 / writes.as_secs_f64(), "1/s");
    crate::report::figure(
        "watch_events_delivered_per_s",
        (events * watchers) as f64 / elapsed.as_secs_f64(),
        "1/s",
    );
    server.shutdown().await;
}

/// `VmRSS` and `VmHWM` (peak) of the server process in MiB.
fn memory_mib(process: &ServerProcess) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

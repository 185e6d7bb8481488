//! The shared watch cache against the embedded API server over real HTTP: it follows
//! adds, updates and deletes of every kind, outlives a server restart, relists after
//! a 410, and `wait_synced` names the kinds that never sync.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Api, Client, Resource, ResourceExt};
use kubewire::cache::manifests::ManifestObject;
use kubewire::cache::{Cache, Kind, Snapshot};
use kubewire::telemetry::Metrics;
use kubewire_lab::apiserver::{ApiServer, ApiServerConfig, ApiState};
use serde_json::{Value, json};

/// One object of each kind, all named `<prefix>...`, namespaced ones in `a`.
fn one_of_each(prefix: &str) -> Vec<(Kind, Value)> {
    vec![
        (
            Kind::Node,
            json!({"metadata": {"name": format!("{prefix}node")},
            "spec": {"podCIDRs": ["10.244.1.0/24"]}}),
        ),
        (
            Kind::Namespace,
            json!({"metadata": {"name": format!("{prefix}ns")}}),
        ),
        (
            Kind::Pod,
            json!({"metadata": {"name": format!("{prefix}pod"), "namespace": "a"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}}),
        ),
        (
            Kind::Service,
            json!({"metadata": {"name": format!("{prefix}svc"), "namespace": "a"},
            "spec": {"ports": [{"port": 80}]}}),
        ),
        (
            Kind::EndpointSlice,
            json!({"metadata": {"name": format!("{prefix}slice"), "namespace": "a"},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.5"]}]}),
        ),
        (
            Kind::NetworkPolicy,
            json!({"metadata": {"name": format!("{prefix}policy"), "namespace": "a"},
            "spec": {"podSelector": {}}}),
        ),
        (
            Kind::ServiceCIDR,
            json!({"metadata": {"name": format!("{prefix}cidr")},
            "spec": {"cidrs": ["10.96.0.0/12"]}}),
        ),
    ]
}

fn seed(objects: Vec<(Kind, Value)>) -> Vec<ManifestObject> {
    objects
        .into_iter()
        .map(|(kind, mut value)| {
            kubewire::cache::manifests::apply_defaults(kind, &mut value);
            value["kind"] = json!(kind.as_str());
            ManifestObject { kind, value }
        })
        .collect()
}

fn config(history: usize) -> ApiServerConfig {
    ApiServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        history,
        bookmark_interval: Duration::from_millis(500),
        seed: Vec::new(),
    }
}

/// Every cached object as `(kind, namespace/name)` → labels.
fn contents(snapshot: &Snapshot) -> BTreeMap<(Kind, String), BTreeMap<String, String>> {
    fn add<K: Resource>(
        out: &mut BTreeMap<(Kind, String), BTreeMap<String, String>>,
        kind: Kind,
        objects: &[Arc<K>],
    ) {
        for object in objects {
            let key = match object.meta().namespace.as_deref() {
                Some(ns) => format!("{ns}/{}", object.name_any()),
                None => object.name_any(),
            };
            out.insert((kind, key), object.labels().clone());
        }
    }
    let mut out = BTreeMap::new();
    add(&mut out, Kind::Node, &snapshot.nodes);
    add(&mut out, Kind::Namespace, &snapshot.namespaces);
    // A Pod's labels are held apart from its metadata (one shared copy per set).
    for pod in &snapshot.pods {
        let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        out.insert((Kind::Pod, key), (**pod.labels()).clone());
    }
    add(&mut out, Kind::Service, &snapshot.services);
    add(&mut out, Kind::EndpointSlice, &snapshot.endpoint_slices);
    add(&mut out, Kind::NetworkPolicy, &snapshot.network_policies);
    add(&mut out, Kind::ServiceCIDR, &snapshot.service_cidrs);
    out
}

fn key(kind: Kind, value: &Value) -> (Kind, String) {
    let name = value["metadata"]["name"].as_str().unwrap().to_string();
    match kind.namespaced() {
        true => (kind, format!("a/{name}")),
        false => (kind, name),
    }
}

/// Waits until the cache satisfies `check`, or fails with `what` and the contents.
async fn eventually(
    cache: &Cache,
    what: &str,
    check: impl Fn(&BTreeMap<(Kind, String), BTreeMap<String, String>>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = contents(&cache.snapshot());
        if check(&now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cache never saw {what}: {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A dynamic API for `kind` in namespace `a` (or cluster-wide).
fn dynamic(client: &Client, kind: Kind) -> Api<DynamicObject> {
    let (group, version) = match kind.api_version().split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", kind.api_version()),
    };
    let plural = match kind {
        Kind::NetworkPolicy => "networkpolicies".to_string(),
        other => format!("{}s", other.as_str().to_lowercase()),
    };
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind.as_str()),
        &plural,
    );
    if kind.namespaced() {
        Api::namespaced_with(client.clone(), "a", &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    }
}

async fn start_cache(server: &ApiServer) -> (Cache, Metrics, Client) {
    let client = server.client().await.unwrap();
    let metrics = Metrics::new();
    let cache = Cache::start(
        client.clone(),
        &Kind::ALL,
        metrics.clone(),
        Duration::from_secs(5),
    )
    .await;
    cache.wait_synced(Duration::from_secs(10)).await.unwrap();
    (cache, metrics, client)
}

#[tokio::test]
async fn cache_sees_adds_updates_and_deletes_of_every_kind() {
    let server = ApiServer::start(ApiServerConfig {
        seed: seed(one_of_each("seed-")),
        ..config(1000)
    })
    .await
    .unwrap();
    let (cache, _metrics, client) = start_cache(&server).await;
    let seeded = contents(&cache.snapshot());
    for (kind, value) in one_of_each("seed-") {
        assert!(
            seeded.contains_key(&key(kind, &value)),
            "{kind} seed in {seeded:#?}"
        );
    }
    let mut changes = cache.subscribe(&Kind::ALL);
    for (kind, mut value) in one_of_each("new-") {
        let api = dynamic(&client, kind);
        let key = key(kind, &value);
        value["apiVersion"] = json!(kind.api_version());
        value["kind"] = json!(kind.as_str());
        let object: DynamicObject = serde_json::from_value(value).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap();
        eventually(&cache, &format!("{kind} added"), |c| c.contains_key(&key)).await;
        assert!(changes.changed().await.contains(&kind), "{kind} signalled");
        // Under kubewire's prefix: the cache keeps such labels on every kind (others
        // only where a controller reads them).
        let relabel = Patch::Merge(json!({"metadata": {"labels": {"kubewire.io/rev": "2"}}}));
        api.patch(&object.name_any(), &PatchParams::default(), &relabel)
            .await
            .unwrap();
        eventually(&cache, &format!("{kind} updated"), |c| {
            c.get(&key)
                .and_then(|labels| labels.get("kubewire.io/rev"))
                .map(String::as_str)
                == Some("2")
        })
        .await;
        api.delete(&object.name_any(), &DeleteParams::default())
            .await
            .unwrap();
        eventually(&cache, &format!("{kind} deleted"), |c| {
            !c.contains_key(&key)
        })
        .await;
    }
    cache.stop();
    server.shutdown().await;
}

#[tokio::test]
async fn cache_converges_across_an_api_server_restart() {
    let server = ApiServer::start(ApiServerConfig {
        seed: seed(one_of_each("seed-")),
        ..config(1000)
    })
    .await
    .unwrap();
    let addr = server.addr();
    let (cache, _metrics, client) = start_cache(&server).await;
    let mut state = server.into_state().await;
    // Changed while the server is down ...
    state.remove(Kind::Service, Some("a"), "seed-svc").unwrap();
    let down = json!({"metadata": {"name": "while-down", "namespace": "a"},
        "spec": {"containers": [{"name": "c"}]}});
    state.put(Kind::Pod, down).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = ApiServer::start_with_state(
        ApiServerConfig {
            listen: addr,
            ..config(1000)
        },
        state,
    )
    .await
    .unwrap();
    // ... and after it is back.
    let nodes = dynamic(&client, Kind::Node);
    let relabel = Patch::Merge(json!({"metadata": {"labels": {"after": "restart"}}}));
    nodes
        .patch("seed-node", &PatchParams::default(), &relabel)
        .await
        .unwrap();
    eventually(
        &cache,
        "the changes from while it was down and after",
        |c| {
            !c.contains_key(&(Kind::Service, "a/seed-svc".into()))
                && c.contains_key(&(Kind::Pod, "a/while-down".into()))
                && c[&(Kind::Node, "seed-node".into())].contains_key("after")
        },
    )
    .await;
    assert!(cache.unsynced().is_empty());
    cache.stop();
    server.shutdown().await;
}

/// A burst of writes larger than the retained history, committed at once, leaves every
/// watch behind the history (a slow consumer): each gets a 410 and must relist. The
/// pod deleted at the start of the burst is compacted away, so no watch can replay its
/// deletion — only the relist removes it from the cache.
#[tokio::test]
async fn cache_relists_after_410_gone() {
    let server = ApiServer::start(ApiServerConfig {
        seed: seed(one_of_each("seed-")),
        ..config(5)
    })
    .await
    .unwrap();
    let (cache, metrics, _client) = start_cache(&server).await;
    let restarts = |metrics: &Metrics| {
        let text = metrics.encode();
        text.lines()
            .find(|l| l.starts_with("kubewire_watch_restarts_total{kind=\"Pod\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(restarts(&metrics), 0);
    server.write(|state| {
        state.remove(Kind::Pod, Some("a"), "seed-pod").unwrap();
        for i in 0..10 {
            let node = json!({"metadata": {"name": "seed-node", "labels": {"rev": i.to_string()}},
                "spec": {"podCIDRs": ["10.244.1.0/24"]}});
            state.put(Kind::Node, node).unwrap();
        }
    });
    eventually(&cache, "the compacted deletion, through a relist", |c| {
        !c.contains_key(&(Kind::Pod, "a/seed-pod".into()))
            && c[&(Kind::Node, "seed-node".into())]
                .get("rev")
                .map(String::as_str)
                == Some("9")
    })
    .await;
    assert!(
        restarts(&metrics) >= 1,
        "the pod watch was restarted by the 410"
    );
    cache.stop();
    server.shutdown().await;
}

#[tokio::test]
async fn kinds_the_server_does_not_serve_read_as_empty_and_are_not_watched() {
    let mut state = ApiState::seeded(seed(one_of_each("seed-")), 100).unwrap();
    state.disable_kinds(&[Kind::ServiceCIDR, Kind::EndpointSlice]);
    let server = ApiServer::start_with_state(config(100), state)
        .await
        .unwrap();
    let client = server.client().await.unwrap();
    let cache = Cache::start(client, &Kind::ALL, Metrics::new(), Duration::from_secs(5)).await;
    cache.wait_synced(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        cache.watched(),
        [
            Kind::Node,
            Kind::Namespace,
            Kind::Pod,
            Kind::Service,
            Kind::NetworkPolicy
        ]
    );
    let snapshot = cache.snapshot();
    assert_eq!(snapshot.pods.len(), 1, "the served kinds did sync");
    assert!(snapshot.service_cidrs.is_empty() && snapshot.endpoint_slices.is_empty());
    cache.stop();
    server.shutdown().await;
}

#[tokio::test]
async fn only_the_kinds_asked_for_are_watched() {
    let server = ApiServer::start_with_state(
        config(100),
        ApiState::seeded(seed(one_of_each("seed-")), 100).unwrap(),
    )
    .await
    .unwrap();
    let client = server.client().await.unwrap();
    let cache = Cache::start(
        client,
        &[Kind::Pod, Kind::Node],
        Metrics::new(),
        Duration::from_secs(5),
    )
    .await;
    cache.wait_synced(Duration::from_secs(5)).await.unwrap();
    assert_eq!(cache.watched(), [Kind::Pod, Kind::Node]);
    let snapshot = cache.snapshot();
    assert_eq!((snapshot.pods.len(), snapshot.nodes.len()), (1, 1));
    assert!(snapshot.services.is_empty() && snapshot.network_policies.is_empty());
    cache.stop();
    server.shutdown().await;
}

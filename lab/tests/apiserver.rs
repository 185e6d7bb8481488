//! The embedded API server over real HTTP, through kube-rs (as the agent reaches it)
//! and kubectl: discovery, list semantics, watch semantics, write semantics.

mod apiserver_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use apiserver_support::{ServerProcess, collect, config, pod, start};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, ServiceCIDR};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Api, ResourceExt};
use kubewire::cache::Kind;
use kubewire_lab::apiserver::ApiServer;
use serde_json::{Value, json};

/// `(code, reason, message)` of an API error.
fn api_error<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason, status.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|o| match o.meta().namespace.as_deref() {
            Some(ns) => format!("{ns}/{}", o.name_any()),
            None => o.name_any(),
        })
        .collect()
}

fn three_pods() -> Vec<Value> {
    vec![
        pod("a", "web", "n1", "web"),
        pod("a", "db", "n2", "db"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "bare", "namespace": "b"},
               "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}}),
    ]
}

#[tokio::test]
async fn discovery_finds_the_seven_kinds() {
    let (server, client) = start(vec![], 100).await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let mut found = BTreeSet::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            let namespaced = caps.scope == kube::discovery::Scope::Namespaced;
            found.insert((
                resource.kind.clone(),
                resource.api_version.clone(),
                namespaced,
            ));
        }
    }
    for kind in Kind::ALL {
        assert!(
            found.contains(&(
                kind.as_str().to_string(),
                kind.api_version().to_string(),
                kind.namespaced()
            )),
            "{kind} missing from {found:?}"
        );
    }
    let namespaces: Api<Namespace> = Api::all(client);
    let default = namespaces.get("default").await.unwrap();
    assert_eq!(default.labels()["kubernetes.io/metadata.name"], "default");
    server.shutdown().await;
}

#[tokio::test]
async fn list_get_and_selectors() {
    let (server, client) = start(three_pods(), 100).await;
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&list.items), ["a/db", "a/web", "b/bare"]);
    let current = server.read(|state| state.resource_version());
    assert_eq!(list.metadata.resource_version, Some(current.to_string()));
    let select = |labels: &'static str, fields: &'static str| {
        let pods = pods.clone();
        async move {
            let params = ListParams::default().labels(labels).fields(fields);
            names(&pods.list(&params).await.unwrap().items)
        }
    };
    let cases: [(&str, &str, &[&str]); 11] = [
        ("app=web", "", &["a/web"]),
        ("app==web", "", &["a/web"]),
        ("app!=web", "", &["a/db", "b/bare"]),
        ("app in (web,db)", "", &["a/db", "a/web"]),
        ("app notin (web)", "", &["a/db", "b/bare"]),
        ("app", "", &["a/db", "a/web"]),
        ("!app", "", &["b/bare"]),
        ("", "spec.nodeName=n1", &["a/web", "b/bare"]),
        ("", "spec.nodeName!=n1", &["a/db"]),
        ("", "metadata.namespace=b", &["b/bare"]),
        ("app", "metadata.name=db,metadata.namespace!=b", &["a/db"]),
    ];
    for (labels, fields, want) in cases {
        assert_eq!(
            select(labels, fields).await,
            want,
            "labels {labels:?} fields {fields:?}"
        );
    }
    let in_a: Api<Pod> = Api::namespaced(client.clone(), "a");
    assert_eq!(
        names(&in_a.list(&ListParams::default()).await.unwrap().items),
        ["a/db", "a/web"]
    );
    let web = in_a.get("web").await.unwrap();
    assert_eq!(
        web.status.unwrap().pod_ip.as_deref(),
        Some("10.244.0.9"),
        "seeds keep status"
    );
    let (code, reason, message) = api_error(in_a.get("nope").await);
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (404, "NotFound", "pods \"nope\" not found")
    );
    let (code, _, message) = api_error(
        pods.list(&ListParams::default().fields("spec.bogus=1"))
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (400, "field label not supported: spec.bogus")
    );
    let (code, _, _) = api_error(
        pods.list(&ListParams::default().labels("app in (web"))
            .await,
    );
    assert_eq!(code, 400);
    server.shutdown().await;
}

#[tokio::test]
async fn pagination_reads_one_consistent_snapshot() {
    let seed: Vec<Value> = (0..25)
        .map(|i| pod("a", &format!("p{i:02}"), "n1", "web"))
        .collect();
    let (server, client) = start(seed, 1000).await;
    let pods: Api<Pod> = Api::namespaced(client, "a");
    let first = pods.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(15));
    let list_rv = first.metadata.resource_version.clone().unwrap();
    // Writes between pages do not show in later pages.
    pods.delete("p20", &DeleteParams::default()).await.unwrap();
    let mut extra = serde_json::from_value::<Pod>(pod("a", "p99", "n1", "web")).unwrap();
    extra.status = None;
    pods.create(&PostParams::default(), &extra).await.unwrap();
    let mut all = names(&first.items);
    let mut token = first.metadata.continue_.clone();
    while let Some(next) = token {
        let page = pods
            .list(&ListParams::default().limit(10).continue_token(&next))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(list_rv.as_str())
        );
        all.extend(names(&page.items));
        token = page.metadata.continue_.clone();
    }
    let want: Vec<String> = (0..25).map(|i| format!("a/p{i:02}")).collect();
    assert_eq!(all, want);
    let now = pods.list(&ListParams::default()).await.unwrap();
    assert!(names(&now.items).contains(&"a/p99".to_string()));
    assert!(!names(&now.items).contains(&"a/p20".to_string()));
    server.shutdown().await;
}

#[tokio::test]
async fn continue_token_older_than_history_is_expired() {
    let seed: Vec<Value> = (0..6)
        .map(|i| pod("a", &format!("p{i}"), "n1", "web"))
        .collect();
    let (server, client) = start(seed, 3).await;
    let pods: Api<Pod> = Api::namespaced(client, "a");
    let first = pods.list(&ListParams::default().limit(2)).await.unwrap();
    for i in 0..4 {
        pods.patch(
            &format!("p{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    }
    let token = first.metadata.continue_.unwrap();
    let (code, reason, _) = api_error(
        pods.list(&ListParams::default().limit(2).continue_token(&token))
            .await,
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    server.shutdown().await;
}

fn describe(event: &WatchEvent<Pod>) -> String {
    match event {
        WatchEvent::Added(p) => format!("ADDED {}", p.name_any()),
        WatchEvent::Modified(p) => format!("MODIFIED {}", p.name_any()),
        WatchEvent::Deleted(p) => format!("DELETED {}", p.name_any()),
        WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
        WatchEvent::Error(e) => format!("ERROR {} {}", e.code, e.reason),
    }
}

#[tokio::test]
async fn watch_delivers_changes_after_the_version_with_selector_transitions() {
    let (server, client) = start(three_pods(), 100).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let all = pods
        .watch(&WatchParams::default().timeout(20), &rv)
        .await
        .unwrap()
        .boxed();
    let web_only = pods
        .watch(&WatchParams::default().labels("app=web").timeout(20), &rv)
        .await
        .unwrap()
        .boxed();
    let relabel = |app: &str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    pods.patch("db", &PatchParams::default(), &relabel("web"))
        .await
        .unwrap();
    pods.patch("db", &PatchParams::default(), &relabel("db"))
        .await
        .unwrap();
    let mut extra: Pod = serde_json::from_value(pod("a", "new", "n1", "web")).unwrap();
    extra.status = None;
    pods.create(&PostParams::default(), &extra).await.unwrap();
    pods.delete("new", &DeleteParams::default()).await.unwrap();
    let all: Vec<String> = collect(all, 4, false).await.iter().map(describe).collect();
    assert_eq!(
        all,
        ["MODIFIED db", "MODIFIED db", "ADDED new", "DELETED new"]
    );
    let web: Vec<String> = collect(web_only, 4, false)
        .await
        .iter()
        .map(describe)
        .collect();
    assert_eq!(web, ["ADDED db", "DELETED db", "ADDED new", "DELETED new"]);
    // A watch without a version starts with the current state.
    let initial = pods
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap();
    let initial: Vec<String> = collect(initial, 2, false)
        .await
        .iter()
        .map(describe)
        .collect();
    assert_eq!(initial, ["ADDED db", "ADDED web"]);
    server.shutdown().await;
}

#[tokio::test]
async fn bookmarks_carry_the_current_version_and_timeouts_end_watches() {
    let (server, client) = start(three_pods(), 100).await;
    let nodes_changed: Api<Pod> = Api::namespaced(client.clone(), "b");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    // A change the watch does not see still moves its bookmarks forward.
    nodes_changed
        .patch(
            "bare",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .unwrap();
    let current = server.read(|state| state.resource_version()).to_string();
    let stream = pods
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap();
    let events = collect(stream, 1, true).await;
    match &events[0] {
        WatchEvent::Bookmark(bookmark) => assert_eq!(bookmark.metadata.resource_version, current),
        other => panic!("expected a bookmark, got {}", describe(other)),
    }
    let started = Instant::now();
    let stream = pods
        .watch(
            &WatchParams::default().timeout(1).disable_bookmarks(),
            &current,
        )
        .await
        .unwrap();
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(5), stream.collect::<Vec<_>>())
        .await
        .expect("the watch ends at timeoutSeconds");
    assert!(rest.is_empty(), "no events: {}", rest.len());
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.shutdown().await;
}

/// kube-rs' streaming-list watcher (`sendInitialEvents=true`): the current objects as
/// ADDED, then the bookmark that ends them, then changes.
#[tokio::test]
async fn streaming_list_sends_initial_events_then_the_end_bookmark() {
    use kube::runtime::watcher::{self, Event};
    let (server, client) = start(three_pods(), 100).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher::watcher(pods.clone(), config).boxed();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap()
    };
    assert!(matches!(next().await, Event::Init));
    let mut initial = Vec::new();
    loop {
        match next().await {
            Event::InitApply(pod) => initial.push(pod.name_any()),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, ["db", "web"]);
    pods.delete("db", &DeleteParams::default()).await.unwrap();
    match next().await {
        Event::Delete(pod) => assert_eq!(pod.name_any(), "db"),
        other => panic!("unexpected {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn watch_from_a_version_older_than_history_gets_410_expired() {
    let (server, client) = start(three_pods(), 5).await;
    let pods: Api<Pod> = Api::namespaced(client, "a");
    let old = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    for i in 0..6 {
        let patch = Patch::Merge(json!({"metadata": {"labels": {"n": i.to_string()}}}));
        pods.patch("web", &PatchParams::default(), &patch)
            .await
            .unwrap();
    }
    let stream = pods
        .watch(&WatchParams::default().timeout(5), &old)
        .await
        .unwrap();
    let events = collect(stream, 1, true).await;
    match &events[0] {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 410, got {}", describe(other)),
    }
    let (code, reason, _) = api_error(
        pods.list(
            &ListParams::default()
                .at(&old)
                .matching(kube::api::VersionMatch::Exact),
        )
        .await,
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    server.shutdown().await;
}

#[tokio::test]
async fn writes_generate_metadata_and_report_conflicts() {
    let (server, client) = start(three_pods(), 100).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let mut new: Pod = serde_json::from_value(pod("a", "new", "n1", "web")).unwrap();
    let created = pods.create(&PostParams::default(), &new).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(
        created.status.as_ref().unwrap().pod_ip,
        None,
        "a created pod's status is the server's (Pending), not the client's"
    );
    let (code, reason, message) = api_error(pods.create(&PostParams::default(), &new).await);
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (409, "AlreadyExists", "pods \"new\" already exists")
    );
    // Update with the current version succeeds; with the stale one it conflicts.
    let mut update = created.clone();
    update.labels_mut().insert("v".into(), "2".into());
    let updated = pods
        .replace("new", &PostParams::default(), &update)
        .await
        .unwrap();
    assert_ne!(updated.resource_version(), created.resource_version());
    let (code, reason, message) =
        api_error(pods.replace("new", &PostParams::default(), &update).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        message.contains("pods \"new\": the object has been modified"),
        "{message}"
    );
    // Invalid objects name the field; unknown namespaces are NotFound.
    new.metadata.name = Some("bad".into());
    new.spec.as_mut().unwrap().containers[0]
        .ports
        .as_mut()
        .unwrap()[0]
        .container_port = 0;
    let (code, reason, message) = api_error(pods.create(&PostParams::default(), &new).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        message.contains("spec.containers[0].ports[0].containerPort"),
        "{message}"
    );
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "nowhere");
    new.metadata.namespace = Some("nowhere".into());
    let (code, _, message) = api_error(elsewhere.create(&PostParams::default(), &new).await);
    assert_eq!(
        (code, message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );
    // Delete returns the object; a second delete is NotFound.
    let deleted = pods.delete("new", &DeleteParams::default()).await.unwrap();
    assert_eq!(deleted.left().unwrap().name_any(), "new");
    let (code, _, _) = api_error(pods.delete("new", &DeleteParams::default()).await);
    assert_eq!(code, 404);
    // Deleting a namespace deletes what is in it.
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_endpoint() {
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lb", "namespace": "a"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP", "name": "http"}]}});
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "spec": {"podCIDRs": ["10.244.1.0/24"]}});
    let (server, client) = start(vec![pod("a", "web", "n1", "web"), service, node], 100).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let mut web = pods.get("web").await.unwrap();
    web.status.as_mut().unwrap().pod_ip = Some("10.9.9.9".into());
    web.labels_mut().insert("seen".into(), "yes".into());
    let replaced = pods
        .replace("web", &PostParams::default(), &web)
        .await
        .unwrap();
    assert_eq!(replaced.labels()["seen"], "yes");
    assert_eq!(
        replaced.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.0.9")
    );
    let mut status_change = replaced.clone();
    status_change.status.as_mut().unwrap().pod_ip = Some("10.244.0.10".into());
    status_change
        .labels_mut()
        .insert("seen".into(), "no".into());
    let after = pods
        .replace_status("web", &PostParams::default(), &status_change)
        .await
        .unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.0.10")
    );
    assert_eq!(
        after.labels()["seen"],
        "yes",
        "status writes change only status"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), "a");
    let ingress = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}});
    services
        .patch(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(ingress.clone()),
        )
        .await
        .unwrap();
    let status = services.get("lb").await.unwrap().status;
    assert!(
        status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .is_none()
    );
    let patched = services
        .patch_status("lb", &PatchParams::default(), &Patch::Merge(ingress))
        .await
        .unwrap();
    let ingress = patched
        .status
        .unwrap()
        .load_balancer
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("192.0.2.10"));
    let nodes: Api<Node> = Api::all(client);
    let addresses =
        json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}});
    let patched = nodes
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(addresses))
        .await
        .unwrap();
    assert_eq!(
        patched.status.unwrap().addresses.unwrap()[0].address,
        "192.0.2.1"
    );
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "status changes keep the generation"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn patch_formats() {
    let (server, client) = start(three_pods(), 100).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let strategic =
        json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 81}]}]}});
    let patched = pods
        .patch("web", &PatchParams::default(), &Patch::Strategic(strategic))
        .await
        .unwrap();
    let ports: Vec<i32> = patched.spec.unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [80, 81], "container ports merge by containerPort");
    let request = axum::http::Request::patch("/api/v1/namespaces/a/pods/web")
        .header("Content-Type", "application/json-patch+json")
        .body(br#"[{"op": "add", "path": "/metadata/labels/tier", "value": "front"}]"#.to_vec())
        .unwrap();
    let patched: Pod = serde_json::from_str(&client.request_text(request).await.unwrap()).unwrap();
    assert_eq!(patched.labels()["tier"], "front");
    let stale = Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}}));
    let (code, reason, _) = api_error(pods.patch("web", &PatchParams::default(), &stale).await);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let applied = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "a"}, "spec": {"podSelector": {}}});
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "a");
    let created = policies
        .patch("deny", &PatchParams::apply("test"), &Patch::Apply(applied))
        .await
        .unwrap();
    assert_eq!(created.name_any(), "deny", "server-side apply creates");
    server.shutdown().await;
}

#[tokio::test]
async fn every_kind_round_trips() {
    let (server, client) = start(vec![], 100).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    let ns = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    assert_eq!(ns.labels()["kubernetes.io/metadata.name"], "x");
    async fn roundtrip<K>(api: Api<K>, value: Value)
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_json::from_value(value).unwrap();
        let created = api.create(&PostParams::default(), &object).await.unwrap();
        let name = created.name_any();
        assert_eq!(
            names(&api.list(&ListParams::default()).await.unwrap().items).len(),
            1
        );
        api.delete(&name, &DeleteParams::default()).await.unwrap();
        assert!(api.get_opt(&name).await.unwrap().is_none());
    }
    roundtrip::<Node>(
        Api::all(client.clone()),
        json!({"metadata": {"name": "n1"}}),
    )
    .await;
    roundtrip::<Pod>(
        Api::namespaced(client.clone(), "x"),
        pod("x", "p", "n1", "web"),
    )
    .await;
    roundtrip::<Service>(
        Api::namespaced(client.clone(), "x"),
        json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    roundtrip::<EndpointSlice>(
        Api::namespaced(client.clone(), "x"),
        json!({"metadata": {"name": "s-1"}, "addressType": "IPv4", "endpoints": []}),
    )
    .await;
    roundtrip::<NetworkPolicy>(
        Api::namespaced(client.clone(), "x"),
        json!({"metadata": {"name": "p"}, "spec": {"podSelector": {}}}),
    )
    .await;
    roundtrip::<ServiceCIDR>(
        Api::all(client.clone()),
        json!({"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/12"]}}),
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn restart_on_the_same_port_keeps_the_state() {
    let (server, client) = start(three_pods(), 100).await;
    let addr = server.addr();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let watch = pods
        .watch(&WatchParams::default().timeout(60), &rv)
        .await
        .unwrap();
    let mut state = server.into_state().await;
    let events: Vec<_> = tokio::time::timeout(Duration::from_secs(5), watch.collect::<Vec<_>>())
        .await
        .expect("stopping the server ends its watches");
    assert!(events.is_empty());
    state.remove(Kind::Pod, Some("a"), "db").unwrap();
    let mut config = config(vec![], 100);
    config.listen = addr;
    let server = ApiServer::start_with_state(config, state).await.unwrap();
    let watch = pods
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap();
    let events: Vec<String> = collect(watch, 1, false)
        .await
        .iter()
        .map(describe)
        .collect();
    assert_eq!(events, ["DELETED db"], "the history survives the restart");
    assert_eq!(
        names(&pods.list(&ListParams::default()).await.unwrap().items),
        ["a/web"]
    );
    server.shutdown().await;
}

/// What `kubectl get` and `kubectl get -w` ask for: Tables of name, kind columns and
/// age, each row with the object's metadata.
#[tokio::test]
async fn table_responses_for_kubectl_get() {
    let (server, client) = start(three_pods(), 100).await;
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let get = |uri: &str| {
        axum::http::Request::get(uri)
            .header("Accept", accept)
            .body(Vec::new())
            .unwrap()
    };
    let list: Value =
        serde_json::from_str(&client.request_text(get("/api/v1/pods")).await.unwrap()).unwrap();
    assert_eq!(list["kind"], "Table");
    let columns: Vec<&str> = list["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "Status", "IP", "Node", "Age"]);
    assert_eq!(list["rows"][0]["cells"][0], "db");
    assert_eq!(list["rows"][0]["object"]["metadata"]["namespace"], "a");
    let watch = client
        .request_text(get(
            "/api/v1/namespaces/a/pods?watch=1&resourceVersion=0&timeoutSeconds=1",
        ))
        .await
        .unwrap();
    let events: Vec<Value> = watch
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{watch}");
    assert_eq!(events[1]["type"], "ADDED");
    assert_eq!(events[1]["object"]["kind"], "Table");
    assert_eq!(events[1]["object"]["rows"][0]["cells"][0], "web");
    server.shutdown().await;
}

fn kubectl() -> Option<&'static str> {
    let path = "/usr/bin/kubectl";
    if std::path::Path::new(path).exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: kubectl is not installed at {path}");
        None
    }
}

/// Runs kubectl against `kubeconfig`; returns (success, stdout, stderr).
fn run_kubectl(
    kubectl: &str,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> (bool, String, String) {
    let output = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_get_create_apply_replace_patch_delete() {
    let Some(kubectl) = kubectl() else {
        return;
    };
    let (server, _client) = start(three_pods(), 100).await;
    let dir = tempfile::Builder::new()
        .prefix(&format!("kubewire-apiserver-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kubewire_lab::apiserver::write_kubeconfig(&server.url(), &kubeconfig).unwrap();
    let manifest = dir.path().join("objects.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: cart, namespace: shop, labels: {app: cart}}\n\
         spec: {containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\n\
         spec: {selector: {app: cart}, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
    )
    .unwrap();
    let manifest = manifest.to_str().unwrap();
    // kubectl runs blocking; the server needs the runtime meanwhile.
    let kc = kubeconfig.clone();
    let run = move |args: Vec<String>| {
        let kc = kc.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_kubectl(kubectl, &kc, &args)
        })
    };
    let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let (ok, out, err) = run(args("get pods -A")).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("NAMESPACE"), "{out}");
    for row in ["a           db", "a           web", "b           bare"] {
        assert!(out.contains(row), "{row:?} in\n{out}");
    }
    let (ok, out, err) = run(args(&format!("create -f {manifest}"))).await.unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains("namespace/shop created") && out.contains("pod/cart created"),
        "{out}"
    );
    let (ok, out, _) = run(args(&format!("create -f {manifest}"))).await.unwrap();
    assert!(!ok, "a second create fails: {out}");
    let (ok, out, err) = run(args("create namespace extra")).await.unwrap();
    assert!(
        ok,
        "kubectl create namespace (a protobuf body): {out} {err}"
    );
    let (ok, out, err) = run(args("get ns")).await.unwrap();
    assert!(ok, "{err}");
    for ns in ["a ", "b ", "default ", "extra ", "shop "] {
        assert!(out.contains(ns), "{ns:?} in {out}");
    }
    let (ok, out, err) = run(args(
        "get svc cart -n shop -o jsonpath={.spec.ports[0].targetPort}",
    ))
    .await
    .unwrap();
    assert!(ok && out == "8080", "{out} {err}");
    let (ok, _, err) = run(args(&format!("apply -f {manifest}"))).await.unwrap();
    assert!(ok, "apply over created objects: {err}");
    let (ok, out, err) = run(args("label pod cart -n shop tier=web")).await.unwrap();
    assert!(ok, "{out} {err}");
    let (ok, out, err) = run(vec![
        "patch".into(),
        "svc".into(),
        "cart".into(),
        "-n".into(),
        "shop".into(),
        "-p".into(),
        r#"{"spec":{"ports":[{"port":80,"targetPort":9090}]}}"#.into(),
    ])
    .await
    .unwrap();
    assert!(ok, "{out} {err}");
    let (_, out, _) = run(args(
        "get svc cart -n shop -o jsonpath={.spec.ports[0].name}/{.spec.ports[0].targetPort}",
    ))
    .await
    .unwrap();
    assert_eq!(
        out, "http/9090",
        "a strategic patch merges the port by number"
    );
    let (ok, yaml, err) = run(args("get pod cart -n shop -o yaml")).await.unwrap();
    assert!(ok, "{err}");
    let replaced = dir.path().join("replaced.yaml");
    std::fs::write(&replaced, yaml.replace("tier: web", "tier: api")).unwrap();
    let (ok, out, err) = run(args(&format!("replace -f {}", replaced.display())))
        .await
        .unwrap();
    assert!(ok, "{out} {err}");
    let (_, out, _) = run(args("get pods -n shop -l tier=api -o name"))
        .await
        .unwrap();
    assert_eq!(out.trim(), "pod/cart");
    let (ok, out, err) = run(args("delete pod cart -n shop")).await.unwrap();
    assert!(ok, "{out} {err}");
    let (ok, _, err) = run(args("get pod cart -n shop")).await.unwrap();
    assert!(!ok && err.contains("NotFound"), "{err}");
    let (ok, out, err) = run(args("delete ns shop")).await.unwrap();
    assert!(ok, "{out} {err}");
    server.shutdown().await;
}

#[tokio::test]
async fn lab_apiserver_command_serves_until_sigterm() {
    let server = ServerProcess::spawn(
        "kind: Pod\nmetadata: {name: web, namespace: a}\nspec: {containers: [{name: c}]}\n",
    );
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    let pods: Api<Pod> = Api::all(server.client().await);
    assert_eq!(
        names(&pods.list(&ListParams::default()).await.unwrap().items),
        ["a/web"]
    );
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

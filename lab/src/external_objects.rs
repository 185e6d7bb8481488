//! The lab's objects on an external API server (`lab up --apiserver-kubeconfig`,
//! see [`super::external`]): [`seed`] creates the manifests' objects there,
//! [`cleanup`] deletes what the lab made.
//!
//! What differs from the embedded server, as on any real cluster:
//! - Namespaces must exist before what lives in them; the lab creates the ones the
//!   manifests use and that do not exist yet.
//! - The server ignores a created object's status: it is written afterwards through
//!   the status subresource (Nodes' addresses, LoadBalancer ingress). Pods get theirs
//!   from the lab's kubelet once their netns and responder run ([`super::pods`]).
//! - A Service with a selector gets its EndpointSlices from kube-controller-manager:
//!   the manifests' slices for such Services are not created (they would be
//!   duplicates); those of Services without a selector are, as a user would.
//! - Pods need an image; the lab names one (nothing ever pulls it).
//!
//! Every object is recorded in the state *before* it is created, and forgotten again
//! if it turns out to exist already (not the lab's to delete), so a `down` after a
//! crash at any point deletes exactly what this lab made. Pods are deleted without
//! grace (no kubelet would confirm a graceful deletion), and so are the Pods the
//! lab's kubelet ran on its Nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::external::ObjectRef;
use super::state::{LabState, LabStateFile};
use kubewire::cache::Kind;
use kubewire::cache::manifests::ManifestObject;

/// The image named in Pods that have none (the lab runs a responder, never an image).
pub const POD_IMAGE: &str = "kubewire-lab/responder";
/// How long `up` waits for a Namespace being deleted (by an earlier lab) to go, and
/// `down` for the lab's Namespaces to go.
const NAMESPACE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a Pod's creation is retried while its Namespace has no `default`
/// ServiceAccount yet (kube-controller-manager makes it right after the Namespace).
const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(60);

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

/// Creates `body` as `object`, recording it first; `Ok(false)` when it already
/// existed (then it is not recorded: not the lab's).
pub async fn create(
    state: &LabStateFile,
    client: &kube::Client,
    object: &ObjectRef,
    body: &Value,
) -> anyhow::Result<bool> {
    record(state, |created| created.push(object.clone()))?;
    let dynamic: DynamicObject =
        serde_json::from_value(body.clone()).with_context(|| format!("{object}"))?;
    let api = object.api(client);
    let deadline = Instant::now() + SERVICE_ACCOUNT_TIMEOUT;
    loop {
        match api.create(&PostParams::default(), &dynamic).await {
            Ok(_) => return Ok(true),
            Err(err) if is_status(&err, 409) => {
                record(state, |created| created.retain(|o| o != object))?;
                return Ok(false);
            }
            // A new Namespace's `default` ServiceAccount comes a moment later.
            Err(kube::Error::Api(status))
                if object.kind == "Pod"
                    && status.message.contains("serviceaccount")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err).with_context(|| format!("creating {object}")),
        }
    }
}

fn record(state: &LabStateFile, f: impl FnOnce(&mut Vec<ObjectRef>)) -> anyhow::Result<()> {
    state.update(|s| match s.external.as_mut() {
        Some(external) => {
            f(&mut external.created);
            Ok(())
        }
        None => Err(anyhow::anyhow!("the lab state has no external API server")),
    })?
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// What is created for one seed object: its body, and a status to write after.
fn prepare(object: &ManifestObject) -> (Value, Option<Value>) {
    let mut body = object.value.clone();
    body["apiVersion"] = json!(object.kind.api_version());
    body["kind"] = json!(object.kind.as_str());
    let status = body.as_object_mut().and_then(|m| m.remove("status"));
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["resourceVersion", "uid", "creationTimestamp", "generation"] {
            metadata.remove(field);
        }
    }
    if object.kind == Kind::Pod {
        let containers = body
            .pointer_mut("/spec/containers")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten();
        for container in containers {
            if container.get("image").is_none() {
                container["image"] = json!(POD_IMAGE);
            }
        }
        // The lab's kubelet writes the status once the pod runs.
        return (body, None);
    }
    let status = status.filter(|s| s.as_object().is_some_and(|m| !m.is_empty()));
    (body, status)
}

/// The manifests' EndpointSlices kube-controller-manager makes itself: those of a
/// Service with a selector.
fn made_by_controller(slice: &Value, selected: &BTreeSet<(String, String)>) -> bool {
    let namespace = text(slice, "/metadata/namespace").unwrap_or("default");
    text(slice, "/metadata/labels/kubernetes.io~1service-name")
        .is_some_and(|service| selected.contains(&(namespace.to_string(), service.to_string())))
}

/// The order objects are created in: what others refer to first.
fn rank(kind: Kind) -> u8 {
    match kind {
        Kind::Namespace => 0,
        Kind::ServiceCIDR => 1,
        Kind::Node => 2,
        Kind::Service => 3,
        Kind::EndpointSlice => 4,
        Kind::NetworkPolicy => 5,
        Kind::Pod => 6,
    }
}

/// Creates the lab's objects (`topology::seed_objects`) on the external server.
pub async fn seed(
    state: &LabStateFile,
    client: &kube::Client,
    seed: &[ManifestObject],
) -> anyhow::Result<()> {
    let selected: BTreeSet<(String, String)> = seed
        .iter()
        .filter(|o| o.kind == Kind::Service)
        .filter(|o| {
            o.value
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        })
        .map(|o| {
            (
                text(&o.value, "/metadata/namespace")
                    .unwrap_or("default")
                    .to_string(),
                text(&o.value, "/metadata/name")
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    // Every namespace used, with the manifests' Namespace object where there is one.
    let mut namespaces: BTreeMap<String, Value> = BTreeMap::new();
    for object in seed.iter().filter(|o| o.kind.namespaced()) {
        let ns = text(&object.value, "/metadata/namespace").unwrap_or("default");
        namespaces
            .entry(ns.to_string())
            .or_insert_with(|| json!({"metadata": {"name": ns}}));
    }
    for object in seed.iter().filter(|o| o.kind == Kind::Namespace) {
        if let Some(name) = text(&object.value, "/metadata/name") {
            namespaces.insert(name.to_string(), object.value.clone());
        }
    }
    for (name, value) in &namespaces {
        let object = ManifestObject {
            kind: Kind::Namespace,
            value: value.clone(),
        };
        create_namespace(state, client, name, &prepare(&object).0).await?;
    }
    let mut ordered: Vec<&ManifestObject> = seed
        .iter()
        .filter(|o| o.kind != Kind::Namespace)
        .filter(|o| !(o.kind == Kind::EndpointSlice && made_by_controller(&o.value, &selected)))
        .collect();
    ordered.sort_by_key(|o| rank(o.kind));
    for object in ordered {
        let name = text(&object.value, "/metadata/name").unwrap_or_default();
        let reference = ObjectRef::of_kind(
            object.kind,
            text(&object.value, "/metadata/namespace"),
            name,
        );
        let (body, status) = prepare(object);
        let created = create(state, client, &reference, &body).await?;
        if !created {
            if object.kind == Kind::ServiceCIDR {
                // The server's own (named `kubernetes`) or one already there.
                continue;
            }
            bail!(
                "{reference} already exists on the API server (the remains of another lab? delete it)"
            );
        }
        if let Some(status) = status {
            reference
                .api(client)
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
                .with_context(|| format!("writing the status of {reference}"))?;
        }
    }
    Ok(())
}

/// Creates a Namespace unless it exists; one still being deleted (by an earlier lab)
/// is waited for first. An existing Namespace takes the manifests' labels.
async fn create_namespace(
    state: &LabStateFile,
    client: &kube::Client,
    name: &str,
    body: &Value,
) -> anyhow::Result<()> {
    let reference = ObjectRef::of_kind(Kind::Namespace, None, name);
    let api = reference.api(client);
    let deadline = Instant::now() + NAMESPACE_TIMEOUT;
    loop {
        match api.get_opt(name).await? {
            Some(existing) if existing.metadata.deletion_timestamp.is_some() => {
                if Instant::now() > deadline {
                    bail!("Namespace {name} is still being deleted after {NAMESPACE_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Some(_) => {
                if let Some(labels) = body.pointer("/metadata/labels") {
                    api.patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"metadata": {"labels": labels}})),
                    )
                    .await
                    .with_context(|| format!("labelling Namespace {name}"))?;
                }
                return Ok(());
            }
            None => {
                if create(state, client, &reference, body).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// Deletes what the lab made on the external server: the Pods on its Nodes (without
/// grace), then every recorded object in reverse order; waits for its Namespaces to
/// go, so the next lab can make them again.
pub async fn cleanup(state: &LabState, kubeconfig: &Path) -> anyhow::Result<()> {
    let Some(external) = &state.external else {
        return Ok(());
    };
    let client = kubewire::agent::client_from_kubeconfig(kubeconfig).await?;
    let mut problems = Vec::new();
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let nodes: Vec<String> = state
        .plan
        .iter()
        .flat_map(|plan| plan.nodes.iter().map(|n| n.name.clone()))
        .collect();
    let pods = ObjectRef::new("v1", "Pod", None, "");
    for node in &nodes {
        let listed = pods
            .api(&client)
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await;
        match listed {
            Ok(list) => {
                for pod in list.items {
                    let (Some(ns), Some(name)) = (pod.metadata.namespace, pod.metadata.name) else {
                        continue;
                    };
                    let pod = ObjectRef::new("v1", "Pod", Some(&ns), &name);
                    if let Err(err) = delete(&client, &pod, &now).await {
                        problems.push(err);
                    }
                }
            }
            Err(err) => problems.push(format!("listing the Pods of Node {node}: {err}")),
        }
    }
    for object in external.created.iter().rev() {
        let params = if object.kind == "Pod" {
            now.clone()
        } else {
            DeleteParams::default()
        };
        if let Err(err) = delete(&client, object, &params).await {
            problems.push(err);
        }
    }
    let deadline = Instant::now() + NAMESPACE_TIMEOUT;
    for namespace in external.created.iter().filter(|o| o.kind == "Namespace") {
        loop {
            match namespace.api(&client).get_opt(&namespace.name).await {
                Ok(None) => break,
                Ok(Some(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(Some(_)) => {
                    problems.push(format!(
                        "{namespace} still there {NAMESPACE_TIMEOUT:?} after its deletion"
                    ));
                    break;
                }
                Err(err) => {
                    problems.push(format!("{namespace}: {err}"));
                    break;
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "removing the lab's objects from the API server: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

async fn delete(
    client: &kube::Client,
    object: &ObjectRef,
    params: &DeleteParams,
) -> Result<(), String> {
    match object.api(client).delete(&object.name, params).await {
        Ok(_) => Ok(()),
        Err(err) if is_status(&err, 404) => Ok(()),
        Err(err) => Err(format!("deleting {object}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_objects_lose_status_and_pods_get_an_image() {
        let pod = ManifestObject {
            kind: Kind::Pod,
            value: json!({"metadata": {"name": "a", "namespace": "x", "uid": "u"},
                "spec": {"containers": [{"name": "c"}, {"name": "d", "image": "own"}]},
                "status": {"podIP": "10.0.0.1"}}),
        };
        let (body, status) = prepare(&pod);
        assert_eq!(status, None);
        assert_eq!(body["spec"]["containers"][0]["image"], POD_IMAGE);
        assert_eq!(body["spec"]["containers"][1]["image"], "own");
        assert_eq!(body["metadata"].get("uid"), None);
        assert_eq!(body["apiVersion"], "v1");
        let node = ManifestObject {
            kind: Kind::Node,
            value: json!({"metadata": {"name": "n1"}, "status": {"addresses": []}}),
        };
        let (body, status) = prepare(&node);
        assert_eq!(body.get("status"), None);
        assert_eq!(status, Some(json!({"addresses": []})));
    }

    #[test]
    fn slices_of_selector_services_are_the_controllers() {
        let selected = BTreeSet::from([("shop".to_string(), "web".to_string())]);
        let slice = |ns: &str, service: &str| {
            json!({"metadata": {"name": "s", "namespace": ns,
                "labels": {"kubernetes.io/service-name": service}}})
        };
        assert!(made_by_controller(&slice("shop", "web"), &selected));
        assert!(!made_by_controller(&slice("shop", "manual"), &selected));
        assert!(!made_by_controller(&slice("other", "web"), &selected));
    }
}

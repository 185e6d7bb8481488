//! manifests/ as the cluster will read it: every document parses strictly into its
//! k8s-openapi type (a field the type does not know fails, wherever it is), the RBAC
//! rules only read and cover every kind the watch cache lists, the DaemonSet's flags
//! and KUBEWIRE_* variables are real `kubewire run` options with values it accepts,
//! and the names that tie the objects together line up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn manifests_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests"))
}

/// Every document of every manifests/*.yaml, with where it came from.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests");
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for (index, doc) in docs.into_iter().enumerate() {
            if !doc.is_null() {
                let name = file.file_name().unwrap().to_string_lossy();
                documents.push((format!("{name} document {}", index + 1), doc));
            }
        }
    }
    documents
}

/// Keys of `original` that did not survive a round trip through the typed object.
fn unknown_fields(original: &Value, round_trip: &Value, path: &str, out: &mut Vec<String>) {
    match (original, round_trip) {
        (Value::Object(original), Value::Object(round_trip)) => {
            for (key, value) in original {
                let here = format!("{path}.{key}");
                match round_trip.get(key) {
                    Some(back) => unknown_fields(value, back, &here, out),
                    None => out.push(here),
                }
            }
        }
        (Value::Array(original), Value::Array(round_trip)) => {
            if original.len() != round_trip.len() {
                out.push(format!(
                    "{path}: {} items became {}",
                    original.len(),
                    round_trip.len()
                ));
            }
            for (index, (value, back)) in original.iter().zip(round_trip).enumerate() {
                unknown_fields(value, back, &format!("{path}[{index}]"), out);
            }
        }
        _ => {}
    }
}

/// `value` as `K`, failing on a wrong type (with its path) or on any unknown field.
fn strict<K: DeserializeOwned + Serialize>(value: &Value) -> Result<K, String> {
    let typed: K = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("field `{}`: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    unknown_fields(value, &back, "", &mut unknown);
    if unknown.is_empty() {
        Ok(typed)
    } else {
        Err(format!("unknown fields: {}", unknown.join(", ")))
    }
}

#[derive(Default)]
struct Manifests {
    daemon_sets: Vec<DaemonSet>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
}

fn parse_all() -> Manifests {
    let mut manifests = Manifests::default();
    let mut errors = Vec::new();
    for (origin, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or("").to_string();
        let result = match kind.as_str() {
            "DaemonSet" => strict(&doc).map(|o| manifests.daemon_sets.push(o)),
            "ServiceAccount" => strict(&doc).map(|o| manifests.service_accounts.push(o)),
            "ClusterRole" => strict(&doc).map(|o| manifests.cluster_roles.push(o)),
            "ClusterRoleBinding" => strict(&doc).map(|o| manifests.bindings.push(o)),
            "ConfigMap" => strict(&doc).map(|o| manifests.config_maps.push(o)),
            other => Err(format!("unexpected kind `{other}`")),
        };
        if let Err(err) = result {
            errors.push(format!("{origin} ({kind}): {err}"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    manifests
}

fn one<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "exactly one {what}");
    &items[0]
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers
        .iter()
        .find(|c| c.name == "kubewire")
        .expect("a container named kubewire")
}

fn kubewire() -> Command {
    let mut command = Command::new(kubewire_lab::binaries::agent().expect("the kubewire binary"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn run_help() -> String {
    let output = kubewire().args(["run", "--help"]).output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn strict_parsing_rejects_misspelled_and_mistyped_fields() {
    let good = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
        "spec": {"selector": {}, "template": {"spec": {"hostNetwork": true, "containers": [{"name": "c"}]}}}
    });
    strict::<DaemonSet>(&good).unwrap();
    let mut misspelled = good.clone();
    misspelled["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always".into();
    assert_eq!(
        strict::<DaemonSet>(&misspelled).unwrap_err(),
        "unknown fields: .spec.template.spec.containers[0].imagePullPolicyy"
    );
    let mut mistyped = good.clone();
    mistyped["spec"]["template"]["spec"]["hostNetwork"] = "yes".into();
    assert!(
        strict::<DaemonSet>(&mistyped)
            .unwrap_err()
            .starts_with("field `spec.template.spec.hostNetwork`"),
    );
}

#[test]
fn every_manifest_parses_strictly() {
    let manifests = parse_all();
    one(&manifests.daemon_sets, "DaemonSet");
    one(&manifests.service_accounts, "ServiceAccount");
    one(&manifests.cluster_roles, "ClusterRole");
    one(&manifests.bindings, "ClusterRoleBinding");
    one(&manifests.config_maps, "ConfigMap");
}

/// The resource name RBAC uses for a kind: lower case, plural.
fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    }
}

#[test]
fn cluster_role_only_reads_and_covers_every_watched_kind() {
    let manifests = parse_all();
    let role = one(&manifests.cluster_roles, "ClusterRole");
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        for verb in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "verb `{verb}` in {rule:?}: kubewire only reads"
            );
        }
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                assert_ne!(resource, "*", "no wildcard resources");
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    let mut needed = BTreeSet::new();
    for kind in kubewire::cache::Kind::ALL {
        let group = match kind.api_version().split_once('/') {
            Some((group, _)) => group.to_string(),
            None => String::new(),
        };
        let key = (group, plural(kind.as_str()));
        let verbs = granted.get(&key).cloned().unwrap_or_default();
        for verb in ["list", "watch"] {
            assert!(
                verbs.contains(verb),
                "{kind}: `{verb}` on {key:?} not granted"
            );
        }
        needed.insert(key);
    }
    let extra: Vec<_> = granted.keys().filter(|k| !needed.contains(*k)).collect();
    assert!(
        extra.is_empty(),
        "grants for kinds kubewire does not watch: {extra:?}"
    );
}

#[test]
fn names_line_up() {
    let manifests = parse_all();
    let ds = one(&manifests.daemon_sets, "DaemonSet");
    let sa = one(&manifests.service_accounts, "ServiceAccount");
    let role = one(&manifests.cluster_roles, "ClusterRole");
    let binding = one(&manifests.bindings, "ClusterRoleBinding");
    let config = one(&manifests.config_maps, "ConfigMap");
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(ds.metadata.namespace, sa.metadata.namespace);
    assert_eq!(ds.metadata.namespace, config.metadata.namespace);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == sa.metadata.name.as_ref()
            && s.namespace == sa.metadata.namespace),
        "{subjects:?}"
    );
    let env_from = agent_container(ds).env_from.as_deref().unwrap_or_default();
    assert!(
        env_from
            .iter()
            .any(|e| e.config_map_ref.as_ref().map(|r| &r.name) == config.metadata.name.as_ref())
    );
    let selector = ds
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    let labels = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone();
    for (key, value) in &selector {
        assert_eq!(labels.as_ref().and_then(|l| l.get(key)), Some(value));
    }
}

#[test]
fn daemonset_flags_and_variables_are_real_kubewire_options() {
    let manifests = parse_all();
    let ds = one(&manifests.daemon_sets, "DaemonSet");
    let config = one(&manifests.config_maps, "ConfigMap");
    let container = agent_container(ds);
    let help = run_help();
    let args = container.args.as_deref().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "the agent runs `kubewire run`"
    );
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            flag.starts_with("--") && help.contains(&format!("{flag} ")),
            "`{arg}` is not a `run` flag"
        );
    }
    let mut variables: Vec<&String> = container.env.iter().flatten().map(|e| &e.name).collect();
    let data = config.data.clone().unwrap_or_default();
    variables.extend(data.keys());
    for name in variables {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "`{name}` is not read by `kubewire run`"
        );
    }
    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .unwrap();
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");

    // The values too: `kubewire run` with exactly this environment gets past flag
    // parsing (clap exits 2 on a bad value) and stops at the missing kubeconfig.
    let output = kubewire()
        .envs(&data)
        .env("NODE_NAME", "manifest-test")
        .args([
            "run",
            "--kubeconfig",
            "/nonexistent/kubewire-manifests-test",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("reading kubeconfig /nonexistent/kubewire-manifests-test"),
        "{stderr}"
    );
}

#[test]
fn daemonset_runs_on_every_node_with_health_probes_and_host_paths() {
    let manifests = parse_all();
    let ds = one(&manifests.daemon_sets, "DaemonSet");
    let config = one(&manifests.config_maps, "ConfigMap");
    let data = config.data.clone().unwrap_or_default();
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint: {tolerations:?}"
    );

    let container = agent_container(ds);
    let health_port: i32 = data
        .get("KUBEWIRE_HEALTH_ADDR")
        .map(|a| a.rsplit(':').next().unwrap().parse().unwrap())
        .unwrap_or(20244);
    for (name, probe) in [
        ("liveness", &container.liveness_probe),
        ("startup", &container.startup_probe),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{name} probe"));
        assert_eq!(get.path.as_deref(), Some("/healthz"), "{name}");
        assert_eq!(get.port, IntOrString::Int(health_port), "{name}");
    }
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("explicit capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(
        caps.add
            .as_deref()
            .unwrap_or_default()
            .contains(&"NET_ADMIN".to_string())
    );
    assert_ne!(
        container.security_context.as_ref().unwrap().privileged,
        Some(true)
    );

    let volumes: BTreeMap<String, String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
        .collect();
    let mount = |container: &Container, host: &str| {
        container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| volumes.get(&m.name).map(String::as_str) == Some(host))
            .map(|m| (m.mount_path.clone(), m.read_only))
    };
    let conf_dir = data
        .get("KUBEWIRE_CNI_CONF_DIR")
        .map(String::as_str)
        .unwrap_or("/etc/cni/net.d");
    assert_eq!(
        mount(container, "/etc/cni/net.d").map(|m| m.0).as_deref(),
        Some(conf_dir)
    );
    assert_eq!(
        mount(container, "/lib/modules").and_then(|m| m.1),
        Some(true)
    );

    // The init container installs every plugin type the conflist chains.
    let installer = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| mount(c, "/opt/cni/bin").is_some())
        .expect("an init container that mounts /opt/cni/bin");
    let script = installer
        .command
        .iter()
        .flatten()
        .chain(installer.args.iter().flatten())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    let output = kubewire()
        .args(["cni", "plan", "--manifests"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cni"))
        .args(["--node", "n1"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let conflist: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut types = vec![
        conflist["plugins"][0]["ipam"]["type"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    types.extend(
        conflist["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_string()),
    );
    for plugin in types {
        assert!(
            script.contains(&format!(" {plugin} ")) || script.contains(&format!(" {plugin};")),
            "init container does not install `{plugin}`: {script}"
        );
    }
    assert!(
        script.contains("/usr/lib/cni/"),
        "copies from the Debian package's directory"
    );
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))
            .unwrap();
    assert!(
        dockerfile.contains("containernetworking-plugins"),
        "the image ships the plugins it installs"
    );
}

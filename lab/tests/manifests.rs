//! manifests/ as the cluster will read it: every document parses strictly into its
//! k8s-openapi type (a field the type does not know fails, wherever it is), the RBAC
//! rules only read and cover every kind the watch cache lists, the DaemonSet's flags
//! and KUBEWIRE_* variables are real `kubewire run` options with values it accepts
//! (in both variants: manifests/ and manifests/kube-proxy-replacement/), the names
//! that tie the objects together line up, each container has the privileges it uses
//! and no more, the files apply in order, and the CNI plugin installer's script does
//! what it says when run.

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

/// The objects both variants install (and the kustomization naming them).
fn base_dir() -> PathBuf {
    manifests_dir().join("base")
}

/// The `*.yaml`/`*.yml` files of `dir`, sorted by name.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
}

fn parse_yaml(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Every document of every object file in manifests/base, with where it came from
/// (the kustomization is not an object).
fn documents() -> Vec<(String, Value)> {
    let files = yaml_files(&base_dir());
    assert!(!files.is_empty(), "no manifests");
    let mut documents = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name == "kustomization.yaml" {
            continue;
        }
        for (index, doc) in parse_yaml(&file).into_iter().enumerate() {
            documents.push((format!("{name} document {}", index + 1), doc));
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

    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux")
    );
    let strategy = ds.spec.as_ref().unwrap().update_strategy.as_ref();
    assert_eq!(
        strategy.and_then(|s| s.type_.as_deref()),
        Some("RollingUpdate")
    );

    // The probes name the port that holds the ConfigMap's health address.
    let container = agent_container(ds);
    let port_of = |variable: &str, default: i32| -> i32 {
        data.get(variable)
            .map(|a| a.rsplit(':').next().unwrap().parse().unwrap())
            .unwrap_or(default)
    };
    let ports: BTreeMap<String, i32> = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    assert_eq!(
        ports.get("health"),
        Some(&port_of("KUBEWIRE_HEALTH_ADDR", 20244))
    );
    assert_eq!(
        ports.get("metrics"),
        Some(&port_of("KUBEWIRE_METRICS_ADDR", 20245))
    );
    for (name, probe) in [
        ("liveness", &container.liveness_probe),
        ("startup", &container.startup_probe),
        ("readiness", &container.readiness_probe),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{name} probe"));
        assert_eq!(get.path.as_deref(), Some("/healthz"), "{name}");
        assert_eq!(get.port, IntOrString::String("health".into()), "{name}");
    }

    // The agent: NET_ADMIN and nothing else (no raw sockets, no namespaces or mounts,
    // no port below 1024), unprivileged, a read-only root file system.
    let security = container
        .security_context
        .as_ref()
        .expect("a security context");
    let caps = security
        .capabilities
        .as_ref()
        .expect("explicit capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));

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
    // Only the privileged init container loads modules; it reads /lib/modules.
    let setup = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true))
        .expect("a privileged init container");
    assert_eq!(
        mount(setup, "/lib/modules"),
        Some(("/lib/modules".into(), Some(true)))
    );
    let setup_script = script_of(setup);
    for needed in [
        "modprobe br_netfilter",
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
        "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        assert!(setup_script.contains(needed), "{needed}: {setup_script}");
    }
    assert!(
        setup_script.contains("-ec"),
        "a failed step fails the init container"
    );
    // Every shell script parses (`sh -n`: read, not run).
    for init in pod.init_containers.iter().flatten() {
        let command = init.command.clone().unwrap_or_default();
        if command.first().map(String::as_str) == Some("/bin/sh") {
            let script = command.last().unwrap();
            let output = Command::new("/bin/sh")
                .args(["-n", "-c", script])
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}: {}",
                init.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    for other in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        if other.name != setup.name {
            assert_eq!(mount(other, "/lib/modules"), None, "{}", other.name);
            let security = other.security_context.as_ref();
            assert_ne!(
                security.and_then(|s| s.privileged),
                Some(true),
                "{}",
                other.name
            );
        }
    }

    // The init container installs every plugin type the conflist chains.
    let installer = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| mount(c, "/opt/cni/bin").is_some())
        .expect("an init container that mounts /opt/cni/bin");
    let script = script_of(installer);
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
    // The image has them where the installer looks, with the VERSION file, and
    // modprobe for node-setup.
    let source = env_value(installer, "CNI_PLUGINS_SOURCE");
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"))
            .unwrap();
    assert!(
        dockerfile.contains(&format!("{source}/VERSION")),
        "the image writes {source}/VERSION"
    );
    assert!(
        dockerfile.contains(&format!("COPY --from=cni-plugins /out/ {source}/")),
        "the image puts the plugins in {source}"
    );
    assert!(dockerfile.contains(" kmod "), "the image has modprobe");
    assert!(
        dockerfile.contains("CGO_ENABLED=0"),
        "the plugins are built static"
    );
}

/// The shell command line of `container`, as one string.
fn script_of(container: &Container) -> String {
    container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The literal value of `container`'s variable `name`.
fn env_value(container: &Container, name: &str) -> String {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("{}: no {name}", container.name))
}

/// A kustomization's list under `key` (resources, patches, images …).
fn kustomization(dir: &Path) -> Value {
    let mut docs = parse_yaml(&dir.join("kustomization.yaml"));
    assert_eq!(docs.len(), 1, "{}", dir.display());
    let doc = docs.remove(0);
    assert_eq!(doc["kind"], "Kustomization", "{}", dir.display());
    doc
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn files_apply_in_order_and_the_kustomizations_name_them() {
    // base/: every object file, listed in name order, and that order applies the
    // DaemonSet's ServiceAccount, RBAC and ConfigMap before the DaemonSet.
    let base = kustomization(&base_dir());
    let listed = strings(&base["resources"]);
    let files: Vec<String> = yaml_files(&base_dir())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, files,
        "base/kustomization.yaml lists every file, in order"
    );
    let kinds: Vec<String> = documents()
        .iter()
        .map(|(_, doc)| doc["kind"].as_str().unwrap().to_string())
        .collect();
    let position = |kind: &str| kinds.iter().position(|k| k == kind).unwrap();
    for before in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
    ] {
        assert!(
            position(before) < position("DaemonSet"),
            "{before} after the DaemonSet: {kinds:?}"
        );
    }
    assert!(position("ClusterRole") < position("ClusterRoleBinding"));

    // Every container runs the image `images:` replaces.
    let images = base["images"].as_array().expect("base has images:");
    assert_eq!(images.len(), 1);
    let image = images[0]["name"].as_str().unwrap();
    let manifests = parse_all();
    let pod = one(&manifests.daemon_sets, "DaemonSet")
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap();
    for container in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        assert_eq!(
            container.image.as_deref(),
            Some(image),
            "{}",
            container.name
        );
    }

    // Both variants apply the base.
    assert_eq!(
        strings(&kustomization(&manifests_dir())["resources"]),
        ["base"]
    );
    let replacement = kustomization(&manifests_dir().join("kube-proxy-replacement"));
    assert_eq!(strings(&replacement["resources"]), ["../base"]);

    // Nothing names a feature that does not exist.
    for file in yaml_files(&base_dir()) {
        let text = std::fs::read_to_string(&file).unwrap().to_lowercase();
        for absent in ["bgp", "net_bind_service"] {
            assert!(
                !text.contains(absent),
                "{} mentions {absent}",
                file.display()
            );
        }
    }
}

/// The ConfigMap data of the kube-proxy-replacement variant: the base's with the
/// overlay's strategic-merge patches applied (a ConfigMap's data merges key by key).
fn replacement_config_data() -> BTreeMap<String, String> {
    let dir = manifests_dir().join("kube-proxy-replacement");
    let manifests = parse_all();
    let config = one(&manifests.config_maps, "ConfigMap");
    let mut data = config.data.clone().unwrap_or_default();
    let patches = kustomization(&dir)["patches"].clone();
    let patches = patches.as_array().expect("patches:");
    assert!(!patches.is_empty());
    for patch in patches {
        let path = patch["path"].as_str().expect("a patch file");
        for doc in parse_yaml(&dir.join(path)) {
            let patch: ConfigMap = strict(&doc).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(patch.metadata.name, config.metadata.name, "{path}");
            assert_eq!(
                patch.metadata.namespace, config.metadata.namespace,
                "{path}"
            );
            data.extend(patch.data.unwrap_or_default());
        }
    }
    data
}

#[test]
fn the_kube_proxy_replacement_variant_runs_the_proxy_at_the_real_api_server_address() {
    let data = replacement_config_data();
    assert_eq!(
        data.get("KUBEWIRE_RUN_SERVICE_PROXY").map(String::as_str),
        Some("true")
    );
    let master = data.get("KUBEWIRE_MASTER").expect("KUBEWIRE_MASTER");
    assert!(master.starts_with("https://"), "{master}");
    let help = run_help();
    for name in data.keys() {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "`{name}` is not read by `kubewire run`"
        );
    }
    // `kubewire run` accepts every value and stops at the missing kubeconfig.
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

/// What `kubectl kustomize DIR` builds, by kind; `None` without kubectl.
fn kustomize(dir: &Path) -> Option<BTreeMap<String, Vec<Value>>> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
        let kind = doc["kind"].as_str().unwrap().to_string();
        by_kind.entry(kind).or_default().push(doc);
    }
    Some(by_kind)
}

/// The variants as kustomize builds them (`kubectl apply -k` applies exactly this):
/// the same objects, the image `images:` names, the replacement's ConfigMap.
#[test]
fn kustomize_builds_both_variants() {
    let Some(plain) = kustomize(&manifests_dir()) else {
        kubewire_lab::harness::skip("needs kubectl (kubectl kustomize)");
        return;
    };
    let replacement = kustomize(&manifests_dir().join("kube-proxy-replacement")).unwrap();
    let base = kustomization(&base_dir());
    let image = format!(
        "{}:{}",
        base["images"][0]["newName"].as_str().unwrap(),
        base["images"][0]["newTag"].as_str().unwrap()
    );
    for (variant, objects) in [
        ("manifests/", &plain),
        ("kube-proxy-replacement", &replacement),
    ] {
        let kinds: Vec<(&str, usize)> =
            objects.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        assert_eq!(
            kinds,
            [
                ("ClusterRole", 1),
                ("ClusterRoleBinding", 1),
                ("ConfigMap", 1),
                ("DaemonSet", 1),
                ("ServiceAccount", 1)
            ],
            "{variant}"
        );
        let ds: DaemonSet = strict(&objects["DaemonSet"][0]).unwrap();
        let pod = ds.spec.unwrap().template.spec.unwrap();
        for container in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            assert_eq!(
                container.image.as_deref(),
                Some(image.as_str()),
                "{variant}"
            );
        }
    }
    let config: ConfigMap = strict(&replacement["ConfigMap"][0]).unwrap();
    let built: BTreeMap<String, String> = config.data.unwrap_or_default();
    assert_eq!(built, replacement_config_data());
    let config: ConfigMap = strict(&plain["ConfigMap"][0]).unwrap();
    let manifests = parse_all();
    assert_eq!(config.data, one(&manifests.config_maps, "ConfigMap").data);
}

/// The install-cni-plugins init container's script, run on temporary directories:
/// it installs what is missing, upgrades what it installed when the image's version
/// is newer, never downgrades, and leaves the node's own plugins alone.
#[test]
fn the_plugin_installer_installs_upgrades_and_keeps_the_nodes_own() {
    let manifests = parse_all();
    let ds = one(&manifests.daemon_sets, "DaemonSet");
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let installer = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "install-cni-plugins")
        .expect("the install-cni-plugins init container");
    let command = installer.command.clone().unwrap_or_default();
    assert_eq!(command[..2], ["/bin/sh", "-ec"]);
    let script = command[2].clone();

    let image = tempfile::tempdir().unwrap();
    let node = tempfile::tempdir().unwrap();
    let plugins = ["bridge", "host-local", "portmap", "loopback"];
    let image_version = |version: &str| {
        std::fs::write(image.path().join("VERSION"), format!("{version}\n")).unwrap();
        for plugin in plugins {
            std::fs::write(image.path().join(plugin), format!("{plugin} {version}")).unwrap();
        }
    };
    let run = || {
        let output = Command::new("/bin/sh")
            .args(["-ec", &script])
            .env("CNI_PLUGINS_SOURCE", image.path())
            .env("CNI_PLUGINS_TARGET", node.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let on_node = |plugin: &str| std::fs::read_to_string(node.path().join(plugin)).unwrap();

    // The node has its own loopback: kept. The rest is installed.
    std::fs::write(node.path().join("loopback"), "the node's own").unwrap();
    image_version("v1.7.1");
    let out = run();
    assert!(out.contains("installed bridge v1.7.1"), "{out}");
    assert!(out.contains("keeping loopback"), "{out}");
    assert_eq!(on_node("bridge"), "bridge v1.7.1");
    assert_eq!(on_node("host-local"), "host-local v1.7.1");
    assert_eq!(on_node("portmap"), "portmap v1.7.1");
    assert_eq!(on_node("loopback"), "the node's own");
    assert_eq!(on_node(".kubewire/bridge").trim(), "v1.7.1");

    // Same version again: nothing is copied.
    assert!(!run().contains("installed"));

    // A newer image upgrades (v1.10.0 sorts after v1.7.1 as a version).
    image_version("v1.10.0");
    let out = run();
    assert!(out.contains("installed portmap v1.10.0"), "{out}");
    assert_eq!(on_node("portmap"), "portmap v1.10.0");
    assert_eq!(on_node("loopback"), "the node's own");

    // An older image (a rollback) leaves the newer plugins in place.
    image_version("v1.7.1");
    assert!(!run().contains("installed"));
    assert_eq!(on_node("bridge"), "bridge v1.10.0");

    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(node.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".kubewire", "bridge", "host-local", "loopback", "portmap"]
    );
}

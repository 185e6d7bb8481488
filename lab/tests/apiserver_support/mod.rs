//! What the API server tests share with the `apiserver` benchmark: objects, a server
//! started in process with a client, collecting watch events, and `kubewire lab
//! apiserver` as its own process.
#![allow(dead_code)]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::Client;
use kube::api::WatchEvent;
use kubewire::cache::Kind;
use kubewire::cache::manifests::ManifestObject;
use kubewire_lab::apiserver::{ApiServer, ApiServerConfig};
use serde_json::{Value, json};

pub fn object(value: Value) -> ManifestObject {
    let kind = Kind::from_name(value["kind"].as_str().unwrap()).unwrap();
    let mut value = value;
    kubewire::cache::manifests::apply_defaults(kind, &mut value);
    ManifestObject { kind, value }
}

pub fn pod(namespace: &str, name: &str, node: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                    "ports": [{"containerPort": 80, "name": "http"}]}]},
           "status": {"phase": "Running", "podIP": "10.244.0.9"}})
}

pub fn config(seed: Vec<ManifestObject>, history: usize) -> ApiServerConfig {
    ApiServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        history,
        bookmark_interval: Duration::from_millis(300),
        seed,
    }
}

pub async fn start(seed: Vec<Value>, history: usize) -> (ApiServer, Client) {
    let server = ApiServer::start(config(seed.into_iter().map(object).collect(), history))
        .await
        .unwrap();
    let client = server.client().await.unwrap();
    (server, client)
}

/// Collects watch events until `count` have arrived (bookmarks included when `keep_bookmarks`).
pub async fn collect<K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static>(
    stream: impl futures::Stream<Item = kube::Result<WatchEvent<K>>>,
    count: usize,
    keep_bookmarks: bool,
) -> Vec<WatchEvent<K>> {
    let events = stream
        .try_filter(|e| {
            futures::future::ready(keep_bookmarks || !matches!(e, WatchEvent::Bookmark(_)))
        })
        .take(count)
        .try_collect::<Vec<_>>();
    tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("watch events in time")
        .unwrap()
}

/// `kubewire lab apiserver` running as its own process, killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub url: String,
    pub kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts the command on `manifests` (YAML text) and waits for its URL on stdout.
    pub fn spawn(manifests: &str) -> ServerProcess {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kubewire-apiserver-cli-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, manifests).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let mut child = std::process::Command::new(
            kubewire_lab::binaries::agent().expect("the kubewire binary"),
        )
        .args(["lab", "apiserver", "--manifests"])
        .arg(&path)
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        let mut url = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut url).unwrap();
        ServerProcess {
            child,
            url: url.trim().to_string(),
            kubeconfig,
            _dir: dir,
        }
    }

    /// A client built from the kubeconfig the command wrote.
    pub async fn client(&self) -> Client {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        assert!(text.contains(&self.url), "{text}");
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

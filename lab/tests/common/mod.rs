//! Helpers shared by the root-only integration tests: the kubewire binary, bounded
//! child processes, the routing controller's routes in a namespace, and a
//! snapshot of what a test could leave behind on the host (namespaces, interfaces,
//! processes, files). Namespaces, unique names and commands come from the lab
//! crate's harness (`kubewire_lab::harness`), re-exported here.
#![allow(dead_code)]

#[allow(unused_imports)]
pub use kubewire_lab::harness::{Netns, enter, sh, unique};

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The agent binary (`cargo build --workspace` builds it beside the lab's).
pub fn kubewire_bin() -> PathBuf {
    kubewire_lab::binaries::agent().expect("the kubewire binary")
}

/// Runs `kubewire args…` and returns its output (never panics on a failed exit).
pub fn kubewire(args: &[&str]) -> Output {
    let mut command = Command::new(kubewire_bin());
    command.args(args);
    output_within(command, Duration::from_secs(300))
}

/// Like `Command::output`, but a child still running after `limit` is killed and the
/// test fails with what it printed, so a hang fails one test instead of the suite.
pub fn output_within(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("spawning {command:?}: {err}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} still running after {limit:?}; it printed:\n{}\n{}",
                String::from_utf8_lossy(&stdout.join().unwrap_or_default()),
                String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Panics with stdout and stderr unless the command succeeded; returns stdout.
pub fn success(output: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The routes the routing controller owns in a test namespace; see [`our_routes`].
pub trait OurRoutes {
    fn our_routes(&self) -> Vec<String>;
}

impl OurRoutes for Netns {
    fn our_routes(&self) -> Vec<String> {
        our_routes(&self.name)
    }
}

/// The routes of `proto 44` (the routing controller's) in the named netns, both
/// families, as `dst via gateway dev device [onlink]` lines.
pub fn our_routes(netns: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for family in ["-4", "-6"] {
        let json = sh(
            "ip",
            &["-n", netns, "-j", family, "route", "show", "proto", "44"],
        );
        let routes: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
        for route in routes {
            let text = |key: &str| route[key].as_str().unwrap_or("").to_string();
            let onlink = route["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink"));
            lines.push(format!(
                "{} via {} dev {}{}",
                text("dst"),
                text("gateway"),
                text("dev"),
                if onlink { " onlink" } else { "" }
            ));
        }
    }
    lines
}

/// What a test might leave on the host, to compare before and after.
#[derive(Debug, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Named network namespaces starting with the given prefix.
    pub netns: BTreeSet<String>,
    /// Every interface of the host's own namespace.
    pub links: BTreeSet<String>,
    /// Pids of processes whose environment has the given `KEY=value`.
    pub processes: BTreeSet<i32>,
    /// Every path under the watched directories.
    pub files: BTreeSet<PathBuf>,
}

impl HostSnapshot {
    pub fn take(netns_prefix: &str, env: (&str, &str), dirs: &[&Path]) -> HostSnapshot {
        let netns = std::fs::read_dir("/run/netns")
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(netns_prefix))
                    .collect()
            })
            .unwrap_or_default();
        let links = sh("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|line| Some(line.split(':').nth(1)?.trim().to_string()))
            .collect();
        let mut files = BTreeSet::new();
        for dir in dirs {
            collect_files(dir, &mut files);
        }
        HostSnapshot {
            netns,
            links,
            processes: processes_with_env(env.0, env.1),
            files,
        }
    }
}

fn collect_files(path: &Path, files: &mut BTreeSet<PathBuf>) {
    if !path.exists() {
        return;
    }
    files.insert(path.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.filter_map(Result::ok) {
            collect_files(&entry.path(), files);
        }
    }
}

/// Pids of live (non-zombie) processes whose environment holds `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> BTreeSet<i32> {
    let wanted = format!("{key}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s[s.rfind(')')? + 2..].starts_with('Z')))
                .unwrap_or(true);
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            !zombie && env.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes())
        })
        .collect()
}

/// Polls `check` every 100 ms until it gives a value; fails naming `what` after 60 s.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client of a lab's API server, from what `lab kubeconfig` printed (its path).
pub fn kube_client(runtime: &tokio::runtime::Runtime, kubeconfig: &str) -> kube::Client {
    runtime
        .block_on(kubewire::agent::client_from_kubeconfig(Path::new(
            kubeconfig.trim(),
        )))
        .unwrap()
}

/// A temporary directory removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kubewire-test-")
        .tempdir()
        .expect("creating a temp dir")
}

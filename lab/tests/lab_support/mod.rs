//! The lab tests' handle on one lab (shared with the `demo` benchmark): its own name,
//! manifests dir and state dir, `kubewire lab …` verbs, what it planned, its agents,
//! and what it leaves on the host.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use kubewire_lab::lifecycle::LabArg;
use kubewire_lab::topology::LabPlan;

use crate::common::{HostSnapshot, kubewire, success, temp_dir, unique};

/// The `--agent-arg`s that leave only the CNI controller running.
pub const BRIDGE_ONLY: [&str; 3] = [
    "--agent-arg=--run-router=false",
    "--agent-arg=--run-firewall=false",
    "--agent-arg=--run-service-proxy=false",
];

/// A lab with its own name, manifests dir and state dir; `lab down` runs when it is
/// dropped, so a failing test leaves nothing behind.
pub struct TestLab {
    pub name: String,
    pub manifests: tempfile::TempDir,
    /// `None`: the default state dir, /run/kubewire/lab/<name>.
    pub state: Option<tempfile::TempDir>,
    /// `--agent-arg`s of `up` and `run`.
    pub agent_args: Vec<&'static str>,
}

impl TestLab {
    pub fn new(prefix: &str, default_state_dir: bool) -> TestLab {
        TestLab {
            name: unique(prefix),
            manifests: temp_dir(),
            state: (!default_state_dir).then(temp_dir),
            agent_args: BRIDGE_ONLY.to_vec(),
        }
    }

    /// Agents run every controller they run by default.
    pub fn with_default_controllers(mut self) -> TestLab {
        self.agent_args.clear();
        self
    }

    /// `lab up` of a lab with its own state dir, from the manifests at `manifests`
    /// (not the lab's own dir) with `up_args` (`--agent-arg=…` and other flags) only;
    /// panics when `up` fails.
    pub fn up_from(prefix: &str, manifests: &Path, up_args: &[&str]) -> TestLab {
        let lab = TestLab::new(prefix, false).with_default_controllers();
        let mut args = lab.args("up");
        args.extend(["--manifests".into(), manifests.display().to_string()]);
        args.extend(up_args.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        success(kubewire(&args), "lab up");
        lab
    }

    pub fn write(&self, file: &str, yaml: &str) {
        std::fs::write(self.manifests.path().join(file), yaml).unwrap();
    }

    /// `kubewire lab <verb> --name N [--state-dir D] [--manifests M --agent-arg…] extra…`.
    pub fn run(&self, verb: &str, extra: &[&str]) -> Output {
        let mut args = self.args(verb);
        if matches!(verb, "up" | "run") {
            args.extend([
                "--manifests".into(),
                self.manifests.path().display().to_string(),
            ]);
            args.extend(self.agent_args.iter().map(|a| a.to_string()));
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubewire(&args)
    }

    /// `lab <verb> --name N [--state-dir D]`.
    pub fn args(&self, verb: &str) -> Vec<String> {
        let mut args = vec![
            "lab".to_string(),
            verb.into(),
            "--name".into(),
            self.name.clone(),
        ];
        if self.state.is_some() {
            args.extend(["--state-dir".into(), self.state_dir().display().to_string()]);
        }
        args
    }

    /// The lab's state dir (its own, or the default one).
    pub fn state_dir(&self) -> PathBuf {
        match &self.state {
            Some(state) => state.path().join("lab"),
            None => Path::new("/run/kubewire/lab").join(&self.name),
        }
    }

    /// What `up` planned: nodes, pods, their namespaces and addresses.
    pub fn plan(&self) -> LabPlan {
        let arg = LabArg {
            name: self.name.clone(),
            state_dir: self.state.as_ref().map(|_| self.state_dir()),
        };
        arg.load_up().unwrap().plan().unwrap().clone()
    }

    /// The network namespace of node `node`.
    pub fn node_netns(&self, node: &str) -> String {
        format!("kw-{}-node-{node}", self.name)
    }

    /// The agent process of `node`: (pid, its command line).
    pub fn agent(&self, node: &str) -> (i32, Vec<String>) {
        let arg = LabArg {
            name: self.name.clone(),
            state_dir: self.state.as_ref().map(|_| self.state_dir()),
        };
        let state = arg.load_up().unwrap();
        let pid = state
            .processes
            .iter()
            .find(|p| p.role == format!("agent {node}"))
            .map(|p| p.pid)
            .expect("the agent's process record");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (pid, args)
    }

    /// What the agent of `node` logged.
    pub fn agent_log(&self, node: &str) -> String {
        let path = self.state_dir().join("nodes").join(node).join("agent.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// What the host would have left of this lab: its namespaces and processes, the
    /// host's interfaces and the files under the state dir's parent.
    pub fn host(&self) -> HostSnapshot {
        let parent = match &self.state {
            Some(state) => state.path().to_path_buf(),
            None => Path::new("/run/kubewire").to_path_buf(),
        };
        let mut snapshot = HostSnapshot::take(
            &format!("kw-{}-", self.name),
            ("KUBEWIRE_LAB", &self.name),
            &[&parent],
        );
        // Labs of other tests (or people) may come and go under the shared default
        // dir meanwhile; only this lab's own files are this test's business.
        let labs = Path::new("/run/kubewire/lab");
        snapshot.files.retain(|path| match path.strip_prefix(labs) {
            Ok(rest) => rest
                .components()
                .next()
                .is_none_or(|lab| lab.as_os_str() == self.name.as_str()),
            Err(_) => true,
        });
        snapshot
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = self.run("down", &[]);
    }
}

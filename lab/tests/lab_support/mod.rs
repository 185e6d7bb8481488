//! The lab tests' handle on one lab (shared with the `demo` benchmark): its own name,
//! manifests dir and state dir, `kubewire lab …` verbs, and what it leaves on the host.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

use crate::common::{HostSnapshot, kubewire, temp_dir, unique};

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

    pub fn write(&self, file: &str, yaml: &str) {
        std::fs::write(self.manifests.path().join(file), yaml).unwrap();
    }

    /// `kubewire lab <verb> --name N [--state-dir D] [--manifests M --agent-arg…] extra…`.
    pub fn run(&self, verb: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "lab".to_string(),
            verb.into(),
            "--name".into(),
            self.name.clone(),
        ];
        if let Some(state) = &self.state {
            args.extend([
                "--state-dir".into(),
                state.path().join("lab").display().to_string(),
            ]);
        }
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

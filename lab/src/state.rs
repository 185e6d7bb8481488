//! The lab's record of everything it created: the state dir (`--state-dir`, default
//! `/run/kubewire/lab/<name>`) holds `state.json`, written atomically *before* each
//! namespace is created and right after each process starts, so that `lab down` — and
//! `lab up` after a crash — removes exactly what this lab made and nothing else. All
//! other files of the lab (logs, kubeconfigs, CNI conf and IPAM dirs) live inside the
//! state dir; parent directories the lab had to create are recorded too. Writers
//! (`lab up` and the control plane's kubelet) change it only through
//! [`LabStateFile::update`], under a lock, so none loses another's change.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::process::ProcessRecord;
use super::topology::LabPlan;

pub const STATE_FILE: &str = "state.json";
pub const DEFAULT_STATE_ROOT: &str = "/run/kubewire/lab";

/// `--state-dir` if given, else `/run/kubewire/lab/<name>`.
pub fn state_dir(name: &str, given: Option<&Path>) -> PathBuf {
    match given {
        Some(dir) => dir.to_path_buf(),
        None => Path::new(DEFAULT_STATE_ROOT).join(name),
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    /// Directories above `dir` that did not exist before (innermost first); removed
    /// on down when empty.
    pub created_parents: Vec<PathBuf>,
    /// Every netns the lab created or was about to create, in creation order.
    pub netns: Vec<String>,
    pub processes: Vec<ProcessRecord>,
    /// Pods with a completed CNI ADD (`namespace/name`), to DEL on teardown.
    pub wired_pods: Vec<String>,
    pub plan: Option<LabPlan>,
    /// The CNI plugin directories `up` used, for the DELs of `down`.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The host-side kubeconfig for the API server (`lab kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// `up` finished: every agent was healthy and every pod wired.
    pub complete: bool,
    /// The `--agent-arg`s of `up`, for agents the control plane restarts.
    #[serde(default)]
    pub agent_args: Vec<String>,
    /// UDP source ports `lab probe` has taken so far, the start of the next run's
    /// (see `probe::udp_source_port`).
    #[serde(default)]
    pub udp_ports_taken: u32,
    /// The API server the lab runs on when it is not its own (`--apiserver-kubeconfig`),
    /// with what the lab created there.
    #[serde(default)]
    pub external: Option<super::external::ExternalApiServer>,
}

impl LabState {
    pub fn file(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub fn load(dir: &Path) -> anyhow::Result<Option<LabState>> {
        let file = Self::file(dir);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", file.display())),
        };
        let state = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a lab state file", file.display()))?;
        Ok(Some(state))
    }

    /// Writes `state.json` atomically (temp file + rename).
    pub fn save(&self) -> anyhow::Result<()> {
        let file = Self::file(&self.dir);
        let temp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        std::fs::write(&temp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", temp.display()))?;
        std::fs::rename(&temp, &file).with_context(|| format!("writing {}", file.display()))
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    pub fn pod_dir(&self, key: &str) -> PathBuf {
        self.dir.join("pods").join(key.replace('/', "_"))
    }

    pub fn plan(&self) -> anyhow::Result<&LabPlan> {
        self.plan
            .as_ref()
            .with_context(|| format!("lab {} has no plan in its state", self.name))
    }
}

/// Creates the state dir (which must not exist yet), recording the parents it made.
pub fn create_dir(name: &str, dir: &Path) -> anyhow::Result<LabState> {
    let mut created_parents = Vec::new();
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        created_parents.push(p.to_path_buf());
        parent = p.parent();
    }
    if let Some(p) = dir.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    std::fs::create_dir(dir).with_context(|| format!("creating state dir {}", dir.display()))?;
    let state = LabState {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        created_parents,
        ..LabState::default()
    };
    state.save()?;
    Ok(state)
}

/// Removes the state dir and the parents the lab created (when they are empty:
/// other labs may live beside it).
pub fn remove_dir(state: &LabState) -> anyhow::Result<()> {
    if state.dir.join(STATE_FILE).exists() {
        std::fs::remove_dir_all(&state.dir)
            .with_context(|| format!("removing {}", state.dir.display()))?;
    }
    for parent in &state.created_parents {
        if std::fs::remove_dir(parent).is_err() {
            break;
        }
    }
    Ok(())
}

/// The lab's state file as several writers share it — `lab up`'s concurrent steps
/// and the control plane's [`super::kubelet`]: every [`LabStateFile::update`] reads
/// `state.json`, changes it and writes it back under an exclusive `flock` on
/// [`LOCK_FILE`], so no writer loses another's change. Readers need no lock (the file
/// is replaced by rename).
#[derive(Clone, Debug)]
pub struct LabStateFile {
    dir: PathBuf,
}

/// The lock file beside `state.json`.
pub const LOCK_FILE: &str = ".state.lock";

impl LabStateFile {
    /// The state in `dir`, which must exist (see [`create_dir`]).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies `f` to the current state and saves it, holding the lock throughout.
    pub fn update<T>(&self, f: impl FnOnce(&mut LabState) -> T) -> anyhow::Result<T> {
        let path = self.dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| errno)
            .with_context(|| format!("locking {}", path.display()))?;
        let mut state = self.snapshot()?;
        let result = f(&mut state);
        state.save()?;
        Ok(result)
    }

    /// The state as last saved.
    pub fn snapshot(&self) -> anyhow::Result<LabState> {
        LabState::load(&self.dir)?
            .with_context(|| format!("no lab state in {}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_records_parents_and_remove_restores() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/lab");
        let mut state = create_dir("lab", &dir).unwrap();
        assert_eq!(
            state.created_parents,
            [root.path().join("a/b"), root.path().join("a")]
        );
        state.netns.push("kw-lab-fabric".into());
        state.save().unwrap();
        let loaded = LabState::load(&dir).unwrap().unwrap();
        assert_eq!(loaded.netns, ["kw-lab-fabric"]);
        assert!(
            create_dir("lab", &dir).is_err(),
            "an existing state dir is refused"
        );
        remove_dir(&loaded).unwrap();
        assert!(!root.path().join("a").exists());
        assert!(root.path().exists());
    }

    #[test]
    fn a_dir_without_state_is_not_removed() {
        let root = tempfile::tempdir().unwrap();
        let state = LabState {
            dir: root.path().to_path_buf(),
            ..LabState::default()
        };
        remove_dir(&state).unwrap();
        assert!(root.path().exists());
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("lab");
        create_dir("lab", &dir).unwrap();
        let file = LabStateFile::new(&dir);
        std::thread::scope(|scope| {
            for writer in 0..4 {
                let file = file.clone();
                scope.spawn(move || {
                    for n in 0..25 {
                        file.update(|s| s.netns.push(format!("{writer}-{n}")))
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(file.snapshot().unwrap().netns.len(), 100);
    }
}

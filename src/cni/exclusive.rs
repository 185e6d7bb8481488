//! Makes kubewire's conflist the one the runtime uses. Container runtimes (libcni's
//! `ConfFiles`) load the first `.conf`, `.conflist` or `.json` file of the directory
//! by name, so another network's file that sorts first — containerd's
//! `10-containerd-net.conflist`, a previous CNI's — would win over ours whatever we
//! name it. With `--cni-exclusive` every such file is renamed `NAME.kubewire.bak`
//! (a suffix no runtime loads), on every sync, so one rewritten by its installer is
//! moved again; `kubewire cleanup` renames them back. A stale conflist of our own
//! (network `kubewire` under another file name, e.g. from before a rename) is
//! deleted instead: nothing should bring it back.

use std::path::Path;

use anyhow::Context;

use super::apply::remove_if_ours;

/// What a set-aside file is renamed to: `NAME` + this.
pub const BACKUP_SUFFIX: &str = ".kubewire.bak";

/// Whether a runtime would load the file `name` as a network configuration.
fn is_network_config(name: &str) -> bool {
    [".conf", ".conflist", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// The names of the non-directory entries of `dir` (empty when it does not exist).
fn file_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if let (false, Some(name)) = (is_dir, entry.file_name().to_str()) {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// What [`set_aside_others`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAside {
    /// Other networks' files, now `NAME.kubewire.bak`.
    pub moved: Vec<String>,
    /// Stale conflists of our own, deleted.
    pub removed: Vec<String>,
}

/// Moves every network configuration in `dir` but `ours` aside (see the module doc).
pub fn set_aside_others(dir: &Path, ours: &str) -> anyhow::Result<SetAside> {
    let mut done = SetAside::default();
    for name in file_names(dir)? {
        if name == ours || !is_network_config(&name) {
            continue;
        }
        let path = dir.join(&name);
        if remove_if_ours(&path)? {
            done.removed.push(name);
            continue;
        }
        let backup = dir.join(format!("{name}{BACKUP_SUFFIX}"));
        // A backup left from before is replaced: this file is the newer version.
        std::fs::rename(&path, &backup)
            .with_context(|| format!("moving {} aside to {}", path.display(), backup.display()))?;
        done.moved.push(name);
    }
    Ok(done)
}

/// Renames every `NAME.kubewire.bak` in `dir` back to `NAME`, unless `NAME` exists
/// again (then the backup stays, and is reported). Returns the names restored.
pub fn restore(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut restored = Vec::new();
    for backup_name in file_names(dir)? {
        let Some(name) = backup_name.strip_suffix(BACKUP_SUFFIX) else {
            continue;
        };
        let (backup, path) = (dir.join(&backup_name), dir.join(name));
        if path.symlink_metadata().is_ok() {
            tracing::warn!(backup = %backup.display(), "not restoring a CNI config: a file of its name exists again");
            continue;
        }
        std::fs::rename(&backup, &path)
            .with_context(|| format!("restoring {} from {}", path.display(), backup.display()))?;
        restored.push(name.to_string());
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "05-kubewire.conflist";

    fn write(dir: &Path, name: &str, network: &str) {
        let text = format!(r#"{{"cniVersion":"1.0.0","name":"{network}","plugins":[]}}"#);
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn other_configurations_go_aside_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        write(dir, OURS, "kubewire");
        write(dir, "00-first.conf", "first");
        write(dir, "10-containerd-net.conflist", "containerd-net");
        write(dir, "99-last.json", "last");
        std::fs::write(dir.join("README"), "not a config").unwrap();
        std::fs::create_dir(dir.join("multus.d.conf")).unwrap();

        let done = set_aside_others(dir, OURS).unwrap();
        assert_eq!(
            done.moved,
            [
                "00-first.conf",
                "10-containerd-net.conflist",
                "99-last.json"
            ]
        );
        assert!(done.removed.is_empty());
        assert_eq!(
            names(dir),
            [
                "00-first.conf.kubewire.bak",
                OURS,
                "10-containerd-net.conflist.kubewire.bak",
                "99-last.json.kubewire.bak",
                "README",
                "multus.d.conf",
            ]
        );
        // Nothing left to move: a second pass changes nothing.
        assert_eq!(set_aside_others(dir, OURS).unwrap(), SetAside::default());

        // Its installer writes it again: moved again, the backup now the newer one.
        write(dir, "10-containerd-net.conflist", "containerd-net-v2");
        let done = set_aside_others(dir, OURS).unwrap();
        assert_eq!(done.moved, ["10-containerd-net.conflist"]);
        let backup =
            std::fs::read_to_string(dir.join("10-containerd-net.conflist.kubewire.bak")).unwrap();
        assert!(backup.contains("containerd-net-v2"), "{backup}");

        // Cleanup: ours removed by the controller, the others back under their names,
        // except one whose name is taken again.
        std::fs::remove_file(dir.join(OURS)).unwrap();
        write(dir, "99-last.json", "someone else");
        let restored = restore(dir).unwrap();
        assert_eq!(restored, ["00-first.conf", "10-containerd-net.conflist"]);
        assert_eq!(
            names(dir),
            [
                "00-first.conf",
                "10-containerd-net.conflist",
                "99-last.json",
                "99-last.json.kubewire.bak",
                "README",
                "multus.d.conf",
            ]
        );
        let last = std::fs::read_to_string(dir.join("99-last.json")).unwrap();
        assert!(last.contains("someone else"), "{last}");
    }

    #[test]
    fn a_stale_conflist_of_our_own_is_deleted_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        write(dir, OURS, "kubewire");
        write(dir, "10-kubewire.conflist", "kubewire");
        let done = set_aside_others(dir, OURS).unwrap();
        assert_eq!(done.removed, ["10-kubewire.conflist"]);
        assert!(done.moved.is_empty());
        assert_eq!(names(dir), [OURS]);
        assert!(restore(dir).unwrap().is_empty());
    }

    #[test]
    fn a_missing_directory_has_nothing_to_move() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent");
        assert_eq!(
            set_aside_others(&absent, OURS).unwrap(),
            SetAside::default()
        );
        assert!(restore(&absent).unwrap().is_empty());
    }
}

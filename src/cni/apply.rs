//! Puts the conflist on disk: merged with the file already there (keys kubewire does
//! not own survive), written only when the bytes change, and always atomically — a
//! temporary file in the same directory, fsync'ed, mode 0644, renamed over the old
//! one, then the directory fsync'ed — so a runtime never reads a half-written file.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

use super::model::{Conflist, NETWORK_NAME};

/// What [`write_conflist`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    Unchanged,
}

/// Writes `desired` to `path`, keeping what the existing file has that kubewire does
/// not own. An existing file that is not a readable conflist is replaced whole.
pub fn write_conflist(path: &Path, mut desired: Conflist) -> anyhow::Result<WriteOutcome> {
    let existing = match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    if let Some(bytes) = &existing {
        match serde_json::from_slice::<Conflist>(bytes) {
            Ok(old) => desired.keep_unowned_from(old),
            Err(err) => tracing::warn!(
                path = %path.display(), error = %err,
                "the existing CNI config is not a readable conflist; replacing it"
            ),
        }
    }
    let bytes = desired.to_bytes();
    if existing.as_deref() == Some(bytes.as_slice()) {
        return Ok(WriteOutcome::Unchanged);
    }
    write_atomically(path, &bytes)?;
    Ok(WriteOutcome::Written)
}

/// Removes `path` if it is a conflist kubewire wrote (its `name` is `kubewire`);
/// returns whether it did.
pub fn remove_if_ours(path: &Path) -> anyhow::Result<bool> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let name = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("name")?.as_str().map(str::to_string));
    if name.as_deref() != Some(NETWORK_NAME) {
        tracing::info!(path = %path.display(), "leaving a CNI config kubewire did not write");
        return Ok(false);
    }
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(true)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A dot-name without a .conf/.conflist/.json suffix, so runtimes never load it.
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let temp_path = temp.path().to_path_buf();
    let context = || format!("writing {}", temp_path.display());
    temp.write_all(bytes).with_context(context)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(context)?;
    temp.as_file().sync_all().with_context(context)?;
    temp.persist(path)
        .map_err(|err| err.error)
        .with_context(|| format!("renaming into {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use serde_json::json;

    fn conflist(mtu: u32) -> Conflist {
        serde_json::from_value(json!({
            "cniVersion": "1.0.0", "name": "kubewire",
            "plugins": [
                {"type": "bridge", "bridge": "kube-bridge", "isGateway": true, "hairpinMode": true, "mtu": mtu,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn writes_0644_then_leaves_unchanged_content_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.d/10-kubewire.conflist");
        assert_eq!(
            write_conflist(&path, conflist(1450)).unwrap(),
            WriteOutcome::Written
        );
        let first = std::fs::metadata(&path).unwrap();
        assert_eq!(first.mode() & 0o777, 0o644);
        assert_eq!(
            write_conflist(&path, conflist(1450)).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), first.ino());
        assert_eq!(
            write_conflist(&path, conflist(1400)).unwrap(),
            WriteOutcome::Written
        );
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), first.ino());
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["plugins"][0]["mtu"], 1400);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["10-kubewire.conflist"]);
    }

    #[test]
    fn keeps_unknown_keys_across_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-kubewire.conflist");
        let mut edited = serde_json::to_value(conflist(1450)).unwrap();
        edited["operatorNote"] = json!("keep me");
        edited["plugins"][0]["promiscMode"] = json!(true);
        std::fs::write(&path, serde_json::to_vec(&edited).unwrap()).unwrap();
        assert_eq!(
            write_conflist(&path, conflist(1400)).unwrap(),
            WriteOutcome::Written
        );
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["operatorNote"], "keep me");
        assert_eq!(written["plugins"][0]["promiscMode"], true);
        assert_eq!(written["plugins"][0]["mtu"], 1400);
        assert_eq!(
            write_conflist(&path, conflist(1400)).unwrap(),
            WriteOutcome::Unchanged
        );
    }

    #[test]
    fn garbage_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-kubewire.conflist");
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(
            write_conflist(&path, conflist(1450)).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(std::fs::read(&path).unwrap(), conflist(1450).to_bytes());
    }

    #[test]
    fn removes_only_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("10-kubewire.conflist");
        let theirs = dir.path().join("10-other.conflist");
        write_conflist(&ours, conflist(1450)).unwrap();
        std::fs::write(
            &theirs,
            br#"{"cniVersion":"1.0.0","name":"other","plugins":[]}"#,
        )
        .unwrap();
        assert!(remove_if_ours(&ours).unwrap());
        assert!(!ours.exists());
        assert!(!remove_if_ours(&ours).unwrap(), "already gone");
        assert!(!remove_if_ours(&theirs).unwrap());
        assert!(theirs.exists());
    }
}

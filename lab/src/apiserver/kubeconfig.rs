//! The kubeconfig that points kubectl and kube-rs at the embedded server: one cluster,
//! context and user named `kubewire-lab`, plain HTTP, no credentials.

use std::io::Write;
use std::path::Path;

/// The context (and cluster and user) name in generated kubeconfigs.
pub const CONTEXT: &str = "kubewire-lab";

pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT}
  cluster:
    server: {url}
contexts:
- name: {CONTEXT}
  context:
    cluster: {CONTEXT}
    user: {CONTEXT}
    namespace: default
current-context: {CONTEXT}
users:
- name: {CONTEXT}
  user: {{}}
preferences: {{}}
"
    )
}

/// Writes the kubeconfig for `url` to `path` atomically (a temp file beside it, then
/// a rename), so a reader never sees half a file.
pub fn write_kubeconfig(url: &str, path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(kubeconfig(url).as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|err| err.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_rs_reads_the_generated_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        write_kubeconfig("http://127.0.0.1:6443", &path).unwrap();
        let config = kube::config::Kubeconfig::read_from(&path).unwrap();
        assert_eq!(config.current_context.as_deref(), Some(CONTEXT));
        assert_eq!(
            config.clusters[0]
                .cluster
                .as_ref()
                .unwrap()
                .server
                .as_deref(),
            Some("http://127.0.0.1:6443")
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }
}

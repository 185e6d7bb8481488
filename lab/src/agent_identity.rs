//! The agents' identity on an external API server: the ServiceAccount, ClusterRole
//! and ClusterRoleBinding of `manifests/base` (compiled in, so the lab exercises
//! exactly the RBAC an operator applies), created where they do not exist yet, and
//! a token of that ServiceAccount from the TokenRequest API. The agents' kubeconfigs
//! carry the token, so every request they make is authorized by those manifests
//! and nothing else.

use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::external::ObjectRef;
use super::external_objects;
use super::state::LabStateFile;

/// The RBAC manifests the agents run under, as shipped.
const RBAC: [(&str, &str); 3] = [
    (
        "00-serviceaccount.yaml",
        include_str!("../../manifests/base/00-serviceaccount.yaml"),
    ),
    (
        "01-clusterrole.yaml",
        include_str!("../../manifests/base/01-clusterrole.yaml"),
    ),
    (
        "02-clusterrolebinding.yaml",
        include_str!("../../manifests/base/02-clusterrolebinding.yaml"),
    ),
];

/// How long the token is valid (the lab's lifetime, generously).
const TOKEN_SECONDS: i64 = 24 * 3600;
/// The token file in the state dir.
pub const TOKEN_FILE: &str = "agent-token";

pub fn token_path(dir: &Path) -> PathBuf {
    dir.join(TOKEN_FILE)
}

/// The objects of the RBAC manifests.
fn rbac_objects() -> anyhow::Result<Vec<Value>> {
    RBAC.iter()
        .map(|(file, text)| {
            serde_saphyr::from_str::<Value>(text).with_context(|| format!("manifests/base/{file}"))
        })
        .collect()
}

fn reference(object: &Value) -> anyhow::Result<ObjectRef> {
    let field = |name: &str| {
        object
            .pointer(name)
            .and_then(Value::as_str)
            .with_context(|| format!("an RBAC manifest without {name}"))
    };
    Ok(ObjectRef::new(
        field("/apiVersion")?,
        field("/kind")?,
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str),
        field("/metadata/name")?,
    ))
}

/// Creates the RBAC objects (those already there are left as they are) and writes
/// a token of the ServiceAccount to [`token_path`] (mode 0600); returns the
/// ServiceAccount as `namespace/name`.
pub async fn set_up(state: &LabStateFile, client: &kube::Client) -> anyhow::Result<String> {
    let mut account = None;
    for object in rbac_objects()? {
        let reference = reference(&object)?;
        external_objects::create(state, client, &reference, &object).await?;
        if reference.kind == "ServiceAccount" {
            account = Some(reference);
        }
    }
    let account = account.context("manifests/base has no ServiceAccount")?;
    let namespace = account.namespace.clone().unwrap_or_default();
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": TOKEN_SECONDS},
    });
    let answer: Value = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_subresource("token", &account.name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for {account}"))?;
    let token = answer
        .pointer("/status/token")
        .and_then(Value::as_str)
        .with_context(|| format!("the TokenRequest for {account} returned no token"))?;
    let path = token_path(state.dir());
    write_private(&path, token)?;
    Ok(format!("{namespace}/{}", account.name))
}

/// Writes a file only root reads (an agent's token, or a kubeconfig holding it).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rbac_names_one_service_account_bound_to_its_role() {
        let objects = rbac_objects().unwrap();
        let refs: Vec<ObjectRef> = objects.iter().map(|o| reference(o).unwrap()).collect();
        let kinds: Vec<&str> = refs.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
        );
        let binding = &objects[2];
        assert_eq!(binding["roleRef"]["name"], objects[1]["metadata"]["name"]);
        assert_eq!(
            binding["subjects"][0]["name"],
            objects[0]["metadata"]["name"]
        );
        assert_eq!(
            binding["subjects"][0]["namespace"],
            objects[0]["metadata"]["namespace"]
        );
    }
}

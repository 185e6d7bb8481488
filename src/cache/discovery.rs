//! Which of the kinds kubewire reads the API server serves, asked once at start: a
//! cluster before Kubernetes 1.33 serves no `networking.k8s.io/v1` ServiceCIDR, and
//! watching it there would keep the cache from ever syncing.

use std::collections::BTreeSet;

use std::time::Duration;

use kube::Client;

use super::Kind;

/// The subset of `kinds` the API server serves. Each missing kind is logged once.
/// When discovery itself fails or takes longer than `timeout` (the server is not
/// reachable yet), every kind is assumed served: the watches then retry, and start-up
/// fails naming the kinds that never synced.
pub async fn served(client: &Client, kinds: &[Kind], timeout: Duration) -> BTreeSet<Kind> {
    let versions: BTreeSet<&str> = kinds.iter().map(|k| k.api_version()).collect();
    let mut served = BTreeSet::new();
    for version in versions {
        let wanted = kinds.iter().copied().filter(|k| k.api_version() == version);
        let listed = tokio::time::timeout(timeout, async {
            if version == "v1" {
                client.list_core_api_resources(version).await
            } else {
                client.list_api_group_resources(version).await
            }
        })
        .await;
        let resources = match listed {
            Ok(Ok(list)) => Ok(list.resources.into_iter().map(|r| r.kind).collect()),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => Ok(Vec::new()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let resources: Option<Vec<String>> = resources
            .inspect_err(|error| {
                tracing::warn!(api_version = version, %error, "API discovery failed; watching its kinds anyway");
            })
            .ok();
        for kind in wanted {
            match &resources {
                Some(names) if !names.iter().any(|name| name == kind.as_str()) => {
                    tracing::warn!(%kind, api_version = version, "the API server does not serve this kind; it is treated as empty");
                }
                _ => {
                    served.insert(kind);
                }
            }
        }
    }
    served
}

//! The service proxy (a kube-proxy replacement): Services and EndpointSlices read into
//! one [`model::ServiceMap`] per node by [`services`], which [`trace`] decides single
//! packets from and [`nftables`] compiles into the `inet kubewire-proxy` table.
//! The IPVS backend is not built: choosing it is an error, never a silent fallback.

mod args;
pub mod cmd;
pub mod ipvs;
pub mod model;
pub mod nftables;
pub mod services;
pub mod trace;

pub use args::{ProxyArgs, ProxyBackend};

use ipnet::IpNet;

use crate::cache::{Kind, Snapshot};
use crate::runtime::{Controller, SyncReason, Synced};

/// The kinds the proxy reads.
pub const KINDS: [Kind; 4] = [
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Node,
    Kind::ServiceCIDR,
];

/// The error for `--proxy-backend ipvs` / `proxy plan --backend ipvs`.
pub const IPVS_NOT_BUILT: &str = "the IPVS backend is not built in this kubewire; use the nftables backend (--proxy-backend=nftables)";

/// Keeps this node's `inet kubewire-proxy` table equal to what its Services compile to.
pub struct ProxyController {
    node: String,
    /// Service CIDRs when the cluster has no ServiceCIDR objects.
    default_cidrs: Vec<IpNet>,
    reconciler: nftables::apply::Reconciler,
}

impl ProxyController {
    pub fn new(node: String, default_cidrs: Vec<IpNet>) -> Self {
        Self {
            node,
            default_cidrs,
            reconciler: nftables::apply::Reconciler::new(nftables::nft::ProxyNft::default()),
        }
    }
}

impl Controller for ProxyController {
    fn name(&self) -> &'static str {
        "proxy"
    }

    fn kinds(&self) -> &'static [Kind] {
        &KINDS
    }

    async fn sync(&mut self, snapshot: &Snapshot, reason: SyncReason) -> anyhow::Result<Synced> {
        let map = services::build(snapshot, &self.node, &self.default_cidrs);
        let (ruleset, problems) = nftables::compile::compile(&map);
        let mut bad_objects = map.errors.clone();
        bad_objects.extend(problems);
        let applied = self.reconciler.sync(ruleset, reason).await?;
        if applied != nftables::apply::Applied::Nothing {
            tracing::debug!(?applied, ports = map.ports.len(), "service proxy updated");
        }
        Ok(Synced { bad_objects })
    }

    /// Removes the proxy's nftables table (and nothing else; there are no IPVS
    /// services).
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        if nftables::nft::ProxyNft::default().delete_table().await? {
            tracing::info!(
                "deleted table {} {}",
                nftables::ruleset::FAMILY,
                nftables::ruleset::TABLE
            );
        }
        Ok(())
    }
}

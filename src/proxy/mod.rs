//! The service proxy (a kube-proxy replacement): Services and EndpointSlices read into
//! one [`model::ServiceMap`] per node by [`services`], which [`trace`] decides single
//! packets from and [`nftables`] compiles into the `inet kubewire-proxy` table.
//! or [`ipvs`] renders into IPVS virtual services (with the same table as glue).

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
use crate::runtime::{BadObject, Controller, SyncReason, Synced};

/// The kinds the proxy reads.
pub const KINDS: [Kind; 4] = [
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Node,
    Kind::ServiceCIDR,
];

/// The backend that keeps one node's Services in the kernel.
enum Backend {
    Nftables(Box<nftables::apply::Reconciler>),
    Ipvs(Box<ipvs::apply::Reconciler>),
}

/// Keeps this node's Services in the kernel: the `inet kubewire-proxy` table, and
/// with IPVS the virtual services and VIPs too.
pub struct ProxyController {
    node: String,
    /// Service CIDRs when the cluster has no ServiceCIDR objects.
    default_cidrs: Vec<IpNet>,
    backend: Backend,
}

impl ProxyController {
    /// Resolves `auto`: IPVS when its socket opens (the kernel has IPVS), else
    /// nftables; says which in the log. An explicit `ipvs` without IPVS is an error,
    /// never a silent fallback.
    pub fn new(
        node: String,
        default_cidrs: Vec<IpNet>,
        args: &ProxyArgs,
        metrics: &crate::telemetry::Metrics,
    ) -> anyhow::Result<Self> {
        crate::nft::NftMetrics::register(metrics);
        let nftables = || {
            Backend::Nftables(Box::new(nftables::apply::Reconciler::new(
                crate::nft::Nft::default(),
            )))
        };
        let grace = args.ipvs_graceful_period;
        let backend = match args.proxy_backend {
            ProxyBackend::Nftables => nftables(),
            ProxyBackend::Ipvs => match crate::ipvs::Ipvs::new() {
                Ok(handle) => Backend::Ipvs(Box::new(ipvs::apply::Reconciler::new(
                    handle,
                    grace,
                    ipvs::metrics::IpvsMetrics::register(metrics),
                ))),
                Err(err) => anyhow::bail!("--proxy-backend=ipvs: {err}"),
            },
            ProxyBackend::Auto => match crate::ipvs::Ipvs::new() {
                Ok(handle) => {
                    tracing::info!("service proxy backend: IPVS (the kernel has it)");
                    Backend::Ipvs(Box::new(ipvs::apply::Reconciler::new(
                        handle,
                        grace,
                        ipvs::metrics::IpvsMetrics::register(metrics),
                    )))
                }
                Err(err) => {
                    tracing::info!("service proxy backend: nftables ({err})");
                    nftables()
                }
            },
        };
        Ok(Self {
            node,
            default_cidrs,
            backend,
        })
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
        let mut bad_objects: Vec<BadObject> =
            map.errors.iter().cloned().map(BadObject::from).collect();
        match &mut self.backend {
            Backend::Nftables(reconciler) => {
                let (ruleset, problems) = nftables::compile::compile(&map);
                bad_objects.extend(problems.into_iter().map(BadObject::from));
                let applied = reconciler.sync(ruleset, reason).await?;
                if applied != nftables::apply::Applied::Nothing {
                    tracing::debug!(?applied, ports = map.ports.len(), "service proxy updated");
                }
            }
            Backend::Ipvs(reconciler) => {
                let (desired, problems) = ipvs::compile::compile(&map);
                bad_objects.extend(problems.into_iter().map(BadObject::from));
                let applied = reconciler.sync(desired, reason).await?;
                if applied.ipvs_changes > 0 {
                    tracing::debug!(
                        ?applied,
                        ports = map.ports.len(),
                        "IPVS service proxy updated"
                    );
                }
            }
        }
        Ok(Synced { bad_objects })
    }

    /// Removes the proxy's nftables table, our IPVS services and the dummy interface
    /// (whichever backend ran), and nothing else.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        let table = nftables::ruleset::table_id();
        if crate::nft::Nft::default()
            .delete_table(&table.family, &table.name)
            .await?
        {
            tracing::info!(
                "deleted table {} {}",
                nftables::ruleset::FAMILY,
                nftables::ruleset::TABLE
            );
        }
        let deleted = ipvs::apply::cleanup().await?;
        if deleted > 0 {
            tracing::info!("deleted {deleted} IPVS services");
        }
        Ok(())
    }
}

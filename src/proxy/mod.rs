//! The service proxy (a kube-proxy replacement): Services and EndpointSlices read into
//! one [`model::ServiceMap`] per node by [`services`], which [`trace`] decides single
//! packets from and [`nftables`] compiles into the `inet kubewire-proxy` table.
//! or [`ipvs`] renders into IPVS virtual services (with the same table as glue).

pub mod affinity;
mod args;
pub mod cmd;
pub mod conntrack;
pub mod health;
pub mod ipvs;
pub mod metrics;
pub mod model;
pub mod nftables;
pub mod services;
pub mod time;
pub mod trace;

pub use args::{BindAddress, NodePortAddresses, ProxyArgs, ProxyBackend, ServiceMapArgs};

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
    Nftables(Box<Nftables>),
    Ipvs(Box<ipvs::apply::Reconciler>),
}

/// The nftables backend's state between syncs: the compiled table, kept up to date
/// one Service at a time, and what keeps the kernel equal to it.
pub struct Nftables {
    pub compiler: nftables::incremental::Compiler<crate::nft::Table>,
    pub reconciler: nftables::apply::Reconciler,
    pub janitor: affinity::Janitor,
}

impl Nftables {
    pub fn new(nft: crate::nft::Nft) -> Self {
        Self {
            compiler: nftables::incremental::Compiler::table(
                nftables::compile::Dataplane::Nftables,
            ),
            reconciler: nftables::apply::Reconciler::new(nft),
            janitor: affinity::Janitor::default(),
        }
    }

    /// Brings the kernel to `map`, recompiling the `changed` Services; returns what
    /// was applied and the compiler's problems.
    pub async fn sync(
        &mut self,
        map: &model::ServiceMap,
        changed: &services::Changed,
        reason: SyncReason,
    ) -> anyhow::Result<(nftables::apply::Applied, Vec<String>)> {
        let problems = self.compiler.update(map, changed);
        let applied = self
            .reconciler
            .sync_table(self.compiler.sink(), reason)
            .await?;
        Ok((applied, problems))
    }
}

/// Keeps this node's Services in the kernel: the `inet kubewire-proxy` table, and
/// with IPVS the virtual services and VIPs too.
pub struct ProxyController {
    node: String,
    /// Service CIDRs when the cluster has no ServiceCIDR objects.
    default_cidrs: Vec<IpNet>,
    map_args: ServiceMapArgs,
    healthz_bind: Option<std::net::SocketAddr>,
    health: Box<health::HealthServers>,
    /// The healthCheckNodePorts, kept between syncs.
    health_claims: Box<health::Claims>,
    /// Ports whose answer changed since the servers were last updated.
    health_touched: std::collections::BTreeSet<u16>,
    conntrack: conntrack::Cleaner,
    metrics: Box<metrics::ProxyMetrics>,
    backend: Backend,
    /// The service map, kept between syncs.
    services: Box<services::Incremental>,
    /// Kept open for reading the node's addresses (`--nodeport-addresses` CIDRs).
    addresses_socket: Option<crate::routing::netlink::Netlink>,
    addresses_error: crate::runtime::ErrorOnce,
    /// The Services changed since the last successful sync: what conntrack and the
    /// metrics look at next (a failed sync's changes are not lost).
    unprogrammed: services::Changed,
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
        let nftables = || Backend::Nftables(Box::new(Nftables::new(crate::nft::Nft::default())));
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
            map_args: args.map.clone(),
            healthz_bind: args.healthz_bind_address.0,
            health: Box::default(),
            health_claims: Box::default(),
            health_touched: Default::default(),
            conntrack: conntrack::Cleaner::default(),
            metrics: Box::new(metrics::ProxyMetrics::register(metrics)),
            backend,
            services: Box::default(),
            addresses_socket: None,
            addresses_error: Default::default(),
            unprogrammed: services::Changed::none(),
        })
    }
}

/// Brings the backend to `map`, adding the compilers' problems to `bad_objects`;
/// `changed` is what changed since the last sync, `unprogrammed` since the last
/// successful one.
async fn program(
    backend: &mut Backend,
    conntrack: &mut conntrack::Cleaner,
    map: &model::ServiceMap,
    (changed, unprogrammed): (&services::Changed, &services::Changed),
    reason: SyncReason,
    bad_objects: &mut Vec<BadObject>,
) -> anyhow::Result<()> {
    match backend {
        Backend::Nftables(nftables) => {
            let (applied, problems) = nftables.sync(map, changed, reason).await?;
            bad_objects.extend(problems.into_iter().map(BadObject::from));
            let valid = affinity::valid_pairs(nftables.compiler.sink());
            let forgotten = nftables
                .janitor
                .sync(&crate::nft::Nft::default(), valid)
                .await?;
            if forgotten > 0 {
                tracing::debug!(forgotten, "affinity entries to removed endpoints deleted");
            }
            if applied != nftables::apply::Applied::Nothing {
                tracing::debug!(?applied, ports = map.ports.len(), "service proxy updated");
            }
        }
        Backend::Ipvs(reconciler) => {
            let (desired, problems) = ipvs::compile::compile(map);
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
    // Only once the new endpoints are in place: a flow that is cut now starts again
    // on them.
    let deleted = conntrack.sync(map, unprogrammed).await?;
    if deleted > 0 {
        tracing::debug!(
            deleted,
            "conntrack entries of removed UDP/SCTP endpoints deleted"
        );
    }
    Ok(())
}

impl ProxyController {
    /// Every address on this node's interfaces, over the kept-open socket.
    async fn local_addresses_now(&mut self) -> anyhow::Result<Vec<std::net::IpAddr>> {
        let netlink = match self.addresses_socket.take() {
            Some(netlink) => netlink,
            None => crate::routing::netlink::Netlink::connect()?,
        };
        // On error the socket is dropped here, and the next sync reconnects.
        let addresses = netlink.addresses().await?;
        self.addresses_socket = Some(netlink);
        Ok(addresses.into_iter().map(|a| a.address.addr()).collect())
    }

    /// How to read the snapshot; with `--nodeport-addresses` CIDRs, the addresses on
    /// this node's interfaces are read from the kernel every sync (a failure is
    /// warned about once per distinct error, and counted).
    async fn options(&mut self) -> services::Options {
        let mut local_addresses = Vec::new();
        if matches!(
            self.map_args.nodeport_addresses,
            NodePortAddresses::Cidrs(_)
        ) {
            match self.local_addresses_now().await {
                Ok(found) => {
                    local_addresses = found;
                    if self.addresses_error.clear() {
                        tracing::info!("reading the node's addresses works again");
                    }
                }
                Err(err) => {
                    self.metrics.node_address_read_failed();
                    self.addresses_error.report(&format!(
                        "reading the node's addresses for --nodeport-addresses: {err:#}"
                    ));
                }
            }
        }
        services::Options {
            node: self.node.clone(),
            default_service_cidrs: self.default_cidrs.clone(),
            nodeport_addresses: self.map_args.nodeport_addresses.clone(),
            masquerade_all: self.map_args.masquerade_all,
            local_addresses,
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

    /// Reads only what changed: the service map, the compiled table, conntrack,
    /// the health ports and the metrics each look at the changed Services alone.
    async fn sync(&mut self, snapshot: &Snapshot, reason: SyncReason) -> anyhow::Result<Synced> {
        self.health.start_proxy_healthz(self.healthz_bind);
        let options = self.options().await;
        let changed = self.services.update(snapshot, &options);
        self.unprogrammed.merge(changed.clone());
        let map = self.services.map();
        let mut bad_objects: Vec<BadObject> =
            map.errors.iter().cloned().map(BadObject::from).collect();
        self.health_touched
            .extend(self.health_claims.update(map, &changed));
        bad_objects.extend(
            self.health_claims
                .problems()
                .into_iter()
                .map(BadObject::from),
        );
        let started = std::time::Instant::now();
        let result = program(
            &mut self.backend,
            &mut self.conntrack,
            map,
            (&changed, &self.unprogrammed),
            reason,
            &mut bad_objects,
        )
        .await;
        self.metrics.sync_took(started.elapsed());
        self.health.synced(result.is_ok());
        result?;
        let unprogrammed = std::mem::replace(&mut self.unprogrammed, services::Changed::none());
        self.metrics
            .programmed(map, &unprogrammed, std::time::SystemTime::now());
        let touched = std::mem::take(&mut self.health_touched);
        self.health.update_services(&self.health_claims, &touched);
        let resync_after = match &mut self.backend {
            Backend::Nftables(nftables) => nftables.reconciler.inner().retiring_in(),
            Backend::Ipvs(_) => None,
        };
        Ok(Synced {
            bad_objects,
            resync_after,
        })
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

//! The routing controller's BGP mode: runs the native speaker (`super::bgp`) with
//! what the cluster says, on every routing sync.
//!
//! - `args`: the flags (kube-router's names) and their typed configuration.
//! - `annotations`: a Node's `kube-router.io/…` / `kubewire.io/…` BGP settings.
//! - `peers`: who this node's speaker talks to (pure).
//! - `announce`: what it announces (pure).
//! - `learned`: routes from neighbours into the kernel.
//! - `status`, `metrics`: `kubewire routing peers` and the per-peer metrics.

pub mod annotations;
pub mod announce;
pub mod args;
pub mod learned;
pub mod metrics;
pub mod peers;
pub mod status;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use tokio::task::JoinHandle;

pub use args::{BgpArgs, BgpConfig};

use crate::cache::Snapshot;
use crate::routing::bgp::policy::ImportPolicy;
use crate::routing::bgp::{PeerConfig, RouteAttrs, Speaker, SpeakerHandle};
use crate::routing::model::RoutingPlan;
use crate::routing::netlink::Netlink;
use crate::routing::nodes::NodeFacts;
use crate::telemetry::Metrics;
use annotations::NodeBgp;
use learned::SharedLearned;
use metrics::BgpMetrics;
use peers::{Identity, NodeView, SpeakerPlan};
use status::SharedStatus;

/// Everything the speaker should be doing, derived from one snapshot (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpPlan {
    pub speaker: SpeakerPlan,
    pub announce: BTreeMap<IpNet, RouteAttrs>,
    /// What each announced prefix is, for people.
    pub announce_why: BTreeMap<IpNet, String>,
}

/// The service VIP ranges: the ServiceCIDR objects, else the flag's.
fn service_cidrs(snapshot: &Snapshot, fallback: &[IpNet]) -> Vec<IpNet> {
    let from_objects: Vec<IpNet> = snapshot
        .service_cidrs
        .iter()
        .filter_map(|s| s.spec.as_ref()?.cidrs.clone())
        .flatten()
        .filter_map(|c| c.parse::<IpNet>().ok())
        .collect();
    if from_objects.is_empty() {
        fallback.to_vec()
    } else {
        from_objects
    }
}

/// This node's BGP plan for `snapshot`, given the routing plan compiled from it.
pub fn plan(
    config: &BgpConfig,
    snapshot: &Snapshot,
    routing: &RoutingPlan,
    fallback_service_cidrs: &[IpNet],
    problems: &mut Vec<String>,
) -> Result<BgpPlan, String> {
    let mut ignored = vec![];
    let nodes: Vec<NodeView> = snapshot
        .nodes
        .iter()
        .map(|n| {
            let facts = NodeFacts::read(n, &mut ignored);
            let underlay = if facts.name == routing.node {
                routing.node_ips.clone()
            } else {
                facts.underlay_ips(None)
            };
            NodeView {
                bgp: NodeBgp::read(n, problems),
                name: facts.name,
                underlay,
            }
        })
        .collect();
    let me = nodes
        .iter()
        .find(|n| n.name == routing.node)
        .ok_or_else(|| format!("Node {} is not in the cluster (yet)", routing.node))?;
    // Never learn the service ranges or this node's own pod CIDRs.
    let mut deny = service_cidrs(snapshot, fallback_service_cidrs);
    deny.extend(routing.pod_cidrs.iter().copied());
    let speaker = peers::plan(config, me, &nodes, deny)?;
    let announce_why = announce::announcements(
        &config.advertise,
        &routing.node,
        &routing.pod_cidrs,
        &snapshot.services,
        &snapshot.endpoint_slices,
        problems,
    );
    let attrs = RouteAttrs {
        communities: me.bgp.communities.clone(),
        ..RouteAttrs::default()
    };
    let announce = announce_why.keys().map(|p| (*p, attrs.clone())).collect();
    Ok(BgpPlan {
        speaker,
        announce,
        announce_why,
    })
}

struct Running {
    identity: Identity,
    handle: SpeakerHandle,
    installer: JoinHandle<()>,
    peers: Vec<PeerConfig>,
    import: ImportPolicy,
    announced: BTreeMap<IpNet, RouteAttrs>,
}

/// The speaker as the routing controller runs it.
pub struct BgpRouting {
    config: BgpConfig,
    running: Option<Running>,
    learned: SharedLearned,
    status: SharedStatus,
    metrics: BgpMetrics,
    background: Vec<JoinHandle<()>>,
    /// The kernel's routes from a previous run were taken over (once per process).
    took_over: bool,
}

impl BgpRouting {
    pub fn new(config: BgpConfig, metrics: &Metrics) -> Self {
        BgpRouting {
            config,
            running: None,
            learned: SharedLearned::default(),
            status: SharedStatus::default(),
            metrics: BgpMetrics::register(metrics),
            background: vec![],
            took_over: false,
        }
    }

    /// The table of learned routes the routing plan must include.
    pub fn learned(&self) -> &SharedLearned {
        &self.learned
    }

    /// Starts the status endpoint and the metrics poller (once, inside the runtime).
    fn start_background(&mut self) {
        if !self.background.is_empty() {
            return;
        }
        let (addr, source) = (self.config.status_addr, self.status.clone());
        self.background.push(tokio::spawn(async move {
            if let Err(e) = status::serve(addr, source).await {
                tracing::error!(error = %format!("{e:#}"), "the BGP status endpoint is not served; `kubewire routing peers` cannot reach this agent");
            }
        }));
        let (source, metrics) = (self.status.clone(), self.metrics.clone());
        self.background.push(tokio::spawn(async move {
            let mut last = BTreeMap::new();
            loop {
                let observer = source.lock().ok().and_then(|s| s.observer.clone());
                if let Some(observer) = observer {
                    metrics.observe(&observer.peers().await, &mut last);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }

    /// Brings the speaker in line with the cluster; returns the objects and fields
    /// it could not use.
    pub async fn sync(
        &mut self,
        snapshot: &Snapshot,
        routing: &RoutingPlan,
        fallback_service_cidrs: &[IpNet],
    ) -> anyhow::Result<Vec<String>> {
        self.start_background();
        let mut problems = vec![];
        let owned: Vec<IpNet> = routing
            .nftables
            .cluster_pod_cidrs
            .iter()
            .chain(&routing.pod_cidrs)
            .copied()
            .collect();
        self.learned.lock().await.set_owned(owned);
        let plan = match plan(
            &self.config,
            snapshot,
            routing,
            fallback_service_cidrs,
            &mut problems,
        ) {
            Ok(plan) => plan,
            Err(e) => anyhow::bail!("BGP: {e}"),
        };
        if self
            .running
            .as_ref()
            .is_some_and(|r| r.identity != plan.speaker.identity)
        {
            tracing::info!("the BGP speaker's identity changed: restarting it");
            self.stop().await;
        }
        let running = match &mut self.running {
            Some(running) => running,
            None => self.start(&plan.speaker, routing).await?,
        };
        if running.peers != plan.speaker.peers {
            running.handle.set_peers(plan.speaker.peers.clone());
            running.peers = plan.speaker.peers.clone();
        }
        if running.import != plan.speaker.import {
            running.handle.set_import(plan.speaker.import.clone());
            running.import = plan.speaker.import.clone();
        }
        for (prefix, attrs) in &plan.announce {
            if running.announced.get(prefix) != Some(attrs) {
                running.handle.announce(*prefix, None, attrs.clone());
            }
        }
        for prefix in running.announced.keys() {
            if !plan.announce.contains_key(prefix) {
                running.handle.withdraw(*prefix);
            }
        }
        running.announced = plan.announce.clone();
        self.metrics
            .announced
            .set(i64::try_from(plan.announce.len()).unwrap_or(i64::MAX));
        if let Ok(mut status) = self.status.lock() {
            status.kinds = plan.speaker.kinds.clone();
            status.announced = plan.announce_why.clone();
        }
        Ok(problems)
    }

    async fn start(
        &mut self,
        plan: &SpeakerPlan,
        routing: &RoutingPlan,
    ) -> anyhow::Result<&mut Running> {
        let handle = Speaker::start(plan.speaker_config())
            .await
            .context("starting the BGP speaker")?;
        tracing::info!(asn = plan.identity.asn, router_id = %plan.identity.router_id, peers = plan.peers.len(), "BGP speaker started");
        let netlink = Netlink::connect().context("opening a netlink socket for BGP routes")?;
        self.learned.lock().await.clear();
        if let Some(time) = self.config.graceful_restart
            && !std::mem::replace(&mut self.took_over, true)
        {
            self.take_over(&netlink, routing, time).await?;
        }
        let installer = tokio::spawn(learned::install(
            handle.subscribe(),
            self.learned.clone(),
            netlink,
            self.metrics.clone(),
        ));
        if let Ok(mut status) = self.status.lock() {
            status.observer = Some(handle.observer());
        }
        Ok(self.running.insert(Running {
            identity: plan.identity.clone(),
            handle,
            installer,
            peers: plan.peers.clone(),
            import: plan.import.clone(),
            announced: BTreeMap::new(),
        }))
    }

    /// Graceful restart, restarting side: the routes a previous run learned are
    /// still in the kernel (kill -9 leaves them); keep them forwarding until every
    /// neighbour has sent its routes again (End-of-RIB) or `time` is over, then
    /// delete those no neighbour sent.
    async fn take_over(
        &mut self,
        netlink: &Netlink,
        routing: &RoutingPlan,
        time: Duration,
    ) -> anyhow::Result<()> {
        let compiled: std::collections::BTreeSet<IpNet> =
            routing.routes.iter().map(|r| r.destination).collect();
        let kept: Vec<(IpNet, std::net::IpAddr)> = netlink
            .routes(crate::routing::model::ROUTE_PROTOCOL)
            .await
            .context("listing routes a previous run installed")?
            .into_iter()
            .filter(|r| !compiled.contains(&r.destination) && !r.onlink)
            .filter_map(|r| Some((r.destination, r.gateway?)))
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        tracing::info!(
            routes = kept.len(),
            ?time,
            "graceful restart: keeping the BGP routes of the previous run until the peers resend them"
        );
        self.learned.lock().await.keep_stale(kept);
        let (table, metrics) = (self.learned.clone(), self.metrics.clone());
        let netlink = Netlink::connect().context("opening a netlink socket for BGP routes")?;
        let status = self.status.clone();
        self.background.push(tokio::spawn(async move {
            // Until every peer has resent its routes (End-of-RIB), or the time is up.
            let deadline = tokio::time::Instant::now() + time;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let observer = status.lock().ok().and_then(|s| s.observer.clone());
                let Some(observer) = observer else { continue };
                let peers = observer.peers().await;
                if !peers.is_empty() && peers.iter().all(|p| p.initial_routes_done) {
                    break;
                }
            }
            let mut table = table.lock().await;
            let gone = table.take_stale();
            if gone.is_empty() {
                return;
            }
            tracing::info!(
                routes = gone.len(),
                "graceful restart over: removing BGP routes no peer sent again"
            );
            let Ok(routes) = netlink.routes(crate::routing::model::ROUTE_PROTOCOL).await else {
                metrics.install_errors.inc();
                return;
            };
            let delete: Vec<_> = routes
                .into_iter()
                .filter(|r| gone.contains(&r.destination))
                .collect();
            for result in netlink.delete_routes(&delete).await {
                if result.is_err() {
                    metrics.install_errors.inc();
                }
            }
        }));
        Ok(())
    }

    /// Sends Cease to every peer and stops the speaker.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.handle.shutdown().await;
            running.installer.abort();
            self.learned.lock().await.clear();
        }
        if let Ok(mut status) = self.status.lock() {
            status.observer = None;
        }
    }
}

impl Drop for BgpRouting {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

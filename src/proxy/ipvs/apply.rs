//! Keeps the kernel equal to the compiled [`Desired`] state: our IPVS services and
//! destinations, the VIPs on the dummy interface, and the glue table (through the
//! nftables backend's own reconciler). Only differences are applied; nothing is
//! ever flushed, so services someone else made stay.
//!
//! What the kernel holds is read in full (one dump of services and destinations, one
//! of addresses) on the first sync, after a failure and on every periodic sync,
//! which so repairs drift; other syncs diff against what was last applied, kept in
//! memory, and read back only the destinations of services losing endpoints (their
//! connection counts decide when they go). IPVS calls block: they run on
//! tokio's blocking pool, one batch per sync.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use super::compile::{DUMMY_INTERFACE, Desired, is_ours};
use super::diff::{self, Action, Draining, KernelDestination, KernelState};
use super::metrics::IpvsMetrics;
use crate::ipvs::{Ipvs, IpvsError, ServiceKey, Stats};
use crate::proxy::nftables;
use crate::routing::netlink::Netlink;
use crate::runtime::SyncReason;

/// `net.ipv4.vs.conntrack`: IPVS keeps conntrack entries for the connections it
/// forwards, which the glue's masquerade needs (kube-proxy sets it too).
const CONNTRACK_SYSCTL: &str = "/proc/sys/net/ipv4/vs/conntrack";

/// What one sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub ipvs_changes: usize,
    pub glue: Option<nftables::apply::Applied>,
    /// The periodic dump found the kernel different from what was applied.
    pub drift_repaired: bool,
}

pub struct Reconciler {
    ipvs: Arc<Mutex<Ipvs>>,
    netlink: Option<Netlink>,
    glue: nftables::apply::Reconciler,
    /// What the kernel holds of ours, as far as we know; `None` forces a dump.
    known: Option<KernelState>,
    draining: Draining,
    grace: Duration,
    /// The dummy interface's index at the last sync: a new one (someone deleted
    /// the interface, which we recreate) means its addresses are gone too.
    dummy_index: Option<u32>,
    metrics: IpvsMetrics,
}

impl Reconciler {
    pub fn new(ipvs: Ipvs, grace: Duration, metrics: IpvsMetrics) -> Self {
        Self {
            ipvs: Arc::new(Mutex::new(ipvs)),
            netlink: None,
            glue: nftables::apply::Reconciler::new(crate::nft::Nft::default()),
            known: None,
            draining: Draining::new(),
            grace,
            dummy_index: None,
            metrics,
        }
    }

    /// Brings the kernel to `desired`. On error the next sync reads the kernel anew.
    pub async fn sync(&mut self, desired: Desired, reason: SyncReason) -> anyhow::Result<Applied> {
        let mut applied = Applied {
            glue: Some(self.glue.sync(desired.glue.clone(), reason).await?),
            ..Applied::default()
        };
        enable_conntrack()?;
        let result = self.sync_ipvs(&desired, reason, &mut applied).await;
        if result.is_err() {
            self.known = None;
        }
        result.map(|()| applied)
    }

    async fn sync_ipvs(
        &mut self,
        desired: &Desired,
        reason: SyncReason,
        applied: &mut Applied,
    ) -> anyhow::Result<()> {
        let dummy = self.dummy_interface().await?;
        if self.dummy_index.replace(dummy) != Some(dummy) {
            self.known = None;
        }
        let mut kernel = match self.known.take() {
            Some(known) if reason != SyncReason::Periodic => {
                self.refresh_leaving(known, desired).await?
            }
            known => {
                let (dumped, stats) = self.dump(dummy).await?;
                self.metrics.observe_stats(&stats, desired);
                if let Some(known) = known {
                    applied.drift_repaired = known.configuration() != dumped.configuration();
                    if applied.drift_repaired {
                        self.metrics.drift_repairs.inc();
                        tracing::warn!(
                            "IPVS services or {DUMMY_INTERFACE} addresses were changed by someone else; repairing"
                        );
                    }
                }
                dumped
            }
        };
        let actions = diff::plan(
            desired,
            &kernel,
            &mut self.draining,
            Instant::now(),
            self.grace,
        );
        applied.ipvs_changes = actions.len();
        self.metrics.changes.inc_by(actions.len() as u64);
        let (ipvs_actions, vip_actions): (Vec<Action>, Vec<Action>) = actions
            .into_iter()
            .partition(|a| !matches!(a, Action::AddVip(_) | Action::DeleteVip(_)));
        // Services and destinations first (additions), VIPs, then the deletions of
        // services: a VIP is only ever local while IPVS serves it.
        let (deletions, changes): (Vec<Action>, Vec<Action>) = ipvs_actions
            .into_iter()
            .partition(|a| matches!(a, Action::DeleteService(_)));
        self.run_ipvs(changes, &mut kernel).await?;
        let netlink = self.netlink()?;
        for action in vip_actions {
            let (Action::AddVip(ip) | Action::DeleteVip(ip)) = action else {
                continue;
            };
            let net = host_net(ip);
            let result = if matches!(action, Action::AddVip(_)) {
                netlink.add_address(dummy, net).await
            } else {
                netlink.delete_address(dummy, net).await
            };
            result.map_err(|e| anyhow::anyhow!("{action:?} on {DUMMY_INTERFACE}: {e}"))?;
            kernel.record(&action);
        }
        self.run_ipvs(deletions, &mut kernel).await?;
        self.metrics.services.set(kernel.services.len() as i64);
        self.metrics.destinations.set(
            kernel
                .services
                .values()
                .map(|s| s.destinations.len() as i64)
                .sum(),
        );
        self.known = Some(kernel);
        Ok(())
    }

    fn netlink(&mut self) -> anyhow::Result<&Netlink> {
        if self.netlink.is_none() {
            self.netlink = Some(Netlink::connect()?);
        }
        self.netlink
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no rtnetlink socket"))
    }

    /// The dummy interface's index, creating it when missing.
    async fn dummy_interface(&mut self) -> anyhow::Result<u32> {
        let netlink = self.netlink()?;
        if let Some(link) = netlink.link(DUMMY_INTERFACE).await? {
            return Ok(link.index);
        }
        let index = netlink
            .add_dummy(DUMMY_INTERFACE)
            .await
            .map_err(|e| anyhow::anyhow!("creating dummy interface {DUMMY_INTERFACE}: {e}"))?;
        tracing::info!("created dummy interface {DUMMY_INTERFACE} for service VIPs");
        Ok(index)
    }

    /// Our services and destinations, the dummy interface's addresses, and the
    /// kernel's counters of our services.
    async fn dump(
        &mut self,
        dummy: u32,
    ) -> anyhow::Result<(KernelState, Vec<(ServiceKey, Stats)>)> {
        let ipvs = self.ipvs.clone();
        let services = blocking(move || lock(&ipvs)?.services()).await?;
        let vips: BTreeSet<IpAddr> = self
            .netlink()?
            .addresses()
            .await?
            .into_iter()
            .filter(|a| a.index == dummy)
            .map(|a| a.address.addr())
            .collect();
        let stats = services
            .iter()
            .filter(|s| is_ours(&s.service))
            .map(|s| (s.service.key, s.stats))
            .collect();
        Ok((KernelState::from_dump(services, vips), stats))
    }

    /// Reads the destinations (with their connection counts) of every service that
    /// has one no longer wanted: draining, or about to, which its count decides.
    async fn refresh_leaving(
        &mut self,
        mut known: KernelState,
        desired: &Desired,
    ) -> anyhow::Result<KernelState> {
        let keys: BTreeSet<ServiceKey> = known
            .services
            .iter()
            .filter(|(key, service)| {
                desired.services.get(key).is_some_and(|wanted| {
                    service
                        .destinations
                        .keys()
                        .any(|a| !wanted.destinations.contains_key(a))
                })
            })
            .map(|(key, _)| *key)
            .collect();
        if keys.is_empty() {
            return Ok(known);
        }
        let ipvs = self.ipvs.clone();
        let read = blocking(move || {
            let mut ipvs = lock(&ipvs)?;
            keys.into_iter()
                .map(|key| Ok((key, ipvs.destinations(&key)?)))
                .collect::<Result<Vec<_>, IpvsError>>()
        })
        .await?;
        for (key, destinations) in read {
            let Some(service) = known.services.get_mut(&key) else {
                continue;
            };
            for status in destinations {
                let d = status.destination;
                let address = std::net::SocketAddr::new(d.address, d.port);
                service.destinations.insert(
                    address,
                    KernelDestination {
                        destination: d,
                        active_connections: status.active_connections,
                    },
                );
            }
        }
        Ok(known)
    }

    /// Runs IPVS changes in order on the blocking pool, recording each one done.
    async fn run_ipvs(&self, actions: Vec<Action>, kernel: &mut KernelState) -> anyhow::Result<()> {
        if actions.is_empty() {
            return Ok(());
        }
        let ipvs = self.ipvs.clone();
        let (done, error) = tokio::task::spawn_blocking(move || {
            let mut done = Vec::new();
            let mut guard = match lock(&ipvs) {
                Ok(guard) => guard,
                Err(e) => return (done, Some(e)),
            };
            for action in actions {
                if let Err(e) = run(&mut guard, &action) {
                    return (done, Some(e));
                }
                done.push(action);
            }
            (done, None)
        })
        .await?;
        done.iter().for_each(|a| kernel.record(a));
        match error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

fn run(ipvs: &mut Ipvs, action: &Action) -> Result<(), IpvsError> {
    match action {
        Action::AddService(service) => ipvs.add_service(service),
        Action::EditService(service) => ipvs.edit_service(service),
        Action::DeleteService(key) => ipvs.delete_service(key),
        Action::AddDestination(key, d) => ipvs.add_destination(key, d),
        Action::EditDestination(key, d) => ipvs.edit_destination(key, d),
        Action::DeleteDestination(key, a) => ipvs.delete_destination(key, a.ip(), a.port()),
        Action::AddVip(_) | Action::DeleteVip(_) => Ok(()),
    }
}

fn lock(ipvs: &Mutex<Ipvs>) -> Result<std::sync::MutexGuard<'_, Ipvs>, IpvsError> {
    ipvs.lock().map_err(|_| IpvsError::Io {
        action: "using the IPVS socket".into(),
        source: std::io::Error::other("a previous IPVS call panicked"),
    })
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, IpvsError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(call).await??)
}

/// A VIP as an interface address: the address alone (/32, /128), so that no
/// prefix route claims the rest of the service CIDR.
fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn enable_conntrack() -> anyhow::Result<()> {
    let current = std::fs::read_to_string(CONNTRACK_SYSCTL);
    if current.is_ok_and(|c| c.trim() == "1") {
        return Ok(());
    }
    std::fs::write(CONNTRACK_SYSCTL, "1")
        .map_err(|e| anyhow::anyhow!("sysctl net.ipv4.vs.conntrack = 1: {e}"))
}

/// `kubewire cleanup`: deletes our IPVS services (those kubewire marked, and no
/// other) and the dummy interface with its addresses. Returns how many services.
pub async fn cleanup() -> anyhow::Result<usize> {
    let deleted = match Ipvs::new() {
        Err(IpvsError::Unavailable) => 0,
        Err(e) => return Err(e.into()),
        Ok(mut ipvs) => {
            blocking(move || {
                let ours: Vec<ServiceKey> = ipvs
                    .services()?
                    .into_iter()
                    .filter(|s| is_ours(&s.service))
                    .map(|s| s.service.key)
                    .collect();
                for key in &ours {
                    ipvs.delete_service(key)?;
                }
                Ok(ours.len())
            })
            .await?
        }
    };
    let netlink = Netlink::connect()?;
    if let Some(link) = netlink.link(DUMMY_INTERFACE).await? {
        netlink
            .delete_link(link.index)
            .await
            .map_err(|e| anyhow::anyhow!("deleting {DUMMY_INTERFACE}: {e}"))?;
        tracing::info!("deleted dummy interface {DUMMY_INTERFACE}");
    }
    Ok(deleted)
}

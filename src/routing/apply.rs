//! Makes this node's kernel match a [`RoutingPlan`], changing only what differs and
//! only what this controller owns. Every sync reads the kernel back (our routes by
//! `proto`, our devices, their FDB and neighbour entries), so anything deleted by hand
//! is re-installed on the next sync, whatever triggered it. Each change is atomic on
//! its own (a netlink replace, one nftables transaction); a failed change is reported
//! in the sync's error and retried by the agent loop while the rest still applies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::Context;
use ipnet::IpNet;
use netlink_packet_route::link::InfoKind;

use super::compile::{self, CompileOptions, HostFacts};
use super::diff;
use super::metrics::RoutingMetrics;
use super::model::*;
use super::netlink::{Link, Netlink, NetlinkError, RouteSpec};
use super::ruleset;
use crate::cache::Snapshot;
use crate::nft::{self, Nft};
use crate::runtime::SyncReason;

/// What one sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub routes_replaced: usize,
    pub routes_deleted: usize,
    pub neighbours_changed: usize,
    pub fdb_changed: usize,
    pub links_changed: usize,
    pub addresses_changed: usize,
    pub sysctls_changed: usize,
    pub nftables_applied: bool,
}

impl SyncReport {
    pub fn changed_anything(&self) -> bool {
        *self != SyncReport::default()
    }
}

/// The routing controller's hold on the kernel: one netlink socket, and the shared
/// nftables reconciler for its table.
pub struct Reconciler {
    netlink: Netlink,
    metrics: RoutingMetrics,
    /// Boxed: the agent keeps controllers in one enum.
    nft: Box<nft::Reconciler<nft::Kernel>>,
    /// Optional sysctls whose failed write was logged (once each: it fails again on
    /// every sync, and the metric counts those).
    logged_sysctls: BTreeSet<String>,
}

/// Failed changes of one sync, each counted in the metrics.
struct Failures<'a> {
    metrics: &'a RoutingMetrics,
    messages: Vec<String>,
    /// Optional sysctls that could not be written, with the error: not failures.
    skipped_sysctls: Vec<(String, String)>,
}

impl Failures<'_> {
    fn add(&mut self, object: &str, message: String) {
        self.metrics.error(object);
        self.messages.push(message);
    }

    fn skip_sysctl(&mut self, sysctl: &Sysctl, error: String) {
        self.metrics
            .sysctl_failures
            .get_or_create(&super::metrics::SysctlLabel {
                sysctl: sysctl.key.clone(),
            })
            .inc();
        self.skipped_sysctls.push((sysctl.key.clone(), error));
    }
}

impl Reconciler {
    /// Connects to the kernel of the calling thread's network namespace (on a tokio
    /// runtime).
    pub fn connect(metrics: RoutingMetrics) -> std::io::Result<Reconciler> {
        Ok(Reconciler {
            netlink: Netlink::connect()?,
            metrics,
            nft: Box::new(nft::Reconciler::new(
                nft::Kernel::new(Nft::default()),
                ruleset::table_id(),
            )),
            logged_sysctls: BTreeSet::new(),
        })
    }

    /// The socket, for [`cleanup`].
    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// The subnets and MTU of the interfaces holding `node_ips`.
    pub async fn host_facts(&self, node_ips: &[IpAddr]) -> anyhow::Result<HostFacts> {
        let addresses = self
            .netlink
            .addresses()
            .await
            .context("listing addresses")?;
        let links = self.netlink.links().await.context("listing links")?;
        let mut facts = HostFacts::default();
        for (position, ip) in node_ips.iter().enumerate() {
            let Some(address) = addresses.iter().find(|a| a.address.addr() == *ip) else {
                continue;
            };
            facts.local_subnets.push(address.address.trunc());
            if position == 0 {
                facts.underlay_mtu = links
                    .iter()
                    .find(|l| l.index == address.index)
                    .and_then(|l| l.mtu);
            }
        }
        Ok(facts)
    }

    /// Compiles `node`'s plan from `snapshot` against this kernel and applies it;
    /// returns what changed and the parts of the cluster state the plan left out.
    pub async fn sync(
        &mut self,
        snapshot: &Snapshot,
        node: &str,
        options: &CompileOptions,
        reason: SyncReason,
    ) -> anyhow::Result<(SyncReport, Vec<String>)> {
        let node_ips = compile::node_ips(snapshot, node, &options.network)?;
        let host = self.host_facts(&node_ips).await?;
        if host.local_subnets.is_empty() {
            tracing::warn!(node, addresses = ?node_ips, "none of the node's addresses is on an interface: every peer counts as another subnet");
        }
        let plan = compile::compile(snapshot, node, options, &host)?;
        let report = self.apply(&plan, reason).await?;
        Ok((report, plan.problems))
    }

    /// Makes the kernel match `plan`.
    pub async fn apply(
        &mut self,
        plan: &RoutingPlan,
        reason: SyncReason,
    ) -> anyhow::Result<SyncReport> {
        let mut report = SyncReport::default();
        let metrics = self.metrics.clone();
        let mut failures = Failures {
            metrics: &metrics,
            messages: Vec::new(),
            skipped_sysctls: Vec::new(),
        };
        let links = self.apply_links(plan, &mut report, &mut failures).await?;
        // After the links: some sysctls are the bridge's.
        write_sysctls(&plan.sysctls, &mut report.sysctls_changed, &mut failures);
        self.apply_addresses(plan, &links, &mut report, &mut failures)
            .await?;
        let vxlan_index = match &plan.tunnel {
            Some(Tunnel::Vxlan(device)) => links.get(&device.name).map(|l| l.index),
            _ => None,
        };
        let neighbour_changes = match vxlan_index {
            Some(index) => Some(
                self.add_vxlan_entries(plan, index, &mut report, &mut failures)
                    .await?,
            ),
            None => None,
        };
        self.apply_routes(plan, &links, &mut report, &mut failures)
            .await?;
        if let (Some(index), Some((neighbours, fdb))) = (vxlan_index, neighbour_changes) {
            self.delete_vxlan_entries(index, neighbours, fdb, &mut report, &mut failures)
                .await;
        }
        self.apply_nftables(plan, reason, &mut report, &mut failures)
            .await;
        for (key, error) in &failures.skipped_sysctls {
            if self.logged_sysctls.insert(key.clone()) {
                tracing::warn!(sysctl = %key, %error, "an optional sysctl cannot be written; going on without it (counted in kubewire_routing_sysctl_failures_total)");
            }
        }
        if failures.messages.is_empty() {
            Ok(report)
        } else {
            anyhow::bail!(
                "{} change(s) failed: {}",
                failures.messages.len(),
                failures.messages.join("; ")
            )
        }
    }

    /// The bridge and the tunnel devices; returns every link by name afterwards.
    async fn apply_links(
        &self,
        plan: &RoutingPlan,
        report: &mut SyncReport,
        failures: &mut Failures<'_>,
    ) -> anyhow::Result<BTreeMap<String, Link>> {
        let links = by_name(self.netlink.links().await.context("listing links")?);
        let before = report.links_changed;
        let bridge = &plan.bridge;
        // Any link of the bridge's name is used as it is (the CNI bridge plugin may
        // have created it).
        let result = self
            .ensure_link(
                links.get(&bridge.name),
                |_| true,
                bridge.mtu,
                None,
                self.add_bridge(plan, failures),
            )
            .await;
        count(result, report, failures, "link", || {
            format!("bridge {}", bridge.name)
        });

        let wanted: Vec<&str> = plan
            .tunnel
            .as_ref()
            .map(Tunnel::device_names)
            .unwrap_or_default();
        for name in TUNNEL_DEVICES.iter().filter(|n| !wanted.contains(n)) {
            if let Some(link) = links.get(*name) {
                let result = self.netlink.delete_link(link.index).await.map(|()| true);
                count(result, report, failures, "link", || {
                    format!("deleting {name}")
                });
            }
        }
        match &plan.tunnel {
            Some(Tunnel::Vxlan(device)) => {
                let result = self
                    .ensure_link(
                        links.get(&device.name),
                        |link| is_vxlan_device(link, device),
                        device.mtu,
                        Some(device.mac),
                        self.netlink.add_vxlan(device),
                    )
                    .await;
                count(result, report, failures, "link", || {
                    format!("vxlan device {}", device.name)
                });
            }
            Some(Tunnel::Ipip(ipip)) => {
                for device in &ipip.devices {
                    let result = self
                        .ensure_link(
                            links.get(&device.name),
                            |link| is_ip_tunnel_device(link, device),
                            device.mtu,
                            None,
                            self.netlink.add_ip_tunnel(device),
                        )
                        .await;
                    count(result, report, failures, "link", || {
                        format!("tunnel device {} ({})", device.name, tunnel_hint(device))
                    });
                }
            }
            None => {}
        }
        if report.links_changed == before {
            return Ok(links);
        }
        Ok(by_name(
            self.netlink.links().await.context("listing links")?,
        ))
    }

    /// Creates the bridge and sets its own sysctls before it comes up (IPv6 DAD
    /// starts at link up and does not look at `accept_dad` again).
    async fn add_bridge(
        &self,
        plan: &RoutingPlan,
        failures: &mut Failures<'_>,
    ) -> Result<(), NetlinkError> {
        let bridge = &plan.bridge;
        let index = self.netlink.add_bridge(&bridge.name, BRIDGE_ALIAS).await?;
        let device = format!(".{}.", bridge.name);
        let own: Vec<Sysctl> = plan
            .sysctls
            .iter()
            .filter(|s| s.key.contains(&device))
            .cloned()
            .collect();
        write_sysctls(&own, &mut 0, failures);
        self.netlink.set_link(index, bridge.mtu, None).await
    }

    /// Brings one of our devices to what the plan wants: a link of its name that
    /// `is_wanted` accepts is kept, and only brought up and given `mtu` (and `mac`)
    /// where they differ; any other link of its name is deleted and `add` creates the
    /// device anew. `Ok(true)` when anything changed.
    async fn ensure_link(
        &self,
        existing: Option<&Link>,
        is_wanted: impl FnOnce(&Link) -> bool,
        mtu: Option<u32>,
        mac: Option<Mac>,
        add: impl Future<Output = Result<(), NetlinkError>>,
    ) -> Result<bool, NetlinkError> {
        if let Some(link) = existing {
            if is_wanted(link) {
                let stale = !link.up
                    || (mtu.is_some() && link.mtu != mtu)
                    || (mac.is_some() && link.mac != mac);
                if stale {
                    self.netlink.set_link(link.index, mtu, mac).await?;
                }
                return Ok(stale);
            }
            self.netlink.delete_link(link.index).await?;
        }
        add.await?;
        Ok(true)
    }

    /// Gateway addresses on the bridge, VTEP addresses on the VXLAN device.
    async fn apply_addresses(
        &self,
        plan: &RoutingPlan,
        links: &BTreeMap<String, Link>,
        report: &mut SyncReport,
        failures: &mut Failures<'_>,
    ) -> anyhow::Result<()> {
        let mut wanted: Vec<(&str, &[IpNet])> = vec![(&plan.bridge.name, &plan.bridge.addresses)];
        if let Some(Tunnel::Vxlan(device)) = &plan.tunnel {
            wanted.push((&device.name, &device.addresses));
        }
        let actual = self
            .netlink
            .addresses()
            .await
            .context("listing addresses")?;
        for (name, addresses) in wanted {
            let Some(link) = links.get(name) else {
                continue;
            };
            let changes = diff::addresses(link.index, addresses, &actual);
            for address in changes.add {
                let result = self.netlink.add_address(link.index, address).await;
                count_as(
                    result,
                    &mut report.addresses_changed,
                    failures,
                    "address",
                    || format!("adding {address} to {name}"),
                );
            }
            for address in changes.delete {
                let result = self.netlink.delete_address(link.index, address).await;
                count_as(
                    result,
                    &mut report.addresses_changed,
                    failures,
                    "address",
                    || format!("deleting {address} from {name}"),
                );
            }
        }
        Ok(())
    }

    /// Adds missing FDB and neighbour entries; returns the stale ones to delete once
    /// the routes no longer use them.
    async fn add_vxlan_entries(
        &self,
        plan: &RoutingPlan,
        index: u32,
        report: &mut SyncReport,
        failures: &mut Failures<'_>,
    ) -> anyhow::Result<(diff::NeighbourChanges, diff::FdbChanges)> {
        let wanted_fdb: Vec<(Mac, IpAddr)> = plan
            .vxlan_peers
            .iter()
            .map(|p| (p.mac, p.underlay))
            .collect();
        let wanted_neighbours: Vec<(IpAddr, Mac)> = plan
            .vxlan_peers
            .iter()
            .flat_map(|p| p.vtep_addresses.iter().map(|a| (*a, p.mac)))
            .collect();
        let fdb = diff::fdb(
            &wanted_fdb,
            &self.netlink.fdb(index).await.context("listing the FDB")?,
        );
        let neighbours = diff::neighbours(
            &wanted_neighbours,
            &self
                .netlink
                .neighbours(index)
                .await
                .context("listing neighbours")?,
        );
        let results = self.netlink.replace_fdb(index, &fdb.replace).await;
        for ((mac, dst), result) in fdb.replace.iter().zip(results) {
            count_as(result, &mut report.fdb_changed, failures, "fdb", || {
                format!("fdb {mac} dst {dst}")
            });
        }
        let results = self
            .netlink
            .replace_neighbours(index, &neighbours.replace)
            .await;
        for ((address, mac), result) in neighbours.replace.iter().zip(results) {
            count_as(
                result,
                &mut report.neighbours_changed,
                failures,
                "neighbour",
                || format!("neighbour {address} lladdr {mac}"),
            );
        }
        Ok((neighbours, fdb))
    }

    async fn delete_vxlan_entries(
        &self,
        index: u32,
        neighbours: diff::NeighbourChanges,
        fdb: diff::FdbChanges,
        report: &mut SyncReport,
        failures: &mut Failures<'_>,
    ) {
        let results = self
            .netlink
            .delete_neighbours(index, &neighbours.delete)
            .await;
        for (address, result) in neighbours.delete.iter().zip(results) {
            count_as(
                result,
                &mut report.neighbours_changed,
                failures,
                "neighbour",
                || format!("deleting neighbour {address}"),
            );
        }
        let results = self.netlink.delete_fdb(&fdb.delete).await;
        for (entry, result) in fdb.delete.iter().zip(results) {
            count_as(result, &mut report.fdb_changed, failures, "fdb", || {
                format!("deleting fdb {}", entry.mac)
            });
        }
    }

    async fn apply_routes(
        &self,
        plan: &RoutingPlan,
        links: &BTreeMap<String, Link>,
        report: &mut SyncReport,
        failures: &mut Failures<'_>,
    ) -> anyhow::Result<()> {
        let mut desired = Vec::with_capacity(plan.routes.len());
        let mut sources = Vec::with_capacity(plan.routes.len());
        for route in &plan.routes {
            let oif = match &route.device {
                Some(name) => match links.get(name) {
                    Some(link) => Some(link.index),
                    None => {
                        failures.add(
                            "route",
                            format!("route {route} ({}): device {name} is missing", route.source),
                        );
                        continue;
                    }
                },
                None => None,
            };
            desired.push(RouteSpec {
                destination: route.destination,
                gateway: route.gateway,
                oif,
                onlink: route.onlink(),
            });
            sources.push(route);
        }
        let actual = self
            .netlink
            .routes(ROUTE_PROTOCOL)
            .await
            .context("listing routes")?;
        let changes = diff::routes(&desired, &actual);
        let mut failed = 0;
        let results = self.netlink.replace_routes(&changes.replace).await;
        for (spec, result) in changes.replace.iter().zip(results) {
            match result {
                Ok(()) => {
                    report.routes_replaced += 1;
                    self.metrics.routes_installed.inc();
                }
                Err(err) => {
                    failed += 1;
                    let route = sources
                        .iter()
                        .find(|r| r.destination == spec.destination)
                        .map(|r| format!("{r} ({})", r.source))
                        .unwrap_or_else(|| spec.destination.to_string());
                    failures.add("route", format!("route {route}: {err}"));
                }
            }
        }
        let results = self.netlink.delete_routes(&changes.delete).await;
        for (route, result) in changes.delete.iter().zip(results) {
            match result {
                Ok(()) => {
                    report.routes_deleted += 1;
                    self.metrics.routes_removed.inc();
                }
                // Gone already (e.g. with its device).
                Err(err) if err.errno() == Some(libc::ESRCH) => {}
                Err(err) => failures.add(
                    "route",
                    format!("deleting route {}: {err}", route.destination),
                ),
            }
        }
        self.metrics
            .routes
            .set(i64::try_from(desired.len() - failed).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Applies the difference between the nftables table and the plan's; the periodic
    /// sync also repairs what someone else changed (see [`nft::Reconciler`]).
    async fn apply_nftables(
        &mut self,
        plan: &RoutingPlan,
        reason: SyncReason,
        report: &mut SyncReport,
        failures: &mut Failures<'_>,
    ) {
        let table = ruleset::table(&plan.nftables);
        match self.nft.sync(&table, reason == SyncReason::Periodic).await {
            Ok(nft::Applied::Nothing) => {}
            Ok(nft::Applied::Applied(_)) => report.nftables_applied = true,
            Err(err) => failures.add("nftables", format!("table inet {NFT_TABLE}: {err}")),
        }
    }
}

/// Writes each sysctl that differs. A value already right is never written, so a
/// read-only /proc/sys (a container's) only matters for values still wrong: a required
/// one fails the sync, an optional one is counted and skipped.
fn write_sysctls(sysctls: &[Sysctl], changed: &mut usize, failures: &mut Failures<'_>) {
    for sysctl in sysctls {
        let path = sysctl.path();
        let current = std::fs::read_to_string(&path);
        if current.is_ok_and(|c| c.trim() == sysctl.value) {
            continue;
        }
        match std::fs::write(&path, &sysctl.value) {
            Ok(()) => *changed += 1,
            Err(err) if sysctl.optional => failures.skip_sysctl(sysctl, err.to_string()),
            Err(err) => failures.add(
                "sysctl",
                format!("sysctl {} = {}: {err}", sysctl.key, sysctl.value),
            ),
        }
    }
}

fn by_name(links: Vec<Link>) -> BTreeMap<String, Link> {
    links.into_iter().map(|l| (l.name.clone(), l)).collect()
}

/// Whether `link` is the VXLAN device `device` (else it is recreated): the settings
/// fixed at creation match.
fn is_vxlan_device(link: &Link, device: &VxlanDevice) -> bool {
    let vxlan = link.vxlan.clone().unwrap_or_default();
    link.kind == Some(InfoKind::Vxlan)
        && vxlan.vni == Some(device.vni)
        && vxlan.local == Some(device.local)
        && vxlan.port == Some(device.port)
        && vxlan.learning == Some(false)
}

/// Whether `link` is the NBMA tunnel `device` (else it is recreated): its kind, its
/// local endpoint and no fixed remote.
fn is_ip_tunnel_device(link: &Link, device: &IpipDevice) -> bool {
    let kind = if device.local.is_ipv4() {
        InfoKind::IpIp
    } else {
        InfoKind::Ip6Tnl
    };
    let (local, remote) = link.tunnel_endpoints.unwrap_or((None, None));
    link.kind == Some(kind)
        && local == Some(device.local)
        && remote.is_none_or(|r| r.is_unspecified())
}

fn tunnel_hint(device: &IpipDevice) -> &'static str {
    if device.local.is_ipv4() {
        "ipip; needs the ipip module"
    } else {
        "ip6tnl ip6ip6; needs the ip6_tunnel module"
    }
}

/// Counts a link change (Ok(true)) or records the failure.
fn count(
    result: Result<bool, NetlinkError>,
    report: &mut SyncReport,
    failures: &mut Failures<'_>,
    object: &str,
    what: impl FnOnce() -> String,
) {
    if !matches!(result, Ok(false)) {
        count_as(
            result.map(drop),
            &mut report.links_changed,
            failures,
            object,
            what,
        );
    }
}

/// Counts a change made in `counter`, or records why it failed.
fn count_as(
    result: Result<(), NetlinkError>,
    counter: &mut usize,
    failures: &mut Failures<'_>,
    object: &str,
    what: impl FnOnce() -> String,
) {
    match result {
        Ok(()) => *counter += 1,
        Err(err) => failures.add(object, format!("{}: {err}", what())),
    }
}

/// Removes everything this controller creates: routes with our `proto`, the tunnel
/// devices, the nftables table, and the bridge if we created it (else only our
/// addresses on it: the CNI bridge plugin owns it and its pods).
pub async fn cleanup(netlink: &Netlink) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    let routes = netlink
        .routes(ROUTE_PROTOCOL)
        .await
        .context("listing routes")?;
    for (route, result) in routes.iter().zip(netlink.delete_routes(&routes).await) {
        match result {
            Ok(()) => {}
            Err(err) if err.errno() == Some(libc::ESRCH) => {}
            Err(err) => failures.push(format!("route {}: {err}", route.destination)),
        }
    }
    let links = by_name(netlink.links().await.context("listing links")?);
    for name in TUNNEL_DEVICES {
        if let Some(link) = links.get(name)
            && let Err(err) = netlink.delete_link(link.index).await
        {
            failures.push(format!("deleting {name}: {err}"));
        }
    }
    if let Some(bridge) = links.get(BRIDGE) {
        if bridge.alias.as_deref() == Some(BRIDGE_ALIAS) {
            if let Err(err) = netlink.delete_link(bridge.index).await {
                failures.push(format!("deleting {BRIDGE}: {err}"));
            }
        } else {
            let addresses = netlink.addresses().await.context("listing addresses")?;
            for address in diff::addresses(bridge.index, &[], &addresses).delete {
                if let Err(err) = netlink.delete_address(bridge.index, address).await {
                    failures.push(format!("deleting {address} from {BRIDGE}: {err}"));
                }
            }
        }
    }
    if let Err(err) = Nft::default().delete_table("inet", NFT_TABLE).await {
        failures.push(format!("table inet {NFT_TABLE}: {err}"));
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::netlink::VxlanInfo;

    fn link(kind: InfoKind) -> Link {
        Link {
            index: 7,
            name: "kubewire-x".into(),
            kind: Some(kind),
            mtu: Some(1450),
            up: true,
            mac: None,
            alias: None,
            vxlan: None,
            tunnel_endpoints: None,
        }
    }

    #[test]
    fn a_vxlan_device_is_kept_only_with_its_creation_settings() {
        let device = VxlanDevice {
            name: "kubewire-vx".into(),
            vni: 4096,
            port: 4789,
            local: "192.168.1.11".parse().unwrap(),
            mac: Mac([6, 0x6b, 192, 168, 1, 11]),
            mtu: Some(1450),
            addresses: Vec::new(),
        };
        let info = VxlanInfo {
            vni: Some(4096),
            local: Some(device.local),
            port: Some(4789),
            learning: Some(false),
        };
        let with = |kind, info: VxlanInfo| Link {
            vxlan: Some(info),
            ..link(kind)
        };
        let cases = [
            (with(InfoKind::Vxlan, info.clone()), true),
            (with(InfoKind::Dummy, info.clone()), false),
            (
                with(
                    InfoKind::Vxlan,
                    VxlanInfo {
                        vni: Some(1),
                        ..info.clone()
                    },
                ),
                false,
            ),
            (
                with(
                    InfoKind::Vxlan,
                    VxlanInfo {
                        port: Some(8472),
                        ..info.clone()
                    },
                ),
                false,
            ),
            (
                with(
                    InfoKind::Vxlan,
                    VxlanInfo {
                        learning: Some(true),
                        ..info.clone()
                    },
                ),
                false,
            ),
            (
                with(
                    InfoKind::Vxlan,
                    VxlanInfo {
                        local: Some("192.168.1.12".parse().unwrap()),
                        ..info
                    },
                ),
                false,
            ),
            (link(InfoKind::Vxlan), false),
        ];
        for (link, expected) in cases {
            assert_eq!(is_vxlan_device(&link, &device), expected, "{link:?}");
        }
    }

    #[test]
    fn an_ip_tunnel_is_kept_only_with_its_local_end_and_no_fixed_remote() {
        let v4 = IpipDevice {
            name: "kubewire-tun".into(),
            local: "192.168.1.11".parse().unwrap(),
            mtu: Some(1480),
        };
        let v6 = IpipDevice {
            name: "kubewire-tun6".into(),
            local: "fd00:1::11".parse().unwrap(),
            mtu: Some(1460),
        };
        let ends = |kind, local: &str, remote: Option<&str>| Link {
            tunnel_endpoints: Some((local.parse().ok(), remote.map(|r| r.parse().unwrap()))),
            ..link(kind)
        };
        let cases = [
            (&v4, ends(InfoKind::IpIp, "192.168.1.11", None), true),
            (
                &v4,
                ends(InfoKind::IpIp, "192.168.1.11", Some("0.0.0.0")),
                true,
            ),
            (
                &v4,
                ends(InfoKind::IpIp, "192.168.1.11", Some("192.168.1.12")),
                false,
            ),
            (&v4, ends(InfoKind::IpIp, "192.168.1.12", None), false),
            (&v4, ends(InfoKind::Ip6Tnl, "192.168.1.11", None), false),
            (&v6, ends(InfoKind::Ip6Tnl, "fd00:1::11", Some("::")), true),
            (&v6, ends(InfoKind::IpIp, "fd00:1::11", None), false),
            (&v6, link(InfoKind::Ip6Tnl), false),
        ];
        for (device, link, expected) in cases {
            assert_eq!(
                is_ip_tunnel_device(&link, device),
                expected,
                "{device:?} {link:?}"
            );
        }
    }
}

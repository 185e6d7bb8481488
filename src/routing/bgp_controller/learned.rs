//! Routes learned from BGP neighbours, on their way into the kernel.
//!
//! The table is shared with the routing controller: its sync puts these routes in
//! the plan it applies (so they are kept, and repaired like the cluster's own),
//! and the installer task changes the kernel at once when a neighbour announces or
//! withdraws, under the same lock so the two never undo each other. Prefixes the
//! cluster routes itself (pod CIDRs, from the Nodes) are never taken from BGP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::{Mutex, mpsc};

use super::metrics::BgpMetrics;
use crate::routing::bgp::RouteEvent;
use crate::routing::model::{Path, ROUTE_PROTOCOL, Route, RouteSource};
use crate::routing::netlink::{Netlink, RouteSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedRoute {
    pub gateway: IpAddr,
    pub peer: IpAddr,
}

/// What the kernel needs after one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelChange {
    Replace(RouteSpec),
    Delete(IpNet),
}

#[derive(Debug, Default)]
pub struct LearnedRoutes {
    best: BTreeMap<IpNet, LearnedRoute>,
    /// The cluster's pod CIDRs (aggregated): routes inside them come from the Nodes.
    owned: Vec<IpNet>,
    /// Routes found in the kernel when the agent started with graceful restart:
    /// kept (forwarding goes on) until the neighbours have told us again, or the
    /// restart time is over.
    stale: BTreeMap<IpNet, LearnedRoute>,
}

pub type SharedLearned = Arc<Mutex<LearnedRoutes>>;

impl LearnedRoutes {
    /// The ranges the routing controller routes from the Nodes.
    pub fn set_owned(&mut self, owned: Vec<IpNet>) {
        self.owned = owned;
    }

    fn owned(&self, prefix: &IpNet) -> bool {
        self.owned.iter().any(|o| o.contains(prefix))
    }

    pub fn clear(&mut self) {
        self.best.clear();
    }

    /// Keeps routes a previous run installed (kernel routes: destination, gateway).
    pub fn keep_stale(&mut self, routes: impl IntoIterator<Item = (IpNet, IpAddr)>) {
        for (prefix, gateway) in routes {
            if !self.owned(&prefix) {
                // The neighbour is unknown after a restart; the gateway stands in.
                let route = LearnedRoute {
                    gateway,
                    peer: gateway,
                };
                self.stale.insert(prefix, route);
            }
        }
    }

    /// Ends the restart: the stale routes no neighbour gave again, to delete.
    pub fn take_stale(&mut self) -> Vec<IpNet> {
        let stale = std::mem::take(&mut self.stale);
        stale
            .into_keys()
            .filter(|p| !self.best.contains_key(p) && !self.owned(p))
            .collect()
    }

    /// Records `event`; returns the kernel change it needs, if any.
    pub fn apply(&mut self, event: RouteEvent) -> Option<KernelChange> {
        match event {
            RouteEvent::Learned {
                prefix,
                peer,
                next_hop,
                ..
            } => {
                let Some(gateway) = next_hop
                    .addr()
                    .filter(|g| g.is_ipv4() == prefix.addr().is_ipv4())
                else {
                    // Unusable next hop: whatever was there is gone.
                    return self.best.remove(&prefix).and_then(|_| self.delete(prefix));
                };
                let route = LearnedRoute { gateway, peer };
                if self.best.insert(prefix, route) == Some(route) || self.owned(&prefix) {
                    return None;
                }
                Some(KernelChange::Replace(RouteSpec {
                    destination: prefix,
                    gateway,
                    oif: None,
                    onlink: false,
                }))
            }
            RouteEvent::Withdrawn { prefix } => {
                self.stale.remove(&prefix);
                self.best.remove(&prefix)?;
                self.delete(prefix)
            }
        }
    }

    fn delete(&self, prefix: IpNet) -> Option<KernelChange> {
        (!self.owned(&prefix)).then_some(KernelChange::Delete(prefix))
    }

    /// The routes to install, for the routing plan (stale ones included).
    pub fn routes(&self) -> Vec<Route> {
        let stale = self
            .stale
            .iter()
            .filter(|(prefix, _)| !self.best.contains_key(prefix));
        self.best
            .iter()
            .chain(stale)
            .filter(|(prefix, _)| !self.owned(prefix))
            .map(|(prefix, r)| Route {
                destination: *prefix,
                gateway: r.gateway,
                device: None,
                path: Path::Direct,
                source: RouteSource::Bgp { peer: r.peer },
            })
            .collect()
    }

    /// Every learned best route, installed or not (for status).
    pub fn count(&self) -> usize {
        self.best.len()
    }
}

/// Applies learned-route events to the table and the kernel until the speaker
/// stops.
pub async fn install(
    mut events: mpsc::UnboundedReceiver<RouteEvent>,
    table: SharedLearned,
    netlink: Netlink,
    metrics: BgpMetrics,
) {
    while let Some(event) = events.recv().await {
        // Take the whole burst under one lock.
        let mut batch = vec![event];
        while let Ok(more) = events.try_recv() {
            batch.push(more);
        }
        let mut table = table.lock().await;
        let changes: Vec<KernelChange> = batch.into_iter().filter_map(|e| table.apply(e)).collect();
        metrics
            .learned_routes
            .set(i64::try_from(table.count()).unwrap_or(i64::MAX));
        let mut replace = vec![];
        let mut delete = BTreeSet::new();
        for change in changes {
            match change {
                KernelChange::Replace(spec) => {
                    delete.remove(&spec.destination);
                    replace.retain(|r: &RouteSpec| r.destination != spec.destination);
                    replace.push(spec);
                }
                KernelChange::Delete(prefix) => {
                    replace.retain(|r: &RouteSpec| r.destination != prefix);
                    delete.insert(prefix);
                }
            }
        }
        for (spec, result) in replace.iter().zip(netlink.replace_routes(&replace).await) {
            if let Err(e) = result {
                metrics.install_errors.inc();
                tracing::warn!(prefix = %spec.destination, gateway = %spec.gateway, error = %e, "installing a BGP route");
            }
        }
        if !delete.is_empty() {
            match netlink.routes(ROUTE_PROTOCOL).await {
                Ok(routes) => {
                    let gone: Vec<_> = routes
                        .into_iter()
                        .filter(|r| delete.contains(&r.destination))
                        .collect();
                    for (route, result) in gone.iter().zip(netlink.delete_routes(&gone).await) {
                        if let Err(e) = result
                            && e.errno() != Some(libc::ESRCH)
                        {
                            metrics.install_errors.inc();
                            tracing::warn!(prefix = %route.destination, error = %e, "removing a withdrawn BGP route");
                        }
                    }
                }
                Err(e) => {
                    metrics.install_errors.inc();
                    tracing::warn!(error = %e, "listing routes to remove withdrawn BGP routes");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::bgp::route::NextHop;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn learned(prefix: &str, gw: [u8; 4]) -> RouteEvent {
        RouteEvent::Learned {
            prefix: net(prefix),
            peer: "192.0.2.254".parse().expect("ip"),
            next_hop: NextHop::V4(gw.into()),
            as_path: vec![],
            communities: vec![],
        }
    }

    #[test]
    fn events_become_kernel_changes_except_for_cluster_prefixes() {
        let mut t = LearnedRoutes::default();
        t.set_owned(vec![net("10.244.0.0/22")]);
        let Some(KernelChange::Replace(spec)) = t.apply(learned("198.51.100.0/24", [192, 0, 2, 1]))
        else {
            panic!("a replace")
        };
        assert_eq!(spec.gateway, IpAddr::from([192, 0, 2, 1]));
        // The same again: nothing to do.
        assert_eq!(t.apply(learned("198.51.100.0/24", [192, 0, 2, 1])), None);
        // A pod CIDR from the mesh is recorded but left to the Nodes' routes.
        assert_eq!(t.apply(learned("10.244.1.0/24", [192, 0, 2, 2])), None);
        assert_eq!(t.count(), 2);
        let routes = t.routes();
        assert_eq!(routes.len(), 1);
        assert_eq!(
            routes[0].source,
            RouteSource::Bgp {
                peer: "192.0.2.254".parse().expect("ip")
            }
        );
        assert_eq!(
            t.apply(RouteEvent::Withdrawn {
                prefix: net("198.51.100.0/24")
            }),
            Some(KernelChange::Delete(net("198.51.100.0/24")))
        );
        assert_eq!(
            t.apply(RouteEvent::Withdrawn {
                prefix: net("10.244.1.0/24")
            }),
            None
        );
        assert_eq!(
            t.apply(RouteEvent::Withdrawn {
                prefix: net("203.0.113.0/24")
            }),
            None
        );
        assert!(t.routes().is_empty());
    }

    #[test]
    fn stale_routes_stay_until_the_restart_ends() {
        let mut t = LearnedRoutes::default();
        t.set_owned(vec![net("10.244.0.0/16")]);
        let gw = IpAddr::from([192, 0, 2, 1]);
        t.keep_stale([
            (net("198.51.100.0/24"), gw),
            (net("203.0.113.0/24"), gw),
            (net("10.244.3.0/24"), gw),
        ]);
        let listed = |t: &LearnedRoutes| -> Vec<String> {
            t.routes()
                .iter()
                .map(|r| r.destination.to_string())
                .collect()
        };
        assert_eq!(listed(&t), ["198.51.100.0/24", "203.0.113.0/24"]);
        // One is learned again; at the end only the other is deleted.
        t.apply(learned("198.51.100.0/24", [192, 0, 2, 1]));
        assert_eq!(t.take_stale(), vec![net("203.0.113.0/24")]);
        assert_eq!(listed(&t), ["198.51.100.0/24"]);
    }
}

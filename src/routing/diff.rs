//! Desired versus actual kernel state, as the minimal set of changes. Pure. Only
//! entries this controller owns are ever proposed for deletion: routes with our
//! `proto` (the caller dumps only those), permanent neighbour entries and FDB entries
//! on our own VXLAN device, addresses carrying our `IFA_PROTO`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{Mac, ROUTE_PROTOCOL};
use super::netlink::{Address, FdbEntry, KernelRoute, Neighbour, RouteSpec};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteChanges {
    /// Missing or different: added with `NLM_F_REPLACE`.
    pub replace: Vec<RouteSpec>,
    /// Ours but no longer wanted (or a duplicate of a wanted one).
    pub delete: Vec<KernelRoute>,
}

/// `actual` must hold only our routes.
pub fn routes(desired: &[RouteSpec], actual: &[KernelRoute]) -> RouteChanges {
    let mut by_destination: BTreeMap<IpNet, Vec<&KernelRoute>> = BTreeMap::new();
    for route in actual {
        by_destination
            .entry(route.destination)
            .or_default()
            .push(route);
    }
    let mut changes = RouteChanges::default();
    for want in desired {
        let installed = by_destination.remove(&want.destination).unwrap_or_default();
        let matching = installed.iter().position(|have| same_route(want, have));
        match matching {
            Some(keep) => changes.delete.extend(
                installed
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != keep)
                    .map(|(_, r)| (*r).clone()),
            ),
            // A replace overwrites the one installed route for this destination.
            None => {
                changes.replace.push(want.clone());
                changes
                    .delete
                    .extend(installed.iter().skip(1).map(|r| (*r).clone()));
            }
        }
    }
    changes
        .delete
        .extend(by_destination.into_values().flatten().cloned());
    changes
}

fn same_route(want: &RouteSpec, have: &KernelRoute) -> bool {
    have.gateway == Some(want.gateway)
        && have.onlink == want.onlink
        && want.oif.is_none_or(|oif| have.oif == Some(oif))
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct NeighbourChanges {
    pub replace: Vec<(IpAddr, Mac)>,
    pub delete: Vec<IpAddr>,
}

/// Permanent neighbour entries of one device we own.
pub fn neighbours(desired: &[(IpAddr, Mac)], actual: &[Neighbour]) -> NeighbourChanges {
    let wanted: BTreeMap<IpAddr, Mac> = desired.iter().copied().collect();
    NeighbourChanges {
        replace: wanted
            .iter()
            .filter(|(address, mac)| {
                !actual
                    .iter()
                    .any(|n| n.permanent && n.address == **address && n.mac == Some(**mac))
            })
            .map(|(a, m)| (*a, *m))
            .collect(),
        delete: actual
            .iter()
            .filter(|n| n.permanent && !wanted.contains_key(&n.address))
            .map(|n| n.address)
            .collect(),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct FdbChanges {
    pub replace: Vec<(Mac, IpAddr)>,
    pub delete: Vec<FdbEntry>,
}

/// The FDB of our VXLAN device: exactly one destination per peer MAC.
pub fn fdb(desired: &[(Mac, IpAddr)], actual: &[FdbEntry]) -> FdbChanges {
    let wanted: BTreeMap<Mac, IpAddr> = desired.iter().copied().collect();
    let mut changes = FdbChanges::default();
    let mut present = BTreeSet::new();
    for entry in actual {
        match wanted.get(&entry.mac) {
            Some(dst) if entry.destination == Some(*dst) && present.insert(entry.mac) => {}
            _ => changes.delete.push(entry.clone()),
        }
    }
    changes.replace = wanted
        .into_iter()
        .filter(|(mac, _)| !present.contains(mac))
        .collect();
    changes
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddressChanges {
    pub add: Vec<IpNet>,
    pub delete: Vec<IpNet>,
}

/// Addresses of one link: add what is missing (whoever added the rest), delete ours
/// that are no longer wanted.
pub fn addresses(index: u32, desired: &[IpNet], actual: &[Address]) -> AddressChanges {
    let on_link: Vec<&Address> = actual.iter().filter(|a| a.index == index).collect();
    AddressChanges {
        add: desired
            .iter()
            .filter(|want| !on_link.iter().any(|a| a.address == **want))
            .copied()
            .collect(),
        delete: on_link
            .iter()
            .filter(|a| a.protocol == Some(ROUTE_PROTOCOL) && !desired.contains(&a.address))
            .map(|a| a.address)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(destination: &str, gateway: &str, oif: Option<u32>) -> RouteSpec {
        RouteSpec {
            destination: destination.parse().unwrap(),
            gateway: gateway.parse().unwrap(),
            oif,
            onlink: oif.is_some(),
        }
    }

    fn installed(destination: &str, gateway: &str, oif: u32, onlink: bool) -> KernelRoute {
        KernelRoute::for_tests(
            destination.parse().unwrap(),
            Some(gateway.parse().unwrap()),
            Some(oif),
            onlink,
        )
    }

    fn destinations(routes: &[KernelRoute]) -> Vec<String> {
        routes.iter().map(|r| r.destination.to_string()).collect()
    }

    #[test]
    fn route_changes() {
        let desired = vec![
            spec("10.244.2.0/24", "192.168.1.12", None),
            spec("10.244.3.0/24", "10.244.3.0", Some(7)),
            spec("10.244.4.0/24", "192.168.1.14", None),
            spec("10.244.5.0/24", "10.244.5.0", Some(7)),
        ];
        let actual = vec![
            // unchanged: direct routes match whatever device the kernel picked
            installed("10.244.2.0/24", "192.168.1.12", 2, false),
            // unchanged tunnel route
            installed("10.244.3.0/24", "10.244.3.0", 7, true),
            // the node's IP changed
            installed("10.244.4.0/24", "192.168.1.99", 2, false),
            // the tunnel device was re-created with another index
            installed("10.244.5.0/24", "10.244.5.0", 6, true),
            // the node is gone
            installed("10.244.6.0/24", "192.168.1.16", 2, false),
        ];
        let changes = routes(&desired, &actual);
        assert_eq!(
            changes.replace,
            vec![desired[2].clone(), desired[3].clone()]
        );
        assert_eq!(destinations(&changes.delete), ["10.244.6.0/24"]);
        assert_eq!(routes(&desired, &[]).replace, desired);
        assert_eq!(routes(&[], &actual).delete.len(), 5);
    }

    #[test]
    fn duplicate_routes_for_one_destination_are_reduced_to_one() {
        let desired = vec![spec("fd00:10:244:2::/64", "fd00:1::12", None)];
        let matching = installed("fd00:10:244:2::/64", "fd00:1::12", 2, false);
        let stale = installed("fd00:10:244:2::/64", "fd00:1::99", 2, false);
        let changes = routes(&desired, &[stale.clone(), matching]);
        assert!(changes.replace.is_empty());
        assert_eq!(changes.delete, vec![stale]);
    }

    fn mac(last: u8) -> Mac {
        Mac([6, 0x6b, 0, 0, 0, last])
    }

    #[test]
    fn neighbour_changes_touch_only_permanent_entries() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let entry = |address: &str, m: u8, permanent: bool| Neighbour {
            index: 7,
            address: ip(address),
            mac: Some(mac(m)),
            permanent,
        };
        let desired = vec![
            (ip("10.244.2.0"), mac(2)),
            (ip("10.244.3.0"), mac(3)),
            (ip("10.244.4.0"), mac(4)),
        ];
        let actual = vec![
            entry("10.244.2.0", 2, true),  // right
            entry("10.244.3.0", 9, true),  // wrong MAC
            entry("10.244.4.0", 4, false), // learned, not pinned
            entry("10.244.5.0", 5, true),  // stale
            entry("10.244.6.0", 6, false), // someone else's
        ];
        let changes = neighbours(&desired, &actual);
        assert_eq!(changes.replace, vec![desired[1], desired[2]]);
        assert_eq!(changes.delete, vec![ip("10.244.5.0")]);
    }

    #[test]
    fn fdb_keeps_one_destination_per_peer() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let entry = |m: u8, dst: Option<&str>| FdbEntry {
            index: 7,
            mac: mac(m),
            destination: dst.map(ip),
        };
        let desired = vec![
            (mac(2), ip("192.168.1.12")),
            (mac(3), ip("192.168.2.13")),
            (mac(4), ip("192.168.2.14")),
        ];
        let actual = vec![
            entry(2, Some("192.168.1.12")),
            entry(3, Some("192.168.2.99")),
            entry(5, Some("192.168.2.15")),
            entry(0, Some("192.168.2.15")),
        ];
        let changes = fdb(&desired, &actual);
        assert_eq!(changes.replace, vec![desired[1], desired[2]]);
        assert_eq!(
            changes.delete,
            vec![actual[1].clone(), actual[2].clone(), actual[3].clone()]
        );
    }

    #[test]
    fn address_changes_leave_foreign_addresses() {
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        let address = |index, a: &str, protocol| Address {
            index,
            address: net(a),
            protocol,
        };
        let actual = vec![
            address(3, "10.244.1.1/24", None), // the CNI plugin's: kept
            address(3, "10.244.9.1/24", Some(ROUTE_PROTOCOL)), // our old CIDR: deleted
            address(3, "fe80::1/64", Some(2)), // link-local: kept
            address(4, "fd00:10:244:1::1/64", Some(ROUTE_PROTOCOL)), // another link
        ];
        let changes = addresses(
            3,
            &[net("10.244.1.1/24"), net("fd00:10:244:1::1/64")],
            &actual,
        );
        assert_eq!(changes.add, vec![net("fd00:10:244:1::1/64")]);
        assert_eq!(changes.delete, vec![net("10.244.9.1/24")]);
    }
}

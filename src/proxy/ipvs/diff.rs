//! The pure step of the IPVS reconciler: from what the kernel holds of ours and what
//! the Services want, the smallest list of changes (never a flush), with graceful
//! termination of removed destinations. Kernel facts (the dump, the connection
//! counts) are read before this step and passed in, so it is tested without a socket.
//!
//! Graceful termination, as kube-proxy and kube-router do it: a destination no
//! longer wanted first gets weight 0 (no new connections, established ones keep
//! flowing) and is deleted once it has no active connection, or once it has drained
//! for the grace period. One with no active connection is deleted at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::compile::{Desired, is_ours};
use crate::ipvs::{Destination, Service, ServiceKey, ServiceStatus};

/// A destination of ours in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelDestination {
    pub destination: Destination,
    pub active_connections: u32,
}

/// A virtual service of ours in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelService {
    pub service: Service,
    pub destinations: BTreeMap<SocketAddr, KernelDestination>,
}

/// What the kernel holds of ours: our virtual services and the dummy interface's
/// addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub services: BTreeMap<ServiceKey, KernelService>,
    pub vips: BTreeSet<IpAddr>,
}

/// One change to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    AddService(Service),
    EditService(Service),
    DeleteService(ServiceKey),
    AddDestination(ServiceKey, Destination),
    EditDestination(ServiceKey, Destination),
    DeleteDestination(ServiceKey, SocketAddr),
    AddVip(IpAddr),
    DeleteVip(IpAddr),
}

/// Destinations draining to deletion, and since when.
pub type Draining = BTreeMap<(ServiceKey, SocketAddr), Instant>;

impl KernelState {
    /// Our part of an IPVS dump (services kubewire marked, see [`is_ours`]) and the
    /// dummy interface's addresses.
    pub fn from_dump(dump: Vec<ServiceStatus>, vips: BTreeSet<IpAddr>) -> KernelState {
        let services = dump
            .into_iter()
            .filter(|s| is_ours(&s.service))
            .map(|status| {
                let destinations = status
                    .destinations
                    .into_iter()
                    .map(|d| {
                        let address = SocketAddr::new(d.destination.address, d.destination.port);
                        let kernel = KernelDestination {
                            destination: d.destination,
                            active_connections: d.active_connections,
                        };
                        (address, kernel)
                    })
                    .collect();
                let service = KernelService {
                    service: status.service,
                    destinations,
                };
                (service.service.key, service)
            })
            .collect();
        KernelState { services, vips }
    }

    /// Records the effect of `action`, done.
    pub fn record(&mut self, action: &Action) {
        match action {
            Action::AddService(service) | Action::EditService(service) => {
                let entry = self
                    .services
                    .entry(service.key)
                    .or_insert_with(|| KernelService {
                        service: service.clone(),
                        destinations: BTreeMap::new(),
                    });
                entry.service = service.clone();
            }
            Action::DeleteService(key) => {
                self.services.remove(key);
            }
            Action::AddDestination(key, destination)
            | Action::EditDestination(key, destination) => {
                if let Some(service) = self.services.get_mut(key) {
                    let address = SocketAddr::new(destination.address, destination.port);
                    let entry =
                        service
                            .destinations
                            .entry(address)
                            .or_insert_with(|| KernelDestination {
                                destination: destination.clone(),
                                active_connections: 0,
                            });
                    entry.destination = destination.clone();
                }
            }
            Action::DeleteDestination(key, address) => {
                if let Some(service) = self.services.get_mut(key) {
                    service.destinations.remove(address);
                }
            }
            Action::AddVip(ip) => {
                self.vips.insert(*ip);
            }
            Action::DeleteVip(ip) => {
                self.vips.remove(ip);
            }
        }
    }

    /// The same state without connection counts: what drift is judged on.
    pub fn configuration(&self) -> KernelState {
        let mut out = self.clone();
        for service in out.services.values_mut() {
            service.service.flags.hashed = false;
            for destination in service.destinations.values_mut() {
                destination.active_connections = 0;
            }
        }
        out
    }
}

/// Whether the kernel's service has the settings kubewire wants (the kernel's own
/// `hashed` flag aside).
fn same_service(kernel: &Service, wanted: &Service) -> bool {
    let mut kernel = kernel.clone();
    kernel.flags.hashed = wanted.flags.hashed;
    kernel == *wanted
}

/// The changes that bring `kernel` to `desired` at `now`, updating `draining`.
/// Order: services and destinations are added before their VIP appears, and a VIP
/// is removed before its service, so no packet reaches a VIP IPVS does not serve.
pub fn plan(
    desired: &Desired,
    kernel: &KernelState,
    draining: &mut Draining,
    now: Instant,
    grace: Duration,
) -> Vec<Action> {
    let mut out = Vec::new();
    for (key, wanted) in &desired.services {
        let current = kernel.services.get(key);
        match current {
            None => out.push(Action::AddService(wanted.service.clone())),
            Some(current) if !same_service(&current.service, &wanted.service) => {
                out.push(Action::EditService(wanted.service.clone()));
            }
            Some(_) => {}
        }
        let empty = BTreeMap::new();
        let present = current.map_or(&empty, |c| &c.destinations);
        for (address, destination) in &wanted.destinations {
            draining.remove(&(*key, *address));
            match present.get(address) {
                None => out.push(Action::AddDestination(*key, destination.clone())),
                Some(d) if d.destination != *destination => {
                    out.push(Action::EditDestination(*key, destination.clone()));
                }
                Some(_) => {}
            }
        }
        for (address, current) in present {
            if wanted.destinations.contains_key(address) {
                continue;
            }
            let since = *draining.entry((*key, *address)).or_insert(now);
            if current.active_connections == 0 || now.duration_since(since) >= grace {
                draining.remove(&(*key, *address));
                out.push(Action::DeleteDestination(*key, *address));
            } else if current.destination.weight != 0 {
                let mut quiesced = current.destination.clone();
                quiesced.weight = 0;
                out.push(Action::EditDestination(*key, quiesced));
            }
        }
    }
    out.extend(
        desired
            .vips
            .difference(&kernel.vips)
            .map(|ip| Action::AddVip(*ip)),
    );
    out.extend(
        kernel
            .vips
            .difference(&desired.vips)
            .map(|ip| Action::DeleteVip(*ip)),
    );
    for key in kernel.services.keys() {
        if !desired.services.contains_key(key) {
            out.push(Action::DeleteService(*key));
        }
    }
    draining.retain(|(key, _), _| desired.services.contains_key(key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::Protocol;
    use crate::proxy::ipvs::compile::VirtualServer;

    fn key(port: u16) -> ServiceKey {
        ServiceKey::Address {
            protocol: Protocol::Tcp,
            address: "10.96.0.10".parse().unwrap(),
            port,
        }
    }

    fn ours(port: u16) -> Service {
        let mut service = Service::new(key(port), "rr");
        service.flags.sched_flag3 = true;
        service
    }

    fn endpoint(i: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::from([10, 244, 1, i]), 8080)
    }

    fn desired(services: &[(u16, &[u8])]) -> Desired {
        let mut out = Desired::default();
        for (port, endpoints) in services {
            out.services.insert(
                key(*port),
                VirtualServer {
                    service: ours(*port),
                    destinations: endpoints
                        .iter()
                        .map(|i| (endpoint(*i), Destination::new(endpoint(*i).ip(), 8080)))
                        .collect(),
                    owner: "x/web".into(),
                },
            );
            out.vips.insert("10.96.0.10".parse().unwrap());
        }
        out
    }

    /// A destination in the kernel: (endpoint, weight, active connections).
    type Present = (u8, u32, u32);

    /// The kernel: services with their destinations.
    fn kernel(services: &[(u16, &[Present])]) -> KernelState {
        let mut out = KernelState::default();
        for (port, destinations) in services {
            let mut service = KernelService {
                service: ours(*port),
                destinations: BTreeMap::new(),
            };
            service.service.flags.hashed = true;
            for (i, weight, active) in *destinations {
                let mut destination = Destination::new(endpoint(*i).ip(), 8080);
                destination.weight = *weight;
                service.destinations.insert(
                    endpoint(*i),
                    KernelDestination {
                        destination,
                        active_connections: *active,
                    },
                );
            }
            out.services.insert(key(*port), service);
            out.vips.insert("10.96.0.10".parse().unwrap());
        }
        out
    }

    fn text(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::AddService(s) => format!("add {}", s.key),
                Action::EditService(s) => format!("edit {} {}", s.key, s.scheduler),
                Action::DeleteService(k) => format!("delete {k}"),
                Action::AddDestination(k, d) => format!("add {k} -> {d}"),
                Action::EditDestination(k, d) => format!("edit {k} -> {d} weight {}", d.weight),
                Action::DeleteDestination(k, a) => format!("delete {k} -> {a}"),
                Action::AddVip(ip) => format!("add vip {ip}"),
                Action::DeleteVip(ip) => format!("delete vip {ip}"),
            })
            .collect()
    }

    #[test]
    fn changes_are_the_difference_only() {
        let grace = Duration::from_secs(30);
        let now = Instant::now();
        type Case<'a> = (
            &'a [(u16, &'a [u8])],
            &'a [(u16, &'a [(u8, u32, u32)])],
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            // Nothing there yet: service, destinations, then the VIP.
            (
                &[(80, &[1, 2])],
                &[],
                &[
                    "add TCP 10.96.0.10:80",
                    "add TCP 10.96.0.10:80 -> 10.244.1.1:8080",
                    "add TCP 10.96.0.10:80 -> 10.244.1.2:8080",
                    "add vip 10.96.0.10",
                ],
            ),
            // In place: nothing (the kernel's hashed flag does not count).
            (&[(80, &[1, 2])], &[(80, &[(1, 1, 0), (2, 1, 5)])], &[]),
            // A removed endpoint with connections drains; one without goes at once.
            (
                &[(80, &[1])],
                &[(80, &[(1, 1, 0), (2, 1, 5), (3, 1, 0)])],
                &[
                    "edit TCP 10.96.0.10:80 -> 10.244.1.2:8080 weight 0",
                    "delete TCP 10.96.0.10:80 -> 10.244.1.3:8080",
                ],
            ),
            // A drained endpoint wanted again gets its weight back.
            (
                &[(80, &[1, 2])],
                &[(80, &[(1, 1, 0), (2, 0, 5)])],
                &["edit TCP 10.96.0.10:80 -> 10.244.1.2:8080 weight 1"],
            ),
            // A service no longer wanted: its VIP goes first, then the service.
            (
                &[],
                &[(80, &[(1, 1, 3)])],
                &["delete vip 10.96.0.10", "delete TCP 10.96.0.10:80"],
            ),
            // Drift: a deleted destination is added back.
            (
                &[(80, &[1, 2]), (81, &[1])],
                &[(80, &[(1, 1, 0)]), (81, &[(1, 1, 0)])],
                &["add TCP 10.96.0.10:80 -> 10.244.1.2:8080"],
            ),
        ];
        for (want, have, expected) in cases {
            let mut draining = Draining::new();
            let actions = plan(&desired(want), &kernel(have), &mut draining, now, grace);
            assert_eq!(text(&actions), *expected, "{want:?} over {have:?}");
        }
    }

    #[test]
    fn a_changed_scheduler_edits_the_service_in_place() {
        let mut want = desired(&[(80, &[1])]);
        if let Some(server) = want.services.get_mut(&key(80)) {
            server.service.scheduler = "mh".into();
        }
        let actions = plan(
            &want,
            &kernel(&[(80, &[(1, 1, 0)])]),
            &mut Draining::new(),
            Instant::now(),
            Duration::from_secs(30),
        );
        assert_eq!(text(&actions), ["edit TCP 10.96.0.10:80 mh"]);
    }

    #[test]
    fn draining_ends_when_connections_end_or_the_grace_period_does() {
        let grace = Duration::from_secs(30);
        let start = Instant::now();
        let want = desired(&[(80, &[1])]);
        let mut draining = Draining::new();
        let mut state = kernel(&[(80, &[(1, 1, 0), (2, 1, 4)])]);
        let first = plan(&want, &state, &mut draining, start, grace);
        assert_eq!(
            text(&first),
            ["edit TCP 10.96.0.10:80 -> 10.244.1.2:8080 weight 0"]
        );
        first.iter().for_each(|a| state.record(a));
        // Still busy within the grace period: nothing.
        let later = start + Duration::from_secs(10);
        assert!(plan(&want, &state, &mut draining, later, grace).is_empty());
        // The grace period is over: deleted though busy.
        let after = start + grace;
        assert_eq!(
            text(&plan(&want, &state, &mut draining, after, grace)),
            ["delete TCP 10.96.0.10:80 -> 10.244.1.2:8080"]
        );
        assert!(draining.is_empty());
        // Connections that end earlier end the draining earlier.
        let mut draining = Draining::new();
        let mut state = kernel(&[(80, &[(1, 1, 0), (2, 1, 4)])]);
        plan(&want, &state, &mut draining, start, grace)
            .iter()
            .for_each(|a| state.record(a));
        if let Some(d) = state
            .services
            .get_mut(&key(80))
            .and_then(|s| s.destinations.get_mut(&endpoint(2)))
        {
            d.active_connections = 0;
        }
        assert_eq!(
            text(&plan(&want, &state, &mut draining, later, grace)),
            ["delete TCP 10.96.0.10:80 -> 10.244.1.2:8080"]
        );
    }

    #[test]
    fn only_our_services_are_read_from_a_dump() {
        let mut theirs = Service::new(key(443), "wlc");
        theirs.flags.hashed = true;
        let dump = vec![
            ServiceStatus {
                service: ours(80),
                stats: Default::default(),
                destinations: Vec::new(),
            },
            ServiceStatus {
                service: theirs,
                stats: Default::default(),
                destinations: Vec::new(),
            },
        ];
        let state = KernelState::from_dump(dump, BTreeSet::new());
        assert_eq!(
            state.services.keys().copied().collect::<Vec<_>>(),
            [key(80)]
        );
    }
}

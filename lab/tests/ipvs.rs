//! The IPVS adapter against the real kernel (root only), each test in a network
//! namespace of its own: services and destinations of both families and by firewall
//! mark are added, edited, dumped and deleted, and what the kernel then holds is
//! compared with `ipvsadm -Ln`. A kernel without IPVS (this machine's) makes every
//! test record itself as skipped; `tests/vm/run` runs them on
//! Debian's kernel, which has it.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Netns;
use kubewire::ipvs::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

fn tcp(address: &str, port: u16) -> ServiceKey {
    ServiceKey::Address {
        protocol: Protocol::Tcp,
        address: ip(address),
        port,
    }
}

fn udp(address: &str, port: u16) -> ServiceKey {
    ServiceKey::Address {
        protocol: Protocol::Udp,
        address: ip(address),
        port,
    }
}

fn fwmark(family: Family, mark: u32) -> ServiceKey {
    ServiceKey::Fwmark { family, mark }
}

/// Runs `test` with an IPVS handle in a fresh network namespace, or says why not.
fn with_ipvs(test: impl FnOnce(&Netns, &mut Ipvs) + Send) {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    // The family is the kernel's, not a namespace's: ask on the test's own thread so
    // that the skip names the test.
    if let Err(IpvsError::Unavailable) = Ipvs::new() {
        kubewire_lab::harness::skip("kernel has no IPVS (tests/vm/run runs these)");
        return;
    }
    let netns = Netns::new("kwipvs");
    let netns_ref = &netns;
    netns.run(move || match Ipvs::new() {
        Ok(mut ipvs) => test(netns_ref, &mut ipvs),
        Err(error) => panic!("opening IPVS: {error}"),
    });
}

/// `ipvsadm ARGS` in the namespace, or `None` when ipvsadm is not installed.
fn ipvsadm(netns: &Netns, args: &[&str]) -> Option<String> {
    let output = Command::new("ip")
        .args(["netns", "exec", &netns.name, "ipvsadm"])
        .args(args)
        .output()
        .expect("running ip netns exec");
    if !output.status.success() && !ipvsadm_installed() {
        eprintln!("ipvsadm is not installed: kernel state not compared with its listing");
        return None;
    }
    Some(common::success(
        output,
        &format!("ipvsadm {}", args.join(" ")),
    ))
}

fn ipvsadm_installed() -> bool {
    Command::new("ipvsadm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `ipvsadm -Ln` as service blocks (the service line, then its destination lines,
/// sorted), whitespace collapsed, the blocks sorted: ipvsadm sorts, the kernel's
/// dump does not.
fn ipvsadm_listing(netns: &Netns) -> Option<BTreeSet<Vec<String>>> {
    let text = ipvsadm(netns, &["-Ln"])?;
    let mut blocks = BTreeSet::new();
    let mut block: Vec<String> = Vec::new();
    // Three header lines: version, and the two column legends.
    for line in text.lines().skip(3) {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.starts_with("->") {
            block.push(line);
        } else {
            if !block.is_empty() {
                block[1..].sort();
                blocks.insert(std::mem::take(&mut block));
            }
            block.push(line);
        }
    }
    if !block.is_empty() {
        block[1..].sort();
        blocks.insert(block);
    }
    Some(blocks)
}

/// Our dump in the same shape, written as ipvsadm 1.31 prints services and
/// destinations.
fn our_listing(services: &[ServiceStatus]) -> BTreeSet<Vec<String>> {
    services
        .iter()
        .map(|status| {
            let mut block = vec![service_line(&status.service)];
            let mut destinations: Vec<String> = status
                .destinations
                .iter()
                .map(|d| {
                    let forward = match d.destination.forward {
                        ForwardMethod::Masquerade => "Masq",
                        ForwardMethod::Local => "Local",
                        ForwardMethod::Tunnel(_) => "Tunnel",
                        ForwardMethod::Route => "Route",
                        ForwardMethod::Bypass => "Bypass",
                    };
                    format!(
                        "-> {} {forward} {} {} {}",
                        d.destination,
                        d.destination.weight,
                        d.active_connections,
                        d.inactive_connections
                    )
                })
                .collect();
            destinations.sort();
            block.extend(destinations);
            block
        })
        .collect()
}

fn service_line(service: &Service) -> String {
    let mut line = match service.key {
        ServiceKey::Address { .. } => service.key.to_string(),
        ServiceKey::Fwmark {
            family: Family::V4,
            mark,
        } => format!("FWM {mark}"),
        ServiceKey::Fwmark {
            family: Family::V6,
            mark,
        } => format!("FWM {mark} IPv6"),
    };
    line.push(' ');
    line.push_str(&service.scheduler);
    let flags = &service.flags;
    let mut sched_flags = Vec::new();
    if flags.sched_fallback {
        sched_flags.push(format!("{}-fallback", service.scheduler));
    }
    if flags.sched_port {
        sched_flags.push(format!("{}-port", service.scheduler));
    }
    if !sched_flags.is_empty() {
        line.push_str(&format!(" ({})", sched_flags.join(",")));
    }
    if flags.persistent {
        line.push_str(&format!(" persistent {}", service.timeout));
        let family = service.key.family();
        if service.netmask != family.max_prefix() {
            match family {
                Family::V4 => {
                    let mask = u32::MAX << (32 - u32::from(service.netmask));
                    line.push_str(&format!(" mask {}", std::net::Ipv4Addr::from(mask)));
                }
                Family::V6 => line.push_str(&format!(" mask {}", service.netmask)),
            }
        }
        if let Some(engine) = &service.persistence_engine {
            line.push_str(&format!(" pe {engine}"));
        }
    }
    if flags.one_packet {
        line.push_str(" ops");
    }
    line
}

/// The kernel's services now, and the same in ipvsadm's eyes.
fn assert_ipvsadm_agrees(netns: &Netns, ipvs: &mut Ipvs) -> Vec<ServiceStatus> {
    let services = ipvs.services().expect("dumping services");
    if let Some(listing) = ipvsadm_listing(netns) {
        assert_eq!(our_listing(&services), listing, "ipvsadm -Ln disagrees");
    }
    services
}

fn find<'a>(services: &'a [ServiceStatus], key: &ServiceKey) -> &'a ServiceStatus {
    services
        .iter()
        .find(|s| s.service.key == *key)
        .unwrap_or_else(|| panic!("{key} not in the dump"))
}

#[test]
fn services_and_destinations_are_added_edited_dumped_and_deleted() {
    with_ipvs(|netns, ipvs| {
        let info = ipvs.info().expect("info");
        assert_eq!(info.version.0, 1, "{info:?}");
        assert!(info.connection_table_size > 0, "{info:?}");
        let before = ipvs.services().expect("dump");
        assert!(before.is_empty(), "{before:?}");

        // One service of each kind.
        let web = Service::new(tcp("10.96.0.1", 80), "rr");
        let dns6 = Service {
            flags: ServiceFlags {
                one_packet: true,
                ..ServiceFlags::default()
            },
            ..Service::new(udp("fd00::1", 53), "wrr")
        };
        let sctp = Service {
            flags: ServiceFlags {
                persistent: true,
                ..ServiceFlags::default()
            },
            timeout: 600,
            netmask: 24,
            ..Service::new(
                ServiceKey::Address {
                    protocol: Protocol::Sctp,
                    address: ip("10.96.0.3"),
                    port: 9000,
                },
                "sh",
            )
        };
        let marked = Service {
            flags: ServiceFlags {
                sched_fallback: true,
                sched_port: true,
                ..ServiceFlags::default()
            },
            ..Service::new(fwmark(Family::V4, 42), "mh")
        };
        let marked6 = Service {
            flags: ServiceFlags {
                persistent: true,
                ..ServiceFlags::default()
            },
            timeout: 60,
            netmask: 64,
            ..Service::new(fwmark(Family::V6, 43), "rr")
        };
        // Calls of one SIP dialogue stick together (the sip persistence engine).
        let sip = Service {
            flags: ServiceFlags {
                persistent: true,
                ..ServiceFlags::default()
            },
            timeout: 360,
            persistence_engine: Some("sip".to_string()),
            ..Service::new(udp("10.96.0.4", 5060), "rr")
        };
        let all = [&web, &dns6, &sctp, &marked, &marked6, &sip];
        for service in all {
            ipvs.add_service(service).unwrap_or_else(|e| panic!("{e}"));
        }

        let masq = Destination {
            weight: 3,
            ..Destination::new(ip("10.0.0.5"), 8080)
        };
        let masq2 = Destination::new(ip("10.0.0.6"), 8080);
        let dns6_backend = Destination {
            weight: 2,
            ..Destination::new(ip("fd00::10"), 5353)
        };
        let sctp_backend = Destination {
            upper_threshold: 100,
            lower_threshold: 10,
            ..Destination::new(ip("10.0.0.9"), 9000)
        };
        let ipip = Destination {
            forward: ForwardMethod::Tunnel(Tunnel::default()),
            ..Destination::new(ip("10.0.0.7"), 0)
        };
        let gre = Destination {
            forward: ForwardMethod::Tunnel(Tunnel {
                kind: TunnelType::Gre,
                port: 0,
                checksum: TunnelChecksum::Checksum,
            }),
            ..Destination::new(ip("10.0.0.8"), 0)
        };
        let gue6 = Destination {
            forward: ForwardMethod::Tunnel(Tunnel {
                kind: TunnelType::Gue,
                port: 6080,
                checksum: TunnelChecksum::RemoteChecksum,
            }),
            ..Destination::new(ip("fd00::20"), 0)
        };
        for (key, destination) in [
            (&web.key, &masq),
            (&web.key, &masq2),
            (&dns6.key, &dns6_backend),
            (&sctp.key, &sctp_backend),
            (&marked.key, &ipip),
            (&marked.key, &gre),
            (&marked6.key, &gue6),
        ] {
            ipvs.add_destination(key, destination)
                .unwrap_or_else(|e| panic!("{e}"));
        }

        let services = assert_ipvsadm_agrees(netns, ipvs);
        assert_eq!(services.len(), all.len());
        for service in all {
            let status = find(&services, &service.key);
            // The kernel marks every service it holds as hashed.
            let expected = Service {
                flags: ServiceFlags {
                    hashed: true,
                    ..service.flags
                },
                ..service.clone()
            };
            assert_eq!(status.service, expected);
        }
        let destinations = |key| -> HashSet<_> {
            find(&services, key)
                .destinations
                .iter()
                .map(|d| d.destination.clone())
                .collect()
        };
        assert_eq!(destinations(&web.key), [masq.clone(), masq2.clone()].into());
        assert_eq!(destinations(&dns6.key), [dns6_backend.clone()].into());
        assert_eq!(destinations(&sctp.key), [sctp_backend.clone()].into());
        assert_eq!(
            destinations(&marked.key),
            [ipip.clone(), gre.clone()].into()
        );
        assert_eq!(destinations(&marked6.key), [gue6.clone()].into());

        // One service read alone, with its destinations.
        let one = ipvs.service(&dns6.key).expect("get").expect("exists");
        assert_eq!(one.service.key, dns6.key);
        assert_eq!(one.destinations.len(), 1);
        assert_eq!(ipvs.service(&tcp("10.96.9.9", 1)).expect("get"), None);

        // Edits: scheduler and persistence of a service, method and weight of a
        // destination.
        let web_sticky = Service {
            flags: ServiceFlags {
                persistent: true,
                sched_fallback: true,
                sched_port: true,
                ..ServiceFlags::default()
            },
            timeout: 300,
            netmask: 16,
            ..Service::new(web.key, "sh")
        };
        ipvs.edit_service(&web_sticky).expect("edit service");
        let routed = Destination {
            forward: ForwardMethod::Route,
            weight: 5,
            upper_threshold: 1000,
            lower_threshold: 500,
            ..masq.clone()
        };
        ipvs.edit_destination(&web.key, &routed)
            .expect("edit destination");
        let drained = Destination {
            weight: 0,
            ..masq2.clone()
        };
        ipvs.edit_destination(&web.key, &drained)
            .expect("edit destination");
        let services = assert_ipvsadm_agrees(netns, ipvs);
        let status = find(&services, &web.key);
        assert_eq!(status.service.scheduler, "sh");
        assert!(status.service.flags.persistent && status.service.flags.hashed);
        assert_eq!((status.service.timeout, status.service.netmask), (300, 16));
        let now: HashSet<_> = status
            .destinations
            .iter()
            .map(|d| d.destination.clone())
            .collect();
        assert_eq!(now, [routed.clone(), drained.clone()].into());

        // Deletes.
        ipvs.delete_destination(&web.key, masq.address, masq.port)
            .expect("delete destination");
        ipvs.delete_destination(&marked.key, gre.address, gre.port)
            .expect("delete destination");
        ipvs.delete_service(&dns6.key).expect("delete service");
        let services = assert_ipvsadm_agrees(netns, ipvs);
        assert_eq!(services.len(), all.len() - 1);
        assert_eq!(find(&services, &web.key).destinations.len(), 1);
        assert_eq!(find(&services, &marked.key).destinations.len(), 1);
        assert_eq!(ipvs.service(&dns6.key).expect("get"), None);

        ipvs.zero(None).expect("zero all");
        ipvs.zero(Some(&web.key)).expect("zero one");
        ipvs.flush().expect("flush");
        let after = assert_ipvsadm_agrees(netns, ipvs);
        assert!(after.is_empty(), "{after:?}");
    });
}

#[test]
fn kernel_refusals_say_what_was_being_done() {
    with_ipvs(|_, ipvs| {
        let web = Service::new(tcp("10.96.0.1", 80), "rr");
        ipvs.add_service(&web).expect("add");
        let masq = Destination::new(ip("10.0.0.5"), 80);
        ipvs.add_destination(&web.key, &masq).expect("add");

        let error = ipvs
            .add_destination(&web.key, &masq)
            .expect_err("duplicate");
        assert_eq!(error.errno(), Some(libc::EEXIST));
        assert_eq!(
            error.to_string(),
            "adding destination 10.0.0.5:80 to TCP 10.96.0.1:80: File exists (EEXIST)"
        );
        let error = ipvs.add_service(&web).expect_err("duplicate");
        assert_eq!(
            error.to_string(),
            "adding service TCP 10.96.0.1:80: File exists (EEXIST)"
        );
        let missing = Service::new(udp("fd00::9", 1), "rr");
        let error = ipvs.edit_service(&missing).expect_err("missing");
        assert_eq!(
            error.to_string(),
            "editing service UDP [fd00::9]:1: No such process (ESRCH)"
        );
        let error = ipvs
            .delete_destination(&web.key, ip("10.0.0.6"), 80)
            .expect_err("missing");
        assert_eq!(
            error.to_string(),
            "deleting destination 10.0.0.6:80 from TCP 10.96.0.1:80: No such file or directory (ENOENT)"
        );
        let error = ipvs
            .add_service(&Service::new(tcp("10.96.0.2", 80), "no-such-sched"))
            .expect_err("unknown scheduler");
        assert_eq!(error.errno(), Some(libc::ENOENT), "{error}");
        let error = ipvs
            .zero(Some(&fwmark(Family::V4, 7)))
            .expect_err("missing");
        assert_eq!(
            error.to_string(),
            "zeroing the counters of FWM 7 IPv4: No such process (ESRCH)"
        );
        ipvs.flush().expect("flush");
    });
}

#[test]
fn timeouts_are_set_and_read_back() {
    with_ipvs(|netns, ipvs| {
        let seconds = |s| Some(Duration::from_secs(s));
        ipvs.set_timeouts(&Timeouts {
            tcp: seconds(900),
            tcp_fin: seconds(120),
            udp: seconds(300),
        })
        .expect("set");
        // Only UDP: the others stay.
        ipvs.set_timeouts(&Timeouts {
            udp: seconds(60),
            ..Timeouts::default()
        })
        .expect("set");
        let timeouts = ipvs.timeouts().expect("get");
        assert_eq!(
            timeouts,
            Timeouts {
                tcp: seconds(900),
                tcp_fin: seconds(120),
                udp: seconds(60),
            }
        );
        if let Some(text) = ipvsadm(netns, &["-Ln", "--timeout"]) {
            assert_eq!(text.trim(), "Timeout (tcp tcpfin udp): 900 120 60");
        }
    });
}

#[test]
fn counters_count_the_connections_a_service_schedules() {
    with_ipvs(|netns, ipvs| {
        netns.ip(&["addr", "add", "10.96.0.2/32", "dev", "lo"]);
        let key = tcp("10.96.0.2", 80);
        ipvs.add_service(&Service::new(key, "rr")).expect("add");
        // Nothing listens there: each attempt is scheduled, then refused.
        ipvs.add_destination(&key, &Destination::new(ip("127.0.0.1"), 8000))
            .expect("add");
        let target = SocketAddr::new(ip("10.96.0.2"), 80);
        for _ in 0..3 {
            let _ = TcpStream::connect_timeout(&target, Duration::from_secs(2));
        }
        // The kernel's estimator folds per-CPU counters into what it reports every
        // two seconds.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let status = ipvs.service(&key).expect("get").expect("exists");
            if status.stats.connections >= 3 || Instant::now() > deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(status.stats.connections, 3, "{:?}", status.stats);
        assert!(status.stats.packets_in >= 3 && status.stats.bytes_in > 0);
        let destination = &status.destinations[0];
        assert_eq!(destination.stats.connections, 3);
        assert_eq!(
            destination.active_connections + destination.inactive_connections,
            3
        );
        if let Some(text) = ipvsadm(netns, &["-Ln", "--stats", "--exact"]) {
            let line = text
                .lines()
                .find(|l| l.starts_with("TCP"))
                .expect("service line");
            let numbers: Vec<u64> = line
                .split_whitespace()
                .skip(2)
                .map(|n| n.parse().expect("number"))
                .collect();
            let s = ipvs.service(&key).expect("get").expect("exists").stats;
            assert_eq!(
                numbers,
                [
                    s.connections,
                    s.packets_in,
                    s.packets_out,
                    s.bytes_in,
                    s.bytes_out
                ]
            );
        }
    });
}

#[test]
fn dumps_larger_than_one_datagram_are_read_whole() {
    with_ipvs(|netns, ipvs| {
        // About 320 bytes a service and 360 a destination: far more than the kernel
        // puts in one datagram.
        let keys: Vec<ServiceKey> = (0..400u32)
            .map(|i| tcp(&format!("10.97.{}.{}", i / 250, i % 250 + 1), 80))
            .collect();
        for key in &keys {
            ipvs.add_service(&Service::new(*key, "rr"))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let crowded = keys[0];
        for i in 0..300u32 {
            let address = IpAddr::from([10, 1, (i / 250) as u8, (i % 250 + 1) as u8]);
            ipvs.add_destination(&crowded, &Destination::new(address, 8080))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let services = assert_ipvsadm_agrees(netns, ipvs);
        let dumped: HashSet<ServiceKey> = services.iter().map(|s| s.service.key).collect();
        assert_eq!(dumped, keys.iter().copied().collect());
        assert_eq!(find(&services, &crowded).destinations.len(), 300);
        assert_eq!(ipvs.destinations(&crowded).expect("dump").len(), 300);
        ipvs.flush().expect("flush");
    });
}

//! Byte-exact tests of the IPVS messages against what `ipvsadm` sent to and received
//! from a real kernel (`testdata/ipvsadm.hex` says how they were captured).
//!
//! Requests that only name a service (destination commands, GET_SERVICE) differ from
//! ipvsadm's in one way, on purpose: ipvsadm sends the whole service there, with an
//! empty scheduler and zero flags, timeout and netmask, which the kernel ignores for
//! those commands; kubewire sends only the attributes that identify the service. For
//! those the test checks that kubewire's service attributes are the first ones of
//! ipvsadm's and that everything else is byte for byte the same.

use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    Emitable, NLA_F_NESTED, NLA_TYPE_MASK, NlasIterator, ParseableParametrized,
};
use netlink_packet_generic::GenlMessage;

use super::message::IpvsMessage;
use super::model::*;
use super::reply;

const CAPTURE: &str = include_str!("testdata/ipvsadm.hex");

fn fixture(name: &str) -> Vec<u8> {
    let hex = CAPTURE
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no fixture {name}"));
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The generic-netlink payload of a request: genlmsghdr and attributes.
fn payload(message: IpvsMessage) -> Vec<u8> {
    let genl = GenlMessage::from_payload(message);
    let mut bytes = vec![0; genl.buffer_len()];
    genl.emit(&mut bytes);
    bytes
}

fn parse(bytes: &[u8]) -> IpvsMessage {
    GenlMessage::<IpvsMessage>::parse_with_param(bytes, 32)
        .expect("parses")
        .payload
}

/// First-level attributes as (type with flags, value bytes).
fn attrs(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    NlasIterator::new(bytes)
        .map(|nla| {
            let nla = nla.expect("attribute");
            let kind = nla.kind() | if nla.nested_flag() { NLA_F_NESTED } else { 0 };
            (kind, nla.value().to_vec())
        })
        .collect()
}

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

/// Ours equals ipvsadm's but for the service nest, whose attributes are a prefix of
/// ipvsadm's (see the module doc).
fn assert_like_ipvsadm(ours: IpvsMessage, name: &str) {
    assert_identity_like_ipvsadm(ours, name, &[1]);
}

/// Ours equals ipvsadm's but for the nests of `identity_only` (attribute numbers),
/// whose attributes are a prefix of ipvsadm's.
fn assert_identity_like_ipvsadm(ours: IpvsMessage, name: &str, identity_only: &[u16]) {
    let ours = payload(ours);
    let theirs = fixture(name);
    assert_eq!(ours[..4], theirs[..4], "{name}: genlmsghdr");
    let (ours, theirs) = (attrs(&ours[4..]), attrs(&theirs[4..]));
    assert_eq!(ours.len(), theirs.len(), "{name}: first-level attributes");
    for ((our_kind, our_value), (their_kind, their_value)) in ours.iter().zip(&theirs) {
        assert_eq!(our_kind, their_kind, "{name}");
        if identity_only.contains(&(our_kind & NLA_TYPE_MASK)) {
            let (ours, theirs) = (attrs(our_value), attrs(their_value));
            assert!(!ours.is_empty(), "{name}: empty nest {our_kind:#x}");
            assert_eq!(ours, theirs[..ours.len()], "{name}: nest {our_kind:#x}");
        } else {
            assert_eq!(our_value, their_value, "{name}: attribute {our_kind:#x}");
        }
    }
}

#[test]
fn info_request_and_reply() {
    assert_eq!(payload(IpvsMessage::get_info()), fixture("get_info"));
    let info = reply::read_info(&parse(&fixture("info"))).expect("info");
    assert_eq!(
        info,
        Info {
            version: (1, 2, 1),
            connection_table_size: 4096,
        }
    );
}

#[test]
fn services_are_added_as_ipvsadm_adds_them() {
    let added = Service::new(tcp("10.96.0.1", 80), "rr");
    assert_eq!(
        payload(IpvsMessage::add_service(&added).expect("encodes")),
        fixture("add_service_tcp")
    );

    let edited = Service {
        flags: ServiceFlags {
            persistent: true,
            sched_fallback: true,
            sched_port: true,
            ..ServiceFlags::default()
        },
        timeout: 600,
        netmask: 24,
        ..Service::new(tcp("10.96.0.1", 80), "sh")
    };
    assert_eq!(
        payload(IpvsMessage::edit_service(&edited).expect("encodes")),
        fixture("edit_service_sh_persistent")
    );

    let udp6 = Service {
        flags: ServiceFlags {
            one_packet: true,
            ..ServiceFlags::default()
        },
        ..Service::new(
            ServiceKey::Address {
                protocol: Protocol::Udp,
                address: ip("fd00::1"),
                port: 53,
            },
            "wrr",
        )
    };
    assert_eq!(
        payload(IpvsMessage::add_service(&udp6).expect("encodes")),
        fixture("add_service_udp6_ops")
    );

    let fwmark = Service {
        flags: ServiceFlags {
            sched_fallback: true,
            sched_port: true,
            ..ServiceFlags::default()
        },
        ..Service::new(
            ServiceKey::Fwmark {
                family: Family::V4,
                mark: 42,
            },
            "mh",
        )
    };
    assert_eq!(
        payload(IpvsMessage::add_service(&fwmark).expect("encodes")),
        fixture("add_service_fwmark_mh")
    );

    let fwmark6 = Service {
        flags: ServiceFlags {
            persistent: true,
            // Only the kernel sets it: never sent.
            hashed: true,
            ..ServiceFlags::default()
        },
        timeout: 60,
        ..Service::new(
            ServiceKey::Fwmark {
                family: Family::V6,
                mark: 43,
            },
            "rr",
        )
    };
    assert_eq!(
        payload(IpvsMessage::add_service(&fwmark6).expect("encodes")),
        fixture("add_service_fwmark6_persistent")
    );
}

#[test]
fn services_are_named_deleted_and_dumped_as_ipvsadm_does() {
    let udp6 = ServiceKey::Address {
        protocol: Protocol::Udp,
        address: ip("fd00::1"),
        port: 53,
    };
    assert_like_ipvsadm(IpvsMessage::delete_service(&udp6), "delete_service_udp6");
    assert_like_ipvsadm(
        IpvsMessage::get_service(&tcp("1.2.3.4", 1)),
        "get_service_missing",
    );
    assert_eq!(
        payload(IpvsMessage::dump_services()),
        fixture("dump_services")
    );
    // GET_DEST dumps: ipvsadm names the service by its identity only, as we do.
    let keys = [
        tcp("10.96.0.1", 80),
        tcp("10.96.0.2", 80),
        udp6,
        ServiceKey::Fwmark {
            family: Family::V4,
            mark: 42,
        },
        ServiceKey::Fwmark {
            family: Family::V6,
            mark: 43,
        },
    ];
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            payload(IpvsMessage::dump_destinations(key)),
            fixture(&format!("dump_dests_{i}")),
            "{key}"
        );
    }
    assert_eq!(payload(IpvsMessage::zero(None)), fixture("zero"));
    assert_eq!(payload(IpvsMessage::flush()), fixture("flush"));
}

#[test]
fn destinations_are_sent_as_ipvsadm_sends_them() {
    let service = tcp("10.96.0.1", 80);
    let masq = Destination {
        weight: 3,
        ..Destination::new(ip("10.0.0.5"), 8080)
    };
    assert_like_ipvsadm(
        IpvsMessage::add_destination(&service, &masq),
        "add_dest_masq",
    );
    let routed = Destination {
        forward: ForwardMethod::Route,
        weight: 5,
        upper_threshold: 100,
        lower_threshold: 10,
        ..Destination::new(ip("10.0.0.5"), 80)
    };
    assert_like_ipvsadm(
        IpvsMessage::edit_destination(&service, &routed),
        "edit_dest_route",
    );
    // ipvsadm sends the whole destination to delete it too (the kernel reads only its
    // family, address and port); we send those three.
    assert_identity_like_ipvsadm(
        IpvsMessage::delete_destination(&service, ip("10.0.0.5"), 8080),
        "delete_dest",
        &[1, 2],
    );

    let udp6 = ServiceKey::Address {
        protocol: Protocol::Udp,
        address: ip("fd00::1"),
        port: 53,
    };
    let v6 = Destination {
        weight: 2,
        ..Destination::new(ip("fd00::10"), 5353)
    };
    assert_like_ipvsadm(IpvsMessage::add_destination(&udp6, &v6), "add_dest6_masq");

    let mark42 = ServiceKey::Fwmark {
        family: Family::V4,
        mark: 42,
    };
    let ipip = Destination {
        forward: ForwardMethod::Tunnel(Tunnel::default()),
        ..Destination::new(ip("10.0.0.7"), 0)
    };
    assert_like_ipvsadm(
        IpvsMessage::add_destination(&mark42, &ipip),
        "add_dest_ipip",
    );
    let gre = Destination {
        forward: ForwardMethod::Tunnel(Tunnel {
            kind: TunnelType::Gre,
            port: 0,
            checksum: TunnelChecksum::Checksum,
        }),
        ..Destination::new(ip("10.0.0.8"), 0)
    };
    assert_like_ipvsadm(
        IpvsMessage::add_destination(&mark42, &gre),
        "add_dest_gre_csum",
    );
    let gue = Destination {
        forward: ForwardMethod::Tunnel(Tunnel {
            kind: TunnelType::Gue,
            port: 6080,
            checksum: TunnelChecksum::None,
        }),
        ..Destination::new(ip("fd00::20"), 0)
    };
    let mark43 = ServiceKey::Fwmark {
        family: Family::V6,
        mark: 43,
    };
    assert_like_ipvsadm(IpvsMessage::add_destination(&mark43, &gue), "add_dest6_gue");
}

#[test]
fn timeouts_are_set_and_read() {
    let timeouts = Timeouts {
        tcp: Some(Duration::from_secs(900)),
        tcp_fin: Some(Duration::from_secs(120)),
        udp: Some(Duration::from_secs(300)),
    };
    assert_eq!(
        payload(IpvsMessage::set_timeouts(&timeouts)),
        fixture("set_config")
    );
    assert_eq!(payload(IpvsMessage::get_timeouts()), fixture("get_config"));
    assert_eq!(
        reply::read_timeouts(&parse(&fixture("config"))).expect("timeouts"),
        timeouts
    );
    // Unset timeouts are left out, so the kernel keeps them.
    let udp_only = Timeouts {
        udp: Some(Duration::from_secs(300)),
        ..Timeouts::default()
    };
    assert_eq!(
        payload(IpvsMessage::set_timeouts(&udp_only)),
        [0x0c, 1, 0, 0, 8, 0, 6, 0, 0x2c, 1, 0, 0]
    );
}

#[test]
fn dumped_services_are_read_with_flags_persistence_and_counters() {
    let read = |name: &str| reply::read_service(&parse(&fixture(name))).expect(name);
    let hashed = ServiceFlags {
        hashed: true,
        ..ServiceFlags::default()
    };

    let (service, stats) = read("service_0");
    assert_eq!(
        service,
        Service {
            flags: hashed,
            ..Service::new(tcp("10.96.0.2", 80), "rr")
        }
    );
    assert_eq!(
        (
            stats.connections,
            stats.packets_in,
            stats.packets_out,
            stats.bytes_in,
            stats.bytes_out
        ),
        (3, 3, 3, 180, 120)
    );

    let (service, stats) = read("service_1");
    assert_eq!(
        service,
        Service {
            flags: ServiceFlags {
                persistent: true,
                hashed: true,
                sched_fallback: true,
                sched_port: true,
                ..ServiceFlags::default()
            },
            timeout: 600,
            netmask: 24,
            ..Service::new(tcp("10.96.0.1", 80), "sh")
        }
    );
    assert_eq!(stats, Stats::default());

    let (service, _) = read("service_2");
    assert_eq!(
        service,
        Service {
            flags: ServiceFlags {
                one_packet: true,
                ..hashed
            },
            ..Service::new(
                ServiceKey::Address {
                    protocol: Protocol::Udp,
                    address: ip("fd00::1"),
                    port: 53,
                },
                "wrr"
            )
        }
    );

    let (service, _) = read("service_3");
    assert_eq!(
        service,
        Service {
            flags: ServiceFlags {
                sched_fallback: true,
                sched_port: true,
                ..hashed
            },
            ..Service::new(
                ServiceKey::Fwmark {
                    family: Family::V4,
                    mark: 42
                },
                "mh"
            )
        }
    );

    let (service, _) = read("service_4");
    assert_eq!(
        service,
        Service {
            flags: ServiceFlags {
                persistent: true,
                ..hashed
            },
            timeout: 60,
            ..Service::new(
                ServiceKey::Fwmark {
                    family: Family::V6,
                    mark: 43
                },
                "rr"
            )
        }
    );
}

#[test]
fn dumped_destinations_are_read_with_connections_and_tunnels() {
    let read =
        |name: &str, family| reply::read_destination(&parse(&fixture(name)), family).expect(name);

    let status = read("dest_0_0", Family::V4);
    assert_eq!(
        status.destination,
        Destination {
            weight: 3,
            ..Destination::new(ip("10.0.0.5"), 8080)
        }
    );

    let status = read("dest_1_0", Family::V4);
    assert_eq!(status.destination, Destination::new(ip("127.0.0.1"), 8000));
    assert_eq!(
        (
            status.active_connections,
            status.inactive_connections,
            status.persistent_connections
        ),
        (0, 3, 0)
    );
    assert_eq!(
        (
            status.stats.connections,
            status.stats.packets_in,
            status.stats.bytes_in,
            status.stats.bytes_out
        ),
        (3, 3, 180, 120)
    );

    let status = read("dest_2_0", Family::V6);
    assert_eq!(
        status.destination,
        Destination {
            weight: 2,
            ..Destination::new(ip("fd00::10"), 5353)
        }
    );

    let status = read("dest_3_0", Family::V4);
    assert_eq!(
        status.destination.forward,
        ForwardMethod::Tunnel(Tunnel {
            kind: TunnelType::Gre,
            port: 0,
            checksum: TunnelChecksum::Checksum,
        })
    );
    assert_eq!(status.destination.address, ip("10.0.0.8"));
    let status = read("dest_3_1", Family::V4);
    assert_eq!(
        status.destination.forward,
        ForwardMethod::Tunnel(Tunnel::default())
    );

    let status = read("dest_4_0", Family::V6);
    assert_eq!(
        status.destination,
        Destination {
            forward: ForwardMethod::Tunnel(Tunnel {
                kind: TunnelType::Gue,
                port: 6080,
                checksum: TunnelChecksum::None,
            }),
            ..Destination::new(ip("fd00::20"), 0)
        }
    );
}

#[test]
fn counters_come_from_the_32_bit_nest_on_kernels_without_the_64_bit_one() {
    let full = parse(&fixture("service_0"));
    let (_, stats64) = reply::read_service(&full).expect("reads");
    // Drop IPVS_SVC_ATTR_STATS64 (12) from the service nest.
    let nest = match &full.attrs[0] {
        super::attr::Attr::Value(_, value) => value.clone(),
        other => panic!("unexpected {other:?}"),
    };
    let mut without = Vec::new();
    for (kind, value) in attrs(&nest) {
        if kind != 12 {
            let nla = super::attr::Attr::Value(kind, value);
            let mut bytes = vec![0; nla.buffer_len()];
            nla.emit(&mut bytes);
            without.extend(bytes);
        }
    }
    let old = IpvsMessage {
        command: full.command,
        attrs: vec![super::attr::Attr::Value(1, without)],
    };
    let (_, stats32) = reply::read_service(&old).expect("reads");
    assert_eq!(stats32, stats64);
}

/// A received service nest with one attribute replaced (or removed).
fn service_with(kind: u16, value: Option<Vec<u8>>) -> IpvsMessage {
    let full = parse(&fixture("service_1"));
    let nest = match &full.attrs[0] {
        super::attr::Attr::Value(_, value) => value.clone(),
        other => panic!("unexpected {other:?}"),
    };
    let mut changed = Vec::new();
    for (k, v) in attrs(&nest) {
        let v = if k == kind {
            match &value {
                Some(value) => value.clone(),
                None => continue,
            }
        } else {
            v
        };
        let nla = super::attr::Attr::Value(k, v);
        let mut bytes = vec![0; nla.buffer_len()];
        nla.emit(&mut bytes);
        changed.extend(bytes);
    }
    IpvsMessage {
        command: full.command,
        attrs: vec![super::attr::Attr::Value(1, changed)],
    }
}

#[test]
fn malformed_attributes_are_errors_that_name_them() {
    let error = |message: IpvsMessage| {
        reply::read_service(&message)
            .expect_err("malformed")
            .to_string()
    };
    assert_eq!(
        error(service_with(4, Some(vec![0, 80, 0]))),
        "IPVS_SVC_ATTR_PORT: 3 bytes, expected 2"
    );
    assert_eq!(error(service_with(1, None)), "IPVS_SVC_ATTR_AF missing");
    assert_eq!(
        error(service_with(1, Some(7u16.to_ne_bytes().to_vec()))),
        "IPVS_SVC_ATTR_AF: unknown address family 7"
    );
    assert_eq!(
        error(service_with(3, Some(vec![10, 96, 0, 1]))),
        "IPVS_SVC_ATTR_ADDR: 4 bytes, expected 16"
    );
    assert_eq!(
        error(service_with(9, Some(vec![255, 0, 255, 0]))),
        "IPVS_SVC_ATTR_NETMASK: 255.0.255.0 is not a contiguous netmask"
    );
    assert_eq!(
        error(service_with(7, Some(vec![0; 4]))),
        "IPVS_SVC_ATTR_FLAGS: 4 bytes, expected 8"
    );
    assert_eq!(
        error(service_with(2, Some(50u16.to_ne_bytes().to_vec()))),
        "IPVS_SVC_ATTR_PROTOCOL: unknown protocol 50"
    );
    // A nested attribute whose length runs past its nest.
    let mut truncated = service_with(0, None);
    if let super::attr::Attr::Value(_, nest) = &mut truncated.attrs[0] {
        nest[0] = 0xff;
    }
    assert!(error(truncated).starts_with("IPVS_CMD_ATTR_SERVICE: "));
    // No service at all.
    let empty = IpvsMessage {
        command: super::message::Command::NewService,
        attrs: Vec::new(),
    };
    assert_eq!(error(empty), "IPVS_CMD_ATTR_SERVICE missing");
}

#[test]
fn model_values_the_kernel_cannot_take_are_refused_before_sending() {
    let long = Service::new(tcp("10.96.0.1", 80), "a-scheduler-name-too-long");
    assert!(IpvsMessage::add_service(&long).is_err());
    let wide = Service {
        netmask: 33,
        ..Service::new(tcp("10.96.0.1", 80), "rr")
    };
    assert_eq!(
        IpvsMessage::add_service(&wide)
            .expect_err("refused")
            .to_string(),
        "netmask /33 is longer than an IPv4 address"
    );
}

#[test]
fn services_and_destinations_read_as_ipvsadm_names_them() {
    assert_eq!(tcp("10.96.0.1", 80).to_string(), "TCP 10.96.0.1:80");
    let udp6 = ServiceKey::Address {
        protocol: Protocol::Udp,
        address: ip("fd00::1"),
        port: 53,
    };
    assert_eq!(udp6.to_string(), "UDP [fd00::1]:53");
    let mark = ServiceKey::Fwmark {
        family: Family::V6,
        mark: 43,
    };
    assert_eq!(mark.to_string(), "FWM 43 IPv6");
    assert_eq!(
        Destination::new(ip("fd00::10"), 5353).to_string(),
        "[fd00::10]:5353"
    );
}

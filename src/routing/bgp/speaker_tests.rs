//! Two speakers on loopback addresses (no root needed): sessions come up, routes
//! flow both ways with the rewriting export policy asks for, and withdrawals and
//! shutdowns reach the other side.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::super::config::{Backoff, Families, PeerConfig, SpeakerConfig};
use super::*;

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

/// A free TCP port on `addr` (bound and released; good enough for a test).
fn free_port(addr: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn speaker(asn: u32, me: Ipv4Addr, port: u16, peer: PeerConfig) -> SpeakerConfig {
    let mut config = SpeakerConfig::new(asn, me);
    config.listen = vec![SocketAddr::new(IpAddr::V4(me), port)];
    config.hold_time = 9;
    config.connect_retry = Duration::from_secs(1);
    config.backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    config.peers = vec![peer];
    config
}

fn peer(addr: Ipv4Addr, asn: u32, port: u16, me: Ipv4Addr) -> PeerConfig {
    let mut p = PeerConfig::new(IpAddr::V4(addr), asn);
    p.port = port;
    p.local_address = Some(IpAddr::V4(me));
    p.families = Families::IPV4;
    p
}

async fn wait_established(handle: &SpeakerHandle) -> Vec<PeerStatus> {
    for _ in 0..100 {
        let peers = handle.peers().await;
        if peers.iter().all(|p| p.state == State::Established) {
            return peers;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not established: {:?}", handle.peers().await)
}

async fn next_event(events: &mut UnboundedReceiver<RouteEvent>) -> RouteEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10s")
        .expect("speaker running")
}

/// A (4-byte AS 4200000001, 127.0.0.11) and B (AS 65002, 127.0.0.12), eBGP.
async fn pair(
    password_a: Option<&str>,
    password_b: Option<&str>,
) -> (SpeakerHandle, SpeakerHandle) {
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12));
    let (port_a, port_b) = (free_port(a), free_port(b));
    let mut pa = peer(b, 65002, port_b, a);
    pa.password = password_a.map(str::to_string);
    pa.export.communities = vec![(65001 << 16) | 7];
    pa.export.prepend = 1;
    let mut pb = peer(a, 4_200_000_001, port_a, b);
    pb.password = password_b.map(str::to_string);
    let sa = Speaker::start(speaker(4_200_000_001, a, port_a, pa))
        .await
        .expect("A starts");
    let sb = Speaker::start(speaker(65002, b, port_b, pb))
        .await
        .expect("B starts");
    (sa, sb)
}

#[tokio::test]
async fn two_speakers_exchange_routes() {
    let (sa, sb) = pair(Some("s3cret"), Some("s3cret")).await;
    let mut events_b = sb.subscribe();
    let mut events_a = sa.subscribe();
    let peers = wait_established(&sa).await;
    assert_eq!(peers[0].asn, 65002);
    wait_established(&sb).await;

    sa.announce(net("10.10.0.0/24"), None, RouteAttrs::default());
    let RouteEvent::Learned {
        prefix,
        peer,
        next_hop,
        as_path,
        communities,
    } = next_event(&mut events_b).await
    else {
        panic!("expected a learned route")
    };
    assert_eq!(prefix, net("10.10.0.0/24"));
    assert_eq!(peer, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)));
    assert_eq!(next_hop, NextHop::V4(Ipv4Addr::new(127, 0, 0, 11)));
    assert_eq!(
        as_path,
        vec![AsSegment {
            set: false,
            asns: vec![4_200_000_001, 4_200_000_001]
        }]
    );
    assert_eq!(communities, vec![(65001 << 16) | 7]);

    sb.announce(
        net("10.20.0.0/24"),
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 99))),
        RouteAttrs::default(),
    );
    let RouteEvent::Learned {
        prefix, next_hop, ..
    } = next_event(&mut events_a).await
    else {
        panic!("expected a learned route")
    };
    assert_eq!(prefix, net("10.20.0.0/24"));
    assert_eq!(next_hop, NextHop::V4(Ipv4Addr::new(127, 0, 0, 99)));

    let status = sa.peers().await;
    assert_eq!(
        (
            status[0].prefixes_received,
            status[0].prefixes_accepted,
            status[0].prefixes_advertised
        ),
        (1, 1, 1)
    );
    assert!(status[0].uptime.is_some());

    sa.withdraw(net("10.10.0.0/24"));
    assert_eq!(
        next_event(&mut events_b).await,
        RouteEvent::Withdrawn {
            prefix: net("10.10.0.0/24")
        }
    );

    // A goes away: B loses A's routes (none left) and the session.
    sa.announce(net("10.11.0.0/24"), None, RouteAttrs::default());
    assert!(matches!(
        next_event(&mut events_b).await,
        RouteEvent::Learned { .. }
    ));
    sa.shutdown().await;
    assert_eq!(
        next_event(&mut events_b).await,
        RouteEvent::Withdrawn {
            prefix: net("10.11.0.0/24")
        }
    );
    assert_ne!(sb.peers().await[0].state, State::Established);
    sb.shutdown().await;
}

#[tokio::test]
async fn wrong_md5_password_keeps_the_session_down() {
    let (sa, sb) = pair(Some("right"), Some("wrong")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for handle in [&sa, &sb] {
        let peers = handle.peers().await;
        assert!(
            !matches!(
                peers[0].state,
                State::Established | State::OpenConfirm | State::OpenSent
            ),
            "{peers:?}"
        );
    }
    sa.shutdown().await;
    sb.shutdown().await;
}

mod raw_neighbour {
    //! A neighbour driven by hand over a real socket: what the speaker answers to
    //! malformed input and to a route refresh.

    use super::*;
    use crate::routing::bgp::message::{
        HEADER_LEN, LocalOpen, decode, encode, frame_length, notification_code, open_message,
    };
    use netgauze_bgp_pkt::BgpMessage;
    use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
    use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress};
    use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
    use netgauze_bgp_pkt::update::BgpUpdateMessage;
    use netgauze_iana::address_family::AddressType;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    const SPEAKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);
    const NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);

    async fn read_msg(stream: &mut TcpStream) -> Option<BgpMessage> {
        let mut header = [0u8; HEADER_LEN];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header))
            .await
            .expect("a message within 10s")
            .ok()?;
        let mut frame = header.to_vec();
        frame.resize(frame_length(&header).expect("valid header"), 0);
        stream.read_exact(&mut frame[HEADER_LEN..]).await.ok()?;
        Some(decode(&frame, true).expect("valid message"))
    }

    /// Reads until a message that is not a KEEPALIVE.
    async fn read_non_keepalive(stream: &mut TcpStream) -> Option<BgpMessage> {
        loop {
            match read_msg(stream).await? {
                BgpMessage::KeepAlive => continue,
                msg => return Some(msg),
            }
        }
    }

    async fn send(stream: &mut TcpStream, msg: &BgpMessage) {
        let bytes = encode(msg).expect("encodes");
        stream.write_all(&bytes).await.expect("write");
    }

    /// An established session to the speaker, connecting until it accepts (after a
    /// failure it waits out its restart backoff in Idle, refusing connections).
    async fn established(port: u16) -> TcpStream {
        for _ in 0..50 {
            let socket = TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::new(IpAddr::V4(NEIGHBOUR), 0))
                .expect("bind");
            let Ok(mut stream) = socket
                .connect(SocketAddr::new(IpAddr::V4(SPEAKER), port))
                .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if !matches!(read_msg(&mut stream).await, Some(BgpMessage::Open(_))) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let open = open_message(&LocalOpen {
                asn: 65022,
                router_id: NEIGHBOUR,
                hold_time: 9,
                families: Families::IPV4,
                graceful_restart: None,
            });
            send(&mut stream, &open).await;
            send(&mut stream, &BgpMessage::KeepAlive).await;
            assert_eq!(read_msg(&mut stream).await, Some(BgpMessage::KeepAlive));
            // Nothing announced yet: the first UPDATE is the End-of-RIB.
            assert_eq!(
                read_non_keepalive(&mut stream).await,
                Some(BgpMessage::Update(BgpUpdateMessage::new(
                    vec![],
                    vec![],
                    vec![]
                ))),
                "End-of-RIB after the (empty) initial routes"
            );
            return stream;
        }
        panic!("the speaker did not accept the neighbour within 5s")
    }

    async fn start() -> (SpeakerHandle, u16) {
        let port = free_port(SPEAKER);
        let mut p = peer(NEIGHBOUR, 65022, 179, SPEAKER);
        p.passive = true;
        let handle = Speaker::start(speaker(65021, SPEAKER, port, p))
            .await
            .expect("starts");
        (handle, port)
    }

    /// The NOTIFICATION the speaker sends, then the close.
    async fn notification(stream: &mut TcpStream) -> (u8, u8) {
        let Some(BgpMessage::Notification(n)) = read_non_keepalive(stream).await else {
            panic!("no NOTIFICATION")
        };
        assert_eq!(read_msg(stream).await, None, "connection closed after it");
        notification_code(&n)
    }

    #[tokio::test]
    async fn malformed_input_gets_notifications_and_the_session_recovers() {
        let (handle, port) = start().await;

        // A broken marker.
        let mut stream = established(port).await;
        let mut bad = encode(&BgpMessage::KeepAlive).expect("encodes");
        bad[3] = 0;
        stream.write_all(&bad).await.expect("write");
        assert_eq!(notification(&mut stream).await, (1, 1));

        // A length beyond 4096.
        let mut stream = established(port).await;
        let mut bad = encode(&BgpMessage::KeepAlive).expect("encodes");
        bad[16] = 0x20;
        stream.write_all(&bad).await.expect("write");
        assert_eq!(notification(&mut stream).await, (1, 2));

        // An UPDATE announcing a prefix without any attribute.
        let mut stream = established(port).await;
        let nlri = vec![Ipv4UnicastAddress::new_no_path_id(
            Ipv4Unicast::from_net("10.1.0.0/24".parse().expect("net")).expect("unicast"),
        )];
        send(
            &mut stream,
            &BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![], nlri)),
        )
        .await;
        assert_eq!(notification(&mut stream).await, (3, 3));

        // A body cut short: an UPDATE whose attribute length overruns the message.
        let mut stream = established(port).await;
        let mut bad = vec![0xff; 16];
        bad.extend_from_slice(&[0, 27, 2, 0, 0, 0, 200, 64, 1, 1, 0]);
        while bad.len() < 27 {
            bad.push(0);
        }
        stream.write_all(&bad).await.expect("write");
        assert_eq!(notification(&mut stream).await.0, 3);

        // The speaker lives on and takes the neighbour back.
        let _stream = established(port).await;
        let peers = handle.peers().await;
        assert_eq!(peers[0].state, State::Established, "{peers:?}");
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn route_refresh_is_answered_with_adj_rib_out() {
        let (handle, port) = start().await;
        let mut stream = established(port).await;
        handle.announce(net("10.77.0.0/24"), None, RouteAttrs::default());
        let Some(BgpMessage::Update(first)) = read_non_keepalive(&mut stream).await else {
            panic!("no UPDATE")
        };
        assert_eq!(first.nlri().len(), 1);
        send(
            &mut stream,
            &BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
                AddressType::Ipv4Unicast,
                RouteRefreshSubcode::NormalRequest,
            )),
        )
        .await;
        let Some(BgpMessage::Update(again)) = read_non_keepalive(&mut stream).await else {
            panic!("no UPDATE after ROUTE-REFRESH")
        };
        assert_eq!(again, first);
        handle.shutdown().await;
        // Shutdown says goodbye with Cease / administrative shutdown.
        assert_eq!(notification(&mut stream).await, (6, 2));
    }
}

/// More announcements than the speaker takes in one burst (10 000): none is lost.
#[tokio::test]
async fn twelve_thousand_routes_cross_in_split_updates() {
    let (sa, sb) = pair(None, None).await;
    let mut events_b = sb.subscribe();
    wait_established(&sa).await;
    let prefixes: Vec<IpNet> = (0..12_000u32)
        .map(|i| {
            IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).expect("prefix"),
            )
        })
        .collect();
    let started = std::time::Instant::now();
    for p in &prefixes {
        sa.announce(*p, None, RouteAttrs::default());
    }
    let mut learned = std::collections::HashSet::new();
    while learned.len() < prefixes.len() {
        if let RouteEvent::Learned { prefix, .. } = next_event(&mut events_b).await {
            learned.insert(prefix);
        }
    }
    println!("12000 routes learned in {:?}", started.elapsed());
    let status = sb.peers().await;
    assert_eq!(status[0].prefixes_accepted, 12_000);
    sa.shutdown().await;
    sb.shutdown().await;
}

/// Neighbours change while the speaker runs: one added later comes up and gets
/// the routes; removed, its routes are withdrawn on the other side's behalf.
#[tokio::test]
async fn peers_added_and_removed_at_run_time() {
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 21), Ipv4Addr::new(127, 0, 0, 22));
    let (port_a, port_b) = (free_port(a), free_port(b));
    let mut config_a = speaker(65031, a, port_a, peer(b, 65032, port_b, a));
    config_a.peers.clear();
    let sa = Speaker::start(config_a).await.expect("A starts");
    let sb = Speaker::start(speaker(65032, b, port_b, peer(a, 65031, port_a, b)))
        .await
        .expect("B starts");
    let mut events_b = sb.subscribe();
    sa.announce(net("10.31.0.0/24"), None, RouteAttrs::default());
    assert!(sa.peers().await.is_empty());

    sa.set_peers(vec![peer(b, 65032, port_b, a)]);
    wait_established(&sa).await;
    let RouteEvent::Learned { prefix, .. } = next_event(&mut events_b).await else {
        panic!("expected a learned route")
    };
    assert_eq!(prefix, net("10.31.0.0/24"));

    sa.set_peers(vec![]);
    assert_eq!(
        next_event(&mut events_b).await,
        RouteEvent::Withdrawn {
            prefix: net("10.31.0.0/24")
        }
    );
    assert!(sa.peers().await.is_empty());
    sa.shutdown().await;
    sb.shutdown().await;
}

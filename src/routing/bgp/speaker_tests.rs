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

//! Transition tables for the session state machine: each test drives it with events
//! and checks the state reached and the actions asked for.

use std::net::Ipv4Addr;
use std::time::Duration;

use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
use netgauze_bgp_pkt::open::BgpOpenMessage;
use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_iana::address_family::AddressType;

use super::super::config::{Backoff, Families};
use super::super::message::{LocalOpen, notification_code, open_message};
use super::*;

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const LOCAL_AS: u32 = 65000;
const PEER_AS: u32 = 4_200_000_001;

fn config(peer_asn: u32, passive: bool) -> FsmConfig {
    FsmConfig {
        local: LocalOpen {
            asn: LOCAL_AS,
            router_id: LOCAL_ID,
            hold_time: 90,
            families: Families::BOTH,
            graceful_restart: None,
        },
        peer_asn,
        passive,
        connect_retry: Duration::from_secs(5),
        backoff: Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        },
    }
}

fn peer_open(asn: u32, id: [u8; 4], hold: u16) -> BgpMessage {
    open_message(&LocalOpen {
        asn,
        router_id: Ipv4Addr::from(id),
        hold_time: hold,
        families: Families::BOTH,
        graceful_restart: None,
    })
}

/// NOTIFICATION codes sent, in order.
fn sent_codes(actions: &[Action]) -> Vec<(ConnId, (u8, u8))> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                conn,
                msg: BgpMessage::Notification(n),
            } => Some((*conn, notification_code(n))),
            _ => None,
        })
        .collect()
}

fn closed(actions: &[Action]) -> Vec<ConnId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { conn } => Some(*conn),
            _ => None,
        })
        .collect()
}

fn started(actions: &[Action], timer: Timer) -> Option<Duration> {
    actions.iter().rev().find_map(|a| match a {
        Action::StartTimer(t, d) if *t == timer => Some(*d),
        _ => None,
    })
}

/// An active FSM in OpenSent on connection 1.
fn open_sent(peer_asn: u32) -> Fsm {
    let mut fsm = Fsm::new(config(peer_asn, false));
    fsm.handle(Event::Start);
    fsm.handle(Event::Connected {
        conn: 1,
        direction: Direction::Outbound,
    });
    assert_eq!(fsm.state(), State::OpenSent);
    fsm
}

fn established() -> Fsm {
    let mut fsm = open_sent(PEER_AS);
    fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 30),
    });
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::KeepAlive,
    });
    assert!(matches!(
        actions.last(),
        Some(Action::Established { conn: 1, .. })
    ));
    assert_eq!(fsm.state(), State::Established);
    fsm
}

#[test]
fn active_start_connects() {
    let mut fsm = Fsm::new(config(PEER_AS, false));
    assert_eq!(fsm.state(), State::Idle);
    let actions = fsm.handle(Event::Start);
    assert_eq!(
        actions,
        vec![
            Action::StopTimer(Timer::IdleHold),
            Action::Connect,
            Action::StartTimer(Timer::ConnectRetry, Duration::from_secs(5)),
        ]
    );
    assert_eq!(fsm.state(), State::Connect);
    // A second Start changes nothing.
    assert!(fsm.handle(Event::Start).is_empty());
}

#[test]
fn passive_start_waits_and_never_connects() {
    let mut fsm = Fsm::new(config(PEER_AS, true));
    assert_eq!(
        fsm.handle(Event::Start),
        vec![Action::StopTimer(Timer::IdleHold)]
    );
    assert_eq!(fsm.state(), State::Active);
    assert!(
        fsm.handle(Event::TimerExpired(Timer::ConnectRetry))
            .is_empty()
    );
    assert_eq!(fsm.state(), State::Active);
    let actions = fsm.handle(Event::Connected {
        conn: 7,
        direction: Direction::Inbound,
    });
    assert_eq!(fsm.state(), State::OpenSent);
    assert!(matches!(
        &actions[1],
        Action::Send {
            conn: 7,
            msg: BgpMessage::Open(_)
        }
    ));
}

#[test]
fn failed_connect_retries_on_timer() {
    let mut fsm = Fsm::new(config(PEER_AS, false));
    fsm.handle(Event::Start);
    let actions = fsm.handle(Event::ConnectFailed);
    assert_eq!(fsm.state(), State::Active);
    assert_eq!(
        actions,
        vec![Action::StartTimer(
            Timer::ConnectRetry,
            Duration::from_secs(5)
        )]
    );
    let actions = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert_eq!(fsm.state(), State::Connect);
    assert_eq!(actions[0], Action::Connect);
    // The retry timer firing while still connecting starts a fresh attempt.
    let actions = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert_eq!(actions[0], Action::Connect);
    assert_eq!(fsm.state(), State::Connect);
}

#[test]
fn connected_sends_open_with_long_hold_timer() {
    let mut fsm = Fsm::new(config(PEER_AS, false));
    fsm.handle(Event::Start);
    let actions = fsm.handle(Event::Connected {
        conn: 1,
        direction: Direction::Outbound,
    });
    assert_eq!(actions[0], Action::StopTimer(Timer::ConnectRetry));
    let Action::Send {
        conn: 1,
        msg: BgpMessage::Open(open),
    } = &actions[1]
    else {
        panic!("no OPEN: {actions:?}")
    };
    assert_eq!(open.my_asn4(), LOCAL_AS);
    assert_eq!(open.hold_time(), 90);
    assert_eq!(open.bgp_id(), LOCAL_ID);
    assert_eq!(started(&actions, Timer::Hold), Some(OPEN_HOLD_TIME));
}

#[test]
fn handshake_negotiates_smaller_hold_time_and_4_byte_as() {
    let mut fsm = open_sent(PEER_AS);
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 30),
    });
    assert_eq!(fsm.state(), State::OpenConfirm);
    assert_eq!(
        actions,
        vec![
            Action::Send {
                conn: 1,
                msg: BgpMessage::KeepAlive
            },
            Action::StartTimer(Timer::Hold, Duration::from_secs(30)),
            Action::StartTimer(Timer::Keepalive, Duration::from_secs(10)),
        ]
    );
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::KeepAlive,
    });
    let Some(Action::Established { conn: 1, session }) = actions.last() else {
        panic!("not established: {actions:?}")
    };
    assert_eq!(session.hold_time, 30);
    assert_eq!(session.keepalive, 10);
    assert_eq!(session.peer.asn, PEER_AS);
    assert!(session.asn4 && session.route_refresh);
    assert_eq!(session.families, Families::BOTH);
    assert_eq!(
        started(&actions, Timer::Hold),
        Some(Duration::from_secs(30))
    );
}

#[test]
fn hold_time_zero_disables_timers() {
    let mut fsm = open_sent(PEER_AS);
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 0),
    });
    assert_eq!(started(&actions, Timer::Hold), None);
    assert!(actions.contains(&Action::StopTimer(Timer::Hold)));
    assert!(actions.contains(&Action::StopTimer(Timer::Keepalive)));
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::KeepAlive,
    });
    assert_eq!(started(&actions, Timer::Hold), None);
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn peer_without_multiprotocol_gets_ipv4_only() {
    let mut fsm = open_sent(65001);
    let open = BgpOpenMessage::new(65001, 90, Ipv4Addr::new(10, 0, 0, 9), vec![]);
    fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::Open(open),
    });
    let session = fsm.session().expect("negotiated");
    assert_eq!(session.families, Families::IPV4);
    assert!(!session.asn4 && !session.route_refresh);
}

#[test]
fn bad_opens_get_open_message_errors() {
    let cases: Vec<(&str, u32, BgpMessage, (u8, u8))> = vec![
        (
            "wrong AS",
            PEER_AS,
            peer_open(65009, [10, 0, 0, 9], 90),
            (2, 2),
        ),
        (
            "2-byte AS_TRANS without the capability",
            PEER_AS,
            BgpMessage::Open(BgpOpenMessage::new(
                23456,
                90,
                Ipv4Addr::new(10, 0, 0, 9),
                vec![],
            )),
            (2, 2),
        ),
        (
            "hold time 2",
            PEER_AS,
            peer_open(PEER_AS, [10, 0, 0, 9], 2),
            (2, 6),
        ),
        (
            "BGP id 0.0.0.0",
            PEER_AS,
            peer_open(PEER_AS, [0, 0, 0, 0], 90),
            (2, 3),
        ),
        (
            "iBGP with our BGP id",
            LOCAL_AS,
            peer_open(LOCAL_AS, LOCAL_ID.octets(), 90),
            (2, 3),
        ),
    ];
    for (name, peer_asn, msg, code) in cases {
        let mut fsm = open_sent(peer_asn);
        let actions = fsm.handle(Event::Received { conn: 1, msg });
        assert_eq!(sent_codes(&actions), vec![(1, code)], "{name}");
        assert_eq!(closed(&actions), vec![1], "{name}");
        assert_eq!(fsm.state(), State::Idle, "{name}");
        assert_eq!(
            started(&actions, Timer::IdleHold),
            Some(Duration::from_secs(1)),
            "{name}"
        );
        assert!(!actions.contains(&Action::Down), "{name}");
    }
    // eBGP with our own BGP id is allowed (RFC 6286 only forbids it inside an AS).
    let mut fsm = open_sent(PEER_AS);
    fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, LOCAL_ID.octets(), 90),
    });
    assert_eq!(fsm.state(), State::OpenConfirm);
}

#[test]
fn unexpected_messages_get_fsm_errors() {
    // KEEPALIVE before OPEN.
    let mut fsm = open_sent(PEER_AS);
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::KeepAlive,
    });
    assert_eq!(sent_codes(&actions), vec![(1, (5, 1))]);
    assert_eq!(fsm.state(), State::Idle);
    // UPDATE in OpenConfirm.
    let mut fsm = open_sent(PEER_AS);
    fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![], vec![])),
    });
    assert_eq!(sent_codes(&actions), vec![(1, (5, 2))]);
    // OPEN in Established.
    let mut fsm = established();
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    assert_eq!(sent_codes(&actions), vec![(1, (5, 3))]);
    assert!(actions.contains(&Action::Down));
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn hold_timer_expiry_sends_notification_in_every_open_state() {
    let mut in_sent = open_sent(PEER_AS);
    let mut in_confirm = open_sent(PEER_AS);
    in_confirm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    let mut in_established = established();
    for (fsm, down) in [
        (&mut in_sent, false),
        (&mut in_confirm, false),
        (&mut in_established, true),
    ] {
        let actions = fsm.handle(Event::TimerExpired(Timer::Hold));
        assert_eq!(sent_codes(&actions), vec![(1, (4, 0))]);
        assert_eq!(closed(&actions), vec![1]);
        assert_eq!(actions.contains(&Action::Down), down);
        assert_eq!(fsm.state(), State::Idle);
    }
}

#[test]
fn stale_timers_are_ignored() {
    let mut fsm = Fsm::new(config(PEER_AS, false));
    for timer in [
        Timer::Hold,
        Timer::Keepalive,
        Timer::ConnectRetry,
        Timer::IdleHold,
    ] {
        assert!(
            fsm.handle(Event::TimerExpired(timer)).is_empty(),
            "{timer:?}"
        );
        assert_eq!(fsm.state(), State::Idle);
    }
    let mut fsm = open_sent(PEER_AS);
    for timer in [Timer::Keepalive, Timer::ConnectRetry, Timer::IdleHold] {
        assert!(
            fsm.handle(Event::TimerExpired(timer)).is_empty(),
            "{timer:?}"
        );
        assert_eq!(fsm.state(), State::OpenSent);
    }
}

#[test]
fn keepalive_timer_sends_keepalive() {
    let mut fsm = established();
    let actions = fsm.handle(Event::TimerExpired(Timer::Keepalive));
    assert_eq!(
        actions,
        vec![
            Action::Send {
                conn: 1,
                msg: BgpMessage::KeepAlive
            },
            Action::StartTimer(Timer::Keepalive, Duration::from_secs(10)),
        ]
    );
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::KeepAlive,
    });
    assert_eq!(
        actions,
        vec![Action::StartTimer(Timer::Hold, Duration::from_secs(30))]
    );
}

#[test]
fn updates_become_routes_and_bad_updates_notifications() {
    use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress};
    let nlri = vec![Ipv4UnicastAddress::new_no_path_id(
        Ipv4Unicast::from_net("10.1.0.0/24".parse().expect("net")).expect("unicast"),
    )];
    // An empty UPDATE is the IPv4 End-of-RIB.
    let mut fsm = established();
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![], vec![])),
    });
    assert_eq!(
        actions,
        vec![
            Action::StartTimer(Timer::Hold, Duration::from_secs(30)),
            Action::Routes(vec![RouteChange::EndOfRib { ipv6: false }])
        ]
    );
    // A withdrawal.
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::Update(BgpUpdateMessage::new(nlri.clone(), vec![], vec![])),
    });
    assert_eq!(
        actions[1],
        Action::Routes(vec![RouteChange::Withdraw(
            "10.1.0.0/24".parse().expect("net")
        )])
    );
    // NLRI without any attribute: missing ORIGIN.
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![], nlri)),
    });
    assert_eq!(sent_codes(&actions), vec![(1, (3, 3))]);
    assert!(actions.contains(&Action::Down));
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn route_refresh_asks_for_adj_rib_out() {
    let mut fsm = established();
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
            AddressType::Ipv4Unicast,
            RouteRefreshSubcode::NormalRequest,
        )),
    });
    assert_eq!(actions.last(), Some(&Action::RouteRefresh));
    assert_eq!(fsm.state(), State::Established);
}

#[test]
fn notification_from_peer_closes_without_answer() {
    let mut fsm = established();
    let cease = Notification::CeaseError(CeaseError::AdministrativeReset {
        value: Box::new([]),
    });
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::Notification(cease),
    });
    assert!(sent_codes(&actions).is_empty());
    assert_eq!(closed(&actions), vec![1]);
    assert!(actions.contains(&Action::Down));
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn malformed_message_is_answered_with_its_notification() {
    let mut fsm = established();
    let bad_length = Notification::MessageHeaderError(
        netgauze_bgp_pkt::notification::MessageHeaderError::BadMessageLength {
            value: Box::new([0, 5]),
        },
    );
    let actions = fsm.handle(Event::Malformed {
        conn: 1,
        notification: bad_length,
    });
    assert_eq!(sent_codes(&actions), vec![(1, (1, 2))]);
    assert!(actions.contains(&Action::Down));
}

#[test]
fn closed_connection_drops_the_session() {
    let mut fsm = established();
    let actions = fsm.handle(Event::Closed { conn: 1 });
    assert!(sent_codes(&actions).is_empty());
    assert!(closed(&actions).is_empty());
    assert!(actions.contains(&Action::Down));
    assert_eq!(fsm.state(), State::Idle);
    // A close of an unknown connection is ignored.
    assert!(fsm.handle(Event::Closed { conn: 99 }).is_empty());
}

#[test]
fn stop_sends_cease_and_stays_idle() {
    let mut fsm = established();
    let actions = fsm.handle(Event::Stop);
    assert_eq!(sent_codes(&actions), vec![(1, (6, 2))]);
    assert!(actions.contains(&Action::Down));
    assert_eq!(started(&actions, Timer::IdleHold), None);
    assert_eq!(fsm.state(), State::Idle);
    assert!(fsm.handle(Event::TimerExpired(Timer::IdleHold)).is_empty());
    // Stop before any connection: nothing to tell anyone.
    let mut fsm = Fsm::new(config(PEER_AS, false));
    fsm.handle(Event::Start);
    let actions = fsm.handle(Event::Stop);
    assert!(sent_codes(&actions).is_empty());
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn restart_backoff_doubles_until_max_and_resets_when_established() {
    let mut fsm = Fsm::new(config(PEER_AS, false));
    fsm.handle(Event::Start);
    let mut waits = vec![];
    for conn in 0..5 {
        fsm.handle(Event::Connected {
            conn,
            direction: Direction::Outbound,
        });
        let actions = fsm.handle(Event::Closed { conn });
        waits.push(started(&actions, Timer::IdleHold).expect("restart scheduled"));
        assert_eq!(fsm.state(), State::Idle);
        let actions = fsm.handle(Event::TimerExpired(Timer::IdleHold));
        assert_eq!(actions[0], Action::Connect);
    }
    let secs: Vec<u64> = waits.iter().map(|d| d.as_secs()).collect();
    assert_eq!(secs, vec![1, 2, 4, 8, 8]);
    // Once established, the next failure waits the initial time again.
    fsm.handle(Event::Connected {
        conn: 10,
        direction: Direction::Outbound,
    });
    fsm.handle(Event::Received {
        conn: 10,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    fsm.handle(Event::Received {
        conn: 10,
        msg: BgpMessage::KeepAlive,
    });
    let actions = fsm.handle(Event::Closed { conn: 10 });
    assert_eq!(
        started(&actions, Timer::IdleHold),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn connections_that_cannot_be_used_are_closed() {
    // Idle (not started).
    let mut fsm = Fsm::new(config(PEER_AS, true));
    let actions = fsm.handle(Event::Connected {
        conn: 3,
        direction: Direction::Inbound,
    });
    assert_eq!(actions, vec![Action::Close { conn: 3 }]);
    // Established.
    let mut fsm = established();
    let actions = fsm.handle(Event::Connected {
        conn: 3,
        direction: Direction::Inbound,
    });
    assert_eq!(actions, vec![Action::Close { conn: 3 }]);
    assert_eq!(fsm.state(), State::Established);
    // A third connection during a collision.
    let mut fsm = open_sent(PEER_AS);
    fsm.handle(Event::Connected {
        conn: 2,
        direction: Direction::Inbound,
    });
    let actions = fsm.handle(Event::Connected {
        conn: 3,
        direction: Direction::Inbound,
    });
    assert_eq!(actions, vec![Action::Close { conn: 3 }]);
}

/// OpenSent on outbound connection 1 with inbound connection 2 accepted.
fn colliding() -> Fsm {
    let mut fsm = open_sent(PEER_AS);
    let actions = fsm.handle(Event::Connected {
        conn: 2,
        direction: Direction::Inbound,
    });
    assert!(matches!(
        &actions[..],
        [Action::Send {
            conn: 2,
            msg: BgpMessage::Open(_)
        }]
    ));
    assert_eq!(fsm.state(), State::OpenSent);
    fsm
}

#[test]
fn collision_higher_local_id_keeps_our_connection() {
    // Peer id 10.0.0.1 < ours 10.0.0.5: the connection we opened (1) survives.
    for open_on in [2, 1] {
        let mut fsm = colliding();
        let actions = fsm.handle(Event::Received {
            conn: open_on,
            msg: peer_open(PEER_AS, [10, 0, 0, 1], 90),
        });
        assert_eq!(sent_codes(&actions), vec![(2, (6, 7))], "OPEN on {open_on}");
        assert_eq!(closed(&actions), vec![2]);
        assert_eq!(fsm.conn(), Some(1));
        if open_on == 1 {
            assert_eq!(fsm.state(), State::OpenConfirm);
        } else {
            // Connection 1 still waits for its OPEN.
            assert_eq!(fsm.state(), State::OpenSent);
            fsm.handle(Event::Received {
                conn: 1,
                msg: peer_open(PEER_AS, [10, 0, 0, 1], 90),
            });
            assert_eq!(fsm.state(), State::OpenConfirm);
        }
    }
}

#[test]
fn collision_lower_local_id_keeps_the_peers_connection() {
    // Peer id 10.0.0.9 > ours: the connection the peer opened (2) survives.
    let mut fsm = colliding();
    let actions = fsm.handle(Event::Received {
        conn: 2,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    assert_eq!(sent_codes(&actions), vec![(1, (6, 7))]);
    assert_eq!(closed(&actions), vec![1]);
    assert_eq!(fsm.conn(), Some(2));
    assert_eq!(fsm.state(), State::OpenConfirm);
    assert!(actions.contains(&Action::Send {
        conn: 2,
        msg: BgpMessage::KeepAlive
    }));
    let actions = fsm.handle(Event::Received {
        conn: 2,
        msg: BgpMessage::KeepAlive,
    });
    assert!(matches!(
        actions.last(),
        Some(Action::Established { conn: 2, .. })
    ));

    // The same decided by the OPEN on our own connection: it is closed, and the
    // peer's connection goes on waiting for its OPEN.
    let mut fsm = colliding();
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    assert_eq!(sent_codes(&actions), vec![(1, (6, 7))]);
    assert_eq!(fsm.conn(), Some(2));
    assert_eq!(fsm.state(), State::OpenSent);
    fsm.handle(Event::Received {
        conn: 2,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    assert_eq!(fsm.state(), State::OpenConfirm);
}

#[test]
fn collision_in_open_confirm() {
    let mut fsm = open_sent(PEER_AS);
    fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    assert_eq!(fsm.state(), State::OpenConfirm);
    fsm.handle(Event::Connected {
        conn: 2,
        direction: Direction::Inbound,
    });
    let actions = fsm.handle(Event::Received {
        conn: 2,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    assert_eq!(sent_codes(&actions), vec![(1, (6, 7))]);
    assert!(actions.contains(&Action::StopTimer(Timer::Keepalive)));
    assert_eq!(fsm.conn(), Some(2));
    assert_eq!(fsm.state(), State::OpenConfirm);
}

#[test]
fn collision_candidate_failures_leave_the_session_alone() {
    // Candidate closes.
    let mut fsm = colliding();
    assert!(fsm.handle(Event::Closed { conn: 2 }).is_empty());
    assert_eq!((fsm.state(), fsm.conn()), (State::OpenSent, Some(1)));
    // Candidate sends garbage.
    let mut fsm = colliding();
    let actions = fsm.handle(Event::Received {
        conn: 2,
        msg: BgpMessage::KeepAlive,
    });
    assert_eq!(sent_codes(&actions), vec![(2, (5, 1))]);
    assert_eq!((fsm.state(), fsm.conn()), (State::OpenSent, Some(1)));
    // Candidate sends a bad OPEN.
    let mut fsm = colliding();
    let actions = fsm.handle(Event::Received {
        conn: 2,
        msg: peer_open(65009, [10, 0, 0, 9], 90),
    });
    assert_eq!(sent_codes(&actions), vec![(2, (2, 2))]);
    assert_eq!((fsm.state(), fsm.conn()), (State::OpenSent, Some(1)));
    // Session connection closes: the candidate takes over.
    let mut fsm = colliding();
    let actions = fsm.handle(Event::Closed { conn: 1 });
    assert_eq!(started(&actions, Timer::Hold), Some(OPEN_HOLD_TIME));
    assert_eq!((fsm.state(), fsm.conn()), (State::OpenSent, Some(2)));
}

#[test]
fn inbound_while_connecting_then_our_connect_completes() {
    let mut fsm = Fsm::new(config(PEER_AS, false));
    fsm.handle(Event::Start);
    fsm.handle(Event::Connected {
        conn: 1,
        direction: Direction::Inbound,
    });
    assert_eq!((fsm.state(), fsm.conn()), (State::OpenSent, Some(1)));
    // Our own attempt finishes late: it becomes the collision candidate.
    let actions = fsm.handle(Event::Connected {
        conn: 2,
        direction: Direction::Outbound,
    });
    assert!(matches!(
        &actions[..],
        [Action::Send {
            conn: 2,
            msg: BgpMessage::Open(_)
        }]
    ));
    // Peer id lower than ours: our (outbound) connection wins.
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 1], 90),
    });
    assert_eq!(sent_codes(&actions), vec![(1, (6, 7))]);
    assert_eq!((fsm.state(), fsm.conn()), (State::OpenSent, Some(2)));
}

#[test]
fn notification_in_open_confirm_and_stop_in_open_sent() {
    let mut fsm = open_sent(PEER_AS);
    fsm.handle(Event::Received {
        conn: 1,
        msg: peer_open(PEER_AS, [10, 0, 0, 9], 90),
    });
    let actions = fsm.handle(Event::Received {
        conn: 1,
        msg: BgpMessage::Notification(Notification::OpenMessageError(
            OpenMessageError::UnsupportedCapability {
                value: Box::new([]),
            },
        )),
    });
    assert!(sent_codes(&actions).is_empty());
    assert!(!actions.contains(&Action::Down));
    assert_eq!(fsm.state(), State::Idle);

    let mut fsm = open_sent(PEER_AS);
    let actions = fsm.handle(Event::Stop);
    assert_eq!(sent_codes(&actions), vec![(1, (6, 2))]);
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn events_that_do_not_apply_are_ignored() {
    let mut fsm = open_sent(PEER_AS);
    assert!(fsm.handle(Event::ConnectFailed).is_empty());
    assert!(
        fsm.handle(Event::Received {
            conn: 42,
            msg: BgpMessage::KeepAlive
        })
        .is_empty()
    );
    let header_error = Notification::MessageHeaderError(
        netgauze_bgp_pkt::notification::MessageHeaderError::BadMessageType {
            value: Box::new([9]),
        },
    );
    assert!(
        fsm.handle(Event::Malformed {
            conn: 42,
            notification: header_error.clone()
        })
        .is_empty()
    );
    assert_eq!(fsm.state(), State::OpenSent);
    // Malformed input on the collision candidate closes only that connection.
    let mut fsm = colliding();
    let actions = fsm.handle(Event::Malformed {
        conn: 2,
        notification: header_error,
    });
    assert_eq!(sent_codes(&actions), vec![(2, (1, 3))]);
    assert_eq!(closed(&actions), vec![2]);
    assert_eq!((fsm.state(), fsm.conn()), (State::OpenSent, Some(1)));
}

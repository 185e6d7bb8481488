//! The BGP session state machine of RFC 4271 §8, one per neighbour: events in
//! (timers, TCP, messages), actions out (send, close, connect, timers, routes).
//!
//! It owns no socket and no clock, so every transition is tested as a table of
//! events and the actions they cause; the driver in `session` performs the actions.
//! Connections are named by a [`ConnId`] the driver picks. Two connections exist
//! at once only during a collision (§6.8): the second one is carried as `other`
//! until an OPEN reveals the neighbour's BGP identifier, and then the connection
//! opened by the speaker with the higher identifier is kept.
//!
//! Deliberate simplifications: a failed session always goes to Idle and restarts
//! after the IdleHoldTimer, which doubles while the session keeps failing (§8.1.1
//! DampPeerOscillations), instead of RFC 4271's Active fallback; DelayOpen and
//! graceful restart are not implemented.

use std::net::Ipv4Addr;
use std::time::Duration;

use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::notification::{
    CeaseError, FiniteStateMachineError, HoldTimerExpiredError, OpenMessageError,
};
use netgauze_bgp_pkt::open::BgpOpenMessage;

use super::config::{Backoff, Families};
use super::message::{
    LocalOpen, Notification, PeerOpen, UpdateContext, decode_update, open_message, read_open,
};
use super::route::RouteChange;

/// The hold timer while waiting for the neighbour's OPEN (§8.2.2: "a large value,
/// 4 minutes is suggested").
pub const OPEN_HOLD_TIME: Duration = Duration::from_secs(240);

/// Names one TCP connection of the driver.
pub type ConnId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We connected to the neighbour.
    Outbound,
    /// The neighbour connected to our listener.
    Inbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    /// Delays the restart of a failed session (the reconnect backoff).
    IdleHold,
}

/// What the state machine needs to know about both ends.
#[derive(Debug, Clone)]
pub struct FsmConfig {
    pub local: LocalOpen,
    pub peer_asn: u32,
    pub passive: bool,
    pub connect_retry: Duration,
    pub backoff: Backoff,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// ManualStart (or AutomaticStart after the IdleHoldTimer).
    Start,
    /// ManualStop: the session is shut down and not restarted.
    Stop,
    TimerExpired(Timer),
    /// A TCP connection is up: ours to the neighbour, or one it made to us.
    Connected {
        conn: ConnId,
        direction: Direction,
    },
    /// Our connection attempt failed.
    ConnectFailed,
    /// A connection was closed by the neighbour or failed.
    Closed {
        conn: ConnId,
    },
    Received {
        conn: ConnId,
        msg: BgpMessage,
    },
    /// A message could not be parsed; the NOTIFICATION says why.
    Malformed {
        conn: ConnId,
        notification: Notification,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a TCP connection to the neighbour (abandoning an attempt under way).
    Connect,
    Send {
        conn: ConnId,
        msg: BgpMessage,
    },
    /// Close after what was sent is written.
    Close {
        conn: ConnId,
    },
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    /// The session is up on `conn` with these parameters.
    Established {
        conn: ConnId,
        session: Session,
    },
    /// The session left Established: the neighbour's routes are gone.
    Down,
    Routes(Vec<RouteChange>),
    /// The neighbour asked for our routes again (RFC 2918).
    RouteRefresh,
}

/// What both OPENs agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub peer: PeerOpen,
    /// Negotiated hold time in seconds: the smaller offer; 0 disables it.
    pub hold_time: u16,
    /// One third of the hold time.
    pub keepalive: u16,
    pub families: Families,
    pub route_refresh: bool,
    pub asn4: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conn {
    id: ConnId,
    direction: Direction,
}

#[derive(Debug)]
pub struct Fsm {
    config: FsmConfig,
    state: State,
    conn: Option<Conn>,
    /// A second connection during a collision, OPEN sent, none received.
    other: Option<Conn>,
    /// Negotiated once the neighbour's OPEN is accepted.
    session: Option<Session>,
    /// Restart automatically after a failure (cleared by Stop).
    running: bool,
    idle_hold: Duration,
    /// A NOTIFICATION arrived: the failure it causes is not a restart.
    notified: bool,
    /// The last established session ended without a NOTIFICATION either way (a
    /// dropped connection: graceful restart applies, RFC 4724 §4.2).
    down_graceful: bool,
}

fn fsm_error(state: State) -> Notification {
    let value = Box::new([]);
    Notification::FiniteStateMachineError(match state {
        State::OpenSent => {
            FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState { value }
        }
        State::OpenConfirm => {
            FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState { value }
        }
        State::Established => {
            FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState { value }
        }
        _ => FiniteStateMachineError::Unspecific { value },
    })
}

fn collision() -> Notification {
    Notification::CeaseError(CeaseError::ConnectionCollisionResolution {
        value: Box::new([]),
    })
}

impl Fsm {
    pub fn new(config: FsmConfig) -> Fsm {
        let idle_hold = config.backoff.initial;
        Fsm {
            config,
            state: State::Idle,
            conn: None,
            other: None,
            session: None,
            running: false,
            idle_hold,
            notified: false,
            down_graceful: false,
        }
    }

    /// Whether the last Down was a dropped connection rather than a NOTIFICATION.
    pub fn down_was_graceful(&self) -> bool {
        self.down_graceful
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The connection the session runs on.
    pub fn conn(&self) -> Option<ConnId> {
        self.conn.map(|c| c.id)
    }

    fn is_ibgp(&self) -> bool {
        self.config.peer_asn == self.config.local.asn
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = vec![];
        match event {
            Event::Start => {
                self.running = true;
                if self.state == State::Idle {
                    out.push(Action::StopTimer(Timer::IdleHold));
                    self.start(&mut out);
                }
            }
            Event::Stop => {
                self.running = false;
                let shutdown = Notification::CeaseError(CeaseError::AdministrativeShutdown {
                    value: Box::new([]),
                });
                self.fail(&mut out, Some(shutdown));
                out.push(Action::StopTimer(Timer::IdleHold));
            }
            Event::TimerExpired(timer) => self.on_timer(timer, &mut out),
            Event::Connected { conn, direction } => self.on_connected(conn, direction, &mut out),
            Event::ConnectFailed => {
                if self.state == State::Connect {
                    // Try again when the ConnectRetryTimer fires.
                    self.state = State::Active;
                    out.push(Action::StartTimer(
                        Timer::ConnectRetry,
                        self.config.connect_retry,
                    ));
                }
            }
            Event::Closed { conn } => self.on_closed(conn, &mut out),
            Event::Received { conn, msg } => {
                if self.other.is_some_and(|o| o.id == conn) {
                    self.on_other_message(msg, &mut out);
                } else if self.conn.is_some_and(|c| c.id == conn) {
                    self.on_message(msg, &mut out);
                }
            }
            Event::Malformed { conn, notification } => {
                if let Some(other) = self.other.filter(|o| o.id == conn) {
                    out.push(Action::Send {
                        conn,
                        msg: BgpMessage::Notification(notification),
                    });
                    out.push(Action::Close { conn: other.id });
                    self.other = None;
                } else if self.conn.is_some_and(|c| c.id == conn) {
                    self.fail(&mut out, Some(notification));
                }
            }
        }
        out
    }

    /// Idle → Connect (active) or Active (passive: wait for the neighbour).
    fn start(&mut self, out: &mut Vec<Action>) {
        if self.config.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            out.push(Action::Connect);
            out.push(Action::StartTimer(
                Timer::ConnectRetry,
                self.config.connect_retry,
            ));
        }
    }

    fn on_timer(&mut self, timer: Timer, out: &mut Vec<Action>) {
        match (timer, self.state) {
            (Timer::IdleHold, State::Idle) if self.running => self.start(out),
            (Timer::ConnectRetry, State::Connect | State::Active) if !self.config.passive => {
                self.state = State::Connect;
                out.push(Action::Connect);
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.config.connect_retry,
                ));
            }
            (Timer::Hold, State::OpenSent | State::OpenConfirm | State::Established) => {
                let expired =
                    Notification::HoldTimerExpiredError(HoldTimerExpiredError::Unspecific {
                        sub_code: 0,
                        value: Box::new([]),
                    });
                self.fail(out, Some(expired));
            }
            (Timer::Keepalive, State::OpenConfirm | State::Established) => {
                if let (Some(conn), Some(session)) = (self.conn, &self.session) {
                    out.push(Action::Send {
                        conn: conn.id,
                        msg: BgpMessage::KeepAlive,
                    });
                    out.push(Action::StartTimer(
                        Timer::Keepalive,
                        Duration::from_secs(session.keepalive.into()),
                    ));
                }
            }
            // A timer that fired just as the state moved on.
            _ => {}
        }
    }

    fn send_open(&self, conn: ConnId, out: &mut Vec<Action>) {
        out.push(Action::Send {
            conn,
            msg: open_message(&self.config.local),
        });
    }

    fn on_connected(&mut self, id: ConnId, direction: Direction, out: &mut Vec<Action>) {
        let conn = Conn { id, direction };
        match self.state {
            State::Connect | State::Active => {
                self.conn = Some(conn);
                out.push(Action::StopTimer(Timer::ConnectRetry));
                self.send_open(id, out);
                out.push(Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME));
                self.state = State::OpenSent;
            }
            State::OpenSent | State::OpenConfirm if self.other.is_none() => {
                // A possible collision: run the second connection until its OPEN
                // tells which one to keep.
                self.other = Some(conn);
                self.send_open(id, out);
            }
            // Idle: not running (or backing off); Established: a collision with an
            // established session closes the new connection (§6.8).
            _ => out.push(Action::Close { conn: id }),
        }
    }

    fn on_closed(&mut self, id: ConnId, out: &mut Vec<Action>) {
        if self.other.is_some_and(|o| o.id == id) {
            self.other = None;
            return;
        }
        if self.conn.is_none_or(|c| c.id != id) {
            return;
        }
        match (self.state, self.other.take()) {
            (State::OpenSent | State::OpenConfirm, Some(other)) => {
                // The collision resolved itself: continue on the other connection,
                // whose OPEN is sent and not yet answered.
                self.conn = Some(other);
                self.session = None;
                self.state = State::OpenSent;
                out.push(Action::StopTimer(Timer::Keepalive));
                out.push(Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME));
            }
            (_, other) => {
                self.other = other;
                self.conn = None;
                self.fail(out, None);
            }
        }
    }

    /// Checks the neighbour's OPEN against the configuration (§6.2).
    fn check_open(&self, open: &BgpOpenMessage) -> Result<PeerOpen, Notification> {
        let peer = read_open(open);
        if peer.asn != self.config.peer_asn {
            return Err(Notification::OpenMessageError(
                OpenMessageError::BadPeerAs {
                    value: open.my_as().to_be_bytes().into(),
                },
            ));
        }
        if peer.hold_time == 1 || peer.hold_time == 2 {
            return Err(Notification::OpenMessageError(
                OpenMessageError::UnacceptableHoldTime {
                    value: peer.hold_time.to_be_bytes().into(),
                },
            ));
        }
        let id = peer.router_id;
        if id.is_unspecified()
            || id.is_multicast()
            || id.is_broadcast()
            || (self.is_ibgp() && id == self.config.local.router_id)
        {
            return Err(Notification::OpenMessageError(
                OpenMessageError::BadBgpIdentifier {
                    value: id.octets().into(),
                },
            ));
        }
        Ok(peer)
    }

    /// §6.8: the connection opened by the side with the higher BGP identifier
    /// survives. True when `other` is the one to keep.
    fn keep_other(&self, remote_id: Ipv4Addr, other: Conn) -> bool {
        let keep = if u32::from(self.config.local.router_id) < u32::from(remote_id) {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        let primary = self.conn.map(|c| c.direction);
        other.direction == keep && primary != Some(keep)
    }

    /// A message on the collision candidate.
    fn on_other_message(&mut self, msg: BgpMessage, out: &mut Vec<Action>) {
        let Some(other) = self.other else { return };
        match msg {
            BgpMessage::Open(open) => match self.check_open(&open) {
                Err(n) => {
                    out.push(Action::Send {
                        conn: other.id,
                        msg: BgpMessage::Notification(n),
                    });
                    out.push(Action::Close { conn: other.id });
                    self.other = None;
                }
                Ok(peer) => {
                    if self.keep_other(peer.router_id, other) {
                        if let Some(primary) = self.conn {
                            out.push(Action::Send {
                                conn: primary.id,
                                msg: BgpMessage::Notification(collision()),
                            });
                            out.push(Action::Close { conn: primary.id });
                        }
                        out.push(Action::StopTimer(Timer::Keepalive));
                        self.conn = Some(other);
                        self.other = None;
                        self.state = State::OpenSent;
                        self.accept_open(peer, out);
                    } else {
                        out.push(Action::Send {
                            conn: other.id,
                            msg: BgpMessage::Notification(collision()),
                        });
                        out.push(Action::Close { conn: other.id });
                        self.other = None;
                    }
                }
            },
            BgpMessage::Notification(_) => {
                out.push(Action::Close { conn: other.id });
                self.other = None;
            }
            _ => {
                out.push(Action::Send {
                    conn: other.id,
                    msg: BgpMessage::Notification(fsm_error(State::OpenSent)),
                });
                out.push(Action::Close { conn: other.id });
                self.other = None;
            }
        }
    }

    /// OpenSent → OpenConfirm: negotiate, answer with KEEPALIVE, start the timers.
    fn accept_open(&mut self, peer: PeerOpen, out: &mut Vec<Action>) {
        let Some(conn) = self.conn else { return };
        let hold_time = self.config.local.hold_time.min(peer.hold_time);
        let session = Session {
            hold_time,
            keepalive: hold_time / 3,
            families: self.config.local.families.intersect(peer.families),
            route_refresh: peer.route_refresh,
            asn4: peer.asn4,
            peer,
        };
        out.push(Action::Send {
            conn: conn.id,
            msg: BgpMessage::KeepAlive,
        });
        if hold_time > 0 {
            out.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(hold_time.into()),
            ));
            out.push(Action::StartTimer(
                Timer::Keepalive,
                Duration::from_secs(session.keepalive.into()),
            ));
        } else {
            out.push(Action::StopTimer(Timer::Hold));
            out.push(Action::StopTimer(Timer::Keepalive));
        }
        self.session = Some(session);
        self.state = State::OpenConfirm;
    }

    fn restart_hold(&self, out: &mut Vec<Action>) {
        if let Some(s) = &self.session
            && s.hold_time > 0
        {
            out.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(s.hold_time.into()),
            ));
        }
    }

    /// A message on the session's connection.
    fn on_message(&mut self, msg: BgpMessage, out: &mut Vec<Action>) {
        if let BgpMessage::Notification(n) = &msg {
            tracing::info!(notification = ?n, "neighbour sent NOTIFICATION");
            self.notified = true;
            self.fail(out, None);
            return;
        }
        match (self.state, msg) {
            (State::OpenSent, BgpMessage::Open(open)) => match self.check_open(&open) {
                Err(n) => self.fail(out, Some(n)),
                Ok(peer) => match self.other {
                    Some(other) if self.keep_other(peer.router_id, other) => {
                        // This connection loses the collision; the other one's OPEN is
                        // still to come.
                        if let Some(primary) = self.conn {
                            out.push(Action::Send {
                                conn: primary.id,
                                msg: BgpMessage::Notification(collision()),
                            });
                            out.push(Action::Close { conn: primary.id });
                        }
                        self.conn = Some(other);
                        self.other = None;
                        out.push(Action::StartTimer(Timer::Hold, OPEN_HOLD_TIME));
                    }
                    Some(other) => {
                        out.push(Action::Send {
                            conn: other.id,
                            msg: BgpMessage::Notification(collision()),
                        });
                        out.push(Action::Close { conn: other.id });
                        self.other = None;
                        self.accept_open(peer, out);
                    }
                    None => self.accept_open(peer, out),
                },
            },
            (State::OpenConfirm, BgpMessage::KeepAlive) => {
                let (Some(conn), Some(session)) = (self.conn, self.session.clone()) else {
                    return;
                };
                self.restart_hold(out);
                self.state = State::Established;
                self.idle_hold = self.config.backoff.initial;
                out.push(Action::Established {
                    conn: conn.id,
                    session,
                });
            }
            (State::Established, BgpMessage::KeepAlive) => self.restart_hold(out),
            (State::Established, BgpMessage::Update(update)) => {
                self.restart_hold(out);
                let Some(session) = &self.session else { return };
                let ctx = UpdateContext {
                    asn4: session.asn4,
                    families: session.families,
                    ebgp_peer_asn: (!self.is_ibgp()).then_some(self.config.peer_asn),
                };
                match decode_update(&update, &ctx) {
                    Ok(changes) if changes.is_empty() => {}
                    Ok(changes) => out.push(Action::Routes(changes)),
                    Err(n) => self.fail(out, Some(n)),
                }
            }
            (State::Established, BgpMessage::RouteRefresh(_)) => {
                self.restart_hold(out);
                out.push(Action::RouteRefresh);
            }
            (state, _) => self.fail(out, Some(fsm_error(state))),
        }
    }

    /// Any state → Idle: optionally tell the neighbour why, close everything, and
    /// schedule the restart with backoff if the session is meant to run.
    fn fail(&mut self, out: &mut Vec<Action>, notification: Option<Notification>) {
        for conn in [self.conn.take(), self.other.take()].into_iter().flatten() {
            if let Some(n) = &notification
                && matches!(
                    self.state,
                    State::OpenSent | State::OpenConfirm | State::Established
                )
            {
                out.push(Action::Send {
                    conn: conn.id,
                    msg: BgpMessage::Notification(n.clone()),
                });
            }
            out.push(Action::Close { conn: conn.id });
        }
        for timer in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            out.push(Action::StopTimer(timer));
        }
        let notified = std::mem::take(&mut self.notified);
        if self.state == State::Established {
            self.down_graceful = notification.is_none() && !notified;
            out.push(Action::Down);
        }
        self.state = State::Idle;
        self.session = None;
        if self.running {
            out.push(Action::StartTimer(Timer::IdleHold, self.idle_hold));
            self.idle_hold = (self.idle_hold * 2).min(self.config.backoff.max);
        }
    }
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;

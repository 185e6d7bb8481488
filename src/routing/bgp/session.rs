//! The driver ("southbound") of one neighbour's session: a tokio task that turns
//! sockets and clocks into [`fsm::Event`]s and performs the [`fsm::Action`]s.
//!
//! It holds no protocol logic: framing is read by one task per connection (so a
//! slow peer never blocks timers), writes go through one writer task per connection
//! (so a NOTIFICATION is flushed before the close), and everything the speaker must
//! know (session up or down, routes, refresh requests) goes to it as
//! [`SessionReport`]s.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netgauze_bgp_pkt::BgpMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::PeerConfig;
use super::fsm::{Action, ConnId, Direction, Event, Fsm, FsmConfig, Session, State, Timer};
use super::message::{self, HEADER_LEN, Notification};
use super::route::RouteChange;
use super::socket::{self, ConnectOptions};

/// What the session task receives.
#[derive(Debug)]
pub enum SessionInput {
    /// A connection the listener accepted from this neighbour.
    Accepted(TcpStream),
    /// Messages for the established session (UPDATEs from the speaker).
    Send(Vec<BgpMessage>),
    /// Shut the session down (Cease) and end the task.
    Stop,
    ConnectDone(u64, std::io::Result<TcpStream>),
    Frame(ConnId, Result<Vec<u8>, Notification>),
    ConnClosed(ConnId),
}

/// What the session tells the speaker.
#[derive(Debug)]
pub enum SessionReport {
    Up {
        peer: IpAddr,
        session: Session,
        local: SocketAddr,
    },
    Down {
        peer: IpAddr,
        /// The connection dropped without a NOTIFICATION (graceful restart applies).
        graceful: bool,
    },
    Routes {
        peer: IpAddr,
        changes: Vec<RouteChange>,
    },
    RouteRefresh {
        peer: IpAddr,
    },
}

/// The state and uptime of one session, shared with the speaker for `peers()`.
#[derive(Debug, Clone, Copy)]
pub struct SessionStatus {
    pub state: State,
    pub established_at: Option<Instant>,
    /// UPDATE messages received and sent, over every session with this neighbour.
    pub updates_in: u64,
    pub updates_out: u64,
    /// Times an established session went down.
    pub flaps: u64,
}

pub type SharedStatus = Arc<Mutex<SessionStatus>>;

enum WriterCmd {
    Bytes(Vec<u8>),
    Close,
}

struct Connection {
    writer: mpsc::UnboundedSender<WriterCmd>,
    writer_task: JoinHandle<()>,
    reader: JoinHandle<()>,
    local: SocketAddr,
}

impl Connection {
    /// Stops reading and lets the writer flush what is queued (a NOTIFICATION)
    /// before it shuts the socket; returns the writer to wait for.
    fn close(self) -> JoinHandle<()> {
        let _ = self.writer.send(WriterCmd::Close);
        self.reader.abort();
        self.writer_task
    }
}

/// One neighbour's session task.
pub struct SessionTask {
    peer: PeerConfig,
    ibgp: bool,
    connect_timeout: Duration,
    fsm: Fsm,
    inputs_tx: mpsc::UnboundedSender<SessionInput>,
    inputs: mpsc::UnboundedReceiver<SessionInput>,
    reports: mpsc::UnboundedSender<SessionReport>,
    status: SharedStatus,
    conns: HashMap<ConnId, Connection>,
    /// Writers of closed connections still flushing.
    closing: Vec<JoinHandle<()>>,
    timers: HashMap<Timer, tokio::time::Instant>,
    next_conn: ConnId,
    connect_attempt: u64,
    connecting: Option<JoinHandle<()>>,
}

impl SessionTask {
    pub fn new(
        peer: PeerConfig,
        fsm_config: FsmConfig,
        reports: mpsc::UnboundedSender<SessionReport>,
    ) -> (
        SessionTask,
        mpsc::UnboundedSender<SessionInput>,
        SharedStatus,
    ) {
        let (inputs_tx, inputs) = mpsc::unbounded_channel();
        let status = Arc::new(Mutex::new(SessionStatus {
            state: State::Idle,
            established_at: None,
            updates_in: 0,
            updates_out: 0,
            flaps: 0,
        }));
        let task = SessionTask {
            ibgp: peer.asn == fsm_config.local.asn,
            connect_timeout: fsm_config.connect_retry,
            fsm: Fsm::new(fsm_config),
            peer,
            inputs_tx: inputs_tx.clone(),
            inputs,
            reports,
            status: status.clone(),
            conns: HashMap::new(),
            closing: vec![],
            timers: HashMap::new(),
            next_conn: 1,
            connect_attempt: 0,
            connecting: None,
        };
        (task, inputs_tx, status)
    }

    /// The TTL of this session's packets: the multihop setting, else 1 for eBGP
    /// (the neighbour must be directly connected), else the system default.
    fn ttl(&self) -> Option<u8> {
        self.peer.multihop_ttl.or((!self.ibgp).then_some(1))
    }

    pub async fn run(mut self) {
        self.dispatch(Event::Start);
        loop {
            let deadline = self.timers.values().min().copied();
            let input = tokio::select! {
                input = self.inputs.recv() => input,
                _ = sleep_until(deadline) => {
                    self.fire_timers();
                    continue;
                }
            };
            match input {
                None | Some(SessionInput::Stop) => break,
                Some(input) => self.on_input(input),
            }
        }
        self.dispatch(Event::Stop);
        let open: Vec<Connection> = self.conns.drain().map(|(_, c)| c).collect();
        self.closing.extend(open.into_iter().map(Connection::close));
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
        // The Cease should reach the neighbour before the task (and maybe the
        // runtime) ends; a writer stuck on a full socket is given up after 1 s.
        let writers = std::mem::take(&mut self.closing);
        let _ =
            tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(writers)).await;
    }

    fn fire_timers(&mut self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for timer in expired {
            self.timers.remove(&timer);
            self.dispatch(Event::TimerExpired(timer));
        }
    }

    fn on_input(&mut self, input: SessionInput) {
        match input {
            SessionInput::Accepted(stream) => self.adopt(stream, Direction::Inbound),
            SessionInput::ConnectDone(attempt, result) => {
                if attempt != self.connect_attempt {
                    return;
                }
                self.connecting = None;
                match result {
                    Ok(stream) => self.adopt(stream, Direction::Outbound),
                    Err(e) => {
                        tracing::debug!(peer = %self.peer.address, error = %e, "BGP connect failed");
                        self.dispatch(Event::ConnectFailed);
                    }
                }
            }
            SessionInput::Frame(conn, Ok(bytes)) => {
                if bytes.get(message::HEADER_LEN - 1) == Some(&message::TYPE_UPDATE)
                    && let Ok(mut status) = self.status.lock()
                {
                    status.updates_in += 1;
                }
                let asn4 = self.fsm.session().is_some_and(|s| s.asn4);
                let event = match message::decode(&bytes, asn4) {
                    Ok(msg) => Event::Received { conn, msg },
                    Err(notification) => {
                        tracing::warn!(peer = %self.peer.address, ?notification, "malformed BGP message");
                        Event::Malformed { conn, notification }
                    }
                };
                self.dispatch(event);
            }
            SessionInput::Frame(conn, Err(notification)) => {
                tracing::warn!(peer = %self.peer.address, ?notification, "malformed BGP header");
                self.dispatch(Event::Malformed { conn, notification });
            }
            SessionInput::ConnClosed(conn) => {
                if self.conns.remove(&conn).is_some() {
                    self.dispatch(Event::Closed { conn });
                }
            }
            SessionInput::Send(msgs) => {
                if self.fsm.state() == State::Established
                    && let Some(conn) = self.fsm.conn()
                {
                    if let Ok(mut status) = self.status.lock() {
                        status.updates_out += msgs.len() as u64;
                    }
                    for msg in msgs {
                        self.write(conn, &msg);
                    }
                }
            }
            SessionInput::Stop => {}
        }
    }

    /// Starts the reader and writer of a new connection and tells the FSM.
    fn adopt(&mut self, stream: TcpStream, direction: Direction) {
        let conn = self.next_conn;
        self.next_conn += 1;
        if direction == Direction::Inbound
            && let Some(ttl) = self.ttl()
        {
            use std::os::fd::AsRawFd;
            let v6 = self.peer.address.is_ipv6();
            if let Err(e) = socket::set_ttl(stream.as_raw_fd(), v6, ttl) {
                tracing::warn!(peer = %self.peer.address, error = %e, "setting the session TTL");
            }
        }
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let (read, write) = stream.into_split();
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let writer_task = tokio::spawn(write_loop(write, writer_rx, conn, self.inputs_tx.clone()));
        let reader = tokio::spawn(read_loop(read, conn, self.inputs_tx.clone()));
        self.conns.insert(
            conn,
            Connection {
                writer: writer_tx,
                writer_task,
                reader,
                local,
            },
        );
        self.dispatch(Event::Connected { conn, direction });
    }

    fn write(&self, conn: ConnId, msg: &BgpMessage) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        match message::encode(msg) {
            Ok(bytes) => {
                let _ = c.writer.send(WriterCmd::Bytes(bytes));
            }
            Err(e) => {
                tracing::error!(peer = %self.peer.address, error = %e, "encoding a BGP message")
            }
        }
    }

    fn dispatch(&mut self, event: Event) {
        let actions = self.fsm.handle(event);
        for action in actions {
            self.perform(action);
        }
        if let Ok(mut status) = self.status.lock() {
            let state = self.fsm.state();
            if state != status.state {
                tracing::info!(peer = %self.peer.address, from = %status.state, to = %state, "BGP session state");
            }
            if status.state == State::Established && state != State::Established {
                status.flaps += 1;
            }
            status.state = state;
            if state != State::Established {
                status.established_at = None;
            } else if status.established_at.is_none() {
                status.established_at = Some(Instant::now());
            }
        }
    }

    fn perform(&mut self, action: Action) {
        let peer = self.peer.address;
        match action {
            Action::Connect => {
                if let Some(task) = self.connecting.take() {
                    task.abort();
                }
                self.connect_attempt += 1;
                let attempt = self.connect_attempt;
                let opts = ConnectOptions {
                    peer: SocketAddr::new(peer, self.peer.port),
                    local: self.peer.local_address,
                    md5_key: self.peer.password.as_ref().map(|p| p.as_bytes().to_vec()),
                    ttl: self.ttl(),
                    timeout: self.connect_timeout,
                };
                let inputs = self.inputs_tx.clone();
                self.connecting = Some(tokio::spawn(async move {
                    let result = socket::connect(&opts).await;
                    let _ = inputs.send(SessionInput::ConnectDone(attempt, result));
                }));
            }
            Action::Send { conn, msg } => self.write(conn, &msg),
            Action::Close { conn } => {
                if let Some(c) = self.conns.remove(&conn) {
                    self.closing.retain(|w| !w.is_finished());
                    self.closing.push(c.close());
                }
            }
            Action::StartTimer(timer, after) => {
                self.timers
                    .insert(timer, tokio::time::Instant::now() + after);
            }
            Action::StopTimer(timer) => {
                self.timers.remove(&timer);
            }
            Action::Established { conn, session } => {
                if let Some(c) = self.conns.get(&conn) {
                    let _ = self.reports.send(SessionReport::Up {
                        peer,
                        session,
                        local: c.local,
                    });
                }
            }
            Action::Down => {
                let graceful = self.fsm.down_was_graceful();
                let _ = self.reports.send(SessionReport::Down { peer, graceful });
            }
            Action::Routes(changes) => {
                let _ = self.reports.send(SessionReport::Routes { peer, changes });
            }
            Action::RouteRefresh => {
                let _ = self.reports.send(SessionReport::RouteRefresh { peer });
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Splits the byte stream into messages: the header is checked here (marker,
/// length bounds), the body is parsed by the session task, which knows whether
/// 4-byte ASNs were negotiated.
async fn read_loop(
    mut read: OwnedReadHalf,
    conn: ConnId,
    inputs: mpsc::UnboundedSender<SessionInput>,
) {
    loop {
        let mut header = [0u8; HEADER_LEN];
        if read.read_exact(&mut header).await.is_err() {
            break;
        }
        let length = match message::frame_length(&header) {
            Ok(length) => length,
            Err(notification) => {
                let _ = inputs.send(SessionInput::Frame(conn, Err(notification)));
                return;
            }
        };
        let mut frame = header.to_vec();
        frame.resize(length, 0);
        if read.read_exact(&mut frame[HEADER_LEN..]).await.is_err() {
            break;
        }
        if inputs.send(SessionInput::Frame(conn, Ok(frame))).is_err() {
            return;
        }
    }
    let _ = inputs.send(SessionInput::ConnClosed(conn));
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut cmds: mpsc::UnboundedReceiver<WriterCmd>,
    conn: ConnId,
    inputs: mpsc::UnboundedSender<SessionInput>,
) {
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            WriterCmd::Bytes(bytes) => {
                if write.write_all(&bytes).await.is_err() {
                    let _ = inputs.send(SessionInput::ConnClosed(conn));
                    return;
                }
            }
            WriterCmd::Close => break,
        }
    }
    let _ = write.shutdown().await;
}

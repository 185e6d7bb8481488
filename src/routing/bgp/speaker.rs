//! The speaker: one task that owns the RIBs and talks to every session task, and
//! the handle the rest of kubewire uses (`announce`, `withdraw`, learned-route
//! events, `peers()`).
//!
//! All route state lives in this one task, so Adj-RIB-In, Loc-RIB and every
//! Adj-RIB-Out change together and in order; session tasks only carry messages.
//! A session that comes up is sent its whole Adj-RIB-Out; later Loc-RIB changes
//! reach it as differences.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::config::{PeerConfig, SpeakerConfig};
use super::fsm::{FsmConfig, Session, State};
use super::message::{LocalOpen, encode_updates, end_of_rib};
use super::policy::{ExportTarget, ImportPolicy, LocalIdentity, PeerIdentity, RouteSource};
use super::rib::{AdjRibOut, BestChange, Rib};
use super::route::{AsSegment, NextHop, OutChange, PathAttrs, RouteChange};
use super::session::{SessionInput, SessionReport, SessionTask, SharedStatus};
use super::socket;

/// Optional attributes of a route the node announces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteAttrs {
    /// RFC 1997 communities (`asn << 16 | value`).
    pub communities: Vec<u32>,
    pub med: Option<u32>,
    /// Sent to iBGP neighbours (default 100).
    pub local_pref: Option<u32>,
}

/// A change of what the node should route through BGP: the best learned route for
/// a prefix, or its end. Locally announced routes are not reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    Learned {
        prefix: IpNet,
        /// The neighbour the best route came from.
        peer: IpAddr,
        next_hop: NextHop,
        as_path: Vec<AsSegment>,
        communities: Vec<u32>,
    },
    Withdrawn {
        prefix: IpNet,
    },
}

/// One neighbour as `peers()` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub asn: u32,
    pub state: State,
    /// How long the session has been established.
    pub uptime: Option<Duration>,
    pub prefixes_received: usize,
    pub prefixes_accepted: usize,
    pub prefixes_advertised: usize,
    pub updates_in: u64,
    pub updates_out: u64,
    /// Times an established session went down.
    pub flaps: u64,
    /// Established, and the neighbour sent End-of-RIB for every family: it has
    /// given all its routes.
    pub initial_routes_done: bool,
}

enum Command {
    /// A restarting neighbour's restart time ended (its restart count then).
    StaleTimeout(IpAddr, u64),
    Announce(IpNet, Arc<PathAttrs>),
    Withdraw(IpNet),
    SetPeers(Vec<PeerConfig>),
    SetImport(ImportPolicy),
    Subscribe(mpsc::UnboundedSender<RouteEvent>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    Shutdown,
}

/// The running speaker. Dropping it stops the speaker too (its command channel
/// closes), but only [`SpeakerHandle::shutdown`] waits for the Ceases to go out.
pub struct SpeakerHandle {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

/// A cheap clone of the handle that can only ask for the neighbours' status (for
/// metrics and the status endpoint).
#[derive(Clone)]
pub struct SpeakerObserver {
    commands: mpsc::UnboundedSender<Command>,
}

impl SpeakerObserver {
    pub async fn peers(&self) -> Vec<PeerStatus> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Peers(tx)).is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }
}

pub struct Speaker;

impl Speaker {
    /// Checks the configuration, binds the listeners and starts every session.
    pub async fn start(config: SpeakerConfig) -> anyhow::Result<SpeakerHandle> {
        config
            .check()
            .map_err(|e| anyhow::anyhow!("BGP configuration: {e}"))?;
        let keys: Vec<(IpAddr, Vec<u8>)> = config
            .peers
            .iter()
            .filter_map(|p| Some((p.address, p.password.clone()?.into_bytes())))
            .collect();
        let mut listeners = vec![];
        for addr in &config.listen {
            listeners.push(Arc::new(
                socket::listen(*addr, &keys)
                    .with_context(|| format!("listening for BGP on {addr}"))?,
            ));
        }

        let (reports_tx, reports) = mpsc::unbounded_channel();
        let identity = LocalIdentity {
            asn: config.asn,
            router_id: config.router_id,
            route_reflector: config.route_reflector,
            cluster_id: config.cluster_id.unwrap_or(config.router_id),
        };
        let session_inputs: SessionInputs = Arc::new(RwLock::new(HashMap::new()));
        let listener_tasks = listeners
            .iter()
            .map(|l| tokio::spawn(accept_loop(l.clone(), session_inputs.clone())))
            .collect();

        let (commands, commands_rx) = mpsc::unbounded_channel();
        let mut state = SpeakerState {
            rib: Rib::new(identity, config.import.clone()),
            peers: HashMap::new(),
            subscribers: vec![],
            pending: vec![],
            config: config.clone(),
            reports_tx,
            session_inputs,
            listeners,
            sessions: vec![],
            interned: Default::default(),
            commands: commands.downgrade(),
        };
        for peer in &config.peers {
            state.add_peer(peer.clone());
        }
        let task = tokio::spawn(state.run(commands_rx, reports, listener_tasks));
        Ok(SpeakerHandle { commands, task })
    }
}

impl SpeakerHandle {
    /// Originates `prefix`. `next_hop`: `None` announces this speaker's own address
    /// on each session (next-hop-self).
    pub fn announce(&self, prefix: IpNet, next_hop: Option<IpAddr>, attrs: RouteAttrs) {
        let next_hop = match next_hop {
            None => NextHop::Local,
            Some(IpAddr::V4(a)) => NextHop::V4(a),
            Some(IpAddr::V6(a)) => NextHop::V6 {
                global: a,
                link_local: None,
            },
        };
        let mut path = PathAttrs::local(next_hop);
        path.communities = attrs.communities;
        path.med = attrs.med;
        path.local_pref = attrs.local_pref;
        let _ = self
            .commands
            .send(Command::Announce(prefix.trunc(), Arc::new(path)));
    }

    pub fn withdraw(&self, prefix: IpNet) {
        let _ = self.commands.send(Command::Withdraw(prefix.trunc()));
    }

    /// Replaces the neighbours: sessions of removed or changed neighbours end (their
    /// routes are withdrawn), new ones start; unchanged ones are left alone.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        let _ = self.commands.send(Command::SetPeers(peers));
    }

    /// Replaces the import policy and re-checks every received route against it.
    pub fn set_import(&self, import: ImportPolicy) {
        let _ = self.commands.send(Command::SetImport(import));
    }

    /// Learned-route events: first the current best learned routes, then every
    /// change, in order and without loss.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<RouteEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.commands.send(Command::Subscribe(tx));
        rx
    }

    pub async fn peers(&self) -> Vec<PeerStatus> {
        self.observer().peers().await
    }

    pub fn observer(&self) -> SpeakerObserver {
        SpeakerObserver {
            commands: self.commands.clone(),
        }
    }

    /// Sends Cease to every neighbour and waits for the speaker to stop.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.task.await;
    }
}

/// Hands accepted connections to the session of their neighbour; others are
/// dropped (the MD5 keys already refuse unsigned SYNs from configured neighbours).
async fn accept_loop(listener: Arc<tokio::net::TcpListener>, sessions: SessionInputs) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let ip = from.ip().to_canonical();
                let session = sessions.read().ok().and_then(|s| s.get(&ip).cloned());
                match session {
                    Some(session) => {
                        let _ = session.send(SessionInput::Accepted(stream));
                    }
                    None => {
                        tracing::info!(%from, "BGP connection from an unknown neighbour refused")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a BGP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The input channel of every neighbour's session, shared with the listeners.
type SessionInputs = Arc<RwLock<HashMap<IpAddr, mpsc::UnboundedSender<SessionInput>>>>;

/// An established session as export needs it.
struct UpSession {
    identity: PeerIdentity,
    session: Session,
    local: SocketAddr,
    adj_rib_out: AdjRibOut,
    /// End-of-RIB received, per family (IPv4, IPv6).
    end_of_rib: (bool, bool),
}

impl UpSession {
    /// The neighbour has sent all its routes of every negotiated family.
    fn initial_routes_done(&self) -> bool {
        let families = self.session.families;
        (!families.ipv4 || self.end_of_rib.0) && (!families.ipv6 || self.end_of_rib.1)
    }
}

struct Neighbour {
    config: PeerConfig,
    inputs: mpsc::UnboundedSender<SessionInput>,
    status: SharedStatus,
    up: Option<UpSession>,
    /// Graceful restarts seen, so an old restart's timer cannot end a newer one.
    restarts: u64,
}

impl Neighbour {
    /// Fills the next-hop-self addresses for this session: configured ones first,
    /// else the session's own local address of the right family.
    fn export_target<'a>(&'a self, up: &'a UpSession) -> ExportTarget<'a> {
        let local = up.local.ip().to_canonical();
        let (local_v4, local_v6): (Option<Ipv4Addr>, Option<Ipv6Addr>) = match local {
            IpAddr::V4(a) => (Some(a), None),
            IpAddr::V6(a) => (None, Some(a)),
        };
        let link_local = local_v6.filter(|a| a.is_unicast_link_local());
        ExportTarget {
            peer: &up.identity,
            families: up.session.families,
            policy: &self.config.export,
            self_v4: self.config.next_hop_v4.or(local_v4),
            self_v6: self
                .config
                .next_hop_v6
                .or(local_v6.filter(|a| !a.is_unicast_link_local())),
            self_v6_link_local: self.config.next_hop_v6_link_local.or(link_local),
        }
    }
}

struct SpeakerState {
    rib: Rib,
    peers: HashMap<IpAddr, Neighbour>,
    subscribers: Vec<mpsc::UnboundedSender<RouteEvent>>,
    /// Loc-RIB changes from announcements not yet sent: a burst of `announce`
    /// calls goes out in a few UPDATEs instead of one per prefix.
    pending: Vec<BestChange>,
    /// Timers and identity new sessions are started with.
    config: SpeakerConfig,
    reports_tx: mpsc::UnboundedSender<SessionReport>,
    session_inputs: SessionInputs,
    /// Kept to set the MD5 keys of neighbours added later.
    listeners: Vec<Arc<tokio::net::TcpListener>>,
    sessions: Vec<JoinHandle<()>>,
    /// One shared copy of each distinct attribute set the node announces: most of
    /// its routes carry the same attributes.
    interned: std::collections::HashSet<Arc<PathAttrs>>,
    /// For restart timers; weak, so the speaker still stops when its handle goes.
    commands: mpsc::WeakUnboundedSender<Command>,
}

impl SpeakerState {
    fn intern(&mut self, attrs: Arc<PathAttrs>) -> Arc<PathAttrs> {
        if let Some(shared) = self.interned.get(&attrs) {
            return shared.clone();
        }
        // Drop sets no route uses any more before the set grows.
        if self.interned.len() >= 1024 {
            self.interned.retain(|a| Arc::strong_count(a) > 1);
        }
        self.interned.insert(attrs.clone());
        attrs
    }

    /// Starts the session of a new neighbour.
    fn add_peer(&mut self, peer: PeerConfig) {
        if let Some(password) = &peer.password {
            for listener in &self.listeners {
                let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
                if v6 == peer.address.is_ipv6()
                    && let Err(e) =
                        socket::set_md5(listener.as_raw_fd(), v6, peer.address, password.as_bytes())
                {
                    tracing::warn!(peer = %peer.address, error = %e, "setting the TCP-MD5 key on the BGP listener");
                }
            }
        }
        let fsm_config = FsmConfig {
            local: LocalOpen {
                asn: self.config.asn,
                router_id: self.config.router_id,
                hold_time: peer.hold_time.unwrap_or(self.config.hold_time),
                families: peer.families,
                graceful_restart: self.config.graceful_restart,
            },
            peer_asn: peer.asn,
            passive: peer.passive,
            connect_retry: self.config.connect_retry,
            backoff: self.config.backoff,
        };
        let (task, inputs, status) =
            SessionTask::new(peer.clone(), fsm_config, self.reports_tx.clone());
        self.sessions.retain(|s| !s.is_finished());
        self.sessions.push(tokio::spawn(task.run()));
        if let Ok(mut map) = self.session_inputs.write() {
            map.insert(peer.address, inputs.clone());
        }
        self.peers.insert(
            peer.address,
            Neighbour {
                config: peer,
                inputs,
                status,
                up: None,
                restarts: 0,
            },
        );
    }

    /// Stops a neighbour's session (Cease) and drops its routes.
    fn remove_peer(&mut self, address: IpAddr) {
        let Some(neighbour) = self.peers.remove(&address) else {
            return;
        };
        let _ = neighbour.inputs.send(SessionInput::Stop);
        if let Ok(mut map) = self.session_inputs.write() {
            map.remove(&address);
        }
        if neighbour.config.password.is_some() {
            for listener in &self.listeners {
                let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
                if v6 == address.is_ipv6() {
                    let _ = socket::set_md5(listener.as_raw_fd(), v6, address, &[]);
                }
            }
        }
        let changes = self.rib.peer_down(&address);
        self.pending.extend(changes);
    }

    fn set_peers(&mut self, wanted: Vec<PeerConfig>) {
        let wanted: HashMap<IpAddr, PeerConfig> =
            wanted.into_iter().map(|p| (p.address, p)).collect();
        let stale: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(a, n)| wanted.get(a) != Some(&n.config))
            .map(|(a, _)| *a)
            .collect();
        for address in stale {
            tracing::info!(peer = %address, "BGP neighbour removed or changed");
            self.remove_peer(address);
        }
        for (address, peer) in wanted {
            if !self.peers.contains_key(&address) {
                tracing::info!(peer = %address, asn = peer.asn, "BGP neighbour added");
                self.add_peer(peer);
            }
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut reports: mpsc::UnboundedReceiver<SessionReport>,
        listeners: Vec<JoinHandle<()>>,
    ) {
        'running: loop {
            tokio::select! {
                command = commands.recv() => {
                    // Take the burst of queued commands (up to a bound, so sessions
                    // are not starved) before propagating.
                    let mut next = command;
                    let mut budget = 10_000;
                    loop {
                        match next {
                            None | Some(Command::Shutdown) => break 'running,
                            Some(command) => self.on_command(command),
                        }
                        budget -= 1;
                        if budget == 0 {
                            break;
                        }
                        match commands.try_recv() {
                            Ok(command) => next = Some(command),
                            Err(_) => break,
                        }
                    }
                    self.flush();
                }
                Some(report) = reports.recv() => {
                    self.flush();
                    self.on_report(report);
                }
            }
        }
        for listener in listeners {
            listener.abort();
        }
        for neighbour in self.peers.values() {
            let _ = neighbour.inputs.send(SessionInput::Stop);
        }
        // Session tasks end once their Cease is queued; give them a moment.
        let sessions = std::mem::take(&mut self.sessions);
        let _ =
            tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(sessions)).await;
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Announce(prefix, attrs) => {
                let attrs = self.intern(attrs);
                let changes = self.rib.originate(prefix, attrs);
                self.pending.extend(changes);
            }
            Command::Withdraw(prefix) => {
                let changes = self.rib.withdraw_local(prefix);
                self.pending.extend(changes);
            }
            Command::SetPeers(peers) => self.set_peers(peers),
            Command::SetImport(import) => {
                let changes = self.rib.set_import(import);
                self.pending.extend(changes);
            }
            Command::Subscribe(tx) => {
                self.flush();
                for (prefix, best) in self.rib.best() {
                    if let Some(event) = learned(*prefix, &best.source, &best.attrs) {
                        let _ = tx.send(event);
                    }
                }
                self.subscribers.push(tx);
            }
            Command::Peers(reply) => {
                self.flush();
                let mut list: Vec<PeerStatus> = self
                    .peers
                    .values()
                    .map(|n| {
                        let status = n.status.lock().map(|s| *s).ok();
                        let adj_in = self.rib.adj_rib_in(&n.config.address);
                        PeerStatus {
                            address: n.config.address,
                            asn: n.config.asn,
                            state: status.map_or(State::Idle, |s| s.state),
                            uptime: status.and_then(|s| s.established_at).map(|t| t.elapsed()),
                            prefixes_received: adj_in.map_or(0, |r| r.received()),
                            prefixes_accepted: adj_in.map_or(0, |r| r.accepted()),
                            prefixes_advertised: n
                                .up
                                .as_ref()
                                .map_or(0, |u| u.adj_rib_out.advertised()),
                            updates_in: status.map_or(0, |s| s.updates_in),
                            updates_out: status.map_or(0, |s| s.updates_out),
                            flaps: status.map_or(0, |s| s.flaps),
                            initial_routes_done: n
                                .up
                                .as_ref()
                                .is_some_and(UpSession::initial_routes_done),
                        }
                    })
                    .collect();
                list.sort_by_key(|p| p.address);
                let _ = reply.send(list);
            }
            Command::StaleTimeout(peer, restart) => {
                if self.peers.get(&peer).is_some_and(|n| n.restarts == restart)
                    && self.rib.has_stale(&peer)
                {
                    tracing::info!(%peer, "BGP neighbour's restart time is over: its stale routes are withdrawn");
                    let changes = self.rib.flush_stale(&peer, None);
                    self.pending.extend(changes);
                }
            }
            Command::Shutdown => {}
        }
    }

    fn on_report(&mut self, report: SessionReport) {
        match report {
            SessionReport::Up {
                peer,
                session,
                local,
            } => {
                let Some(neighbour) = self.peers.get_mut(&peer) else {
                    return;
                };
                let identity = PeerIdentity {
                    address: peer,
                    asn: session.peer.asn,
                    router_id: session.peer.router_id,
                    ibgp: session.peer.asn == self.rib.local_identity().asn,
                    route_reflector_client: neighbour.config.route_reflector_client,
                };
                tracing::info!(%peer, asn = session.peer.asn, hold = session.hold_time, "BGP session established");
                self.rib.peer_up(identity.clone());
                neighbour.up = Some(UpSession {
                    identity,
                    session,
                    local,
                    adj_rib_out: AdjRibOut::default(),
                    end_of_rib: (false, false),
                });
                let prefixes: Vec<IpNet> = self.rib.best().keys().copied().collect();
                self.send_to(&peer, &prefixes);
                // End-of-RIB after the initial routes (RFC 4724 §2): a restarting
                // neighbour drops what we no longer announce.
                if let Some(n) = self.peers.get(&peer)
                    && let Some(up) = &n.up
                {
                    let families = up.session.families;
                    let _ = n.inputs.send(SessionInput::Send(end_of_rib(families)));
                    // Stale routes of families no longer negotiated get no EoR.
                    let mut changes = vec![];
                    for (v6, carried) in [(false, families.ipv4), (true, families.ipv6)] {
                        if !carried {
                            changes.extend(self.rib.flush_stale(&peer, Some(v6)));
                        }
                    }
                    self.propagate(changes);
                }
            }
            SessionReport::Down { peer, graceful } => {
                let restart_time = self.peers.get_mut(&peer).and_then(|n| {
                    let up = n.up.take()?;
                    let time = up.session.peer.graceful_restart?;
                    (graceful && self.config.graceful_restart.is_some()).then(|| {
                        n.restarts += 1;
                        (time, n.restarts)
                    })
                });
                match restart_time {
                    Some((time, restart)) => {
                        tracing::info!(%peer, restart_time = time, "BGP session down: the neighbour may be restarting, its routes are kept");
                        self.rib.peer_restarting(&peer);
                        let commands = self.commands.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(u64::from(time))).await;
                            if let Some(commands) = commands.upgrade() {
                                let _ = commands.send(Command::StaleTimeout(peer, restart));
                            }
                        });
                    }
                    None => {
                        tracing::info!(%peer, "BGP session down");
                        let changes = self.rib.peer_down(&peer);
                        self.propagate(changes);
                    }
                }
            }
            SessionReport::Routes { peer, changes } => {
                let eors: Vec<bool> = changes
                    .iter()
                    .filter_map(|c| match c {
                        RouteChange::EndOfRib { ipv6 } => Some(*ipv6),
                        _ => None,
                    })
                    .collect();
                let mut best = self.rib.receive(&peer, changes);
                for ipv6 in eors {
                    best.extend(self.rib.flush_stale(&peer, Some(ipv6)));
                    if let Some(up) = self.peers.get_mut(&peer).and_then(|n| n.up.as_mut()) {
                        if ipv6 {
                            up.end_of_rib.1 = true;
                        } else {
                            up.end_of_rib.0 = true;
                        }
                    }
                }
                self.propagate(best);
            }
            SessionReport::RouteRefresh { peer } => {
                if let Some(n) = self.peers.get(&peer)
                    && let Some(up) = &n.up
                {
                    let msgs = encode_updates(&up.adj_rib_out.replay(), up.session.asn4);
                    let _ = n.inputs.send(SessionInput::Send(msgs));
                }
            }
        }
    }

    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.propagate(pending);
    }

    /// Reports Loc-RIB changes to subscribers and sends each session its
    /// Adj-RIB-Out differences.
    fn propagate(&mut self, changes: Vec<BestChange>) {
        if changes.is_empty() {
            return;
        }
        for change in &changes {
            let event = match &change.new {
                Some(best) => learned(change.prefix, &best.source, &best.attrs),
                None => None,
            };
            let event = event.or_else(|| {
                matches!(
                    &change.old,
                    Some(old) if matches!(old.source, RouteSource::Peer(_))
                )
                .then_some(RouteEvent::Withdrawn {
                    prefix: change.prefix,
                })
            });
            if let Some(event) = event {
                self.subscribers.retain(|s| s.send(event.clone()).is_ok());
            }
        }
        let mut prefixes: Vec<IpNet> = changes.iter().map(|c| c.prefix).collect();
        prefixes.sort();
        prefixes.dedup();
        let peers: Vec<IpAddr> = self.peers.keys().copied().collect();
        for peer in peers {
            self.send_to(&peer, &prefixes);
        }
    }

    /// Brings one session's Adj-RIB-Out up to date for `prefixes` and sends the
    /// difference.
    fn send_to(&mut self, peer: &IpAddr, prefixes: &[IpNet]) {
        let Some(neighbour) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(up) = neighbour.up.as_ref() else {
            return;
        };
        let desired: Vec<(IpNet, Option<Arc<PathAttrs>>)> = {
            let target = neighbour.export_target(up);
            // Local routes with the same (interned) attributes and family export to
            // the same attributes: keep one copy of each result for the batch.
            let mut shared: HashMap<(*const PathAttrs, bool), Option<Arc<PathAttrs>>> =
                HashMap::new();
            prefixes
                .iter()
                .map(|p| {
                    let key = self
                        .rib
                        .best()
                        .get(p)
                        .filter(|b| b.source == RouteSource::Local)
                        .map(|b| (Arc::as_ptr(&b.attrs), p.addr().is_ipv4()));
                    let out = match key {
                        Some(key) => shared
                            .entry(key)
                            .or_insert_with(|| self.rib.export_for(p, &target))
                            .clone(),
                        None => self.rib.export_for(p, &target),
                    };
                    (*p, out)
                })
                .collect()
        };
        let Some(up) = neighbour.up.as_mut() else {
            return;
        };
        let changes: Vec<OutChange> = desired
            .into_iter()
            .filter_map(|(prefix, attrs)| up.adj_rib_out.set(prefix, attrs))
            .collect();
        if !changes.is_empty() {
            let msgs = encode_updates(&changes, up.session.asn4);
            let _ = neighbour.inputs.send(SessionInput::Send(msgs));
        }
    }
}

/// The event for a best route, if it was learned from a neighbour.
fn learned(prefix: IpNet, source: &RouteSource, attrs: &PathAttrs) -> Option<RouteEvent> {
    match source {
        RouteSource::Local => None,
        RouteSource::Peer(p) => Some(RouteEvent::Learned {
            prefix,
            peer: p.address,
            next_hop: attrs.next_hop,
            as_path: attrs.as_path.clone(),
            communities: attrs.communities.clone(),
        }),
    }
}

#[cfg(test)]
#[path = "speaker_tests.rs"]
mod tests;

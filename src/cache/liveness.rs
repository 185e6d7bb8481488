//! Whether the API server answers. A hung server (TCP open, nothing coming back)
//! looks to a watch like a quiet cluster, possibly for minutes; so the server is asked
//! for `/version` every [`PROBE_INTERVAL`], each answer awaited at most
//! [`PROBE_TIMEOUT`], and a server that does not answer is reported within about 20 s:
//! one log line when it stops and one when it is back, `kubewire_apiserver_up`, a
//! failure count, and a line in /healthz. /healthz stays green for it: the dataplane
//! keeps the last state the agent saw, and a restart would not bring the server back.
//!
//! A watch whose connection hangs sees nothing until kube's idle timeout (about five
//! minutes), even when a new connection would be answered at once (a server gone
//! behind a load balancer). So when the probe stops being answered every watch is
//! restarted (a new connection, a relist), and when it is answered again the watches
//! that have not completed a list since are restarted once more.

use std::time::{Duration, Instant};

use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::telemetry::{Health, Metrics};

pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of the /healthz detail line.
const HEALTH_DETAIL: &str = "apiserver";

/// What the probes have seen; pure, so transitions are tested without a server.
#[derive(Debug)]
pub struct Liveness {
    last_answer: Instant,
    /// Since when the server has not answered, if it does not.
    failing_since: Option<Instant>,
}

/// A change worth one log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    Stopped { error: String },
    Back { after: Duration },
}

impl Liveness {
    pub fn new(now: Instant) -> Self {
        Self {
            last_answer: now,
            failing_since: None,
        }
    }

    pub fn answered(&mut self, now: Instant) -> Option<Transition> {
        self.last_answer = now;
        self.failing_since
            .take()
            .map(|since| Transition::Back { after: now - since })
    }

    pub fn failed(&mut self, now: Instant, error: String) -> Option<Transition> {
        match self.failing_since {
            Some(_) => None,
            None => {
                self.failing_since = Some(now);
                Some(Transition::Stopped { error })
            }
        }
    }

    /// The /healthz detail: `None` while the server answers.
    pub fn detail(&self, now: Instant) -> Option<String> {
        self.failing_since.map(|_| {
            format!(
                "not answering, last answer {}s ago (the cache may be stale; the dataplane keeps its last state)",
                (now - self.last_answer).as_secs()
            )
        })
    }
}

/// Which watch streams a restart request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Every stream: the server stopped answering, their connections may be dead.
    Every,
    /// Streams that have not completed a list since the last restart: the server
    /// answers again, and a stream restarted while it hung may hang on its own.
    Unsynced,
}

/// One request to restart watch streams: which, and the client to restart them with
/// (a new one has its own connection pool: an idle pooled connection to a server
/// gone behind a load balancer would hang the relist as it hung the watch).
#[derive(Clone)]
pub struct RestartRequest {
    pub count: u64,
    pub which: Restart,
    pub client: Option<Client>,
}

/// The monitor's requests to restart the cache's watch streams: a counter (so no
/// request is missed by a stream busy meanwhile) and what the latest one is for.
#[derive(Clone)]
pub struct WatchRestarts(watch::Sender<RestartRequest>);

impl Default for WatchRestarts {
    fn default() -> Self {
        Self(
            watch::channel(RestartRequest {
                count: 0,
                which: Restart::Unsynced,
                client: None,
            })
            .0,
        )
    }
}

impl WatchRestarts {
    pub fn request(&self, which: Restart, client: Option<Client>) {
        self.0.send_modify(|request| {
            request.count += 1;
            request.which = which;
            request.client = client;
        });
    }

    /// For one watch stream: changes when a restart is requested.
    pub fn subscribe(&self) -> watch::Receiver<RestartRequest> {
        self.0.subscribe()
    }
}

/// Probes the API server until the task is dropped; asks `restarts` to restart the
/// watches when it stops and when it is back, each time with a new client made from
/// `config` (which the probes then use too).
pub async fn monitor(
    mut client: Client,
    config: Option<kube::Config>,
    metrics: Metrics,
    health: Health,
    restarts: WatchRestarts,
) {
    let up = Gauge::<i64>::default();
    metrics.register(
        "kubewire_apiserver_up",
        "1 while the API server answers GET /version within 10 s, else 0",
        up.clone(),
    );
    let failures = Counter::<u64>::default();
    metrics.register(
        "kubewire_apiserver_probe_failures",
        "Probes of the API server (GET /version) that failed or got no answer within 10 s",
        failures.clone(),
    );
    let reconnects = Counter::<u64>::default();
    metrics.register(
        "kubewire_apiserver_watch_reconnects",
        "Times the watches were restarted because the API server stopped or resumed answering",
        reconnects.clone(),
    );
    let mut liveness = Liveness::new(Instant::now());
    loop {
        let started = Instant::now();
        let result = match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!(
                "no answer to GET /version within {PROBE_TIMEOUT:?}"
            )),
        };
        let now = Instant::now();
        let transition = match result {
            Ok(()) => {
                up.set(1);
                liveness.answered(now)
            }
            Err(error) => {
                up.set(0);
                failures.inc();
                liveness.failed(now, error)
            }
        };
        let which = match &transition {
            Some(Transition::Stopped { .. }) => Some(Restart::Every),
            Some(Transition::Back { .. }) => Some(Restart::Unsynced),
            None => None,
        };
        let fresh = which
            .and(config.as_ref())
            .and_then(|config| Client::try_from(config.clone()).ok());
        if let Some(fresh) = &fresh {
            client = fresh.clone();
        }
        match transition {
            Some(Transition::Stopped { error }) => {
                tracing::error!(%error, "the API server is not answering: the watch cache may be stale; the dataplane keeps its last state; restarting the watches");
                reconnects.inc();
                restarts.request(Restart::Every, fresh);
            }
            Some(Transition::Back { after }) => {
                tracing::warn!(after = ?after, "the API server answers again; restarting the watches that have not relisted since");
                reconnects.inc();
                restarts.request(Restart::Unsynced, fresh);
            }
            None => {}
        }
        health.set_detail(HEALTH_DETAIL, liveness.detail(now));
        tokio::time::sleep(PROBE_INTERVAL.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_sees_the_latest_restart_request() {
        let restarts = WatchRestarts::default();
        let mut stream = restarts.subscribe();
        assert!(!stream.has_changed().unwrap());
        restarts.request(Restart::Every, None);
        restarts.request(Restart::Unsynced, None);
        assert!(stream.has_changed().unwrap());
        let latest = stream.borrow_and_update().clone();
        assert_eq!((latest.count, latest.which), (2, Restart::Unsynced));
        assert!(!stream.has_changed().unwrap());
    }

    #[test]
    fn one_transition_per_outage() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut liveness = Liveness::new(start);
        assert_eq!(liveness.answered(at(10)), None);
        assert_eq!(liveness.detail(at(10)), None);
        assert_eq!(
            liveness.failed(at(20), "timeout".into()),
            Some(Transition::Stopped {
                error: "timeout".into()
            })
        );
        assert_eq!(
            liveness.failed(at(30), "timeout".into()),
            None,
            "logged once"
        );
        assert!(
            liveness
                .detail(at(30))
                .is_some_and(|d| d.starts_with("not answering, last answer 20s ago")),
        );
        assert_eq!(
            liveness.answered(at(45)),
            Some(Transition::Back {
                after: Duration::from_secs(25)
            })
        );
        assert_eq!(liveness.detail(at(45)), None);
    }
}

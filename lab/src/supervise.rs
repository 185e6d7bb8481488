//! What a kubelet does for a DaemonSet pod that dies: the control plane restarts a
//! node's agent when it is gone, with backoff (1 s, doubling to 30 s; back to 1 s once
//! an agent has run for a minute). An agent nobody recorded that answers the node's
//! /healthz (one started by hand) counts as running and is left alone. Only a lab
//! that is completely up is supervised: `up` starts the agents itself, and `down`
//! stops the control plane before the agents.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::agents;
use super::process::ProcessRecord;
use super::state::LabStateFile;
use super::topology::NodePlan;

const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// An agent that ran this long resets its node's backoff.
const STEADY: Duration = Duration::from_secs(60);
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The backoff of one node's agent: pure, so it is tested without processes.
#[derive(Debug)]
pub struct Backoff {
    delay: Duration,
    /// When the agent was last seen dead, or last (re)started.
    since: Option<Instant>,
    running_since: Option<Instant>,
    pub restarts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delay: FIRST_DELAY,
            since: None,
            running_since: None,
            restarts: 0,
        }
    }
}

impl Backoff {
    /// The agent is running at `now`.
    pub fn running(&mut self, now: Instant) {
        self.since = None;
        let since = *self.running_since.get_or_insert(now);
        if now - since >= STEADY {
            self.delay = FIRST_DELAY;
        }
    }

    /// The agent is gone at `now`: whether to restart it now. After a restart the
    /// next one waits twice as long.
    pub fn gone(&mut self, now: Instant) -> bool {
        self.running_since = None;
        let since = *self.since.get_or_insert(now);
        if now - since < self.delay {
            return false;
        }
        self.since = Some(now);
        self.delay = (self.delay * 2).min(MAX_DELAY);
        self.restarts += 1;
        true
    }
}

/// Restarts dead agents until the task is dropped.
pub async fn run(state: LabStateFile, agent_exe: PathBuf) {
    let mut backoffs: BTreeMap<String, Backoff> = BTreeMap::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Ok(lab) = state.snapshot() else { continue };
        let Ok(plan) = lab.plan() else { continue };
        if !lab.complete {
            continue;
        }
        for node in &plan.nodes {
            let backoff = backoffs.entry(node.name.clone()).or_default();
            let role = format!("agent {}", node.name);
            let record = lab.processes.iter().rev().find(|p| p.role == role);
            let now = Instant::now();
            if record.is_some_and(ProcessRecord::is_alive) || answers(node).await {
                backoff.running(now);
                continue;
            }
            if !backoff.gone(now) {
                continue;
            }
            if let Some(dead) = record {
                reap(dead);
            }
            match restart(&state, node, &agent_exe, &lab.agent_args, &role) {
                Ok(record) => {
                    tracing::warn!(node = %node.name, pid = record.pid, restarts = backoff.restarts, "the agent was gone: restarted it")
                }
                Err(err) => {
                    tracing::error!(node = %node.name, error = %format!("{err:#}"), "restarting the agent")
                }
            }
        }
    }
}

/// Whether something answers the node's /healthz (any status: it runs).
async fn answers(node: &NodePlan) -> bool {
    agents::http_get(&node.netns, agents::HEALTH_ADDR, "/healthz")
        .await
        .is_ok()
}

fn restart(
    state: &LabStateFile,
    node: &NodePlan,
    exe: &std::path::Path,
    agent_args: &[String],
    role: &str,
) -> anyhow::Result<ProcessRecord> {
    // The dead record goes: a lab whose recorded processes all run is up.
    state.update(|s| s.processes.retain(|p| p.role != role || p.is_alive()))?;
    agents::start(state, node, exe, agent_args)
}

/// Collects a dead agent's exit status if it was our child (a restarted one).
fn reap(record: &ProcessRecord) {
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(record.pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_reset_after_a_steady_run() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut backoff = Backoff::default();
        backoff.running(at(0));
        assert!(!backoff.gone(at(100)), "the first restart waits 1 s");
        assert!(backoff.gone(at(1100)));
        assert!(!backoff.gone(at(2500)), "then 2 s");
        assert!(backoff.gone(at(3100)));
        assert!(!backoff.gone(at(6000)), "then 4 s");
        assert!(backoff.gone(at(7100)));
        assert_eq!(backoff.restarts, 3);
        backoff.running(at(8000));
        backoff.running(at(30_000));
        assert!(!backoff.gone(at(30_100)), "not yet steady: still 8 s");
        assert!(backoff.gone(at(38_100)));
        backoff.running(at(40_000));
        backoff.running(at(100_000));
        assert!(!backoff.gone(at(100_500)));
        assert!(
            backoff.gone(at(101_600)),
            "steady for a minute: back to 1 s"
        );
        for i in 0..20 {
            backoff.gone(at(200_000 + i * 100_000));
        }
        assert_eq!(backoff.delay, MAX_DELAY);
    }
}

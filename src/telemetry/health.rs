//! Liveness: the agent is healthy while every enabled controller has completed a sync
//! recently. A controller that stops syncing (stuck, or failing every retry) turns
//! /healthz red and names itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, Option<Instant>>>>,
    /// Lines shown in /healthz that do not make it fail (a hung API server: the
    /// dataplane is fine and a restart would not help).
    details: Arc<Mutex<BTreeMap<String, String>>>,
    stale_after: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    pub body: String,
}

impl Health {
    pub fn new(stale_after: Duration) -> Self {
        Self {
            inner: Arc::default(),
            details: Arc::default(),
            stale_after,
        }
    }

    /// Sets (or with `None` clears) the detail line `name`.
    pub fn set_detail(&self, name: &str, detail: Option<String>) {
        if let Ok(mut details) = self.details.lock() {
            match detail {
                Some(text) => details.insert(name.to_string(), text),
                None => details.remove(name),
            };
        }
    }

    fn detail_lines(&self) -> String {
        let Ok(details) = self.details.lock() else {
            return String::new();
        };
        details
            .iter()
            .map(|(name, text)| format!("{name}: {text}\n"))
            .collect()
    }

    /// Declares a controller that must sync for the agent to be healthy.
    pub fn enroll(&self, controller: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.entry(controller.to_string()).or_insert(None);
        }
    }

    pub fn synced(&self, controller: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.insert(controller.to_string(), Some(Instant::now()));
        }
    }

    pub fn report(&self) -> HealthReport {
        let now = Instant::now();
        let Ok(map) = self.inner.lock() else {
            return HealthReport {
                healthy: false,
                body: "health state poisoned\n".into(),
            };
        };
        let mut problems = Vec::new();
        if map.is_empty() {
            problems.push("no controller has started".to_string());
        }
        for (name, last) in map.iter() {
            match last {
                None => problems.push(format!("{name}: not synced yet")),
                Some(at) if now.duration_since(*at) > self.stale_after => problems.push(format!(
                    "{name}: stale, last sync {}s ago",
                    now.duration_since(*at).as_secs()
                )),
                Some(_) => {}
            }
        }
        let details = self.detail_lines();
        if problems.is_empty() {
            let names: Vec<&str> = map.keys().map(String::as_str).collect();
            HealthReport {
                healthy: true,
                body: format!("ok: {}\n{details}", names.join(", ")),
            }
        } else {
            HealthReport {
                healthy: false,
                body: problems.join("\n") + "\n" + &details,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_only_when_every_controller_synced_recently() {
        let health = Health::new(Duration::from_millis(50));
        assert!(!health.report().healthy, "nothing enrolled is not healthy");
        health.enroll("firewall");
        health.enroll("routing");
        assert!(!health.report().healthy);
        health.synced("firewall");
        let report = health.report();
        assert!(!report.healthy && report.body.contains("routing: not synced yet"));
        health.synced("routing");
        assert!(health.report().healthy);
        health.set_detail("apiserver", Some("not answering".into()));
        let report = health.report();
        assert!(
            report.healthy && report.body.ends_with("apiserver: not answering\n"),
            "{report:?}"
        );
        health.set_detail("apiserver", None);
        assert!(!health.report().body.contains("apiserver"));
        std::thread::sleep(Duration::from_millis(80));
        health.synced("routing");
        let report = health.report();
        assert!(
            !report.healthy && report.body.contains("firewall: stale"),
            "{report:?}"
        );
    }
}

//! The lab's background processes (API server, agents, responders): started detached
//! from the caller's terminal and session so `lab up` can return while they run,
//! logging to files in the state dir, marked with `KUBEWIRE_LAB=<name>` in their
//! environment, and recorded by pid *and* start time so that a later `down` never
//! signals an unrelated process that reused the pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Every process the lab starts carries this variable, set to the lab's name.
pub const LAB_ENV: &str = "KUBEWIRE_LAB";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// `apiserver`, `agent n1`, `responder ns/pod`.
    pub role: String,
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat (clock ticks since boot).
    pub start_time: u64,
    pub log: PathBuf,
}

impl ProcessRecord {
    /// Whether this very process (same pid and start time) still runs; a zombie
    /// counts as gone.
    pub fn is_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z')
    }
}

/// (state, start time) from /proc/<pid>/stat.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Starts `command` in its own process group with stdin closed and stderr (and
/// stdout unless it is piped by the caller) appended to `log`.
pub fn spawn(
    lab: &str,
    role: &str,
    mut command: Command,
    log: &Path,
    pipe_stdout: bool,
) -> anyhow::Result<(ProcessRecord, Child)> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let stdout = if pipe_stdout {
        Stdio::piped()
    } else {
        Stdio::from(file.try_clone()?)
    };
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .env(LAB_ENV, lab)
        // Logs go to files: no terminal colours in them.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::from(file))
        .spawn()
        .with_context(|| format!("starting {role}"))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let start_time = proc_stat(pid).map(|(_, start)| start).unwrap_or_default();
    Ok((
        ProcessRecord {
            role: role.to_string(),
            pid,
            start_time,
            log: log.to_path_buf(),
        },
        child,
    ))
}

/// Waits until a child started with a piped stdout prints `ready` as its first
/// line; else kills it and fails with the end of its log.
pub async fn wait_ready(
    record: &ProcessRecord,
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<()> {
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{}: stdout is not piped", record.role))?;
    let ready = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    });
    match tokio::time::timeout(timeout, ready).await {
        Ok(Ok(Ok(line))) if line.trim() == "ready" => Ok(()),
        _ => {
            // Neither left running nor left a zombie of a long-lived caller (the
            // control plane's kubelet).
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "{} did not start; its log ends:\n{}",
                record.role,
                tail(&record.log, 15)
            )
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    if all.is_empty() {
        format!("({} is empty)", log.display())
    } else {
        all[start..].join("\n")
    }
}

/// SIGTERM to every live process of `records` and every pid in `others`, SIGKILL to
/// those still running after `grace`; returns once all are gone (or 5 s later).
pub fn terminate(records: &[ProcessRecord], others: &[i32], grace: Duration) {
    let mut targets: Vec<(i32, Option<u64>)> = records
        .iter()
        .filter(|r| r.is_alive())
        .map(|r| (r.pid, Some(r.start_time)))
        .collect();
    targets.extend(others.iter().map(|pid| (*pid, None)));
    targets.sort();
    targets.dedup_by_key(|t| t.0);
    let alive = |(pid, start): &(i32, Option<u64>)| match proc_stat(*pid) {
        Some((state, started)) => state != 'Z' && start.is_none_or(|s| s == started),
        None => false,
    };
    for target in targets.iter().filter(|t| alive(t)) {
        let _ = kill(Pid::from_raw(target.0), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let mut killed = false;
    while targets.iter().any(alive) {
        reap(&targets);
        if !killed && Instant::now() >= deadline {
            for target in targets.iter().filter(|t| alive(t)) {
                let _ = kill(Pid::from_raw(target.0), Signal::SIGKILL);
            }
            killed = true;
        }
        if Instant::now() >= deadline + Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reap(&targets);
}

/// Collects exit statuses of targets that are our own children (`lab run`), so
/// none stays a zombie; other pids are not ours to wait for and are skipped.
fn reap(targets: &[(i32, Option<u64>)]) {
    for (pid, _) in targets {
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(*pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_identify_and_terminate_a_process() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let mut command = Command::new("sleep");
        command.arg("30");
        let (record, _child) = spawn("t", "sleeper", command, &log, false).unwrap();
        assert!(record.is_alive());
        let impostor = ProcessRecord {
            start_time: record.start_time + 1,
            ..record.clone()
        };
        assert!(!impostor.is_alive(), "a reused pid is not ours");
        // The parent may resume while the child is still inside execve, before its
        // new environment is readable: look again for a moment.
        let marked = (0..100).any(|_| {
            let environ = std::fs::read(format!("/proc/{}/environ", record.pid)).unwrap();
            let found = environ
                .split(|b| *b == 0)
                .any(|kv| kv == format!("{LAB_ENV}=t").as_bytes());
            if !found {
                std::thread::sleep(Duration::from_millis(10));
            }
            found
        });
        assert!(marked, "{LAB_ENV}=t is in the process's environment");
        terminate(std::slice::from_ref(&record), &[], Duration::from_secs(2));
        assert!(!record.is_alive());
    }
}

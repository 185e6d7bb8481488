//! BIRD 2 as the BGP tests and the `bgp` benchmark run it: a daemon in a network
//! namespace with a config the caller writes, its control socket, log and resident
//! memory, killed when its guard drops. Every `birdc` call is bounded (10 s).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a `birdc` call, and BIRD's start, may take.
const LIMIT: Duration = Duration::from_secs(10);

/// Why this machine cannot run BIRD tests (not root, or no `bird`/`birdc`/`ip`).
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["bird", "birdc", "ip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} not installed (scripts/install-deps installs bird2)"
            ));
        }
    }
    None
}

/// A BIRD daemon in a namespace, killed on drop.
pub struct Bird {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Bird {
    /// Starts BIRD in netns `netns` with `config` (a `log` line to its own file is
    /// put first) and returns once `birdc` gets an answer; panics, with the log, when
    /// BIRD exits (a config error ends it at once) or does not answer within 10 s.
    pub fn start(netns: &str, config: &str) -> Bird {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("bird.conf");
        let socket = dir.path().join("bird.ctl");
        let log = dir.path().join("bird.log");
        std::fs::write(&conf, format!("log \"{}\" all;\n{config}", log.display()))
            .expect("writing bird.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.path().join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("starting bird");
        let mut bird = Bird { child, socket, dir };
        let deadline = Instant::now() + LIMIT;
        while !bird.birdc(&["show", "status"]).contains("Daemon is up") {
            if let Ok(Some(status)) = bird.child.try_wait() {
                panic!("bird exited ({status}): {}", bird.log());
            }
            assert!(
                Instant::now() < deadline,
                "bird did not answer on its control socket; log:\n{}",
                bird.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bird
    }

    /// Its control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `birdc -s SOCKET args…`: what it printed (empty before BIRD listens).
    pub fn birdc(&self, args: &[&str]) -> String {
        birdc(&self.socket, args)
    }

    /// [`Bird::birdc`] without blocking the async runtime.
    pub async fn birdc_async(&self, args: &[&str]) -> String {
        let output = tokio::time::timeout(
            LIMIT,
            tokio::process::Command::new("birdc")
                .arg("-s")
                .arg(&self.socket)
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("birdc answered within 10s")
        .expect("running birdc");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Its log file and what it printed.
    pub fn log(&self) -> String {
        ["bird.log", "stderr"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect()
    }

    /// Its resident memory (KiB), 0 once it is gone.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `birdc -s socket args…`, bounded to 10 s: what it printed (empty when there is no
/// socket yet).
pub fn birdc(socket: &Path, args: &[&str]) -> String {
    if !socket.exists() {
        return String::new();
    }
    let out = Command::new("timeout")
        .arg(LIMIT.as_secs().to_string())
        .arg("birdc")
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .expect("running birdc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

//! What integration tests share about running at all: a test that cannot run here
//! (no root, a kernel without a feature) says why and is recorded as skipped — never
//! silently passed. `scripts/test` sets `KUBEWIRE_SKIP_LOG` and prints the list.

use std::io::Write;

/// Records the calling test as skipped for `reason`: one line on stderr, and one in
/// `$KUBEWIRE_SKIP_LOG` when set. The caller returns right after.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| {
            stem.rsplit_once('-')
                .map_or(stem.clone(), |(name, _)| name.to_string())
        })
        .unwrap_or_default();
    let line = format!("{binary}::{test}: {reason}");
    eprintln!("skipped: {line}");
    if let Some(path) = std::env::var_os("KUBEWIRE_SKIP_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// True when running as root; otherwise records the test as skipped.
pub fn require_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip("needs root (network namespaces, nftables)");
    }
    root
}

/// A name no other test (in this or another process) uses: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Runs `program args…` and returns its stdout; panics, showing both outputs, when
/// it cannot start or fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let (ok, stdout, stderr) = try_sh(program, args);
    assert!(
        ok,
        "{program} {} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    stdout
}

/// Runs `program args…`: (success, stdout, stderr); panics only when it cannot start.
pub fn try_sh(program: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A named network namespace for one test, made like the lab's (loopback up, no
/// duplicate address detection) and deleted with everything in it on drop — also
/// when the test panics. The one namespace wrapper every integration test uses.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        crate::netns::add(&name).unwrap_or_else(|e| panic!("{e:#}"));
        Netns { name }
    }

    /// `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs `program args…` inside the namespace; panics on failure.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs `program args…` inside the namespace: (success, stdout, stderr).
    pub fn try_exec(&self, program: &str, args: &[&str]) -> (bool, String, String) {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        try_sh("ip", &all)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        crate::netns::sysctl(&self.name, key, value).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// `nft -f -` inside the namespace; panics with the transaction on failure.
    pub fn nft(&self, text: &str) {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", self.name.as_str(), "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning nft");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).expect("writing to nft");
        }
        let output = child.wait_with_output().expect("waiting for nft");
        assert!(
            output.status.success(),
            "nft -f failed in {}: {}\n--- transaction ---\n{}",
            self.name,
            String::from_utf8_lossy(&output.stderr),
            text.chars().take(4000).collect::<String>()
        );
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.name, f)
    }

    /// Runs an async block on a current-thread runtime inside this namespace.
    pub fn block_on<T: Send, F: std::future::Future<Output = T>>(
        &self,
        f: impl FnOnce() -> F + Send,
    ) -> T {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = crate::netns::delete(&self.name);
    }
}

/// Runs `f` on a scoped thread that has entered the named namespace (so `f` may
/// borrow); the calling thread never moves.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = crate::netns::path(name);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(&path);
                f()
            })
            .join()
            .expect("thread in netns panicked")
    })
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &std::path::Path) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
}

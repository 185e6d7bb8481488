//! The lab's only door to the kernel's namespaces: create and delete named network
//! namespaces (`/run/netns/<name>`, as `ip netns` does), program links, addresses and
//! routes inside one (`ip -n <ns> -batch -`), set its sysctls, open sockets and start
//! processes inside it. Nothing here ever touches the host's own network namespace.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Creates the named netns with its loopback up and IPv6 duplicate address
/// detection off for every link made in it later: the lab plans its addresses
/// unique, and DAD would only hold each new one back for seconds (a forwarding node
/// cannot even solicit neighbours until its link-local address is through it).
pub fn add(name: &str) -> anyhow::Result<()> {
    run_ip(&["netns", "add", name]).with_context(|| format!("creating netns {name}"))?;
    batch(name, &["link set lo up".to_string()])?;
    if ipv6_available() {
        for scope in ["all", "default"] {
            sysctl(name, &format!("net/ipv6/conf/{scope}/accept_dad"), "0")?;
        }
    }
    Ok(())
}

/// Whether this kernel has IPv6 (it may be compiled out or disabled at boot).
pub fn ipv6_available() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// Deletes the named netns; a missing one is not an error.
pub fn delete(name: &str) -> anyhow::Result<()> {
    if !exists(name) {
        return Ok(());
    }
    run_ip(&["netns", "delete", name]).with_context(|| format!("deleting netns {name}"))
}

/// Runs `ip` commands (one per line, `ip -batch` syntax) inside `netns`, all in one
/// process; stops at the first failing line and names it.
pub fn batch(netns: &str, lines: &[String]) -> anyhow::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `ip` (iproute2)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all((lines.join("\n") + "\n").as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "in netns {netns}: ip -batch failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn run_ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered `netns`; sockets it creates belong to
/// that namespace for their whole life. The calling thread is never moved.
pub fn run_in<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in(netns, f, move |result| {
        let _ = tx.send(result);
    })?;
    rx.recv()
        .map_err(|_| anyhow::anyhow!("a thread in netns {netns} panicked"))?
}

/// Like [`run_in`], without blocking the async runtime.
pub async fn run_in_async<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_in(netns, f, move |result| {
        let _ = tx.send(result);
    })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("a thread in netns {netns} panicked"))?
}

fn spawn_in<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    done: impl FnOnce(anyhow::Result<T>) + Send + 'static,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path(netns)).with_context(|| format!("opening netns {netns}"))?;
    let name = netns.to_string();
    std::thread::spawn(move || {
        let result = nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {name}"))
            .and_then(|()| f());
        done(result);
    });
    Ok(())
}

/// Sets `/proc/sys/<key>` (dots or slashes) inside `netns`.
pub fn sysctl(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let file = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_string();
    run_in(netns, move || {
        std::fs::write(&file, value.as_bytes())
            .with_context(|| format!("writing {}", file.display()))
    })
    .with_context(|| format!("sysctl {key} in netns {netns}"))
}

/// A command that runs `program args…` inside `netns` (`ip netns exec`, which also
/// gives it the namespace's own /sys). `ip` execs the program, so the child's pid is
/// the program's.
pub fn command_in(netns: &str, program: &std::path::Path) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(program);
    command
}

/// The namespace inode of a named netns, to recognise processes inside it.
pub fn inode(name: &str) -> Option<u64> {
    std::fs::metadata(path(name)).ok().map(|m| m.ino())
}

/// Pids of every process whose network namespace is one of `inodes`.
pub fn processes_in(inodes: &[u64]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| inodes.contains(&m.ino()))
        })
        .collect()
}

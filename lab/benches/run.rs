//! kubewire's benchmarks, one runner. Each benchmark prints its numbers and asserts
//! nothing about timing; one that cannot run here (not root, no `nft`) prints
//! `skipped: <name>: <why>` and the runner goes on.
//!
//!     cargo build --release --workspace                  # the agent and lab binaries
//!     cargo bench -p kubewire-lab --bench run            # every benchmark
//!     cargo bench -p kubewire-lab --bench run -- routing memory
//!     cargo bench -p kubewire-lab --bench run -- --list
//!
//! `cargo bench` builds this runner (and `kubewire-lab`) but not the root package's
//! `kubewire` agent binary that `memory`, `apiserver` and `demo` start (the latter two
//! through `kubewire lab`): build it first; the runner says so when it is missing.
//! Under `cargo test` (which passes no `--bench`) the runner only checks its arguments
//! and runs nothing.

#[path = "../tests/agent_support/mod.rs"]
mod agent_support;
#[path = "../tests/apiserver_support/mod.rs"]
mod apiserver_support;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/firewall_support/mod.rs"]
mod firewall_support;
#[path = "../tests/lab_support/mod.rs"]
mod lab_support;
#[path = "../tests/proxy_support/mod.rs"]
mod proxy_support;
#[path = "../tests/routing/support.rs"]
mod routing_support;

mod apiserver;
mod bgp;
mod demo;
mod firewall;
mod ipvs;
mod memory;
mod nftread;
mod proxy;
mod routing;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Why a benchmark cannot run here.
pub struct Skip(pub String);

/// What a benchmark returns: it ran (and printed), or it could not run here.
pub type Outcome = Result<(), Skip>;

/// Ok when running as root (network namespaces, nftables, routes).
pub fn require_root() -> Outcome {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Skip("needs root (network namespaces, nftables)".into()))
    }
}

/// Ok when `program --version` runs.
pub fn require_program(program: &str, package: &str) -> Outcome {
    let runs = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        Ok(())
    } else {
        Err(Skip(format!("no {program} binary (apt: {package})")))
    }
}

struct Benchmark {
    name: &'static str,
    about: &'static str,
    /// Starts the `kubewire` (and `kubewire-lab`) binaries.
    needs_binaries: bool,
    run: fn() -> Outcome,
}

const BENCHMARKS: &[Benchmark] = &[
    Benchmark {
        name: "memory",
        about: "agent resident memory and time to healthy, empty cluster and 5,000 pods (every controller, and CNI only)",
        needs_binaries: true,
        run: memory::run,
    },
    Benchmark {
        name: "apiserver",
        about: "embedded API server: memory, lists of 5,000 pods, watch throughput",
        needs_binaries: true,
        run: apiserver::run,
    },
    Benchmark {
        name: "firewall",
        about: "NetworkPolicy firewall, 5,000 pods and 1,000 policies on one node: compile, apply, one change, drift check, connection rate",
        needs_binaries: false,
        run: firewall::run,
    },
    Benchmark {
        name: "demo",
        about: "`lab run` on the demo (3 nodes, 9 pods), every default controller",
        needs_binaries: true,
        run: demo::run,
    },
    Benchmark {
        name: "proxy",
        about: "service proxy nftables: 10,000 services x 10 endpoints",
        needs_binaries: false,
        run: proxy::run,
    },
    Benchmark {
        name: "nftread",
        about: "reading the proxy's table back (10,000 services x 10 endpoints): netlink dumps vs `nft -j`",
        needs_binaries: false,
        run: nftread::run,
    },
    Benchmark {
        name: "ipvs",
        about: "IPVS backend, 1,000 services x 10 endpoints, side by side with ipvsadm (needs IPVS: the VM)",
        needs_binaries: false,
        run: ipvs::run,
    },
    Benchmark {
        name: "bgp",
        about: "BGP: kubewire and BIRD each announcing 10,000 and 100,000 prefixes to BIRD: time and memory",
        needs_binaries: false,
        run: bgp::run,
    },
    Benchmark {
        name: "routing",
        about: "routes for 1,000 nodes: apply layer vs `ip -batch`, whole routing sync",
        needs_binaries: false,
        run: routing::run,
    },
];

const USAGE: &str = "usage: cargo bench -p kubewire-lab --bench run [-- [--list] [NAME...]]";

fn main() -> ExitCode {
    let mut names: Vec<String> = Vec::new();
    let (mut list, mut bench) = (false, false);
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            // `cargo bench` passes it; `cargo test` does not.
            "--bench" => bench = true,
            "--list" => list = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                print_list();
                return ExitCode::SUCCESS;
            }
            option if option.starts_with('-') => {
                eprintln!("unknown option {option}\n{USAGE}");
                return ExitCode::from(2);
            }
            name => {
                if !BENCHMARKS.iter().any(|b| b.name == name) {
                    eprintln!("no benchmark named {name:?}; the benchmarks:");
                    print_list();
                    return ExitCode::from(2);
                }
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
    }
    if list {
        print_list();
        return ExitCode::SUCCESS;
    }
    if !bench {
        println!(
            "benchmarks run under `cargo bench -p kubewire-lab --bench run`, not `cargo test`"
        );
        return ExitCode::SUCCESS;
    }
    let selected: Vec<&Benchmark> = if names.is_empty() {
        BENCHMARKS.iter().collect()
    } else {
        names
            .iter()
            .filter_map(|n| BENCHMARKS.iter().find(|b| b.name == n))
            .collect()
    };
    if selected.iter().any(|b| b.needs_binaries) {
        match binaries() {
            Ok(agent) => println!("agent binary: {}", agent.display()),
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut failed = Vec::new();
    for benchmark in selected {
        println!("=== {}: {}", benchmark.name, benchmark.about);
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(benchmark.run));
        let wall = started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(())) => println!("=== {}: {wall:.1}s wall time", benchmark.name),
            Ok(Err(Skip(why))) => println!("skipped: {}: {why}", benchmark.name),
            Err(_) => {
                println!("=== {}: FAILED after {wall:.1}s", benchmark.name);
                failed.push(benchmark.name);
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

fn print_list() {
    for benchmark in BENCHMARKS {
        println!("{:<10} {}", benchmark.name, benchmark.about);
    }
}

/// The agent binary, with `kubewire-lab` beside it; else what to do.
fn binaries() -> Result<PathBuf, String> {
    const BUILD: &str = "`cargo bench` does not build them: run `cargo build --release --workspace` first (or set KUBEWIRE_AGENT_BINARY)";
    // Where cargo puts the binaries: the directory above this runner's deps/.
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_default();
    let agent = match kubewire_lab::binaries::agent() {
        Ok(agent) if agent.is_file() => agent,
        Ok(agent) => return Err(format!("no agent binary {}; {BUILD}", agent.display())),
        Err(_) => {
            return Err(format!(
                "no `kubewire` agent binary in {} or on PATH; {BUILD}",
                target.display()
            ));
        }
    };
    let lab = agent.with_file_name("kubewire-lab");
    if !lab.is_file() {
        return Err(format!(
            "no `kubewire-lab` binary beside {}; {BUILD}",
            agent.display()
        ));
    }
    Ok(agent)
}

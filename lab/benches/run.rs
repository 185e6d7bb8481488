//! kubewire's benchmarks, one runner. Each benchmark prints its numbers and asserts
//! nothing about timing; one that cannot run here (not root, no `nft`) prints
//! `skipped: <name>: <why>` and the runner goes on.
//!
//!     cargo build --release --workspace                  # the agent and lab binaries
//!     cargo bench -p kubewire-lab --bench run            # every benchmark
//!     cargo bench -p kubewire-lab --bench run -- routing memory
//!     cargo bench -p kubewire-lab --bench run -- --list
//!     cargo bench -p kubewire-lab --bench run -- --quick --report bench/out
//!
//! `bench/run [--quick]` does the build and the last line. Every number a benchmark
//! reports goes through [`report`] (a `BENCH name value unit [baseline ratio]` line);
//! `--report DIR` writes them all to `DIR/report.json` and `DIR/report.md`.
//! `--quick` runs each benchmark at a small scale (a few minutes in all).
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
mod proxy_agent;
mod report;
mod routing;
mod soak;

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
        about: "agent resident memory and time to healthy, empty cluster and 5,000 pods (every controller; firewall, proxy, router and CNI each alone)",
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
        name: "proxy_agent",
        about: "one agent, 10,000 services x 10 endpoints: API write to kernel for one EndpointSlice patch (p50/p90/max), agent RSS",
        needs_binaries: true,
        run: proxy_agent::run,
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
    Benchmark {
        name: "soak",
        about: "churn and soak: 100 changes/s for 5 min against 2,000 pods and 500 services, two agents: RSS, write-to-kernel latency, final drift",
        needs_binaries: true,
        run: soak::run,
    },
];

const USAGE: &str = "usage: cargo bench -p kubewire-lab --bench run [-- [--list] [--quick] [--report DIR] [NAME...]]";

fn main() -> ExitCode {
    let mut names: Vec<String> = Vec::new();
    let (mut list, mut bench, mut quick) = (false, false, false);
    let mut report_dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--report" => match args.next() {
                Some(dir) => report_dir = Some(PathBuf::from(dir)),
                None => {
                    eprintln!("--report needs a directory\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
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
    if quick {
        // SAFETY: set before any thread of ours starts; the benches read it.
        unsafe { std::env::set_var(report::QUICK_ENV, "1") };
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
    let all = Instant::now();
    for benchmark in selected {
        println!("=== {}: {}", benchmark.name, benchmark.about);
        report::begin(benchmark.name);
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(benchmark.run));
        let wall = started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(())) => {
                report::figure("wall_time", wall, "s");
                println!("=== {}: {wall:.1}s wall time", benchmark.name)
            }
            Ok(Err(Skip(why))) => {
                report::skipped(benchmark.name, &why);
                println!("skipped: {}: {why}", benchmark.name)
            }
            Err(_) => {
                report::skipped(
                    benchmark.name,
                    &format!("FAILED after {wall:.1}s (see the log)"),
                );
                println!("=== {}: FAILED after {wall:.1}s", benchmark.name);
                failed.push(benchmark.name);
            }
        }
    }
    report::begin("");
    report::figure("total_wall_time", all.elapsed().as_secs_f64(), "s");
    if let Some(dir) = report_dir {
        let title = format!(
            "kubewire benchmarks{}",
            if quick { " (--quick scale)" } else { "" }
        );
        match report::write(&dir, &title) {
            Ok(()) => println!(
                "report: {}/report.json, {}/report.md",
                dir.display(),
                dir.display()
            ),
            Err(err) => {
                eprintln!("error: writing the report to {}: {err}", dir.display());
                return ExitCode::FAILURE;
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

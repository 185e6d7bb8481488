//! The IPVS backend next to `ipvsadm` doing the same work, in one run (root, a kernel
//! with IPVS and `ipvsadm`: the VM, `tests/vm/run --exec`; prints numbers, asserts
//! none). 1,000 Services x 10 endpoints, each side in a fresh network namespace:
//!
//! - a full load: our netlink family adding every virtual service and destination,
//!   and the proxy's whole IPVS sync (which also adds the VIPs to `kube-ipvs0` and
//!   loads the nftables glue), against `ipvsadm -R` of the same set;
//! - one endpoint removed: the reconciler's change sync against one `ipvsadm` call;
//! - a dump of everything: our family against `ipvsadm -S -n`.
//!
//! Under emulation absolute times mean little; the ratios are the result.
//! `cargo bench -p kubewire-lab --bench run -- ipvs`

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubewire::ipvs::{Destination, Ipvs, Protocol, ServiceKey};
use kubewire::proxy::ipvs::apply::Reconciler;
use kubewire::proxy::ipvs::compile::{Desired, compile};
use kubewire::proxy::ipvs::metrics::IpvsMetrics;
use kubewire::runtime::SyncReason;
use kubewire::telemetry::Metrics;

use crate::common::Netns;
use crate::proxy_support::service_map;
use crate::{Outcome, Skip, require_program, require_root};

/// 1,000 services; 200 under `--quick`.
fn services() -> usize {
    crate::report::scale(1_000, 200)
}
const ENDPOINTS: usize = 10;

pub fn run() -> Outcome {
    require_root()?;
    require_program("nft", "nftables")?;
    let probe = Netns::new("kwipvsprobe");
    if probe.run(Ipvs::new).is_err() {
        return Err(Skip(
            "this kernel has no IPVS (run it in the VM: tests/vm/run --exec)".into(),
        ));
    }
    drop(probe);
    let ipvsadm_runs = Command::new("ipvsadm")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ipvsadm_runs {
        return Err(Skip("no ipvsadm binary (apt: ipvsadm)".into()));
    }

    let map = service_map(services(), ENDPOINTS);
    let (desired, _) = compile(&map);
    let destinations: usize = desired
        .services
        .values()
        .map(|s| s.destinations.len())
        .sum();
    println!(
        "{} virtual services, {destinations} destinations, {} VIPs",
        desired.services.len(),
        desired.vips.len()
    );

    let family = family_load(&desired);
    let (sync, change, dump) = reconciler_runs(&desired);
    let (restore, one_call, save) = ipvsadm_runs_of(&desired);

    println!(
        "{:<44} {:>12} {:>12} {:>7}",
        "", "kubewire", "ipvsadm", "ratio"
    );
    row("full load, IPVS only (family vs -R)", family, restore);
    row("full load, whole proxy sync vs -R", sync, restore);
    row("one endpoint removed (sync vs one call)", change, one_call);
    row("dump everything (family vs -S -n)", dump, save);
    Ok(())
}

fn row(what: &str, ours: Duration, theirs: Duration) {
    let key: String = what
        .split(" (")
        .next()
        .unwrap_or(what)
        .replace([' ', ','], "_");
    crate::report::millis_versus(&key, ours, theirs, "ipvsadm");
    let ratio = ours.as_secs_f64() / theirs.as_secs_f64().max(1e-9);
    println!("{what:<44} {ours:>12.2?} {theirs:>12.2?} {ratio:>6.2}x");
}

/// Every virtual service and destination added through our family, one request each
/// (what `ipvsadm -R` does too).
fn family_load(desired: &Desired) -> Duration {
    let netns = Netns::new("kwipvsfam");
    netns.run(|| {
        let mut ipvs = Ipvs::new().expect("IPVS socket");
        let started = Instant::now();
        for server in desired.services.values() {
            ipvs.add_service(&server.service).expect("add service");
            for destination in server.destinations.values() {
                ipvs.add_destination(&server.service.key, destination)
                    .expect("add destination");
            }
        }
        started.elapsed()
    })
}

/// The proxy's IPVS reconciler: the first sync into an empty namespace, one endpoint
/// removed, and a dump of what it made.
fn reconciler_runs(desired: &Desired) -> (Duration, Duration, Duration) {
    let netns = Netns::new("kwipvsrec");
    netns.ip(&["link", "set", "lo", "up"]);
    netns.block_on(|| async {
        let metrics = IpvsMetrics::register(&Metrics::new());
        let ipvs = Ipvs::new().expect("IPVS socket");
        let mut reconciler = Reconciler::new(ipvs, Duration::from_secs(30), metrics);
        let started = Instant::now();
        reconciler
            .sync(desired.clone(), SyncReason::Start)
            .await
            .expect("full sync");
        let sync = started.elapsed();

        let mut smaller = desired.clone();
        let (_, first) = smaller.services.iter_mut().next().expect("a service");
        let removed = *first.destinations.keys().next().expect("an endpoint");
        first.destinations.remove(&removed);
        let started = Instant::now();
        let applied = reconciler
            .sync(smaller, SyncReason::Change)
            .await
            .expect("change sync");
        let change = started.elapsed();
        println!(
            "one endpoint removed: {} IPVS changes",
            applied.ipvs_changes
        );

        let mut ipvs = Ipvs::new().expect("IPVS socket");
        let started = Instant::now();
        let services = ipvs.services().expect("dump");
        let dump = started.elapsed();
        assert_eq!(services.len(), desired.services.len());
        (sync, change, dump)
    })
}

/// `ipvsadm -R` of the same set, one `ipvsadm -d` of one destination, `ipvsadm -S -n`.
fn ipvsadm_runs_of(desired: &Desired) -> (Duration, Duration, Duration) {
    let netns = Netns::new("kwipvsadm");
    let rules = restore_rules(desired);
    netns.run(|| {
        let started = Instant::now();
        let mut child = Command::new("ipvsadm")
            .arg("-R")
            .stdin(Stdio::piped())
            .spawn()
            .expect("ipvsadm -R");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("write rules");
        assert!(
            child.wait().expect("ipvsadm -R").success(),
            "ipvsadm -R failed"
        );
        let restore = started.elapsed();

        let server = desired.services.values().next().expect("a service");
        let removed = server.destinations.keys().next().expect("an endpoint");
        let started = Instant::now();
        let status = Command::new("ipvsadm")
            .args(["-d"])
            .args(service_args(&server.service.key))
            .args(["-r", &removed.to_string()])
            .status()
            .expect("ipvsadm -d");
        let one_call = started.elapsed();
        assert!(status.success(), "ipvsadm -d failed");

        let started = Instant::now();
        let saved = Command::new("ipvsadm")
            .args(["-S", "-n"])
            .output()
            .expect("ipvsadm -S");
        let save = started.elapsed();
        assert!(saved.status.success());
        let lines = String::from_utf8_lossy(&saved.stdout)
            .lines()
            .filter(|l| l.starts_with("-A"))
            .count();
        assert_eq!(lines, desired.services.len());
        (restore, one_call, save)
    })
}

/// `ipvsadm -R` input for every virtual service and destination of `desired`, with
/// the same scheduler, flags, persistence and forwarding as ours.
fn restore_rules(desired: &Desired) -> String {
    let mut rules = String::new();
    for server in desired.services.values() {
        let service = &server.service;
        let _ = write!(
            rules,
            "-A {} -s {} -b flag-3",
            service_args(&service.key).join(" "),
            service.scheduler
        );
        if service.flags.persistent {
            let _ = write!(rules, " -p {}", service.timeout);
        }
        rules.push('\n');
        for destination in server.destinations.values() {
            let _ = writeln!(
                rules,
                "-a {} -r {} -m -w {}",
                service_args(&service.key).join(" "),
                socket(destination),
                destination.weight
            );
        }
    }
    rules
}

fn service_args(key: &ServiceKey) -> Vec<String> {
    match key {
        ServiceKey::Address {
            protocol,
            address,
            port,
        } => {
            let option = match protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
                Protocol::Sctp => "--sctp-service",
            };
            vec![
                option.to_string(),
                SocketAddr::new(*address, *port).to_string(),
            ]
        }
        ServiceKey::Fwmark { mark, .. } => vec!["-f".to_string(), mark.to_string()],
    }
}

fn socket(destination: &Destination) -> String {
    SocketAddr::new(destination.address, destination.port).to_string()
}

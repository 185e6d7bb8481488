//! BGP announcement throughput (root, bird2): kubewire's speaker announcing 10,000
//! and 100,000 IPv4 prefixes to a BIRD 2, side by side with a BIRD 2 announcing the
//! same to the same BIRD; time from the sender's start until the receiver has every
//! prefix (and when the session came up), and both senders' and the receiver's
//! resident memory. Prints numbers, asserts none.
//!
//! Two namespaces joined by a veth: the sender (10.98.0.1) and the receiver BIRD
//! (10.98.0.2, passive, so each sender's own connect timing counts). kubewire's
//! speaker runs inside this process; its memory is the process's RSS growth from
//! before it started to after convergence (the process's total is printed too).
//!
//! `cargo bench -p kubewire-lab --bench run -- bgp`

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use kubewire::routing::bgp::config::{Backoff, Families, PeerConfig, SpeakerConfig};
use kubewire::routing::bgp::{RouteAttrs, Speaker};
use kubewire_lab::bird::{Bird, birdc};
use kubewire_lab::harness::Netns;

use crate::{Outcome, require_program, require_root};

const SENDER: &str = "10.98.0.1";
const RECEIVER: &str = "10.98.0.2";
const SENDER_AS: u32 = 65001;
const RECEIVER_AS: u32 = 65002;
const SIZES: [usize; 2] = [10_000, 100_000];

/// The i-th /24 from 16.0.0.0 up.
fn prefix(i: usize) -> Ipv4Net {
    let n = (16u32 << 24) + (i as u32) * 256;
    Ipv4Net::new(Ipv4Addr::from(n), 24).unwrap_or_default()
}

/// Routes in master4 (`show route count`), 0 before BIRD answers.
fn route_count(socket: &Path) -> usize {
    birdc(socket, &["show", "route", "count"])
        .lines()
        .filter(|l| l.contains("routes"))
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn receiver_config() -> String {
    format!(
        "router id {RECEIVER};\nprotocol device {{ }}\n\
         protocol bgp sender {{ local {RECEIVER} as {RECEIVER_AS}; neighbor {SENDER} as {SENDER_AS}; passive on; \
         hold time 90; ipv4 {{ import all; export none; }}; }}\n"
    )
}

fn sender_config(count: usize) -> String {
    let mut config =
        format!("router id {SENDER};\nprotocol device {{ }}\nprotocol static announced {{ ipv4;\n");
    for i in 0..count {
        config += &format!("  route {} blackhole;\n", prefix(i));
    }
    config += &format!(
        "}}\nprotocol bgp receiver {{ local {SENDER} as {SENDER_AS}; neighbor {RECEIVER} as {RECEIVER_AS}; \
         hold time 90; ipv4 {{ import none; export all; }}; }}\n"
    );
    config
}

/// Polls the receiver until it has `count` routes; returns (session up, all in).
fn converge(socket: &Path, started: Instant, count: usize) -> (Duration, Duration) {
    let mut up = None;
    loop {
        if up.is_none() && birdc(socket, &["show", "protocols", "sender"]).contains("Established") {
            up = Some(started.elapsed());
        }
        if up.is_some() && route_count(socket) >= count {
            return (up.unwrap_or_default(), started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the receiver has {} of {count} routes after 60 s: {}{}",
            route_count(socket),
            birdc(socket, &["show", "protocols", "all", "sender"]),
            birdc(socket, &["show", "route", "count"])
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Row {
    sender: &'static str,
    count: usize,
    session_up: Duration,
    all_in: Duration,
    sender_kib: u64,
    receiver_kib: u64,
}

fn kubewire_run(sender: &Netns, receiver_ns: &Netns, count: usize) -> Row {
    let receiver = Bird::start(&receiver_ns.name, &receiver_config());
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as below.
    unsafe { libc::malloc_trim(0) };
    let before = rss_kib(std::process::id());
    let (session_up, all_in, after, receiver_kib) = sender.block_on(|| async {
        let mut config = SpeakerConfig::new(SENDER_AS, SENDER.parse().expect("ip"));
        config.hold_time = 90;
        config.backoff = Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(1),
        };
        let mut peer = PeerConfig::new(RECEIVER.parse().expect("ip"), RECEIVER_AS);
        peer.families = Families::IPV4;
        peer.local_address = Some(SENDER.parse().expect("ip"));
        config.peers = vec![peer];
        let started = Instant::now();
        let speaker = Speaker::start(config).await.expect("speaker");
        for i in 0..count {
            speaker.announce(IpNet::V4(prefix(i)), None, RouteAttrs::default());
        }
        let socket = receiver.socket().to_path_buf();
        let (up, all) = tokio::task::spawn_blocking(move || converge(&socket, started, count))
            .await
            .expect("polling BIRD");
        // Steady state: what the heap holds, not what it kept from the burst.
        // SAFETY: malloc_trim only returns free heap pages to the kernel.
        unsafe { libc::malloc_trim(0) };
        let after = rss_kib(std::process::id());
        let receiver_kib = receiver.rss_kib();
        speaker.shutdown().await;
        (up, all, after, receiver_kib)
    });
    let row = Row {
        sender: "kubewire",
        count,
        session_up,
        all_in,
        sender_kib: after.saturating_sub(before),
        receiver_kib,
    };
    println!(
        "  (kubewire: bench process RSS {before} KiB before the speaker, {after} KiB with {count} routes sent)"
    );
    row
}

fn bird_run(sender_ns: &Netns, receiver_ns: &Netns, count: usize) -> Row {
    let receiver = Bird::start(&receiver_ns.name, &receiver_config());
    std::thread::sleep(Duration::from_millis(300));
    let config = sender_config(count);
    let started = Instant::now();
    let sender = Bird::start(&sender_ns.name, &config);
    let (session_up, all_in) = converge(receiver.socket(), started, count);
    Row {
        sender: "BIRD",
        count,
        session_up,
        all_in,
        sender_kib: sender.rss_kib(),
        receiver_kib: receiver.rss_kib(),
    }
}

pub fn run() -> Outcome {
    require_root()?;
    require_program("bird", "bird2")?;
    let sender = Netns::new("kwbgp-s");
    let receiver = Netns::new("kwbgp-r");
    sender.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &receiver.name,
    ]);
    sender.ip(&["addr", "add", &format!("{SENDER}/24"), "dev", "eth0"]);
    receiver.ip(&["addr", "add", &format!("{RECEIVER}/24"), "dev", "eth0"]);
    for ns in [&sender, &receiver] {
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "set", "eth0", "up"]);
    }
    let mut rows = vec![];
    for &count in crate::report::scale(&SIZES[..], &SIZES[..1]) {
        rows.push(kubewire_run(&sender, &receiver, count));
        rows.push(bird_run(&sender, &receiver, count));
    }
    println!(
        "{:<9} {:>8} {:>11} {:>10} {:>13} {:>11} {:>13}",
        "sender", "prefixes", "session up", "all in", "after session", "sender RSS", "receiver RSS"
    );
    for r in &rows {
        println!(
            "{:<9} {:>8} {:>9.2} s {:>8.2} s {:>11.2} s {:>7} KiB {:>9} KiB",
            r.sender,
            r.count,
            r.session_up.as_secs_f64(),
            r.all_in.as_secs_f64(),
            (r.all_in - r.session_up).as_secs_f64(),
            r.sender_kib,
            r.receiver_kib
        );
    }
    for pair in rows.chunks(2) {
        if let [kw, bird] = pair {
            println!(
                "{} prefixes: kubewire/BIRD time {:.2}x, sender memory {:.2}x",
                kw.count,
                kw.all_in.as_secs_f64() / bird.all_in.as_secs_f64().max(1e-9),
                kw.sender_kib as f64 / (bird.sender_kib.max(1)) as f64
            );
            crate::report::versus(
                &format!("announce_{}.all_in", kw.count),
                kw.all_in.as_secs_f64(),
                "s",
                bird.all_in.as_secs_f64(),
                "BIRD",
            );
            crate::report::versus(
                &format!("announce_{}.sender_rss", kw.count),
                kw.sender_kib as f64 / 1024.0,
                "MiB",
                bird.sender_kib as f64 / 1024.0,
                "BIRD",
            );
        }
    }
    Ok(())
}

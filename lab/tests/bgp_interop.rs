//! The BGP speaker against BIRD 2 (root only): two network namespaces joined by a
//! veth, BIRD in one with a config this test writes, our speaker in the other.
//! Checked through `birdc show route` / `show protocols`: BIRD learns our prefixes
//! with our next hop and our 4-byte AS, we learn BIRD's static routes, over IPv4
//! and IPv6 sessions (a global and link-local IPv6 next-hop pair), with us active or
//! passive, a route refresh answered; TCP-MD5 with the right password
//! comes up and with a wrong one stays down.
//!
//! The same against FRR's bgpd (started by hand without zebra, MD5 on both
//! sessions).
//!
//! A test that cannot run (no root, no bird or frr) records itself as skipped.
//! Every wait is bounded; BIRD is killed when its guard drops.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kubewire::routing::bgp::config::{Backoff, Families, PeerConfig, SpeakerConfig};
use kubewire::routing::bgp::fsm::State;
use kubewire::routing::bgp::route::NextHop;
use kubewire::routing::bgp::{RouteAttrs, RouteEvent, Speaker, SpeakerHandle};
use tokio::sync::mpsc::UnboundedReceiver;

const OUR_AS: u32 = 4_200_000_001;
const OUR_PORT: u16 = 1790;
const OUR_V4: &str = "10.99.0.1";
const OUR_V6: &str = "fd99::1";
const OUR_LINK_LOCAL: &str = "fe80::a1";
const BIRD_V4: &str = "10.99.0.2";
const BIRD_V6: &str = "fd99::2";

use kubewire_lab::bird::{Bird, missing_prerequisite};
use kubewire_lab::harness::{Netns, unique};

/// Our namespace and BIRD's, joined by a veth with an IPv4 and an IPv6 subnet.
struct Link {
    ours: Netns,
    birds: Netns,
}

impl Link {
    fn new() -> Link {
        let ours = Netns::new("kwbgp");
        let birds = Netns::new("kwbird");
        let (a, b) = (unique("kwb"), unique("brd"));
        ours.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ours.ip(&["link", "set", &b, "netns", &birds.name]);
        for (ns, dev, v4, v6) in [(&ours, &a, OUR_V4, OUR_V6), (&birds, &b, BIRD_V4, BIRD_V6)] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        // A link-local address of our own choosing, to announce beside the global
        // IPv6 next hop.
        ours.ip(&[
            "addr",
            "add",
            &format!("{OUR_LINK_LOCAL}/64"),
            "dev",
            &a,
            "nodad",
        ]);
        Link { ours, birds }
    }
}

/// BIRD's side: static routes to export and one BGP protocol per family.
fn bird_config(bird_as: u32, ipv4: &str, ipv6: &str) -> String {
    format!(
        r#"router id {BIRD_V4};
protocol device {{ scan time 1; }}
protocol static s4 {{ ipv4; route 198.51.100.0/24 blackhole; }}
protocol static s6 {{ ipv6; route 2001:db8:51::/48 blackhole; }}
template bgp kw {{
  local as {bird_as};
  hold time 9;
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 4;
}}
protocol bgp kw4 from kw {{
  neighbor {OUR_V4} port {OUR_PORT} as {OUR_AS};
  {ipv4}
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
protocol bgp kw6 from kw {{
  neighbor {OUR_V6} port {OUR_PORT} as {OUR_AS};
  {ipv6}
  ipv6 {{ import all; export where source = RTS_STATIC; }};
}}
"#
    )
}

/// Our side: listening on both addresses at OUR_PORT, one neighbour per family.
fn our_config(
    bird_as: u32,
    v4: impl Fn(&mut PeerConfig),
    v6: impl Fn(&mut PeerConfig),
) -> SpeakerConfig {
    let mut config = SpeakerConfig::new(OUR_AS, OUR_V4.parse().expect("router id"));
    config.listen = vec![
        SocketAddr::new(OUR_V4.parse().expect("addr"), OUR_PORT),
        SocketAddr::new(OUR_V6.parse().expect("addr"), OUR_PORT),
    ];
    config.hold_time = 9;
    config.connect_retry = Duration::from_secs(2);
    config.backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(2),
    };
    let mut p4 = PeerConfig::new(BIRD_V4.parse().expect("addr"), bird_as);
    p4.families = Families::IPV4;
    v4(&mut p4);
    let mut p6 = PeerConfig::new(BIRD_V6.parse().expect("addr"), bird_as);
    p6.families = Families {
        ipv4: false,
        ipv6: true,
    };
    v6(&mut p6);
    config.peers = vec![p4, p6];
    config
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

/// Polls `check` every 250 ms until it returns something, for at most `limit`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `show protocols` line of a BGP protocol.
async fn protocol_line(bird: &Bird, name: &str) -> String {
    bird.birdc_async(&["show", "protocols", name])
        .await
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default()
        .to_string()
}

async fn wait_established(bird: &Bird, speaker: &SpeakerHandle) {
    let up = eventually(Duration::from_secs(30), || async {
        let ours = speaker.peers().await;
        let ours_up = ours.iter().all(|p| p.state == State::Established);
        let bird_up = protocol_line(bird, "kw4").await.contains("Established")
            && protocol_line(bird, "kw6").await.contains("Established");
        (ours_up && bird_up).then_some(())
    })
    .await;
    if up.is_none() {
        panic!(
            "sessions not established within 30s\nours: {:?}\nbird: {}\nbird log:\n{}",
            speaker.peers().await,
            bird.birdc_async(&["show", "protocols"]).await,
            bird.log()
        );
    }
    for name in ["kw4", "kw6"] {
        println!("bird: {}", protocol_line(bird, name).await);
    }
}

/// Collects learned-route events until `want` prefixes are all known, at most 20 s.
async fn learn(
    events: &mut UnboundedReceiver<RouteEvent>,
    want: &[IpNet],
) -> BTreeMap<IpNet, (IpAddr, NextHop)> {
    let mut known = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !want.iter().all(|p| known.contains_key(p)) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(RouteEvent::Learned {
                prefix,
                peer,
                next_hop,
                ..
            })) => {
                known.insert(prefix, (peer, next_hop));
            }
            Ok(Some(RouteEvent::Withdrawn { prefix })) => {
                known.remove(&prefix);
            }
            Ok(None) => panic!("speaker stopped"),
            Err(_) => panic!("learned only {known:?} of {want:?} within 20s"),
        }
    }
    known
}

/// The "received" column of "Import updates" in `show protocols all`.
fn import_updates_received(details: &str) -> u64 {
    details
        .lines()
        .find(|l| l.trim_start().starts_with("Import updates:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The route's line and its next hop line from `show route … all`.
fn route_line(out: &str) -> String {
    let mut lines = out.lines().skip_while(|l| !l.contains("unicast"));
    let route = lines.next().unwrap_or_default().trim();
    let via = lines.next().unwrap_or_default().trim();
    format!("{route} {via}")
}

/// BIRD's `show route PREFIX all`, once it has the prefix.
async fn bird_route(bird: &Bird, prefix: &str) -> String {
    let found = eventually(Duration::from_secs(20), || async {
        let out = bird.birdc_async(&["show", "route", prefix, "all"]).await;
        out.contains(&format!("{prefix} ")).then_some(out)
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "bird has no route {prefix} within 20s; log:\n{}",
            bird.log()
        )
    })
}

#[test]
fn bird_learns_our_routes_and_we_learn_birds_over_ipv4_and_ipv6() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    let link = Link::new();
    // IPv4: both sides connect (a real collision, resolved by router id).
    // IPv6: we only listen, BIRD connects to our port.
    let bird = Bird::start(&link.birds.name, &bird_config(65010, "", ""));
    let config = our_config(
        65010,
        |_| {},
        |p6| {
            p6.passive = true;
            p6.next_hop_v6_link_local = Some(OUR_LINK_LOCAL.parse().expect("addr"));
        },
    );
    link.ours.block_on(|| async move {
        let speaker = Speaker::start(config).await.expect("speaker starts");
        let mut events = speaker.subscribe();
        wait_established(&bird, &speaker).await;

        speaker.announce(net("10.123.0.0/24"), None, RouteAttrs::default());
        speaker.announce(
            net("2001:db8:123::/48"),
            None,
            RouteAttrs {
                communities: vec![(65000 << 16) | 44],
                ..RouteAttrs::default()
            },
        );
        let v4 = bird_route(&bird, "10.123.0.0/24").await;
        println!("bird: {}", route_line(&v4));
        assert!(v4.contains(&format!("via {OUR_V4}")), "{v4}");
        assert!(v4.contains(&format!("BGP.as_path: {OUR_AS}")), "{v4}");
        let v6 = bird_route(&bird, "2001:db8:123::/48").await;
        println!("bird: {}", route_line(&v6));
        assert!(v6.contains(&format!("via {OUR_V6}")), "{v6}");
        assert!(v6.contains("(65000,44)"), "{v6}");
        let next_hop = v6
            .lines()
            .find(|l| l.contains("BGP.next_hop"))
            .unwrap_or_default()
            .trim();
        println!("bird: {next_hop}");
        assert!(
            next_hop.contains(&format!("{OUR_V6} {OUR_LINK_LOCAL}")),
            "{v6}"
        );

        let learned = learn(
            &mut events,
            &[net("198.51.100.0/24"), net("2001:db8:51::/48")],
        )
        .await;
        let (peer, nh) = learned[&net("198.51.100.0/24")];
        println!("ours: 198.51.100.0/24 from {peer} next hop {nh:?}");
        assert_eq!(peer, BIRD_V4.parse::<IpAddr>().expect("addr"));
        assert_eq!(nh, NextHop::V4(BIRD_V4.parse().expect("addr")));
        let (peer, nh) = learned[&net("2001:db8:51::/48")];
        println!("ours: 2001:db8:51::/48 from {peer} next hop {nh:?}");
        let NextHop::V6 { global, .. } = nh else {
            panic!("IPv6 route with next hop {nh:?}")
        };
        assert_eq!(global, BIRD_V6.parse::<std::net::Ipv6Addr>().expect("addr"));

        // BIRD saw our capabilities; a route refresh it asks for is answered with
        // our routes again and the session stays up.
        let details = bird.birdc_async(&["show", "protocols", "all", "kw4"]).await;
        let caps: Vec<&str> = details
            .lines()
            .skip_while(|l| !l.contains("Neighbor capabilities"))
            .skip(1)
            .take_while(|l| !l.contains("Session:"))
            .map(str::trim)
            .collect();
        println!("bird: neighbor capabilities: {}", caps.join(", "));
        assert!(
            caps.contains(&"Route refresh") && caps.contains(&"4-octet AS numbers"),
            "{details}"
        );
        let received_before = import_updates_received(&details);
        bird.birdc_async(&["reload", "in", "kw4"]).await;
        let refreshed = eventually(Duration::from_secs(10), || async {
            let details = bird.birdc_async(&["show", "protocols", "all", "kw4"]).await;
            let received = import_updates_received(&details);
            (received > received_before).then_some(received)
        })
        .await;
        println!("bird: import updates received before/after route refresh: {received_before}/{refreshed:?}");
        assert!(refreshed.is_some(), "no UPDATE answered BIRD's ROUTE-REFRESH");
        assert!(protocol_line(&bird, "kw4").await.contains("Established"));
        bird_route(&bird, "10.123.0.0/24").await;

        let peers = speaker.peers().await;
        for p in &peers {
            println!(
                "ours: peer {} AS{} {:?} received {} accepted {} advertised {}",
                p.address,
                p.asn,
                p.state,
                p.prefixes_received,
                p.prefixes_accepted,
                p.prefixes_advertised
            );
            assert_eq!(
                (
                    p.prefixes_received,
                    p.prefixes_accepted,
                    p.prefixes_advertised
                ),
                (1, 1, 1),
                "{p:?}"
            );
        }

        // A withdrawal reaches BIRD.
        speaker.withdraw(net("10.123.0.0/24"));
        let gone = eventually(Duration::from_secs(10), || async {
            let out = bird.birdc_async(&["show", "route", "10.123.0.0/24"]).await;
            (!out.contains("10.123.0.0/24 ")).then_some(())
        })
        .await;
        assert!(gone.is_some(), "bird still has 10.123.0.0/24");
        println!("bird: 10.123.0.0/24 withdrawn");
        speaker.shutdown().await;
    });
}

#[test]
fn md5_with_the_right_password_comes_up_and_4_byte_as_on_both_sides() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    let link = Link::new();
    let bird_as = 4_200_000_002;
    // IPv4: we listen (MD5 on the listening socket); IPv6: BIRD listens (MD5 on
    // our connecting socket).
    let bird = Bird::start(
        &link.birds.name,
        &bird_config(
            bird_as,
            "password \"kubewire-md5\";",
            "password \"kubewire-md5\"; passive on;",
        ),
    );
    let config = our_config(
        bird_as,
        |p4| {
            p4.passive = true;
            p4.password = Some("kubewire-md5".into());
        },
        |p6| p6.password = Some("kubewire-md5".into()),
    );
    link.ours.block_on(|| async move {
        let speaker = Speaker::start(config).await.expect("speaker starts");
        wait_established(&bird, &speaker).await;
        speaker.announce(net("10.124.0.0/24"), None, RouteAttrs::default());
        let route = bird_route(&bird, "10.124.0.0/24").await;
        println!("bird: {}", route_line(&route));
        assert!(route.contains(&format!("BGP.as_path: {OUR_AS}")), "{route}");
        for p in speaker.peers().await {
            println!("ours: peer {} AS{} {:?}", p.address, p.asn, p.state);
            assert_eq!(p.asn, bird_as);
        }
        speaker.shutdown().await;
    });
}

#[test]
fn md5_with_a_wrong_password_stays_down() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    let link = Link::new();
    let bird = Bird::start(
        &link.birds.name,
        &bird_config(
            65010,
            "password \"not-this-one\";",
            "password \"not-this-one\";",
        ),
    );
    let config = our_config(
        65010,
        |p4| p4.password = Some("kubewire-md5".into()),
        |p6| p6.password = Some("kubewire-md5".into()),
    );
    link.ours.block_on(|| async move {
        let speaker = Speaker::start(config).await.expect("speaker starts");
        speaker.announce(net("10.125.0.0/24"), None, RouteAttrs::default());
        // Long enough for several connection attempts from both sides.
        let came_up = eventually(Duration::from_secs(8), || async {
            let ours = speaker.peers().await;
            let any_ours = ours.iter().any(|p| {
                matches!(
                    p.state,
                    State::OpenSent | State::OpenConfirm | State::Established
                )
            });
            let any_bird = protocol_line(&bird, "kw4").await.contains("Established")
                || protocol_line(&bird, "kw6").await.contains("Established");
            (any_ours || any_bird).then_some(())
        })
        .await;
        for name in ["kw4", "kw6"] {
            println!("bird: {}", protocol_line(&bird, name).await);
        }
        for p in speaker.peers().await {
            println!("ours: peer {} {:?}", p.address, p.state);
        }
        assert!(
            came_up.is_none(),
            "a session got past TCP with a wrong MD5 password"
        );
        let route = bird.birdc_async(&["show", "route", "10.125.0.0/24"]).await;
        assert!(!route.contains("10.125.0.0/24 "), "{route}");
        speaker.shutdown().await;
    });
}

#[test]
fn ibgp_with_bird_keeps_local_pref_next_hop_self_and_split_horizon() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    let link = Link::new();
    // Both sessions iBGP (4-byte AS on both sides); the one over IPv6 carries IPv4
    // too, so it is a second iBGP neighbour that may not get what the first sent.
    let bird = Bird::start(
        &link.birds.name,
        &format!(
            r#"router id {BIRD_V4};
protocol device {{ scan time 1; }}
protocol static s4 {{ ipv4; route 198.51.100.0/24 blackhole; }}
template bgp kw {{
  local as {OUR_AS};
  direct;
  hold time 9;
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 4;
}}
protocol bgp kw4 from kw {{
  neighbor {OUR_V4} port {OUR_PORT} as {OUR_AS};
  ipv4 {{ import all; export where source = RTS_STATIC; gateway direct; }};
}}
protocol bgp kw6 from kw {{
  neighbor {OUR_V6} port {OUR_PORT} as {OUR_AS};
  ipv4 {{ import all; export none; gateway direct; }};
  ipv6 {{ import all; export none; gateway direct; }};
}}
"#
        ),
    );
    let config = our_config(
        OUR_AS,
        |_| {},
        |p6| {
            p6.families = Families::BOTH;
            p6.next_hop_v4 = Some(OUR_V4.parse().expect("addr"));
        },
    );
    link.ours.block_on(|| async move {
        let speaker = Speaker::start(config).await.expect("speaker starts");
        let mut events = speaker.subscribe();
        wait_established(&bird, &speaker).await;

        speaker.announce(
            net("10.127.0.0/24"),
            None,
            RouteAttrs {
                local_pref: Some(200),
                ..RouteAttrs::default()
            },
        );
        let route = bird_route(&bird, "10.127.0.0/24").await;
        println!("bird: {}", route_line(&route));
        assert!(route.contains(&format!("via {OUR_V4}")), "{route}");
        assert!(route.contains("BGP.local_pref: 200"), "{route}");
        assert!(route.contains("[i]"), "iBGP adds no AS: {route}");

        let learned = learn(&mut events, &[net("198.51.100.0/24")]).await;
        let (peer, nh) = learned[&net("198.51.100.0/24")];
        println!("ours: 198.51.100.0/24 from {peer} next hop {nh:?}");
        assert_eq!(nh, NextHop::V4(BIRD_V4.parse().expect("addr")));

        // What we learned over iBGP goes neither back (split horizon) nor to the
        // other iBGP neighbour: BIRD keeps only its static route.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let bird_view = bird
            .birdc_async(&["show", "route", "198.51.100.0/24", "all"])
            .await;
        let paths: Vec<&str> = bird_view
            .lines()
            .filter(|l| l.contains(" [s4 ") || l.contains(" [kw"))
            .map(str::trim)
            .collect();
        println!("bird: 198.51.100.0/24 paths: {paths:?}");
        assert_eq!(paths.len(), 1, "{bird_view}");
        assert!(paths[0].contains("[s4 "), "{bird_view}");
        for p in speaker.peers().await {
            println!(
                "ours: peer {} AS{} received {} advertised {}",
                p.address, p.asn, p.prefixes_received, p.prefixes_advertised
            );
            assert_eq!(p.prefixes_advertised, 1, "only our own route: {p:?}");
        }
        speaker.shutdown().await;
    });
}

#[test]
fn we_reconnect_and_resend_when_bird_restarts() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    let link = Link::new();
    let config = our_config(65010, |_| {}, |_| {});
    let birds = &link.birds;
    link.ours.block_on(|| async move {
        let speaker = Speaker::start(config).await.expect("speaker starts");
        let mut events = speaker.subscribe();
        speaker.announce(net("10.128.0.0/24"), None, RouteAttrs::default());
        let bird = Bird::start(&birds.name, &bird_config(65010, "", ""));
        wait_established(&bird, &speaker).await;
        bird_route(&bird, "10.128.0.0/24").await;
        learn(&mut events, &[net("198.51.100.0/24")]).await;

        // BIRD dies without a word: its routes go when the hold timer (9 s) or the
        // TCP reset says so, and we keep trying to connect with backoff.
        drop(bird);
        let gone = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match events.recv().await {
                    Some(RouteEvent::Withdrawn { prefix }) if prefix == net("198.51.100.0/24") => {
                        break;
                    }
                    Some(_) => {}
                    None => panic!("speaker stopped"),
                }
            }
        })
        .await;
        assert!(gone.is_ok(), "BIRD's route not withdrawn within 20s");
        println!("ours: 198.51.100.0/24 withdrawn after BIRD died");
        let down = speaker.peers().await;
        assert!(
            down.iter().all(|p| p.state != State::Established),
            "{down:?}"
        );

        let bird = Bird::start(&birds.name, &bird_config(65010, "", ""));
        let started = Instant::now();
        wait_established(&bird, &speaker).await;
        println!(
            "ours: re-established {:?} after BIRD restarted",
            started.elapsed()
        );
        let route = bird_route(&bird, "10.128.0.0/24").await;
        println!("bird: {}", route_line(&route));
        learn(&mut events, &[net("198.51.100.0/24")]).await;
        speaker.shutdown().await;
    });
}

/// FRR's bgpd in a namespace (no zebra, so nothing touches a kernel table), killed
/// on drop.
struct Frr {
    child: Child,
    dir: tempfile::TempDir,
}

impl Frr {
    fn installed() -> bool {
        std::path::Path::new("/usr/lib/frr/bgpd").exists()
            && Command::new("sh")
                .args(["-c", "command -v vtysh"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    fn start(netns: &Netns, config: &str) -> Frr {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("bgpd.conf");
        std::fs::write(&conf, config).expect("writing bgpd.conf");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns.name,
                "/usr/lib/frr/bgpd",
                "-Z",
                "-S",
                "-P",
                "0",
            ])
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("bgpd.pid"))
            .arg("--vty_socket")
            .arg(dir.path())
            .arg("--log")
            .arg(format!("file:{}", dir.path().join("bgpd.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting bgpd");
        let frr = Frr { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !frr.dir.path().join("bgpd.vty").exists() {
            assert!(
                Instant::now() < deadline,
                "bgpd did not open its vty socket; log:\n{}",
                frr.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        frr
    }

    /// `vtysh -d bgpd -c CMD` as JSON, bounded to 10 s.
    async fn json(&self, command: &str) -> serde_json::Value {
        let output = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new("vtysh")
                .arg("--vty_socket")
                .arg(self.dir.path())
                .args(["-d", "bgpd", "-c", command])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("vtysh answered within 10s")
        .expect("running vtysh");
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bgpd.log")).unwrap_or_default()
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn frr_config(frr_as: u32, password: &str) -> String {
    format!(
        r#"router bgp {frr_as}
 bgp router-id {BIRD_V4}
 no bgp ebgp-requires-policy
 no bgp network import-check
 no bgp default ipv4-unicast
 timers bgp 3 9
 neighbor {OUR_V4} remote-as {OUR_AS}
 neighbor {OUR_V4} port {OUR_PORT}
 neighbor {OUR_V4} timers connect 2
 neighbor {OUR_V4} password {password}
 neighbor {OUR_V6} remote-as {OUR_AS}
 neighbor {OUR_V6} port {OUR_PORT}
 neighbor {OUR_V6} timers connect 2
 neighbor {OUR_V6} password {password}
 neighbor {OUR_V6} passive
 address-family ipv4 unicast
  network 198.51.100.0/24
  neighbor {OUR_V4} activate
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:51::/48
  neighbor {OUR_V6} activate
 exit-address-family
"#
    )
}

/// The best path FRR has for `prefix` (`show bgp <afi> unicast <prefix> json`), once
/// it has one.
async fn frr_path(frr: &Frr, afi: &str, prefix: &str) -> serde_json::Value {
    let command = format!("show bgp {afi} unicast {prefix} json");
    let found = eventually(Duration::from_secs(20), || async {
        let route = frr.json(&command).await;
        route["paths"].as_array().and_then(|p| p.first()).cloned()
    })
    .await;
    found.unwrap_or_else(|| panic!("FRR has no route {prefix} within 20s; log:\n{}", frr.log()))
}

#[test]
fn frr_learns_our_routes_and_we_learn_frrs_with_md5() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    if !Frr::installed() {
        kubewire_lab::harness::skip("frr not installed (scripts/install-deps installs it)");
        return;
    }
    let link = Link::new();
    let frr_as = 4_200_000_020;
    // IPv4: both sides connect; IPv6: FRR only listens, we connect. MD5 on both.
    let frr = Frr::start(&link.birds, &frr_config(frr_as, "kubewire-md5"));
    let config = our_config(
        frr_as,
        |p4| p4.password = Some("kubewire-md5".into()),
        // No link-local next hop: bgpd without zebra knows no interfaces and
        // withdraws routes that carry one (BIRD's test covers the pair).
        |p6| p6.password = Some("kubewire-md5".into()),
    );
    link.ours.block_on(|| async move {
        let speaker = Speaker::start(config).await.expect("speaker starts");
        let mut events = speaker.subscribe();
        let up = eventually(Duration::from_secs(30), || async {
            let neighbors = frr.json("show bgp neighbors json").await;
            let frr_up = [OUR_V4, OUR_V6]
                .iter()
                .all(|n| neighbors[n]["bgpState"] == "Established");
            let ours_up = speaker
                .peers()
                .await
                .iter()
                .all(|p| p.state == State::Established);
            (frr_up && ours_up).then_some(neighbors)
        })
        .await;
        let Some(neighbors) = up else {
            panic!(
                "sessions not established within 30s\nours: {:?}\nfrr log:\n{}",
                speaker.peers().await,
                frr.log()
            )
        };
        for n in [OUR_V4, OUR_V6] {
            let caps = &neighbors[n]["neighborCapabilities"];
            println!(
                "frr: neighbor {n} {} 4byteAs {} routeRefresh {}",
                neighbors[n]["bgpState"], caps["4byteAs"], caps["routeRefresh"]
            );
            assert_eq!(caps["4byteAs"], "advertisedAndReceived", "{caps}");
        }

        speaker.announce(net("10.126.0.0/24"), None, RouteAttrs::default());
        speaker.announce(net("2001:db8:126::/48"), None, RouteAttrs::default());
        let v4 = frr_path(&frr, "ipv4", "10.126.0.0/24").await;
        println!(
            "frr: 10.126.0.0/24 as-path {} next hop {}",
            v4["aspath"]["string"], v4["nexthops"][0]["ip"]
        );
        assert_eq!(v4["aspath"]["string"], OUR_AS.to_string(), "{v4}");
        assert_eq!(v4["nexthops"][0]["ip"], OUR_V4, "{v4}");
        let v6 = frr_path(&frr, "ipv6", "2001:db8:126::/48").await;
        let hops: Vec<String> = v6["nexthops"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| format!("{} ({})", h["ip"], h["scope"]))
            .collect();
        println!("frr: 2001:db8:126::/48 next hops {}", hops.join(", "));
        assert_eq!(v6["nexthops"][0]["ip"], OUR_V6, "{v6}");

        let learned = learn(
            &mut events,
            &[net("198.51.100.0/24"), net("2001:db8:51::/48")],
        )
        .await;
        for (prefix, (peer, nh)) in &learned {
            println!("ours: {prefix} from {peer} next hop {nh:?}");
        }
        assert_eq!(
            learned[&net("198.51.100.0/24")].1,
            NextHop::V4(BIRD_V4.parse().expect("addr"))
        );
        assert!(matches!(
            learned[&net("2001:db8:51::/48")].1,
            NextHop::V6 { global, .. } if global == BIRD_V6.parse::<std::net::Ipv6Addr>().expect("addr")
        ));
        speaker.shutdown().await;
    });
}

/// BIRD for the graceful-restart tests: IPv4 only, graceful restart on, and the
/// static routes given.
fn gr_bird_config(statics: &[&str]) -> String {
    let routes: String = statics
        .iter()
        .map(|p| format!("route {p} blackhole; "))
        .collect();
    format!(
        r#"router id {BIRD_V4};
protocol device {{ scan time 1; }}
protocol static s4 {{ ipv4; {routes}}}
protocol bgp kw4 {{
  local as 65020;
  neighbor {OUR_V4} port {OUR_PORT} as {OUR_AS};
  hold time 9;
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 4;
  graceful restart on;
  graceful restart time 30;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
"#
    )
}

/// Our side for them: one IPv4 neighbour, graceful restart with 30 s.
fn gr_config() -> SpeakerConfig {
    let mut config = our_config(65020, |_| {}, |_| {});
    config.peers.retain(|p| p.address.is_ipv4());
    config.listen.retain(|l| l.is_ipv4());
    config.graceful_restart = Some(30);
    config
}

/// Waits for `prefix`'s withdrawal for at most `limit`; true if it came.
async fn withdrawn_within(
    events: &mut UnboundedReceiver<RouteEvent>,
    prefix: IpNet,
    limit: Duration,
) -> bool {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Some(RouteEvent::Withdrawn { prefix: p }) if p == prefix => return,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await
    .is_ok()
}

#[test]
fn graceful_restart_helper_keeps_birds_routes_through_its_restart() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    let link = Link::new();
    let birds = &link.birds;
    link.ours.block_on(|| async move {
        let speaker = Speaker::start(gr_config()).await.expect("speaker starts");
        let mut events = speaker.subscribe();
        let bird = Bird::start(
            &birds.name,
            &gr_bird_config(&["198.51.100.0/24", "198.51.101.0/24"]),
        );
        let up = eventually(Duration::from_secs(30), || async {
            protocol_line(&bird, "kw4")
                .await
                .contains("Established")
                .then_some(())
        })
        .await;
        assert!(up.is_some(), "not established: {}", bird.log());
        learn(
            &mut events,
            &[net("198.51.100.0/24"), net("198.51.101.0/24")],
        )
        .await;

        // BIRD is killed (no NOTIFICATION): both routes stay, well past the hold
        // time, though the session is down.
        drop(bird);
        assert!(
            !withdrawn_within(&mut events, net("198.51.100.0/24"), Duration::from_secs(12)).await,
            "BIRD's route was withdrawn while it restarted"
        );
        let down = speaker.peers().await;
        assert!(
            down.iter().all(|p| p.state != State::Established),
            "{down:?}"
        );
        assert_eq!(down[0].prefixes_accepted, 2, "{down:?}");

        // BIRD comes back with one of the two: after its End-of-RIB the other,
        // stale one goes (long before the 30 s restart time), the kept one stays.
        let started = Instant::now();
        let bird = Bird::start(&birds.name, &gr_bird_config(&["198.51.100.0/24"]));
        assert!(
            withdrawn_within(&mut events, net("198.51.101.0/24"), Duration::from_secs(20)).await,
            "the route BIRD no longer has was not withdrawn after its End-of-RIB: {}",
            bird.log()
        );
        println!(
            "ours: stale route gone {:?} after BIRD restarted",
            started.elapsed()
        );
        let peers = speaker.peers().await;
        assert_eq!(peers[0].state, State::Established, "{peers:?}");
        assert_eq!(peers[0].prefixes_accepted, 1, "{peers:?}");
        speaker.shutdown().await;
    });
}

#[test]
fn graceful_restart_bird_keeps_our_routes_while_we_restart() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    let link = Link::new();
    let bird = Bird::start(&link.birds.name, &gr_bird_config(&[]));
    // Our first life, on its own runtime: announce two routes, then die without
    // a NOTIFICATION (the runtime is dropped, its sockets just close), as kill -9
    // would.
    link.ours.run(|| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let speaker = Speaker::start(gr_config()).await.expect("speaker starts");
            speaker.announce(net("10.129.0.0/24"), None, RouteAttrs::default());
            speaker.announce(net("10.130.0.0/24"), None, RouteAttrs::default());
            bird_route(&bird, "10.129.0.0/24").await;
            bird_route(&bird, "10.130.0.0/24").await;
            std::mem::forget(speaker);
        });
        runtime.shutdown_background();
    });
    link.ours.block_on(|| async {
        // Past the hold time BIRD still routes both: it waits for our restart.
        tokio::time::sleep(Duration::from_secs(10)).await;
        for prefix in ["10.129.0.0/24", "10.130.0.0/24"] {
            let out = bird.birdc_async(&["show", "route", prefix]).await;
            assert!(
                out.contains(prefix),
                "BIRD dropped {prefix} while we restarted: {out}\n{}",
                bird.birdc_async(&["show", "protocols", "all", "kw4"]).await
            );
        }
        // The second life announces one of them; after our End-of-RIB BIRD drops
        // the other and keeps this one.
        let speaker = Speaker::start(gr_config()).await.expect("speaker starts");
        speaker.announce(net("10.129.0.0/24"), None, RouteAttrs::default());
        let gone = eventually(Duration::from_secs(20), || async {
            let out = bird.birdc_async(&["show", "route", "10.130.0.0/24"]).await;
            (!out.contains("10.130.0.0/24")).then_some(())
        })
        .await;
        assert!(gone.is_some(), "BIRD kept our stale route: {}", bird.log());
        let kept = bird.birdc_async(&["show", "route", "10.129.0.0/24"]).await;
        assert!(kept.contains("10.129.0.0/24"), "{kept}");
        speaker.shutdown().await;
    });
}

//! The routing apply layer on a real underlay of network namespaces (root only):
//! three nodes on two subnets behind a router, pods on every node, an external host.
//! Each test builds its own underlay from examples/routing/three-nodes.yaml. Two tests
//! make /proc/sys read-only, as it is in the agent's container: for the apply layer,
//! and for a whole `kubewire run` process watching an API server inside the node.

mod common;
#[path = "routing/support.rs"]
mod support;

use std::net::IpAddr;

use common::OurRoutes;
use kube::ResourceExt;
use kubewire::network::{OverlayEncap, OverlayType};
use kubewire::routing::apply::{Reconciler, SyncReport};
use kubewire::routing::metrics::RoutingMetrics;
use kubewire::runtime::SyncReason;
use support::*;

const POD_MTU_VXLAN: u32 = 1450;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Every pod reaches every other pod on both families, keeping its source address.
fn assert_pods_reach_each_other(underlay: &Underlay) {
    for from in &underlay.pods {
        for to in &underlay.pods {
            if std::ptr::eq(from, to) {
                continue;
            }
            for (source, target) in [(from.v4, to.v4), (from.v6, to.v6)] {
                let seen = probe(&from.ns, target)
                    .unwrap_or_else(|e| panic!("pod {source} cannot reach pod {target}: {e}"));
                assert_eq!(
                    seen, source,
                    "pod-to-pod traffic must keep the pod source IP"
                );
            }
        }
    }
}

#[test]
fn pods_reach_pods_directly_in_a_subnet_and_over_vxlan_across() {
    let mut underlay = Underlay::build();
    let snapshot = snapshot();
    let options = options(OverlayType::Subnet, OverlayEncap::Vxlan);
    underlay.sync_all(&snapshot, &options);

    let mut n1_routes = underlay.node("n1").ns.our_routes();
    n1_routes.sort();
    assert_eq!(
        n1_routes,
        [
            "10.244.2.0/24 via 192.168.1.12 dev eth0",
            "10.244.3.0/24 via 10.244.3.0 dev kubewire-vx onlink",
            "fd00:10:244:2::/64 via fd00:1::12 dev eth0",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev kubewire-vx onlink",
        ]
    );
    let mut n3_routes = underlay.node("n3").ns.our_routes();
    n3_routes.sort();
    assert_eq!(
        n3_routes,
        [
            "10.244.1.0/24 via 10.244.1.0 dev kubewire-vx onlink",
            "10.244.2.0/24 via 10.244.2.0 dev kubewire-vx onlink",
            "fd00:10:244:1::/64 via fd00:10:244:1:: dev kubewire-vx onlink",
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev kubewire-vx onlink",
        ]
    );
    let bridge = underlay
        .node("n1")
        .ns
        .ip(&["-br", "addr", "show", "kube-bridge"]);
    assert!(
        bridge.contains("10.244.1.1/24") && bridge.contains("fd00:10:244:1::1/64"),
        "{bridge}"
    );
    let mtu = underlay.node("n1").ns.ip(&["link", "show", "kube-bridge"]);
    assert!(mtu.contains(&format!("mtu {POD_MTU_VXLAN}")), "{mtu}");

    for node in ["n1", "n2", "n3"] {
        underlay.add_pod(node, 10, POD_MTU_VXLAN);
    }
    underlay.add_pod("n1", 11, POD_MTU_VXLAN);
    assert_pods_reach_each_other(&underlay);

    // Leaving the cluster, pods are masqueraded to their node's address.
    let cases = [
        (0, "192.168.1.11", "fd00:1::11"),
        (2, "192.168.2.13", "fd00:2::13"),
    ];
    for (pod, node_v4, node_v6) in cases {
        let from = &underlay.pods[pod].ns;
        assert_eq!(
            probe(from, ip(EXTERNAL_V4)),
            Ok(ip(node_v4)),
            "IPv4 egress of pod {pod}"
        );
        assert_eq!(
            probe(from, ip(EXTERNAL_V6)),
            Ok(ip(node_v6)),
            "IPv6 egress of pod {pod}"
        );
    }
    // A second sync with nothing changed changes nothing (a new reconciler reads the
    // nftables table it finds and leaves it as it is).
    let report = underlay
        .sync("n1", &snapshot, &options, SyncReason::Change)
        .unwrap();
    assert_eq!(report, SyncReport::default());
}

#[test]
fn drift_is_repaired_and_a_removed_node_takes_its_routes_and_tunnel_entries() {
    let mut underlay = Underlay::build();
    let snapshot = snapshot();
    let options = options(OverlayType::Subnet, OverlayEncap::Vxlan);
    underlay.sync_all(&snapshot, &options);
    let p1 = underlay.add_pod("n1", 10, POD_MTU_VXLAN);
    let p3 = underlay.add_pod("n3", 10, POD_MTU_VXLAN);
    let n1 = &underlay.node("n1").ns;

    // Someone deletes our routes and a tunnel entry by hand.
    n1.ip(&["route", "del", "10.244.3.0/24"]);
    n1.ip(&["route", "del", "10.244.2.0/24"]);
    n1.ip(&["neigh", "del", "10.244.3.0", "dev", "kubewire-vx"]);
    assert!(probe(&underlay.pods[p1].ns, underlay.pods[p3].v4).is_err());
    let report = underlay
        .sync("n1", &snapshot, &options, SyncReason::Periodic)
        .unwrap();
    assert_eq!(report.routes_replaced, 2, "{report:?}");
    assert_eq!(report.neighbours_changed, 1, "{report:?}");
    assert_eq!(
        probe(&underlay.pods[p1].ns, underlay.pods[p3].v4),
        Ok(underlay.pods[p1].v4)
    );
    // A foreign route is left alone.
    n1.ip(&["route", "add", "10.250.0.0/24", "via", "192.168.1.1"]);

    // n3 leaves the cluster.
    let n3_mac = "06:6b:c0:a8:02:0d";
    assert!(
        n1.exec("bridge", &["fdb", "show", "dev", "kubewire-vx"])
            .contains(n3_mac)
    );
    let mut without_n3 = snapshot.clone();
    without_n3.nodes.retain(|n| n.name_any() != "n3");
    let report = underlay
        .sync("n1", &without_n3, &options, SyncReason::Change)
        .unwrap();
    assert_eq!(report.routes_deleted, 2, "{report:?}");
    let mut routes = n1.our_routes();
    routes.sort();
    assert_eq!(
        routes,
        [
            "10.244.2.0/24 via 192.168.1.12 dev eth0",
            "fd00:10:244:2::/64 via fd00:1::12 dev eth0",
        ]
    );
    let fdb = n1.exec("bridge", &["fdb", "show", "dev", "kubewire-vx"]);
    assert!(!fdb.contains(n3_mac), "{fdb}");
    let neighbours = n1.ip(&["neigh", "show", "dev", "kubewire-vx"]);
    assert!(
        !neighbours.contains("10.244.3.0") && !neighbours.contains("fd00:10:244:3::"),
        "{neighbours}"
    );
    assert!(
        n1.ip(&["route", "show", "10.250.0.0/24"])
            .contains("via 192.168.1.1")
    );
}

#[test]
fn overlay_full_tunnels_everything_and_none_relies_on_the_underlay() {
    let mut underlay = Underlay::build();
    let snapshot = snapshot();
    underlay.sync_all(&snapshot, &options(OverlayType::Full, OverlayEncap::Vxlan));
    for node in ["n1", "n2", "n3"] {
        underlay.add_pod(node, 10, POD_MTU_VXLAN);
    }
    let n1 = &underlay.node("n1").ns;
    let via = n1.ip(&["route", "get", "10.244.2.10"]);
    assert!(
        via.contains("dev kubewire-vx"),
        "full overlay tunnels same-subnet peers too: {via}"
    );
    assert_pods_reach_each_other(&underlay);

    // overlay-type none: the tunnel goes, same-subnet peers are routed directly and
    // cross-subnet pairs fail...
    underlay.sync_all(&snapshot, &options(OverlayType::None, OverlayEncap::Vxlan));
    assert!(!n1.ip(&["link", "show"]).contains("kubewire-vx"));
    let (p1, p2, p3) = (&underlay.pods[0], &underlay.pods[1], &underlay.pods[2]);
    assert_eq!(probe(&p1.ns, p2.v4), Ok(p1.v4));
    assert_eq!(probe(&p1.ns, p2.v6), Ok(p1.v6));
    assert!(probe(&p1.ns, p3.v4).is_err());
    assert!(probe(&p1.ns, p3.v6).is_err());
    // ...only because the fabric router has no pod routes: give it some and they work.
    let router_routes = [
        ("10.244.1.0/24", "192.168.1.11"),
        ("10.244.3.0/24", "192.168.2.13"),
        ("fd00:10:244:1::/64", "fd00:1::11"),
        ("fd00:10:244:3::/64", "fd00:2::13"),
    ];
    for (cidr, via) in router_routes {
        underlay.router.ip(&["route", "add", cidr, "via", via]);
    }
    assert_eq!(probe(&p1.ns, p3.v4), Ok(p1.v4));
    assert_eq!(probe(&p1.ns, p3.v6), Ok(p1.v6));
}

#[test]
fn cleanup_removes_what_routing_created() {
    let underlay = Underlay::build();
    let snapshot = snapshot();
    underlay.sync_all(
        &snapshot,
        &options(OverlayType::Subnet, OverlayEncap::Vxlan),
    );
    let n1 = &underlay.node("n1").ns;
    assert!(!n1.our_routes().is_empty());
    n1.block_on(|| async {
        let netlink = kubewire::routing::netlink::Netlink::connect().unwrap();
        kubewire::routing::apply::cleanup(&netlink).await
    })
    .unwrap();
    assert!(n1.our_routes().is_empty());
    let links = n1.ip(&["link", "show"]);
    assert!(
        !links.contains("kubewire-vx") && !links.contains("kube-bridge"),
        "{links}"
    );
    assert!(
        !n1.exec("nft", &["list", "tables"])
            .contains("kubewire-routing")
    );

    // A bridge someone else created stays; only our addresses leave it.
    let n2 = &underlay.node("n2").ns;
    n2.ip(&["link", "del", "kube-bridge"]);
    n2.ip(&["link", "add", "kube-bridge", "type", "bridge"]);
    n2.ip(&["addr", "add", "10.244.2.1/24", "dev", "kube-bridge"]);
    underlay
        .sync(
            "n2",
            &snapshot,
            &options(OverlayType::Subnet, OverlayEncap::Vxlan),
            SyncReason::Start,
        )
        .unwrap();
    n2.block_on(|| async {
        let netlink = kubewire::routing::netlink::Netlink::connect().unwrap();
        kubewire::routing::apply::cleanup(&netlink).await
    })
    .unwrap();
    let bridge = n2.ip(&["addr", "show", "kube-bridge"]);
    assert!(
        bridge.contains("10.244.2.1/24"),
        "the plugin's address stays: {bridge}"
    );
    assert!(
        !bridge.contains("fd00:10:244:2::1"),
        "our address goes: {bridge}"
    );
}

/// IPIP is not in this machine's kernel: run it in the VM (`tests/vm/run`).
#[test]
#[ignore = "needs the ipip and ip6_tunnel modules: run inside tests/vm/run"]
fn pods_reach_pods_over_ipip_across_subnets() {
    let mut underlay = Underlay::build();
    let snapshot = snapshot();
    let options = options(OverlayType::Subnet, OverlayEncap::Ipip);
    underlay.sync_all(&snapshot, &options);
    let mut n1_routes = underlay.node("n1").ns.our_routes();
    n1_routes.sort();
    assert_eq!(
        n1_routes,
        [
            "10.244.2.0/24 via 192.168.1.12 dev eth0",
            "10.244.3.0/24 via 192.168.2.13 dev kubewire-tun onlink",
            "fd00:10:244:2::/64 via fd00:1::12 dev eth0",
            "fd00:10:244:3::/64 via fd00:2::13 dev kubewire-tun6 onlink",
        ]
    );
    for node in ["n1", "n2", "n3"] {
        underlay.add_pod(node, 10, 1440);
    }
    assert_pods_reach_each_other(&underlay);
}

#[test]
fn an_edited_or_deleted_routing_table_is_rewritten_on_the_periodic_check() {
    let underlay = Underlay::build();
    let snapshot = snapshot();
    let options = options(OverlayType::Subnet, OverlayEncap::Vxlan);
    let n1 = &underlay.node("n1").ns;
    let nft = |args: &str| n1.exec("nft", &args.split(' ').collect::<Vec<_>>());
    let pod_cidrs_v4 = || nft("-j list set inet kubewire-routing pod-cidrs-v4");
    let forward_rules = || {
        nft("list chain inet kubewire-routing forward")
            .matches("accept")
            .count()
    };
    n1.block_on(|| async {
        let mut reconciler = Reconciler::connect(RoutingMetrics::default()).unwrap();
        let mut sync = async |reason| {
            reconciler
                .sync(&snapshot, "n1", &options, reason)
                .await
                .unwrap()
        };
        assert!(sync(SyncReason::Start).await.0.nftables_applied);
        // Untouched: neither a change nor the periodic check rewrites it.
        assert!(!sync(SyncReason::Change).await.0.nftables_applied);
        assert!(!sync(SyncReason::Periodic).await.0.nftables_applied);
        let rules = forward_rules();
        assert!(rules >= 4, "{rules} accept rules");

        // Someone flushes a chain: only the periodic check looks, and repairs it.
        nft("flush chain inet kubewire-routing forward");
        assert!(!sync(SyncReason::Change).await.0.nftables_applied);
        assert!(sync(SyncReason::Periodic).await.0.nftables_applied);
        assert_eq!(forward_rules(), rules);

        // Someone removes a set element, then the whole table.
        assert!(pod_cidrs_v4().contains("10.244"));
        nft("flush set inet kubewire-routing pod-cidrs-v4");
        assert!(sync(SyncReason::Periodic).await.0.nftables_applied);
        assert!(pod_cidrs_v4().contains("10.244"));
        nft("delete table inet kubewire-routing");
        assert!(sync(SyncReason::Periodic).await.0.nftables_applied);
        assert_eq!(forward_rules(), rules);
    });
}

/// Makes /proc/sys read-only for the calling thread, as it is in an unprivileged
/// container: a private mount namespace (this thread's alone) in which /proc/sys is
/// bound onto itself and remounted read-only. Even root's writes then fail (EROFS).
fn read_only_proc_sys_for_this_thread() {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("making / private");
    mount(
        Some("/proc/sys"),
        "/proc/sys",
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .expect("binding /proc/sys");
    mount(
        None::<&str>,
        "/proc/sys",
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("remounting /proc/sys read-only");
}

/// In a container the agent cannot write the bridge's `accept_dad` (optional: its
/// absence costs a DAD delay): the sync still succeeds and the metric names the
/// sysctl. A required sysctl that is wrong and cannot be written still fails it.
#[test]
fn an_unwritable_optional_sysctl_is_counted_and_does_not_fail_the_sync() {
    let underlay = Underlay::build();
    // As on a real host, new links get duplicate address detection, so the bridge's
    // accept_dad must be written (the harness turns it off for its namespaces).
    underlay
        .node("n1")
        .ns
        .sysctl("net.ipv6.conf.default.accept_dad", "1");
    let snapshot = snapshot();
    let options = options(OverlayType::Subnet, OverlayEncap::Vxlan);
    let n1 = &underlay.node("n1").ns;
    // What the DaemonSet's privileged init container sets before the agent starts.
    n1.sysctl("net.ipv4.ip_forward", "1");
    n1.sysctl("net.ipv6.conf.all.forwarding", "1");
    let accept_dad = "net.ipv6.conf.kube-bridge.accept_dad";
    let metrics = RoutingMetrics::default();
    let (first, second, write_error, failures_after_first) = n1.run(|| {
        read_only_proc_sys_for_this_thread();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut reconciler = Reconciler::connect(metrics.clone()).unwrap();
            let first = reconciler
                .sync(&snapshot, "n1", &options, SyncReason::Start)
                .await
                .map(|r| r.0);
            let failures_after_first = metrics.sysctl_failures(accept_dad);
            // The write really fails here, as root.
            let write_error = std::fs::write("/proc/sys/net/ipv6/conf/kube-bridge/accept_dad", "0")
                .map_err(|e| e.raw_os_error());
            let second = reconciler
                .sync(&snapshot, "n1", &options, SyncReason::Periodic)
                .await
                .map(|r| r.0);
            (first, second, write_error, failures_after_first)
        })
    });
    assert_eq!(write_error, Err(Some(libc::EROFS)));
    let first = first.unwrap_or_else(|e| panic!("the first sync failed: {e:#}"));
    assert!(first.routes_replaced > 0, "{first:?}");
    second.unwrap_or_else(|e| panic!("the second sync failed: {e:#}"));
    // The first sync also tries when it creates the bridge (before it comes up);
    // every later sync tries once.
    assert!(failures_after_first >= 1);
    assert_eq!(
        metrics.sysctl_failures(accept_dad),
        failures_after_first + 1,
        "one more for the second sync"
    );
    assert_eq!(
        n1.exec("sysctl", &["-n", accept_dad]).trim(),
        "1",
        "left as it was"
    );
    assert_eq!(n1.our_routes().len(), 4);

    // ip_forward is not optional: wrong and unwritable, it fails the sync.
    n1.sysctl("net.ipv4.ip_forward", "0");
    let result = n1.run(|| {
        read_only_proc_sys_for_this_thread();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let mut reconciler = Reconciler::connect(RoutingMetrics::default()).unwrap();
                reconciler
                    .sync(&snapshot, "n1", &options, SyncReason::Start)
                    .await
                    .map(|_| ())
            })
    });
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("sysctl net.ipv4.ip_forward = 1"), "{err}");
}

/// The embedded API server, serving inside `ns` (on its loopback, which an agent in
/// that namespace reaches) from a thread of its own until dropped.
struct ApiServerIn {
    url: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServerIn {
    fn start(ns: &Netns, seed: Vec<kubewire::cache::manifests::ManifestObject>) -> ApiServerIn {
        let path = format!("/run/netns/{}", ns.name);
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            enter(std::path::Path::new(&path));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            // The listener is bound here, in the namespace this thread entered.
            let server = runtime
                .block_on(kubewire_lab::apiserver::ApiServer::start(
                    kubewire_lab::apiserver::ApiServerConfig {
                        listen: "127.0.0.1:0".parse().unwrap(),
                        history: 1000,
                        bookmark_interval: std::time::Duration::from_secs(1),
                        seed,
                    },
                ))
                .expect("API server");
            url_tx.send(server.url()).unwrap();
            let _ = stopped.recv();
            drop(server);
        });
        let url = url_rx.recv().expect("the API server's address");
        ApiServerIn {
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ApiServerIn {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `kubewire run` as the DaemonSet runs it — its /proc/sys read-only, the node's
/// forwarding set beforehand as the init container does — on a dual-stack node: the
/// routing controller's syncs succeed (/healthz 200, routes in place) although the
/// bridge's accept_dad cannot be written, and /metrics names that sysctl.
#[test]
fn the_agent_with_a_read_only_proc_sys_is_healthy_on_a_dual_stack_node() {
    let underlay = Underlay::build();
    // As on a real host, new links get duplicate address detection, so the bridge's
    // accept_dad must be written (the harness turns it off for its namespaces).
    underlay
        .node("n1")
        .ns
        .sysctl("net.ipv6.conf.default.accept_dad", "1");
    let n1 = &underlay.node("n1").ns;
    n1.sysctl("net.ipv4.ip_forward", "1");
    n1.sysctl("net.ipv6.conf.all.forwarding", "1");
    let text = std::fs::read_to_string(MANIFESTS).unwrap();
    let seed = kubewire::cache::manifests::parse_documents(std::path::Path::new(MANIFESTS), &text)
        .unwrap();
    let server = ApiServerIn::start(n1, seed);
    let dir = common::temp_dir();
    let kubeconfig = dir.path().join("kubeconfig");
    kubewire_lab::apiserver::write_kubeconfig(&server.url, &kubeconfig).unwrap();
    let addr = "127.0.0.1:20344";
    // What an unprivileged container gets: /proc/sys bound read-only over itself, in
    // the mount namespace `ip netns exec` makes for the agent alone.
    let mut agent = std::process::Command::new("ip")
        .args(["netns", "exec", &n1.name, "sh", "-ec"])
        .arg(
            "mount --bind /proc/sys /proc/sys; mount -o remount,bind,ro /proc/sys; \
             if echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null; then exit 97; fi; \
             exec \"$0\" \"$@\"",
        )
        .arg(common::kubewire_bin())
        .args([
            "run",
            "--node-name",
            "n1",
            "--run-firewall=false",
            "--run-cni=false",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--metrics-addr", addr, "--health-addr", addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let curl = |path: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &n1.name, "curl", "-s", "-m", "2"])
            .args(["-w", "\n%{http_code}", &format!("http://{addr}{path}")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let health = loop {
        let health = curl("/healthz");
        if health.ends_with("\n200") {
            break health;
        }
        if let Ok(Some(status)) = agent.try_wait() {
            let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
            panic!("the agent exited ({status}): {log}");
        }
        if std::time::Instant::now() > deadline {
            let _ = agent.kill();
            let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
            panic!("not healthy within 30 s ({health}): {log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let metrics = curl("/metrics");
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(health.contains("routing"), "{health}");
    assert_eq!(n1.our_routes().len(), 4, "the routes are in place");
    let failures = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "kubewire_routing_sysctl_failures_total{sysctl=\"net.ipv6.conf.kube-bridge.accept_dad\"}",
            )
        })
        .unwrap_or_else(|| panic!("no accept_dad failures in\n{metrics}"));
    let count: f64 = failures.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{failures}");
    assert!(
        metrics.contains("kubewire_controller_sync_errors_total{controller=\"routing\"} 0"),
        "{metrics}"
    );
    assert_eq!(
        n1.exec("sysctl", &["-n", "net.ipv6.conf.kube-bridge.accept_dad"])
            .trim(),
        "1",
        "it could not be written"
    );
}

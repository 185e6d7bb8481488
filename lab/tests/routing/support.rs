//! The routing tests' underlay: three node namespaces on two subnets joined by a
//! router namespace, an "external" namespace beyond the router, pod namespaces wired
//! into each node's kube-bridge, and helpers to run the routing apply layer inside a
//! node and to probe TCP reachability between namespaces. Every name carries the
//! process id; everything is deleted on drop, also when a test panics. Namespaces
//! themselves are tests/common's [`Netns`].
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kubewire::cache::Snapshot;
use kubewire::network::{NetworkConfig, OverlayEncap, OverlayType};
use kubewire::routing::apply::{Reconciler, SyncReport};
use kubewire::routing::compile::CompileOptions;
use kubewire::routing::metrics::RoutingMetrics;
use kubewire::runtime::SyncReason;

pub use crate::common::{Netns, enter};

/// The manifests the underlay is built for (addresses must agree).
pub const MANIFESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/routing/three-nodes.yaml"
);
pub const EXTERNAL_V4: &str = "203.0.113.10";
pub const EXTERNAL_V6: &str = "2001:db8::10";
pub const PORT: u16 = 8080;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the routing netns tests need root (they create network namespaces)"
    );
}

/// A node of the underlay: its namespace and addresses.
pub struct Node {
    pub name: &'static str,
    pub ns: Netns,
    pub v4: &'static str,
    pub v6: &'static str,
}

/// A pod: a namespace with eth0 in its node's kube-bridge.
pub struct Pod {
    pub ns: Netns,
    pub v4: IpAddr,
    pub v6: IpAddr,
    responder: Option<Responder>,
}

/// Two subnets, one router, one external host; nodes n1, n2 (192.168.1.0/24,
/// fd00:1::/64) and n3 (192.168.2.0/24, fd00:2::/64) as in [`MANIFESTS`].
pub struct Underlay {
    // Pods first: they are dropped before the nodes their veths live in.
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub router: Netns,
    pub external: Netns,
    external_responder: Option<Responder>,
}

impl Underlay {
    pub fn build() -> Underlay {
        require_root();
        let router = Netns::new("kwr-router");
        let external = Netns::new("kwr-ext");
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ] {
            router.sysctl(key, value);
        }
        router.ip(&["link", "add", "lan1", "type", "bridge"]);
        router.run(|| {
            std::fs::write("/proc/sys/net/ipv6/conf/lan1/accept_dad", "0").expect("accept_dad")
        });
        router.ip(&["link", "set", "lan1", "up"]);
        address(&router, "lan1", "192.168.1.1/24", "fd00:1::1/64");
        let nodes = vec![
            ("n1", "192.168.1.11", "fd00:1::11"),
            ("n2", "192.168.1.12", "fd00:1::12"),
            ("n3", "192.168.2.13", "fd00:2::13"),
        ]
        .into_iter()
        .map(|(name, v4, v6)| {
            let ns = Netns::new(&format!("kwr-{name}-"));
            let node = Node { name, ns, v4, v6 };
            let router_side = format!("to-{name}");
            veth(&node.ns, "eth0", &router, &router_side);
            if name == "n3" {
                address(&router, &router_side, "192.168.2.1/24", "fd00:2::1/64");
                address(&node.ns, "eth0", &format!("{v4}/24"), &format!("{v6}/64"));
                default_routes(&node.ns, "192.168.2.1", "fd00:2::1");
            } else {
                router.ip(&["link", "set", &router_side, "master", "lan1"]);
                address(&node.ns, "eth0", &format!("{v4}/24"), &format!("{v6}/64"));
                default_routes(&node.ns, "192.168.1.1", "fd00:1::1");
            }
            node
        })
        .collect();
        veth(&external, "eth0", &router, "to-ext");
        address(&router, "to-ext", "203.0.113.1/24", "2001:db8::1/64");
        address(&external, "eth0", "203.0.113.10/24", "2001:db8::10/64");
        // The external host knows the node subnets, never the pod CIDRs: a pod's
        // packet only gets an answer when its source was masqueraded.
        for subnet in ["192.168.1.0/24", "192.168.2.0/24"] {
            external.ip(&["route", "add", subnet, "via", "203.0.113.1"]);
        }
        for subnet in ["fd00:1::/64", "fd00:2::/64"] {
            external.ip(&["-6", "route", "add", subnet, "via", "2001:db8::1"]);
        }
        let external_responder = Some(Responder::start(&external, PORT));
        Underlay {
            pods: Vec::new(),
            nodes,
            router,
            external,
            external_responder,
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Applies `snapshot` on `node` with the routing apply layer, as the agent would.
    pub fn sync(
        &self,
        node: &str,
        snapshot: &Snapshot,
        options: &CompileOptions,
        reason: SyncReason,
    ) -> anyhow::Result<SyncReport> {
        self.node(node).ns.block_on(|| async {
            let mut reconciler = Reconciler::connect(RoutingMetrics::default())?;
            let (report, _problems) = reconciler.sync(snapshot, node, options, reason).await?;
            Ok(report)
        })
    }

    /// Syncs every node; panics on failure.
    pub fn sync_all(&self, snapshot: &Snapshot, options: &CompileOptions) {
        for node in &self.nodes {
            self.sync(node.name, snapshot, options, SyncReason::Start)
                .unwrap_or_else(|e| panic!("sync on {}: {e:#}", node.name));
        }
    }

    /// Adds pod `index` on `node` (its addresses end in `index`), with a responder.
    /// The node must have been synced (its kube-bridge exists).
    pub fn add_pod(&mut self, node: &str, index: u8, mtu: u32) -> usize {
        let number: u8 = node[1..].parse().expect("node names are nN");
        let v4: IpAddr = format!("10.244.{number}.{index}").parse().unwrap();
        let v6: IpAddr = format!("fd00:10:244:{number}::{index}").parse().unwrap();
        let ns = Netns::new(&format!("kwr-p{number}-{index}-"));
        let host_side = format!("veth{index}");
        let node_ns = &self.node(node).ns;
        veth(&ns, "eth0", node_ns, &host_side);
        node_ns.ip(&["link", "set", &host_side, "master", "kube-bridge"]);
        node_ns.ip(&["link", "set", &host_side, "mtu", &mtu.to_string()]);
        ns.ip(&["link", "set", "eth0", "mtu", &mtu.to_string()]);
        address(&ns, "eth0", &format!("{v4}/24"), &format!("{v6}/64"));
        default_routes(
            &ns,
            &format!("10.244.{number}.1"),
            &format!("fd00:10:244:{number}::1"),
        );
        let responder = Some(Responder::start(&ns, PORT));
        self.pods.push(Pod {
            ns,
            v4,
            v6,
            responder,
        });
        self.pods.len() - 1
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        // Stop responder threads before their namespaces go.
        for pod in &mut self.pods {
            pod.responder.take();
        }
        self.external_responder.take();
    }
}

/// A veth pair between two namespaces, up. Test interfaces skip IPv6 DAD: a real
/// underlay is long settled, and a forwarding node cannot solicit neighbours until
/// its link-local address is. (kube-bridge's DAD is the routing controller's job.)
fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ]);
    for (ns, name) in [(a, a_name), (b, b_name)] {
        ns.run(|| {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_dad"), "0")
                .expect("accept_dad");
        });
        ns.ip(&["link", "set", name, "up"]);
    }
}

fn address(ns: &Netns, device: &str, v4: &str, v6: &str) {
    ns.ip(&["addr", "add", v4, "dev", device]);
    ns.ip(&["-6", "addr", "add", v6, "dev", device, "nodad"]);
}

fn default_routes(ns: &Netns, v4: &str, v6: &str) {
    ns.ip(&["route", "add", "default", "via", v4]);
    ns.ip(&["-6", "route", "add", "default", "via", v6]);
}

/// A TCP server in a namespace that answers every connection with the source address
/// it saw, then closes.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    pub fn start(ns: &Netns, port: u16) -> Responder {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", ns.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(std::path::Path::new(&path));
            // [::] accepts IPv4 too (as v4-mapped addresses).
            let listener = TcpListener::bind(("::", port)).expect("bind responder");
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.set_nonblocking(false);
                        let seen = peer.ip().to_canonical();
                        let _ = stream.write_all(seen.to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx.recv().expect("responder started");
        Responder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from `from` to `to` and returns the source address the responder saw.
pub fn probe(from: &Netns, to: IpAddr) -> Result<IpAddr, String> {
    probe_within(from, to, Duration::from_millis(1500))
}

pub fn probe_within(from: &Netns, to: IpAddr, timeout: Duration) -> Result<IpAddr, String> {
    from.run(|| {
        let target = SocketAddr::new(to, PORT);
        let mut stream = TcpStream::connect_timeout(&target, timeout)
            .map_err(|e| format!("connect {target}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut seen = String::new();
        stream
            .read_to_string(&mut seen)
            .map_err(|e| format!("read from {target}: {e}"))?;
        seen.parse::<IpAddr>()
            .map_err(|e| format!("{target} answered `{seen}`: {e}"))
    })
}

pub fn options(overlay_type: OverlayType, overlay_encap: OverlayEncap) -> CompileOptions {
    CompileOptions {
        network: NetworkConfig {
            node_ip: None,
            overlay_type,
            overlay_encap,
            pod_mtu: None,
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        },
        pod_egress_masquerade: true,
    }
}

pub fn snapshot() -> Snapshot {
    kubewire::cache::manifests::load_snapshot(std::path::Path::new(MANIFESTS))
        .expect("loading the routing manifests")
}

//! A small cluster network in network namespaces, built straight from manifests (no
//! lab, no CNI): one namespace per Node with a bridge holding the node's pod CIDR
//! gateways, linked to the other nodes with routes to their pod CIDRs; one namespace
//! per Pod on a veth into its node's bridge, with the pod's addresses, serving every
//! declared TCP and UDP port. Probes send real packets from one pod to another.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kubewire::firewall::FirewallInput;
use kubewire::firewall::cluster::Protocol;
use kubewire::firewall::matrix::MatrixResult;

use super::{NetNs, run};

pub struct TestCluster {
    /// Node name → namespace.
    pub nodes: BTreeMap<String, NetNs>,
    /// `ns/pod` → its own namespace (hostNetwork pods have none).
    pub pods: BTreeMap<String, NetNs>,
    /// `ns/pod` → the namespace its processes run in (the node's, for hostNetwork).
    pub pod_netns: BTreeMap<String, String>,
    stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
}

/// The gateway of a pod CIDR: its first address.
fn gateway(cidr: &ipnet::IpNet) -> IpAddr {
    match cidr {
        ipnet::IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        ipnet::IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

impl TestCluster {
    /// Builds the nodes and pods of `input` (every pod must have a node with podCIDRs
    /// containing its addresses).
    pub fn build(input: &FirewallInput) -> Self {
        let cluster = &input.cluster;
        let mut nodes = BTreeMap::new();
        // Nodes on one link: node i gets 172.31.0.(11+i) and fd00:172:31::(11+i).
        let names: Vec<&String> = cluster.nodes.keys().collect();
        for (i, name) in names.iter().enumerate() {
            let ns = NetNs::new(&format!("n{i}"));
            let n = ns.name.as_str();
            for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
                ns.exec("sysctl", &["-qw", sysctl]);
            }
            run(
                "ip",
                &[
                    "-n",
                    n,
                    "link",
                    "add",
                    "br0",
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ],
            );
            run("ip", &["-n", n, "link", "set", "br0", "up"]);
            for cidr in &cluster.nodes[*name].pod_cidrs {
                let address = format!("{}/{}", gateway(cidr), cidr.prefix_len());
                run(
                    "ip",
                    &["-n", n, "addr", "add", &address, "dev", "br0", "nodad"],
                );
            }
            nodes.insert((*name).clone(), ns);
        }
        // A bridge namespace for the node link, so any number of nodes can be joined.
        let link = NetNs::new("link");
        run(
            "ip",
            &[
                "-n",
                &link.name,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        run("ip", &["-n", &link.name, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let n = nodes[*name].name.as_str();
            let port = format!("l{i}");
            run(
                "ip",
                &[
                    "-n", &link.name, "link", "add", &port, "type", "veth", "peer", "name",
                    "uplink", "netns", n,
                ],
            );
            run(
                "ip",
                &[
                    "-n", &link.name, "link", "set", &port, "master", "br0", "up",
                ],
            );
            run("ip", &["-n", n, "link", "set", "uplink", "up"]);
            run(
                "ip",
                &[
                    "-n",
                    n,
                    "addr",
                    "add",
                    &format!("172.31.0.{}/24", 11 + i),
                    "dev",
                    "uplink",
                ],
            );
            run(
                "ip",
                &[
                    "-n",
                    n,
                    "addr",
                    "add",
                    &format!("fd00:172:31::{}/64", 11 + i),
                    "dev",
                    "uplink",
                    "nodad",
                ],
            );
        }
        for (i, name) in names.iter().enumerate() {
            for (j, other) in names.iter().enumerate() {
                if i == j {
                    continue;
                }
                for cidr in &cluster.nodes[*other].pod_cidrs {
                    let via = if cidr.addr().is_ipv4() {
                        format!("172.31.0.{}", 11 + j)
                    } else {
                        format!("fd00:172:31::{}", 11 + j)
                    };
                    run(
                        "ip",
                        &[
                            "-n",
                            &nodes[*name].name,
                            "route",
                            "add",
                            &cidr.to_string(),
                            "via",
                            &via,
                        ],
                    );
                }
            }
        }
        nodes.insert("~link".into(), link);
        let stop = Arc::new(AtomicBool::new(false));
        let mut pods = BTreeMap::new();
        let mut pod_netns = BTreeMap::new();
        let mut servers = Vec::new();
        for (i, pod) in cluster.pods.iter().enumerate() {
            let node_name = pod
                .node
                .as_deref()
                .expect("every test pod has a node")
                .to_string();
            let node = &nodes[&node_name];
            if pod.host_network {
                for (port, protocol) in pod.served_ports() {
                    if protocol != Protocol::Sctp {
                        servers.push(serve(&node.name, port, protocol, stop.clone()));
                    }
                }
                pod_netns.insert(pod.key(), node.name.clone());
                continue;
            }
            let ns = NetNs::new(&format!("p{i}"));
            let veth = format!("vp{i}");
            run(
                "ip",
                &[
                    "-n", &node.name, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns.name,
                ],
            );
            run(
                "ip",
                &[
                    "-n", &node.name, "link", "set", &veth, "master", "br0", "up",
                ],
            );
            run("ip", &["-n", &ns.name, "link", "set", "eth0", "up"]);
            for ip in &pod.ips {
                let cidr = cluster.nodes[&node_name]
                    .pod_cidrs
                    .iter()
                    .find(|c| c.contains(ip))
                    .expect("the pod's address is in its node's pod CIDR");
                let address = format!("{ip}/{}", cidr.prefix_len());
                run(
                    "ip",
                    &[
                        "-n", &ns.name, "addr", "add", &address, "dev", "eth0", "nodad",
                    ],
                );
                run(
                    "ip",
                    &[
                        "-n",
                        &ns.name,
                        "route",
                        "add",
                        "default",
                        "via",
                        &gateway(cidr).to_string(),
                    ],
                );
            }
            for (port, protocol) in pod.served_ports() {
                if protocol != Protocol::Sctp {
                    servers.push(serve(&ns.name, port, protocol, stop.clone()));
                }
            }
            pod_netns.insert(pod.key(), ns.name.clone());
            pods.insert(pod.key(), ns);
        }
        Self {
            nodes,
            pods,
            pod_netns,
            stop,
            servers,
        }
    }

    /// Probes every TCP and UDP row of `rows` with real packets; returns the rows with
    /// `allowed` as measured. A row is tried twice before it counts as denied.
    pub fn probe(&self, input: &FirewallInput, rows: &[MatrixResult]) -> Vec<MatrixResult> {
        let rows: Vec<&MatrixResult> = rows
            .iter()
            .filter(|r| r.protocol != Protocol::Sctp)
            .collect();
        let results: Vec<std::sync::Mutex<Option<bool>>> =
            rows.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..24 {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(row) = rows.get(i) else { break };
                        let dst = input.cluster.pod(&row.to).unwrap();
                        let src = input.cluster.pod(&row.from).unwrap();
                        let dst_ip = dst.ips[0];
                        let ok = src.ip_of_family(dst_ip).is_some()
                            && (0..2).any(|_| {
                                probe_once(
                                    &self.pod_netns[&row.from],
                                    SocketAddr::new(dst_ip, row.port),
                                    row.protocol,
                                )
                            });
                        *results[i].lock().unwrap() = Some(ok);
                    }
                });
            }
        });
        rows.iter()
            .zip(results)
            .map(|(row, result)| MatrixResult {
                allowed: result.into_inner().unwrap().unwrap(),
                ..(*row).clone()
            })
            .collect()
    }

    /// The namespace of a node, by Node name.
    pub fn node(&self, name: &str) -> &NetNs {
        &self.nodes[name]
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
static NEXT_UDP_PORT: AtomicUsize = AtomicUsize::new(0);

use kubewire_lab::harness::run_in as in_netns;

/// Moves the calling thread into the named namespace.
fn enter(ns: &str) {
    kubewire_lab::harness::enter(&kubewire_lab::netns::path(ns));
}

fn probe_once(ns: &str, to: SocketAddr, protocol: Protocol) -> bool {
    in_netns(ns, || match protocol {
        Protocol::Tcp => TcpStream::connect_timeout(&to, PROBE_TIMEOUT).is_ok(),
        Protocol::Udp => {
            // A source port never used before: a conntrack entry left by an earlier
            // probe of the same pair (when policies allowed it) must not answer.
            let port = 20000 + (NEXT_UDP_PORT.fetch_add(1, Ordering::Relaxed) % 40000) as u16;
            let local: SocketAddr = if to.is_ipv4() {
                format!("0.0.0.0:{port}")
            } else {
                format!("[::]:{port}")
            }
            .parse()
            .unwrap();
            let Ok(socket) = UdpSocket::bind(local) else {
                return false;
            };
            socket.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
            let _ = socket.send_to(b"probe", to);
            let mut buffer = [0u8; 64];
            socket.recv_from(&mut buffer).is_ok()
        }
        Protocol::Sctp => false,
    })
}

/// A server in namespace `ns` on `[::]:port` (IPv4 too) until `stop`: TCP accepts and
/// closes, UDP echoes.
fn serve(
    ns: &str,
    port: u16,
    protocol: Protocol,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let ns = ns.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        enter(&ns);
        let address: SocketAddr = format!("[::]:{port}").parse().unwrap();
        match protocol {
            Protocol::Tcp => {
                let listener = TcpListener::bind(address).unwrap();
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => drop(stream),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
            Protocol::Udp => {
                let socket = UdpSocket::bind(address).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut buffer = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                        let _ = socket.send_to(&buffer[..n], from);
                    }
                }
            }
            Protocol::Sctp => {}
        }
    });
    ready_rx.recv().unwrap();
    handle
}

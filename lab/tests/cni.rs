//! The conflist `kubewire cni plan` prints, run through the real CNI plugins
//! (/usr/lib/cni) by `kubewire_lab::cni_exec`: a node network namespace (where the
//! plugins run and create kube-bridge) and a pod namespace per test, ADD then DEL.
//! Needs root; everything happens in namespaces these tests create and delete.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use ipnet::IpNet;
use kubewire_lab::cni_exec::{Attachment, CniExecError, CniResult, PluginRunner};
use serde_json::Value;

const PLUGIN_DIR: &str = "/usr/lib/cni";

/// A named network namespace, deleted on drop (with every interface in it).
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str, test: &str) -> Netns {
        let name = format!("kwcni-{role}-{}-{test}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn can_run() -> bool {
    if !kubewire_lab::harness::require_root() {
        return false;
    }
    if !Path::new(PLUGIN_DIR).join("bridge").is_file() {
        kubewire_lab::harness::skip(&format!(
            "no CNI plugins in {PLUGIN_DIR} (apt: containernetworking-plugins)"
        ));
        return false;
    }
    true
}

/// `kubewire cni plan` for `node` of examples/cni, with host-local's leases in `data_dir`.
fn plan(node: &str, data_dir: &Path) -> Value {
    let output = Command::new(kubewire_lab::binaries::agent().expect("the kubewire binary"))
        .args(["cni", "plan", "--manifests"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cni"))
        .args(["--node", node, "--cni-ipam-data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cni plan: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

struct Setup {
    node: Netns,
    pod: Netns,
    data_dir: tempfile::TempDir,
    runner: PluginRunner,
    conflist: Value,
    attachment: Attachment,
}

fn setup(node_name: &str, test: &str) -> Setup {
    let node = Netns::new("n", test);
    let pod = Netns::new("p", test);
    let data_dir = tempfile::tempdir().unwrap();
    let conflist = plan(node_name, data_dir.path());
    let runner = PluginRunner {
        plugin_dirs: vec![PathBuf::from(PLUGIN_DIR)],
        node_netns: Some(node.name.clone()),
    };
    let attachment = Attachment {
        container_id: format!("kwcni-{}-{test}", std::process::id()),
        netns: pod.path(),
        ifname: "eth0".into(),
        ..Default::default()
    };
    Setup {
        node,
        pod,
        data_dir,
        runner,
        conflist,
        attachment,
    }
}

/// The global addresses of `ifname` in `netns`, from `ip -j addr`.
fn addresses(netns: &Netns, ifname: &str) -> Vec<IpNet> {
    let json: Value =
        serde_json::from_str(&netns.ip(&["-j", "addr", "show", "dev", ifname])).unwrap();
    json[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| {
            format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"])
                .parse()
                .unwrap()
        })
        .collect()
}

fn link_exists(netns: &Netns, ifname: &str) -> bool {
    Command::new("ip")
        .args(["-n", &netns.name, "link", "show", "dev", ifname])
        .output()
        .unwrap()
        .status
        .success()
}

/// A TCP connection from the pod to a listener on the node's gateway address (real
/// packets across the veth and kube-bridge). Retries while IPv6 DAD settles.
fn pod_reaches_node(setup: &Setup, gateway: IpAddr) {
    let listener = setup.node.within(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(SocketAddr::new(gateway, 0)) {
                Ok(listener) => return listener,
                Err(err) if Instant::now() < deadline => {
                    eprintln!("bind {gateway}: {err}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => panic!("bind {gateway}: {err}"),
            }
        }
    });
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().unwrap();
        stream.write_all(b"node").unwrap();
        peer.ip()
    });
    let reply = setup.pod.within(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
                Ok(mut stream) => {
                    let mut reply = String::new();
                    stream.read_to_string(&mut reply).unwrap();
                    return reply;
                }
                Err(err) if Instant::now() < deadline => {
                    eprintln!("connect {address}: {err}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(err) => panic!("connect {address}: {err}"),
            }
        }
    });
    assert_eq!(reply, "node");
    let peer = server.join().unwrap();
    assert_ne!(peer, gateway, "the connection came from the pod's address");
}

fn lease_files(data_dir: &Path) -> Vec<String> {
    let dir = data_dir.join("kubewire");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect();
    names.sort();
    names
}

/// ADD, check the pod's addresses, reachability and leases, DEL, check it is gone.
fn wire_and_unwire(setup: &Setup, cidrs: &[&str]) -> CniResult {
    let cidrs: Vec<IpNet> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
    let result = setup
        .runner
        .add(&setup.conflist, &setup.attachment)
        .unwrap();

    let pod_ips = result.pod_ips();
    assert_eq!(pod_ips.len(), cidrs.len(), "{:?}", result.raw);
    for cidr in &cidrs {
        let gateway = kubewire::node::gateway(*cidr).unwrap();
        let ip = *pod_ips
            .iter()
            .find(|ip| cidr.contains(*ip))
            .unwrap_or_else(|| panic!("no address from {cidr} in {pod_ips:?}"));
        assert_ne!(ip, gateway);
        assert!(
            addresses(&setup.pod, "eth0").contains(&IpNet::new(ip, cidr.prefix_len()).unwrap()),
            "{ip} on eth0"
        );
        assert!(
            addresses(&setup.node, "kube-bridge")
                .contains(&IpNet::new(gateway, cidr.prefix_len()).unwrap()),
            "gateway {gateway} on kube-bridge"
        );
        let family = if ip.is_ipv4() { "-4" } else { "-6" };
        let routes = setup.pod.ip(&[family, "route", "show", "default"]);
        assert!(
            routes.contains(&format!("via {gateway} dev eth0")),
            "{routes}"
        );
        pod_reaches_node(setup, gateway);
    }
    let mut expected_leases: Vec<String> = pod_ips.iter().map(ToString::to_string).collect();
    expected_leases.sort();
    assert_eq!(lease_files(setup.data_dir.path()), expected_leases);
    let link = setup.pod.ip(&["link", "show", "dev", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    let lo = setup.pod.ip(&["link", "show", "dev", "lo"]);
    assert!(lo.contains("UP"), "loopback brought up: {lo}");

    setup
        .runner
        .del(&setup.conflist, &setup.attachment, Some(&result))
        .unwrap();
    assert!(!link_exists(&setup.pod, "eth0"), "eth0 removed by DEL");
    assert_eq!(lease_files(setup.data_dir.path()), Vec::<String>::new());
    result
}

#[test]
fn single_stack_pod_is_wired_from_the_nodes_cidr() {
    if !can_run() {
        return;
    }
    let setup = setup("n1", "v4");
    let result = wire_and_unwire(&setup, &["10.244.1.0/24"]);
    assert_eq!(
        result
            .interfaces
            .iter()
            .filter(|i| i.name == "eth0")
            .count(),
        1
    );
}

#[test]
fn dual_stack_pod_gets_one_address_per_family() {
    if !can_run() {
        return;
    }
    let setup = setup("n2", "ds");
    wire_and_unwire(&setup, &["10.244.2.0/24", "fd00:10:244:2::/64"]);
}

#[test]
fn static_ip_from_cni_args_and_failed_add_leaves_nothing_behind() {
    if !can_run() {
        return;
    }
    let mut setup = setup("n1", "st");
    setup.attachment.cni_args = vec![("IP".into(), "10.244.1.77".into())];
    let result = setup
        .runner
        .add(&setup.conflist, &setup.attachment)
        .unwrap();
    assert_eq!(result.pod_ips(), ["10.244.1.77".parse::<IpAddr>().unwrap()]);
    setup
        .runner
        .del(&setup.conflist, &setup.attachment, Some(&result))
        .unwrap();

    setup.attachment.cni_args = vec![("IP".into(), "10.9.9.9".into())];
    let err = setup
        .runner
        .add(&setup.conflist, &setup.attachment)
        .unwrap_err();
    assert!(
        matches!(&err, CniExecError::PluginFailed { plugin, position: 1, .. } if plugin == "bridge"),
        "{err}"
    );
    assert!(err.to_string().contains("10.9.9.9"), "{err}");
    assert!(!link_exists(&setup.pod, "eth0"));
    let veths = setup.node.ip(&["-o", "link", "show", "type", "veth"]);
    assert!(veths.trim().is_empty(), "no veth left: {veths}");
    assert_eq!(lease_files(setup.data_dir.path()), Vec::<String>::new());
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    agent: kubewire::agent::AgentArgs,
}

/// The controller's sync, inside a node namespace: the MTU is read from the interface
/// that carries the Node's InternalIP in *that* namespace, minus the VXLAN overhead.
#[test]
fn controller_sync_takes_the_mtu_of_the_node_interface() {
    if !can_run() {
        return;
    }
    let node = Netns::new("n", "mtu");
    // A veth pair stands in for the uplink (this kernel may lack the dummy driver).
    node.ip(&[
        "link", "add", "kwul0", "mtu", "9000", "type", "veth", "peer", "name", "kwul1",
    ]);
    node.ip(&["addr", "add", "192.0.2.11/24", "dev", "kwul0"]);
    node.ip(&["link", "set", "kwul0", "up"]);
    let conf_dir = tempfile::tempdir().unwrap();
    let args = Flags::parse_from([
        "kubewire",
        "--cni-conf-dir",
        conf_dir.path().to_str().unwrap(),
    ])
    .agent;
    let manifests = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cni"));
    let snapshot = kubewire::cache::manifests::load_snapshot(&manifests).unwrap();
    let (found, outcome) = node.within(move || {
        let found =
            kubewire::cni::link::link_mtu_for_address("192.0.2.11".parse().unwrap()).unwrap();
        let config = args.cni.config(&args.network.config());
        (
            found,
            kubewire::cni::sync(&snapshot, "n1", &config).unwrap(),
        )
    });
    assert_eq!(found, ("kwul0".to_string(), 9000));
    assert_eq!(outcome, kubewire::cni::apply::WriteOutcome::Written);
    let written: Value = serde_json::from_slice(
        &std::fs::read(conf_dir.path().join("05-kubewire.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(written["plugins"][0]["mtu"], 8950);
}

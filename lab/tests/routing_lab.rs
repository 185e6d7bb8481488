//! The routing controller as the agent runs it (root): labs whose agents watch the
//! lab's API server.
//! - Dual-stack pod networking across nodes (examples/routing/three-nodes.yaml: n1 and
//!   n2 share a subnet, n3 is behind the fabric router; two pods on each node): every
//!   pod reaches every other over IPv4 and IPv6 keeping its source address, directly
//!   inside a subnet and over VXLAN across (`--overlay-type subnet`, the default), all
//!   over VXLAN (`full`), or only inside a subnet (`none`: across, the fabric router
//!   must know the pod CIDRs — given them, the pairs work); pods reach the external
//!   netns masqueraded to their node's address.
//! - Nodes added and deleted through the API move routes and VXLAN entries on every
//!   other node; a route deleted by hand comes back with the periodic drift check.
//!
//! Times are printed, not asserted.

mod common;
mod lab_support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{kubewire, our_routes, sh, success, temp_dir};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kubewire_lab::probe::{self, EXTERNAL, Probe, Reply};
use kubewire_lab::topology::{EXTERNAL_PORTS, LabPlan, Protocol};
use lab_support::TestLab;

/// `lab up` from `manifests` with `agent_args`; prints how long it took.
fn lab_up(manifests: &Path, agent_args: &[&str]) -> TestLab {
    let started = Instant::now();
    let lab = TestLab::up_from("r", manifests, agent_args);
    println!(
        "lab up ({}): {:.2} s",
        if agent_args.is_empty() {
            "default agent flags".to_string()
        } else {
            agent_args.join(" ")
        },
        started.elapsed().as_secs_f64()
    );
    lab
}

/// kubewire's routes on `node`, one a line.
fn routes_on(lab: &TestLab, node: &str) -> String {
    our_routes(&lab.node_netns(node)).join("\n")
}

/// The VXLAN device's forwarding entries on `node`.
fn fdb(lab: &TestLab, node: &str) -> String {
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &lab.node_netns(node),
            "bridge",
            "fdb",
            "show",
            "dev",
            "kubewire-vx",
        ],
    )
}

/// Polls `check` every 20 ms for up to 15 s; returns how long it took.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    println!("{what}: {:.0} ms", took.as_secs_f64() * 1000.0);
    took
}

const POD_PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(1);

/// examples/routing/three-nodes.yaml (dual-stack; n3's pod CIDRs come from the
/// `kubewire.io/pod-cidrs` annotation) and two pods on each node, labelled `app: a`
/// and `app: b`, with their addresses given (so offline verbs see them too): `a`'s
/// primary address is IPv4, `b`'s IPv6.
fn dual_stack_manifests() -> tempfile::TempDir {
    let dir = temp_dir();
    let nodes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/routing/three-nodes.yaml");
    std::fs::copy(&nodes, dir.path().join("nodes.yaml")).unwrap();
    let mut pods = String::new();
    for n in 1..=3 {
        for (pod, host) in [("a", 10), ("b", 11)] {
            let v4 = format!("10.244.{n}.{host}");
            let v6 = format!("fd00:10:244:{n}::{host}");
            let (first, second) = if pod == "a" { (v4, v6) } else { (v6, v4) };
            pods += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: n{n}{pod}, namespace: default, labels: {{app: {pod}}}}}\n\
                 spec: {{nodeName: n{n}, containers: [{{name: c, ports: [{{containerPort: {POD_PORT}}}]}}]}}\n\
                 status: {{podIP: '{first}', podIPs: [{{ip: '{first}'}}, {{ip: '{second}'}}]}}\n---\n"
            );
        }
    }
    std::fs::write(dir.path().join("pods.yaml"), pods).unwrap();
    dir
}

/// The routes each node should own, as `our_routes` prints them: `direct` pairs of
/// nodes route to each other over eth0, every other pair over kubewire-vx, and none
/// at all when `vxlan` is false.
fn expected_routes(
    plan: &LabPlan,
    node: &str,
    direct: &[(&str, &str)],
    vxlan: bool,
) -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    for peer in plan.nodes.iter().filter(|n| n.name != node) {
        let is_direct = direct.iter().any(|(a, b)| {
            (*a, *b) == (node, peer.name.as_str()) || (*b, *a) == (node, peer.name.as_str())
        });
        for cidr in &peer.pod_cidrs {
            if is_direct {
                let via = family_address(&peer.addresses(), cidr.addr());
                routes.insert(format!("{cidr} via {via} dev eth0"));
            } else if vxlan {
                routes.insert(format!(
                    "{cidr} via {} dev kubewire-vx onlink",
                    cidr.network()
                ));
            }
        }
    }
    routes
}

fn family_address(addresses: &[IpAddr], like: IpAddr) -> IpAddr {
    *addresses
        .iter()
        .find(|a| a.is_ipv4() == like.is_ipv4())
        .unwrap_or_else(|| panic!("no address like {like} in {addresses:?}"))
}

fn assert_routes(lab: &TestLab, plan: &LabPlan, direct: &[(&str, &str)], vxlan: bool) {
    for node in &plan.nodes {
        let got: BTreeSet<String> = our_routes(&node.netns).into_iter().collect();
        assert_eq!(
            got,
            expected_routes(plan, &node.name, direct, vxlan),
            "routes on {} (lab {})",
            node.name,
            lab.name
        );
    }
}

/// One connection and what came of it.
struct Outcome {
    from: String,
    to: SocketAddr,
    protocol: Protocol,
    reply: Option<Reply>,
}

/// Sends every probe at once, each from `from`'s netns (a pod's `namespace/name`).
async fn send_all(plan: &LabPlan, probes: Vec<(String, SocketAddr, Protocol)>) -> Vec<Outcome> {
    let started = Instant::now();
    let count = probes.len();
    let outcomes =
        futures::future::join_all(probes.into_iter().map(|(from, to, protocol)| async move {
            let probe = Probe {
                netns: probe::source_netns(plan, &from).unwrap().to_string(),
                from: from.clone(),
                to,
                protocol,
            };
            let reply = probe::ask(&probe, TIMEOUT).await;
            Outcome {
                from,
                to,
                protocol,
                reply,
            }
        }))
        .await;
    println!(
        "{count} connections: {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    outcomes
}

/// Every pod connects to every other pod at each of its addresses (IPv4 and IPv6).
/// Returns the pairs of nodes (from, to) whose pods could not connect; panics when a
/// connection reached the wrong pod or arrived with another source than the
/// sender's own address of that family (pod-to-pod traffic is never masqueraded).
async fn pod_to_pod(plan: &LabPlan) -> BTreeSet<(String, String, &'static str)> {
    let mut probes = Vec::new();
    for from in &plan.pods {
        for to in plan.pods.iter().filter(|p| p.key() != from.key()) {
            for ip in &to.ips {
                probes.push((from.key(), SocketAddr::new(*ip, POD_PORT), Protocol::Tcp));
            }
        }
    }
    assert_eq!(probes.len(), 6 * 5 * 2, "6 dual-stack pods");
    for pod in &plan.pods {
        let primary_v4 = pod.name.ends_with('a');
        assert_eq!(pod.ips.len(), 2, "{}: {:?}", pod.key(), pod.ips);
        assert_eq!(
            pod.ips[0].is_ipv4(),
            primary_v4,
            "{}: {:?}",
            pod.key(),
            pod.ips
        );
    }
    let mut failed = BTreeSet::new();
    let mut wrong = Vec::new();
    for outcome in send_all(plan, probes).await {
        let from = plan.pod(&outcome.from).unwrap();
        let to = plan
            .pods
            .iter()
            .find(|p| p.ips.contains(&outcome.to.ip()))
            .unwrap();
        let family = if outcome.to.is_ipv4() { "IPv4" } else { "IPv6" };
        match &outcome.reply {
            None => {
                failed.insert((from.node.clone(), to.node.clone(), family));
            }
            Some(reply) => {
                let source = family_address(&from.ips, outcome.to.ip());
                if reply.who != to.key() || reply.peer != Some(source) {
                    wrong.push(format!(
                        "{} -> {}: answered by {} seeing {:?} (want {} seeing {source})",
                        outcome.from,
                        outcome.to,
                        reply.who,
                        reply.peer,
                        to.key()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    failed
}

/// Each node pair in both directions, for both families.
fn pairs(nodes: &[(&str, &str)]) -> BTreeSet<(String, String, &'static str)> {
    let mut set = BTreeSet::new();
    for (a, b) in nodes {
        for family in ["IPv4", "IPv6"] {
            set.insert((a.to_string(), b.to_string(), family));
            set.insert((b.to_string(), a.to_string(), family));
        }
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_reach_pods_directly_in_a_subnet_and_over_vxlan_across() {
    let manifests = dual_stack_manifests();
    // Every controller the agent runs by default (the firewall has no policies here).
    let lab = lab_up(manifests.path(), &[]);
    let plan = lab.plan();
    // n1 and n2 share 192.168.1.0/24 and fd00:1::/64: direct routes over eth0, no
    // tunnel; n3 is behind the fabric router: VXLAN, for IPv6 pod CIDRs too.
    assert_routes(&lab, &plan, &[("n1", "n2")], true);
    let failed = pod_to_pod(&plan).await;
    assert!(failed.is_empty(), "pairs that failed: {failed:?}");

    // Out of the cluster: the external netns sees each pod's node address, of the
    // family the pod used, over TCP and UDP (egress masquerade).
    let mut probes = Vec::new();
    for pod in &plan.pods {
        for address in plan.external.addresses() {
            for port in EXTERNAL_PORTS {
                probes.push((
                    pod.key(),
                    SocketAddr::new(address, port.port),
                    port.protocol,
                ));
            }
        }
    }
    let mut wrong = Vec::new();
    for outcome in send_all(&plan, probes).await {
        let node = plan.node(&plan.pod(&outcome.from).unwrap().node).unwrap();
        let want = family_address(&node.addresses(), outcome.to.ip());
        let got = outcome.reply.as_ref().map(|r| (r.who.as_str(), r.peer));
        if got != Some((EXTERNAL, Some(want))) {
            wrong.push(format!(
                "{} -> {} {}: {got:?}, want {EXTERNAL} seeing {want}",
                outcome.from,
                outcome.to,
                outcome.protocol.as_str()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_full_carries_every_pair_over_vxlan() {
    let manifests = dual_stack_manifests();
    let lab = lab_up(
        manifests.path(),
        &[
            "--agent-arg=--overlay-type=full",
            "--agent-arg=--run-firewall=false",
        ],
    );
    let plan = lab.plan();
    assert_routes(&lab, &plan, &[], true);
    let failed = pod_to_pod(&plan).await;
    assert!(failed.is_empty(), "pairs that failed: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_none_needs_the_underlay_to_route_pod_cidrs() {
    let manifests = dual_stack_manifests();
    let lab = lab_up(
        manifests.path(),
        &[
            "--agent-arg=--overlay-type=none",
            "--agent-arg=--run-firewall=false",
        ],
    );
    let plan = lab.plan();
    // Direct routes inside the subnet, nothing towards n3 and no tunnel at all.
    assert_routes(&lab, &plan, &[("n1", "n2")], false);
    for node in &plan.nodes {
        let links = sh("ip", &["-n", &node.netns, "-o", "link", "show"]);
        assert!(!links.contains("kubewire-vx"), "{}: {links}", node.name);
    }
    let failed = pod_to_pod(&plan).await;
    assert_eq!(
        failed,
        pairs(&[("n1", "n3"), ("n2", "n3")]),
        "with --overlay-type=none exactly the cross-subnet pairs fail"
    );

    // They fail only because the fabric router has no pod routes: the underlay's
    // routers must know the pod CIDRs (BGP's job). Give the fabric a route to each
    // node's pod CIDRs, and every pair works, keeping its source address.
    let mut routes = Vec::new();
    for node in &plan.nodes {
        for cidr in &node.pod_cidrs {
            let via = family_address(&node.addresses(), cidr.addr());
            routes.push(format!("route add {cidr} via {via}"));
        }
    }
    kubewire_lab::netns::batch(&plan.fabric_netns, &routes).unwrap();
    let failed = pod_to_pod(&plan).await;
    assert!(
        failed.is_empty(),
        "with pod-CIDR routes in the fabric, these pairs still failed: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_nodes_through_the_api_and_drift_is_repaired() {
    let manifests = temp_dir();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/nodes.yaml");
    std::fs::copy(&demo, manifests.path().join("nodes.yaml")).unwrap();
    let lab = TestLab::up_from(
        "r",
        manifests.path(),
        &[
            "--agent-arg=--run-firewall=false",
            "--agent-arg=--sync-period=1s",
        ],
    );

    // n1 and n2 share 192.168.50.0/24; n3 is behind the fabric router.
    wait_for("n1 has its routes", || {
        let routes = routes_on(&lab, "n1");
        routes.contains("10.244.2.0/24 via 192.168.50.12 dev eth0")
            && routes.contains("10.244.3.0/24 via 10.244.3.0 dev kubewire-vx")
    });
    let n3_mac = "06:6b:c0:a8:3c:0d"; // derived from 192.168.60.13
    assert!(fdb(&lab, "n1").contains(n3_mac), "{}", fdb(&lab, "n1"));

    // Drift: a route deleted by hand is back after the next periodic check.
    sh(
        "ip",
        &["-n", &lab.node_netns("n1"), "route", "del", "10.244.2.0/24"],
    );
    wait_for("a deleted route is re-installed", || {
        routes_on(&lab, "n1").contains("10.244.2.0/24 via 192.168.50.12")
    });

    let kubeconfig = success(lab.run("kubeconfig", &[]), "lab kubeconfig");
    let client = kubewire::agent::client_from_kubeconfig(Path::new(kubeconfig.trim()))
        .await
        .expect("client");
    let nodes: Api<Node> = Api::all(client);

    // A new Node on n1's subnet: a direct route on n1, a VXLAN route on n3.
    let n4: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n4"},
        "spec": {"podCIDRs": ["10.244.4.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.14"}]}
    }))
    .unwrap();
    nodes
        .create(&PostParams::default(), &n4)
        .await
        .expect("create n4");
    wait_for("a new Node is routed on n1 and n3", || {
        routes_on(&lab, "n1").contains("10.244.4.0/24 via 192.168.50.14 dev eth0")
            && routes_on(&lab, "n3").contains("10.244.4.0/24 via 10.244.4.0 dev kubewire-vx")
    });

    // Deleting n3 takes its routes and its FDB entry off n1 and n2.
    nodes
        .delete("n3", &DeleteParams::default())
        .await
        .expect("delete n3");
    wait_for("a deleted Node's routes and FDB entries are gone", || {
        ["n1", "n2"].iter().all(|n| {
            !routes_on(&lab, n).contains("10.244.3.0/24") && !fdb(&lab, n).contains(n3_mac)
        })
    });

    // The controller's own metrics, as the agent serves them.
    let (code, metrics) = kubewire_lab::agents::http_get(
        &lab.node_netns("n1"),
        kubewire_lab::agents::METRICS_ADDR,
        "/metrics",
    )
    .await
    .expect("metrics");
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    // 2 at start, 1 repaired, 1 for n4; 2 removed with n3 (IPv4 only in the demo).
    assert!(
        value("kubewire_routing_routes_installed_total") >= 4.0,
        "{metrics}"
    );
    assert!(
        value("kubewire_routing_routes_removed_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(value("kubewire_routing_routes"), 2.0, "{metrics}");
}

/// `lab probe` and `firewall matrix` agree on a dual-stack cluster: both address a
/// pair at the destination's primary address from the source's address of that
/// family. The policy lets into the `b` pods (primary IPv6) only IPv6 from n1's pods
/// and IPv4 from n2's — so from n2's pods, which reach `b` over IPv6, it is denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_probe_measures_what_firewall_matrix_predicts() {
    let manifests = dual_stack_manifests();
    std::fs::write(
        manifests.path().join("policy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b, namespace: default}\n\
         spec:\n  podSelector: {matchLabels: {app: b}}\n  ingress: [{from: [{ipBlock: {cidr: 'fd00:10:244:1::/64'}}, {ipBlock: {cidr: '10.244.2.0/24'}}]}]\n",
    )
    .unwrap();
    let path = manifests.path().to_str().unwrap();
    let predicted = success(
        kubewire(&[
            "firewall",
            "matrix",
            "--manifests",
            path,
            "--format",
            "json",
        ]),
        "firewall matrix",
    );
    let lab = lab_up(manifests.path(), &[]);
    let measured = success(lab.run("probe", &["--format", "json"]), "lab probe");
    let results = |json: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(json).unwrap()["results"].clone()
    };
    assert_eq!(results(&measured), results(&predicted));
    let allowed = |from: &str, to: &str| {
        results(&measured)
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["from"] == from && r["to"] == to && r["allowed"] == true)
    };
    assert!(
        allowed("default/n1a", "default/n3b"),
        "IPv6 from n1: allowed"
    );
    assert!(
        !allowed("default/n2a", "default/n3b"),
        "IPv6 from n2: denied"
    );
    assert!(allowed("default/n2a", "default/n3a"), "a is open");
}

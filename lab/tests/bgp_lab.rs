//! BGP mode in the lab (root, bird2): three dual-stack nodes on two subnets
//! (examples/routing/three-nodes.yaml), each Node annotated with
//! `kube-router.io/peer.ips`/`peer.asns` pointing at its subnet's fabric gateway,
//! agents run with `--run-bgp --cluster-asn --advertise-loadbalancer-ip` and
//! `--overlay-type=none`, and a BIRD 2 in the fabric netns that puts the pod CIDRs
//! it learns into the fabric's kernel.
//!
//! Checked: BIRD learns every node's pod CIDRs (IPv4 and IPv6) with that node as
//! next hop and the LoadBalancer IP from every node; every node has its iBGP mesh
//! sessions up and accepted the other nodes' pod CIDRs over them (`kubewire routing
//! peers`); pods on all three nodes reach each other across the subnets without a
//! tunnel (the fabric routes what BGP taught it); a route BIRD announces is
//! installed with proto 44 and removed when withdrawn, while the default route it
//! also announces is refused.

mod common;
mod lab_support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{our_routes, sh, success, temp_dir};
use kubewire_lab::bird::{Bird, missing_prerequisite};
use kubewire_lab::probe::{self, Probe, Reply};
use kubewire_lab::topology::{LabPlan, Protocol};
use lab_support::TestLab;

const CLUSTER_AS: u32 = 64512;
const FABRIC_AS: u32 = 65000;
const LB_IP: &str = "203.0.113.10";
const POD_PORT: u16 = 8080;

/// Polls `check` every 100 ms for up to `limit`; prints how long it took.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        match check() {
            Ok(()) => break,
            Err(why) => assert!(
                started.elapsed() < limit,
                "timed out waiting until {what}: {why}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{what}: {:.1} s", started.elapsed().as_secs_f64());
}

/// The three nodes, each annotated to peer with its subnet's gateway, a
/// LoadBalancer Service, and two pods per node.
fn manifests() -> tempfile::TempDir {
    let dir = temp_dir();
    let nodes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/routing/three-nodes.yaml");
    let mut text = std::fs::read_to_string(nodes).unwrap();
    // n1, n2 on 192.168.1.0/24 (gateway .1), n3 on 192.168.2.0/24 (gateway .1).
    for (node, gateway) in [
        ("n1", "192.168.1.1"),
        ("n2", "192.168.1.1"),
        ("n3", "192.168.2.1"),
    ] {
        let annotations = format!(
            "    kube-router.io/peer.ips: \"{gateway}\"\n    kube-router.io/peer.asns: \"{FABRIC_AS}\"\n"
        );
        let header = format!("  name: {node}\n");
        let with = if text.contains(&format!("{header}  annotations:\n")) {
            text.replace(
                &format!("{header}  annotations:\n"),
                &format!("{header}  annotations:\n{annotations}"),
            )
        } else {
            text.replace(&header, &format!("{header}  annotations:\n{annotations}"))
        };
        text = with;
    }
    std::fs::write(dir.path().join("nodes.yaml"), text).unwrap();
    let mut objects = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{type: LoadBalancer, clusterIP: 10.96.0.50, clusterIPs: [10.96.0.50], ports: [{{port: 80}}]}}\n\
         status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}\n---\n"
    );
    for n in 1..=3 {
        for (pod, host) in [("a", 10), ("b", 11)] {
            objects += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: n{n}{pod}, namespace: default, labels: {{app: {pod}}}}}\n\
                 spec: {{nodeName: n{n}, containers: [{{name: c, ports: [{{containerPort: {POD_PORT}}}]}}]}}\n\
                 status: {{podIP: '10.244.{n}.{host}', podIPs: [{{ip: '10.244.{n}.{host}'}}, {{ip: 'fd00:10:244:{n}::{host}'}}]}}\n---\n"
            );
        }
    }
    std::fs::write(dir.path().join("objects.yaml"), objects).unwrap();
    dir
}

/// BIRD in the fabric: one eBGP session per node from its subnet's gateway, the
/// pod CIDRs it learns into the fabric's kernel, and a static route and a default
/// route offered to the nodes (the default must be refused).
fn bird_config(plan: &LabPlan, graceful_restart: bool) -> String {
    let gr = if graceful_restart {
        "graceful restart on;\n  graceful restart time 60;"
    } else {
        ""
    };
    let mut config = format!(
        r#"router id 192.168.1.1;
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ import none; export where net ~ [ 10.244.0.0/16+ ]; }}; }}
protocol kernel k6 {{ ipv6 {{ import none; export where net ~ [ fd00:10:244::/48+ ]; }}; }}
protocol static offered {{ ipv4; route 198.51.100.0/24 blackhole; route 0.0.0.0/0 blackhole; }}
protocol static offered2 {{ ipv4; route 198.51.102.0/24 blackhole; }}
template bgp node {{
  local as {FABRIC_AS};
  hold time 9;
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 4;
  {gr}
  ipv4 {{ import all; export where source = RTS_STATIC; }};
  ipv6 {{ import all; export none; }};
}}
"#
    );
    for node in &plan.nodes {
        let v4 = node.addresses().into_iter().find(IpAddr::is_ipv4).unwrap();
        let gateway = plan.gateway_of(node);
        config += &format!(
            "protocol bgp {} from node {{ neighbor {v4} as {CLUSTER_AS}; source address {gateway}; }}\n",
            node.name
        );
    }
    config
}

/// `kubewire routing peers --format json` inside a node.
fn peers(node_netns: &str) -> Vec<serde_json::Value> {
    let exe = common::kubewire_bin();
    let out = Command::new("ip")
        .args(["netns", "exec", node_netns])
        .arg(exe)
        .args(["routing", "peers", "--format", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

async fn pod_to_pod(plan: &LabPlan) -> Vec<String> {
    let mut probes = vec![];
    for from in &plan.pods {
        for to in plan.pods.iter().filter(|p| p.key() != from.key()) {
            for ip in &to.ips {
                probes.push((from.key(), to.key(), SocketAddr::new(*ip, POD_PORT)));
            }
        }
    }
    let outcomes =
        futures::future::join_all(probes.into_iter().map(|(from, to, addr)| async move {
            let probe = Probe {
                netns: probe::source_netns(plan, &from).unwrap().to_string(),
                from: from.clone(),
                to: addr,
                protocol: Protocol::Tcp,
            };
            let reply: Option<Reply> = probe::ask(&probe, Duration::from_secs(1)).await;
            (from, to, addr, reply)
        }))
        .await;
    outcomes
        .into_iter()
        .filter(|(_, to, _, reply)| reply.as_ref().is_none_or(|r| r.who != *to))
        .map(|(from, to, addr, reply)| format!("{from} -> {to} at {addr}: {reply:?}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabric_bird_learns_pod_cidrs_and_lb_ips_and_pods_reach_across_subnets() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    let manifests = manifests();
    let lab = TestLab::up_from(
        "b",
        manifests.path(),
        &[
            "--agent-arg=--run-bgp=true",
            &format!("--agent-arg=--cluster-asn={CLUSTER_AS}"),
            "--agent-arg=--advertise-loadbalancer-ip=true",
            "--agent-arg=--overlay-type=none",
            "--agent-arg=--run-firewall=false",
            "--agent-arg=--bgp-holdtime=9s",
        ],
    );
    let plan = lab.plan();
    let bird = Bird::start(&plan.fabric_netns, &bird_config(&plan, false));

    // BIRD learns each node's pod CIDRs from that node, and the LB IP from all.
    wait_for(
        "BIRD learned every pod CIDR and the LB IP",
        Duration::from_secs(30),
        || {
            for node in &plan.nodes {
                for cidr in &node.pod_cidrs {
                    let want = node
                        .addresses()
                        .into_iter()
                        .find(|a| a.is_ipv4() == cidr.addr().is_ipv4())
                        .unwrap();
                    let out =
                        bird.birdc(&["show", "route", &cidr.to_string(), "protocol", &node.name]);
                    if !out.contains(&format!("via {want}")) {
                        return Err(format!("{cidr} via {want} from {}: {out}", node.name));
                    }
                }
            }
            let out = bird.birdc(&["show", "route", &format!("{LB_IP}/32")]);
            let paths = out
                .lines()
                .filter(|l| l.trim_start().starts_with("via "))
                .count();
            if paths != plan.nodes.len() {
                return Err(format!("{LB_IP}: {paths} paths: {out}"));
            }
            Ok(())
        },
    );
    // BIRD knows only what the nodes announce: not their other pods' routes
    // learned over the mesh (AS-path), nor the ClusterIP (not advertised).
    let clusterip = bird.birdc(&["show", "route", "10.96.0.50/32"]);
    assert!(!clusterip.contains("via "), "{clusterip}");

    // The iBGP mesh: each node has both other nodes established and accepted
    // their two pod CIDRs each; the fabric session is up too.
    wait_for(
        "every node's mesh and fabric sessions are up",
        Duration::from_secs(30),
        || {
            for node in &plan.nodes {
                let list = peers(&node.netns);
                let mesh: Vec<_> = list.iter().filter(|p| p["kind"] == "mesh").collect();
                let fabric: Vec<_> = list.iter().filter(|p| p["kind"] == "annotation").collect();
                let ok = mesh.len() == 2
                    && fabric.len() == 1
                    && list.iter().all(|p| p["state"] == "Established")
                    && mesh.iter().all(|p| {
                        p["prefixes_accepted"].as_u64() >= Some(2)
                            && p["prefixes_advertised"].as_u64() >= Some(3)
                    });
                if !ok {
                    return Err(format!(
                        "{}: {list:#?}\n{}",
                        node.name,
                        lab.agent_log(&node.name)
                    ));
                }
            }
            Ok(())
        },
    );

    // The same through /metrics (refreshed every 5 s).
    let n1_netns = plan.node("n1").unwrap().netns.clone();
    wait_for("n1's BGP metrics", Duration::from_secs(15), || {
        let text = kubewire_lab::harness::run_in(&n1_netns, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(kubewire::routing::bgp_controller::status::fetch(
                    "127.0.0.1:20245".parse().unwrap(),
                    "/metrics",
                ))
        })
        .map_err(|e| format!("{e:#}"))?;
        let want = [
            "kubewire_bgp_peer_up{peer=\"192.168.1.1\"} 1",
            "kubewire_bgp_peer_up{peer=\"192.168.2.13\"} 1",
            "kubewire_bgp_prefixes{peer=\"192.168.1.12\",direction=\"accepted\"}",
            "kubewire_bgp_updates_received_total{peer=\"192.168.1.12\"}",
            "kubewire_bgp_announced_prefixes 3",
        ];
        match want.iter().find(|w| !text.contains(*w)) {
            None => Ok(()),
            Some(missing) => Err(format!("no {missing} in:\n{text}")),
        }
    });

    // The fabric routes pod CIDRs only because BGP taught it: pods everywhere
    // reach each other, across subnets with no tunnel.
    let fabric_routes = sh(
        "ip",
        &["-n", &plan.fabric_netns, "route", "show", "proto", "bird"],
    );
    assert!(
        fabric_routes.contains("10.244.3.0/24 via 192.168.2.13"),
        "{fabric_routes}"
    );
    let failed = pod_to_pod(&plan).await;
    assert!(
        failed.is_empty(),
        "pod connections that failed:\n{}",
        failed.join("\n")
    );

    // BIRD's static route is installed on every node with our proto, its default
    // route is refused; withdrawn, the route goes.
    let has = |netns: &str, what: &str| our_routes(netns).iter().any(|r| r.starts_with(what));
    wait_for(
        "every node installed BIRD's route",
        Duration::from_secs(15),
        || {
            for node in &plan.nodes {
                let gateway = plan.gateway_of(node);
                if !has(&node.netns, &format!("198.51.100.0/24 via {gateway}")) {
                    return Err(format!("{}: {:?}", node.name, our_routes(&node.netns)));
                }
                if has(&node.netns, "default") || has(&node.netns, "0.0.0.0/0") {
                    return Err(format!("{} installed the default route", node.name));
                }
            }
            Ok(())
        },
    );
    bird.birdc(&["disable", "offered"]);
    wait_for(
        "the withdrawn route left every node",
        Duration::from_secs(15),
        || {
            let left: BTreeSet<&str> = plan
                .nodes
                .iter()
                .filter(|n| has(&n.netns, "198.51.100.0/24"))
                .map(|n| n.name.as_str())
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );

    // Annotations are read live: n1 gets communities and the fabric sees them on
    // its routes; the Service opts out of LB announcement and BIRD loses the IP.
    let kubeconfig = success(lab.run("kubeconfig", &[]), "lab kubeconfig");
    let client = kubewire::agent::client_from_kubeconfig(Path::new(kubeconfig.trim()))
        .await
        .expect("client");
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"annotations": {
        "kube-router.io/node.bgp.communities": "64512:100"}}});
    nodes
        .patch(
            "n1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("annotating n1");
    wait_for(
        "BIRD sees n1's new community",
        Duration::from_secs(15),
        || {
            let out = bird.birdc(&["show", "route", "10.244.1.0/24", "protocol", "n1", "all"]);
            if out.contains("(64512,100)") {
                Ok(())
            } else {
                Err(out)
            }
        },
    );
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client, "default");
    let patch = serde_json::json!({"metadata": {"annotations": {
        "kube-router.io/service.advertise.loadbalancerip": "false"}}});
    services
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("annotating the Service");
    wait_for(
        "BIRD lost the opted-out LB IP",
        Duration::from_secs(15),
        || {
            let out = bird.birdc(&["show", "route", &format!("{LB_IP}/32")]);
            if out.contains("via ") {
                Err(out)
            } else {
                Ok(())
            }
        },
    );
}

/// Whether BIRD has `prefix` from `protocol`.
fn bird_has(bird: &Bird, prefix: &str, protocol: &str) -> bool {
    bird.birdc(&["show", "route", prefix, "protocol", protocol])
        .contains(prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_of_an_agent_keeps_its_routes_with_graceful_restart() {
    if let Some(why) = missing_prerequisite() {
        kubewire_lab::harness::skip(&why);
        return;
    }
    let manifests = manifests();
    let lab = TestLab::up_from(
        "b",
        manifests.path(),
        &[
            "--agent-arg=--run-bgp=true",
            &format!("--agent-arg=--cluster-asn={CLUSTER_AS}"),
            "--agent-arg=--bgp-graceful-restart=true",
            "--agent-arg=--bgp-graceful-restart-time=60s",
            "--agent-arg=--overlay-type=none",
            "--agent-arg=--run-firewall=false",
            "--agent-arg=--bgp-holdtime=9s",
        ],
    );
    let plan = lab.plan();
    let bird = Bird::start(&plan.fabric_netns, &bird_config(&plan, true));
    let n1 = plan.node("n1").unwrap();
    let gateway = plan.gateway_of(n1);
    let our_route = format!("198.51.100.0/24 via {gateway}");
    let has = |netns: &str, what: &str| our_routes(netns).iter().any(|r| r.starts_with(what));
    wait_for(
        "BIRD has every pod CIDR and n1 has BIRD's routes",
        Duration::from_secs(30),
        || {
            for node in &plan.nodes {
                for cidr in &node.pod_cidrs {
                    if !bird_has(&bird, &cidr.to_string(), &node.name) {
                        return Err(bird.birdc(&["show", "route"]));
                    }
                }
            }
            if !has(&n1.netns, &our_route) || !has(&n1.netns, "198.51.102.0/24") {
                return Err(format!("{:?}", our_routes(&n1.netns)));
            }
            Ok(())
        },
    );
    let failed = pod_to_pod(&plan).await;
    assert!(failed.is_empty(), "before the kill:\n{}", failed.join("\n"));

    // kill -9: no NOTIFICATION, nothing cleaned up. The lab restarts the agent as a
    // kubelet would (after a 1 s backoff), with the same command line; the kernel
    // closes the dead agent's sessions at once, so BIRD sees n1 go away.
    let (pid, _) = lab.agent("n1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // While n1 is away BIRD stops offering 198.51.102.0/24.
    bird.birdc(&["disable", "offered2"]);
    // From the kill until 3 s after the session is back, BIRD's route never leaves
    // n1's kernel (the new agent's first sync keeps it) and BIRD keeps n1's pod CIDR
    // (graceful restart: without it BIRD withdraws it when the session drops).
    let started = Instant::now();
    let (mut went_down, mut back): (bool, Option<Instant>) = (false, None);
    while back.is_none_or(|at| at.elapsed() < Duration::from_secs(3)) {
        assert!(
            has(&n1.netns, &our_route),
            "BIRD's route left n1 {:?} after the kill: {:?}",
            started.elapsed(),
            our_routes(&n1.netns),
        );
        assert!(
            bird_has(&bird, "10.244.1.0/24", "n1"),
            "BIRD dropped n1's pod CIDR {:?} after the kill:\n{}",
            started.elapsed(),
            bird.birdc(&["show", "route"])
        );
        let established = bird
            .birdc(&["show", "protocols", "n1"])
            .contains("Established");
        went_down |= !established;
        if went_down && back.is_none() && established {
            println!(
                "n1's session back {:.1} s after the kill",
                started.elapsed().as_secs_f64()
            );
            back = Some(Instant::now());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "n1's session did not come back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        bird_has(&bird, "10.244.1.0/24", "n1"),
        "{}",
        bird.birdc(&["show", "route"])
    );
    assert!(has(&n1.netns, &our_route), "{:?}", our_routes(&n1.netns));
    // The route BIRD no longer offers goes once BIRD has resent its routes
    // (End-of-RIB), long before the 60 s restart time.
    wait_for(
        "the route BIRD withdrew while n1 was away left n1",
        Duration::from_secs(15),
        || {
            if has(&n1.netns, "198.51.102.0/24") {
                Err(format!("{:?}", our_routes(&n1.netns)))
            } else {
                Ok(())
            }
        },
    );
    let failed = pod_to_pod(&plan).await;
    assert!(
        failed.is_empty(),
        "after the restart:\n{}",
        failed.join("\n")
    );
}

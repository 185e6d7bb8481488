//! The routing controller as the agent runs it (root): a lab of the demo's three
//! nodes, agents watching the lab's API server. Nodes added and deleted through the
//! API move routes and VXLAN entries on every other node; a route deleted by hand
//! comes back with the periodic drift check. Times are printed, not asserted.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{kubewire, sh, success, temp_dir, unique};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

/// `lab down` on drop.
struct Lab {
    name: String,
    state_dir: String,
    /// Holds `state_dir` (the lab creates it inside); removed after `lab down`.
    _state: tempfile::TempDir,
}

impl Lab {
    fn args<'a>(&'a self, verb: &'a str) -> Vec<&'a str> {
        vec![
            "lab",
            verb,
            "--name",
            &self.name,
            "--state-dir",
            &self.state_dir,
        ]
    }

    fn node_netns(&self, node: &str) -> String {
        format!("kw-{}-node-{node}", self.name)
    }

    fn our_routes(&self, node: &str) -> String {
        sh(
            "ip",
            &["-n", &self.node_netns(node), "route", "show", "proto", "44"],
        )
    }

    fn fdb(&self, node: &str) -> String {
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &self.node_netns(node),
                "bridge",
                "fdb",
                "show",
                "dev",
                "kubewire-vx",
            ],
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let args = self.args("down");
        let _ = kubewire(&args);
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_nodes_through_the_api_and_drift_is_repaired() {
    let state = temp_dir();
    let lab = Lab {
        name: unique("r"),
        state_dir: state.path().join("lab").display().to_string(),
        _state: state,
    };
    let manifests = temp_dir();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/nodes.yaml");
    std::fs::copy(&demo, manifests.path().join("nodes.yaml")).unwrap();
    let mut up = lab.args("up");
    let manifests_path = manifests.path().to_str().unwrap().to_string();
    up.extend([
        "--manifests",
        &manifests_path,
        "--agent-arg=--run-firewall=false",
        "--agent-arg=--sync-period=1s",
    ]);
    success(kubewire(&up), "lab up");

    // n1 and n2 share 192.168.50.0/24; n3 is behind the fabric router.
    wait_for("n1 has its routes", || {
        let routes = lab.our_routes("n1");
        routes.contains("10.244.2.0/24 via 192.168.50.12 dev eth0")
            && routes.contains("10.244.3.0/24 via 10.244.3.0 dev kubewire-vx")
    });
    let n3_mac = "06:6b:c0:a8:3c:0d"; // derived from 192.168.60.13
    assert!(lab.fdb("n1").contains(n3_mac), "{}", lab.fdb("n1"));

    // Drift: a route deleted by hand is back after the next periodic check.
    sh(
        "ip",
        &["-n", &lab.node_netns("n1"), "route", "del", "10.244.2.0/24"],
    );
    wait_for("a deleted route is re-installed", || {
        lab.our_routes("n1")
            .contains("10.244.2.0/24 via 192.168.50.12")
    });

    let kubeconfig = success(kubewire(&lab.args("kubeconfig")), "lab kubeconfig");
    let client = kubewire::lab::lifecycle::kube_client(Path::new(kubeconfig.trim()))
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
        lab.our_routes("n1")
            .contains("10.244.4.0/24 via 192.168.50.14 dev eth0")
            && lab
                .our_routes("n3")
                .contains("10.244.4.0/24 via 10.244.4.0 dev kubewire-vx")
    });

    // Deleting n3 takes its routes and its FDB entry off n1 and n2.
    nodes
        .delete("n3", &DeleteParams::default())
        .await
        .expect("delete n3");
    wait_for("a deleted Node's routes and FDB entries are gone", || {
        ["n1", "n2"]
            .iter()
            .all(|n| !lab.our_routes(n).contains("10.244.3.0/24") && !lab.fdb(n).contains(n3_mac))
    });
}

//! `kubewire routing plan` as a user runs it (no root, no cluster).

use std::process::Command;

const MANIFESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/routing/three-nodes.yaml"
);

fn plan(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(kubewire_lab::binaries::agent().expect("the kubewire binary"))
        .args(["routing", "plan", "--manifests", MANIFESTS])
        .args(args)
        .output()
        .expect("running kubewire");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn text_plan_lists_bridge_tunnel_peers_routes_and_rules() {
    let (ok, text, err) = plan(&["--node", "n1"]);
    assert!(ok, "{err}");
    for line in [
        "bridge kube-bridge mtu 1450",
        "  address 10.244.1.1/24",
        "  address fd00:10:244:1::1/64",
        "  net.ipv4.ip_forward = 1",
        "  kubewire-vx vxlan id 44 dstport 4789 local 192.168.1.11 nolearning address 06:6b:c0:a8:01:0b mtu 1450",
        "  peer n3: fdb 06:6b:c0:a8:02:0d dst 192.168.2.13 self permanent",
        "    neigh 10.244.3.0 lladdr 06:6b:c0:a8:02:0d nud permanent",
        "  10.244.2.0/24 via 192.168.1.12 proto 44    # Node n2, direct",
        "  fd00:10:244:3::/64 via fd00:10:244:3:: dev kubewire-vx onlink proto 44    # Node n3, vxlan",
        "\t\tip saddr @masquerade-v4 ip daddr != @cluster-v4 counter masquerade",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in\n{text}"
        );
    }
}

#[test]
fn local_subnets_decide_direct_versus_overlay() {
    // With n3's subnet declared local, n3 is routed directly too.
    let (ok, text, err) = plan(&[
        "--node",
        "n1",
        "--local-subnet",
        "192.168.0.0/16",
        "--local-subnet",
        "fd00::/16",
    ]);
    assert!(ok, "{err}");
    assert!(
        text.contains("  10.244.3.0/24 via 192.168.2.13 proto 44    # Node n3, direct"),
        "{text}"
    );
    assert!(!text.contains("peer n3"), "{text}");
}

#[test]
fn overlay_none_lists_what_it_does_not_route() {
    let (ok, text, err) = plan(&["--node", "n1", "--overlay-type", "none"]);
    assert!(ok, "{err}");
    assert!(text.contains("  none (--overlay-type=none)"), "{text}");
    assert!(
        text.contains("  10.244.3.0/24 (Node n3): 192.168.2.13 is not on a local subnet and --overlay-type=none: the underlay must route 10.244.3.0/24"),
        "{text}"
    );
    assert!(text.contains("bridge kube-bridge mtu 1500"), "{text}");
}

#[test]
fn json_plan_is_the_model_plus_the_ruleset() {
    let (ok, json, err) = plan(&[
        "--node",
        "n3",
        "--format",
        "json",
        "--overlay-encap",
        "ipip",
    ]);
    assert!(ok, "{err}");
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(value["node"], "n3");
    assert_eq!(value["tunnel"]["type"], "ipip");
    assert_eq!(value["tunnel"]["devices"][0]["name"], "kubewire-tun");
    let routes = value["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 4);
    assert_eq!(routes[0]["destination"], "10.244.1.0/24");
    assert_eq!(routes[0]["gateway"], "192.168.1.11");
    assert_eq!(routes[0]["device"], "kubewire-tun");
    assert_eq!(routes[0]["path"], "ipip");
    assert_eq!(
        routes[0]["source"],
        serde_json::json!({"kind": "node", "name": "n1"})
    );
    assert!(
        value["nftables_ruleset"]
            .as_str()
            .unwrap()
            .starts_with("table inet kubewire-routing {")
    );
}

#[test]
fn the_plan_names_bgp_paths_and_whether_the_speaker_would_run() {
    let (ok, text, err) = plan(&["--node", "n1"]);
    assert!(ok, "{err}");
    for line in [
        "bgp (not running: the agent runs the speaker with --run-bgp)",
        "  peer 192.168.1.12 AS 64512 (mesh, Node n2)",
        "  announce 10.244.1.0/24    # pod CIDR",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in\n{text}"
        );
    }
    let (ok, json, err) = plan(&[
        "--node",
        "n1",
        "--format",
        "json",
        "--run-bgp=true",
        "--cluster-asn=65001",
    ]);
    assert!(ok, "{err}");
    let value: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(value["bgp"]["running"], true);
    assert_eq!(value["bgp"]["asn"], 65001);
    assert_eq!(value["bgp"]["peers"].as_array().map(Vec::len), Some(2));
}

#[test]
fn unknown_node_is_an_error_naming_it() {
    let (ok, _, err) = plan(&["--node", "n9"]);
    assert!(!ok);
    assert!(err.contains("Node n9 is not in the cluster"), "{err}");
}

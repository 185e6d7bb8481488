//! `kubewire proxy trace` and `proxy plan` run as a binary on examples/proxy (one
//! Service per kube-proxy rule): every rule's verdict, exactly as CONTRACT.md prints it.
//! `proxy trace` also follows each packet through the compiled nftables table
//! (`kubewire::nft::trace::trace_flow`) and fails when the two disagree, so every case
//! here is checked against the compiled rules too (rootless).

mod common;
mod proxy_support;

use common::{kubewire, success, temp_dir};
use proxy_support::trace;

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/proxy");

fn forward(backends: &[&str], masquerade: bool) -> String {
    format!(
        r#"{{"verdict":"forward","backends":{},"masquerade":{masquerade}}}"#,
        serde_json::to_string(backends).unwrap()
    )
}

const DROP: &str = r#"{"verdict":"drop"}"#;
const REJECT: &str = r#"{"verdict":"reject"}"#;
const NONE: &str = r#"{"verdict":"none"}"#;

const CLIENT: &str = "10.244.2.30";
const OUTSIDE: &str = "192.0.2.7";
const ALLOWED: &str = "203.0.113.5";
const N1: &str = "192.168.50.11";
const N2: &str = "192.168.50.12";

#[test]
fn every_rule_of_the_example() {
    let web = ["10.244.1.10:8080", "10.244.2.10:8080"];
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, &str, &str, u64, &str, String)> = vec![
        ("ClusterIP, named targetPort, unready endpoint left out", "n1", CLIENT, "10.96.1.10", 80, "TCP", forward(&web, false)),
        ("ClusterIP from off-cluster is masqueraded", "n1", OUTSIDE, "10.96.1.10", 80, "TCP", forward(&web, true)),
        ("ClusterIP from the node is masqueraded", "n1", N1, "10.96.1.10", 80, "TCP", forward(&web, true)),
        ("hairpin is masqueraded", "n1", "10.244.1.10", "10.96.1.10", 80, "TCP", forward(&web, true)),
        ("ClusterIP on an unserved port rejects", "n1", CLIENT, "10.96.1.10", 81, "TCP", REJECT.into()),
        ("ClusterIP, wrong protocol rejects", "n1", CLIENT, "10.96.1.10", 80, "UDP", REJECT.into()),
        ("unallocated service address drops", "n1", CLIENT, "10.96.9.9", 80, "TCP", DROP.into()),
        ("not a service address", "n1", CLIENT, "10.244.1.10", 8080, "TCP", NONE.into()),
        ("eTP Local NodePort on n1: local endpoint, source kept", "n1", OUTSIDE, N1, 30080, "TCP", forward(&["10.244.1.20:9000"], false)),
        ("eTP Local NodePort on n2: no local endpoint drops", "n2", OUTSIDE, N2, 30080, "TCP", DROP.into()),
        ("eTP Local NodePort on n2 from a pod: every endpoint", "n2", CLIENT, N2, 30080, "TCP", forward(&["10.244.1.20:9000"], false)),
        ("eTP Local NodePort from the node: masqueraded", "n2", N2, N2, 30080, "TCP", forward(&["10.244.1.20:9000"], true)),
        ("NodePort of another node is not this node's", "n1", OUTSIDE, N2, 30080, "TCP", NONE.into()),
        ("eTP Cluster NodePort is masqueraded", "n1", OUTSIDE, N1, 30443, "TCP", forward(&["10.244.2.10:8080"], true)),
        ("externalIP ignores source ranges", "n1", OUTSIDE, "198.51.100.10", 443, "TCP", forward(&["10.244.2.10:8080"], true)),
        ("LB IP from an allowed source", "n1", ALLOWED, "198.51.100.20", 443, "TCP", forward(&["10.244.2.10:8080"], true)),
        ("LB IP from elsewhere drops", "n1", OUTSIDE, "198.51.100.20", 443, "TCP", DROP.into()),
        ("no endpoints rejects", "n1", CLIENT, "10.96.1.40", 80, "TCP", REJECT.into()),
        ("iTP Local on n1", "n1", CLIENT, "10.96.1.50", 80, "TCP", forward(&["10.244.1.10:8080"], false)),
        ("iTP Local on n2 drops", "n2", CLIENT, "10.96.1.50", 80, "TCP", DROP.into()),
        ("UDP", "n2", CLIENT, "10.96.1.53", 53, "UDP", forward(&["10.244.2.53:5353"], false)),
        ("serving terminating fallback, ClientIP affinity", "n1", CLIENT, "10.96.1.60", 80, "TCP",
         forward(&["10.244.2.10:8080"], false).replace('}', r#","affinity_seconds":10800}"#)),
        ("headless is ignored", "n1", CLIENT, "10.244.1.10", 80, "TCP", NONE.into()),
    ];
    for (what, node, from, to, port, protocol, expected) in cases {
        assert_eq!(
            trace(MANIFESTS, node, from, to, port, protocol),
            expected,
            "{what}"
        );
    }
}

#[test]
fn dual_stack_backends_print_ipv6_in_brackets() {
    let dir = temp_dir();
    std::fs::write(
        dir.path().join("dual.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDRs: [10.244.1.0/24, 'fd10:1::/64']}\n\
         status: {addresses: [{type: InternalIP, address: 192.168.50.11}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\n\
         spec: {clusterIP: 10.96.0.5, clusterIPs: [10.96.0.5, 'fd00::5'], ports: [{name: p, port: 80}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: s-6, namespace: x, labels: {kubernetes.io/service-name: s}}\naddressType: IPv6\n\
         ports: [{name: p, port: 8080}]\nendpoints: [{addresses: ['fd10:1::9']}, {addresses: ['fd10:1::10']}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\n\
         spec: {clusterIP: 'fd00::6', ipFamilies: [IPv6], sessionAffinity: ClientIP,\n\
         sessionAffinityConfig: {clientIP: {timeoutSeconds: 90}}, ports: [{name: p, port: 53, protocol: UDP}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: a-6, namespace: x, labels: {kubernetes.io/service-name: a}}\naddressType: IPv6\n\
         ports: [{name: p, port: 5353, protocol: UDP}]\nendpoints: [{addresses: ['fd10:1::9']}, {addresses: ['fd10:1::10']}]\n",
    )
    .unwrap();
    let manifests = dir.path().to_str().unwrap();
    assert_eq!(
        trace(manifests, "n1", "fd10:1::1", "fd00::5", 80, "TCP"),
        forward(&["[fd10:1::10]:8080", "[fd10:1::9]:8080"], false)
    );
    assert_eq!(
        trace(manifests, "n1", "10.244.1.5", "10.96.0.5", 80, "TCP"),
        REJECT
    );
    // IPv6 ClientIP affinity, agreed by the compiled rules (the per-endpoint client
    // sets), from a pod and, masqueraded, from off-cluster.
    let sticky = |masquerade: bool| {
        forward(&["[fd10:1::10]:5353", "[fd10:1::9]:5353"], masquerade)
            .replace('}', r#","affinity_seconds":90}"#)
    };
    assert_eq!(
        trace(manifests, "n1", "fd10:1::1", "fd00::6", 53, "UDP"),
        sticky(false)
    );
    assert_eq!(
        trace(manifests, "n1", "2001:db8::1", "fd00::6", 53, "UDP"),
        sticky(true)
    );
}

#[test]
fn plan_prints_the_nft_transaction_and_ipvs_is_refused() {
    let plan = success(
        kubewire(&[
            "proxy",
            "plan",
            "--manifests",
            MANIFESTS,
            "--node",
            "n1",
            "--backend",
            "nftables",
        ]),
        "proxy plan",
    );
    assert!(plan.contains("table inet kubewire-proxy {"), "{plan}");
    assert!(
        plan.contains("10.96.1.10 . tcp . 80 : goto cluster-ip"),
        "{plan}"
    );
    assert!(
        plan.contains("192.168.50.11 . tcp . 30080 : goto external-local"),
        "{plan}"
    );
    assert!(
        plan.contains("10.96.1.40 . tcp . 80 : goto reject-packet"),
        "{plan}"
    );
    assert!(
        plan.contains("10.96.1.60 . tcp . 80 : goto affinity-10800"),
        "{plan}"
    );
    let ipvs = kubewire(&[
        "proxy",
        "plan",
        "--manifests",
        MANIFESTS,
        "--node",
        "n1",
        "--backend",
        "ipvs",
    ]);
    let ipvs = success(ipvs, "proxy plan --backend ipvs");
    // The same Services as virtual services, the VIPs, and the glue without DNAT.
    for expected in [
        "IPVS services",
        "# addresses on kube-ipvs0",
        "# nftables glue",
        "10.96.1.40 . tcp . 80 : goto reject-packet",
    ] {
        assert!(ipvs.contains(expected), "{expected} not in {ipvs}");
    }
    assert!(!ipvs.contains("dnat"), "{ipvs}");
}

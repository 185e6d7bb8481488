//! The nftables service proxy in the lab (root): `lab run --services` with every
//! agent running the proxy, and every Service probe's `answered_by` compared with
//! the pods `proxy trace` names as backends for that node and source. The firewall
//! is off in these labs: the demo's NetworkPolicies would (correctly) deny some
//! Service traffic, which `proxy trace` does not model.

mod common;
mod lab_support;
mod proxy_support;
mod service_lab;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{kubewire, success, temp_dir};
use lab_support::TestLab;
use serde_json::Value;

use service_lab::{AGENT_ARGS, probes_match_trace, report_matches_trace, trace};

#[test]
fn demo_cluster_ips_and_node_ports_answer_from_exactly_the_endpoints() {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    // 9 pods × 2 ClusterIPs + 3 NodePorts, all served.
    assert_eq!(probes_match_trace(&manifests, "nftables", 24), 21);
}

/// The same with the IPVS backend (round robin): a ClusterIP reached from pods on
/// every node, backed on other nodes too, and the NodePort from the external
/// namespace on every node; then the kernel state on n1 (virtual services, VIPs on
/// kube-ipvs0), and a virtual service deleted behind the agent's back comes back
/// with the periodic sync. Needs a kernel with IPVS and the dummy interface:
/// `tests/vm/run proxy_lab ipvs`.
#[test]
#[ignore = "needs IPVS: tests/vm/run proxy_lab ipvs"]
fn ipvs_demo_cluster_ips_and_node_ports_answer_from_exactly_the_endpoints() {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    let lab = TestLab::new("kwpv", false);
    let mut up = lab.args("up");
    up.extend(["--manifests".into(), manifests.display().to_string()]);
    up.extend(AGENT_ARGS.iter().map(|a| a.to_string()));
    up.extend(
        [
            "--agent-arg=--proxy-backend=ipvs",
            "--agent-arg=--sync-period=5s",
        ]
        .map(String::from),
    );
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    success(kubewire(&up), "lab up");

    let mut probe = lab.args("probe");
    probe.extend(["--services", "--tries", "12", "--format", "json"].map(String::from));
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    let report: Value = serde_json::from_str(&success(kubewire(&probe), "lab probe")).unwrap();
    assert_eq!(report_matches_trace(&manifests, &report), 21);

    let netns = format!("kw-{}-node-n1", lab.name);
    let in_node = |program: &str, args: &[&str]| -> String {
        let mut all = vec!["netns", "exec", netns.as_str(), program];
        all.extend(args);
        common::sh("ip", &all)
    };
    let services = in_node("ipvsadm", &["-Ln"]);
    eprintln!("ipvsadm -Ln on n1:\n{services}");
    assert!(services.contains("TCP  10.96.0.10:80 rr"), "{services}");
    assert!(services.contains("TCP  10.96.0.20:8080 rr"), "{services}");
    let vips = in_node("ip", &["-o", "addr", "show", "dev", "kube-ipvs0"]);
    eprintln!("kube-ipvs0 on n1:\n{vips}");
    assert!(vips.contains("10.96.0.10/32"), "{vips}");

    // Drift: the periodic sync (every 5 s here) puts a deleted service back.
    in_node("ipvsadm", &["-D", "-t", "10.96.0.10:80"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Fails (no such service) until it is back.
        let output = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "ipvsadm",
                "-Ln",
                "-t",
                "10.96.0.10:80",
            ])
            .output()
            .expect("running ipvsadm");
        let now = String::from_utf8_lossy(&output.stdout);
        if output.status.success() && now.contains("->") {
            eprintln!("restored after deletion:\n{now}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted IPVS service was not restored"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn every_proxy_rule_measured_matches_trace() {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/proxy");
    // 6 pods × 7 ClusterIPs, less `empty` (6, rejected) and `local` from n2's 4 pods
    // (dropped); NodePort 30080 on n1 only (eTP Local), 30443 on both nodes; the
    // externalIP; not the LB IP (outside its source ranges).
    assert_eq!(
        probes_match_trace(&manifests, "nftables", 24),
        32 + 1 + 2 + 1
    );
}

/// Every rule of examples/proxy with the IPVS backend, measured against `proxy
/// trace` as for nftables: rejects without endpoints, internalTrafficPolicy Local
/// drops, the eTP Local NodePort only where it has an endpoint, the externalIP, the
/// LB IP refused outside its source ranges. `tests/vm/run proxy_lab ipvs`.
#[test]
#[ignore = "needs IPVS: tests/vm/run proxy_lab ipvs"]
fn ipvs_every_proxy_rule_measured_matches_trace() {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/proxy");
    assert_eq!(probes_match_trace(&manifests, "ipvs", 12), 32 + 1 + 2 + 1);
}

/// `kubewire cleanup`'s IPVS part in a namespace of its own: our services (scheduler
/// flag 3) and kube-ipvs0 go, a service someone else made stays.
/// `tests/vm/run proxy_lab ipvs`.
#[test]
#[ignore = "needs IPVS: tests/vm/run proxy_lab ipvs"]
fn ipvs_cleanup_removes_our_services_and_kube_ipvs0_only() {
    let ns = common::Netns::new("kwipvs");
    ns.ip(&["link", "add", "kube-ipvs0", "type", "dummy"]);
    ns.ip(&["addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0"]);
    ns.exec(
        "ipvsadm",
        &["-A", "-t", "10.96.0.1:80", "-s", "rr", "-b", "flag-3"],
    );
    ns.exec("ipvsadm", &["-A", "-t", "192.0.2.1:80", "-s", "wlc"]);
    let deleted = ns
        .block_on(|| async { kubewire::proxy::ipvs::apply::cleanup().await })
        .unwrap();
    assert_eq!(deleted, 1);
    let left = ns.exec("ipvsadm", &["-Ln"]);
    eprintln!("after cleanup:\n{left}");
    assert!(!left.contains("10.96.0.1:80"), "{left}");
    assert!(left.contains("192.0.2.1:80"), "{left}");
    let links = ns.ip(&["link", "show"]);
    assert!(!links.contains("kube-ipvs0"), "{links}");
}

/// Graceful termination against the kernel: an endpoint removed while a TCP
/// connection to it is open keeps weight 0 and carries the connection; once the
/// connection is closed, the next sync deletes it. The reconciler alone, in a
/// namespace with a backend namespace behind a veth. `tests/vm/run proxy_lab ipvs`.
#[test]
#[ignore = "needs IPVS: tests/vm/run proxy_lab ipvs"]
fn ipvs_removed_endpoint_drains_its_open_connection() {
    use kubewire::ipvs::{Destination, Ipvs, Protocol, Service, ServiceKey};
    use kubewire::proxy::ipvs::apply::Reconciler;
    use kubewire::proxy::ipvs::compile::{Desired, VirtualServer};
    use kubewire::runtime::SyncReason;
    use std::io::{Read, Write};

    let lb = common::Netns::new("kwgl");
    let backend = common::Netns::new("kwgb");
    lb.ip(&[
        "link",
        "add",
        "veth-lb",
        "type",
        "veth",
        "peer",
        "name",
        "veth-be",
        "netns",
        &backend.name,
    ]);
    lb.ip(&["addr", "add", "10.1.0.1/24", "dev", "veth-lb"]);
    lb.ip(&["link", "set", "veth-lb", "up"]);
    backend.ip(&["addr", "add", "10.1.0.2/24", "dev", "veth-be"]);
    backend.ip(&["link", "set", "veth-be", "up"]);
    backend.ip(&["route", "add", "default", "via", "10.1.0.1"]);
    let listener = backend.run(|| std::net::TcpListener::bind("10.1.0.2:8080").unwrap());

    let key = ServiceKey::Address {
        protocol: Protocol::Tcp,
        address: "10.96.0.1".parse().unwrap(),
        port: 80,
    };
    let desired = |endpoints: &[&str]| {
        let mut service = Service::new(key, "rr");
        service.flags.sched_flag3 = true;
        let mut out = Desired::default();
        out.vips.insert(key_address(&key));
        out.services.insert(
            key,
            VirtualServer {
                service,
                destinations: endpoints
                    .iter()
                    .map(|e| {
                        let a: SocketAddr = e.parse().unwrap();
                        (a, Destination::new(a.ip(), a.port()))
                    })
                    .collect(),
                owner: "x/web:80/TCP".into(),
            },
        );
        out
    };
    let listing = || lb.exec("ipvsadm", &["-Ln", "-t", "10.96.0.1:80"]);
    lb.block_on(|| async {
        let mut reconciler = Reconciler::new(
            Ipvs::new().unwrap(),
            Duration::from_secs(600),
            Default::default(),
        );
        reconciler
            .sync(
                desired(&["10.1.0.2:8080", "10.1.0.3:8080"]),
                SyncReason::Start,
            )
            .await
            .unwrap();
        // Round robin: connect until one lands on the live backend.
        let (mut client, mut server) = loop {
            let client = std::net::TcpStream::connect_timeout(
                &"10.96.0.1:80".parse().unwrap(),
                Duration::from_secs(1),
            );
            if let Ok(client) = client {
                break (client, listener.accept().unwrap().0);
            }
        };
        eprintln!("connected:\n{}", listing());
        reconciler
            .sync(desired(&["10.1.0.3:8080"]), SyncReason::Change)
            .await
            .unwrap();
        let draining = listing();
        eprintln!("endpoint removed, connection open:\n{draining}");
        assert!(
            draining.contains("10.1.0.2:8080") && draining.contains("Masq    0"),
            "{draining}"
        );
        client.write_all(b"still here").unwrap();
        let mut buffer = [0u8; 10];
        server.read_exact(&mut buffer).unwrap();
        assert_eq!(&buffer, b"still here");
        drop(client);
        drop(server);
        std::thread::sleep(Duration::from_secs(1));
        reconciler
            .sync(desired(&["10.1.0.3:8080"]), SyncReason::Change)
            .await
            .unwrap();
        let after = listing();
        eprintln!("connection closed, next sync:\n{after}");
        assert!(!after.contains("10.1.0.2:8080"), "{after}");
        assert!(after.contains("10.1.0.3:8080"), "{after}");
    });
}

fn key_address(key: &kubewire::ipvs::ServiceKey) -> std::net::IpAddr {
    match key {
        kubewire::ipvs::ServiceKey::Address { address, .. } => *address,
        kubewire::ipvs::ServiceKey::Fwmark { .. } => unreachable!("an address service"),
    }
}

/// What examples/proxy does not have, for the tests below: a ClientIP Service over
/// web-1 (n1) and web-2 (n2); a LoadBalancer with externalTrafficPolicy Local and
/// healthCheckNodePort 32100 over api-1 (n1 only); a UDP Service over two DNS pods
/// (n2's `dns` and n1's new `dns-2`); a Service another proxy owns.
const EXTRA: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: dns-2, namespace: shop, labels: {app: dns}}
spec:
  nodeName: n1
  containers: [{name: dns, ports: [{containerPort: 5353, protocol: UDP}]}]
status: {podIP: 10.244.1.53}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: shop}
spec:
  clusterIP: 10.96.1.70
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky-abc, namespace: shop, labels: {kubernetes.io/service-name: sticky}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: n1, conditions: {ready: true}}
- {addresses: [10.244.2.10], nodeName: n2, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: hc, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.1.90
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  ports: [{name: http, port: 8080, targetPort: 9000, nodePort: 30100}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hc-abc, namespace: shop, labels: {kubernetes.io/service-name: hc}}
addressType: IPv4
ports: [{name: http, port: 9000, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.20], nodeName: n1, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: dns2, namespace: shop}
spec:
  clusterIP: 10.96.1.54
  ports: [{name: dns, port: 53, targetPort: 5353, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns2-abc, namespace: shop, labels: {kubernetes.io/service-name: dns2}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [10.244.1.53], nodeName: n1, conditions: {ready: true}}
- {addresses: [10.244.2.53], nodeName: n2, conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata:
  name: foreign
  namespace: shop
  labels: {service.kubernetes.io/service-proxy-name: other-proxy}
spec:
  clusterIP: 10.96.1.80
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: foreign-abc
  namespace: shop
  labels: {kubernetes.io/service-name: foreign, service.kubernetes.io/service-proxy-name: other-proxy}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.10], nodeName: n2, conditions: {ready: true}}
"#;

/// A lab of examples/proxy plus [`EXTRA`], up with the proxy `backend`.
fn extra_lab(prefix: &str, backend: &str) -> (TestLab, tempfile::TempDir) {
    let manifests = temp_dir();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/proxy");
    for file in ["nodes-pods.yaml", "services.yaml"] {
        std::fs::copy(examples.join(file), manifests.path().join(file)).unwrap();
    }
    std::fs::write(manifests.path().join("extra.yaml"), EXTRA).unwrap();
    let lab = TestLab::new(prefix, false);
    let mut up = lab.args("up");
    up.extend(["--manifests".into(), manifests.path().display().to_string()]);
    up.extend(AGENT_ARGS.iter().map(|a| a.to_string()));
    up.push(format!("--agent-arg=--proxy-backend={backend}"));
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    success(kubewire(&up), "lab up");
    (lab, manifests)
}

/// `lab connect`: "who" and the source address the responder saw.
fn connect(lab: &TestLab, from: &str, to: &str, protocol: &str) -> (String, String) {
    let mut args = lab.args("connect");
    args.extend(
        [
            "--from",
            from,
            "--to",
            to,
            "--protocol",
            protocol,
            "--timeout",
            "2s",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = success(kubewire(&args), &args.join(" "));
    let mut words = out.split_whitespace();
    let who = words.next().unwrap_or_default().to_string();
    let peer = words.nth(1).unwrap_or_default().to_string();
    (who, peer)
}

/// The lab's netns holding `address` (a pod's).
fn netns_with(lab: &TestLab, address: &str) -> String {
    let list = common::sh("ip", &["netns", "list"]);
    let prefix = format!("kw-{}-pod-", lab.name);
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .find(|n| {
            common::sh("ip", &["netns", "exec", n, "ip", "-4", "-o", "addr"])
                .contains(&format!("{address}/"))
        })
        .unwrap_or_else(|| panic!("no netns of lab {} has {address}", lab.name))
        .to_string()
}

/// One TCP connection from `source` (bound) to `to` inside `netns`: who answered.
fn ask_from(netns: &str, source: &str, to: &str) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let (source, to): (std::net::IpAddr, SocketAddr) =
        (source.parse().unwrap(), to.parse().unwrap());
    kubewire_lab::harness::run_in(netns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let socket = match source {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .ok()?;
            socket.bind(SocketAddr::new(source, 0)).ok()?;
            let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
                .await
                .ok()?
                .ok()?;
            let mut text = String::new();
            tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut text))
                .await
                .ok()?
                .ok()?;
            text.split_whitespace().next().map(str::to_string)
        })
    })
}

/// An HTTP GET from `netns`: (status, body).
fn http_get(netns: &str, to: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let to: SocketAddr = to.parse().unwrap();
    let text = kubewire_lab::harness::run_in(netns, || {
        let mut stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    });
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Removes the endpoint at `address` from the lab's EndpointSlice `shop/<slice>`,
/// stamping the change's trigger time as the EndpointSlice controller does.
fn remove_endpoint(lab: &TestLab, slice_name: &str, address: &str) {
    let kubeconfig = lab.args("kubeconfig");
    let kc: Vec<&str> = kubeconfig.iter().map(String::as_str).collect();
    let path = success(kubewire(&kc), "lab kubeconfig");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = common::kube_client(&runtime, &path);
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(client, "shop");
    runtime.block_on(async {
        let mut slice = slices.get(slice_name).await.unwrap();
        slice.endpoints.retain(|e| e.addresses[0] != address);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        slice.metadata.annotations.get_or_insert_default().insert(
            "endpoints.kubernetes.io/last-change-trigger-time".into(),
            kubewire::proxy::time::format_rfc3339(now),
        );
        slices
            .replace(slice_name, &Default::default(), &slice)
            .await
            .unwrap();
    });
}

/// ClientIP on `shop/sticky`: 16 sources on n1 (addresses on its loopback), 4
/// connections each; every source stays on one pod, and together they reach both.
fn clients_stick_to_one_pod_and_spread_over_both(node1: &str) {
    sources_stick_and_spread(node1, "10.96.1.70:80", |i| format!("10.123.0.{i}"));
}

/// 16 sources on `node` (`source(1..=16)`, added to its loopback) connect 4 times
/// each to `to` (`shop/sticky` or `shop/sticky6`, over web-1 and web-2): every source
/// stays on one pod, and together they reach both.
fn sources_stick_and_spread(node: &str, to: &str, source: impl Fn(u32) -> String) {
    let mut seen = BTreeSet::new();
    for i in 1..=16 {
        let source = source(i);
        let prefix = if source.contains(':') { 128 } else { 32 };
        common::sh(
            "ip",
            &[
                "netns",
                "exec",
                node,
                "ip",
                "addr",
                "add",
                &format!("{source}/{prefix}"),
                "dev",
                "lo",
            ],
        );
        let answers: BTreeSet<Option<String>> =
            (0..4).map(|_| ask_from(node, &source, to)).collect();
        assert_eq!(answers.len(), 1, "{source} reached {answers:?}");
        seen.insert(answers.into_iter().next().flatten().expect("an answer"));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["shop/web-1".to_string(), "shop/web-2".to_string()]),
        "16 clients should reach both pods"
    );
}

/// Source addresses from outside: the `Local` NodePort's pod sees the client's, the
/// `Cluster` one's sees n2's.
fn local_keeps_the_client_address_cluster_gives_the_nodes(lab: &TestLab) {
    let external = format!("kw-{}-ext", lab.name);
    let (who, local_peer) = connect(lab, "external", "192.168.50.11:30100", "TCP");
    assert_eq!(who, "shop/api-1");
    let (_, cluster_peer) = connect(lab, "external", "192.168.50.12:30443", "TCP");
    let external_ip = common::sh(
        "ip",
        &["netns", "exec", &external, "ip", "-4", "-o", "addr"],
    );
    assert!(
        external_ip.contains(&format!("{local_peer}/")),
        "Local: {local_peer} is not the client's ({external_ip})"
    );
    assert!(
        !external_ip.contains(&format!("{cluster_peer}/")),
        "Cluster: {cluster_peer} is the client's"
    );
    let node2 = format!("kw-{}-node-n2", lab.name);
    let node2_ips = common::sh("ip", &["netns", "exec", &node2, "ip", "-4", "-o", "addr"]);
    assert!(
        node2_ips.contains(&format!("{cluster_peer}/")),
        "Cluster: {cluster_peer} is not n2's ({node2_ips})"
    );
}

/// Deletes the Service `shop/<name>` through the lab's API server.
fn delete_service(lab: &TestLab, name: &str) {
    let kubeconfig = lab.args("kubeconfig");
    let kc: Vec<&str> = kubeconfig.iter().map(String::as_str).collect();
    let path = success(kubewire(&kc), "lab kubeconfig");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = common::kube_client(&runtime, &path);
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client, "shop");
    runtime
        .block_on(services.delete(name, &Default::default()))
        .unwrap();
}

/// The same contract with the IPVS backend, in the VM: ClientIP by persistence (each
/// of 16 clients on one pod, both pods reached), the health check ports, the client's
/// address kept for Local and the node's for Cluster, and a deleted Service leaving no
/// trace (no virtual service, no VIP on kube-ipvs0, no element in our table).
/// `tests/vm/run proxy_lab ipvs_service_contract`.
#[test]
#[ignore = "needs IPVS: tests/vm/run proxy_lab ipvs"]
fn ipvs_service_contract_affinity_health_sources_and_deletion() {
    let (lab, _manifests) = extra_lab("kwpi", "ipvs");
    let node1 = format!("kw-{}-node-n1", lab.name);
    let in_node1 = |program: &str, args: &[&str]| {
        let mut all = vec!["netns", "exec", node1.as_str(), program];
        all.extend_from_slice(args);
        common::sh("ip", &all)
    };

    clients_stick_to_one_pod_and_spread_over_both(&node1);

    let external = format!("kw-{}-ext", lab.name);
    let (status, body) = http_get(&external, "192.168.50.11:32100", "/");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(&external, "192.168.50.12:32100", "/");
    assert_eq!(status, 503, "{body}");

    local_keeps_the_client_address_cluster_gives_the_nodes(&lab);

    assert!(in_node1("ipvsadm", &["-Ln"]).contains("10.96.1.70:80"));
    delete_service(&lab, "sticky");
    common::wait_for("the deleted Service to leave no trace on n1", || {
        let services = in_node1("ipvsadm", &["-Ln"]);
        let vips = in_node1("ip", &["-o", "addr", "show", "dev", "kube-ipvs0"]);
        let table = in_node1("nft", &["list", "table", "inet", "kubewire-proxy"]);
        (!services.contains("10.96.1.70:")
            && !vips.contains("10.96.1.70/")
            && !table.contains("10.96.1.70 "))
        .then_some(())
    });
}

/// Session affinity, health check ports, source addresses and a foreign proxy's
/// Service, each measured with real packets and compared with `proxy trace`.
#[test]
fn affinity_health_checks_source_addresses_and_foreign_services() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let (lab, manifests) = extra_lab("kwpa", "nftables");
    let node1 = format!("kw-{}-node-n1", lab.name);

    clients_stick_to_one_pod_and_spread_over_both(&node1);
    let verdict = trace(
        manifests.path(),
        "n1",
        "10.123.0.1",
        "10.96.1.70",
        80,
        "TCP",
    );
    assert_eq!(verdict["affinity_seconds"], 600, "{verdict}");

    // The endpoint a client sticks to is removed: its entry goes with it, and the
    // client's next connection reaches the other pod (a stale entry would still
    // reach the removed pod, which is alive).
    let first = ask_from(&node1, "10.123.0.1", "10.96.1.70:80").expect("an answer");
    let (gone, other) = if first == "shop/web-1" {
        ("10.244.1.10", "shop/web-2")
    } else {
        ("10.244.2.10", "shop/web-1")
    };
    remove_endpoint(&lab, "sticky-abc", gone);
    let removed = Instant::now();
    common::wait_for("the client to leave the removed endpoint", || {
        (ask_from(&node1, "10.123.0.1", "10.96.1.70:80").as_deref() == Some(other)).then_some(())
    });
    eprintln!(
        "affinity moved to {other} {:?} after its endpoint was removed",
        removed.elapsed()
    );
    for _ in 0..4 {
        assert_eq!(
            ask_from(&node1, "10.123.0.1", "10.96.1.70:80").as_deref(),
            Some(other)
        );
    }

    // healthCheckNodePort from outside: n1 has api-1, n2 has nothing.
    let external = format!("kw-{}-ext", lab.name);
    let (status, body) = http_get(&external, "192.168.50.11:32100", "/");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["localEndpoints"], 1, "{body}");
    assert_eq!(body["service"]["name"], "hc", "{body}");
    let (status, body) = http_get(&external, "192.168.50.12:32100", "/");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");
    for node in ["192.168.50.11", "192.168.50.12"] {
        for path in ["/healthz", "/livez"] {
            let (status, body) = http_get(&external, &format!("{node}:10256"), path);
            assert_eq!(status, 200, "{node}{path}: {body}");
        }
    }

    local_keeps_the_client_address_cluster_gives_the_nodes(&lab);
    let node2 = format!("kw-{}-node-n2", lab.name);

    // The node's own traffic is any from a local address (`fib saddr type local`), not
    // only the Node's: from an address on n2's loopback, the eTP Local NodePort with
    // no endpoint on n2 still reaches n1's endpoint.
    common::sh(
        "ip",
        &[
            "netns",
            "exec",
            &node2,
            "ip",
            "addr",
            "add",
            "10.123.1.1/32",
            "dev",
            "lo",
        ],
    );
    assert_eq!(
        ask_from(&node2, "10.123.1.1", "192.168.50.12:30100").as_deref(),
        Some("shop/api-1")
    );

    // A foreign proxy's Service: not in our table, and a foreign DNAT works through it.
    let table = common::sh(
        "ip",
        &[
            "netns",
            "exec",
            &node2,
            "nft",
            "list",
            "table",
            "inet",
            "kubewire-proxy",
        ],
    );
    // Only in the set that keeps our own drop rules away from it.
    assert!(!table.contains("10.96.1.80 . "), "{table}");
    assert!(table.contains("foreign-ips4"), "{table}");
    let verdict = trace(
        manifests.path(),
        "n2",
        "10.244.2.30",
        "10.96.1.80",
        80,
        "TCP",
    );
    assert_eq!(verdict["verdict"], "none", "{verdict}");
    for command in [
        "add table ip other-proxy",
        "add chain ip other-proxy pre { type nat hook prerouting priority -100; }",
        "add rule ip other-proxy pre ip daddr 10.96.1.80 tcp dport 80 dnat to 10.244.2.10:8080",
    ] {
        common::sh("ip", &["netns", "exec", &node2, "nft", command]);
    }
    assert_eq!(
        connect(&lab, "shop/client", "10.96.1.80:80", "TCP").0,
        "shop/web-2"
    );
}

/// Two dual-stack nodes, web-1 on n1 and web-2 on n2 with an address of each family,
/// and `shop/sticky6`: a dual-stack ClientIP Service over both (one slice per family).
const DUAL_STACK: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.244.1.0/24, 'fd00:10:244:1::/64']}
status:
  addresses: [{type: InternalIP, address: 192.168.50.11}, {type: InternalIP, address: 'fd00:50::11'}]
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDRs: [10.244.2.0/24, 'fd00:10:244:2::/64']}
status:
  addresses: [{type: InternalIP, address: 192.168.50.12}, {type: InternalIP, address: 'fd00:50::12'}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}, {ip: 'fd00:10:244:1::10'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec:
  nodeName: n2
  containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 10.244.2.10, podIPs: [{ip: 10.244.2.10}, {ip: 'fd00:10:244:2::10'}]}
---
apiVersion: v1
kind: Service
metadata: {name: sticky6, namespace: shop}
spec:
  clusterIP: 10.96.1.70
  clusterIPs: [10.96.1.70, 'fd00:96::70']
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky6-v4, namespace: shop, labels: {kubernetes.io/service-name: sticky6}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.10], nodeName: n1, conditions: {ready: true}}
- {addresses: [10.244.2.10], nodeName: n2, conditions: {ready: true}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sticky6-v6, namespace: shop, labels: {kubernetes.io/service-name: sticky6}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ['fd00:10:244:1::10'], nodeName: n1, conditions: {ready: true}}
- {addresses: ['fd00:10:244:2::10'], nodeName: n2, conditions: {ready: true}}
"#;

/// ClientIP affinity for IPv6 with real packets: 16 IPv6 clients on n1 each stay on
/// one pod and together reach both; the datapath's record (the client in the set of
/// its endpoint) is in n1's table; `proxy trace` says so too; and when the endpoint
/// a client sticks to is removed, its set goes and the client moves.
#[test]
fn ipv6_client_ip_affinity_sticks_spreads_and_moves() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let lab = TestLab::new("kwp6", false);
    lab.write("dual-stack.yaml", DUAL_STACK);
    let mut up = lab.args("up");
    up.extend([
        "--manifests".into(),
        lab.manifests.path().display().to_string(),
    ]);
    up.extend(AGENT_ARGS.iter().map(|a| a.to_string()));
    up.push("--agent-arg=--proxy-backend=nftables".into());
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    success(kubewire(&up), "lab up");
    let node1 = lab.node_netns("n1");
    let to = "[fd00:96::70]:80";
    // Both pods are reachable over IPv6 from n1 before the clients start.
    common::wait_for("an IPv6 answer from the ClusterIP", || {
        ask_from(&node1, "fd00:50::11", to)
    });

    sources_stick_and_spread(&node1, to, |i| format!("fd00:99::{i}"));
    let verdict = trace(
        lab.manifests.path(),
        "n1",
        "fd00:99::1",
        "fd00:96::70",
        80,
        "TCP",
    );
    assert_eq!(verdict["affinity_seconds"], 600, "{verdict}");
    assert_eq!(
        verdict["backends"],
        serde_json::json!(["[fd00:10:244:1::10]:8080", "[fd00:10:244:2::10]:8080"]),
        "{verdict}"
    );

    let first = ask_from(&node1, "fd00:99::1", to).expect("an answer");
    let (gone, other) = if first == "shop/web-1" {
        ("fd00:10:244:1::10", "shop/web-2")
    } else {
        ("fd00:10:244:2::10", "shop/web-1")
    };
    // What the packet path recorded: the client in its endpoint's set.
    let set = format!(
        "affinity6-fd00-96--70-tcp-80-{}-8080",
        gone.replace(':', "-")
    );
    let list_set = || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &node1, "nft", "list", "set", "inet"])
            .args(["kubewire-proxy", &set])
            .output()
            .expect("running nft")
    };
    let recorded = list_set();
    let recorded = String::from_utf8_lossy(&recorded.stdout);
    assert!(recorded.contains("fd00:99::1 "), "{recorded}");
    eprintln!("{}", recorded.trim());

    remove_endpoint(&lab, "sticky6-v6", gone);
    let removed = Instant::now();
    common::wait_for("the IPv6 client to leave the removed endpoint", || {
        (ask_from(&node1, "fd00:99::1", to).as_deref() == Some(other)).then_some(())
    });
    eprintln!(
        "IPv6 affinity moved to {other} {:?} after its endpoint was removed",
        removed.elapsed()
    );
    for _ in 0..4 {
        assert_eq!(ask_from(&node1, "fd00:99::1", to).as_deref(), Some(other));
    }
    assert!(
        !list_set().status.success(),
        "the removed endpoint's set is still there"
    );
}

/// A UDP client sending every 100 ms to a Service whose endpoint is deleted gets
/// answers from the remaining endpoint within a second (conntrack cleanup).
#[test]
fn udp_client_moves_to_the_remaining_endpoint_within_a_second() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let (lab, _manifests) = extra_lab("kwpu", "nftables");
    let client = netns_with(&lab, "10.244.2.30");
    let socket =
        kubewire_lab::harness::run_in(&client, || std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    socket.connect("10.96.1.54:53").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buffer = [0u8; 256];
    let mut ask = || -> Option<String> {
        socket.send(b"probe\n").ok()?;
        let n = socket.recv(&mut buffer).ok()?;
        let text = String::from_utf8_lossy(&buffer[..n]).to_string();
        text.split_whitespace().next().map(str::to_string)
    };
    let first = common::wait_for("a UDP answer", &mut ask);
    // The same flow stays on its endpoint while it keeps sending.
    for _ in 0..5 {
        if let Some(who) = ask() {
            assert_eq!(who, first);
        }
    }
    let (gone, stays) = if first == "shop/dns" {
        ("10.244.2.53", "shop/dns-2")
    } else {
        ("10.244.1.53", "shop/dns")
    };
    remove_endpoint(&lab, "dns2-abc", gone);
    let deleted = Instant::now();
    let moved = loop {
        if ask().is_some_and(|who| who == stays) {
            break deleted.elapsed();
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "the client never moved to {stays}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("UDP client moved to {stays} {moved:?} after the endpoint was deleted");
    assert!(moved < Duration::from_secs(1), "moved after {moved:?}");

    // Both agents programmed the change and measured it from the trigger time. The
    // client's path needs only one node's agent; the other may still be syncing.
    for node in ["n1", "n2"] {
        let netns = format!("kw-{}-node-{node}", lab.name);
        let what = format!("{node} to count one programming latency");
        let text = common::wait_for(&what, || {
            let (status, text) = http_get(&netns, kubewire_lab::agents::METRICS_ADDR, "/metrics");
            assert_eq!(status, 200);
            let count = text.lines().find(|l| {
                l.starts_with("kubewire_proxy_network_programming_duration_seconds_count")
            })?;
            assert!(
                count.ends_with(" 0") || count.ends_with(" 1"),
                "{node}: {count}"
            );
            count.ends_with(" 1").then_some(text)
        });
        assert!(text.contains("kubewire_proxy_services "), "{text}");
    }
}

/// The conntrack entries of n2's UDP flows to `destination` (`address port`), as
/// /proc/net/nf_conntrack of its netns lists them.
fn udp_entries(netns: &str, address: &str, port: u16) -> Vec<String> {
    let table = common::sh(
        "ip",
        &["netns", "exec", netns, "cat", "/proc/net/nf_conntrack"],
    );
    let (dst, dport) = (format!("dst={address} "), format!("dport={port} "));
    table
        .lines()
        .filter(|l| l.contains(" udp ") && l.contains(&dst) && l.contains(&dport))
        .map(str::to_string)
        .collect()
}

/// A frontend gaining its first endpoint clears the conntrack entries made before
/// it had one. The case kube-proxy guards against, built with real packets: a UDP
/// client sends every 100 ms to n2's address on port 30053 before any Service uses
/// it; n2 has no listener there (ICMP port unreachable, which an unconnected socket
/// ignores), but conntrack confirms the flow at local input, with no NAT, and every
/// packet keeps it alive (UDP entries live 30 s past the last packet). Our rules
/// cannot fix that flow: NAT rules and the `ct state new` checks only see a flow's
/// first packet. Then the Service `shop/late` takes NodePort 30053 without endpoints
/// (still no answer: the flow is not new, so even the reject rule passes it by) and
/// gets one: the agent deletes the entry, the next packet is a new flow, DNATed to
/// the pod, and the client hears from it within a second. Without the cleanup it
/// would not until it paused for 30 s.
#[test]
fn a_frontend_gaining_its_first_endpoint_clears_conntrack_made_before() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let (lab, _manifests) = extra_lab("kwpc", "nftables");
    let node2 = lab.node_netns("n2");
    let client = netns_with(&lab, "10.244.2.30");
    let socket =
        kubewire_lab::harness::run_in(&client, || std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let target: SocketAddr = "192.168.50.12:30053".parse().unwrap();
    let mut buffer = [0u8; 256];
    let mut ask = || -> Option<String> {
        socket.send_to(b"probe\n", target).ok()?;
        let (n, _) = socket.recv_from(&mut buffer).ok()?;
        let text = String::from_utf8_lossy(&buffer[..n]).to_string();
        text.split_whitespace().next().map(str::to_string)
    };
    for _ in 0..5 {
        assert_eq!(ask(), None, "something answers on 30053 already");
    }
    // The flow's entry: n2 itself in the reply direction (no DNAT).
    const NOT_DNATED: &str = "src=192.168.50.12 dst=10.244.2.30 sport=30053 ";
    let stale = udp_entries(&node2, "192.168.50.12", 30053);
    eprintln!("before the Service: {stale:?}");
    assert!(
        stale
            .iter()
            .any(|l| l.contains("src=10.244.2.30 ") && l.contains(NOT_DNATED)),
        "no conntrack entry of the client's flow: {stale:?}"
    );

    let kubeconfig = lab.args("kubeconfig");
    let kc: Vec<&str> = kubeconfig.iter().map(String::as_str).collect();
    let path = success(kubewire(&kc), "lab kubeconfig");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let kube = common::kube_client(&runtime, &path);
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(kube.clone(), "shop");
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(kube, "shop");
    let service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "late", "namespace": "shop"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.1.99",
                 "ports": [{"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP", "nodePort": 30053}]}}))
    .unwrap();
    runtime
        .block_on(services.create(&Default::default(), &service))
        .unwrap();
    // Without endpoints: still the old flow, still no answer.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(ask(), None, "answered before the Service had an endpoint");
    }
    let slice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "late-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "late"}},
        "addressType": "IPv4", "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}],
        "endpoints": [{"addresses": ["10.244.2.53"], "nodeName": "n2", "conditions": {"ready": true}}]}))
    .unwrap();
    runtime
        .block_on(slices.create(&Default::default(), &slice))
        .unwrap();
    let added = Instant::now();
    let answered = loop {
        if ask().as_deref() == Some("shop/dns") {
            break added.elapsed();
        }
        assert!(
            added.elapsed() < Duration::from_secs(10),
            "the client never reached the new endpoint: {:?}",
            udp_entries(&node2, "192.168.50.12", 30053)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("the first endpoint answered {answered:?} after it was added");
    assert!(
        answered < Duration::from_secs(1),
        "answered after {answered:?}"
    );
    let now = udp_entries(&node2, "192.168.50.12", 30053);
    eprintln!("after: {now:?}");
    assert!(
        now.iter().all(|l| !l.contains(NOT_DNATED)),
        "the entry without DNAT is still there: {now:?}"
    );
}

/// `--nodeport-addresses` CIDRs take the node's interface addresses from the kernel:
/// with 10.0.0.0/8, NodePorts answer on the node's pod gateway address (which no
/// Node object lists) and no longer on its InternalIP. `--masquerade-all`: a pod's
/// ClusterIP connection reaches the endpoint from a node address.
#[test]
fn nodeport_addresses_cidrs_and_masquerade_all() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/proxy");
    let lab = TestLab::new("kwpn", false);
    let mut up = lab.args("up");
    up.extend(["--manifests".into(), manifests.display().to_string()]);
    up.extend(AGENT_ARGS.iter().map(|a| a.to_string()));
    up.extend(
        [
            "--agent-arg=--proxy-backend=nftables",
            "--agent-arg=--nodeport-addresses=10.0.0.0/8",
            "--agent-arg=--masquerade-all",
            "--agent-arg=--sync-period=2s",
        ]
        .map(String::from),
    );
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    success(kubewire(&up), "lab up");
    let node1 = format!("kw-{}-node-n1", lab.name);
    let addresses = common::sh("ip", &["netns", "exec", &node1, "ip", "-4", "-o", "addr"]);
    let gateway = addresses
        .split_whitespace()
        .filter_map(|w| w.split_once('/').map(|(ip, _)| ip.to_string()))
        .find(|ip| ip.starts_with("10.244.1."))
        .unwrap_or_else(|| panic!("no pod gateway address on n1: {addresses}"));
    let to = format!("{gateway}:30443");
    let who = common::wait_for("the NodePort on the gateway address", || {
        let mut args = lab.args("connect");
        args.extend(["--from", "shop/client", "--to", &to, "--timeout", "1s"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = kubewire(&args);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    });
    eprintln!("{to} answered: {who}");
    let mut args = lab.args("connect");
    args.extend(
        [
            "--from",
            "external",
            "--to",
            "192.168.50.11:30443",
            "--timeout",
            "1s",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = kubewire(&args);
    assert!(
        !out.status.success(),
        "the InternalIP is outside --nodeport-addresses but answered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for _ in 0..6 {
        let (who, peer) = connect(&lab, "shop/client", "10.96.1.10:80", "TCP");
        assert_ne!(peer, "10.244.2.30", "{who} saw the pod's own address");
        assert!(!peer.is_empty(), "{who} reported no source");
    }
}

//! The datapath agrees with `firewall matrix` (root, no lab): a two-node cluster of
//! network namespaces gets each node's `firewall plan` through `nft -f`, and real TCP
//! and UDP connections between every pair of pods must succeed exactly where the
//! matrix says "allowed". SCTP rows are left out (no SCTP in this kernel).

mod firewall_support;

use firewall_support::cluster::TestCluster;
use firewall_support::{can_use_netns, cases_root, input, options};
use kubewire::firewall::apply::{Applied, Reconciler};
use kubewire::firewall::cluster::Protocol;
use kubewire::firewall::compile;
use kubewire::firewall::matrix::{self, MatrixResult};
use kubewire::firewall::metrics::FirewallMetrics;
use kubewire::firewall::render;
use kubewire::nft::Nft;
use kubewire::runtime::SyncReason;

/// Applies every node's plan for `step`, probes, and returns the disagreements.
fn run_step(cluster: &TestCluster, step: &std::path::Path) -> Vec<String> {
    let input = input(step);
    for node in input.cluster.nodes.keys() {
        let ruleset = compile::compile(&input, &options(node));
        cluster.node(node).nft(&render::full(&ruleset).text());
    }
    let expected = matrix::compute(&input).results;
    let measured = cluster.probe(&input, &expected);
    let expected: Vec<&MatrixResult> = expected
        .iter()
        .filter(|r| r.protocol != Protocol::Sctp)
        .collect();
    assert_eq!(measured.len(), expected.len());
    expected
        .iter()
        .zip(&measured)
        .filter(|(e, m)| e.allowed != m.allowed)
        .map(|(e, m)| {
            format!(
                "{}: {} -> {} {}/{}: matrix {}, packets {}",
                step.strip_prefix(cases_root()).unwrap_or(step).display(),
                e.from,
                e.to,
                e.port,
                e.protocol,
                e.allowed,
                m.allowed
            )
        })
        .collect()
}

fn check_cases(names: &[&str]) {
    if !can_use_netns() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    let root = cases_root();
    let first = root.join(names[0]).join("1");
    let cluster = TestCluster::build(&input(&first));
    let mut failures = Vec::new();
    let mut probed = 0;
    for name in names {
        let case = root.join(name);
        assert!(case.is_dir(), "no case {name}");
        let mut step = 1;
        while case.join(step.to_string()).is_dir() {
            failures.extend(run_step(&cluster, &case.join(step.to_string())));
            probed += 1;
            step += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(probed >= names.len());
}

#[test]
fn ipv4_cases_agree_with_the_matrix() {
    check_cases(&[
        "u01-default-deny-ingress",
        "u02-default-deny-all",
        "u03-allow-from-pod-selector",
        "u11-multiple-pod-and-namespace-selectors",
        "u14-ports",
        "u17-ingress-named-port",
        "u19-egress-named-port",
        "u22-ingress-from-updated-pod",
        "u28-deny-egress-client-side",
        "u30-ingress-any-port-one-protocol",
        "u35-egress-cidr-except",
        "u40-udp-is-not-tcp",
        "s05-ip-block-except-on-pod-ips",
        "s08-end-port",
        "s09-named-port-per-destination",
    ]);
}

#[test]
fn host_network_and_own_node_agree_with_the_matrix() {
    check_cases(&["s14-host-network-and-own-node"]);
}

#[test]
fn dual_stack_cases_agree_with_the_matrix() {
    check_cases(&["s12-dual-stack-ipv4-primary", "s13-dual-stack-ipv6-primary"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_label_change_only_touches_set_elements() {
    if !can_use_netns() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    // u22: x/a (on n1) admits only pods labelled pod=b,pod2=updated; step 2 adds the
    // label to x/b (on n2).
    let case = cases_root().join("u22-ingress-from-updated-pod");
    let (before, after) = (input(&case.join("1")), input(&case.join("2")));
    let cluster = TestCluster::build(&before);
    let mut reconcilers = Vec::new();
    for node in ["n1", "n2"] {
        let mut reconciler = Reconciler::new(
            Nft::in_netns(&cluster.node(node).name),
            FirewallMetrics::default(),
        );
        let applied = reconciler
            .sync(compile::compile(&before, &options(node)), SyncReason::Start)
            .await
            .unwrap();
        assert!(matches!(applied, Applied::Full { .. }));
        reconcilers.push((node, reconciler));
    }
    let row = |input: &kubewire::firewall::FirewallInput| {
        matrix::compute(input)
            .results
            .into_iter()
            .filter(|r| {
                r.from == "x/b" && r.to == "x/a" && r.port == 80 && r.protocol == Protocol::Tcp
            })
            .collect::<Vec<_>>()
    };
    let measured = tokio::task::block_in_place(|| cluster.probe(&before, &row(&before)));
    assert!(
        !measured[0].allowed,
        "x/b cannot reach x/a before the label change"
    );

    let mut changed = 0;
    for (node, reconciler) in &mut reconcilers {
        match reconciler
            .sync(compile::compile(&after, &options(node)), SyncReason::Change)
            .await
            .unwrap()
        {
            Applied::Incremental { transaction } => {
                assert!(
                    transaction.elements_only(),
                    "{node}: {}",
                    transaction.text()
                );
                println!("{node}: {}", transaction.text().trim());
                changed += 1;
            }
            Applied::Nothing => {}
            Applied::Full { .. } => panic!("{node}: a label change rewrote the whole table"),
        }
    }
    assert!(changed >= 1, "the node of x/a must change");
    let measured = tokio::task::block_in_place(|| cluster.probe(&after, &row(&after)));
    assert!(
        measured[0].allowed,
        "x/b reaches x/a after the label change"
    );
}

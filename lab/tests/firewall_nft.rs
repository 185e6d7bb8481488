//! The compiled tables against the real kernel (root, each test in its own network
//! namespace): every conformance plan loads and reads back exactly (every chain, rule
//! and element); incremental diffs reach exactly the table a full load of the new
//! state gives; the reconciler repairs drift in place.

mod firewall_support;

use firewall_support::{NetNs, can_use_netns, cases_root, normalized_table, ruleset};
use kubewire::firewall::apply::{Applied, Reconciler};
use kubewire::firewall::conformance;
use kubewire::firewall::metrics::FirewallMetrics;
use kubewire::firewall::model::{FAMILY, TABLE};
use kubewire::firewall::render;
use kubewire::nft::reconcile::TableLabel;
use kubewire::nft::{Backend, Kernel, Nft, NftMetrics};
use kubewire::runtime::SyncReason;

#[test]
fn every_plan_loads_and_reads_back_unchanged() {
    if !can_use_netns() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    let ns = NetNs::new("plans");
    let id = render::table_id();
    let mut kernel = Kernel::new(Nft::in_netns(&ns.name));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut loaded = 0;
    for case in conformance::cases(&cases_root()).unwrap() {
        for step in &case.steps {
            for node in ["n1", "n2"] {
                let table = render::table(&ruleset(step, node));
                ns.nft(&kubewire::nft::render::replace(&id, &table).text());
                let observed = runtime.block_on(kernel.read(&id)).unwrap().unwrap();
                let differences = kubewire::nft::render::describe(&id, &observed.table, &table);
                assert!(
                    differences.is_empty(),
                    "{} {} on {node}: {differences:?}",
                    case.name,
                    step.display()
                );
                loaded += 1;
            }
        }
    }
    assert!(loaded > 100);
}

/// The transaction the reconciler would create the table with (fingerprints included).
fn load(ruleset: &kubewire::firewall::model::Ruleset) -> String {
    kubewire::nft::render::replace(&render::table_id(), &render::table(ruleset)).text()
}

#[tokio::test]
async fn diffs_reach_the_table_a_full_load_gives() {
    if !can_use_netns() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    let incremental = NetNs::new("incr");
    let fresh = NetNs::new("fresh");
    let mut compared = 0;
    let mut through_netlink = 0;
    let mut kernel = Kernel::new(Nft::in_netns(&incremental.name));
    // Every pair of consecutive steps, both ways, plus jumps between unrelated cases
    // (which change chains, sets and counters, not only elements).
    let cases = conformance::cases(&cases_root()).unwrap();
    let mut pairs = Vec::new();
    for case in &cases {
        for pair in case.steps.windows(2) {
            pairs.push((pair[0].clone(), pair[1].clone()));
            pairs.push((pair[1].clone(), pair[0].clone()));
        }
    }
    for pair in cases.windows(2) {
        pairs.push((pair[0].steps[0].clone(), pair[1].steps[0].clone()));
    }
    for (from, to) in pairs {
        for node in ["n1", "n2"] {
            let old = ruleset(&from, node);
            let new = ruleset(&to, node);
            incremental.nft(&load(&old));
            let diff = render::diff(&old, &new).expect("same hooks: a diff exists");
            if Kernel::element_batches(&diff).is_some() {
                through_netlink += 1;
            }
            // Elements-only diffs go over netlink, the others through nft -f.
            kernel
                .apply(&diff)
                .await
                .unwrap_or_else(|err| panic!("{err}\n{}", diff.text()));
            fresh.nft(&load(&new));
            assert_eq!(
                normalized_table(&incremental),
                normalized_table(&fresh),
                "{} -> {} on {node}:\n{}",
                from.display(),
                to.display(),
                diff.text()
            );
            compared += 1;
        }
    }
    assert!(compared > 40);
    assert!(
        through_netlink > 10,
        "only {through_netlink} diffs were elements only"
    );
}

#[tokio::test]
async fn reconciler_applies_fully_then_incrementally_and_repairs_drift() {
    if !can_use_netns() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    let ns = NetNs::new("reconcile");
    let case = cases_root().join("u22-ingress-from-updated-pod");
    let (before, after) = (
        ruleset(&case.join("1"), "n1"),
        ruleset(&case.join("2"), "n1"),
    );
    let metrics = FirewallMetrics::default();
    let mut reconciler = Reconciler::new(Nft::in_netns(&ns.name), metrics.clone());
    // The nft metrics are the process's, shared with other tests of this table.
    let repairs = || {
        NftMetrics::get()
            .drift_repairs
            .get_or_create(&TableLabel {
                table: TABLE.into(),
            })
            .get()
    };
    let repairs_before = repairs();

    let first = reconciler
        .sync(before.clone(), SyncReason::Start)
        .await
        .unwrap();
    assert!(matches!(first, Applied::Full { .. }), "{first:?}");
    assert_eq!(
        reconciler
            .sync(before.clone(), SyncReason::Change)
            .await
            .unwrap(),
        Applied::Nothing
    );

    // x/b is relabelled into the peer set: one element added, nothing else.
    match reconciler
        .sync(after.clone(), SyncReason::Change)
        .await
        .unwrap()
    {
        Applied::Incremental { transaction } => {
            assert!(transaction.elements_only(), "{}", transaction.text());
            assert_eq!(transaction.size(), 2, "{}", transaction.text());
        }
        other => panic!("expected an incremental update, got {other:?}"),
    }
    let applied = normalized_table(&ns);

    // Periodic check of an untouched table: nothing to do.
    assert_eq!(
        reconciler
            .sync(after.clone(), SyncReason::Periodic)
            .await
            .unwrap(),
        Applied::Nothing
    );
    assert_eq!(repairs(), repairs_before);

    // Someone adds a rule to a policy chain: the next periodic check flushes and
    // refills that chain alone.
    let chain = after
        .chains
        .keys()
        .find(|c| c.starts_with("ingress/x/"))
        .unwrap()
        .clone();
    ns.nft(&format!("add rule inet kubewire {chain} accept\n"));
    let repaired = reconciler
        .sync(after.clone(), SyncReason::Periodic)
        .await
        .unwrap();
    match repaired {
        Applied::Incremental { transaction } => assert!(
            transaction
                .text()
                .starts_with(&format!("flush chain inet kubewire {chain}\n")),
            "{}",
            transaction.text()
        ),
        other => panic!("expected the chain refilled, got {other:?}"),
    }
    assert_eq!(repairs(), repairs_before + 1);
    assert_eq!(normalized_table(&ns), applied);

    // Someone deletes the table.
    ns.exec("nft", &["delete", "table", "inet", "kubewire"]);
    let repaired = reconciler
        .sync(after.clone(), SyncReason::Periodic)
        .await
        .unwrap();
    assert!(matches!(repaired, Applied::Full { .. }), "{repaired:?}");
    assert_eq!(repairs(), repairs_before + 2);
    assert_eq!(normalized_table(&ns), applied);

    // Other tables are never touched, also not by cleanup.
    ns.nft("table inet someone-else {\n chain c {\n  type filter hook forward priority 0; policy accept;\n }\n}\n");
    let nft = Nft::in_netns(&ns.name);
    assert!(nft.delete_table(FAMILY, TABLE).await.unwrap());
    assert!(!nft.delete_table(FAMILY, TABLE).await.unwrap());
    let left = ns.exec("nft", &["list", "tables"]);
    assert_eq!(left.trim(), "table inet someone-else");
}

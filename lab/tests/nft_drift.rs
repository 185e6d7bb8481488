//! Drift and restart for each of kubewire's nftables tables (firewall, proxy,
//! routing) in the real kernel (root; each table in its own network namespace),
//! driven by the shared [`nft::Reconciler`] every controller uses. Someone deletes
//! the table, flushes one chain, deletes one map element, adds a rule to one of our
//! chains: each is repaired on the next periodic check, in place (only the table's
//! deletion needs it created again), and a periodic check with nothing changed reads
//! nothing. Tables that are not ours (a kube-proxy's, a Docker's) are left
//! byte-identical throughout. A reconciler started over an existing table (an agent
//! restarted after `kill -9`) applies nothing: counters and handles survive.

mod common;
mod firewall_support;
mod proxy_support;

use common::Netns;
use kubewire::nft::reconcile::TableLabel;
use kubewire::nft::{self, Applied, Backend, Kernel, Kind, Nft, NftMetrics, Table, TableId};
use kubewire::routing::model::NftRules;

const FOREIGN: &str = "table ip kube-proxy {
\tset cluster-ips { type ipv4_addr; elements = { 10.96.0.1, 10.96.0.10 }; }
\tchain nat-prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr @cluster-ips counter jump services
\t}
\tchain services {
\t\tip daddr 10.96.0.1 tcp dport 443 counter dnat to 192.168.0.1:6443
\t}
}
table inet docker-like {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"docker0\" counter accept
\t}
}
";

/// What `nft -a list` prints for the tables that are not ours (handles included).
fn foreign(ns: &Netns) -> String {
    ns.exec("nft", &["-a", "list", "table", "ip", "kube-proxy"])
        + &ns.exec("nft", &["-a", "list", "table", "inet", "docker-like"])
}

/// `nft -a -j list table` of ours: handles of the table and every object, counters.
fn listing(ns: &Netns, id: &TableId) -> String {
    ns.exec("nft", &["-a", "-j", "list", "table", &id.family, &id.name])
}

/// Held by the tests that repair a table: the repairs counter is one per table name
/// for the whole process, so another test's repair must not land between a test's
/// reading of it and its own.
static REPAIRS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn repairs(id: &TableId) -> u64 {
    NftMetrics::get()
        .drift_repairs
        .get_or_create(&TableLabel {
            table: id.name.clone(),
        })
        .get()
}

struct Case {
    id: TableId,
    table: Table,
    /// A chain with rules to flush and add to.
    chain: String,
    /// A map with elements to delete one of.
    map: String,
}

fn firewall() -> Case {
    let step = firewall_support::cases_root().join("u22-ingress-from-updated-pod/2");
    let ruleset = firewall_support::ruleset(&step, "n1");
    let table = kubewire::firewall::render::table(&ruleset);
    let chain = table
        .chains
        .keys()
        .find(|c| c.starts_with("ingress/x/"))
        .unwrap()
        .clone();
    Case {
        id: kubewire::firewall::render::table_id(),
        table,
        chain,
        map: "ingress-dispatch4".into(),
    }
}

fn proxy() -> Case {
    let map = proxy_support::service_map(10, 3);
    let (ruleset, _) = kubewire::proxy::nftables::compile::compile(&map);
    let table = kubewire::proxy::nftables::ruleset::Lowering::default().lower(&ruleset);
    Case {
        id: kubewire::proxy::nftables::ruleset::table_id(),
        table,
        chain: "services".into(),
        // Keys `address . protocol . port . slot` (numgen), values `address . port`.
        map: "endpoints4".into(),
    }
}

fn routing() -> Case {
    let rules = NftRules {
        cluster_pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        // Loopback traffic is "pod" traffic here, so a ping counts in a rule counter.
        masquerade_sources: vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        ],
        cluster_destinations: vec!["10.0.0.0/8".parse().unwrap()],
    };
    Case {
        id: kubewire::routing::ruleset::table_id(),
        table: kubewire::routing::ruleset::table(&rules),
        chain: "forward".into(),
        map: "masquerade-v4".into(),
    }
}

/// Runs the periodic sync and checks that it repaired the table in place (or, when
/// `created`, created it again), counted once.
async fn repaired(
    reconciler: &mut nft::Reconciler<Kernel>,
    case: &Case,
    what: &str,
    expected: Kind,
) {
    let before = repairs(&case.id);
    let applied = reconciler.sync(&case.table, true).await.unwrap();
    let Applied::Applied(tx) = applied else {
        panic!("{}: {what} was not repaired", case.id);
    };
    assert_eq!(tx.kind, expected, "{}: {what}:\n{}", case.id, tx.text());
    assert_eq!(repairs(&case.id), before + 1, "{}: {what}", case.id);
    let observed = Kernel::new(Nft::default())
        .read(&case.id)
        .await
        .unwrap()
        .unwrap();
    let left = nft::render::describe(&case.id, &observed.table, &case.table);
    assert!(left.is_empty(), "{}: after {what}: {left:?}", case.id);
    // Nothing changed since: the next check reads nothing.
    let reads = reconciler.reads;
    let applied = reconciler.sync(&case.table, true).await.unwrap();
    assert_eq!(applied, Applied::Nothing, "{}: after {what}", case.id);
    assert_eq!(
        reconciler.reads, reads,
        "{}: a quiet check read the table",
        case.id
    );
}

fn drift_and_restart(case: Case) {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let _repairs = REPAIRS.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("kwdrift");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.nft(FOREIGN);
    let others = foreign(&ns);
    let nft = |args: &str| ns.exec("nft", &args.split(' ').collect::<Vec<_>>());
    let (family, name) = (case.id.family.clone(), case.id.name.clone());
    ns.block_on(|| async {
        let mut reconciler = nft::Reconciler::new(Kernel::new(Nft::default()), case.id.clone());
        let created = reconciler.sync(&case.table, false).await.unwrap();
        assert!(
            matches!(&created, Applied::Applied(tx) if tx.kind == Kind::Create),
            "{created:?}"
        );
        let quiet = reconciler.sync(&case.table, true).await.unwrap();
        assert_eq!(quiet, Applied::Nothing);

        nft(&format!("flush chain {family} {name} {}", case.chain));
        repaired(&mut reconciler, &case, "a flushed chain", Kind::Diff).await;

        // The last key: for the proxy a numgen slot other than 0, so the number's
        // byte order matters when the repair sends it over netlink.
        let key = case.table.sets[&case.map]
            .elements
            .keys()
            .last()
            .unwrap()
            .clone();
        nft(&format!(
            "delete element {family} {name} {} {{ {key} }}",
            case.map
        ));
        repaired(&mut reconciler, &case, "a deleted map element", Kind::Diff).await;

        nft(&format!(
            "add rule {family} {name} {} counter accept",
            case.chain
        ));
        repaired(&mut reconciler, &case, "a foreign rule", Kind::Diff).await;

        nft(&format!("delete table {family} {name}"));
        repaired(&mut reconciler, &case, "a deleted table", Kind::Create).await;

        let before = listing(&ns, &case.id);
        // The agent dies (nothing of ours runs) and a new one starts over the table.
        drop(reconciler);
        let mut restarted = nft::Reconciler::new(Kernel::new(Nft::default()), case.id.clone());
        let applied = restarted.sync(&case.table, false).await.unwrap();
        assert_eq!(
            applied,
            Applied::Nothing,
            "{}: a restart changed the table",
            case.id
        );
        assert_eq!(
            listing(&ns, &case.id),
            before,
            "{}: handles or counters changed",
            case.id
        );
    });
    assert_eq!(foreign(&ns), others, "a table that is not ours changed");
}

#[test]
fn firewall_table_drift_is_repaired_in_place_and_survives_restart() {
    drift_and_restart(firewall());
}

#[test]
fn proxy_table_drift_is_repaired_in_place_and_survives_restart() {
    drift_and_restart(proxy());
}

#[test]
fn routing_table_drift_is_repaired_in_place_and_survives_restart() {
    let case = routing();
    drift_and_restart(case);
}

#[test]
fn routing_counters_survive_a_restart() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let case = routing();
    let ns = Netns::new("kwcount");
    ns.ip(&["link", "set", "lo", "up"]);
    let sync = |periodic: bool| {
        ns.block_on(|| async {
            let mut reconciler = nft::Reconciler::new(Kernel::new(Nft::default()), case.id.clone());
            reconciler.sync(&case.table, periodic).await.unwrap()
        })
    };
    assert!(matches!(sync(false), Applied::Applied(_)));
    // Whether the echo comes back does not matter: the request is counted.
    let _ = ns.try_exec("ping", &["-c1", "-W1", "127.0.0.2"]);
    let counted = ns.exec(
        "nft",
        &["-a", "list", "chain", "inet", &case.id.name, "postrouting"],
    );
    assert!(counted.contains("counter packets 1 "), "{counted}");
    // A new reconciler (a restarted agent) over the table: nothing applied.
    assert_eq!(sync(true), Applied::Nothing);
    let after = ns.exec(
        "nft",
        &["-a", "list", "chain", "inet", &case.id.name, "postrouting"],
    );
    assert_eq!(after, counted);
}

#[test]
fn one_tables_commits_do_not_make_the_others_read() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let (firewall, proxy) = (firewall(), proxy());
    let _repairs = REPAIRS.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("kwshare");
    ns.block_on(|| async {
        let new = |case: &Case| nft::Reconciler::new(Kernel::new(Nft::default()), case.id.clone());
        let (mut f, mut p) = (new(&firewall), new(&proxy));
        f.sync(&firewall.table, false).await.unwrap();
        p.sync(&proxy.table, false).await.unwrap();
        // The proxy changes its table (one element fewer) and back.
        let mut smaller = proxy.table.clone();
        let set = smaller.sets.get_mut(&proxy.map).unwrap();
        let key = set.elements.keys().next().unwrap().clone();
        std::sync::Arc::make_mut(set).elements.remove(&key);
        p.sync(&smaller, false).await.unwrap();
        p.sync(&proxy.table, false).await.unwrap();
        assert_eq!(
            f.sync(&firewall.table, true).await.unwrap(),
            Applied::Nothing
        );
        assert_eq!(p.sync(&proxy.table, true).await.unwrap(), Applied::Nothing);
        assert_eq!((f.reads, p.reads), (0, 0));
        // Someone else's commit to the firewall's table is still seen.
        let chain = &firewall.chain;
        let (ok, _, err) = ns.try_exec(
            "nft",
            &["add", "rule", "inet", &firewall.id.name, chain, "counter"],
        );
        assert!(ok, "{err}");
        assert!(matches!(
            f.sync(&firewall.table, true).await.unwrap(),
            Applied::Applied(_)
        ));
        assert_eq!(f.reads, 1);
    });
}

#[test]
fn named_counters_are_read_over_netlink_from_our_table_only() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let ns = Netns::new("kwcounters");
    ns.nft(
        "table inet ours {\n\tcounter drops { packets 5 bytes 500 }\n\tcounter other { packets 0 bytes 0 }\n}\n\
         table inet theirs {\n\tcounter drops { packets 9 bytes 900 }\n}\n",
    );
    let packets = ns.block_on(|| async {
        let mut kernel = Kernel::new(Nft::default());
        let ours = kernel.packets(&TableId::new("inet", "ours")).await.unwrap();
        let missing = kernel.packets(&TableId::new("inet", "none")).await.unwrap();
        (ours, missing)
    });
    assert_eq!(
        packets.0,
        [("drops".to_string(), 5), ("other".to_string(), 0)].into()
    );
    assert!(packets.1.is_empty());
}

/// `nft list table` (no handles): what the kernel holds, as nft prints it.
fn printed(ns: &Netns, id: &TableId) -> String {
    ns.exec("nft", &["list", "table", &id.family, &id.name])
}

/// Each table created over netlink (the structure compiled by nft into a staging
/// table and copied, the elements encoded by us) is the table `nft -f` creates, to
/// the letter as nft lists it; likewise replacing it; the staging table is gone
/// after each; the read back equals what was wanted.
fn loaded_over_netlink(case: Case) {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let ns = Netns::new("kwload");
    let (family, name) = (case.id.family.clone(), case.id.name.clone());
    ns.block_on(|| async {
        let mut by_nft = Kernel::new(Nft::default()).with_netlink_load_from(usize::MAX);
        let create = nft::render::create(&case.id, &case.table);
        by_nft.apply(&create).await.unwrap();
        let expected = printed(&ns, &case.id);
        ns.exec("nft", &["delete", "table", &family, &name]);

        let mut by_netlink = Kernel::new(Nft::default()).with_netlink_load_from(0);
        for tx in [create, nft::render::replace(&case.id, &case.table)] {
            by_netlink.apply(&tx).await.unwrap();
            assert_eq!(
                printed(&ns, &case.id),
                expected,
                "{}: {:?}",
                case.id,
                tx.kind
            );
            let tables = ns.exec("nft", &["list", "tables"]);
            assert!(!tables.contains("staging"), "{tables}");
            let observed = by_netlink.read(&case.id).await.unwrap().unwrap();
            let left = nft::render::describe(&case.id, &observed.table, &case.table);
            assert!(left.is_empty(), "{}: {left:?}", case.id);
        }
        // Through a reconciler: both commits of the load (the staging table's, then
        // ours) are known as its own, so the next check reads nothing.
        ns.exec("nft", &["delete", "table", &family, &name]);
        let kernel = Kernel::new(Nft::default()).with_netlink_load_from(0);
        let mut reconciler = nft::Reconciler::new(kernel, case.id.clone());
        let created = reconciler.sync(&case.table, false).await.unwrap();
        assert_eq!(created.kind(), Some(Kind::Create));
        assert_eq!(
            reconciler.sync(&case.table, true).await.unwrap(),
            Applied::Nothing
        );
        assert_eq!(
            reconciler.reads, 0,
            "{}: a quiet check read the table",
            case.id
        );
    });
}

#[test]
fn the_firewall_table_loads_over_netlink_as_nft_loads_it() {
    loaded_over_netlink(firewall());
}

#[test]
fn the_proxy_table_loads_over_netlink_as_nft_loads_it() {
    loaded_over_netlink(proxy());
}

#[test]
fn the_routing_table_loads_over_netlink_as_nft_loads_it() {
    loaded_over_netlink(routing());
}

/// While no agent runs, someone replaces one of our rules with another under the
/// same comment: the restarted agent's first sync puts ours back (it knows how its
/// rules look in the kernel before it reads them), and the agent after that finds
/// nothing to do.
fn edited_while_down(case: Case) {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let ns = Netns::new("kwedit");
    let (family, name) = (case.id.family.clone(), case.id.name.clone());
    ns.block_on(|| async {
        let start = || nft::Reconciler::new(Kernel::new(Nft::default()), case.id.clone());
        start().sync(&case.table, false).await.unwrap();
        let before = printed(&ns, &case.id);
        let chain = ns.exec("nft", &["-a", "list", "chain", &family, &name, &case.chain]);
        let (handle, comment) = chain
            .lines()
            .find_map(|line| {
                let (_, handle) = line.rsplit_once("# handle ")?;
                let (_, comment) = line.split_once(" comment \"")?;
                let (comment, _) = comment.split_once('"')?;
                Some((handle.trim().to_string(), comment.to_string()))
            })
            .expect("a rule of ours with a comment");
        ns.nft(&format!(
            "replace rule {family} {name} {} handle {handle} meta mark set 0x2a comment \"{comment}\"\n",
            case.chain
        ));
        assert!(printed(&ns, &case.id).contains("mark set 0x0000002a"));

        let applied = start().sync(&case.table, false).await.unwrap();
        assert!(matches!(applied, Applied::Applied(_)), "{}: not repaired", case.id);
        assert_eq!(printed(&ns, &case.id), before, "{}", case.id);
        let tables = ns.exec("nft", &["list", "tables"]);
        assert!(!tables.contains("staging"), "{tables}");
        assert_eq!(
            start().sync(&case.table, false).await.unwrap(),
            Applied::Nothing,
            "{}: a restart after the repair changed the table",
            case.id
        );
    });
}

#[test]
fn a_firewall_rule_edited_while_the_agent_was_down_is_repaired_after_restart() {
    edited_while_down(firewall());
}

#[test]
fn a_proxy_rule_edited_while_the_agent_was_down_is_repaired_after_restart() {
    edited_while_down(proxy());
}

#[test]
fn a_routing_rule_edited_while_the_agent_was_down_is_repaired_after_restart() {
    edited_while_down(routing());
}

/// A netlink batch whose first message the kernel refuses (a verdict naming a
/// chain that does not exist) fails whole, with that message's set named, though
/// only its last message asks for an acknowledgement; nothing of it is committed.
#[test]
fn a_refused_element_batch_fails_whole_and_names_its_set() {
    if !kubewire_lab::harness::require_root() {
        return;
    }
    let ns = Netns::new("kwrefuse");
    ns.nft(
        "table inet t {\n\tmap m { type ipv4_addr : verdict; }\n\tset s { type ipv4_addr; }\n\tchain c {\n\t}\n}\n",
    );
    let error = ns.block_on(|| async {
        let set = |map: bool, declaration: &str| {
            std::sync::Arc::new(nft::Set::new(map, declaration, None))
        };
        let id = TableId::new("inet", "t");
        let tx = nft::Transaction {
            table: id.clone(),
            kind: Kind::Diff,
            ops: vec![
                nft::Op::AddElements(
                    set(true, "type ipv4_addr : verdict"),
                    "m".into(),
                    vec![("10.0.0.1".into(), "jump missing".into())],
                ),
                nft::Op::AddElements(
                    set(false, "type ipv4_addr"),
                    "s".into(),
                    vec![("10.0.0.2".into(), String::new())],
                ),
            ],
        };
        assert!(Kernel::element_batches(&tx).is_some(), "sent over netlink");
        let mut kernel = Kernel::new(Nft::default());
        let error = kernel.apply(&tx).await.unwrap_err().to_string();
        // The socket stays usable.
        kernel.generation().await.unwrap();
        error
    });
    assert!(error.contains("set m"), "{error}");
    let listed = ns.exec("nft", &["list", "table", "inet", "t"]);
    assert!(!listed.contains("10.0.0.2"), "{listed}");
}

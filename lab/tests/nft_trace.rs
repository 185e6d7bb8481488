//! The compiled firewall tables decide like the policies (rootless): for every
//! conformance case, step and matrix row, the packet traced through the nftables
//! tables the compiler produces for the nodes it crosses ([`kubewire::nft::trace`]
//! over the same [`kubewire::nft::Table`] the reconciler applies) is accepted exactly
//! when `firewall matrix` says the connection is allowed.

mod firewall_support;

use std::collections::BTreeMap;

use firewall_support::{cases_root, input, ruleset};
use kubewire::firewall::{conformance, evaluate, matrix, render};
use kubewire::nft::trace::{Packet, Verdict, trace};

#[test]
fn traced_tables_agree_with_the_matrix_on_every_conformance_case() {
    let mut rows = 0;
    let mut failures = Vec::new();
    for case in conformance::cases(&cases_root()).unwrap() {
        for step in &case.steps {
            let input = input(step);
            let mut tables = BTreeMap::new();
            for row in matrix::compute(&input).results {
                let (Some(src), Some(dst)) =
                    (input.cluster.pod(&row.from), input.cluster.pod(&row.to))
                else {
                    panic!("{}: no pod {} or {}", step.display(), row.from, row.to);
                };
                let Some(connection) = evaluate::pod_connection(src, dst, row.port, row.protocol)
                else {
                    assert!(!row.allowed);
                    continue;
                };
                // The nodes whose forward hook the packet crosses: the source's, unless
                // it is the host itself (host network) or goes to the host; the
                // destination's, unless that is where it came from.
                let mut nodes: Vec<&str> = Vec::new();
                if let (false, Some(node)) = (src.host_network, src.node.as_deref())
                    && !(dst.host_network && dst.node.as_deref() == Some(node))
                {
                    nodes.push(node);
                }
                if let (false, Some(node)) = (dst.host_network, dst.node.as_deref())
                    && !(src.host_network && src.node.as_deref() == Some(node))
                    && !nodes.contains(&node)
                {
                    nodes.push(node);
                }
                let packet = Packet::new(
                    connection.src_ip,
                    connection.dst_ip,
                    row.protocol.as_str(),
                    row.port,
                );
                let mut accepted = true;
                let mut path = Vec::new();
                for node in nodes {
                    let table = tables
                        .entry(node.to_string())
                        .or_insert_with(|| render::table(&ruleset(step, node)));
                    let traced = trace(table, "forward", &packet)
                        .unwrap_or_else(|err| panic!("{}: {err}", step.display()));
                    path.extend(traced.path.iter().map(|p| format!("{node} {p}")));
                    if traced.verdict == Verdict::Drop {
                        accepted = false;
                        break;
                    }
                }
                rows += 1;
                if accepted != row.allowed {
                    failures.push(format!(
                        "{} {} -> {} {}/{}: matrix {}, tables {}: {path:#?}",
                        step.display(),
                        row.from,
                        row.to,
                        row.port,
                        row.protocol.as_str(),
                        row.allowed,
                        accepted
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {rows} rows differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(rows > 1000, "only {rows} rows");
}

//! Text output of the lab for people: the probe matrix as a table (rows: from,
//! columns: to:port/protocol, numbered with a legend so wide clusters stay
//! readable), the Service probes one per line, and what each agent's controllers did.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::agents::NodeActivity;
use super::probe::{MatrixResult, ProbeReport, ServiceKind, ServiceResult};

pub fn matrix_table(results: &[MatrixResult]) -> String {
    let mut rows: Vec<&str> = results.iter().map(|r| r.from.as_str()).collect();
    rows.sort();
    rows.dedup();
    let mut columns: Vec<(&str, u16, &str)> = results
        .iter()
        .map(|r| (r.to.as_str(), r.port, r.protocol.as_str()))
        .collect();
    columns.sort();
    columns.dedup();
    let cells: BTreeMap<(&str, (&str, u16, &str)), bool> = results
        .iter()
        .map(|r| {
            (
                (
                    r.from.as_str(),
                    (r.to.as_str(), r.port, r.protocol.as_str()),
                ),
                r.allowed,
            )
        })
        .collect();
    let mut out = String::new();
    if results.is_empty() {
        out.push_str("no pod declares a port: nothing to probe\n");
        return out;
    }
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(4).max(4);
    let _ = write!(out, "{:width$}", "from");
    for index in 1..=columns.len() {
        let _ = write!(out, " {:>3}", index);
    }
    out.push('\n');
    for row in &rows {
        let _ = write!(out, "{row:width$}");
        for column in &columns {
            let mark = match cells.get(&(*row, *column)) {
                Some(true) => "Y",
                Some(false) => ".",
                None => "-",
            };
            let _ = write!(out, " {mark:>3}");
        }
        out.push('\n');
    }
    out.push_str("\ncolumns (to):\n");
    for (index, (to, port, protocol)) in columns.iter().enumerate() {
        let _ = writeln!(out, "{:>4}  {to} {port}/{protocol}", index + 1);
    }
    let allowed = results.iter().filter(|r| r.allowed).count();
    let _ = writeln!(
        out,
        "\nY = answered by the destination pod, . = no answer, - = not probed (self).\n{allowed} of {} probes answered.",
        results.len()
    );
    out
}

pub fn service_lines(results: &[ServiceResult], tries: u32) -> String {
    let mut out = String::from("services:\n");
    if results.is_empty() {
        out.push_str("  (no Service ports)\n");
    }
    for r in results {
        let kind = match r.kind {
            ServiceKind::ClusterIP => "clusterIP",
            ServiceKind::NodePort => "nodePort",
            ServiceKind::ExternalIP => "externalIP",
            ServiceKind::LoadBalancer => "loadBalancer",
        };
        let node = r
            .node
            .as_deref()
            .map(|n| format!(" (node {n})"))
            .unwrap_or_default();
        let answered = if r.answered_by.is_empty() {
            "nobody".to_string()
        } else {
            r.answered_by.join(", ")
        };
        let _ = writeln!(
            out,
            "  {} {kind} {}:{}/{}{node} from {}: answered by {answered}; {} of {tries} tries failed",
            r.service, r.address, r.port, r.protocol, r.from, r.failures
        );
    }
    out
}

pub fn probe_text(report: &ProbeReport, tries: u32) -> String {
    let mut out = matrix_table(&report.results);
    if let Some(services) = &report.services {
        out.push('\n');
        out.push_str(&service_lines(services, tries));
    }
    out
}

/// `node: controller N syncs (M failed), …` per node.
pub fn controller_summary(per_node: &[NodeActivity]) -> String {
    let mut out = String::from("controllers (syncs per agent, from /metrics):\n");
    for (node, activity) in per_node {
        match activity {
            Ok(list) if list.is_empty() => {
                let _ = writeln!(out, "  {node}: no controller reported a sync");
            }
            Ok(list) => {
                let parts: Vec<String> = list
                    .iter()
                    .map(|a| format!("{} {} syncs ({} failed)", a.controller, a.syncs, a.failed))
                    .collect();
                let _ = writeln!(out, "  {node}: {}", parts.join(", "));
            }
            Err(err) => {
                let _ = writeln!(out, "  {node}: metrics unavailable: {err}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Protocol;

    fn cell(from: &str, to: &str, port: u16, allowed: bool) -> MatrixResult {
        MatrixResult {
            from: from.into(),
            to: to.into(),
            port,
            protocol: Protocol::Tcp,
            allowed,
        }
    }

    #[test]
    fn matrix_table_has_rows_columns_and_a_legend() {
        let table = matrix_table(&[cell("x/a", "x/b", 80, true), cell("x/b", "x/a", 80, false)]);
        assert_eq!(
            table,
            "from   1   2\n\
             x/a    -   Y\n\
             x/b    .   -\n\
             \ncolumns (to):\n   1  x/a 80/TCP\n   2  x/b 80/TCP\n\
             \nY = answered by the destination pod, . = no answer, - = not probed (self).\n\
             1 of 2 probes answered.\n"
        );
    }
}

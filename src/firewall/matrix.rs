//! `firewall matrix`: the reachability the policies imply for every ordered pair of
//! distinct pods and every (containerPort, protocol) the destination declares. The
//! destination is addressed at its primary IP, from the source's IP of that family (a
//! source without one cannot connect: not allowed). `lab probe` measures the same
//! rows with real packets, in the same JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::cluster::Protocol;
use super::evaluate;
use super::input::FirewallInput;

/// The JSON document of `firewall matrix --format json` and `lab probe --format json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    pub results: Vec<MatrixResult>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MatrixResult {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub allowed: bool,
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Protocol::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown protocol `{text}`")))
    }
}

/// Computes the matrix; rows sorted by (from, to, port, protocol).
pub fn compute(input: &FirewallInput) -> Matrix {
    let pods = &input.cluster.pods;
    let mut results = Vec::new();
    for src in pods {
        for dst in pods {
            if std::ptr::eq(src, dst) {
                continue;
            }
            for (port, protocol) in dst.served_ports() {
                let allowed =
                    evaluate::pod_connection(src, dst, port, protocol).is_some_and(|connection| {
                        evaluate::allowed(&input.cluster, &input.policies, &connection)
                    });
                results.push(MatrixResult {
                    from: src.key(),
                    to: dst.key(),
                    port,
                    protocol,
                    allowed,
                });
            }
        }
    }
    results.sort();
    Matrix { results }
}

/// One truth table's cells: (from, to) → allowed.
type Cells<'a> = BTreeMap<(&'a str, &'a str), bool>;

/// One truth table per (port, protocol): rows are sources, columns destinations;
/// `.` allowed, `X` denied, blank when the destination does not serve the port.
pub fn render_text(matrix: &Matrix) -> String {
    let mut pods = BTreeSet::new();
    let mut tables: BTreeMap<(u16, Protocol), Cells> = BTreeMap::new();
    for row in &matrix.results {
        pods.insert(row.from.as_str());
        pods.insert(row.to.as_str());
        tables
            .entry((row.port, row.protocol))
            .or_default()
            .insert((row.from.as_str(), row.to.as_str()), row.allowed);
    }
    let pods: Vec<&str> = pods.into_iter().collect();
    let width = pods.iter().map(|p| p.len()).max().unwrap_or(1).max(4);
    let mut out = String::new();
    if tables.is_empty() {
        out.push_str("no pod declares a container port; nothing to show\n");
    }
    for ((port, protocol), cells) in &tables {
        let allowed = cells.values().filter(|a| **a).count();
        let _ = writeln!(
            out,
            "{port}/{protocol}: {allowed} of {} allowed (rows: from, columns: to; . allowed, X denied)",
            cells.len()
        );
        let _ = write!(out, "{:width$}", "");
        for to in &pods {
            let _ = write!(out, " {to:>width$}");
        }
        out.push('\n');
        for from in &pods {
            let _ = write!(out, "{from:width$}");
            for to in &pods {
                let mark = match cells.get(&(*from, *to)) {
                    Some(true) => ".",
                    Some(false) => "X",
                    None if from == to => "-",
                    None => "",
                };
                let _ = write!(out, " {mark:>width$}");
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

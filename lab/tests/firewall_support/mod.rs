//! Helpers shared by the firewall's root tests: the harness's network namespaces,
//! comparing tables, and loading conformance steps.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kubewire::cache::manifests;
use kubewire::firewall::FirewallInput;
use kubewire::firewall::compile::{self, CompileOptions};
use kubewire::firewall::model::Ruleset;

/// Whether this process may create network namespaces (root tests skip otherwise).
pub fn can_use_netns() -> bool {
    if !kubewire_lab::harness::require_root() {
        return false;
    }
    let has_nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nft {
        kubewire_lab::harness::skip("no nft binary (apt: nftables)");
    }
    has_nft
}

/// The harness's namespace, under the name these tests know it by.
pub use kubewire_lab::harness::Netns as NetNs;

/// The kubewire table as JSON with handles dropped and everything sorted, so two
/// listings compare equal iff the tables are equal.
pub fn normalized_table(ns: &NetNs) -> serde_json::Value {
    let text = ns.exec("nft", &["-j", "list", "table", "inet", "kubewire"]);
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    normalize(&mut value);
    let mut items: Vec<serde_json::Value> = value["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("metainfo").is_none())
        .cloned()
        .collect();
    items.sort_by_key(|i| i.to_string());
    serde_json::Value::Array(items)
}

fn normalize(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("handle");
            map.remove("packets");
            map.remove("bytes");
            for (key, inner) in map.iter_mut() {
                normalize(inner);
                if key == "elem"
                    && let serde_json::Value::Array(elements) = inner
                {
                    elements.sort_by_key(|e| e.to_string());
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Runs a command on the host; panics on failure.
pub use kubewire_lab::harness::sh as run;

pub fn cases_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/netpol/cases")
}

pub fn input(step: &Path) -> FirewallInput {
    FirewallInput::from_snapshot(&manifests::load_snapshot(step).unwrap())
}

pub fn options(node: &str) -> CompileOptions {
    CompileOptions {
        node: node.into(),
        default_deny: true,
        log_group: Some(7),
    }
}

pub fn ruleset(step: &Path, node: &str) -> Ruleset {
    compile::compile(&input(step), &options(node))
}

pub mod cluster;

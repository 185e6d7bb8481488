//! Helpers shared by the firewall's root tests: network namespaces that clean up after
//! themselves (also on panic), and loading conformance steps.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use kubewire::cache::manifests;
use kubewire::firewall::FirewallInput;
use kubewire::firewall::compile::{self, CompileOptions};
use kubewire::firewall::model::Ruleset;

static NEXT: AtomicUsize = AtomicUsize::new(0);

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

/// A named network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "kwfw-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let this = Self { name };
        // No duplicate address detection: addresses (link-local ones too) are usable
        // at once, so IPv6 works from the first packet.
        for key in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            this.exec(&["sysctl", "-qw", key]);
        }
        this.exec(&["ip", "link", "set", "lo", "up"]);
        this
    }

    /// Runs a command inside the namespace; panics on failure.
    pub fn exec(&self, argv: &[&str]) -> String {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(argv);
        run("ip", &args)
    }

    /// Runs a command inside the namespace; returns (success, stdout, stderr).
    pub fn try_exec(&self, argv: &[&str]) -> (bool, String, String) {
        let output = Command::new("ip")
            .args(["netns", "exec", self.name.as_str()])
            .args(argv)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `nft -f -` inside the namespace.
    pub fn nft(&self, text: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.name.as_str(), "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "nft -f failed in {}: {}\n--- transaction ---\n{}",
            self.name,
            String::from_utf8_lossy(&output.stderr),
            text.chars().take(4000).collect::<String>()
        );
    }

    /// The kubewire table as JSON with handles dropped and everything sorted, so two
    /// listings compare equal iff the tables are equal.
    pub fn normalized_table(&self) -> serde_json::Value {
        let text = self.exec(&["nft", "-j", "list", "table", "inet", "kubewire"]);
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

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

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

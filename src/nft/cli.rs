//! The `nft` CLI: one process per call, a whole transaction per `nft -f`, JSON
//! listings, deleting a table; and the bridge netfilter switch. It knows no table of
//! its own: each caller names its table.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("`{command}` printed JSON that does not parse: {message}")]
    Json { command: String, message: String },
    #[error("table {family} {table} does not exist")]
    NoTable { family: String, table: String },
    /// A batch sent to nf_tables over netlink (not through the CLI) failed.
    #[error("{0}")]
    Netlink(String),
}

/// How to run `nft`: by default the `nft` on $PATH in the current network namespace.
#[derive(Clone, Debug)]
pub struct Nft {
    argv: Vec<String>,
    /// The network namespace file it runs in, for updates sent over netlink instead.
    netns: Option<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Self {
            argv: vec!["nft".into()],
            netns: None,
        }
    }
}

impl Nft {
    /// `nft` inside the named network namespace (`ip netns exec NAME nft`).
    pub fn in_netns(name: &str) -> Self {
        Self {
            argv: ["ip", "netns", "exec", name, "nft"]
                .into_iter()
                .map(String::from)
                .collect(),
            netns: Some(format!("/run/netns/{name}")),
        }
    }

    /// The network namespace file `nft` runs in (`/run/netns/NAME`); `None` for the
    /// current one. Whoever sends nf_tables messages over netlink itself sends them
    /// from there.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    fn command(&self, args: &[&str]) -> (Command, String) {
        let mut command = Command::new(&self.argv[0]);
        command.args(&self.argv[1..]).args(args);
        command.kill_on_drop(true);
        (command, format!("nft {}", args.join(" ")))
    }

    fn cannot_run(&self, source: std::io::Error) -> NftError {
        NftError::Spawn {
            program: self.argv[0].clone(),
            source,
        }
    }

    /// Runs `text` as one `nft -f` transaction: all of it applies, or none.
    pub async fn apply(&self, text: &str) -> Result<(), NftError> {
        let (mut command, label) = self.command(&["-f", "-"]);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.cannot_run(source))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means nft exited early; its status and stderr say why.
            let _ = stdin.write_all(text.as_bytes()).await;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|source| self.cannot_run(source))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(NftError::Failed {
                command: label,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    /// `nft -j [-t] list table FAMILY TABLE`: `terse` leaves set elements out, which
    /// is what makes it cheap. [`NftError::NoTable`] when the table does not exist.
    pub async fn list_table(
        &self,
        family: &str,
        table: &str,
        terse: bool,
    ) -> Result<Value, NftError> {
        let mut args = vec!["-j"];
        if terse {
            args.push("-t");
        }
        args.extend(["list", "table", family, table]);
        self.list_json(&args)
            .await?
            .ok_or_else(|| NftError::NoTable {
                family: family.to_string(),
                table: table.to_string(),
            })
    }

    /// Runs a JSON listing (`args` include `-j`); `Ok(None)` when what it lists does
    /// not exist.
    pub async fn list_json(&self, args: &[&str]) -> Result<Option<Value>, NftError> {
        let (mut command, label) = self.command(args);
        let output = command
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| self.cannot_run(source))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(NftError::Failed {
                command: label,
                stderr,
            });
        }
        serde_json::from_slice(&output.stdout)
            .map(Some)
            .map_err(|err| NftError::Json {
                command: label,
                message: err.to_string(),
            })
    }

    /// Deletes `table` of `family`, and the staging table a failed full load may have
    /// left next to it; `Ok(false)` when there was no `table`.
    pub async fn delete_table(&self, family: &str, table: &str) -> Result<bool, NftError> {
        let deleted = match self
            .apply(&format!("delete table {family} {table}\n"))
            .await
        {
            Ok(()) => true,
            Err(NftError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                false
            }
            Err(err) => return Err(err),
        };
        // A staging table a failed full load left behind goes too; adding it first
        // makes the delete succeed whether it is there or not.
        let staging = super::model::TableId::new(family, table).staging();
        self.apply(&format!(
            "add table {family} {name}\ndelete table {family} {name}\n",
            name = staging.name
        ))
        .await?;
        Ok(deleted)
    }
}

/// The objects of an `nft -j` listing (its `nftables` array); empty when it has none.
pub fn listing_items(listing: &Value) -> &[Value] {
    listing
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Makes bridged pod-to-pod traffic on this node traverse the inet forward hook
/// (`net.bridge.bridge-nf-call-ip{,6}tables`), as pods on one bridge never reach the
/// routing path otherwise. Loads `br_netfilter` first when its switches are absent
/// (a distribution kernel builds it as a module, loaded by nothing else). Returns the
/// switches that do not exist (no bridge netfilter in this kernel or namespace).
pub fn enable_bridge_netfilter() -> Vec<String> {
    if !Path::new("/proc/sys/net/bridge").exists() {
        // Best effort: without modprobe (or the module) the switches stay missing
        // and are reported below.
        let _ = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let mut missing = Vec::new();
    for name in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let path = Path::new("/proc/sys/net/bridge").join(name);
        let current = std::fs::read_to_string(&path);
        match current {
            Ok(value) if value.trim() == "1" => {}
            Ok(_) => {
                if let Err(err) = std::fs::write(&path, "1") {
                    missing.push(format!("{}: {err}", path.display()));
                }
            }
            Err(err) => missing.push(format!("{}: {err}", path.display())),
        }
    }
    missing
}

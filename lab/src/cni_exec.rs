//! Runs a CNI network configuration list the way a container runtime does (CNI spec
//! 1.0, "Network configuration lists"): ADD calls each plugin in order, giving it the
//! list's `name` and `cniVersion`, the previous plugin's result as `prevResult`, and
//! the capability arguments it declares as `runtimeConfig`; DEL calls them in reverse
//! order, each with the ADD's final result. The lab wires pods with it; tests use it
//! to check that the real plugins accept kubewire's conflist.
//!
//! A failed ADD is followed by a DEL of the whole chain (as runtimes do), so a failed
//! attachment leaves no lease or veth behind. Plugins can run inside a named network
//! namespace (the node's) through `ip netns exec`, which also gives them that
//! namespace's /sys.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Map, Value};

/// One pod interface to attach or detach.
#[derive(Clone, Debug, Default)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: host-local keys its leases by it.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace, as a path.
    pub netns: PathBuf,
    /// `CNI_IFNAME`, e.g. `eth0`.
    pub ifname: String,
    /// `CNI_ARGS` pairs, e.g. `("IP", "10.244.1.5")` for a static host-local address
    /// (sent as `IgnoreUnknown=1;IP=10.244.1.5`).
    pub cni_args: Vec<(String, String)>,
    /// Capability arguments (e.g. `portMappings`), given as `runtimeConfig` to the
    /// plugins whose `capabilities` enable them.
    pub capability_args: Map<String, Value>,
}

/// Where the plugin binaries are and where they run.
#[derive(Clone, Debug)]
pub struct PluginRunner {
    /// `CNI_PATH`: searched in order for each plugin's `type`.
    pub plugin_dirs: Vec<PathBuf>,
    /// Run the plugins inside this named network namespace (`ip netns exec NAME`);
    /// else in the caller's.
    pub node_netns: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CniExecError {
    #[error("the conflist is not usable: {0}")]
    BadConflist(String),
    #[error("CNI plugin `{plugin}` not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("CNI {command}: running plugin `{plugin}`: {source}")]
    Spawn {
        command: &'static str,
        plugin: String,
        source: std::io::Error,
    },
    #[error("CNI {command}: plugin `{plugin}` (#{position} of the chain) failed: {message}")]
    PluginFailed {
        command: &'static str,
        plugin: String,
        position: usize,
        message: String,
    },
    #[error("CNI {command}: plugin `{plugin}` returned a result that is not CNI JSON: {message}")]
    BadResult {
        command: &'static str,
        plugin: String,
        message: String,
    },
}

/// The result of an ADD: the final plugin's output, kept whole for the DEL.
#[derive(Clone, Debug)]
pub struct CniResult {
    pub raw: Value,
    pub interfaces: Vec<ResultInterface>,
    pub ips: Vec<ResultIp>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ResultInterface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ResultIp {
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub interface: Option<usize>,
}

impl CniResult {
    pub fn from_value(raw: Value) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Parts {
            #[serde(default)]
            interfaces: Vec<ResultInterface>,
            #[serde(default)]
            ips: Vec<ResultIp>,
        }
        let parts: Parts = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        Ok(Self {
            raw,
            interfaces: parts.interfaces,
            ips: parts.ips,
        })
    }

    /// The addresses given to the pod (without prefix length).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        self.ips.iter().map(|ip| ip.address.addr()).collect()
    }
}

#[derive(Clone, Copy)]
enum CniCommand {
    Add,
    Del,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

impl PluginRunner {
    /// Attaches the pod: ADD through every plugin of `conflist`, in order.
    pub fn add(
        &self,
        conflist: &Value,
        attachment: &Attachment,
    ) -> Result<CniResult, CniExecError> {
        let (header, plugins) = split_conflist(conflist)?;
        let mut prev: Option<Value> = None;
        for (index, plugin) in plugins.iter().enumerate() {
            let config = plugin_config(&header, plugin, prev.as_ref(), &attachment.capability_args);
            match self.invoke(CniCommand::Add, index, &config, attachment) {
                Ok(result) => prev = Some(result),
                Err(err) => {
                    if let Err(cleanup) = self.del(conflist, attachment, None) {
                        tracing::warn!(error = %cleanup, "DEL after a failed CNI ADD failed too");
                    }
                    return Err(err);
                }
            }
        }
        let plugin = plugins
            .last()
            .map(plugin_type)
            .unwrap_or_default()
            .to_string();
        let raw = prev.ok_or_else(|| CniExecError::BadConflist("it has no plugins".into()))?;
        CniResult::from_value(raw).map_err(|message| CniExecError::BadResult {
            command: "ADD",
            plugin,
            message,
        })
    }

    /// Detaches the pod: DEL through every plugin in reverse order, each given
    /// `prev_result` (the ADD's result, when the caller kept it). Every plugin is
    /// called even when one fails; the first failure is returned.
    pub fn del(
        &self,
        conflist: &Value,
        attachment: &Attachment,
        prev_result: Option<&CniResult>,
    ) -> Result<(), CniExecError> {
        let (header, plugins) = split_conflist(conflist)?;
        let prev = prev_result.map(|r| &r.raw);
        let mut first_error = None;
        for (index, plugin) in plugins.iter().enumerate().rev() {
            let config = plugin_config(&header, plugin, prev, &attachment.capability_args);
            if let Err(err) = self.invoke(CniCommand::Del, index, &config, attachment) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniExecError> {
        let valid_name = !plugin.is_empty() && !plugin.contains('/') && plugin != "..";
        self.plugin_dirs
            .iter()
            .map(|dir| dir.join(plugin))
            .find(|path| valid_name && path.is_file())
            .ok_or_else(|| CniExecError::PluginNotFound {
                plugin: plugin.to_string(),
                dirs: self
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    fn invoke(
        &self,
        command: CniCommand,
        index: usize,
        config: &Value,
        attachment: &Attachment,
    ) -> Result<Value, CniExecError> {
        let plugin = plugin_type(config).to_string();
        let path = self.find_plugin(&plugin)?;
        let mut process = match &self.node_netns {
            Some(netns) => {
                let mut process = Command::new("ip");
                process.args(["netns", "exec", netns]).arg(&path);
                process
            }
            None => Command::new(&path),
        };
        let cni_path = std::env::join_paths(&self.plugin_dirs)
            .map_err(|e| CniExecError::BadConflist(format!("plugin directories: {e}")))?;
        process
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &attachment.container_id)
            .env("CNI_NETNS", &attachment.netns)
            .env("CNI_IFNAME", &attachment.ifname)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match cni_args_env(&attachment.cni_args) {
            Some(args) => process.env("CNI_ARGS", args),
            None => process.env_remove("CNI_ARGS"),
        };
        let spawn_error = |source| CniExecError::Spawn {
            command: command.as_str(),
            plugin: plugin.clone(),
            source,
        };
        let mut child = process.spawn().map_err(spawn_error)?;
        let stdin = serde_json::to_vec(config).unwrap_or_default();
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(&stdin).map_err(spawn_error)?;
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if !output.status.success() {
            return Err(CniExecError::PluginFailed {
                command: command.as_str(),
                plugin,
                position: index + 1,
                message: failure_message(&output.stdout, &output.stderr, output.status),
            });
        }
        match command {
            CniCommand::Del => Ok(Value::Null),
            CniCommand::Add => {
                serde_json::from_slice(&output.stdout).map_err(|e| CniExecError::BadResult {
                    command: command.as_str(),
                    plugin,
                    message: e.to_string(),
                })
            }
        }
    }
}

/// The list-level keys every plugin config gets, and the plugin objects.
fn split_conflist(conflist: &Value) -> Result<(Map<String, Value>, Vec<Value>), CniExecError> {
    let mut header = Map::new();
    for key in ["cniVersion", "name"] {
        let value = conflist
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| CniExecError::BadConflist(format!("`{key}` is missing")))?;
        header.insert(key.to_string(), Value::String(value.to_string()));
    }
    let plugins = conflist
        .get("plugins")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| CniExecError::BadConflist("`plugins` is missing or empty".into()))?;
    for (index, plugin) in plugins.iter().enumerate() {
        if !plugin.is_object() || plugin_type(plugin).is_empty() {
            return Err(CniExecError::BadConflist(format!(
                "plugins[{index}] has no `type`"
            )));
        }
    }
    Ok((header, plugins.clone()))
}

fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// One plugin's stdin: its own object plus `cniVersion`, `name`, `prevResult` and
/// the `runtimeConfig` of the capabilities it declares.
fn plugin_config(
    header: &Map<String, Value>,
    plugin: &Value,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Value {
    let mut config = plugin.as_object().cloned().unwrap_or_default();
    config.extend(header.clone());
    if let Some(prev) = prev_result {
        config.insert("prevResult".into(), prev.clone());
    }
    let runtime_config: Map<String, Value> = plugin
        .get("capabilities")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, enabled)| enabled.as_bool() == Some(true))
        .filter_map(|(name, _)| Some((name.clone(), capability_args.get(name)?.clone())))
        .collect();
    if !runtime_config.is_empty() {
        config.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    Value::Object(config)
}

fn cni_args_env(args: &[(String, String)]) -> Option<String> {
    if args.is_empty() {
        return None;
    }
    let pairs: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Some(format!("IgnoreUnknown=1;{}", pairs.join(";")))
}

/// The plugin's error (`{"code":..,"msg":..,"details":..}` on stdout), else its stderr.
fn failure_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    let stderr = String::from_utf8_lossy(stderr).trim().to_string();
    if let Ok(error) = serde_json::from_slice::<Value>(stdout) {
        let code = error.get("code").and_then(Value::as_u64);
        let msg = error.get("msg").and_then(Value::as_str).unwrap_or("");
        let details = error.get("details").and_then(Value::as_str).unwrap_or("");
        let mut message = match code {
            Some(code) => format!("code {code}: {msg}"),
            None => msg.to_string(),
        };
        if !details.is_empty() {
            message.push_str(&format!(" ({details})"));
        }
        if !message.is_empty() {
            return message;
        }
    }
    let stdout = String::from_utf8_lossy(stdout).trim().to_string();
    format!("{status}: {}", [stdout, stderr].join(" ").trim())
}

/// The default plugin directory list: `/opt/cni/bin` then the Debian package's.
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    ["/opt/cni/bin", "/usr/lib/cni"]
        .into_iter()
        .map(PathBuf::from)
        .filter(|d| Path::new(d).is_dir())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plugin_config_injects_header_prev_result_and_declared_capabilities() {
        let header: Map<String, Value> =
            serde_json::from_value(json!({"cniVersion": "1.0.0", "name": "kubewire"})).unwrap();
        let capability_args: Map<String, Value> = serde_json::from_value(json!({
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 1}
        }))
        .unwrap();
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let portmap =
            json!({"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}});
        assert_eq!(
            plugin_config(&header, &portmap, Some(&prev), &capability_args),
            json!({
                "type": "portmap", "cniVersion": "1.0.0", "name": "kubewire",
                "capabilities": {"portMappings": true, "bandwidth": false},
                "prevResult": {"cniVersion": "1.0.0", "ips": []},
                "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
            })
        );
        let bridge = json!({"type": "bridge", "name": "ignored", "cniVersion": "0.3.1"});
        assert_eq!(
            plugin_config(&header, &bridge, None, &capability_args),
            json!({"type": "bridge", "cniVersion": "1.0.0", "name": "kubewire"})
        );
    }

    #[test]
    fn cni_args_and_conflist_checks() {
        assert_eq!(cni_args_env(&[]), None);
        assert_eq!(
            cni_args_env(&[("IP".into(), "10.244.1.5".into())]).as_deref(),
            Some("IgnoreUnknown=1;IP=10.244.1.5")
        );
        let cases = [
            (
                json!({"name": "k", "plugins": [{"type": "x"}]}),
                "`cniVersion` is missing",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "k", "plugins": []}),
                "`plugins` is missing or empty",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "k", "plugins": [{"type": "x"}, {}]}),
                "plugins[1] has no `type`",
            ),
        ];
        for (conflist, want) in cases {
            let err = split_conflist(&conflist).unwrap_err().to_string();
            assert!(err.ends_with(want), "{err}");
        }
    }

    #[test]
    fn plugin_errors_are_read_from_stdout_json() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(1 << 8);
        assert_eq!(
            failure_message(
                br#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"range full"}"#,
                b"",
                status
            ),
            "code 11: failed to allocate (range full)"
        );
        assert_eq!(
            failure_message(b"", b"boom\n", status),
            "exit status: 1: boom"
        );
    }

    #[test]
    fn missing_plugin_names_the_directories() {
        let runner = PluginRunner {
            plugin_dirs: vec![
                PathBuf::from("/nonexistent-a"),
                PathBuf::from("/nonexistent-b"),
            ],
            node_netns: None,
        };
        let conflist = json!({"cniVersion": "1.0.0", "name": "k", "plugins": [{"type": "bridge"}]});
        let err = runner.add(&conflist, &Attachment::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CNI plugin `bridge` not found in /nonexistent-a:/nonexistent-b"
        );
    }

    #[test]
    fn results_parse_ips() {
        let result = CniResult::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/p"}],
            "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 0},
                    {"address": "fd00::2/64", "interface": 0}]
        }))
        .unwrap();
        assert_eq!(
            result.pod_ips(),
            [
                "10.244.1.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert_eq!(result.interfaces[0].name, "eth0");
        assert!(CniResult::from_value(json!({"ips": [{"address": "bad"}]})).is_err());
    }
}

//! The node's CNI conflist as typed values: what kubewire writes, field for field.
//!
//! Every object kubewire owns keeps the keys it does not know in `extra`, so a file
//! read back and merged ([`Conflist::keep_unowned_from`]) preserves what an operator
//! or another tool added. Plugins of types kubewire does not write survive as
//! [`Plugin::Other`] and stay chained after kubewire's own.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The CNI spec version of the conflist and of every plugin config in it.
pub const CNI_VERSION: &str = "1.0.0";
/// The network name; a conflist with this name is one kubewire wrote.
pub const NETWORK_NAME: &str = "kubewire";
/// The node bridge pods attach to (the routing controller owns its addresses).
pub const BRIDGE_NAME: &str = "kube-bridge";

/// A CNI network configuration list (`*.conflist`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflist {
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<Plugin>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One plugin of the chain, told apart by its `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Plugin {
    Bridge(BridgePlugin),
    Portmap(PortmapPlugin),
    Loopback(LoopbackPlugin),
    /// A plugin kubewire does not write (or one of its own types it cannot read),
    /// kept as it was.
    #[serde(untagged)]
    Other(Map<String, Value>),
}

impl Plugin {
    /// The plugin's `type`, also for [`Plugin::Other`] (empty when it has none).
    pub fn type_name(&self) -> &str {
        match self {
            Plugin::Bridge(_) => "bridge",
            Plugin::Portmap(_) => "portmap",
            Plugin::Loopback(_) => "loopback",
            Plugin::Other(map) => map.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}

/// The types kubewire writes; an existing plugin of one of these types is replaced.
pub const OWNED_PLUGIN_TYPES: [&str; 3] = ["bridge", "portmap", "loopback"];

/// The `bridge` plugin: a veth per pod on [`BRIDGE_NAME`], which is the pods' gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgePlugin {
    pub bridge: String,
    pub is_gateway: bool,
    pub hairpin_mode: bool,
    pub mtu: u32,
    pub ipam: HostLocalIpam,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `host-local` IPAM: one range set per pod CIDR of the node (two when dual-stack).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostLocalIpam {
    /// Always `host-local`.
    #[serde(rename = "type")]
    pub ipam_type: String,
    pub ranges: Vec<Vec<IpRange>>,
    pub routes: Vec<Route>,
    /// Where host-local keeps its leases; the plugin's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpRange {
    pub subnet: IpNet,
    pub gateway: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
}

/// The `portmap` plugin: hostPort forwarding, asked for by the runtime through the
/// `portMappings` capability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortmapPlugin {
    pub capabilities: Capabilities,
    pub snat: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub port_mappings: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `loopback` plugin: brings up `lo` in the pod (it ignores `CNI_IFNAME` and
/// passes `prevResult` through unchanged, so it can end the chain).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopbackPlugin {
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Conflist {
    /// Carries over from `existing` (the file on disk) everything kubewire does not
    /// own: unknown top-level keys, unknown keys of each owned plugin (matched by
    /// `type`, also inside `ipam` and `capabilities`), and whole plugins of other
    /// types, which stay chained after kubewire's own in their original order.
    pub fn keep_unowned_from(&mut self, existing: Conflist) {
        self.extra = existing.extra;
        let mut others = Vec::new();
        for old in existing.plugins {
            match old {
                Plugin::Bridge(old) => {
                    if let Some(Plugin::Bridge(new)) = self.plugin_mut("bridge") {
                        new.extra = old.extra;
                        new.ipam.extra = old.ipam.extra;
                    }
                }
                Plugin::Portmap(old) => {
                    if let Some(Plugin::Portmap(new)) = self.plugin_mut("portmap") {
                        new.extra = old.extra;
                        new.capabilities.extra = old.capabilities.extra;
                    }
                }
                Plugin::Loopback(old) => {
                    if let Some(Plugin::Loopback(new)) = self.plugin_mut("loopback") {
                        new.extra = old.extra;
                    }
                }
                Plugin::Other(map) => {
                    let other = Plugin::Other(map);
                    if !OWNED_PLUGIN_TYPES.contains(&other.type_name()) {
                        others.push(other);
                    }
                }
            }
        }
        self.plugins.extend(others);
    }

    fn plugin_mut(&mut self, type_name: &str) -> Option<&mut Plugin> {
        self.plugins.iter_mut().find(|p| p.type_name() == type_name)
    }

    /// The file's bytes: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired() -> Conflist {
        serde_json::from_value(json!({
            "cniVersion": "1.0.0", "name": "kubewire",
            "plugins": [
                {"type": "bridge", "bridge": "kube-bridge", "isGateway": true, "hairpinMode": true, "mtu": 1450,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                {"type": "loopback"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn round_trips_through_json() {
        let conflist = desired();
        let value = serde_json::to_value(&conflist).unwrap();
        assert_eq!(value["plugins"][0]["type"], "bridge");
        assert_eq!(value["plugins"][0]["ipam"]["type"], "host-local");
        assert!(value["plugins"][0]["ipam"].get("dataDir").is_none());
        assert_eq!(serde_json::from_value::<Conflist>(value).unwrap(), conflist);
    }

    #[test]
    fn merge_keeps_unknown_keys_and_foreign_plugins() {
        let existing: Conflist = serde_json::from_value(json!({
            "cniVersion": "0.4.0", "name": "kubewire", "disableCheck": true,
            "plugins": [
                {"type": "tuning", "sysctl": {"net.core.somaxconn": "500"}},
                {"type": "bridge", "bridge": "old-bridge", "isGateway": false, "hairpinMode": false, "mtu": 9000,
                 "promiscMode": true,
                 "ipam": {"type": "host-local", "ranges": [], "routes": [], "dataDir": "/old", "resolvConf": "/r"}},
                {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": true}, "snat": false,
                 "backend": "nftables"},
                {"type": "loopback", "note": "x"}
            ]
        }))
        .unwrap();
        let mut merged = desired();
        merged.keep_unowned_from(existing);
        let value = serde_json::to_value(&merged).unwrap();
        assert_eq!(value["cniVersion"], "1.0.0");
        assert_eq!(value["disableCheck"], true);
        let bridge = &value["plugins"][0];
        assert_eq!(bridge["bridge"], "kube-bridge");
        assert_eq!(bridge["mtu"], 1450);
        assert_eq!(bridge["promiscMode"], true);
        assert_eq!(bridge["ipam"]["resolvConf"], "/r");
        assert!(
            bridge["ipam"].get("dataDir").is_none(),
            "dataDir is owned: unset now, so dropped"
        );
        assert_eq!(value["plugins"][1]["backend"], "nftables");
        assert_eq!(value["plugins"][1]["snat"], true);
        assert_eq!(value["plugins"][1]["capabilities"]["bandwidth"], true);
        assert_eq!(value["plugins"][2]["note"], "x");
        assert_eq!(value["plugins"][3]["type"], "tuning");
        assert_eq!(value["plugins"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn unreadable_owned_plugin_is_replaced_not_duplicated() {
        let existing: Conflist = serde_json::from_value(json!({
            "cniVersion": "1.0.0", "name": "kubewire",
            "plugins": [{"type": "bridge", "mtu": "big"}, {"type": "loopback"}]
        }))
        .unwrap();
        assert!(matches!(existing.plugins[0], Plugin::Other(_)));
        let mut merged = desired();
        merged.keep_unowned_from(existing);
        assert_eq!(merged, desired());
    }
}

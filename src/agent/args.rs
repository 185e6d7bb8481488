use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::telemetry::LogFormat;

/// Flags every controller subcommand and `kubewire run` take. Every flag can also come
/// from a `KUBEWIRE_*` environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub network: crate::network::NetworkArgs,
    #[command(flatten)]
    pub routing: crate::routing::RoutingArgs,
    #[command(flatten)]
    pub firewall: crate::firewall::FirewallArgs,
    #[command(flatten)]
    pub proxy: crate::proxy::ProxyArgs,
    #[command(flatten)]
    pub cni: crate::cni::CniArgs,
    /// Run the routing controller (with `kubewire run`).
    #[arg(long, env = "KUBEWIRE_RUN_ROUTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_router: bool,
    /// Run the NetworkPolicy firewall (with `kubewire run`).
    #[arg(long, env = "KUBEWIRE_RUN_FIREWALL", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_firewall: bool,
    /// Run the service proxy (with `kubewire run`).
    #[arg(long, env = "KUBEWIRE_RUN_SERVICE_PROXY", default_value_t = false, action = clap::ArgAction::Set)]
    pub run_service_proxy: bool,
    /// Write the node's CNI config (with `kubewire run`).
    #[arg(long, env = "KUBEWIRE_RUN_CNI", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_cni: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct CommonArgs {
    /// Kubeconfig file; without it, the in-cluster service account (or $KUBECONFIG).
    #[arg(long, env = "KUBEWIRE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name; else $NODE_NAME, else the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Where /metrics is served.
    #[arg(long, env = "KUBEWIRE_METRICS_ADDR", default_value = "0.0.0.0:20245")]
    pub metrics_addr: SocketAddr,
    /// Where /healthz is served (may equal --metrics-addr).
    #[arg(long, env = "KUBEWIRE_HEALTH_ADDR", default_value = "0.0.0.0:20244")]
    pub health_addr: SocketAddr,
    /// Log filter: a level or tracing directives (`info`, `kubewire=debug`).
    #[arg(short = 'v', long, env = "KUBEWIRE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[arg(long, env = "KUBEWIRE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// How long start-up waits for the first complete list of every kind.
    #[arg(long, env = "KUBEWIRE_CACHE_SYNC_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub cache_sync_timeout: Duration,
    /// How often each controller re-checks the kernel for drift without a cluster change.
    #[arg(long, env = "KUBEWIRE_SYNC_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,
}

impl CommonArgs {
    pub fn node_name(&self) -> anyhow::Result<String> {
        if let Some(name) = self.node_name.as_deref().filter(|n| !n.is_empty()) {
            return Ok(name.to_string());
        }
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("no --node-name, no NODE_NAME, and the hostname is unreadable")?;
        Ok(hostname.trim().to_string())
    }

    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        match &self.kubeconfig {
            Some(path) => client_from_kubeconfig(path).await,
            None => {
                let config = kube::Config::infer()
                    .await
                    .context("no --kubeconfig and no in-cluster configuration")?;
                Ok(kube::Client::try_from(config)?)
            }
        }
    }
}

/// A client for the cluster a kubeconfig file names (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// Parses `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 30s, 5m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}

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
    /// The API server's address (`https://HOST:PORT`), replacing the one of the
    /// kubeconfig or of the in-cluster configuration while keeping their credentials.
    /// Needed when this agent is the service proxy: the in-cluster address is the
    /// `kubernetes` Service's ClusterIP, which only the proxy itself makes reachable.
    #[arg(long, env = "KUBEWIRE_MASTER", value_parser = parse_master)]
    pub master: Option<http::Uri>,
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
    #[arg(short = 'v', long, env = "KUBEWIRE_LOG_LEVEL", default_value = "info", value_parser = crate::telemetry::parse_log_filter)]
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
        Ok(kube::Client::try_from(self.client_config().await?)?)
    }

    /// The client configuration: the kubeconfig's, else the inferred one ($KUBECONFIG,
    /// ~/.kube/config, in-cluster), with the address replaced by --master.
    pub async fn client_config(&self) -> anyhow::Result<kube::Config> {
        let config = match (&self.kubeconfig, &self.master) {
            (Some(path), _) => config_from_kubeconfig(path).await?,
            (None, None) => kube::Config::infer()
                .await
                .context("no --kubeconfig and no in-cluster configuration")?,
            // In a pod with --master, KUBERNETES_SERVICE_HOST may be absent or
            // unusable: only the service account's token and CA are needed.
            (None, Some(_)) => match kube::Config::infer().await {
                Ok(config) => config,
                Err(_) => kube::Config::incluster_dns().context(
                    "--master without --kubeconfig needs a kubeconfig or the in-cluster \
                     service account (token and CA)",
                )?,
            },
        };
        Ok(with_master(config, self.master.as_ref()))
    }
}

/// `config` aimed at `master` instead of its own address, with the same credentials
/// and CA (as client-go's and kube-router's `--master`). TLS checks the certificate
/// against the host `master` names, so the API server's certificate must carry that
/// address: kubeadm's and k3s's carry the control-plane nodes' addresses.
fn with_master(mut config: kube::Config, master: Option<&http::Uri>) -> kube::Config {
    if let Some(master) = master {
        config.cluster_url = master.clone();
    }
    config
}

/// `https://HOST[:PORT]` (a bare `HOST[:PORT]` is taken as https).
fn parse_master(text: &str) -> Result<http::Uri, String> {
    let text = text.trim();
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("https://{text}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|err| format!("`{text}` is not an API server address: {err}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https" | "http"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(format!(
            "`{text}` is not an API server address like https://10.0.0.1:6443"
        )),
    }
}

/// A client for the cluster a kubeconfig file names (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(config_from_kubeconfig(path).await?)?)
}

async fn config_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))
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
    // A year is more than any timeout or period here needs; a larger number is a typo.
    const LONGEST: f64 = 365.0 * 24.0 * 3600.0;
    if !(0.0..=LONGEST).contains(&seconds) {
        return Err(format!("`{text}` is longer than a year"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("`{text}`: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn flags(extra: &[&str]) -> Result<CommonArgs, clap::Error> {
        use clap::Parser;
        Flags::try_parse_from(["kubewire"].iter().chain(extra)).map(|f| f.common)
    }

    #[test]
    fn master_addresses() {
        let master = |text| flags(&["--master", text]).map(|f| f.master.map(|m| m.to_string()));
        assert_eq!(
            master("https://10.0.0.1:6443").unwrap().as_deref(),
            Some("https://10.0.0.1:6443/")
        );
        assert_eq!(
            master("10.0.0.1:6443").unwrap().as_deref(),
            Some("https://10.0.0.1:6443/"),
            "a bare address is https"
        );
        assert_eq!(
            master("[fd00::1]:6443").unwrap().as_deref(),
            Some("https://[fd00::1]:6443/")
        );
        assert!(master("ftp://10.0.0.1").is_err());
        assert!(master("https://").is_err());
        assert!(master("not an address").is_err());
    }

    /// --master replaces only the address: the kubeconfig's token and CA stay.
    #[tokio::test]
    async fn master_overrides_the_kubeconfig_address_and_keeps_its_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{name: k, cluster: {server: 'https://10.96.0.1:443', insecure-skip-tls-verify: true}}]\n\
             users: [{name: u, user: {token: secret-token}}]\n\
             contexts: [{name: c, context: {cluster: k, user: u}}]\n",
        )
        .unwrap();
        let kubeconfig = path.to_str().unwrap();
        let plain = flags(&["--kubeconfig", kubeconfig])
            .unwrap()
            .client_config()
            .await
            .unwrap();
        assert_eq!(plain.cluster_url.to_string(), "https://10.96.0.1:443/");
        let aimed = flags(&["--kubeconfig", kubeconfig, "--master", "192.0.2.10:6443"])
            .unwrap()
            .client_config()
            .await
            .unwrap();
        assert_eq!(aimed.cluster_url.to_string(), "https://192.0.2.10:6443/");
        let token = |config: &kube::Config| serde_json::to_value(&config.auth_info).unwrap();
        assert_eq!(token(&aimed)["token"], "secret-token");
        assert_eq!(token(&aimed), token(&plain));
        assert!(aimed.accept_invalid_certs);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(
            parse_duration("99999999999999999999h").is_err(),
            "no overflow panic"
        );
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("400d").is_err());
    }
}

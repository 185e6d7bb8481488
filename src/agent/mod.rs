//! `kubewire run`: one process, one shared watch cache, every enabled controller, and
//! the health and metrics endpoints.

mod args;
mod reconcile;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

pub use args::{AgentArgs, CommonArgs, client_from_kubeconfig, parse_duration};
pub use reconcile::{Backoff, SyncReason, reconcile_loop};

use crate::cache::Cache;
use crate::telemetry::{self, Health, Metrics};

/// The controllers one agent can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerKind {
    Routing,
    Firewall,
    Proxy,
    Cni,
}

impl ControllerKind {
    pub const ALL: [ControllerKind; 4] = [
        ControllerKind::Cni,
        ControllerKind::Routing,
        ControllerKind::Firewall,
        ControllerKind::Proxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ControllerKind::Routing => "routing",
            ControllerKind::Firewall => "firewall",
            ControllerKind::Proxy => "proxy",
            ControllerKind::Cni => "cni",
        }
    }

    fn enabled(self, args: &AgentArgs) -> bool {
        match self {
            ControllerKind::Routing => args.run_router,
            ControllerKind::Firewall => args.run_firewall,
            ControllerKind::Proxy => args.run_service_proxy,
            ControllerKind::Cni => args.run_cni,
        }
    }
}

/// What a controller gets from the agent.
#[derive(Clone)]
pub struct ControllerContext {
    pub name: &'static str,
    pub node_name: String,
    pub cache: Cache,
    pub args: Arc<AgentArgs>,
    pub metrics: Metrics,
    pub health: Health,
}

/// Runs `wanted` (those of them enabled by flags when more than one is asked for)
/// until one fails or the process is interrupted.
pub async fn run(args: AgentArgs, wanted: &[ControllerKind]) -> anyhow::Result<()> {
    telemetry::init_logging(&args.common.log_level, args.common.log_format);
    let controllers: Vec<ControllerKind> = if wanted.len() == 1 {
        wanted.to_vec()
    } else {
        wanted
            .iter()
            .copied()
            .filter(|c| c.enabled(&args))
            .collect()
    };
    anyhow::ensure!(
        !controllers.is_empty(),
        "every controller is disabled by flags"
    );
    let node_name = args.common.node_name()?;
    let client = args.common.client().await?;
    let metrics = Metrics::new();
    let health = Health::new(args.common.sync_period * 3 + Duration::from_secs(30));
    let cache = Cache::start(client, metrics.clone());
    let args = Arc::new(args);
    tracing::info!(node = %node_name, controllers = ?controllers.iter().map(|c| c.name()).collect::<Vec<_>>(), "kubewire starting");

    // Enrolled before /healthz is served: until every controller has synced, the
    // agent is not healthy (an empty set would read as healthy).
    for controller in &controllers {
        health.enroll(controller.name());
    }
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (metrics, health) = (metrics.clone(), health.clone());
        let (metrics_addr, health_addr) = (args.common.metrics_addr, args.common.health_addr);
        tasks.spawn(async move {
            telemetry::serve(metrics_addr, health_addr, metrics, health)
                .await
                .context("health/metrics server")
        });
    }
    cache
        .wait_synced(args.common.cache_sync_timeout)
        .await
        .context("cannot start")?;
    tracing::info!("watch cache synced");
    for controller in controllers {
        let ctx = ControllerContext {
            name: controller.name(),
            node_name: node_name.clone(),
            cache: cache.clone(),
            args: args.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
        };
        tasks.spawn(async move {
            run_controller(controller, ctx)
                .await
                .with_context(|| format!("{} controller", controller.name()))
        });
    }
    let result = tokio::select! {
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err),
            Err(err) => Err(anyhow::anyhow!("a controller task panicked: {err}")),
        },
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    tasks.abort_all();
    cache.stop();
    result
}

async fn run_controller(kind: ControllerKind, ctx: ControllerContext) -> anyhow::Result<()> {
    match kind {
        ControllerKind::Routing => crate::routing::run_controller(ctx).await,
        ControllerKind::Firewall => crate::firewall::run_controller(ctx).await,
        ControllerKind::Proxy => crate::proxy::run_controller(ctx).await,
        ControllerKind::Cni => crate::cni::run_controller(ctx).await,
    }
}

/// `kubewire cleanup`: every controller removes what it created; all are tried even
/// when one fails.
pub async fn cleanup(args: AgentArgs) -> anyhow::Result<()> {
    telemetry::init_logging(&args.common.log_level, args.common.log_format);
    let results = [
        ("proxy", crate::proxy::cleanup(&args).await),
        ("firewall", crate::firewall::cleanup(&args).await),
        ("routing", crate::routing::cleanup(&args).await),
        ("cni", crate::cni::cleanup(&args).await),
    ];
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|(name, result)| result.err().map(|err| format!("{name}: {err:#}")))
        .collect();
    anyhow::ensure!(
        failures.is_empty(),
        "cleanup failed: {}",
        failures.join("; ")
    );
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

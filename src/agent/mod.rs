//! `kubewire run`: the wiring. The flags are resolved once into one configuration per
//! controller (plus the node's network, which several share); the enabled controllers
//! are built, the shared cache watches exactly the kinds they read, and each runs
//! under [`crate::runtime`] beside the health and metrics endpoints.

mod args;
mod controllers;

use std::time::Duration;

use anyhow::Context;

pub use args::{AgentArgs, CommonArgs, client_from_kubeconfig, parse_duration};
pub use controllers::{AnyController, ControllerKind};

use crate::cache::{Cache, Kind};
use crate::runtime::{self, Controller, Runtime};
use crate::telemetry::{self, Health, Metrics};

/// Runs `wanted` (those of them enabled by flags when more than one is asked for)
/// until one fails or the process is interrupted.
pub async fn run(args: AgentArgs, wanted: &[ControllerKind]) -> anyhow::Result<()> {
    telemetry::init_logging(&args.common.log_level, args.common.log_format);
    let kinds: Vec<ControllerKind> = if wanted.len() == 1 {
        wanted.to_vec()
    } else {
        wanted
            .iter()
            .copied()
            .filter(|c| c.enabled(&args))
            .collect()
    };
    anyhow::ensure!(!kinds.is_empty(), "every controller is disabled by flags");
    let node_name = args.common.node_name()?;
    let metrics = Metrics::new();
    let controllers = kinds
        .iter()
        .map(|kind| AnyController::build(*kind, &args, &node_name, &metrics))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if kinds
        .iter()
        .any(|k| matches!(k, ControllerKind::Firewall | ControllerKind::Proxy))
    {
        for problem in crate::nft::enable_bridge_netfilter() {
            tracing::warn!(%problem, "bridge netfilter is unavailable: traffic between pods on one bridge bypasses the firewall and the Service NAT");
        }
    }
    let client_config = args.common.client_config().await?;
    let client = kube::Client::try_from(client_config.clone())?;
    let health = Health::new(args.common.sync_period * 3 + Duration::from_secs(30));
    let mut read: Vec<Kind> = controllers
        .iter()
        .flat_map(|c| c.kinds())
        .copied()
        .collect();
    read.sort();
    read.dedup();
    tracing::info!(node = %node_name, controllers = ?kinds.iter().map(|c| c.name()).collect::<Vec<_>>(), kinds = ?read, "kubewire starting");
    let restarts = crate::cache::liveness::WatchRestarts::default();
    tokio::spawn(crate::cache::liveness::monitor(
        client.clone(),
        Some(client_config),
        metrics.clone(),
        health.clone(),
        restarts.clone(),
    ));
    let cache = Cache::start_restartable(
        client,
        &read,
        metrics.clone(),
        args.common.cache_sync_timeout,
        &restarts,
    )
    .await;

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
    tracing::info!(kinds = ?cache.watched(), "watch cache synced");
    let runtime = Runtime {
        cache: cache.clone(),
        metrics,
        health,
        sync_period: args.common.sync_period,
    };
    for controller in controllers {
        let (runtime, name) = (runtime.clone(), controller.name());
        tasks.spawn(async move {
            runtime::run(controller, runtime)
                .await
                .with_context(|| format!("{name} controller"))
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

/// `kubewire cleanup`: every controller removes what it created; all are tried even
/// when one fails.
pub async fn cleanup(args: AgentArgs) -> anyhow::Result<()> {
    telemetry::init_logging(&args.common.log_level, args.common.log_format);
    let node_name = args.common.node_name()?;
    let metrics = Metrics::new();
    let mut failures = Vec::new();
    for kind in ControllerKind::CLEANUP_ORDER {
        let result = match AnyController::build(kind, &args, &node_name, &metrics) {
            Ok(mut controller) => controller.cleanup().await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            failures.push(format!("{}: {err:#}", kind.name()));
        }
    }
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

use std::net::SocketAddr;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use super::{Health, Metrics};

/// Serves `/metrics` on `metrics_addr` and `/healthz` on `health_addr` (one listener
/// when they are equal) until the task is dropped.
pub async fn serve(
    metrics_addr: SocketAddr,
    health_addr: SocketAddr,
    metrics: Metrics,
    health: Health,
) -> anyhow::Result<()> {
    let metrics_router = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    let health_router = Router::new().route(
        "/healthz",
        get(move || {
            let health = health.clone();
            async move {
                let report = health.report();
                let status = if report.healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, report.body).into_response()
            }
        }),
    );
    if metrics_addr == health_addr {
        return serve_one(metrics_addr, metrics_router.merge(health_router)).await;
    }
    tokio::try_join!(
        serve_one(metrics_addr, metrics_router),
        serve_one(health_addr, health_router)
    )?;
    Ok(())
}

async fn serve_one(addr: SocketAddr, router: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
    axum::serve(listener, router).await?;
    Ok(())
}

//! Prometheus metrics for agent-svc, served on an optional separate listener
//! (the gRPC port speaks only gRPC).

use metrics_exporter_prometheus::PrometheusHandle;
use services::telemetry;
use std::net::SocketAddr;

/// Installs the global recorder and serves `GET /metrics` on `addr`.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let handle = global().ok_or_else(|| std::io::Error::other("another metrics recorder is installed"))?;
    // Fold histogram samples into buckets even when nobody scrapes (bounded memory).
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(telemetry::UPKEEP_INTERVAL);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

/// The process-wide recorder that agent-svc's metrics go to, installed on first
/// use (also by an embedding gateway, which renders it on its own `/metrics`).
/// `None` when some other global recorder was installed first.
pub fn global() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            install().map_err(|e| tracing::warn!(error = %e, "agent-svc metrics not recorded")).ok()
        })
        .clone()
}

fn install() -> Result<PrometheusHandle, String> {
    telemetry::prometheus_builder().install_recorder().map_err(|e| e.to_string())
}

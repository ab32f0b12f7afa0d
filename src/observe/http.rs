//! The workload's HTTP endpoints on one port.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::Health;

/// What `/status` returns: a workload-specific JSON document.
pub trait StatusReport: Send + Sync + 'static {
    fn status(&self) -> serde_json::Value;
}

struct Endpoints {
    health: Arc<Health>,
    registry: Registry,
    report: Arc<dyn StatusReport>,
}

/// Binds `listen` and serves until `shutdown`. Returns the bound address (port 0 picks one).
pub async fn serve(
    listen: SocketAddr,
    health: Arc<Health>,
    registry: Registry,
    report: Arc<dyn StatusReport>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let state = Arc::new(Endpoints {
        health,
        registry,
        report,
    });
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state);
    bind_and_serve(listen, router, shutdown, "the status endpoint").await
}

/// Binds `listen` and serves `router` until `shutdown`; returns the bound address (port 0
/// picks one). A failure after binding is logged with `what` stopped.
pub async fn bind_and_serve(
    listen: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    what: &'static str,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "{what} stopped");
        }
    });
    Ok((address, task))
}

async fn readyz(State(state): State<Arc<Endpoints>>) -> Response {
    if state.health.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        let reason = match (state.health.database(), state.health.broker()) {
            (false, false) => "database and broker unreachable",
            (false, true) => "database unreachable",
            _ => "broker unreachable",
        };
        (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
    }
}

async fn metrics(State(state): State<Arc<Endpoints>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn status(State(state): State<Arc<Endpoints>>) -> Response {
    axum::Json(state.report.status()).into_response()
}

//! The relay's transactional-message API, on a port of its own:
//!
//! - `POST /v1/half-messages` prepares a message (body: `aggregateType`, `aggregateId`,
//!   `eventType`, `payload`, optional `headers`) and answers `201 {"id": ...}`;
//! - `POST /v1/half-messages/{id}/commit` and `.../rollback` decide it (`200 {"id", "state"}`,
//!   the same answer when repeated; `409` when the other decision was taken);
//! - `GET /v1/half-messages/{id}` says how it stands.
//!
//! Every call needs `Authorization: Bearer <token>`. Errors are JSON `{"error": ...}` with a
//! 4xx status naming what is wrong, or 503 when the database cannot be reached.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, State as AxumState, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{DecidedBy, Decision, HalfError, HalfStore, NewHalfMessage, metrics::HalfMetrics};

struct Api {
    store: Arc<dyn HalfStore>,
    metrics: Arc<HalfMetrics>,
    token: String,
    first_check: std::time::Duration,
}

/// Binds `listen` and serves until `shutdown`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    store: Arc<dyn HalfStore>,
    metrics: Arc<HalfMetrics>,
    token: String,
    first_check: std::time::Duration,
    max_request_bytes: usize,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let state = Arc::new(Api {
        store,
        metrics,
        token,
        first_check,
    });
    let router = Router::new()
        .route("/v1/half-messages", post(prepare))
        .route("/v1/half-messages/{id}", get(show))
        .route("/v1/half-messages/{id}/commit", post(commit))
        .route("/v1/half-messages/{id}/rollback", post(rollback))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(state);
    crate::observe::http::bind_and_serve(listen, router, shutdown, "the transactional-message API")
        .await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

async fn authorize(
    AxumState(api): AxumState<Arc<Api>>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), api.token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => error(StatusCode::UNAUTHORIZED, "the bearer token is not valid"),
        None => error(
            StatusCode::UNAUTHORIZED,
            "an Authorization: Bearer <token> header is required",
        ),
    }
}

/// Compares without stopping at the first difference, so the time taken tells nothing about
/// how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn prepare(
    AxumState(api): AxumState<Arc<Api>>,
    body: Result<Json<NewHalfMessage>, JsonRejection>,
) -> Response {
    let message = match body {
        Ok(Json(message)) => message,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    for (field, value) in [
        ("aggregateType", &message.aggregate_type),
        ("aggregateId", &message.aggregate_id),
        ("eventType", &message.event_type),
    ] {
        if value.is_empty() || value.len() > 255 {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{field} must be 1 to 255 characters"),
            );
        }
    }
    match api.store.prepare(&message, api.first_check).await {
        Ok(id) => {
            api.metrics.record_prepared();
            (
                StatusCode::CREATED,
                Json(json!({"id": id, "state": "prepared"})),
            )
                .into_response()
        }
        Err(problem) => failure(&problem),
    }
}

async fn commit(AxumState(api): AxumState<Arc<Api>>, Path(id): Path<String>) -> Response {
    decide(&api, &id, Decision::Commit).await
}

async fn rollback(AxumState(api): AxumState<Arc<Api>>, Path(id): Path<String>) -> Response {
    decide(&api, &id, Decision::Rollback).await
}

async fn decide(api: &Api, id: &str, decision: Decision) -> Response {
    let Ok(id) = Uuid::parse_str(id) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a half-message id (a UUID)"),
        );
    };
    match api.store.decide(id, decision, DecidedBy::Producer).await {
        Ok(decided) => {
            api.metrics.record_decided(decided, DecidedBy::Producer);
            Json(json!({"id": id, "state": decided.state})).into_response()
        }
        Err(problem) => failure(&problem),
    }
}

async fn show(AxumState(api): AxumState<Arc<Api>>, Path(id): Path<String>) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a half-message id (a UUID)"),
        );
    };
    match api.store.state(id).await {
        Ok((state, checks)) => {
            Json(json!({"id": id, "state": state, "checks": checks})).into_response()
        }
        Err(problem) => failure(&problem),
    }
}

fn failure(problem: &HalfError) -> Response {
    let status = match problem {
        HalfError::NotFound(_) => StatusCode::NOT_FOUND,
        HalfError::Conflict { .. } => StatusCode::CONFLICT,
        HalfError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        HalfError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    if status.is_server_error() {
        tracing::warn!(error = %problem, "a transactional-message call failed");
    }
    error(status, problem.to_string())
}

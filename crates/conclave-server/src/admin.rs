//! The operations listener: liveness, readiness and metrics.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::state::AppState;

/// A readiness probe that waits longer than this for the database reports
/// "not ready": a database that slow cannot serve users either.
const READY_DB_TIMEOUT_MS: u64 = 2_000;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(crate::http::not_found)
        .with_state(state)
}

/// The process is alive and serving HTTP. Says nothing about dependencies,
/// so an orchestrator does not restart a node because its database blinked.
async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// The node can serve users: not shutting down, database answering.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "draining" })),
        );
    }
    let ping = tokio::time::timeout(
        Duration::from_millis(READY_DB_TIMEOUT_MS),
        state.storage.ping(),
    )
    .await;
    let database = match ping {
        Ok(Ok(())) => None,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness: database ping failed");
            Some("error")
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = READY_DB_TIMEOUT_MS,
                "readiness: database ping timed out"
            );
            Some("timeout")
        }
    };
    match database {
        None => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "status": "ready", "database": "ok" })),
        ),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "unavailable", "database": problem })),
        ),
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        Metrics::render(),
    )
}

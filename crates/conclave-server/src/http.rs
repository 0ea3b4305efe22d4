//! The main HTTP listener's router. Later features add their routes here;
//! every response that is not a success is a JSON error with a stable code.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use conclave_core::ErrorCode;
use conclave_core::limits::JSON_BODY_MAX_BYTES;
use tracing::Instrument as _;

use crate::api_error::ApiError;
use crate::state::AppState;
use crate::transport;

const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where upload chunks are `PUT`.
const UPLOAD_ROUTE: &str = "/v1/files/{file_id}/content";

/// A client-supplied request id longer than this is replaced, so log lines
/// stay bounded.
const REQUEST_ID_LEN_MAX_BYTES: usize = 64;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(banner))
        .route("/v1/server-info", get(server_info))
        .route(
            "/api/v1/{*route}",
            post(transport::http_api::call).layer(DefaultBodyLimit::max(JSON_BODY_MAX_BYTES)),
        )
        .route("/v1/ws", get(transport::ws::upgrade))
        .route("/collab/{name}", get(transport::collab::upgrade))
        .route("/hocuspocus", get(transport::hocuspocus::upgrade))
        .route("/ws", get(transport::json_docs::upgrade))
        .route(
            UPLOAD_ROUTE,
            put(transport::files::put_content)
                .head(transport::files::upload_status)
                // Chunks are streamed to the blob store, never buffered;
                // their size is bounded by the declared file size.
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/files/{file_id}/status",
            get(transport::files::upload_status),
        )
        .route("/v1/files/{file_id}", get(transport::files::download))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

async fn banner() -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "name": "conclave",
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// What a client needs before it connects: the version, and the Noise static
/// key to pin for the encrypted TCP transport.
async fn server_info(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "name": "conclave",
        "version": env!("CARGO_PKG_VERSION"),
        "installation_id": state.installation_id,
        "noise_public_key": state.secrets.noise_public_hex(),
        "quic_cert_sha256": state.quic_cert_sha256,
        "protocol_version": conclave_protocol::PROTOCOL_VERSION,
    }))
}

pub(crate) async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownRoute,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not supported on {}", uri.path()),
    )
}

/// Gives every request an id (the client's `x-request-id` when sane), a
/// tracing span carrying it, a deadline, and a line in the metrics.
async fn request_context(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= REQUEST_ID_LEN_MAX_BYTES
                && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    // Only matched route templates become labels, so a scanner probing random
    // paths cannot grow the metric series without bound.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let timeout = Duration::from_millis(state.config.server.request_timeout_ms);
    // An upload chunk may take as long as its bytes take to arrive (it is
    // bounded by the declared size, and a stalled body ends after
    // `limits.idle_timeout_ms` with the bytes received kept); cutting it off
    // would throw those bytes away.
    let unbounded = request.method() == Method::PUT && route == UPLOAD_ROUTE;
    let mut response = async {
        if unbounded {
            return next.run(request).await;
        }
        match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!(timeout_ms = timeout.as_millis() as u64, "request timed out");
                ApiError::new(ErrorCode::Unavailable, "the request took too long").into_response()
            }
        }
    }
    .instrument(span.clone())
    .await;

    let status = response.status();
    let outcome = if status.is_server_error() {
        "server_error"
    } else if status.is_client_error() {
        "client_error"
    } else {
        "ok"
    };
    let elapsed = started.elapsed();
    state
        .metrics
        .requests
        .with_label_values(&["http", &route, outcome])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&["http", &route])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        let elapsed_us = elapsed.as_micros() as u64;
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), elapsed_us, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), elapsed_us, "request finished");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

fn new_request_id() -> String {
    crate::secrets::random_hex(8).unwrap_or_else(|_| format!("{:x}", crate::unix_ms()))
}

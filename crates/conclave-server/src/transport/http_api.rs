//! `POST /api/v1/<route>`: every RPC route as plain HTTP + JSON.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use conclave_core::ErrorCode;
use conclave_core::limits::JSON_BODY_MAX_BYTES;

use crate::api_error::ApiError;
use crate::listener::PeerAddr;
use crate::rpc::{self, Answer, RpcContext};
use crate::state::AppState;
use crate::transport::bearer_token;

pub(crate) async fn call(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(state, peer, route, headers, body).await {
        Ok(body) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            String::from(Box::<str>::from(body)),
        )
            .into_response(),
        Err(err) => err.into_response(),
    }
}

async fn handle(
    state: AppState,
    peer: std::net::SocketAddr,
    route: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Answer, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body exceeds {JSON_BODY_MAX_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    })?;
    let body: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(&body).map_err(|err| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body is not JSON: {err}"),
            )
        })?
    };
    let caller = match bearer_token(&headers) {
        Some(token) => Some(rpc::authenticate(&state, &token, crate::unix_ms() / 1000).await?),
        None => None,
    };
    let ctx = RpcContext {
        state: state.clone(),
        caller,
        peer_ip: peer.ip(),
        transport: "http",
    };
    state.routes.dispatch(ctx, &route, body).await
}

//! Errors as the HTTP surface shows them: a stable code, a human message,
//! the status the code maps to. Internal details go to the log only.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use conclave_core::ErrorCode;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        (status, axum::Json(body)).into_response()
    }
}

//! Errors as clients see them: a stable code, a human message, the HTTP
//! status the code maps to. Internal details go to the log only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use conclave_core::ErrorCode;
use conclave_protocol::api::ErrorBody;
use conclave_storage::StorageError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For `rate_limited`: when to retry.
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// A failure whose details belong in the log, not on the wire.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, detail)
    }

    /// The version safe to send: internal details replaced.
    pub fn public(self) -> Self {
        if self.code == ErrorCode::Internal {
            Self::new(ErrorCode::Internal, "internal error; see the server log")
        } else {
            self
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.as_str().to_owned(),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            StorageError::LimitReached(message) => ApiError::new(ErrorCode::LimitExceeded, message),
            StorageError::Closed | StorageError::Unavailable(_) => {
                tracing::warn!(error = %err, "storage unavailable");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the database is unavailable; retry shortly",
                )
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        ApiError::internal(format!("{err:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let public = self.public();
        let status = StatusCode::from_u16(public.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            axum::Json(serde_json::json!({ "error": public.body() })),
        )
            .into_response();
        if let Some(ms) = public.retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

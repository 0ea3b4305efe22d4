//! File bytes over plain HTTP on the main port:
//!
//! - `PUT /v1/files/{id}/content` receives a chunk (upload token as
//!   `Authorization: Bearer` or `?token=`; `Content-Range: bytes A-B/TOTAL`,
//!   or no header for the whole file); `HEAD` on the same path and
//!   `GET /v1/files/{id}/status` tell where the upload stands.
//! - `GET /v1/files/{id}?exp=..&sig=..` streams a complete file, whole or
//!   one `Range`.
//!
//! The rules live in `crate::files`; this module moves headers and bodies.

use std::str::FromStr as _;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use conclave_core::{ErrorCode, FileId};
use conclave_protocol::api::files::UploadProgress;

use crate::api_error::ApiError;
use crate::files::Refused;
use crate::files::ranges::{Requested, download_range};
use crate::state::AppState;
use crate::tokens::{self, TokenError};

/// Where an upload stands, as a header: the offset the next chunk must
/// start at.
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
/// The declared size of the upload, as a header.
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");

#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct SignedQuery {
    exp: Option<i64>,
    sig: Option<String>,
}

fn file_id(raw: &str) -> Result<FileId, ApiError> {
    FileId::from_str(raw)
        .map_err(|_| ApiError::new(ErrorCode::NotFound, format!("no file `{raw}`")))
}

/// The upload token: `Authorization: Bearer`, else `?token=`.
fn upload_token(headers: &HeaderMap, query: TokenQuery) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .or(query.token)
        .unwrap_or_default()
}

fn refusal(refused: Refused) -> Response {
    let public = refused.error.public();
    let status = StatusCode::from_u16(public.code.http_status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = serde_json::json!({ "error": public.body() });
    if let Some(offset) = refused.offset {
        body["offset"] = offset.into();
    }
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(offset) = refused.offset {
        response
            .headers_mut()
            .insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    }
    response
}

fn progress_response(progress: UploadProgress) -> Response {
    let offset = progress.offset;
    let size = progress.size;
    let mut response = axum::Json(progress).into_response();
    let headers = response.headers_mut();
    headers.insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    headers.insert(UPLOAD_LENGTH, HeaderValue::from(size));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) async fn put_content(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let file = match file_id(&raw_id) {
        Ok(file) => file,
        Err(err) => return err.into_response(),
    };
    let token = upload_token(&headers, query);
    let content_range = headers
        .get(header::CONTENT_RANGE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    match state
        .files
        .receive_chunk(&state, file, &token, content_range, body.into_data_stream())
        .await
    {
        Ok(progress) => progress_response(progress),
        Err(refused) => {
            if refused.error.code == ErrorCode::Internal {
                tracing::error!(%file, error = %refused.error.message, "upload chunk failed");
            }
            refusal(refused)
        }
    }
}

/// `HEAD .../content` and `GET .../status`: the same answer (a `HEAD`
/// response drops the body).
pub(crate) async fn upload_status(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let file = match file_id(&raw_id) {
        Ok(file) => file,
        Err(err) => return err.into_response(),
    };
    let token = upload_token(&headers, query);
    match state.files.progress(&state, file, &token).await {
        Ok(progress) => progress_response(progress),
        Err(refused) => refusal(refused),
    }
}

pub(crate) async fn download(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Query(query): Query<SignedQuery>,
    headers: HeaderMap,
) -> Response {
    match serve(&state, &raw_id, query, &headers).await {
        Ok(response) => response,
        Err(err) => {
            if err.code == ErrorCode::Internal {
                tracing::error!(file = %raw_id, error = %err.message, "download failed");
            }
            err.into_response()
        }
    }
}

async fn serve(
    state: &AppState,
    raw_id: &str,
    query: SignedQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let file = file_id(raw_id)?;
    let (Some(exp), Some(sig)) = (query.exp, query.sig) else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a download URL needs `exp` and `sig`; get one from file/get_url",
        ));
    };
    tokens::verify_download(
        state.secrets.token_signing_key(),
        file,
        exp,
        &sig,
        crate::unix_ms(),
    )
    .map_err(|err| {
        ApiError::new(
            ErrorCode::Forbidden,
            match err {
                TokenError::Expired => "the download URL has expired; get a new one",
                TokenError::Invalid => "the download URL's signature is not valid",
            },
        )
    })?;
    let record = state
        .storage
        .files()
        .file(file)
        .await?
        .filter(|record| record.status == conclave_storage::FileStatus::Complete)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no file {file}")))?;
    let sha256 = record.sha256.clone().unwrap_or_default();
    let etag = format!("\"{sha256}\"");
    let size = record.size;

    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, max-age=3600")
        // The bytes are whatever a user uploaded: never let a browser run
        // them as this origin's page.
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CONTENT_SECURITY_POLICY, "sandbox")
        .header(
            header::CONTENT_DISPOSITION,
            content_disposition(&record.mime, &record.name),
        );
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if not_modified {
        return response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(|err| ApiError::internal(err.to_string()));
    }
    let requested = download_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, range) = match requested {
        Requested::Whole => (StatusCode::OK, 0..size),
        Requested::Part { start, end } => {
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, start..end)
        }
        Requested::Unsatisfiable => {
            let mut refused = ApiError::new(
                ErrorCode::RangeNotSatisfiable,
                format!("the file has {size} bytes"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                refused.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(refused);
        }
    };
    let length = range.end - range.start;
    let body = if length == 0 {
        Body::empty()
    } else {
        Body::from_stream(state.files.read(&record, range).await?)
    };
    response
        .status(status)
        .header(header::CONTENT_TYPE, &record.mime)
        .header(header::CONTENT_LENGTH, length)
        .body(body)
        .map_err(|err| ApiError::internal(err.to_string()))
}

/// Pictures, sound and video may show in place; anything else downloads,
/// under its name (RFC 6266, UTF-8 percent-encoded).
fn content_disposition(mime: &str, name: &str) -> String {
    let inline = ["image/", "audio/", "video/"]
        .iter()
        .any(|prefix| mime.starts_with(prefix));
    let mut encoded = String::with_capacity(name.len() * 3);
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!(
        "{}; filename*=UTF-8''{encoded}",
        if inline { "inline" } else { "attachment" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded_and_only_media_shows_inline() {
        assert_eq!(
            content_disposition("image/png", "a b.png"),
            "inline; filename*=UTF-8''a%20b.png"
        );
        assert_eq!(
            content_disposition("text/html", "ü\";x.html"),
            "attachment; filename*=UTF-8''%C3%BC%22%3Bx.html"
        );
    }
}

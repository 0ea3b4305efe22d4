//! Turning the server's envelopes into results, the same way on every
//! transport.

use conclave_protocol::api::{ErrorBody, ResponsePayload};
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::ClientError;

/// The outcome a response envelope carries. The body stays encoded until
/// the caller parses it into the route's type.
pub(crate) fn response_result(
    payload: ResponsePayload<Box<RawValue>>,
) -> Result<Box<RawValue>, ClientError> {
    if payload.ok {
        // Every route answers with an object; an absent body is the empty one.
        Ok(payload.body.unwrap_or_else(empty_object))
    } else {
        Err(payload.error.map_or_else(
            || ClientError::Protocol("a failed response carries no error object".to_owned()),
            ClientError::from,
        ))
    }
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("`{{}}` is JSON"))
}

/// Parses a response body (JSON text) into the route's response type.
pub(crate) fn typed<T: DeserializeOwned>(route: &str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|err| {
        ClientError::Protocol(format!(
            "the response of `{route}` does not match its type: {err}"
        ))
    })
}

/// Serializes a request body.
pub(crate) fn to_body<T: serde::Serialize>(route: &str, request: &T) -> Result<Value, ClientError> {
    serde_json::to_value(request)
        .map_err(|err| ClientError::Protocol(format!("cannot encode a `{route}` request: {err}")))
}

/// The error of a refused HTTP request or WebSocket upgrade:
/// `{"error":{"code","message","retry_after_ms"?}}`, or, when the body is
/// not that (a proxy's error page, say), a transport error naming the
/// status.
pub(crate) fn http_error(status: u16, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct Refusal {
        error: ErrorBody,
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(refusal) => refusal.error.into(),
        Err(_) => {
            let shown = String::from_utf8_lossy(body.get(..SHOWN_BODY_MAX_BYTES).unwrap_or(body))
                .into_owned();
            ClientError::Transport(format!("HTTP status {status}: {shown}"))
        }
    }
}

/// How much of an unexpected error body goes into the error message; enough
/// to recognise a proxy's error page, not so much that logs fill up.
const SHOWN_BODY_MAX_BYTES: usize = 256;

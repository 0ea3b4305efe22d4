//! What a binary-framed session (WebSocket binary, TCP+Noise, QUIC) does
//! with each frame a client sends, and how replies are framed.

use bytes::Bytes;
use conclave_core::ErrorCode;
use conclave_protocol::api::{GoawayPayload, RequestPayload, ResponsePayload};
use conclave_protocol::{Frame, FrameType, parse_json_payload};

use crate::api_error::ApiError;
use crate::rpc::Answer;

/// The session's next step for one inbound frame.
pub(crate) enum FrameAction {
    /// Run an RPC; reply with an `RpcResponse` carrying `request_id`.
    Call {
        request_id: u64,
        route: String,
        body: serde_json::Value,
    },
    /// Send these bytes back at once (a pong, an error for one request).
    Reply(Bytes),
    /// The peer is alive; nothing to send.
    Alive,
    /// The peer broke the protocol: send a goaway with this error and close.
    Violation(ApiError),
}

pub(crate) fn on_frame(frame: &Frame) -> FrameAction {
    match frame.frame_type {
        FrameType::RpcRequest => match parse_json_payload::<RequestPayload>(frame) {
            Ok(request) => FrameAction::Call {
                request_id: frame.sequence,
                route: request.route,
                body: request.body,
            },
            // A bad payload in a well-formed frame spoils one request, not
            // the connection.
            Err(err) => FrameAction::Reply(response_frame(
                frame.sequence,
                Err(ApiError::new(err.code(), err.to_string())),
            )),
        },
        FrameType::Ping => match Frame::new(
            FrameType::Pong,
            frame.channel_id,
            frame.sequence,
            frame.payload.clone(),
        )
        .encode()
        {
            Ok(pong) => FrameAction::Reply(pong),
            Err(err) => FrameAction::Violation(ApiError::new(err.code(), err.to_string())),
        },
        FrameType::Pong => FrameAction::Alive,
        other => FrameAction::Violation(ApiError::new(
            ErrorCode::UnsupportedFrame,
            format!(
                "frame type {other:?} (0x{:02x}) is not accepted from clients here",
                other.as_u8()
            ),
        )),
    }
}

/// An `RpcResponse` frame for request `id`.
pub(crate) fn response_frame(id: u64, result: Result<Answer, ApiError>) -> Bytes {
    let payload = match result {
        Ok(body) => ResponsePayload::<Answer> {
            id: None,
            ok: true,
            body: Some(body),
            error: None,
        },
        Err(err) => ResponsePayload {
            id: None,
            ok: false,
            body: None,
            error: Some(err.public().body()),
        },
    };
    encode_json(FrameType::RpcResponse, id, &payload)
}

/// A `Goaway` frame: why the server is closing the connection.
pub(crate) fn goaway_frame(code: ErrorCode, message: &str) -> Bytes {
    let payload = GoawayPayload {
        code: code.as_str().to_owned(),
        message: message.to_owned(),
    };
    encode_json(FrameType::Goaway, 0, &payload)
}

fn encode_json(frame_type: FrameType, sequence: u64, payload: &impl serde::Serialize) -> Bytes {
    match Frame::json(frame_type, 0, sequence, payload).and_then(|f| f.encode()) {
        Ok(bytes) => bytes,
        Err(err) => {
            // Only an over-limit response can fail; answer with a small error
            // instead so the client is not left waiting.
            tracing::warn!(error = %err, "response too large to frame");
            let fallback = ResponsePayload::<Answer> {
                id: None,
                ok: false,
                body: None,
                error: Some(
                    ApiError::new(
                        ErrorCode::PayloadTooLarge,
                        "the response exceeds the frame limit",
                    )
                    .body(),
                ),
            };
            Frame::json(FrameType::RpcResponse, 0, sequence, &fallback)
                .and_then(|f| f.encode())
                .unwrap_or_default()
        }
    }
}

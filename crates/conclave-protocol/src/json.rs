//! JSON payloads, kept apart from framing so that the frame decoder stays
//! cheap and never runs a parser on bytes it is about to reject.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;
use crate::frame::Frame;
use crate::frame_type::{FrameType, PayloadKind};
use crate::{JSON_PAYLOAD_MAX_BYTES, len_u64};

/// Parses the payload of a JSON frame into `T`.
///
/// The payload must be a JSON object even when `T` would accept another
/// kind of value, so that every envelope can grow new fields later.
///
/// # Errors
///
/// [`CodecError::NotJson`] if the frame type does not carry JSON,
/// [`CodecError::InvalidJson`] with serde's message if the payload is not a
/// JSON object or does not match `T`.
pub fn parse_json_payload<T: DeserializeOwned>(frame: &Frame) -> Result<T, CodecError> {
    if frame.frame_type.payload_kind() != PayloadKind::Json {
        return Err(CodecError::NotJson(frame.frame_type));
    }
    let first = frame
        .payload
        .iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(CodecError::InvalidJson(
            "payload is not a JSON object".to_owned(),
        ));
    }
    // An object opening brace followed by a parse that consumes the whole
    // input (serde_json rejects trailing bytes) means the value is one object.
    serde_json::from_slice(&frame.payload).map_err(|err| CodecError::InvalidJson(err.to_string()))
}

impl Frame {
    /// Builds a JSON frame from a value that serializes to a JSON object.
    ///
    /// # Errors
    ///
    /// [`CodecError::NotJson`] for a non-JSON frame type,
    /// [`CodecError::InvalidJson`] if `value` does not serialize to an
    /// object, [`CodecError::ControlTooLarge`] if the result is too big.
    pub fn json<T: Serialize + ?Sized>(
        frame_type: FrameType,
        channel_id: u64,
        sequence: u64,
        value: &T,
    ) -> Result<Self, CodecError> {
        if frame_type.payload_kind() != PayloadKind::Json {
            return Err(CodecError::NotJson(frame_type));
        }
        let payload =
            serde_json::to_vec(value).map_err(|err| CodecError::InvalidJson(err.to_string()))?;
        if payload.first() != Some(&b'{') {
            return Err(CodecError::InvalidJson(
                "value does not serialize to a JSON object".to_owned(),
            ));
        }
        if payload.len() > JSON_PAYLOAD_MAX_BYTES {
            return Err(CodecError::ControlTooLarge {
                len: len_u64(payload.len()),
                max: len_u64(JSON_PAYLOAD_MAX_BYTES),
            });
        }
        Ok(Self::new(frame_type, channel_id, sequence, payload))
    }
}

//! The JSON shapes of the handshake frames and the Noise payloads inside
//! them, with the checks every side applies to them.

use conclave_protocol::{CodecError, Frame, FrameType, parse_json_payload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::HANDSHAKE_HEX_MAX_BYTES;
use crate::error::TunnelError;

/// Handshake frames travel on the connection channel.
pub(crate) const HANDSHAKE_CHANNEL_ID: u64 = 0;
/// Handshake frames are not requests; their sequence is fixed.
pub(crate) const HANDSHAKE_SEQUENCE: u64 = 0;

/// Most entries a client may list in `supported_versions`: far more than
/// will ever exist, few enough that negotiating is trivially cheap.
pub const SUPPORTED_VERSIONS_MAX_COUNT: usize = 16;

/// Longest `u64` in decimal (`18446744073709551615`).
const DEVICE_ID_MAX_DIGITS: usize = 20;

/// Longest `Goaway.code` kept from a peer: codes are short identifiers,
/// and an error value should not carry an arbitrarily large string.
pub(crate) const GOAWAY_CODE_MAX_BYTES: usize = 64;

/// Longest `Goaway.message` sent or kept: one human sentence.
pub const GOAWAY_MESSAGE_MAX_BYTES: usize = 1024;

/// Payload of the client's `Hello` frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HelloPayload {
    pub pattern: String,
    pub handshake: String,
}

/// Payload of both `Auth` frames (server's message 2, client's message 3).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AuthPayload {
    pub handshake: String,
}

/// Noise payload of message 1: who the client claims to be.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClaimPayload {
    /// Decimal string, like every id on the JSON wire, because JavaScript
    /// clients cannot hold a `u64` in a number.
    pub device_id: String,
    pub supported_versions: Vec<u32>,
}

/// Noise payload of message 2: the version the session will speak.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AcceptPayload {
    pub protocol_version: u32,
}

/// Payload of a `Goaway` frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GoawayPayload {
    pub code: String,
    pub message: String,
}

/// Fails unless `frame` has the type this handshake step needs and sits on
/// channel 0 with sequence 0.
pub(crate) fn expect_frame(frame: &Frame, expected: FrameType) -> Result<(), TunnelError> {
    if frame.frame_type == expected
        && frame.channel_id == HANDSHAKE_CHANNEL_ID
        && frame.sequence == HANDSHAKE_SEQUENCE
    {
        Ok(())
    } else {
        Err(TunnelError::UnexpectedFrame {
            expected,
            got: frame.frame_type,
            channel_id: frame.channel_id,
            sequence: frame.sequence,
        })
    }
}

/// Parses the JSON object in a handshake frame.
pub(crate) fn frame_json<T: DeserializeOwned>(frame: &Frame) -> Result<T, TunnelError> {
    parse_json_payload(frame).map_err(|err| match err {
        CodecError::InvalidJson(text) => TunnelError::InvalidJson(text),
        other => TunnelError::Codec(other),
    })
}

/// Parses the JSON object carried inside a Noise payload.
pub(crate) fn noise_payload_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TunnelError> {
    // serde would also accept an array for a struct; insist on an object so
    // these payloads can grow fields, as CCP-1 JSON payloads do.
    let first = payload
        .iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(TunnelError::InvalidJson(
            "noise payload is not a JSON object".to_owned(),
        ));
    }
    serde_json::from_slice(payload).map_err(|err| TunnelError::InvalidJson(err.to_string()))
}

/// Builds a handshake frame (`Hello` or `Auth`) carrying `value`.
pub(crate) fn handshake_frame<T: Serialize>(
    frame_type: FrameType,
    value: &T,
) -> Result<Frame, TunnelError> {
    Frame::json(frame_type, HANDSHAKE_CHANNEL_ID, HANDSHAKE_SEQUENCE, value)
        .map_err(TunnelError::Codec)
}

/// Decodes the hex of a Noise handshake message, refusing oversized input
/// before decoding it.
pub(crate) fn decode_handshake_hex(hex_text: &str) -> Result<Vec<u8>, TunnelError> {
    if hex_text.len() > HANDSHAKE_HEX_MAX_BYTES {
        return Err(TunnelError::MalformedHandshake(
            "handshake hex is longer than a noise message can be",
        ));
    }
    hex::decode(hex_text)
        .map_err(|_| TunnelError::MalformedHandshake("handshake field is not valid hex"))
}

/// Parses a device id in canonical decimal: digits only, no sign, no
/// leading zero, within `u64`, so each id has exactly one spelling.
pub(crate) fn parse_device_id(text: &str) -> Result<u64, TunnelError> {
    let invalid = || TunnelError::MalformedHandshake("device_id is not a canonical decimal u64");
    if text.is_empty()
        || text.len() > DEVICE_ID_MAX_DIGITS
        || !text.bytes().all(|byte| byte.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(invalid());
    }
    text.parse().map_err(|_| invalid())
}

/// Cuts `text` to at most `max_bytes` without splitting a character.
pub(crate) fn truncate_utf8(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or_default()
}

/// The plaintext `Goaway` frame that refuses a handshake.
///
/// `code` should be a stable snake_case code (see
/// [`TunnelError::code`]); `message` is cut to
/// [`GOAWAY_MESSAGE_MAX_BYTES`] so the frame always encodes.
#[must_use]
pub fn goaway(code: &str, message: &str) -> Frame {
    let body = GoawayPayload {
        code: truncate_utf8(code, GOAWAY_CODE_MAX_BYTES).to_owned(),
        message: truncate_utf8(message, GOAWAY_MESSAGE_MAX_BYTES).to_owned(),
    };
    // Serializing two strings cannot fail; the fallback only exists so
    // that this function has no panic path at all.
    let payload = serde_json::to_vec(&body)
        .unwrap_or_else(|_| br#"{"code":"internal","message":""}"#.to_vec());
    Frame::new(
        FrameType::Goaway,
        HANDSHAKE_CHANNEL_ID,
        HANDSHAKE_SEQUENCE,
        payload,
    )
}

/// A plaintext refusal (`Goaway` on channel 0, sequence 0, with a readable
/// payload) as the client's error, or `None` if `frame` is anything else.
pub(crate) fn parse_refusal(frame: &Frame) -> Option<TunnelError> {
    if expect_frame(frame, FrameType::Goaway).is_err() {
        return None;
    }
    let body = frame_json::<GoawayPayload>(frame).ok()?;
    Some(TunnelError::Refused {
        code: truncate_utf8(&body.code, GOAWAY_CODE_MAX_BYTES).to_owned(),
        message: truncate_utf8(&body.message, GOAWAY_MESSAGE_MAX_BYTES).to_owned(),
    })
}

/// Turns a `Goaway` from the server into the error the client reports.
pub(crate) fn refusal_from_goaway(frame: &Frame) -> TunnelError {
    match frame_json::<GoawayPayload>(frame) {
        Ok(body) => TunnelError::Refused {
            code: truncate_utf8(&body.code, GOAWAY_CODE_MAX_BYTES).to_owned(),
            message: truncate_utf8(&body.message, GOAWAY_MESSAGE_MAX_BYTES).to_owned(),
        },
        // Still a refusal, just an inarticulate one.
        Err(_) => TunnelError::Refused {
            code: String::new(),
            message: "unreadable Goaway payload".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NOISE_MESSAGE_MAX_BYTES;

    #[test]
    fn device_ids_are_canonical_decimal() {
        assert_eq!(parse_device_id("0"), Ok(0));
        assert_eq!(parse_device_id("42"), Ok(42));
        assert_eq!(parse_device_id("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "042",
            "+42",
            "-1",
            " 42",
            "4 2",
            "0x2a",
            "18446744073709551616",
            "99999999999999999999999",
            "٤٢",
        ] {
            assert_eq!(
                parse_device_id(bad).map_err(|err| err.code()),
                Err("handshake_failed"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hex_is_bounded_before_decoding() {
        assert_eq!(decode_handshake_hex("00ff"), Ok(vec![0, 0xff]));
        assert_eq!(decode_handshake_hex("00FF"), Ok(vec![0, 0xff]));
        let max = "ab".repeat(NOISE_MESSAGE_MAX_BYTES);
        assert_eq!(
            decode_handshake_hex(&max).map(|m| m.len()),
            Ok(NOISE_MESSAGE_MAX_BYTES)
        );
        let over = "ab".repeat(NOISE_MESSAGE_MAX_BYTES + 1);
        assert!(matches!(
            decode_handshake_hex(&over),
            Err(TunnelError::MalformedHandshake(_))
        ));
        for bad in ["0", "zz", "0g", "é0"] {
            assert!(matches!(
                decode_handshake_hex(bad),
                Err(TunnelError::MalformedHandshake(_))
            ));
        }
    }

    #[test]
    fn goaway_round_trips_and_truncates() {
        let frame = goaway("key_mismatch", "no");
        assert_eq!(frame.frame_type, FrameType::Goaway);
        assert_eq!((frame.channel_id, frame.sequence), (0, 0));
        assert_eq!(
            &frame.payload[..],
            br#"{"code":"key_mismatch","message":"no"}"#
        );
        assert!(matches!(
            refusal_from_goaway(&frame),
            TunnelError::Refused { code, message } if code == "key_mismatch" && message == "no"
        ));

        let long = "é".repeat(GOAWAY_MESSAGE_MAX_BYTES);
        let frame = goaway("x", &long);
        assert!(frame.encode().is_ok());
        let body: GoawayPayload = frame_json(&frame).expect("json");
        assert!(body.message.len() <= GOAWAY_MESSAGE_MAX_BYTES);
        assert!(body.message.chars().all(|c| c == 'é'));

        let garbage = Frame::new(FrameType::Goaway, 0, 0, &b"nope"[..]);
        assert_eq!(refusal_from_goaway(&garbage).code(), "handshake_failed");
    }

    #[test]
    fn frames_off_channel_zero_are_unexpected() {
        let frame = Frame::new(FrameType::Hello, 1, 0, &b"{}"[..]);
        assert_eq!(
            expect_frame(&frame, FrameType::Hello).map_err(|e| e.code()),
            Err("handshake_failed")
        );
        let frame = Frame::new(FrameType::Hello, 0, 9, &b"{}"[..]);
        assert!(expect_frame(&frame, FrameType::Hello).is_err());
        let frame = Frame::new(FrameType::Auth, 0, 0, &b"{}"[..]);
        assert!(expect_frame(&frame, FrameType::Hello).is_err());
        assert!(expect_frame(&frame, FrameType::Auth).is_ok());
    }

    #[test]
    fn noise_payloads_must_be_objects() {
        assert!(noise_payload_json::<AcceptPayload>(br#"{"protocol_version":1}"#).is_ok());
        assert!(matches!(
            noise_payload_json::<AcceptPayload>(b"[1]"),
            Err(TunnelError::InvalidJson(_))
        ));
        assert!(matches!(
            noise_payload_json::<AcceptPayload>(b""),
            Err(TunnelError::InvalidJson(_))
        ));
    }
}

//! Every error variant, each provoked by a hand-built byte string.

use bytes::Bytes;
use conclave_protocol::{
    CodecError, DECODER_BUFFER_MAX_BYTES, Decoded, Frame, FrameDecoder, FrameType, decode_frame,
    parse_json_payload,
};

#[derive(Debug, serde::Deserialize)]
struct Login {
    route: String,
}

fn decode_err(bytes: &[u8]) -> CodecError {
    match decode_frame(bytes) {
        Err(err) => err,
        Ok(other) => panic!("expected an error for {bytes:02x?}, got {other:?}"),
    }
}

#[test]
fn varint_overflow_in_frame_len() {
    let mut bytes = vec![0xff; 9];
    bytes.push(0x02);
    assert_eq!(decode_err(&bytes), CodecError::VarintOverflow);
    assert_eq!(decode_err(&[0x80; 10]), CodecError::VarintOverflow);
}

#[test]
fn varint_overflow_in_header_field() {
    // frame_len 12: type Ping, then a channel_id that runs to an 11th byte.
    let mut bytes = vec![0x0c, 0x23];
    bytes.extend_from_slice(&[0x80; 10]);
    assert_eq!(decode_err(&bytes), CodecError::VarintOverflow);
}

#[test]
fn non_canonical_varints() {
    // Zero written in two bytes as the frame length.
    assert_eq!(decode_err(&[0x80, 0x00]), CodecError::NonCanonicalVarint);
    // ... as the channel id, the sequence, and the payload length.
    assert_eq!(
        decode_err(&[0x05, 0x23, 0x80, 0x00, 0x01, 0x00]),
        CodecError::NonCanonicalVarint
    );
    assert_eq!(
        decode_err(&[0x05, 0x23, 0x00, 0x81, 0x00, 0x00]),
        CodecError::NonCanonicalVarint
    );
    assert_eq!(
        decode_err(&[0x05, 0x23, 0x00, 0x01, 0x80, 0x00]),
        CodecError::NonCanonicalVarint
    );
}

#[test]
fn unknown_frame_types() {
    for byte in [0x00, 0x15, 0x26, 0x31, 0xff] {
        assert_eq!(
            decode_err(&[0x04, byte, 0x00, 0x00, 0x00]),
            CodecError::UnknownFrameType(byte)
        );
        // Reported as soon as the type byte is there.
        assert_eq!(
            decode_err(&[0x04, byte]),
            CodecError::UnknownFrameType(byte)
        );
    }
}

#[test]
fn frame_too_large_is_reported_from_the_length_alone() {
    // 16 MiB + 1 = 0x0100_0001, with nothing after the length prefix.
    assert_eq!(
        decode_err(&[0x81, 0x80, 0x80, 0x08]),
        CodecError::FrameTooLarge {
            len: 16 * 1024 * 1024 + 1,
            max: 16 * 1024 * 1024
        }
    );
    // u64::MAX claimed as a frame length.
    let mut huge = vec![0xff; 9];
    huge.push(0x01);
    assert_eq!(
        decode_err(&huge),
        CodecError::FrameTooLarge {
            len: u64::MAX,
            max: 16 * 1024 * 1024
        }
    );
    // Exactly 16 MiB is allowed, so it only waits for more bytes.
    assert_eq!(
        decode_frame(&[0x80, 0x80, 0x80, 0x08]),
        Ok(Decoded::Incomplete)
    );
}

#[test]
fn heartbeat_too_large_before_its_payload_arrives() {
    // Ping, frame_len 262 = 1 + 1 + 1 + 2 + 257, payload_len 257; no payload.
    assert_eq!(
        decode_err(&[0x86, 0x02, 0x23, 0x00, 0x00, 0x81, 0x02]),
        CodecError::ControlTooLarge { len: 257, max: 256 }
    );
}

#[test]
fn json_too_large_before_its_payload_arrives() {
    // RpcRequest with payload_len 262_145 (0x04_0001 -> 81 80 10);
    // frame_len = 1 + 1 + 1 + 3 + 262_145 = 262_151 (-> 87 80 10).
    assert_eq!(
        decode_err(&[0x87, 0x80, 0x10, 0x20, 0x00, 0x00, 0x81, 0x80, 0x10]),
        CodecError::ControlTooLarge {
            len: 262_145,
            max: 262_144
        }
    );
}

#[test]
fn opaque_payloads_may_exceed_the_json_limit() {
    // Same header as above but type Msg: only waits for the payload.
    assert_eq!(
        decode_frame(&[0x87, 0x80, 0x10, 0x05, 0x00, 0x00, 0x81, 0x80, 0x10]),
        Ok(Decoded::Incomplete)
    );
}

#[test]
fn payload_length_mismatch_both_ways() {
    // Declares one payload byte, but the frame ends after the header.
    assert_eq!(
        decode_err(&[0x04, 0x23, 0x00, 0x00, 0x01]),
        CodecError::PayloadLengthMismatch {
            declared: 1,
            actual: 0
        }
    );
    // Declares an empty payload, but one byte is left in the frame.
    assert_eq!(
        decode_err(&[0x05, 0x23, 0x00, 0x00, 0x00, 0xaa]),
        CodecError::PayloadLengthMismatch {
            declared: 0,
            actual: 1
        }
    );
    // Detected before the payload arrives.
    assert_eq!(
        decode_err(&[0x10, 0x05, 0x00, 0x00, 0x03]),
        CodecError::PayloadLengthMismatch {
            declared: 3,
            actual: 12
        }
    );
}

#[test]
fn empty_frame() {
    assert_eq!(decode_err(&[0x00]), CodecError::EmptyFrame);
}

#[test]
fn truncated_headers() {
    assert_eq!(decode_err(&[0x01, 0x23]), CodecError::TruncatedHeader);
    assert_eq!(decode_err(&[0x02, 0x23, 0x00]), CodecError::TruncatedHeader);
    assert_eq!(
        decode_err(&[0x03, 0x23, 0x00, 0x00]),
        CodecError::TruncatedHeader
    );
    // A varint cut by the frame end must not borrow bytes from what follows.
    assert_eq!(
        decode_err(&[0x02, 0x23, 0x80, 0x01, 0x00, 0x00]),
        CodecError::TruncatedHeader
    );
}

#[test]
fn invalid_json() {
    let not_object = Frame::new(FrameType::RpcRequest, 0, 1, Bytes::from_static(b" [1]"));
    assert_eq!(
        parse_json_payload::<serde_json::Value>(&not_object),
        Err(CodecError::InvalidJson(
            "payload is not a JSON object".to_owned()
        ))
    );

    let broken = Frame::new(FrameType::RpcRequest, 0, 1, Bytes::from_static(b"{\"a\":"));
    match parse_json_payload::<serde_json::Value>(&broken) {
        Err(CodecError::InvalidJson(message)) => assert!(message.contains("EOF"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }

    let trailing = Frame::new(FrameType::Event, 0, 1, Bytes::from_static(b"{} []"));
    match parse_json_payload::<serde_json::Value>(&trailing) {
        Err(CodecError::InvalidJson(message)) => {
            assert!(message.contains("trailing"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }

    let missing = Frame::new(FrameType::RpcRequest, 0, 1, Bytes::from_static(b"{}"));
    match parse_json_payload::<Login>(&missing) {
        Err(CodecError::InvalidJson(message)) => {
            assert!(message.contains("missing field `route`"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn json_objects_parse() {
    let frame = Frame::new(
        FrameType::RpcRequest,
        0,
        7,
        Bytes::from_static(b"\n {\"route\":\"account/auth/login\",\"body\":{}}"),
    );
    let value: serde_json::Value = parse_json_payload(&frame).expect("valid object");
    assert_eq!(value["route"], "account/auth/login");
    let login: Login = parse_json_payload(&frame).expect("matches Login");
    assert_eq!(login.route, "account/auth/login");
}

#[test]
fn not_json() {
    for frame_type in [FrameType::Msg, FrameType::Ping, FrameType::Yjs] {
        let frame = Frame::new(frame_type, 0, 0, Bytes::from_static(b"{}"));
        assert_eq!(
            parse_json_payload::<serde_json::Value>(&frame),
            Err(CodecError::NotJson(frame_type))
        );
        assert_eq!(
            Frame::json(frame_type, 0, 0, &serde_json::json!({})),
            Err(CodecError::NotJson(frame_type))
        );
    }
}

#[test]
fn json_constructor_requires_an_object() {
    assert_eq!(
        Frame::json(FrameType::Event, 0, 0, &[1, 2]),
        Err(CodecError::InvalidJson(
            "value does not serialize to a JSON object".to_owned()
        ))
    );
    let frame = Frame::json(FrameType::Event, 3, 4, &serde_json::json!({"a": 1})).expect("object");
    assert_eq!(&frame.payload[..], b"{\"a\":1}");
    let big = serde_json::json!({ "x": "y".repeat(262_144) });
    assert!(matches!(
        Frame::json(FrameType::Event, 0, 0, &big),
        Err(CodecError::ControlTooLarge { max: 262_144, .. })
    ));
}

#[test]
fn decoder_buffer_full() {
    let mut decoder = FrameDecoder::new();
    // A maximal frame's length prefix, so nothing completes while we fill.
    decoder
        .push(&[0x80, 0x80, 0x80, 0x08])
        .expect("header fits");
    assert_eq!(decoder.next_frame(), Ok(None));
    let room = decoder.remaining_capacity();
    assert_eq!(room, DECODER_BUFFER_MAX_BYTES - 4);
    let filler = vec![0u8; room + 1];
    let expected = CodecError::BufferFull {
        len: (DECODER_BUFFER_MAX_BYTES + 1) as u64,
        max: DECODER_BUFFER_MAX_BYTES as u64,
    };
    assert_eq!(decoder.push(&filler), Err(expected.clone()));
    assert_eq!(decoder.remaining_capacity(), 0);
    assert_eq!(decoder.buffered_len(), 0);
    assert_eq!(decoder.next_frame(), Err(expected));
}

#[test]
fn decoder_is_poisoned_after_an_error() {
    let mut decoder = FrameDecoder::new();
    decoder
        .push(&[0x04, 0x23, 0x00, 0x01, 0x00, 0x00])
        .expect("small push");
    assert!(decoder.next_frame().expect("ping").is_some());
    assert_eq!(decoder.next_frame(), Err(CodecError::EmptyFrame));
    assert_eq!(decoder.error(), Some(&CodecError::EmptyFrame));
    // Even a valid frame afterwards is not decoded.
    assert_eq!(
        decoder.push(&[0x04, 0x23, 0x00, 0x01, 0x00]),
        Err(CodecError::EmptyFrame)
    );
    assert_eq!(decoder.next_frame(), Err(CodecError::EmptyFrame));
}

#[test]
fn error_codes_are_stable() {
    let cases = [
        (CodecError::VarintOverflow, "malformed_frame"),
        (CodecError::NonCanonicalVarint, "malformed_frame"),
        (CodecError::UnknownFrameType(0xff), "unknown_frame_type"),
        (
            CodecError::FrameTooLarge { len: 1, max: 0 },
            "frame_too_large",
        ),
        (
            CodecError::ControlTooLarge { len: 1, max: 0 },
            "payload_too_large",
        ),
        (
            CodecError::PayloadLengthMismatch {
                declared: 1,
                actual: 0,
            },
            "malformed_frame",
        ),
        (CodecError::EmptyFrame, "malformed_frame"),
        (CodecError::TruncatedHeader, "malformed_frame"),
        (CodecError::InvalidJson(String::new()), "invalid_json"),
        (CodecError::NotJson(FrameType::Msg), "wrong_payload_kind"),
        (CodecError::BufferFull { len: 1, max: 0 }, "frame_too_large"),
    ];
    for (err, code) in cases {
        assert_eq!(err.code().as_str(), code, "{err:?}");
        let keeps_connection = matches!(err, CodecError::InvalidJson(_) | CodecError::NotJson(_));
        assert_eq!(err.ends_connection(), !keeps_connection, "{err:?}");
    }
}

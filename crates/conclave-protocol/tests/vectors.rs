//! Known byte vectors, including every hex example in `docs/PROTOCOL.md`.

use bytes::Bytes;
use conclave_protocol::{
    CodecError, Decoded, FRAME_LEN_MAX_BYTES, Frame, FrameDecoder, FrameType,
    HEARTBEAT_PAYLOAD_MAX_BYTES, JSON_PAYLOAD_MAX_BYTES, NOISE_PLAINTEXT_MAX_BYTES,
    PROTOCOL_VERSION, decode_frame,
};

const PROTOCOL_DOC: &str = include_str!("../../../docs/PROTOCOL.md");

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Encodes `frame`, compares with `expected_hex`, decodes it back, and
/// checks that the doc shows the same bytes (the doc wraps hex dumps over
/// several lines, so whitespace is normalised first).
fn check_vector(frame: &Frame, expected_hex: &str) {
    let encoded = frame.encode().expect("vector is within limits");
    assert_eq!(hex(&encoded), expected_hex);
    assert_eq!(frame.encoded_len(), encoded.len());
    assert_eq!(
        decode_frame(&encoded),
        Ok(Decoded::Frame {
            frame: frame.clone(),
            consumed: encoded.len()
        })
    );
    let normalised_doc = PROTOCOL_DOC
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        normalised_doc.contains(expected_hex),
        "docs/PROTOCOL.md does not show {expected_hex}"
    );
}

#[test]
fn doc_ping() {
    check_vector(
        &Frame::new(FrameType::Ping, 0, 1, Bytes::new()),
        "04 23 00 01 00",
    );
}

#[test]
fn doc_rpc_request_login() {
    check_vector(
        &Frame::new(
            FrameType::RpcRequest,
            0,
            7,
            Bytes::from_static(br#"{"route":"account/auth/login","body":{}}"#),
        ),
        "2c 20 00 07 28 7b 22 72 6f 75 74 65 22 3a 22 61 \
         63 63 6f 75 6e 74 2f 61 75 74 68 2f 6c 6f 67 69 \
         6e 22 2c 22 62 6f 64 79 22 3a 7b 7d 7d",
    );
}

#[test]
fn doc_event_on_channel_42() {
    check_vector(
        &Frame::new(
            FrameType::Event,
            42,
            300,
            Bytes::from_static(br#"{"type":"typing","user_id":9}"#),
        ),
        "22 22 2a ac 02 1d 7b 22 74 79 70 65 22 3a 22 74 \
         79 70 69 6e 67 22 2c 22 75 73 65 72 5f 69 64 22 \
         3a 39 7d",
    );
}

#[test]
fn doc_varint_table() {
    for (value, expected) in [
        (0, "00"),
        (127, "7f"),
        (128, "80 01"),
        (300, "ac 02"),
        (16_384, "80 80 01"),
        (u64::MAX, "ff ff ff ff ff ff ff ff ff 01"),
    ] {
        let mut out = Vec::new();
        conclave_protocol::varint::encode_u64(value, &mut out);
        assert_eq!(hex(&out), expected);
        assert!(PROTOCOL_DOC.contains(&format!("| `{expected}` |")));
    }
}

#[test]
fn extreme_header_values() {
    check_without_doc(
        &Frame::new(
            FrameType::Pong,
            u64::MAX,
            u64::MAX,
            Bytes::from_static(b"n"),
        ),
        "17 24 ff ff ff ff ff ff ff ff ff 01 ff ff ff ff ff ff ff ff ff 01 01 6e",
    );
    check_without_doc(
        &Frame::new(FrameType::Yjs, 128, 0, Bytes::from_static(&[0x00, 0x01])),
        "07 30 80 01 00 02 00 01",
    );
}

fn check_without_doc(frame: &Frame, expected_hex: &str) {
    let encoded = frame.encode().expect("within limits");
    assert_eq!(hex(&encoded), expected_hex);
    let Ok(Decoded::Frame {
        frame: decoded,
        consumed,
    }) = decode_frame(&encoded)
    else {
        panic!("{expected_hex} does not decode");
    };
    assert_eq!(&decoded, frame);
    assert_eq!(consumed, encoded.len());
}

#[test]
fn constants() {
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(FRAME_LEN_MAX_BYTES, 16_777_216);
    assert_eq!(JSON_PAYLOAD_MAX_BYTES, 262_144);
    assert_eq!(HEARTBEAT_PAYLOAD_MAX_BYTES, 256);
    assert_eq!(NOISE_PLAINTEXT_MAX_BYTES, 65_519);
}

#[test]
fn decoding_ignores_bytes_after_the_frame() {
    let mut bytes = vec![0x04, 0x23, 0x00, 0x01, 0x00];
    bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(
        decode_frame(&bytes),
        Ok(Decoded::Frame {
            frame: Frame::new(FrameType::Ping, 0, 1, Bytes::new()),
            consumed: 5
        })
    );
}

/// Payload length of an Msg frame on channel 0, sequence 0 whose
/// `frame_len` is exactly the limit: 1 type byte, two 1-byte varints and a
/// 4-byte `payload_len` varint precede it.
const MAX_MSG_PAYLOAD_BYTES: usize = FRAME_LEN_MAX_BYTES - 7;

#[test]
fn largest_frame_round_trips_through_the_decoder() {
    let frame = Frame::new(
        FrameType::Msg,
        0,
        0,
        Bytes::from(vec![0x5a; MAX_MSG_PAYLOAD_BYTES]),
    );
    assert_eq!(frame.body_len(), FRAME_LEN_MAX_BYTES);
    let encoded = frame.encode().expect("exactly at the limit");
    assert_eq!(encoded.len(), FRAME_LEN_MAX_BYTES + 4);
    let mut decoder = FrameDecoder::new();
    for chunk in encoded.chunks(1 << 20) {
        assert!(chunk.len() <= decoder.remaining_capacity());
        decoder.push(chunk).expect("fits");
    }
    assert_eq!(decoder.next_frame(), Ok(Some(frame)));
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(decoder.buffered_len(), 0);
}

#[test]
fn encoder_refuses_oversized_frames() {
    let too_big = Frame::new(
        FrameType::Msg,
        0,
        0,
        Bytes::from(vec![0; MAX_MSG_PAYLOAD_BYTES + 1]),
    );
    assert_eq!(
        too_big.encode(),
        Err(CodecError::FrameTooLarge {
            len: FRAME_LEN_MAX_BYTES as u64 + 1,
            max: FRAME_LEN_MAX_BYTES as u64
        })
    );

    let ping = Frame::new(FrameType::Ping, 0, 0, Bytes::from(vec![0; 257]));
    assert_eq!(
        ping.encode(),
        Err(CodecError::ControlTooLarge { len: 257, max: 256 })
    );
    let json = Frame::new(FrameType::Hello, 0, 0, Bytes::from(vec![b' '; 262_145]));
    let mut out = bytes::BytesMut::from(&b"keep"[..]);
    assert_eq!(
        json.encode_into(&mut out),
        Err(CodecError::ControlTooLarge {
            len: 262_145,
            max: 262_144
        })
    );
    assert_eq!(&out[..], b"keep");

    let at_limit = Frame::new(FrameType::Ping, 0, 0, Bytes::from(vec![0; 256]));
    assert!(at_limit.encode().is_ok());
}

#[test]
fn doc_rpc_response() {
    let frame = Frame::new(
        FrameType::RpcResponse,
        0,
        7,
        &b"{\"ok\":true,\"body\":{}}"[..],
    );
    check_vector(
        &frame,
        "19 21 00 07 15 7b 22 6f 6b 22 3a 74 72 75 65 2c 22 62 6f 64 79 22 3a 7b 7d 7d",
    );
}

#[test]
fn doc_goaway() {
    let frame = Frame::new(
        FrameType::Goaway,
        0,
        0,
        &b"{\"code\":\"idle_timeout\",\"message\":\"bye\"}"[..],
    );
    check_vector(
        &frame,
        "2b 25 00 00 27 7b 22 63 6f 64 65 22 3a 22 69 64 6c 65 5f 74 69 6d 65 6f 75 74 22 2c \
         22 6d 65 73 73 61 67 65 22 3a 22 62 79 65 22 7d",
    );
}

#[test]
fn doc_quic_auth() {
    let frame = Frame::new(
        FrameType::Auth,
        0,
        0,
        &b"{\"token\":\"ca1.x.y\",\"supported_versions\":[1]}"[..],
    );
    check_vector(
        &frame,
        "30 02 00 00 2c 7b 22 74 6f 6b 65 6e 22 3a 22 63 61 31 2e 78 2e 79 22 2c 22 73 75 70 \
         70 6f 72 74 65 64 5f 76 65 72 73 69 6f 6e 73 22 3a 5b 31 5d 7d",
    );
}

#[test]
fn doc_lists_every_error_code() {
    for code in conclave_core::ErrorCode::ALL {
        let row = format!("| `{}` | {} |", code.as_str(), code.http_status());
        assert!(
            PROTOCOL_DOC.contains(&row),
            "docs/PROTOCOL.md section 7 lacks {row}"
        );
    }
}

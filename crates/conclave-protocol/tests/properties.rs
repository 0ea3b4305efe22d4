//! Property tests for the varint and frame codecs.

use bytes::Bytes;
use conclave_protocol::{
    CodecError, Decoded, Frame, FrameDecoder, FrameType, decode_frame, varint,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

/// Values spread over every varint length, plus the boundaries between
/// lengths, which uniform `u64`s (almost always 9-10 bytes) would miss.
fn varint_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0..=127u64,
        128..=16_383u64,
        (0u32..64).prop_map(|shift| 1u64 << shift),
        (1u32..64).prop_map(|shift| (1u64 << shift) - 1),
        Just(u64::MAX),
    ]
}

/// Valid frames of every type; payloads stay small so that the prefix
/// property (quadratic in frame size) runs quickly.
fn valid_frame() -> impl Strategy<Value = Frame> {
    (
        select(FrameType::ALL.to_vec()),
        varint_value(),
        varint_value(),
        vec(any::<u8>(), 0..=600),
    )
        .prop_map(|(frame_type, channel_id, sequence, mut payload)| {
            payload.truncate(frame_type.payload_kind().payload_max_bytes());
            Frame::new(frame_type, channel_id, sequence, payload)
        })
}

fn encode(frame: &Frame) -> Bytes {
    frame.encode().expect("strategy only builds valid frames")
}

/// What decoding `bytes` front to back with [`decode_frame`] yields: the
/// frames, then either the error or the number of bytes left incomplete.
fn decode_all(bytes: &[u8]) -> (Vec<Frame>, Result<usize, CodecError>) {
    let mut frames = Vec::new();
    let mut rest = bytes;
    loop {
        match decode_frame(rest) {
            Ok(Decoded::Frame { frame, consumed }) => {
                assert!(consumed > 0 && consumed <= rest.len());
                frames.push(frame);
                rest = &rest[consumed..];
            }
            Ok(Decoded::Incomplete) => return (frames, Ok(rest.len())),
            Err(err) => return (frames, Err(err)),
        }
    }
}

/// Feeds `bytes` to a [`FrameDecoder`] in chunks of the given sizes (cycled),
/// draining frames after every push, like a connection task would.
fn decode_streaming(
    bytes: &[u8],
    chunk_sizes: &[usize],
) -> (Vec<Frame>, Result<usize, CodecError>) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunk_sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        if let Err(err) = decoder.push(chunk) {
            return (frames, Err(err));
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    // Poisoned: the same error again, and nothing buffered.
                    assert_eq!(decoder.next_frame(), Err(err.clone()));
                    assert_eq!(decoder.push(b"x"), Err(err.clone()));
                    assert_eq!(decoder.remaining_capacity(), 0);
                    return (frames, Err(err));
                }
            }
        }
    }
    (frames, Ok(decoder.buffered_len()))
}

/// A decoded frame must be the only encoding of itself.
fn assert_canonical(bytes: &[u8]) {
    if let Ok(Decoded::Frame { frame, consumed }) = decode_frame(bytes) {
        assert_eq!(encode(&frame), bytes[..consumed]);
    }
}

proptest! {
    #[test]
    fn frames_round_trip(frame in valid_frame()) {
        let encoded = encode(&frame);
        prop_assert_eq!(encoded.len(), frame.encoded_len());
        prop_assert_eq!(
            decode_frame(&encoded),
            Ok(Decoded::Frame { frame, consumed: encoded.len() })
        );
    }

    #[test]
    fn strict_prefixes_are_incomplete(frame in valid_frame()) {
        let encoded = encode(&frame);
        for end in 0..encoded.len() {
            prop_assert_eq!(decode_frame(&encoded[..end]), Ok(Decoded::Incomplete), "prefix {}", end);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..4096),
        chunk_sizes in vec(1usize..=512, 1..16),
    ) {
        assert_canonical(&bytes);
        let one_shot = decode_all(&bytes);
        let streaming = decode_streaming(&bytes, &chunk_sizes);
        prop_assert_eq!(streaming, one_shot);
    }

    #[test]
    fn mutated_frames_never_panic_and_stay_canonical(
        frames in vec(valid_frame(), 1..4),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        chunk_sizes in vec(1usize..=64, 1..8),
    ) {
        let mut bytes: Vec<u8> = frames.iter().flat_map(|frame| encode(frame).to_vec()).collect();
        for (index, value) in edits {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        assert_canonical(&bytes);
        let (decoded, _) = decode_all(&bytes);
        for frame in &decoded {
            prop_assert!(frame.check_limits().is_ok());
        }
        prop_assert_eq!(decode_streaming(&bytes, &chunk_sizes), decode_all(&bytes));
    }

    #[test]
    fn concatenated_frames_stream_in_order(
        frames in vec(valid_frame(), 1..8),
        chunk_sizes in vec(1usize..=300, 1..16),
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(|frame| encode(frame).to_vec()).collect();
        prop_assert_eq!(decode_streaming(&bytes, &chunk_sizes), (frames, Ok(0)));
    }

    #[test]
    fn varints_round_trip(value in varint_value(), trailing in vec(any::<u8>(), 0..4)) {
        let mut encoded = Vec::new();
        varint::encode_u64(value, &mut encoded);
        prop_assert_eq!(encoded.len(), varint::encoded_len(value));
        prop_assert!(encoded.len() <= varint::VARINT_LEN_MAX_BYTES);
        for end in 0..encoded.len() {
            prop_assert_eq!(varint::decode_u64(&encoded[..end]), Ok(None));
        }
        let len = encoded.len();
        encoded.extend_from_slice(&trailing);
        prop_assert_eq!(varint::decode_u64(&encoded), Ok(Some((value, len))));
    }

    #[test]
    fn over_long_varints_are_rejected(value in varint_value(), extra_zero_groups in 1usize..4) {
        let mut encoded = Vec::new();
        varint::encode_u64(value, &mut encoded);
        for _ in 0..extra_zero_groups {
            if let Some(last) = encoded.last_mut() {
                *last |= 0x80;
            }
            encoded.push(0x00);
        }
        let expected = if encoded.len() > varint::VARINT_LEN_MAX_BYTES {
            CodecError::VarintOverflow
        } else {
            CodecError::NonCanonicalVarint
        };
        prop_assert_eq!(varint::decode_u64(&encoded), Err(expected));
    }
}

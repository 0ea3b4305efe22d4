#![no_main]

use conclave_protocol::{Decoded, Frame, FrameDecoder, decode_frame, parse_json_payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_selector, bytes)) = data.split_first() else {
        return;
    };

    let mut one_shot = Vec::new();
    let mut rest = bytes;
    while let Ok(Decoded::Frame { frame, consumed }) = decode_frame(rest) {
        let (frame_bytes, tail) = rest.split_at(consumed);
        let reencoded = frame.encode().expect("a decoded frame is within limits");
        assert_eq!(&reencoded[..], frame_bytes, "decoding is not canonical");
        check_json(&frame);
        one_shot.push(frame);
        rest = tail;
    }

    // Chunk sizes 1..=256 cover byte-at-a-time delivery as well as chunks
    // that split headers and payloads at every offset.
    let chunk_len = usize::from(chunk_selector) + 1;
    let mut decoder = FrameDecoder::new();
    let mut streamed = Vec::new();
    'feed: for chunk in bytes.chunks(chunk_len) {
        if decoder.push(chunk).is_err() {
            break;
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => streamed.push(frame),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    assert_eq!(
        streamed, one_shot,
        "streaming and one-shot decoding disagree"
    );
});

fn check_json(frame: &Frame) {
    // Only the absence of panics matters; rejection is a normal outcome.
    let _ = parse_json_payload::<serde_json::Value>(frame);
}

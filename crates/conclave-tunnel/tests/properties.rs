//! Property tests: nothing a peer sends makes the tunnel panic, and the
//! transport delivers every frame intact however the bytes are cut.

use std::sync::OnceLock;

use conclave_protocol::{Frame, FrameType};
use conclave_tunnel::{
    InitiatorHandshake, Keypair, Pattern, ResponderHandshake, Transport, generate_keypair,
};
use proptest::prelude::*;

struct Keys {
    server: Keypair,
    device: Keypair,
}

/// Key generation draws OS randomness; once per test binary is enough.
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        server: generate_keypair().expect("server key"),
        device: generate_keypair().expect("device key"),
    })
}

fn connect(pattern: Pattern) -> (Transport, Transport) {
    let keys = keys();
    let (mut client, hello) =
        InitiatorHandshake::start(pattern, &keys.device, &keys.server.public, 1).expect("start");
    let (mut server, _) = ResponderHandshake::start(&keys.server.private, &hello).expect("start");
    let auth = server.accept(Some(&keys.device.public)).expect("accept");
    if let Some(third) = client.on_auth(&auth).expect("on_auth") {
        server.finish(&third).expect("finish");
    }
    (
        client.into_transport().expect("client"),
        server.into_transport().expect("server"),
    )
}

fn pattern() -> impl Strategy<Value = Pattern> {
    prop_oneof![Just(Pattern::Xk), Just(Pattern::Ik)]
}

fn frame_type() -> impl Strategy<Value = FrameType> {
    proptest::sample::select(FrameType::ALL.to_vec())
}

/// Feeds `bytes` in `cuts`-sized pieces, draining after each; stops at the
/// first error, as a connection would.
fn feed(receiver: &mut Transport, bytes: &[u8], cuts: &[usize]) -> Result<Vec<Frame>, String> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut cut = cuts.iter().cycle();
    while !rest.is_empty() {
        let want = cut.next().copied().unwrap_or(1).max(1);
        let take = want
            .min(rest.len())
            .min(receiver.remaining_ciphertext_capacity());
        if take == 0 {
            return Err("no capacity".to_owned());
        }
        receiver
            .push_ciphertext(&rest[..take])
            .map_err(|e| e.to_string())?;
        rest = &rest[take..];
        while let Some(frame) = receiver.next_frame().map_err(|e| e.to_string())? {
            frames.push(frame);
        }
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_ciphertext_never_panics(
        pattern in pattern(),
        bytes in proptest::collection::vec(any::<u8>(), 0..4_096),
        cuts in proptest::collection::vec(1_usize..700, 1..8),
    ) {
        let (_, mut server) = connect(pattern);
        // Random bytes essentially never authenticate; what matters is that
        // the result is a value, not a panic, and that errors stick.
        if let Err(err) = feed(&mut server, &bytes, &cuts) {
            prop_assert!(!err.is_empty());
            prop_assert_eq!(server.remaining_ciphertext_capacity(), 0);
            prop_assert!(server.next_frame().is_err());
        }
    }

    #[test]
    fn garbage_after_valid_chunks_never_panics(
        frames in proptest::collection::vec((frame_type(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..10),
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(1_usize..500, 1..8),
    ) {
        let (mut client, mut server) = connect(Pattern::Xk);
        let mut sealed = Vec::new();
        let mut sent = Vec::new();
        for (frame_type, sequence, payload) in frames {
            // JSON frames must carry an object; keep them well-formed.
            let payload = match frame_type.payload_kind() {
                conclave_protocol::PayloadKind::Json => b"{}".to_vec(),
                conclave_protocol::PayloadKind::Heartbeat => payload.into_iter().take(256).collect(),
                conclave_protocol::PayloadKind::Opaque => payload,
            };
            let frame = Frame::new(frame_type, 0, sequence, payload);
            client.seal_frame(&frame, &mut sealed).expect("seal");
            sent.push(frame);
        }
        let valid_len = sealed.len();
        sealed.extend_from_slice(&garbage);
        let mut received = Vec::new();
        let mut rest = &sealed[..];
        let mut cut = cuts.iter().cycle();
        let mut failed = false;
        while !rest.is_empty() && !failed {
            let take = cut.next().copied().unwrap_or(1).min(rest.len()).min(server.remaining_ciphertext_capacity());
            if server.push_ciphertext(&rest[..take]).is_err() { failed = true; }
            rest = &rest[take..];
            loop {
                match server.next_frame() {
                    Ok(Some(frame)) => received.push(frame),
                    Ok(None) => break,
                    Err(_) => { failed = true; break; }
                }
            }
        }
        // Chunks are opened in order and a chunk's frames are all handed out
        // before the next chunk is touched, so every frame before the
        // garbage arrives, in order, and nothing else does.
        prop_assert_eq!(received, sent);
        if garbage.is_empty() {
            prop_assert!(!failed);
        }
        prop_assert_eq!(sealed.len(), valid_len + garbage.len());
    }

    #[test]
    fn frames_arrive_intact_however_cut(
        pattern in pattern(),
        frames in proptest::collection::vec((any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..20_000)), 1..12),
        batch in 1_usize..5,
        cuts in proptest::collection::vec(1_usize..70_000, 1..8),
    ) {
        let (mut client, mut server) = connect(pattern);
        let frames: Vec<Frame> = frames
            .into_iter()
            .map(|(channel, sequence, payload)| Frame::new(FrameType::Msg, channel, sequence, payload))
            .collect();
        let mut sealed = Vec::new();
        for group in frames.chunks(batch) {
            let mut plaintext = Vec::new();
            for frame in group {
                plaintext.extend_from_slice(&frame.encode().expect("encode"));
            }
            client.seal(&plaintext, &mut sealed).expect("seal");
        }
        prop_assert_eq!(feed(&mut server, &sealed, &cuts), Ok(frames));
    }

    #[test]
    fn arbitrary_hello_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..2_048)) {
        let frame = Frame::new(FrameType::Hello, 0, 0, payload);
        prop_assert!(ResponderHandshake::start(&keys().server.private, &frame).is_err());
    }

    #[test]
    fn arbitrary_hello_fields_never_panic(
        pattern in prop_oneof![Just("XK".to_owned()), Just("IK".to_owned()), ".{0,8}"],
        message in proptest::collection::vec(any::<u8>(), 0..400),
        uppercase in any::<bool>(),
        odd in any::<bool>(),
    ) {
        let mut hex_text = hex::encode(message);
        if uppercase { hex_text = hex_text.to_uppercase(); }
        if odd { hex_text.push('f'); }
        let body = serde_json::json!({"pattern": pattern, "handshake": hex_text});
        let frame = Frame::json(FrameType::Hello, 0, 0, &body).expect("frame");
        // Random bytes cannot carry a valid claim under the server's key.
        let err = ResponderHandshake::start(&keys().server.private, &frame).expect_err("garbage");
        prop_assert!(["invalid_json", "handshake_failed", "unsupported_pattern"].contains(&err.code()));
    }

    #[test]
    fn arbitrary_auth_frames_never_panic(
        pattern in pattern(),
        message in proptest::collection::vec(any::<u8>(), 0..400),
        raw in proptest::collection::vec(any::<u8>(), 0..400),
        use_raw in any::<bool>(),
    ) {
        let keys = keys();
        let payload = if use_raw {
            raw
        } else {
            serde_json::to_vec(&serde_json::json!({"handshake": hex::encode(&message)})).expect("json")
        };
        let frame = Frame::new(FrameType::Auth, 0, 0, payload);

        let (mut client, hello) =
            InitiatorHandshake::start(pattern, &keys.device, &keys.server.public, 1).expect("start");
        prop_assert!(client.on_auth(&frame).is_err());

        let (mut server, _) = ResponderHandshake::start(&keys.server.private, &hello).expect("start");
        server.accept(Some(&keys.device.public)).expect("accept");
        if pattern == Pattern::Xk {
            prop_assert!(server.finish(&frame).is_err());
            prop_assert!(server.is_failed());
        }
    }
}

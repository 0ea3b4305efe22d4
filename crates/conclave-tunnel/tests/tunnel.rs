//! End-to-end tests of the tunnel: both handshakes in memory, key binding,
//! chunked transport, and the refusals for tampered or garbage input.

use bytes::Bytes;
use conclave_protocol::{Decoded, Frame, FrameType, NOISE_PLAINTEXT_MAX_BYTES, decode_frame};
use conclave_tunnel::{
    CIPHERTEXT_BUFFER_MAX_BYTES, ClientClaim, InitiatorHandshake, Keypair, PROLOGUE, Pattern,
    ResponderHandshake, Transport, TunnelError, generate_keypair, goaway,
};
use serde_json::{Value, json};

const DEVICE_ID: u64 = 4_242;
const PATTERNS: [Pattern; 2] = [Pattern::Xk, Pattern::Ik];
/// 640 x 480 pixels, 12 bits each (I420): one raw VGA video frame.
const RAW_VIDEO_FRAME_BYTES: usize = 460_800;

/// Sends a frame through the real encoder and decoder, as the wire would.
fn wire(frame: &Frame) -> Frame {
    let bytes = frame.encode().expect("encode");
    match decode_frame(&bytes).expect("decode") {
        Decoded::Frame { frame, consumed } => {
            assert_eq!(consumed, bytes.len());
            frame
        }
        Decoded::Incomplete => panic!("a whole frame decoded as incomplete"),
    }
}

struct Keys {
    server: Keypair,
    device: Keypair,
}

fn keys() -> Keys {
    Keys {
        server: generate_keypair().expect("server key"),
        device: generate_keypair().expect("device key"),
    }
}

/// Runs a whole handshake and returns (client, server) transports plus the
/// number of handshake frames that crossed the wire.
fn connect(pattern: Pattern, keys: &Keys) -> (Transport, Transport, usize) {
    let (mut client, hello) =
        InitiatorHandshake::start(pattern, &keys.device, &keys.server.public, DEVICE_ID)
            .expect("client start");
    let mut messages = 1;
    let (mut server, claim) =
        ResponderHandshake::start(&keys.server.private, &wire(&hello)).expect("server start");
    assert_eq!(
        claim,
        ClientClaim {
            pattern,
            device_id: DEVICE_ID,
            supported_versions: vec![1],
            remote_static: match pattern {
                Pattern::Ik => Some(keys.device.public),
                Pattern::Xk => None,
            },
        }
    );
    let auth = server.accept(Some(&keys.device.public)).expect("accept");
    messages += 1;
    let third = client.on_auth(&wire(&auth)).expect("on_auth");
    assert_eq!(client.protocol_version(), Some(1));
    assert_eq!(server.protocol_version(), 1);
    assert_eq!(server.device_id(), DEVICE_ID);
    match pattern {
        Pattern::Ik => {
            assert!(third.is_none(), "IK must not send a third message");
            assert!(server.is_complete());
        }
        Pattern::Xk => {
            assert!(!server.is_complete(), "XK is not complete before message 3");
            let third = third.expect("XK sends message 3");
            assert_eq!(third.frame_type, FrameType::Auth);
            messages += 1;
            server.finish(&wire(&third)).expect("finish");
            assert!(server.is_complete());
        }
    }
    let client = client.into_transport().expect("client transport");
    let server = server.into_transport().expect("server transport");
    assert_eq!(client.handshake_hash(), server.handshake_hash());
    assert_eq!(server.remote_static(), Some(&keys.device.public));
    assert_eq!(client.remote_static(), Some(&keys.server.public));
    (client, server, messages)
}

/// Splits sealed output into its chunks, checking every prefix.
fn chunks(mut sealed: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !sealed.is_empty() {
        let len = usize::from(u16::from_be_bytes([sealed[0], sealed[1]]));
        assert!(len >= 16, "chunk shorter than a tag");
        out.push(&sealed[..2 + len]);
        sealed = &sealed[2 + len..];
    }
    out
}

/// Delivers `ciphertext` and collects every frame it yields.
fn receive_all(receiver: &mut Transport, ciphertext: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut rest = ciphertext;
    while !rest.is_empty() {
        let take = receiver.remaining_ciphertext_capacity().min(rest.len());
        assert!(take > 0, "receiver stalled with nothing decodable");
        receiver.push_ciphertext(&rest[..take]).expect("push");
        rest = &rest[take..];
        while let Some(frame) = receiver.next_frame().expect("next_frame") {
            frames.push(frame);
        }
    }
    frames
}

fn rpc_request(sequence: u64) -> Frame {
    Frame::json(
        FrameType::RpcRequest,
        0,
        sequence,
        &json!({"route": "echo", "body": {"n": sequence}}),
    )
    .expect("rpc frame")
}

#[test]
fn both_patterns_carry_frames_both_ways() {
    for pattern in PATTERNS {
        let keys = keys();
        let (mut client, mut server, messages) = connect(pattern, &keys);
        assert_eq!(messages, pattern.message_count());

        let mut sealed = Vec::new();
        client
            .seal_frame(&rpc_request(7), &mut sealed)
            .expect("seal");
        assert_eq!(chunks(&sealed).len(), 1);
        assert_eq!(receive_all(&mut server, &sealed), vec![rpc_request(7)]);

        let reply = Frame::json(FrameType::RpcResponse, 0, 7, &json!({"ok": true})).expect("reply");
        let mut sealed = Vec::new();
        server.seal_frame(&reply, &mut sealed).expect("seal");
        assert_eq!(receive_all(&mut client, &sealed), vec![reply]);
    }
}

#[test]
fn a_raw_video_frame_crosses_as_eight_noise_messages() {
    for pattern in PATTERNS {
        let keys = keys();
        let (client, server, _) = connect(pattern, &keys);
        let (mut sealer, _) = client.split();
        let (_, mut opener) = server.split();

        let payload: Vec<u8> = (0..RAW_VIDEO_FRAME_BYTES)
            .map(|i| u8::try_from(i % 251).expect("small"))
            .collect();
        let frame = Frame::new(FrameType::VideoFrame, 9, 1, payload);
        let mut sealed = Vec::new();
        sealer.seal_frame(&frame, &mut sealed).expect("seal");
        let pieces = chunks(&sealed);
        assert_eq!(pieces.len(), 8);
        assert_eq!(sealer.messages_sealed(), 8);
        for piece in &pieces[..7] {
            assert_eq!(piece.len(), 2 + NOISE_PLAINTEXT_MAX_BYTES + 16);
        }
        assert_eq!(
            sealed.len(),
            frame.encoded_len() + 8 * conclave_tunnel::CHUNK_OVERHEAD_BYTES
        );

        let mut received = Vec::new();
        for piece in pieces {
            opener.push_ciphertext(piece).expect("push");
            while let Some(frame) = opener.next_frame().expect("next") {
                received.push(frame);
            }
        }
        assert_eq!(opener.messages_opened(), 8);
        assert_eq!(received, vec![frame]);
    }
}

/// Deterministic xorshift, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % u64::try_from(bound).expect("bound")).expect("fits")
    }
}

#[test]
fn many_small_frames_survive_random_cuts() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for pattern in PATTERNS {
        let keys = keys();
        let (mut client, mut server, _) = connect(pattern, &keys);
        let mut sent = Vec::new();
        let mut sealed = Vec::new();
        // Several frames per seal call, so chunks hold more than one frame.
        let mut batch = Vec::new();
        for sequence in 0..2_000_u64 {
            let frame = match sequence % 4 {
                0 => rpc_request(sequence),
                1 => Frame::new(FrameType::Ping, 0, sequence, vec![1, 2, 3]),
                2 => Frame::new(
                    FrameType::Msg,
                    sequence,
                    sequence,
                    vec![0xab; rng.below(3_000)],
                ),
                _ => Frame::new(FrameType::Yjs, 5, sequence, Vec::new()),
            };
            batch.extend_from_slice(&frame.encode().expect("encode"));
            sent.push(frame);
            if rng.below(4) == 0 {
                client.seal(&batch, &mut sealed).expect("seal");
                batch.clear();
            }
        }
        client.seal(&batch, &mut sealed).expect("seal");
        let mut received = Vec::new();
        let mut rest = &sealed[..];
        while !rest.is_empty() {
            let cut = 1 + rng.below(5_000);
            let take = cut
                .min(rest.len())
                .min(server.remaining_ciphertext_capacity());
            server.push_ciphertext(&rest[..take]).expect("push");
            rest = &rest[take..];
            while let Some(frame) = server.next_frame().expect("next") {
                received.push(frame);
            }
        }
        assert_eq!(received, sent);
    }
}

#[test]
fn batched_frames_cut_across_chunk_boundaries() {
    let keys = keys();
    let (mut client, mut server, _) = connect(Pattern::Xk, &keys);
    let frames: Vec<Frame> = (0..40_u64)
        .map(|i| {
            Frame::new(
                FrameType::Msg,
                1,
                i,
                vec![u8::try_from(i).expect("u8"); 9_999],
            )
        })
        .collect();
    let mut plaintext = Vec::new();
    for frame in &frames {
        plaintext.extend_from_slice(&frame.encode().expect("encode"));
    }
    let mut sealed = Vec::new();
    client.seal(&plaintext, &mut sealed).expect("seal");
    assert_eq!(
        chunks(&sealed).len(),
        plaintext.len().div_ceil(NOISE_PLAINTEXT_MAX_BYTES)
    );
    assert_eq!(receive_all(&mut server, &sealed), frames);
}

#[test]
fn a_maximal_frame_followed_by_more_frames_fits_the_receiver() {
    // The chunk that ends a 16 MiB frame also starts the next ones; the
    // receiver must not push that whole chunk into a decoder that still
    // holds the big frame.
    let keys = keys();
    let (mut client, mut server, _) = connect(Pattern::Ik, &keys);
    let big = Frame::new(
        FrameType::VideoFrame,
        0,
        0,
        vec![7_u8; conclave_protocol::FRAME_LEN_MAX_BYTES - 7],
    );
    assert!(big.check_limits().is_ok());
    let small: Vec<Frame> = (1..20_u64)
        .map(|i| Frame::new(FrameType::Msg, 0, i, vec![1; 4_000]))
        .collect();
    let mut plaintext = big.encode().expect("encode").to_vec();
    for frame in &small {
        plaintext.extend_from_slice(&frame.encode().expect("encode"));
    }
    let mut sealed = Vec::new();
    client.seal(&plaintext, &mut sealed).expect("seal");
    let received = receive_all(&mut server, &sealed);
    assert_eq!(received.len(), 1 + small.len());
    assert_eq!(received[0], big);
    assert_eq!(&received[1..], &small[..]);
}

#[test]
fn sealing_nothing_writes_nothing() {
    let keys = keys();
    let (mut client, _, _) = connect(Pattern::Ik, &keys);
    let mut sealed = vec![9];
    client.seal(&[], &mut sealed).expect("seal");
    assert_eq!(sealed, vec![9]);
}

#[test]
fn ik_completes_after_two_messages_and_xk_after_three() {
    let keys = keys();
    let (_, _, ik) = connect(Pattern::Ik, &keys);
    let (_, _, xk) = connect(Pattern::Xk, &keys);
    assert_eq!((ik, xk), (2, 3));

    // An IK server has nothing to finish.
    let (mut client, hello) =
        InitiatorHandshake::start(Pattern::Ik, &keys.device, &keys.server.public, 1)
            .expect("start");
    let (mut server, _) = ResponderHandshake::start(&keys.server.private, &hello).expect("start");
    let auth = server.accept(Some(&keys.device.public)).expect("accept");
    assert!(client.on_auth(&auth).expect("on_auth").is_none());
    assert!(client.is_complete());
    let misuse = server.finish(&auth).expect_err("IK has no message 3");
    assert_eq!(misuse.code(), "internal");
}

#[test]
fn an_ik_client_that_sends_a_third_message_gets_no_frame() {
    // The predecessor's IK clients sent a third handshake message; here
    // the server is already in transport mode and reads it as ciphertext.
    let keys = keys();
    let (_, mut server, _) = connect(Pattern::Ik, &keys);
    let bogus = Frame::json(
        FrameType::Auth,
        0,
        0,
        &json!({"handshake": "00".repeat(64)}),
    )
    .expect("frame")
    .encode()
    .expect("encode");
    server.push_ciphertext(&bogus).expect("push");
    assert_eq!(server.next_frame().expect("waiting"), None);
    // Whatever follows completes that "chunk", which cannot authenticate.
    let filler = vec![0_u8; server.remaining_ciphertext_capacity()];
    server.push_ciphertext(&filler).expect("push");
    assert_eq!(server.next_frame(), Err(TunnelError::DecryptFailed));
}

#[test]
fn an_unregistered_static_key_is_refused() {
    for pattern in PATTERNS {
        let keys = keys();
        let registered = generate_keypair().expect("other key");
        let (mut client, hello) =
            InitiatorHandshake::start(pattern, &keys.device, &keys.server.public, DEVICE_ID)
                .expect("start");
        let (mut server, claim) =
            ResponderHandshake::start(&keys.server.private, &wire(&hello)).expect("start");
        match pattern {
            Pattern::Ik => {
                assert_eq!(claim.remote_static, Some(keys.device.public));
                // Refused before any Auth frame exists.
                let err = server
                    .accept(Some(&registered.public))
                    .expect_err("IK mismatch");
                assert_eq!(err, TunnelError::KeyMismatch);
                assert_eq!(err.code(), "key_mismatch");
                assert!(server.is_failed());
                // The client learns why from the Goaway.
                let refusal = client
                    .on_auth(&wire(&err.to_goaway()))
                    .expect_err("refused");
                assert!(
                    matches!(&refusal, TunnelError::Refused { code, .. } if code == "key_mismatch")
                );
                assert_eq!(refusal.code(), "key_mismatch");
            }
            Pattern::Xk => {
                assert_eq!(claim.remote_static, None);
                let auth = server.accept(Some(&registered.public)).expect("accept");
                let third = client
                    .on_auth(&wire(&auth))
                    .expect("on_auth")
                    .expect("msg 3");
                let err = server.finish(&wire(&third)).expect_err("XK mismatch");
                assert_eq!(err, TunnelError::KeyMismatch);
                assert!(!server.is_complete());
                assert!(server.into_transport().is_err());
                // The client already switched to transport mode; the
                // plaintext Goaway arrives where ciphertext would.
                let mut client = client.into_transport().expect("client transport");
                let goaway = err.to_goaway().encode().expect("encode");
                client.push_ciphertext(&goaway[..5]).expect("push");
                assert_eq!(client.next_frame(), Ok(None));
                client.push_ciphertext(&goaway[5..]).expect("push");
                let refusal = client.next_frame().expect_err("refused");
                assert_eq!(refusal.code(), "key_mismatch");
            }
        }
    }
}

#[test]
fn an_unknown_device_is_refused() {
    for pattern in PATTERNS {
        let keys = keys();
        let (_, hello) =
            InitiatorHandshake::start(pattern, &keys.device, &keys.server.public, DEVICE_ID)
                .expect("start");
        let (mut server, _) =
            ResponderHandshake::start(&keys.server.private, &hello).expect("start");
        let err = server.accept(None).expect_err("unknown device");
        assert_eq!(err, TunnelError::UnknownDevice);
        assert_eq!(err.code(), "device_revoked");
        assert!(server.is_failed());
        // A failed handshake stays failed.
        assert_eq!(
            server
                .accept(Some(&keys.device.public))
                .map_err(|e| e.code()),
            Err("internal")
        );
    }
}

#[test]
fn a_client_pinning_the_wrong_server_key_fails_the_handshake() {
    for pattern in PATTERNS {
        let keys = keys();
        let impostor = generate_keypair().expect("key");
        let (_, hello) =
            InitiatorHandshake::start(pattern, &keys.device, &impostor.public, DEVICE_ID)
                .expect("start");
        let err = ResponderHandshake::start(&keys.server.private, &hello).expect_err("wrong key");
        assert_eq!(err, TunnelError::HandshakeFailed);
    }
}

#[test]
fn a_server_without_the_pinned_key_is_refused_by_the_client() {
    // An impostor server that sees the client's Hello cannot produce a
    // message 2 the client accepts.
    for pattern in PATTERNS {
        let keys = keys();
        let impostor = generate_keypair().expect("key");
        let (mut client, _) =
            InitiatorHandshake::start(pattern, &keys.device, &keys.server.public, DEVICE_ID)
                .expect("start");
        let (_, other_hello) =
            InitiatorHandshake::start(pattern, &keys.device, &impostor.public, DEVICE_ID)
                .expect("start");
        let (mut fake, _) =
            ResponderHandshake::start(&impostor.private, &other_hello).expect("start");
        let auth = fake.accept(Some(&keys.device.public)).expect("accept");
        assert_eq!(client.on_auth(&auth), Err(TunnelError::HandshakeFailed));
    }
}

/// Flips one bit of the Noise message inside a handshake frame.
fn flip_handshake_bit(frame: &Frame, byte: usize) -> Frame {
    let mut body: Value = serde_json::from_slice(&frame.payload).expect("json");
    let mut message = hex::decode(body["handshake"].as_str().expect("hex")).expect("hex");
    let index = byte % message.len();
    message[index] ^= 0x01;
    body["handshake"] = Value::String(hex::encode(message));
    Frame::json(frame.frame_type, 0, 0, &body).expect("frame")
}

#[test]
fn a_flipped_bit_in_any_handshake_message_is_refused() {
    for pattern in PATTERNS {
        let keys = keys();
        let start = || {
            InitiatorHandshake::start(pattern, &keys.device, &keys.server.public, DEVICE_ID)
                .expect("start")
        };
        // Message 1: every byte position, ephemeral key and ciphertext.
        let (_, hello) = start();
        let len = {
            let body: Value = serde_json::from_slice(&hello.payload).expect("json");
            body["handshake"].as_str().expect("hex").len() / 2
        };
        for byte in 0..len {
            let err =
                ResponderHandshake::start(&keys.server.private, &flip_handshake_bit(&hello, byte))
                    .expect_err("tampered message 1");
            assert_eq!(err.code(), "handshake_failed", "byte {byte}");
        }

        // Message 2.
        let (mut client, hello) = start();
        let (mut server, _) =
            ResponderHandshake::start(&keys.server.private, &hello).expect("start");
        let auth = server.accept(Some(&keys.device.public)).expect("accept");
        assert_eq!(
            client.on_auth(&flip_handshake_bit(&auth, 40)),
            Err(TunnelError::HandshakeFailed)
        );
        assert!(client.into_transport().is_err());

        // Message 3.
        if pattern == Pattern::Xk {
            let (mut client, hello) = start();
            let (mut server, _) =
                ResponderHandshake::start(&keys.server.private, &hello).expect("start");
            let auth = server.accept(Some(&keys.device.public)).expect("accept");
            let third = client.on_auth(&auth).expect("on_auth").expect("msg 3");
            assert_eq!(
                server.finish(&flip_handshake_bit(&third, 5)),
                Err(TunnelError::HandshakeFailed)
            );
        }
    }
}

#[test]
fn tampered_replayed_and_reordered_chunks_are_refused() {
    let keys = keys();
    for pattern in PATTERNS {
        // A flipped bit anywhere in the ciphertext.
        for position in [2, 3, 20, 40] {
            let (mut client, mut server, _) = connect(pattern, &keys);
            let mut sealed = Vec::new();
            client
                .seal_frame(&rpc_request(1), &mut sealed)
                .expect("seal");
            sealed[position] ^= 0x80;
            server.push_ciphertext(&sealed).expect("push");
            assert_eq!(server.next_frame(), Err(TunnelError::DecryptFailed));
            assert_eq!(
                server.next_frame().map_err(|e| e.code()),
                Err("decrypt_failed")
            );
            assert_eq!(server.remaining_ciphertext_capacity(), 0);
            assert!(server.push_ciphertext(b"x").is_err());
        }

        // Replay: the first chunk delivered twice.
        let (mut client, mut server, _) = connect(pattern, &keys);
        let mut first = Vec::new();
        client
            .seal_frame(&rpc_request(1), &mut first)
            .expect("seal");
        server.push_ciphertext(&first).expect("push");
        assert_eq!(server.next_frame(), Ok(Some(rpc_request(1))));
        server.push_ciphertext(&first).expect("push");
        assert_eq!(server.next_frame(), Err(TunnelError::DecryptFailed));

        // Reordering: the second chunk before the first.
        let (mut client, mut server, _) = connect(pattern, &keys);
        let (mut first, mut second) = (Vec::new(), Vec::new());
        client
            .seal_frame(&rpc_request(1), &mut first)
            .expect("seal");
        client
            .seal_frame(&rpc_request(2), &mut second)
            .expect("seal");
        server.push_ciphertext(&second).expect("push");
        assert_eq!(server.next_frame(), Err(TunnelError::DecryptFailed));

        // A chunk from the other direction (the server's own key).
        let (mut client, mut server, _) = connect(pattern, &keys);
        let mut own = Vec::new();
        server.seal_frame(&rpc_request(1), &mut own).expect("seal");
        server.push_ciphertext(&own).expect("push");
        assert_eq!(server.next_frame(), Err(TunnelError::DecryptFailed));
        // ... while the client still reads it fine.
        client.push_ciphertext(&own).expect("push");
        assert_eq!(client.next_frame(), Ok(Some(rpc_request(1))));
    }
}

#[test]
fn chunk_lengths_below_the_tag_are_malformed() {
    let keys = keys();
    for len in [0_u16, 1, 15] {
        let (_, mut server, _) = connect(Pattern::Xk, &keys);
        server.push_ciphertext(&len.to_be_bytes()).expect("push");
        let err = server.next_frame().expect_err("malformed");
        assert_eq!(
            err,
            TunnelError::MalformedChunk {
                len: usize::from(len)
            }
        );
        assert_eq!(err.code(), "malformed_frame");
    }
}

#[test]
fn ciphertext_beyond_the_buffer_is_refused() {
    let keys = keys();
    let (_, mut server, _) = connect(Pattern::Xk, &keys);
    assert_eq!(
        server.remaining_ciphertext_capacity(),
        CIPHERTEXT_BUFFER_MAX_BYTES
    );
    let err = server
        .push_ciphertext(&vec![0xff; CIPHERTEXT_BUFFER_MAX_BYTES + 1])
        .expect_err("too much");
    assert_eq!(err.code(), "frame_too_large");
    assert_eq!(server.remaining_ciphertext_capacity(), 0);
}

#[test]
fn a_decrypted_stream_that_breaks_framing_is_refused() {
    let keys = keys();
    let (mut client, mut server, _) = connect(Pattern::Ik, &keys);
    let mut sealed = Vec::new();
    // frame_len 0 is not a frame.
    client.seal(&[0x00], &mut sealed).expect("seal");
    server.push_ciphertext(&sealed).expect("push");
    assert_eq!(
        server.next_frame().map_err(|e| e.code()),
        Err("malformed_frame")
    );
}

fn hello_with(payload: &[u8]) -> Frame {
    Frame::new(FrameType::Hello, 0, 0, Bytes::copy_from_slice(payload))
}

#[test]
fn garbage_hellos_are_refused_with_the_right_code() {
    let server = generate_keypair().expect("key");
    let cases: Vec<(Frame, &str)> = vec![
        (hello_with(b"not json"), "invalid_json"),
        (hello_with(b"[1,2]"), "invalid_json"),
        (hello_with(br#"{"pattern":"XK"}"#), "invalid_json"),
        (
            hello_with(br#"{"pattern":5,"handshake":"00"}"#),
            "invalid_json",
        ),
        (
            hello_with(br#"{"pattern":"XK","handshake":"zz"}"#),
            "handshake_failed",
        ),
        (
            hello_with(br#"{"pattern":"XK","handshake":"abc"}"#),
            "handshake_failed",
        ),
        (
            hello_with(br#"{"pattern":"XX","handshake":"00"}"#),
            "unsupported_pattern",
        ),
        (
            hello_with(br#"{"pattern":"xk","handshake":"00"}"#),
            "unsupported_pattern",
        ),
        (
            hello_with(br#"{"pattern":"XK","handshake":""}"#),
            "handshake_failed",
        ),
        (
            hello_with(br#"{"pattern":"IK","handshake":"00"}"#),
            "handshake_failed",
        ),
        (
            hello_with(
                format!(
                    r#"{{"pattern":"XK","handshake":"{}"}}"#,
                    "00".repeat(65_536)
                )
                .as_bytes(),
            ),
            "handshake_failed",
        ),
        (
            hello_with(
                format!(
                    r#"{{"pattern":"IK","handshake":"{}"}}"#,
                    "11".repeat(65_535)
                )
                .as_bytes(),
            ),
            "handshake_failed",
        ),
        (
            Frame::new(
                FrameType::Auth,
                0,
                0,
                &br#"{"pattern":"XK","handshake":"00"}"#[..],
            ),
            "handshake_failed",
        ),
        (
            Frame::new(
                FrameType::Hello,
                3,
                0,
                &br#"{"pattern":"XK","handshake":"00"}"#[..],
            ),
            "handshake_failed",
        ),
        (
            Frame::new(FrameType::Msg, 0, 0, &b"{}"[..]),
            "handshake_failed",
        ),
    ];
    for (frame, code) in cases {
        let err = ResponderHandshake::start(&server.private, &frame).expect_err("garbage");
        assert_eq!(err.code(), code, "{err}");
        // Every refusal has a Goaway that encodes.
        let goaway = err.to_goaway();
        assert_eq!(goaway.frame_type, FrameType::Goaway);
        let body: Value = serde_json::from_slice(&goaway.payload).expect("json");
        assert_eq!(body["code"], code);
        assert!(goaway.encode().is_ok());
    }
}

/// A hand-made client, for payloads the real initiator never produces.
fn raw_client(pattern: Pattern, keys: &Keys) -> snow::HandshakeState {
    snow::Builder::new(pattern.noise_name().parse().expect("params"))
        .prologue(PROLOGUE)
        .expect("prologue")
        .local_private_key(&keys.device.private)
        .expect("key")
        .remote_public_key(&keys.server.public)
        .expect("key")
        .build_initiator()
        .expect("build")
}

fn raw_hello(pattern: Pattern, keys: &Keys, claim: &Value) -> (snow::HandshakeState, Frame) {
    let mut noise = raw_client(pattern, keys);
    let mut message = vec![0; 65_535];
    let len = noise
        .write_message(&serde_json::to_vec(claim).expect("json"), &mut message)
        .expect("write");
    let frame = Frame::json(
        FrameType::Hello,
        0,
        0,
        &json!({"pattern": pattern.as_str(), "handshake": hex::encode(&message[..len])}),
    )
    .expect("frame");
    (noise, frame)
}

#[test]
fn bad_claims_inside_message_one_are_refused() {
    let keys = keys();
    let cases = [
        (
            json!({"device_id": "1", "supported_versions": [2, 3]}),
            "unsupported_version",
        ),
        (
            json!({"device_id": "1", "supported_versions": []}),
            "unsupported_version",
        ),
        (
            json!({"device_id": "01", "supported_versions": [1]}),
            "handshake_failed",
        ),
        (
            json!({"device_id": 1, "supported_versions": [1]}),
            "invalid_json",
        ),
        (
            json!({"device_id": "x", "supported_versions": [1]}),
            "handshake_failed",
        ),
        (json!({"supported_versions": [1]}), "invalid_json"),
        (
            json!({"device_id": "1", "supported_versions": vec![1; 17]}),
            "handshake_failed",
        ),
        (json!(["1", [1]]), "invalid_json"),
    ];
    for pattern in PATTERNS {
        for (claim, code) in &cases {
            let (_, hello) = raw_hello(pattern, &keys, claim);
            let err =
                ResponderHandshake::start(&keys.server.private, &hello).expect_err("bad claim");
            assert_eq!(err.code(), *code, "{claim}");
        }
        // Unknown fields are ignored, and the highest common version wins.
        let (_, hello) = raw_hello(
            pattern,
            &keys,
            &json!({"device_id": "18446744073709551615", "supported_versions": [7, 1], "x": 1}),
        );
        let (server, claim) = ResponderHandshake::start(&keys.server.private, &hello).expect("ok");
        assert_eq!(claim.device_id, u64::MAX);
        assert_eq!(claim.supported_versions, vec![7, 1]);
        assert_eq!(server.protocol_version(), 1);
    }
}

#[test]
fn a_non_empty_message_three_is_refused() {
    let keys = keys();
    let (mut noise, hello) = raw_hello(
        Pattern::Xk,
        &keys,
        &json!({"device_id": "5", "supported_versions": [1]}),
    );
    let (mut server, _) = ResponderHandshake::start(&keys.server.private, &hello).expect("start");
    let auth = server.accept(Some(&keys.device.public)).expect("accept");
    let body: Value = serde_json::from_slice(&auth.payload).expect("json");
    let message = hex::decode(body["handshake"].as_str().expect("hex")).expect("hex");
    let mut payload = vec![0; 100];
    noise.read_message(&message, &mut payload).expect("read");
    let mut third = vec![0; 1_000];
    let len = noise.write_message(b"extra", &mut third).expect("write");
    let frame = Frame::json(
        FrameType::Auth,
        0,
        0,
        &json!({"handshake": hex::encode(&third[..len])}),
    )
    .expect("frame");
    assert_eq!(
        server.finish(&frame).map_err(|e| e.code()),
        Err("handshake_failed")
    );
}

/// A hand-made server answering with an arbitrary message 2 payload.
fn answer_with(pattern: Pattern, keys: &Keys, hello: &Frame, payload: &[u8]) -> Frame {
    let mut noise = snow::Builder::new(pattern.noise_name().parse().expect("params"))
        .prologue(PROLOGUE)
        .expect("prologue")
        .local_private_key(&keys.server.private)
        .expect("key")
        .build_responder()
        .expect("build");
    let body: Value = serde_json::from_slice(&hello.payload).expect("json");
    let message = hex::decode(body["handshake"].as_str().expect("hex")).expect("hex");
    let mut claim = vec![0; message.len()];
    noise.read_message(&message, &mut claim).expect("read");
    let mut reply = vec![0; 65_535];
    let len = noise.write_message(payload, &mut reply).expect("write");
    Frame::json(
        FrameType::Auth,
        0,
        0,
        &json!({"handshake": hex::encode(&reply[..len])}),
    )
    .expect("frame")
}

#[test]
fn the_client_refuses_a_version_it_did_not_offer() {
    let keys = keys();
    for pattern in PATTERNS {
        for (payload, code) in [
            (&br#"{"protocol_version":2}"#[..], "unsupported_version"),
            (&br#"{"protocol_version":"1"}"#[..], "invalid_json"),
            (&b""[..], "invalid_json"),
        ] {
            let (mut client, hello) =
                InitiatorHandshake::start(pattern, &keys.device, &keys.server.public, 1)
                    .expect("start");
            let auth = answer_with(pattern, &keys, &hello, payload);
            assert_eq!(client.on_auth(&auth).map_err(|e| e.code()), Err(code));
            assert!(!client.is_complete());
        }
    }
}

#[test]
fn the_client_reports_the_servers_goaway() {
    let keys = keys();
    let (mut client, _) =
        InitiatorHandshake::start(Pattern::Xk, &keys.device, &keys.server.public, 1)
            .expect("start");
    let err = client
        .on_auth(&wire(&goaway("unsupported_version", "we speak 9")))
        .expect_err("refused");
    assert_eq!(
        err,
        TunnelError::Refused {
            code: "unsupported_version".to_owned(),
            message: "we speak 9".to_owned()
        }
    );
    assert_eq!(err.code(), "unsupported_version");

    let (mut client, _) =
        InitiatorHandshake::start(Pattern::Ik, &keys.device, &keys.server.public, 1)
            .expect("start");
    let wrong = Frame::new(FrameType::Ack, 0, 0, &b"{}"[..]);
    assert_eq!(
        client.on_auth(&wrong).map_err(|e| e.code()),
        Err("handshake_failed")
    );
}

#[test]
fn transport_needs_a_completed_handshake() {
    let keys = keys();
    let (client, hello) =
        InitiatorHandshake::start(Pattern::Xk, &keys.device, &keys.server.public, 1)
            .expect("start");
    assert_eq!(
        client.into_transport().map_err(|e| e.code()).err(),
        Some("internal")
    );
    let (mut server, _) = ResponderHandshake::start(&keys.server.private, &hello).expect("start");
    server.accept(Some(&keys.device.public)).expect("accept");
    assert_eq!(
        server.into_transport().map_err(|e| e.code()).err(),
        Some("internal")
    );
}

#[test]
fn split_halves_work_independently_across_threads() {
    let keys = keys();
    let (client, server, _) = connect(Pattern::Xk, &keys);
    let (mut client_tx, mut client_rx) = client.split();
    let (mut server_tx, mut server_rx) = server.split();
    let upstream = std::thread::spawn(move || {
        let mut sealed = Vec::new();
        for i in 0..100 {
            client_tx
                .seal_frame(&rpc_request(i), &mut sealed)
                .expect("seal");
        }
        sealed
    });
    let downstream = std::thread::spawn(move || {
        let mut sealed = Vec::new();
        for i in 0..100 {
            server_tx
                .seal_frame(&Frame::new(FrameType::Pong, 0, i, Vec::new()), &mut sealed)
                .expect("seal");
        }
        sealed
    });
    let up = upstream.join().expect("thread");
    let down = downstream.join().expect("thread");
    assert!(up.len() <= CIPHERTEXT_BUFFER_MAX_BYTES);
    server_rx.push_ciphertext(&up).expect("push");
    let mut count = 0;
    while server_rx.next_frame().expect("next").is_some() {
        count += 1;
    }
    assert_eq!(count, 100);
    client_rx.push_ciphertext(&down).expect("push");
    let mut count = 0;
    while let Some(frame) = client_rx.next_frame().expect("next") {
        assert_eq!(frame.frame_type, FrameType::Pong);
        count += 1;
    }
    assert_eq!(count, 100);
}

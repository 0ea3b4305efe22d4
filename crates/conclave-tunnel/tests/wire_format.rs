//! The byte-level walk-through in `docs/PROTOCOL.md` section 12, checked:
//! every length and header byte quoted there is asserted here.

use conclave_protocol::{Frame, FrameType};
use conclave_tunnel::{
    InitiatorHandshake, Keypair, Pattern, ResponderHandshake, TunnelError, generate_keypair,
};
use serde_json::Value;

const DEVICE_ID: u64 = 42;

fn handshake_hex(frame: &Frame) -> Vec<u8> {
    let body: Value = serde_json::from_slice(&frame.payload).expect("json");
    hex::decode(body["handshake"].as_str().expect("hex")).expect("hex")
}

struct Run {
    hello: Vec<u8>,
    auth: Vec<u8>,
    third: Option<Vec<u8>>,
    message_lens: Vec<usize>,
}

fn run(pattern: Pattern) -> Run {
    let server: Keypair = generate_keypair().expect("key");
    let device = generate_keypair().expect("key");
    let (mut client, hello) =
        InitiatorHandshake::start(pattern, &device, &server.public, DEVICE_ID).expect("start");
    let (mut responder, _) = ResponderHandshake::start(&server.private, &hello).expect("start");
    let auth = responder.accept(Some(&device.public)).expect("accept");
    let third = client.on_auth(&auth).expect("on_auth");
    let mut message_lens = vec![handshake_hex(&hello).len(), handshake_hex(&auth).len()];
    if let Some(third) = &third {
        message_lens.push(handshake_hex(third).len());
    }
    Run {
        hello: hello.encode().expect("encode").to_vec(),
        auth: auth.encode().expect("encode").to_vec(),
        third: third.map(|frame| frame.encode().expect("encode").to_vec()),
        message_lens,
    }
}

#[test]
fn xk_walk_through() {
    let run = run(Pattern::Xk);
    // 32-byte ephemeral + 43-byte claim + tag; 32 + 22 + 16; 48 + 16.
    assert_eq!(run.message_lens, vec![91, 70, 64]);
    assert_eq!(run.hello.len(), 220);
    assert_eq!(&run.hello[..7], &[0xda, 0x01, 0x01, 0x00, 0x00, 0xd5, 0x01]);
    assert!(run.hello[7..].starts_with(br#"{"pattern":"XK","handshake":""#));
    assert_eq!(run.auth.len(), 163);
    assert_eq!(&run.auth[..7], &[0xa1, 0x01, 0x02, 0x00, 0x00, 0x9c, 0x01]);
    assert!(run.auth[7..].starts_with(br#"{"handshake":""#));
    let third = run.third.expect("XK has message 3");
    assert_eq!(third.len(), 151);
    assert_eq!(&third[..7], &[0x95, 0x01, 0x02, 0x00, 0x00, 0x90, 0x01]);
}

#[test]
fn ik_walk_through() {
    let run = run(Pattern::Ik);
    // 32 + (32 + 16) + (43 + 16); 32 + 22 + 16.
    assert_eq!(run.message_lens, vec![139, 70]);
    assert_eq!(run.hello.len(), 316);
    assert_eq!(&run.hello[..7], &[0xba, 0x02, 0x01, 0x00, 0x00, 0xb5, 0x02]);
    assert!(run.hello[7..].starts_with(br#"{"pattern":"IK","handshake":""#));
    assert_eq!(run.auth.len(), 163);
    assert!(run.third.is_none());
}

#[test]
fn key_mismatch_goaway_bytes() {
    let bytes = TunnelError::KeyMismatch
        .to_goaway()
        .encode()
        .expect("encode");
    let payload = br#"{"code":"key_mismatch","message":"the device's static key does not match its registered key"}"#;
    let mut expected = vec![0x61, 0x25, 0x00, 0x00, 0x5d];
    expected.extend_from_slice(payload);
    assert_eq!(payload.len(), 93);
    assert_eq!(&bytes[..], &expected[..]);
}

#[test]
fn video_frame_chunk_layout() {
    let server = generate_keypair().expect("key");
    let device = generate_keypair().expect("key");
    let (mut client, hello) =
        InitiatorHandshake::start(Pattern::Ik, &device, &server.public, DEVICE_ID).expect("start");
    let (mut responder, _) = ResponderHandshake::start(&server.private, &hello).expect("start");
    let auth = responder.accept(Some(&device.public)).expect("accept");
    assert!(client.on_auth(&auth).expect("on_auth").is_none());
    let mut client = client.into_transport().expect("transport");

    let frame = Frame::new(FrameType::VideoFrame, 1, 1, vec![0; 460_800]);
    let encoded = frame.encode().expect("encode");
    assert_eq!(encoded.len(), 460_809);
    assert_eq!(&encoded[..7], &[0x86, 0x90, 0x1c, 0x12, 0x01, 0x01, 0x80]);

    let mut sealed = Vec::new();
    client.seal_frame(&frame, &mut sealed).expect("seal");
    assert_eq!(sealed.len(), 460_953);
    let mut prefixes = Vec::new();
    let mut rest = &sealed[..];
    while let [hi, lo, ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        prefixes.push([*hi, *lo]);
        rest = &rest[2 + len..];
    }
    let mut expected = vec![[0xff, 0xff]; 7];
    expected.push([0x08, 0x90]);
    assert_eq!(prefixes, expected);
}

//! Interop with an independent Noise implementation: the Python
//! `noiseprotocol` package plays the client (`tests/python/noise_initiator.py`)
//! against our `ResponderHandshake` over the child's stdin and stdout.
//!
//! Skipped with a notice when the package is missing, except under CI
//! (`CI=true`), where a missing package is a failure: the test is the only
//! proof that our wire format is Noise and not merely "what snow does".

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conclave_protocol::{Decoded, Frame, FrameType, decode_frame};
use conclave_tunnel::{
    Keypair, Pattern, ResponderHandshake, Transport, TunnelError, generate_keypair,
};
use serde_json::{Value, json};

/// How long one read from, or the exit of, the Python client may take. Its
/// work is a few milliseconds; the margin is for a loaded CI machine.
const CHILD_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Pieces of the child's stdout in flight between the reader thread and
/// the test; the reader blocks when the test falls behind.
const STDOUT_QUEUE_MAX_PIECES: usize = 64;
const STDOUT_PIECE_MAX_BYTES: usize = 64 * 1024;
const DEVICE_ID: u64 = 31_337;
const LARGE_MSG_BYTES: usize = 70_000;
const VIDEO_BYTES: usize = 150_000;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/noise_initiator.py")
}

/// Whether the Python side can run; panics under CI if it cannot.
fn python_noise_available() -> bool {
    let available = Command::new("python3")
        .args([
            "-c",
            "from noise.connection import NoiseConnection, Keypair",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !available {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 with the noiseprotocol package is required under CI (pip install noiseprotocol)"
        );
        println!("NOTICE: python noiseprotocol not installed; skipping interop test");
    }
    available
}

/// The running Python client and the pipes to it.
struct PythonClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<Vec<u8>>,
    stderr: Option<JoinHandle<String>>,
    received: Vec<u8>,
}

impl PythonClient {
    fn spawn(
        pattern: Pattern,
        server_public: &[u8; 32],
        device_private: &[u8; 32],
        expect: &str,
    ) -> Self {
        let mut child = Command::new("python3")
            .arg(script())
            .arg(pattern.as_str())
            .arg(hex::encode(server_public))
            .arg(hex::encode(device_private))
            .arg(DEVICE_ID.to_string())
            .arg(expect)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let (sender, receiver) = sync_channel(STDOUT_QUEUE_MAX_PIECES);
        std::thread::spawn(move || {
            let mut piece = vec![0_u8; STDOUT_PIECE_MAX_BYTES];
            loop {
                match stdout.read(&mut piece) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sender.send(piece[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            child,
            stdin,
            stdout: receiver,
            stderr: Some(stderr),
            received: Vec::new(),
        }
    }

    /// Waits for more of the child's stdout.
    fn fill(&mut self) {
        match self.stdout.recv_timeout(CHILD_IO_TIMEOUT) {
            Ok(piece) => self.received.extend_from_slice(&piece),
            Err(RecvTimeoutError::Timeout) => self.fail("timed out waiting for the python client"),
            Err(RecvTimeoutError::Disconnected) => self.fail("the python client closed its stdout"),
        }
    }

    /// Reads one plaintext handshake frame.
    fn read_frame(&mut self) -> Frame {
        loop {
            match decode_frame(&self.received) {
                Ok(Decoded::Frame { frame, consumed }) => {
                    self.received.drain(..consumed);
                    return frame;
                }
                Ok(Decoded::Incomplete) => self.fill(),
                Err(err) => self.fail(&format!("python sent an undecodable frame: {err}")),
            }
        }
    }

    /// Reads `count` frames through the tunnel.
    fn read_encrypted_frames(&mut self, transport: &mut Transport, count: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            while !self.received.is_empty() {
                let take = transport
                    .remaining_ciphertext_capacity()
                    .min(self.received.len());
                let piece: Vec<u8> = self.received.drain(..take).collect();
                transport.push_ciphertext(&piece).expect("push ciphertext");
                while let Some(frame) = transport.next_frame().expect("decrypt python's chunk") {
                    frames.push(frame);
                }
            }
            if frames.len() >= count {
                return frames;
            }
            self.fill();
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to python");
        stdin.flush().expect("flush to python");
    }

    /// Closes our side and waits for the verdict; returns the child's stderr.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let deadline = Instant::now() + CHILD_IO_TIMEOUT;
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => break status,
                None if Instant::now() > deadline => self.fail("the python client did not exit"),
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let stderr = self.stderr_text();
        assert!(
            status.success(),
            "python client failed ({status}):\n{stderr}"
        );
        assert!(
            stderr.contains("PASS"),
            "python client did not pass:\n{stderr}"
        );
        stderr
    }

    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .map(|handle| handle.join().unwrap_or_default())
            .unwrap_or_default()
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self.stderr_text();
        panic!("{why}\npython stderr:\n{stderr}");
    }
}

impl Drop for PythonClient {
    fn drop(&mut self) {
        // Only if a check panicked mid-exchange; finish() has reaped it.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn patterned(len: usize, modulus: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i % modulus).expect("small"))
        .collect()
}

fn exchange_with_python(pattern: Pattern) {
    let server = generate_keypair().expect("server key");
    let device = generate_keypair().expect("device key");
    let mut python = PythonClient::spawn(pattern, &server.public, &device.private, "ok");

    let hello = python.read_frame();
    let (mut responder, claim) =
        ResponderHandshake::start(&server.private, &hello).expect("python's Hello");
    assert_eq!(claim.pattern, pattern);
    assert_eq!(claim.device_id, DEVICE_ID);
    assert_eq!(claim.supported_versions, vec![1]);
    match pattern {
        Pattern::Ik => assert_eq!(claim.remote_static, Some(device.public)),
        Pattern::Xk => assert_eq!(claim.remote_static, None),
    }
    let auth = responder.accept(Some(&device.public)).expect("accept");
    python.send(&auth.encode().expect("encode"));
    if pattern == Pattern::Xk {
        let third = python.read_frame();
        responder.finish(&third).expect("python's message 3");
    }
    assert!(responder.is_complete());
    let mut transport = responder.into_transport().expect("transport");

    let frames = python.read_encrypted_frames(&mut transport, 2);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].frame_type, FrameType::RpcRequest);
    assert_eq!((frames[0].channel_id, frames[0].sequence), (0, 1));
    let request: Value = serde_json::from_slice(&frames[0].payload).expect("json");
    assert_eq!(request, json!({"route": "echo", "body": {"n": 1}}));
    assert_eq!(
        frames[1],
        Frame::new(FrameType::Msg, 3, 2, patterned(LARGE_MSG_BYTES, 241))
    );
    // The request and the Msg frame shared one stream cut into two chunks.
    assert_eq!(transport.messages_opened(), 2);

    let response = Frame::json(
        FrameType::RpcResponse,
        0,
        1,
        &json!({"ok": true, "body": request["body"]}),
    )
    .expect("response");
    let video = Frame::new(FrameType::VideoFrame, 7, 99, patterned(VIDEO_BYTES, 239));
    let mut sealed = Vec::new();
    transport.seal_frame(&response, &mut sealed).expect("seal");
    transport.seal_frame(&video, &mut sealed).expect("seal");
    python.send(&sealed);

    let stderr = python.finish();
    let hash = format!("HASH {}", hex::encode(transport.handshake_hash()));
    assert!(
        stderr.contains(&hash),
        "handshake hashes differ: ours {hash}, python's:\n{stderr}"
    );
}

fn python_with_unregistered_key(pattern: Pattern) {
    let server = generate_keypair().expect("server key");
    let registered = generate_keypair().expect("registered key");
    let presented: Keypair = generate_keypair().expect("presented key");
    let mut python = PythonClient::spawn(pattern, &server.public, &presented.private, "refused");

    let hello = python.read_frame();
    let (mut responder, claim) =
        ResponderHandshake::start(&server.private, &hello).expect("python's Hello");
    assert_eq!(claim.device_id, DEVICE_ID);
    let refusal = match pattern {
        Pattern::Ik => {
            assert_eq!(claim.remote_static, Some(presented.public));
            responder
                .accept(Some(&registered.public))
                .expect_err("IK must refuse after message 1")
        }
        Pattern::Xk => {
            let auth = responder.accept(Some(&registered.public)).expect("accept");
            python.send(&auth.encode().expect("encode"));
            let third = python.read_frame();
            responder
                .finish(&third)
                .expect_err("XK must refuse after message 3")
        }
    };
    assert_eq!(refusal, TunnelError::KeyMismatch);
    assert!(!responder.is_complete());
    python.send(&refusal.to_goaway().encode().expect("encode"));
    python.finish();
}

#[test]
fn python_initiator_completes_xk_and_ik() {
    if !python_noise_available() {
        return;
    }
    exchange_with_python(Pattern::Xk);
    exchange_with_python(Pattern::Ik);
}

#[test]
fn python_initiator_with_an_unregistered_key_is_refused() {
    if !python_noise_available() {
        return;
    }
    python_with_unregistered_key(Pattern::Xk);
    python_with_unregistered_key(Pattern::Ik);
}

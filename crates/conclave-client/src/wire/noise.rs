//! TCP with a Noise tunnel (docs/PROTOCOL.md section 12): the plaintext
//! handshake, the wait for the server's `Ack`, and the encrypted frame
//! transport under [`super::framed::Framed`].

use std::net::{IpAddr, SocketAddr};

use bytes::{Buf as _, Bytes, BytesMut};
use conclave_core::DeviceId;
use conclave_protocol::api::{AckPayload, GoawayPayload};
use conclave_protocol::{Decoded, Frame, FrameType, decode_frame, parse_json_payload};
use conclave_tunnel::{InitiatorHandshake, Keypair, Opener, Pattern, Sealer, TunnelError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::framed::FrameTransport;
use crate::error::{ClientError, CloseReason, Goaway};

/// Most ciphertext one socket read takes: one maximal Noise message with
/// its length prefix, which is also all an [`Opener`] buffers.
const READ_CHUNK_BYTES: usize = conclave_tunnel::CIPHERTEXT_BUFFER_MAX_BYTES;

/// Plaintext buffered while waiting for a handshake frame. The server's
/// `Auth` is a small JSON frame (its Noise message in hex is at most
/// 128 KiB even in theory), so more than this without a whole frame means
/// the peer is not a Conclave server.
const HANDSHAKE_BUFFER_MAX_BYTES: usize = 160 * 1024;

/// How much one handshake read asks for.
const HANDSHAKE_READ_BYTES: usize = 4096;

/// Largest sealing buffer kept between sends. Sending a big frame grows
/// it; afterwards it is given back rather than held for the connection's
/// lifetime.
const SEALED_KEEP_BYTES: usize = 256 * 1024;

/// How to open a TCP+Noise session: which handshake to run, as which
/// device, and which server key to trust.
///
/// The device must have registered `device_keypair.public` (as
/// `noise_public_key`) at registration or login, and must have a live login:
/// the server refuses a device that was kicked or logged out until it logs
/// in again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoiseOptions {
    /// XK (three messages; the device key is revealed only after the server
    /// proved itself) or IK (two messages).
    pub pattern: Pattern,
    /// The device's static key pair.
    pub device_keypair: Keypair,
    /// The server's static public key, pinned: from
    /// [`crate::HttpClient::server_info`] or the deployment's configuration.
    pub server_public_key: [u8; 32],
    /// The device to speak for.
    pub device_id: DeviceId,
}

/// Connects, runs the handshake and waits for the server's `Ack`. The caller
/// bounds the whole of it with the connect timeout.
pub(crate) async fn connect(
    addr: SocketAddr,
    options: &NoiseOptions,
    local_addr: Option<IpAddr>,
) -> Result<(NoiseFrames, AckPayload), ClientError> {
    let stream = super::tcp_connect(addr, local_addr)
        .await
        .map_err(|err| ClientError::Transport(format!("connecting to {addr}: {err}")))?;
    let (read, mut write) = stream.into_split();

    let (mut initiator, hello) = InitiatorHandshake::start(
        options.pattern,
        &options.device_keypair,
        &options.server_public_key,
        options.device_id.get(),
    )
    .map_err(handshake_error)?;
    write_plain(&mut write, &hello).await?;

    let mut plain = PlainReader {
        read,
        buffer: BytesMut::new(),
    };
    let auth = plain.next_frame().await?;
    if let Some(finish) = initiator.on_auth(&auth).map_err(handshake_error)? {
        write_plain(&mut write, &finish).await?;
    }
    let (sealer, opener) = initiator.into_transport().map_err(handshake_error)?.split();

    let mut frames = NoiseFrames {
        read: plain.read,
        write,
        sealer,
        opener,
        sealed: Vec::new(),
        buffer: vec![0_u8; READ_CHUNK_BYTES].into_boxed_slice(),
        early: Vec::new(),
        ping_sequence: 0,
    };
    // Whatever followed the server's last handshake frame is already
    // ciphertext (for IK, typically the Ack), or, for XK, the plaintext
    // refusal of our message 3.
    let mut leftover = plain.buffer;
    let mut received = Vec::new();
    while !leftover.is_empty() {
        let room = frames.opener.remaining_ciphertext_capacity();
        let piece = leftover.split_to(room.min(leftover.len()).max(1));
        frames
            .opener
            .push_ciphertext(&piece)
            .and_then(|()| drain(&mut frames.opener, &mut received))
            .map_err(refusal_or_protocol)?;
    }
    // Prove liveness at once: the server opens no session (and sends no
    // Ack) until a transport message from us decrypts, so a replayed IK
    // first message gets nowhere. A Ping is the cheapest such message.
    frames.keepalive().await.map_err(|err| {
        ClientError::Transport(format!("sending the first transport message: {err}"))
    })?;
    let ack = frames.await_ack(received).await?;
    if ack.device_id != options.device_id {
        return Err(ClientError::Protocol(format!(
            "the server acknowledged device {} instead of {}",
            ack.device_id, options.device_id
        )));
    }
    Ok((frames, ack))
}

/// The server's first frame in a session, `Ack`, or its refusal.
pub(crate) fn ack_or_refusal(frame: &Frame) -> Result<AckPayload, ClientError> {
    match frame.frame_type {
        FrameType::Ack => parse_json_payload::<AckPayload>(frame)
            .map_err(|err| ClientError::Protocol(format!("unreadable Ack: {err}"))),
        FrameType::Goaway => Err(parse_json_payload::<GoawayPayload>(frame).map_or_else(
            |err| ClientError::Protocol(format!("unreadable refusal: {err}")),
            |goaway| ClientError::Api {
                code: goaway.code,
                message: goaway.message,
                retry_after_ms: None,
            },
        )),
        other => Err(ClientError::Protocol(format!(
            "expected Ack as the server's first frame, got {other:?}"
        ))),
    }
}

/// A failure of the handshake: the server's refusal keeps its code, so
/// callers can branch on `key_mismatch`, `device_revoked`, ...; anything
/// this side detected (a server that does not hold the pinned key, a
/// malformed answer) is a protocol error naming its code.
fn handshake_error(err: TunnelError) -> ClientError {
    match err {
        TunnelError::Refused { code, message } => ClientError::Api {
            code,
            message,
            retry_after_ms: None,
        },
        other => ClientError::Protocol(format!(
            "Noise handshake failed ({}): {other}",
            other.code()
        )),
    }
}

/// A failure of the tunnel before the session started: a refusal of XK's
/// message 3 arrives as a plaintext Goaway where ciphertext was expected.
fn refusal_or_protocol(err: TunnelError) -> ClientError {
    match err {
        TunnelError::Refused { .. } => handshake_error(err),
        other => ClientError::Protocol(format!(
            "the encrypted stream broke ({}): {other}",
            other.code()
        )),
    }
}

async fn write_plain(write: &mut OwnedWriteHalf, frame: &Frame) -> Result<(), ClientError> {
    let bytes = frame
        .encode()
        .map_err(|err| ClientError::Protocol(format!("cannot encode a handshake frame: {err}")))?;
    write
        .write_all(&bytes)
        .await
        .map_err(|err| ClientError::Transport(format!("sending the handshake: {err}")))
}

/// Reads the plaintext handshake frames.
struct PlainReader {
    read: OwnedReadHalf,
    /// Received, not yet framed. After the last handshake frame, whatever is
    /// left here is the start of the encrypted stream.
    buffer: BytesMut,
}

impl PlainReader {
    async fn next_frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            match decode_frame(&self.buffer) {
                Ok(Decoded::Frame { frame, consumed }) => {
                    self.buffer.advance(consumed);
                    return Ok(frame);
                }
                Ok(Decoded::Incomplete) => {}
                Err(err) => {
                    return Err(ClientError::Protocol(format!(
                        "the server's handshake frame is malformed: {err}"
                    )));
                }
            }
            let room = HANDSHAKE_BUFFER_MAX_BYTES.saturating_sub(self.buffer.len());
            if room == 0 {
                return Err(ClientError::Protocol(
                    "the server's handshake frame is too large".to_owned(),
                ));
            }
            // At most `room` more bytes: read into a bounded window.
            self.buffer.reserve(room.min(HANDSHAKE_READ_BYTES));
            let mut window = (&mut self.read).take(u64::try_from(room).unwrap_or(u64::MAX));
            let read = window
                .read_buf(&mut self.buffer)
                .await
                .map_err(|err| ClientError::Transport(format!("reading the handshake: {err}")))?;
            if read == 0 {
                return Err(ClientError::Transport(
                    "the server closed the connection during the handshake".to_owned(),
                ));
            }
        }
    }
}

fn drain(opener: &mut Opener, out: &mut Vec<Frame>) -> Result<(), TunnelError> {
    while let Some(frame) = opener.next_frame()? {
        out.push(frame);
    }
    Ok(())
}

/// CCP-1 frames through the Noise tunnel.
pub(crate) struct NoiseFrames {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    sealer: Sealer,
    opener: Opener,
    /// Reused for sealing, so a send does not allocate.
    sealed: Vec<u8>,
    /// One socket read.
    buffer: Box<[u8]>,
    /// Frames that arrived behind the `Ack` while connecting; handed out by
    /// the first `recv`.
    early: Vec<Frame>,
    ping_sequence: u64,
}

impl NoiseFrames {
    /// Reads until the first frame, which must be the `Ack`; frames behind
    /// it are kept for the session.
    async fn await_ack(&mut self, mut received: Vec<Frame>) -> Result<AckPayload, ClientError> {
        while received.is_empty() {
            let read = self.read_some().await.map_err(|why| match why {
                ReadFailure::Closed => ClientError::Transport(
                    "the server closed the connection before acknowledging the session".to_owned(),
                ),
                ReadFailure::Io(err) => {
                    ClientError::Transport(format!("reading the server's Ack: {err}"))
                }
                ReadFailure::Tunnel(err) => refusal_or_protocol(err),
            })?;
            received = read;
        }
        let mut received = received.into_iter();
        let first = received
            .next()
            .ok_or_else(|| ClientError::Protocol("no frame arrived before the Ack".to_owned()))?;
        let ack = ack_or_refusal(&first)?;
        self.early = received.collect();
        Ok(ack)
    }

    /// One socket read, decrypted and framed (possibly into no frame yet).
    ///
    /// Cancel-safe: the only await is the socket read, and what it returns
    /// is pushed into the opener before anything else can happen.
    async fn read_some(&mut self) -> Result<Vec<Frame>, ReadFailure> {
        // Every earlier read was drained, so the capacity is never zero
        // unless the opener is poisoned, which it reports below.
        let room = self
            .opener
            .remaining_ciphertext_capacity()
            .min(self.buffer.len())
            .max(1);
        let window = self.buffer.get_mut(..room).unwrap_or_default();
        let read = self.read.read(window).await.map_err(ReadFailure::Io)?;
        if read == 0 {
            return Err(ReadFailure::Closed);
        }
        let data = self.buffer.get(..read).unwrap_or_default();
        let mut frames = Vec::new();
        self.opener
            .push_ciphertext(data)
            .and_then(|()| drain(&mut self.opener, &mut frames))
            .map_err(ReadFailure::Tunnel)?;
        Ok(frames)
    }
}

enum ReadFailure {
    Closed,
    Io(std::io::Error),
    Tunnel(TunnelError),
}

impl FrameTransport for NoiseFrames {
    async fn send(&mut self, frames: Bytes) -> Result<(), String> {
        self.sealed.clear();
        if self.sealed.capacity() > SEALED_KEEP_BYTES {
            self.sealed = Vec::new();
        }
        self.sealer
            .seal(&frames, &mut self.sealed)
            .map_err(|err| format!("cannot encrypt: {err}"))?;
        self.write
            .write_all(&self.sealed)
            .await
            .map_err(|err| format!("writing to the socket: {err}"))
    }

    async fn recv(&mut self) -> Result<Vec<Frame>, CloseReason> {
        if !self.early.is_empty() {
            return Ok(std::mem::take(&mut self.early));
        }
        self.read_some().await.map_err(|why| match why {
            ReadFailure::Closed => {
                CloseReason::Disconnected("the server ended the connection".to_owned())
            }
            ReadFailure::Io(err) => CloseReason::Disconnected(format!("reading the socket: {err}")),
            ReadFailure::Tunnel(TunnelError::Refused { code, message }) => {
                CloseReason::Goaway(Goaway { code, message })
            }
            ReadFailure::Tunnel(err) => CloseReason::Disconnected(format!(
                "the encrypted stream broke ({}): {err}",
                err.code()
            )),
        })
    }

    async fn keepalive(&mut self) -> Result<(), String> {
        self.ping_sequence = self.ping_sequence.wrapping_add(1);
        let ping = Frame::new(FrameType::Ping, 0, self.ping_sequence, Bytes::new())
            .encode()
            .map_err(|err| format!("cannot encode a ping: {err}"))?;
        self.send(ping).await
    }

    async fn close(&mut self) {
        // The server ends the session when it reads the end of our stream.
        let _ = self.write.shutdown().await;
    }
}

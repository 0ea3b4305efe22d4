//! TCP with a Noise tunnel (XK or IK): the device proves the static key it
//! registered at login, the server proves the key clients pin, and every
//! frame after the handshake is encrypted (docs/PROTOCOL.md section 12).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use conclave_core::{DeviceId, ErrorCode};
use conclave_protocol::api::AckPayload;
use conclave_protocol::{Decoded, Frame, FrameType, decode_frame};
use conclave_tunnel::{Opener, ResponderHandshake, Sealer, TunnelError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::api_error::ApiError;
use crate::rpc::Caller;
use crate::state::AppState;
use crate::transport::framed::{self, FrameWire};

/// Bytes read per call once the tunnel is up. The opener gathers a chunk
/// across reads, so this need not hold a whole Noise message (64 KiB). The
/// buffer exists only while bytes are being read: an idle session waits
/// for the socket to become readable without one.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Plaintext buffered during the handshake. Handshake frames are small JSON
/// (a Noise message in hex is at most 128 KiB), so a peer sending more
/// before finishing the handshake is refused.
const HANDSHAKE_BUFFER_MAX_BYTES: usize = 160 * 1024;

pub(crate) async fn serve(state: AppState, listener: TcpListener, slots: Arc<Semaphore>) {
    loop {
        let (stream, peer) = tokio::select! {
            () = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state
                .metrics
                .connections_rejected
                .with_label_values(&["tcp"])
                .inc();
            drop(stream);
            continue;
        };
        let conn_state = state.clone();
        state.tasks.spawn(async move {
            handle(conn_state, stream, peer).await;
            drop(slot);
        });
    }
}

async fn handle(state: AppState, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut handshake = Handshake {
        read,
        buffer: BytesMut::with_capacity(4096),
    };
    let auth_timeout = Duration::from_millis(state.config.limits.auth_timeout_ms);
    let auth_deadline = tokio::time::Instant::now() + auth_timeout;
    let outcome = tokio::time::timeout_at(auth_deadline, handshake.run(&state, &mut write))
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::new(
                ErrorCode::AuthTimeout,
                "complete the handshake within the auth timeout",
            ))
        });
    match outcome {
        Ok(Handshaken {
            transport,
            device,
            version,
            pattern,
        }) => {
            let (sealer, mut opener) = transport.split();
            // Bytes that followed the last handshake frame are already
            // ciphertext.
            let leftover = handshake.buffer.split();
            let mut early = Vec::new();
            let pushed = opener
                .push_ciphertext(&leftover)
                .and_then(|()| drain(&mut opener, &mut early));
            let mut wire = NoiseWire {
                read: handshake.read,
                write,
                sealer,
                opener,
                sealed: Vec::new(),
            };
            if let Err(err) = pushed {
                let _ = wire
                    .write(&crate::transport::frames::goaway_frame(
                        err.error_code(),
                        &err.to_string(),
                    ))
                    .await;
                wire.finish().await;
                return;
            }
            // IK completes on the client's first message, which anyone who
            // recorded it can replay. Only a transport message that decrypts
            // proves a live device, so the session opens after the first one.
            if pattern == conclave_tunnel::Pattern::Ik && early.is_empty() {
                let proven = tokio::time::timeout_at(auth_deadline, async {
                    while early.is_empty() {
                        if !wire.read_frames(&mut early).await? {
                            return Err(ApiError::new(
                                ErrorCode::HandshakeFailed,
                                "closed before proving liveness",
                            ));
                        }
                    }
                    Ok(())
                })
                .await
                .unwrap_or_else(|_| {
                    Err(ApiError::new(
                        ErrorCode::AuthTimeout,
                        "send a transport message (a Ping will do) right after the handshake",
                    ))
                });
                if let Err(err) = proven {
                    let goaway = crate::transport::frames::goaway_frame(err.code, &err.message);
                    let _ = wire.write(&goaway).await;
                    wire.finish().await;
                    return;
                }
            }
            let link = state.sessions.open(device.user_id, device.id, "tcp", false);
            let caller = Caller {
                user_id: device.user_id,
                device_id: device.id,
                session_id: Some(link.handle.id),
            };
            let ack = AckPayload {
                session_id: conclave_core::SessionId::new(link.handle.id),
                user_id: caller.user_id,
                device_id: caller.device_id,
                protocol_version: version,
                heartbeat_interval_ms: state.config.limits.heartbeat_interval_ms,
            };
            let ack = Frame::json(FrameType::Ack, 0, 0, &ack)
                .and_then(|f| f.encode())
                .unwrap_or_default();
            if wire.write(&ack).await.is_err() {
                return;
            }
            framed::run(state, link, caller, peer.ip(), wire, early).await;
        }
        Err(refusal) => {
            tracing::debug!(%peer, code = %refusal.code, reason = %refusal.message, "TCP handshake refused");
            // Before transport mode the refusal travels in plaintext.
            let goaway = conclave_tunnel::goaway(refusal.code.as_str(), &refusal.message);
            if let Ok(bytes) = goaway.encode() {
                let _ = write.write_all(&bytes).await;
            }
            let _ = write.shutdown().await;
        }
    }
}

struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: &str) -> Self {
        Self {
            code,
            message: message.to_owned(),
        }
    }
}

impl From<TunnelError> for Refusal {
    fn from(err: TunnelError) -> Self {
        let code = err.error_code();
        // Our own failures are not explained to the peer.
        let message = if code == ErrorCode::Internal {
            "internal error".to_owned()
        } else {
            err.to_string()
        };
        Self { code, message }
    }
}

impl From<ApiError> for Refusal {
    fn from(err: ApiError) -> Self {
        let err = err.public();
        Self {
            code: err.code,
            message: err.message,
        }
    }
}

struct Handshake {
    read: OwnedReadHalf,
    buffer: BytesMut,
}

struct Handshaken {
    transport: conclave_tunnel::Transport,
    device: conclave_storage::DeviceRecord,
    version: u32,
    pattern: conclave_tunnel::Pattern,
}

impl Handshake {
    /// Hello -> device lookup -> Auth (-> Auth for XK) -> transport mode.
    async fn run(
        &mut self,
        state: &AppState,
        write: &mut OwnedWriteHalf,
    ) -> Result<Handshaken, Refusal> {
        let hello = self.next_frame().await?;
        let (mut responder, claim) =
            ResponderHandshake::start(state.secrets.noise_private_key(), &hello)?;
        let device_id = DeviceId::new(claim.device_id);
        let device = state
            .storage
            .accounts()
            .device(device_id)
            .await
            .map_err(ApiError::from)?;
        let now = crate::unix_ms();
        // Only an active device with a live login may connect: a removed
        // device must register anew, a signed-out one log in again.
        let device = match device {
            Some(d) if !d.is_active() => None,
            Some(d) if d.refresh_expires_at_ms.is_none_or(|at| at <= now) => {
                return Err(Refusal::new(
                    ErrorCode::SessionKicked,
                    "this device is signed out; log in again",
                ));
            }
            other => other,
        };
        let registered = device.as_ref().and_then(|d| d.noise_public_key);
        let auth = responder.accept(registered.as_ref())?;
        send_plain(write, &auth).await?;
        if !responder.is_complete() {
            let finish = self.next_frame().await?;
            responder.finish(&finish)?;
        }
        let version = responder.protocol_version();
        let pattern = responder.pattern();
        let transport = responder.into_transport()?;
        let device =
            device.ok_or_else(|| Refusal::new(ErrorCode::DeviceRevoked, "unknown device"))?;
        Ok(Handshaken {
            transport,
            device,
            version,
            pattern,
        })
    }

    /// The next plaintext handshake frame.
    async fn next_frame(&mut self) -> Result<Frame, Refusal> {
        loop {
            match decode_frame(&self.buffer) {
                Ok(Decoded::Frame { frame, consumed }) => {
                    self.buffer.advance(consumed);
                    return Ok(frame);
                }
                Ok(Decoded::Incomplete) => {}
                Err(err) => return Err(Refusal::new(err.code(), &err.to_string())),
            }
            if self.buffer.len() >= HANDSHAKE_BUFFER_MAX_BYTES {
                return Err(Refusal::new(
                    ErrorCode::PayloadTooLarge,
                    "handshake frames are too large",
                ));
            }
            let read = self
                .read
                .read_buf(&mut self.buffer)
                .await
                .map_err(|err| Refusal::new(ErrorCode::HandshakeFailed, &err.to_string()))?;
            if read == 0 {
                return Err(Refusal::new(
                    ErrorCode::HandshakeFailed,
                    "closed during the handshake",
                ));
            }
        }
    }
}

async fn send_plain(write: &mut OwnedWriteHalf, frame: &Frame) -> Result<(), Refusal> {
    let bytes = frame
        .encode()
        .map_err(|err| Refusal::new(ErrorCode::Internal, &err.to_string()))?;
    write
        .write_all(&bytes)
        .await
        .map_err(|err| Refusal::new(ErrorCode::HandshakeFailed, &err.to_string()))
}

fn drain(opener: &mut Opener, out: &mut Vec<Frame>) -> Result<(), TunnelError> {
    while let Some(frame) = opener.next_frame()? {
        out.push(frame);
    }
    Ok(())
}

struct NoiseWire {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    sealer: Sealer,
    opener: Opener,
    sealed: Vec<u8>,
}

impl FrameWire for NoiseWire {
    async fn read_frames(&mut self, out: &mut Vec<Frame>) -> Result<bool, ApiError> {
        // Cancel-safe: the only wait is for readiness; the read itself and
        // what follows do not wait.
        let buffer = loop {
            if self.read.readable().await.is_err() {
                return Ok(false);
            }
            let room = self
                .opener
                .remaining_ciphertext_capacity()
                .clamp(1, READ_CHUNK_BYTES);
            let mut buffer = Vec::with_capacity(room);
            match self.read.try_read_buf(&mut buffer) {
                Ok(0) => return Ok(false),
                Ok(_) => break buffer,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(false),
            }
        };
        let violation = |err: TunnelError| ApiError::new(err.error_code(), err.to_string());
        self.opener.push_ciphertext(&buffer).map_err(violation)?;
        drain(&mut self.opener, out).map_err(violation)?;
        Ok(true)
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sealed.clear();
        self.sealer
            .seal(bytes, &mut self.sealed)
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        self.write.write_all(&self.sealed).await
    }

    async fn finish(&mut self) {
        let _ = self.write.shutdown().await;
    }
}

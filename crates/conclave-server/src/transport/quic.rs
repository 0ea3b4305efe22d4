//! QUIC (TLS 1.3, ALPN `conclave/1`): one bidirectional stream per session
//! carrying CCP-1 frames. The client's first frame is `Auth` with its access
//! token; the server answers `Ack` and the session runs like any other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use conclave_core::ErrorCode;
use conclave_protocol::api::{AckPayload, AuthPayload, negotiate_version};
use conclave_protocol::{Frame, FrameDecoder, FrameType, parse_json_payload};
use tokio::sync::Semaphore;

use crate::api_error::ApiError;
use crate::rpc::{self, Caller};
use crate::sessions::SessionLink;
use crate::state::AppState;
use crate::tls::TlsIdentity;
use crate::transport::framed::{self, FrameWire};
use crate::transport::frames;

pub(crate) const ALPN: &[u8] = b"conclave/1";

/// Bytes read from the stream per call: large enough for throughput, small
/// enough to keep per-connection memory modest.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// How long a refused client gets to read the `Goaway` before the connection
/// is torn down.
const GOODBYE_GRACE: Duration = Duration::from_secs(1);

pub(crate) fn bind(
    addr: SocketAddr,
    identity: TlsIdentity,
    idle_timeout_ms: u64,
) -> anyhow::Result<quinn::Endpoint> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 setup")?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .context("loading the QUIC certificate")?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).context("QUIC TLS setup")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // A backstop behind the session's own idle check, which says goodbye.
        .max_idle_timeout(Some(
            Duration::from_millis(idle_timeout_ms.saturating_mul(2))
                .try_into()
                .context("limits.idle_timeout_ms is too large for QUIC")?,
        ));
    server.transport_config(Arc::new(transport));
    quinn::Endpoint::server(server, addr).with_context(|| format!("binding QUIC on {addr}"))
}

/// Accepts connections until shutdown.
pub(crate) async fn serve(state: AppState, endpoint: quinn::Endpoint, slots: Arc<Semaphore>) {
    loop {
        let incoming = tokio::select! {
            () = state.shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state
                .metrics
                .connections_rejected
                .with_label_values(&["quic"])
                .inc();
            incoming.refuse();
            continue;
        };
        let conn_state = state.clone();
        state.tasks.spawn(async move {
            handle(conn_state, incoming).await;
            drop(slot);
        });
    }
    // No `endpoint.close` here: that would cut the sessions off before they
    // send their `shutting_down` goodbye. Each session closes its own
    // connection as it ends, and the endpoint goes when the last one does.
    drop(endpoint);
}

async fn handle(state: AppState, incoming: quinn::Incoming) {
    let peer_ip = incoming.remote_address().ip();
    let auth_timeout = Duration::from_millis(state.config.limits.auth_timeout_ms);
    let connection = match tokio::time::timeout(auth_timeout, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "QUIC handshake failed");
            return;
        }
        Err(_) => return,
    };
    let stream = tokio::time::timeout(auth_timeout, connection.accept_bi()).await;
    let Ok(Ok((send, recv))) = stream else {
        connection.close(1u32.into(), ErrorCode::AuthTimeout.as_str().as_bytes());
        return;
    };
    let mut wire = QuicWire {
        connection,
        send,
        recv,
        decoder: FrameDecoder::new(),
        buffer: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
    };
    let mut early = Vec::new();
    let authenticated =
        tokio::time::timeout(auth_timeout, authenticate(&state, &mut wire, &mut early))
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::new(
                    ErrorCode::AuthTimeout,
                    "authenticate within the auth timeout",
                ))
            });
    match authenticated {
        Ok((caller, link)) => framed::run(state, link, caller, peer_ip, wire, early).await,
        Err(err) => {
            let err = err.public();
            tracing::debug!(code = %err.code, "QUIC connection refused");
            let _ = wire
                .write(&frames::goaway_frame(err.code, &err.message))
                .await;
            wire.finish().await;
        }
    }
}

/// Reads the `Auth` frame, checks the token, opens the session and sends
/// `Ack`. Frames that arrived behind `Auth` are left in `early`.
async fn authenticate(
    state: &AppState,
    wire: &mut QuicWire,
    early: &mut Vec<Frame>,
) -> Result<(Caller, SessionLink), ApiError> {
    while early.is_empty() {
        if !wire.read_frames(early).await? {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "closed before authenticating",
            ));
        }
    }
    let auth = early.remove(0);
    if auth.frame_type != FrameType::Auth {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "the first frame on a QUIC connection must be Auth with an access token",
        ));
    }
    let payload: AuthPayload =
        parse_json_payload(&auth).map_err(|err| ApiError::new(err.code(), err.to_string()))?;
    let version = negotiate_version(&payload.supported_versions).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnsupportedVersion,
            "this server speaks protocol version 1",
        )
    })?;
    let caller = rpc::authenticate(state, &payload.token, crate::unix_ms() / 1000).await?;
    let link = state.sessions.open(
        caller.user_id,
        caller.device_id,
        "quic",
        payload.hold_events,
    );
    let ack = AckPayload {
        session_id: conclave_core::SessionId::new(link.handle.id),
        user_id: caller.user_id,
        device_id: caller.device_id,
        protocol_version: version,
        heartbeat_interval_ms: state.config.limits.heartbeat_interval_ms,
    };
    let ack = Frame::json(FrameType::Ack, 0, 0, &ack)
        .and_then(|f| f.encode())
        .map_err(|err| ApiError::internal(err.to_string()))?;
    wire.write(&ack)
        .await
        .map_err(|err| ApiError::new(ErrorCode::Unavailable, err.to_string()))?;
    Ok((
        Caller {
            session_id: Some(link.handle.id),
            ..caller
        },
        link,
    ))
}

struct QuicWire {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    buffer: Box<[u8]>,
}

impl FrameWire for QuicWire {
    async fn read_frames(&mut self, out: &mut Vec<Frame>) -> Result<bool, ApiError> {
        // Never read more than the decoder may buffer: a frame is at most
        // 16 MiB, and the decoder refuses anything beyond one frame.
        let room = self
            .decoder
            .remaining_capacity()
            .min(self.buffer.len())
            .max(1);
        let read = match self.recv.read(&mut self.buffer[..room]).await {
            Ok(Some(read)) => read,
            Ok(None) | Err(_) => return Ok(false),
        };
        let violation =
            |err: conclave_protocol::CodecError| ApiError::new(err.code(), err.to_string());
        self.decoder.push(&self.buffer[..read]).map_err(violation)?;
        while let Some(frame) = self.decoder.next_frame().map_err(violation)? {
            out.push(frame);
        }
        Ok(true)
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.send
            .write_all(bytes)
            .await
            .map_err(std::io::Error::other)
    }

    async fn finish(&mut self) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(GOODBYE_GRACE, self.send.stopped()).await;
        self.connection.close(0u32.into(), b"bye");
    }
}

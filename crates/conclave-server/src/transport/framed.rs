//! The session loop of binary-framed transports (QUIC, TCP+Noise): frames
//! in, route table, replies and pushed events out, heartbeats, idle
//! timeout, and a `Goaway` frame saying why the session ends.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_core::ErrorCode;
use conclave_protocol::api::events;
use conclave_protocol::{Frame, FrameType};

use crate::api_error::ApiError;
use crate::rpc::{Caller, RpcContext};
use crate::sessions::{CloseReason, PushEvent, SessionLink};
use crate::state::AppState;
use crate::transport::frames::{self, FrameAction};
use crate::transport::requests::{ReplyWriter, Requests};

/// A byte pipe that carries CCP-1 frames (decrypting and re-framing as its
/// transport requires).
pub(crate) trait FrameWire: Send {
    /// Waits for more bytes and appends every frame they complete to `out`.
    /// `Ok(false)` when the peer closed. Must be cancel-safe: the session
    /// loop races it against outgoing traffic.
    fn read_frames(
        &mut self,
        out: &mut Vec<Frame>,
    ) -> impl Future<Output = Result<bool, ApiError>> + Send;

    /// Writes encoded frames.
    fn write(&mut self, bytes: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Flushes and closes the sending side.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// Runs an authenticated session. `early` holds frames that arrived together
/// with the authentication (a client may pipeline requests behind it).
pub(crate) async fn run<W: FrameWire>(
    state: AppState,
    link: SessionLink,
    caller: Caller,
    peer_ip: IpAddr,
    mut wire: W,
    early: Vec<Frame>,
) {
    let session = link.handle.clone();
    crate::transport::touch(&state, caller);
    let transport = session.transport;
    let limits = &state.config.limits;
    let in_flight = limits.session_requests_in_flight as usize;
    let requests = Requests::new(in_flight, session.clone());
    let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
    let mut heartbeat = tokio::time::interval(Duration::from_millis(limits.heartbeat_interval_ms));
    heartbeat.reset();
    let mut last_heard = Instant::now();
    let mut ping_sequence = 0u64;
    let mut inbound = early;
    let shutdown = state.shutdown.clone();
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let mut read_ready = !inbound.is_empty();

    let reason: Option<CloseReason> = 'session: loop {
        if read_ready {
            read_ready = false;
            for frame in inbound.drain(..) {
                match frames::on_frame(&frame) {
                    FrameAction::Call {
                        request_id,
                        route,
                        body,
                    } => {
                        let mut out = Out {
                            wire: &mut wire,
                            timeout: write_timeout,
                        };
                        let permit = match requests.permit(&mut out).await {
                            Ok(permit) => permit,
                            Err(stop) => break 'session stop,
                        };
                        let ctx = RpcContext {
                            state: state.clone(),
                            caller: Some(caller),
                            peer_ip,
                            transport,
                        };
                        requests.spawn_call(ctx, permit, route, body, move |result| {
                            frames::response_frame(request_id, result)
                        });
                    }
                    FrameAction::Reply(bytes) => {
                        if let Err(stop) = write(&mut wire, &bytes, write_timeout).await {
                            break 'session stop;
                        }
                    }
                    FrameAction::Alive => {}
                    FrameAction::Violation(err) => {
                        break 'session Some(reason(err.code, &err.message));
                    }
                }
            }
        }
        tokio::select! {
            biased;
            Some(reply) = requests.replies().recv() => {
                let mut out = Out { wire: &mut wire, timeout: write_timeout };
                if let Err(stop) = requests.write_replies(reply, &mut out).await {
                    break stop;
                }
            }
            () = session.closed().cancelled() => {
                break Some(session.reason().unwrap_or_else(|| reason(ErrorCode::SessionKicked, "session closed")));
            }
            () = shutdown.cancelled() => {
                break Some(reason(ErrorCode::ShuttingDown, "the server is shutting down; reconnect"));
            }
            Some(event) = link.events().recv(), if session.is_live() => {
                if let Err(stop) = write(&mut wire, &event.frame_bytes(), write_timeout).await {
                    break stop;
                }
            }
            read = wire.read_frames(&mut inbound) => {
                match read {
                    Ok(true) => {
                        last_heard = Instant::now();
                        read_ready = true;
                    }
                    Ok(false) => break None,
                    Err(err) => break Some(reason(err.code, &err.message)),
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    break Some(reason(ErrorCode::IdleTimeout, "no traffic from the client; closing"));
                }
                ping_sequence += 1;
                let ping = Frame::new(FrameType::Ping, 0, ping_sequence, Bytes::new()).encode().unwrap_or_default();
                if let Err(stop) = write(&mut wire, &ping, write_timeout).await {
                    break stop;
                }
            }
        }
    };

    requests.close();
    if let Some(reason) = &reason {
        if matches!(
            reason.code,
            ErrorCode::SessionKicked | ErrorCode::DeviceRevoked
        ) {
            let event = PushEvent::new(
                events::SESSION_KICKED,
                serde_json::json!({ "code": reason.code, "message": reason.message }),
            );
            let _ = wire.write(&event.frame_bytes()).await;
        }
        let _ = wire
            .write(&frames::goaway_frame(reason.code, &reason.message))
            .await;
        tracing::debug!(session = session.id, transport, code = %reason.code, "session closed");
    }
    wire.finish().await;
    crate::transport::touch(&state, caller);
    drop(link);
}

/// The session's wire, as where its replies go.
struct Out<'a, W> {
    wire: &'a mut W,
    timeout: Duration,
}

impl<W: FrameWire> ReplyWriter<Bytes> for Out<'_, W> {
    type Stop = Option<CloseReason>;

    async fn write_replies(&mut self, replies: Vec<Bytes>) -> Result<(), Option<CloseReason>> {
        match replies.as_slice() {
            [one] => write(self.wire, one, self.timeout).await,
            _ => write(self.wire, &replies.concat(), self.timeout).await,
        }
    }
}

/// Writes with a deadline. `Err(None)`: the peer is gone; `Err(Some(..))`:
/// it stopped reading, which ends the session as a slow consumer (without a
/// goodbye, which would only stall again).
async fn write<W: FrameWire>(
    wire: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), Option<CloseReason>> {
    match tokio::time::timeout(timeout, wire.write(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => {
            tracing::info!("client stopped reading; ending its session");
            Err(None)
        }
    }
}

fn reason(code: ErrorCode, message: &str) -> CloseReason {
    CloseReason {
        code,
        message: message.to_owned(),
    }
}

//! The session loop of binary-framed transports (QUIC, TCP+Noise): frames
//! in, route table, replies and pushed events out, heartbeats, idle
//! timeout, and a `Goaway` frame saying why the session ends.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_core::ErrorCode;
use conclave_protocol::api::events;
use conclave_protocol::{Frame, FrameType};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api_error::ApiError;
use crate::mailbox::Mailbox;
use crate::rpc::{Caller, RpcContext};
use crate::sessions::{CloseReason, PushEvent, SessionHandle, SessionLink};
use crate::state::AppState;
use crate::transport::frames::{self, FrameAction};

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
    crate::transport::touch(&state, caller).await;
    let transport = session.transport;
    let limits = &state.config.limits;
    let in_flight = limits.session_requests_in_flight as usize;
    // A request holds its permit until its reply is written, so the replies
    // waiting never outnumber the permits (see `next_permit`).
    let permits = Arc::new(Semaphore::new(in_flight));
    let replies: Arc<Replies> = Arc::new(Mailbox::new(in_flight));
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
                        let permit = match next_permit(
                            &permits,
                            &replies,
                            &mut wire,
                            &session,
                            write_timeout,
                        )
                        .await
                        {
                            Ok(permit) => permit,
                            Err(stop) => break 'session stop,
                        };
                        let ctx = RpcContext {
                            state: state.clone(),
                            caller: Some(caller),
                            peer_ip,
                            transport,
                        };
                        let replies = replies.clone();
                        let routes = state.clone();
                        state.tasks.spawn(async move {
                            let result = routes.routes.dispatch(ctx, &route, body).await;
                            // The permit travels with the reply until it is
                            // written, so the mailbox has room; a closed one
                            // means the session ended.
                            let _ = replies
                                .try_send((frames::response_frame(request_id, result), permit));
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
            Some(reply) = replies.recv() => {
                if let Err(stop) = write_reply(reply, &mut wire, &session, write_timeout).await {
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

    replies.close();
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
    crate::transport::touch(&state, caller).await;
    drop(link);
}

type Replies = Mailbox<(Bytes, OwnedSemaphorePermit)>;

/// A permit for one more request. When every permit is taken, some may be
/// held by replies waiting to be written: write those rather than wait on
/// them (the loop is not draining replies while it starts requests).
async fn next_permit<W: FrameWire>(
    permits: &Arc<Semaphore>,
    replies: &Replies,
    wire: &mut W,
    session: &SessionHandle,
    write_timeout: Duration,
) -> Result<OwnedSemaphorePermit, Option<CloseReason>> {
    loop {
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        tokio::select! {
            biased;
            Some(reply) = replies.recv() => {
                write_reply(reply, wire, session, write_timeout).await?;
            }
            permit = permits.clone().acquire_owned() => {
                return permit.map_err(|_| None);
            }
        }
    }
}

/// Writes one reply and frees its permit; ends the session afterwards if
/// the request asked for that (logout, revoking oneself).
async fn write_reply<W: FrameWire>(
    (reply, permit): (Bytes, OwnedSemaphorePermit),
    wire: &mut W,
    session: &SessionHandle,
    write_timeout: Duration,
) -> Result<(), Option<CloseReason>> {
    write(wire, &reply, write_timeout).await?;
    drop(permit);
    session
        .take_close_after_reply()
        .map_or(Ok(()), |reason| Err(Some(reason)))
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

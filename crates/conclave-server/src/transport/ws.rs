//! The realtime WebSocket, `/v1/ws`.
//!
//! Authenticated at the upgrade (`Authorization: Bearer` or `?token=`).
//! Requests arrive as JSON text messages (`{"id","route","body"}`) or as
//! binary messages holding CCP-1 frames; each is answered in the form it
//! came in. Pushed events use the encoding chosen at connect
//! (`?encoding=json`, the default, or `?encoding=binary`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use conclave_core::ErrorCode;
use conclave_core::limits::JSON_BODY_MAX_BYTES;
use conclave_protocol::api::{JsonRequest, ResponsePayload, events};
use conclave_protocol::{Decoded, FRAME_LEN_MAX_BYTES, decode_frame};
use futures_util::SinkExt as _;

use crate::api_error::ApiError;
use crate::listener::PeerAddr;
use crate::rpc::{self, Answer, Caller, RpcContext};
use crate::sessions::{CloseReason, PushEvent, SessionLink};
use crate::state::AppState;
use crate::transport::bearer_token;
use crate::transport::frames::{self, FrameAction};
use crate::transport::requests::{ReplyWriter, Requests};

/// WebSocket close codes: 1000 for an orderly end (kicked, shutdown), 1008
/// when the client broke the protocol, 1011 when the server failed.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_INTERNAL: u16 = 1011;

/// Bytes tungstenite reads per syscall. Its read buffer lives as long as
/// the connection, so it is small: requests are a few hundred bytes, and
/// an idle session should cost little memory. A larger message is read in
/// several steps.
const READ_BUFFER_BYTES: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Binary,
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct ConnectParams {
    token: Option<String>,
    encoding: Option<String>,
    /// Hold pushed events until `sync/session_ready` (for a gap-free catch-up).
    #[serde(default)]
    hold_events: bool,
}

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let encoding = match params.encoding.as_deref() {
        None | Some("json") => Encoding::Json,
        Some("binary") => Encoding::Binary,
        Some(other) => {
            return ApiError::bad_request(format!(
                "encoding must be `json` or `binary`, not `{other}`"
            ))
            .into_response();
        }
    };
    let Some(token) = bearer_token(&headers).or(params.token) else {
        return ApiError::new(
            ErrorCode::Unauthenticated,
            "connect with Authorization: Bearer <token> or ?token=",
        )
        .into_response();
    };
    let caller = match rpc::authenticate(&state, &token, crate::unix_ms() / 1000).await {
        Ok(caller) => caller,
        Err(err) => return err.into_response(),
    };
    // Register the session before answering the upgrade: once the client
    // sees the 101 it may cause events (from its other devices) that this
    // session must not miss. If the upgrade never completes, the callback
    // is dropped and the session with it.
    let link = state.sessions.open(
        caller.user_id,
        caller.device_id,
        "websocket",
        params.hold_events,
    );
    let tasks = state.tasks.clone();
    ws.max_message_size(FRAME_LEN_MAX_BYTES + 16)
        .max_frame_size(FRAME_LEN_MAX_BYTES + 16)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            tasks.track_future(run(state, link, caller, peer.ip(), socket, encoding))
        })
}

/// A reply from a spawned request, or a frame to send as is.
enum Reply {
    Json(String),
    Binary(Bytes),
}

impl Reply {
    fn into_message(self) -> Message {
        match self {
            Self::Json(text) => Message::Text(text.into()),
            Self::Binary(bytes) => Message::Binary(bytes),
        }
    }
}

// An `async move` block rather than an `async fn`: an async fn's task keeps
// a second copy of its arguments (the socket is 368 bytes), and every idle
// session pays for its task's size.
#[allow(clippy::manual_async_fn)]
fn run(
    state: AppState,
    link: SessionLink,
    caller: Caller,
    peer_ip: IpAddr,
    mut socket: WebSocket,
    encoding: Encoding,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let session = link.handle.clone();
        let caller = Caller {
            session_id: Some(session.id),
            ..caller
        };
        tracing::debug!(session = session.id, user = %caller.user_id, device = %caller.device_id, "websocket session open");

        crate::transport::touch(&state, caller);
        let limits = &state.config.limits;
        let in_flight = limits.session_requests_in_flight as usize;
        let requests = Requests::new(in_flight, session.clone());
        let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
        let mut heartbeat =
            tokio::time::interval(Duration::from_millis(limits.heartbeat_interval_ms));
        heartbeat.reset();
        let mut last_heard = Instant::now();
        let shutdown = state.shutdown.clone();
        let write_timeout = Duration::from_millis(limits.write_timeout_ms);

        // Awaits other than the idle wait are boxed: a session's task is as big
        // as its largest await, and most sessions sit idle most of the time.
        let reason: CloseReason = loop {
            tokio::select! {
                biased;
                Some(reply) = requests.replies().recv() => {
                    let mut out = Out { socket: &mut socket, timeout: write_timeout };
                    if let Err(reason) = Box::pin(requests.write_replies(reply, &mut out)).await {
                        break reason;
                    }
                }
                () = session.closed().cancelled() => {
                    break session.reason().unwrap_or_else(|| closed_by(ErrorCode::SessionKicked, "session closed"));
                }
                () = shutdown.cancelled() => {
                    break closed_by(ErrorCode::ShuttingDown, "the server is shutting down; reconnect");
                }
                Some(event) = link.events().recv(), if session.is_live() => {
                    // Events that queued up meanwhile go out with it: one flush,
                    // so a busy session costs one write for many events.
                    let mut batch = vec![event];
                    link.events().drain_into(&mut batch, PUSH_BATCH_MAX);
                    let messages: Vec<Message> = batch.iter().map(|event| push_message(encoding, event)).collect();
                    if let Some(reason) = write_failed(send_all(&mut socket, messages, write_timeout).await) {
                        break reason;
                    }
                }
                message = socket.recv() => {
                    last_heard = Instant::now();
                    let message = match message {
                        Some(Ok(message)) => message,
                        Some(Err(err)) => {
                            tracing::debug!(session = session.id, error = %err, "websocket read failed");
                            break closed_by_peer();
                        }
                        None => break closed_by_peer(),
                    };
                    let outcome = match message {
                        Message::Text(text) => {
                            Box::pin(on_json(&state, caller, peer_ip, &requests, text.as_str(), &mut socket, write_timeout)).await
                        }
                        Message::Binary(bytes) => {
                            Box::pin(on_binary(&state, caller, peer_ip, &requests, &bytes, &mut socket, write_timeout)).await
                        }
                        Message::Ping(_) | Message::Pong(_) => Ok(()),
                        Message::Close(_) => break closed_by_peer(),
                    };
                    if let Err(reason) = outcome {
                        break reason;
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= idle_timeout {
                        break closed_by(ErrorCode::IdleTimeout, "no traffic from the client; closing");
                    }
                    if let Some(reason) = write_failed(send(&mut socket, Message::Ping(Bytes::new()), write_timeout).await) {
                        break reason;
                    }
                }
            }
        };

        requests.close();
        Box::pin(say_goodbye(&mut socket, encoding, &reason, write_timeout)).await;
        crate::transport::touch(&state, caller);
        tracing::debug!(session = session.id, code = %reason.code, "websocket session closed");
        drop(link);
    }
}

/// Handles one JSON request: parse the envelope, then run it on its own task.
#[allow(clippy::too_many_arguments)]
async fn on_json(
    state: &AppState,
    caller: Caller,
    peer_ip: IpAddr,
    requests: &Requests<Reply>,
    text: &str,
    socket: &mut WebSocket,
    write_timeout: Duration,
) -> Result<(), CloseReason> {
    if text.len() > JSON_BODY_MAX_BYTES {
        return Err(closed_by(
            ErrorCode::PayloadTooLarge,
            &format!("a JSON message may not exceed {JSON_BODY_MAX_BYTES} bytes"),
        ));
    }
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(err) => {
            let reply = json_response(
                None,
                Err(ApiError::new(ErrorCode::InvalidJson, err.to_string())),
            );
            let sent = send(socket, Message::Text(reply.into()), write_timeout).await;
            return write_failed(sent).map_or(Ok(()), Err);
        }
    };
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    let request: JsonRequest = match serde_json::from_value(value) {
        Ok(request) => request,
        Err(err) => {
            let reply = json_response(
                id,
                Err(ApiError::bad_request(format!("request envelope: {err}"))),
            );
            let sent = send(socket, Message::Text(reply.into()), write_timeout).await;
            return write_failed(sent).map_or(Ok(()), Err);
        }
    };
    let permit = requests
        .permit(&mut Out {
            socket: &mut *socket,
            timeout: write_timeout,
        })
        .await?;
    requests.spawn_call(
        call_context(state, caller, peer_ip),
        permit,
        request.route,
        request.body,
        move |result| Reply::Json(json_response(Some(request.id), result)),
    );
    Ok(())
}

/// Handles one binary message: one or more whole CCP-1 frames.
#[allow(clippy::too_many_arguments)]
async fn on_binary(
    state: &AppState,
    caller: Caller,
    peer_ip: IpAddr,
    requests: &Requests<Reply>,
    bytes: &[u8],
    socket: &mut WebSocket,
    write_timeout: Duration,
) -> Result<(), CloseReason> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let frame = match decode_frame(rest) {
            Ok(Decoded::Frame { frame, consumed }) => {
                rest = rest.get(consumed..).unwrap_or_default();
                frame
            }
            Ok(Decoded::Incomplete) => {
                return Err(closed_by(
                    ErrorCode::MalformedFrame,
                    "a binary message must hold whole frames; this one ends mid-frame",
                ));
            }
            Err(err) => return Err(closed_by(err.code(), &err.to_string())),
        };
        match frames::on_frame(&frame) {
            FrameAction::Call {
                request_id,
                route,
                body,
            } => {
                let permit = requests
                    .permit(&mut Out {
                        socket: &mut *socket,
                        timeout: write_timeout,
                    })
                    .await?;
                requests.spawn_call(
                    call_context(state, caller, peer_ip),
                    permit,
                    route,
                    body,
                    move |result| Reply::Binary(frames::response_frame(request_id, result)),
                );
            }
            FrameAction::Reply(reply) => {
                if let Some(reason) =
                    write_failed(send(socket, Message::Binary(reply), write_timeout).await)
                {
                    return Err(reason);
                }
            }
            FrameAction::Alive => {}
            FrameAction::Violation(err) => return Err(closed_by(err.code, &err.message)),
        }
    }
    Ok(())
}

/// The session's socket, as where its replies go.
struct Out<'a> {
    socket: &'a mut WebSocket,
    timeout: Duration,
}

impl ReplyWriter<Reply> for Out<'_> {
    type Stop = CloseReason;

    async fn write_replies(&mut self, replies: Vec<Reply>) -> Result<(), CloseReason> {
        let messages: Vec<Message> = replies.into_iter().map(Reply::into_message).collect();
        write_failed(send_all(self.socket, messages, self.timeout).await).map_or(Ok(()), Err)
    }
}

/// The context of a call made on this session.
fn call_context(state: &AppState, caller: Caller, peer_ip: IpAddr) -> RpcContext {
    RpcContext {
        state: state.clone(),
        caller: Some(caller),
        peer_ip,
        transport: "websocket",
    }
}

fn json_response(id: Option<u64>, result: Result<Answer, ApiError>) -> String {
    let payload = match result {
        Ok(body) => ResponsePayload::<Answer> {
            id,
            ok: true,
            body: Some(body),
            error: None,
        },
        Err(err) => ResponsePayload {
            id,
            ok: false,
            body: None,
            error: Some(err.public().body()),
        },
    };
    serde_json::to_string(&payload).unwrap_or_default()
}

/// Tells the client why the session ends, then closes the socket.
async fn say_goodbye(
    socket: &mut WebSocket,
    encoding: Encoding,
    reason: &CloseReason,
    write_timeout: Duration,
) {
    if reason.message.is_empty() {
        return; // the peer is gone or not reading; nobody to tell
    }
    if matches!(
        reason.code,
        ErrorCode::SessionKicked | ErrorCode::DeviceRevoked
    ) {
        let event = PushEvent::new(
            events::SESSION_KICKED,
            serde_json::json!({ "code": reason.code, "message": reason.message }),
        );
        let _ = match encoding {
            Encoding::Json => {
                socket
                    .send(Message::Text(Utf8Bytes::from(&*event.json_text())))
                    .await
            }
            Encoding::Binary => socket.send(Message::Binary(event.frame_bytes())).await,
        };
    }
    let goaway = match encoding {
        Encoding::Json => Message::Text(
            serde_json::json!({ "goaway": { "code": reason.code, "message": reason.message } })
                .to_string()
                .into(),
        ),
        Encoding::Binary => Message::Binary(frames::goaway_frame(reason.code, &reason.message)),
    };
    if !matches!(send(socket, goaway, write_timeout).await, Sent::Done) {
        return;
    }
    let close_code = match reason.code.http_status() {
        400..=499
            if !matches!(
                reason.code,
                ErrorCode::SessionKicked | ErrorCode::DeviceRevoked | ErrorCode::IdleTimeout
            ) =>
        {
            CLOSE_POLICY
        }
        500 => CLOSE_INTERNAL,
        _ => CLOSE_NORMAL,
    };
    let close = Message::Close(Some(CloseFrame {
        code: close_code,
        reason: Utf8Bytes::from(reason.code.as_str()),
    }));
    if !matches!(send(socket, close, write_timeout).await, Sent::Done) {
        return;
    }
    // Let the client answer the Close before the socket drops, so a client
    // that was mid-write does not get a reset instead of the goodbye.
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// How a write went.
enum Sent {
    Done,
    /// The peer is gone.
    Gone,
    /// The peer stopped reading: the write did not finish in time.
    Stalled,
}

/// Most pushed events written with one flush.
const PUSH_BATCH_MAX: usize = 64;

fn push_message(encoding: Encoding, event: &PushEvent) -> Message {
    match encoding {
        Encoding::Json => Message::Text(Utf8Bytes::from(&*event.json_text())),
        Encoding::Binary => Message::Binary(event.frame_bytes()),
    }
}

/// Writes `messages` in order and flushes once, all within `timeout`.
async fn send_all(
    socket: &mut WebSocket,
    messages: impl IntoIterator<Item = Message>,
    timeout: Duration,
) -> Sent {
    let write = async {
        for message in messages {
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    // Boxed, so the session's task does not carry a write's state while idle.
    match Box::pin(tokio::time::timeout(timeout, write)).await {
        Ok(Ok(())) => Sent::Done,
        Ok(Err(_)) => Sent::Gone,
        Err(_) => Sent::Stalled,
    }
}

async fn send(socket: &mut WebSocket, message: Message, timeout: Duration) -> Sent {
    send_all(socket, [message], timeout).await
}

/// Ends the loop for a failed write; `None` when the write went through.
fn write_failed(sent: Sent) -> Option<CloseReason> {
    match sent {
        Sent::Done => None,
        Sent::Gone => Some(closed_by_peer()),
        // Saying goodbye to a peer that does not read would only stall again.
        Sent::Stalled => Some(CloseReason {
            code: ErrorCode::SlowConsumer,
            message: String::new(),
        }),
    }
}

/// How long the server waits for the client's answer to its Close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

fn closed_by(code: ErrorCode, message: &str) -> CloseReason {
    CloseReason {
        code,
        message: message.to_owned(),
    }
}

/// The peer went away: no goodbye to send.
fn closed_by_peer() -> CloseReason {
    CloseReason {
        code: ErrorCode::Unavailable,
        message: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F, A, B, C, D, E, G, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E, G) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every connected session is one task of this size, idle or not, so
    /// work that is not the idle wait is boxed (see `run`). About 1.1 KiB
    /// in a debug build; the bound leaves room for compiler changes.
    #[test]
    fn a_session_task_stays_small() {
        let size = future_size(run);
        assert!(size <= 1536, "the WebSocket session task is {size} bytes");
    }
}

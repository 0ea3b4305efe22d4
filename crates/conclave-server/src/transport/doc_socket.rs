//! The loop every document WebSocket runs (y-websocket, Hocuspocus, JSON):
//! write what the rooms queued, read what the client sends, keep the
//! connection alive, and stop for a room's kick, shutdown, silence, an
//! oversized message or a handler's error. What differs between the
//! protocols is a [`SocketHandler`].

use std::future::Future;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use conclave_core::ErrorCode;

use crate::collab::{CloseCause, SocketInbox, close};
use crate::state::AppState;
use crate::transport::collab::{read_failed, send, too_big};

/// A client's data message.
pub(crate) enum Incoming {
    Binary(Bytes),
    Text(String),
}

/// One protocol's side of a document socket.
pub(crate) trait SocketHandler: Send {
    /// The message to write for a frame the rooms (or the handler) queued;
    /// `None` writes nothing.
    fn outgoing(&mut self, frame: Bytes) -> Option<Message>;

    /// Handles a message from the client; an error closes the socket.
    fn incoming(
        &mut self,
        message: Incoming,
    ) -> impl Future<Output = Result<(), CloseCause>> + Send;

    /// What to send on each heartbeat to show the client the server is
    /// there (a WebSocket ping, or the protocol's own).
    fn heartbeat(&mut self) -> Message {
        Message::Ping(Default::default())
    }
}

/// Runs the socket until it ends; returns why, or `None` when the peer is
/// gone or stopped reading (there is nobody to tell).
pub(crate) async fn drive(
    state: &AppState,
    socket: &mut WebSocket,
    inbox: &mut SocketInbox,
    handler: &mut impl SocketHandler,
) -> Option<CloseCause> {
    let limits = &state.config.limits;
    let update_max = state.config.documents.update_max_bytes as usize;
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
    let mut heartbeat = tokio::time::interval(Duration::from_millis(limits.heartbeat_interval_ms));
    heartbeat.reset();
    let mut last_heard = Instant::now();
    let kicked = inbox.kicked();
    tokio::pin!(kicked);
    let shutdown = state.shutdown.clone();

    loop {
        tokio::select! {
            biased;
            Some(frame) = inbox.outgoing.recv() => {
                let Some(message) = handler.outgoing(frame) else { continue };
                if !send(socket, message, write_timeout).await {
                    return None;
                }
            }
            () = &mut kicked => return inbox.kick_cause(),
            () = shutdown.cancelled() => {
                return Some(CloseCause::new(close::GOING_AWAY, ErrorCode::ShuttingDown, "the server is shutting down; reconnect"));
            }
            message = socket.recv() => {
                last_heard = Instant::now();
                let incoming = match message {
                    Some(Ok(Message::Binary(bytes))) => Incoming::Binary(bytes),
                    Some(Ok(Message::Text(text))) => Incoming::Text(text.as_str().to_owned()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => return None,
                    Some(Err(err)) => return read_failed(err, update_max),
                };
                let len = match &incoming {
                    Incoming::Binary(bytes) => bytes.len(),
                    Incoming::Text(text) => text.len(),
                };
                if len > update_max {
                    return Some(too_big(update_max));
                }
                if let Err(cause) = handler.incoming(incoming).await {
                    return Some(cause);
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    return Some(CloseCause::new(close::NORMAL, ErrorCode::IdleTimeout, "no traffic from the client; closing"));
                }
                if !send(socket, handler.heartbeat(), write_timeout).await {
                    return None;
                }
            }
        }
    }
}

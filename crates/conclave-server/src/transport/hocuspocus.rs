//! The Hocuspocus endpoint, `GET /hocuspocus`: `@hocuspocus/provider`
//! connects here as it is, and may open many documents over one socket.
//!
//! Each document is opened by its own auth message carrying a document
//! token (`doc/token`); the answer is `Authenticated` with the token's scope
//! or `PermissionDenied` with a reason, and a refused document leaves the
//! socket and its other documents alone. Messages for a document that is
//! not open are dropped. Everything the rooms and this task send goes
//! through the socket's one queue, so replies keep their order.
//!
//! A broken message, a message that is too large, or a room that fails
//! closes the whole socket (the provider reconnects and resyncs every
//! document); see `docs/PROTOCOL.md` section 14.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use conclave_core::ErrorCode;
use conclave_docs::Access;
use conclave_docs::hocuspocus::{self, DocumentMessage, Incoming};

use crate::collab::{CloseCause, Dialect, DocConnection, SocketLink, close};
use crate::state::AppState;
use crate::transport::collab::{READ_BUFFER_BYTES, authorize, close_with};
use crate::transport::doc_socket::{Incoming as SocketMessage, SocketHandler, drive};

pub(crate) async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let max = state.config.documents.update_max_bytes as usize;
    let tasks = state.tasks.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| tasks.track_future(run(state, socket)))
}

/// A document this socket has open, by its address.
struct OpenDocument {
    conn: DocConnection,
    prefix: Bytes,
}

async fn run(state: AppState, mut socket: WebSocket) {
    let documents_max = state.config.documents.max_documents_per_socket as usize;
    let write_timeout = Duration::from_millis(state.config.limits.write_timeout_ms);
    let (link, mut inbox) = state.documents.socket(documents_max);
    let mut handler = Hocuspocus {
        state: &state,
        link,
        open: HashMap::new(),
        documents_max,
    };
    let cause = drive(&state, &mut socket, &mut inbox, &mut handler).await;

    for (_, document) in handler.open.drain() {
        state.documents.leave(&*state.storage, document.conn).await;
    }
    if let Some(cause) = &cause {
        close_with(&mut socket, cause, write_timeout).await;
    }
    tracing::debug!(
        code = cause.as_ref().map(|c| c.code),
        reason = cause.as_ref().map(|c| c.message.as_str()),
        "hocuspocus connection closed"
    );
}

/// The Hocuspocus protocol on one socket: the documents it has open, by
/// their address.
struct Hocuspocus<'a> {
    state: &'a AppState,
    link: SocketLink,
    open: HashMap<String, OpenDocument>,
    documents_max: usize,
}

impl SocketHandler for Hocuspocus<'_> {
    fn outgoing(&mut self, frame: Bytes) -> Option<Message> {
        Some(Message::Binary(frame))
    }

    async fn incoming(&mut self, message: SocketMessage) -> Result<(), CloseCause> {
        match message {
            SocketMessage::Binary(bytes) => {
                handle(
                    self.state,
                    &self.link,
                    &mut self.open,
                    self.documents_max,
                    &bytes,
                )
                .await
            }
            SocketMessage::Text(_) => Err(CloseCause::new(
                close::UNSUPPORTED_DATA,
                ErrorCode::InvalidUpdate,
                "Hocuspocus messages are binary",
            )),
        }
    }

    /// The provider reconnects when it hears nothing for 30 s; WebSocket
    /// pings are invisible to it.
    fn heartbeat(&mut self) -> Message {
        Message::Binary(Bytes::from_static(&hocuspocus::PING))
    }
}

/// Handles one message; an error closes the socket.
async fn handle(
    state: &AppState,
    link: &SocketLink,
    open: &mut HashMap<String, OpenDocument>,
    documents_max: usize,
    frame: &[u8],
) -> Result<(), CloseCause> {
    let incoming = hocuspocus::decode(frame).map_err(|err| {
        CloseCause::new(
            close::INVALID_PAYLOAD,
            ErrorCode::InvalidUpdate,
            err.to_string(),
        )
    })?;
    let (address, message) = match incoming {
        Incoming::Ping => {
            link.push(Bytes::from_static(&hocuspocus::PONG));
            return Ok(());
        }
        Incoming::Pong => return Ok(()),
        Incoming::Document { address, message } => (address, message),
    };
    if let DocumentMessage::Auth { token } = message {
        return authenticate(state, link, open, documents_max, address, token).await;
    }
    let Some(document) = open.get(address) else {
        // Not opened (or refused): Hocuspocus drops these too.
        tracing::debug!(address, "message for a document this socket has not opened");
        return Ok(());
    };
    match message {
        DocumentMessage::Room(room_frame) => {
            let dropped = state
                .documents
                .receive(&*state.storage, &document.conn, &room_frame)
                .await?;
            if hocuspocus::carries_update(&room_frame) {
                link.push(hocuspocus::sync_status(&document.prefix, dropped == 0));
            }
        }
        DocumentMessage::Stateless(payload) => {
            state.documents.stateless(&document.conn, payload).await?;
        }
        DocumentMessage::Close => {
            if let Some(document) = open.remove(address) {
                state.documents.leave(&*state.storage, document.conn).await;
            }
        }
        DocumentMessage::Ignored(kind) => {
            tracing::debug!(address, kind, "ignored a hocuspocus message type");
        }
        // Handled above, before the document is looked up.
        DocumentMessage::Auth { .. } => {}
    }
    Ok(())
}

/// Opens a document for this socket, or says why not. A token for a
/// document that is already open renews nothing and is answered again.
async fn authenticate(
    state: &AppState,
    link: &SocketLink,
    open: &mut HashMap<String, OpenDocument>,
    documents_max: usize,
    address: &str,
    token: &str,
) -> Result<(), CloseCause> {
    let prefix = hocuspocus::address(address);
    if open.contains_key(address) {
        // The provider re-sends its token after a reconnect of a shared
        // socket; the document stays open as it was.
        return Ok(());
    }
    if open.len() >= documents_max {
        link.push(hocuspocus::permission_denied(
            &prefix,
            &format!(
                "{}: a connection may open at most {documents_max} documents",
                ErrorCode::LimitExceeded.as_str()
            ),
        ));
        return Ok(());
    }
    let name = Incoming::document_name(address);
    let (document, access) = match authorize(state, name, Some(token)).await {
        Ok(granted) => granted,
        Err(cause) => {
            tracing::debug!(document = name, code = cause.code, reason = %cause.message, "hocuspocus document refused");
            link.push(hocuspocus::permission_denied(&prefix, &denial(&cause)));
            return Ok(());
        }
    };
    // Authenticated goes first: the provider syncs once it has it.
    link.push(hocuspocus::authenticated(
        &prefix,
        access == Access::ReadOnly,
    ));
    let dialect = Dialect::Hocuspocus {
        address: prefix.clone(),
    };
    match state
        .documents
        .join(&*state.storage, &document, access, link, dialect)
        .await
    {
        Ok(conn) => {
            open.insert(address.to_owned(), OpenDocument { conn, prefix });
        }
        Err(cause) => link.push(hocuspocus::permission_denied(&prefix, &denial(&cause))),
    }
    Ok(())
}

/// The permission-denied reason: the error code, then the explanation.
fn denial(cause: &CloseCause) -> String {
    format!("{}: {}", cause.error.as_str(), cause.message)
}

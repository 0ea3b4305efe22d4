//! The collaborative-document WebSocket, `GET /collab/{name}?token=...`:
//! the y-websocket protocol, as stock Yjs providers speak it.
//!
//! The document token (`doc/token`) is checked after the upgrade so that a
//! refusal is a close code a provider understands (4401 unauthorized, 4403
//! forbidden, as Hocuspocus uses them), preceded by the y-protocols
//! permission-denied message. Binary messages go to the document's room
//! (`crate::collab`); what the room sends back is written in order.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use conclave_core::ErrorCode;
use conclave_docs::Access;
use conclave_storage::DocumentRecord;

use crate::collab::{CloseCause, Dialect, DocConnection, close};
use crate::permissions::document_access;
use crate::state::AppState;
use crate::tokens::{self, TokenError};
use crate::transport::bearer_token;
use crate::transport::doc_socket::{Incoming, SocketHandler, drive};

/// Bytes tungstenite reads per syscall: most messages are small
/// keystrokes, and idle editors should cost little memory.
pub(crate) const READ_BUFFER_BYTES: usize = 4 * 1024;

/// How long the server waits for the client's answer to its Close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, serde::Deserialize)]
pub(crate) struct CollabParams {
    token: Option<String>,
}

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<CollabParams>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = params.token.or_else(|| bearer_token(&headers));
    let max = state.config.documents.update_max_bytes as usize;
    let tasks = state.tasks.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| tasks.track_future(run(state, name, token, socket)))
}

async fn run(state: AppState, name: String, token: Option<String>, mut socket: WebSocket) {
    let limits = &state.config.limits;
    let write_timeout = Duration::from_millis(limits.write_timeout_ms);
    let (link, mut inbox) = state.documents.socket(1);
    let opened = match authorize(&state, &name, token.as_deref()).await {
        Ok((document, access)) => {
            state
                .documents
                .join(
                    &*state.storage,
                    &document,
                    access,
                    &link,
                    Dialect::YWebsocket,
                )
                .await
        }
        Err(cause) => Err(cause),
    };
    let conn = match opened {
        Ok(conn) => conn,
        Err(cause) => {
            tracing::debug!(document = %name, code = cause.code, reason = %cause.message, "document connection refused");
            goodbye(&mut socket, &cause, write_timeout).await;
            return;
        }
    };
    tracing::debug!(document = %conn.document, connection = conn.id.0, "document connection open");

    let mut handler = YWebsocket {
        state: &state,
        conn: &conn,
    };
    let cause = drive(&state, &mut socket, &mut inbox, &mut handler).await;

    let (document, id) = (conn.document, conn.id);
    state.documents.leave(&*state.storage, conn).await;
    if let Some(cause) = &cause {
        goodbye(&mut socket, cause, write_timeout).await;
    }
    tracing::debug!(
        document = %document,
        connection = id.0,
        code = cause.as_ref().map(|c| c.code),
        reason = cause.as_ref().map(|c| c.message.as_str()),
        "document connection closed"
    );
}

/// The y-websocket protocol: binary messages go to the room as they are.
struct YWebsocket<'a> {
    state: &'a AppState,
    conn: &'a DocConnection,
}

impl SocketHandler for YWebsocket<'_> {
    fn outgoing(&mut self, frame: Bytes) -> Option<Message> {
        Some(Message::Binary(frame))
    }

    async fn incoming(&mut self, message: Incoming) -> Result<(), CloseCause> {
        match message {
            Incoming::Binary(bytes) => self
                .state
                .documents
                .receive(&*self.state.storage, self.conn, &bytes)
                .await
                .map(|_| ()),
            Incoming::Text(_) => Err(CloseCause::new(
                close::UNSUPPORTED_DATA,
                ErrorCode::InvalidUpdate,
                "y-websocket messages are binary",
            )),
        }
    }
}

/// Checks the token against the document and the user's current rights:
/// the document it opens, and how.
pub(crate) async fn authorize(
    state: &AppState,
    name: &str,
    token: Option<&str>,
) -> Result<(DocumentRecord, Access), CloseCause> {
    let unauthorized =
        |error, message: &str| CloseCause::new(close::UNAUTHORIZED, error, message.to_owned());
    let forbidden = || {
        CloseCause::new(
            close::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("this token does not open document `{name}`"),
        )
    };
    let token = token.ok_or_else(|| {
        unauthorized(
            ErrorCode::Unauthenticated,
            "connect with ?token=<a document token from doc/token>",
        )
    })?;
    let claims =
        tokens::verify_document(state.secrets.token_signing_key(), token, crate::unix_ms())
            .map_err(|err| match err {
                TokenError::Expired => unauthorized(
                    ErrorCode::TokenExpired,
                    "the document token has expired; get a new one",
                ),
                TokenError::Invalid => unauthorized(
                    ErrorCode::Unauthenticated,
                    "the document token is not valid",
                ),
            })?;
    let document = state
        .storage
        .documents()
        .document(claims.document_id)
        .await
        .map_err(lookup_failed)?
        .filter(|document| document.name == name)
        .ok_or_else(forbidden)?;
    // The token may be older than a change of membership or of the
    // user's right to write in the document's channel.
    let allowed = access_now(state, &document, claims.user_id).await?;
    let access = if claims.read_only {
        Access::ReadOnly
    } else {
        allowed
    };
    Ok((document, access))
}

/// What the user may do to the document now, as a refusal to connect if
/// nothing.
async fn access_now(
    state: &AppState,
    document: &DocumentRecord,
    user: conclave_core::UserId,
) -> Result<Access, CloseCause> {
    document_access(state, document, user)
        .await
        .map_err(|err| match err.code {
            ErrorCode::Forbidden => {
                CloseCause::new(close::FORBIDDEN, ErrorCode::Forbidden, err.message)
            }
            _ => CloseCause::new(close::INTERNAL, ErrorCode::Unavailable, "reconnect"),
        })
}

/// Like [`authorize`], for endpoints that also take an account's access
/// token (`ca1.`: read-write on every document the user may open) where a
/// document token (`cd1.`: that document, with its scope) is not handy.
pub(crate) async fn authorize_any(
    state: &AppState,
    name: &str,
    token: Option<&str>,
) -> Result<(DocumentRecord, Access), CloseCause> {
    let Some(access_token) = token.filter(|token| tokens::is_access_token(token)) else {
        return authorize(state, name, token).await;
    };
    let caller = crate::rpc::authenticate(state, access_token, crate::unix_ms() / 1000)
        .await
        .map_err(|err| match err.code {
            ErrorCode::Unavailable | ErrorCode::Internal => {
                CloseCause::new(close::INTERNAL, ErrorCode::Unavailable, "reconnect")
            }
            code => CloseCause::new(close::UNAUTHORIZED, code, err.message),
        })?;
    let document = state
        .storage
        .documents()
        .document_by_name(name)
        .await
        .map_err(lookup_failed)?
        .ok_or_else(|| {
            CloseCause::new(
                close::FORBIDDEN,
                ErrorCode::NotFound,
                format!("there is no document `{name}`"),
            )
        })?;
    let access = access_now(state, &document, caller.user_id).await?;
    Ok((document, access))
}

fn lookup_failed(err: conclave_storage::StorageError) -> CloseCause {
    tracing::warn!(error = %err, "looking up a document failed");
    CloseCause::new(
        close::INTERNAL,
        ErrorCode::Unavailable,
        "the database is unavailable; reconnect",
    )
}

pub(crate) fn too_big(max: usize) -> CloseCause {
    CloseCause::new(
        close::TOO_BIG,
        ErrorCode::PayloadTooLarge,
        format!("a message may not exceed {max} bytes"),
    )
}

/// A read error is the end of the connection; only an oversized message
/// is worth explaining.
pub(crate) fn read_failed(err: axum::Error, max: usize) -> Option<CloseCause> {
    let inner = err.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some(too_big(max)),
        _ => {
            tracing::debug!(error = %inner, "document connection read failed");
            None
        }
    }
}

/// Tells the client why it is being closed, then closes.
async fn goodbye(socket: &mut WebSocket, cause: &CloseCause, write_timeout: Duration) {
    if matches!(cause.code, close::UNAUTHORIZED | close::FORBIDDEN) {
        // y-websocket logs this reason; providers that implement auth act
        // on it.
        let denied = conclave_docs::message::auth_denied(&cause.message);
        if !send(socket, Message::Binary(denied.into()), write_timeout).await {
            return;
        }
    }
    close_with(socket, cause, write_timeout).await;
}

/// Sends the Close frame for `cause` and waits briefly for the answer.
pub(crate) async fn close_with(
    socket: &mut WebSocket,
    cause: &CloseCause,
    write_timeout: Duration,
) {
    let close = Message::Close(Some(CloseFrame {
        code: cause.code,
        reason: Utf8Bytes::from(cause.error.as_str()),
    }));
    if !send(socket, close, write_timeout).await {
        return;
    }
    // Let the client answer the Close before the socket drops, so it sees
    // the code rather than a reset.
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Whether the write went through in time.
pub(crate) async fn send(socket: &mut WebSocket, message: Message, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, socket.send(message)).await,
        Ok(Ok(()))
    )
}

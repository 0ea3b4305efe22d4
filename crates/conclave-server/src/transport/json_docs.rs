//! The JSON document protocol, `GET /ws?token=...`: Yjs documents for
//! clients that would rather not speak lib0, one JSON text message each
//! way, updates and state vectors as base64 of the v1 encoding.
//!
//! ```text
//! → {"doc_id": "pad", "type": "sync", "update": "<state vector>"?}
//! ← {"type": "sync", "doc_id": "pad", "update": "<what the client lacks>", "state_vector": "<server's>"}
//! → {"doc_id": "pad", "type": "sv", "update": "<state vector>"}      (the same, the vector required)
//! → {"doc_id": "pad", "type": "update", "update": "<update>"}
//! ← {"type": "update", "doc_id": "pad", "update": "<another client's update>"}
//! → {"doc_id": "pad", "type": "awareness", "update": "<awareness update>"}
//! ← {"type": "awareness", "doc_id": "pad", "update": "<awareness update>"}
//! ← {"type": "error", "doc_id": "pad"?, "code": "<error code>", "message": "..."}
//! ```
//!
//! A socket may use several documents; each is opened by the first message
//! naming it, with the socket's token (an access token, or a document
//! token for that document). The documents are the same rooms y-websocket
//! and Hocuspocus clients edit. A request that cannot be served is answered
//! with an error message and the socket stays open; a failing document or
//! a message over `documents.update_max_bytes` closes it.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use conclave_core::ErrorCode;
use conclave_docs::hocuspocus;
use conclave_docs::message::{self as ymessage, Message as YMessage};
use serde::{Deserialize, Serialize};

use crate::collab::{CloseCause, Dialect, DocConnection, SocketLink};
use crate::state::AppState;
use crate::transport::bearer_token;
use crate::transport::collab::{READ_BUFFER_BYTES, authorize_any, close_with};
use crate::transport::doc_socket::{Incoming as SocketMessage, SocketHandler, drive};

#[derive(Debug, Deserialize)]
pub(crate) struct JsonParams {
    token: Option<String>,
}

pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Query(params): Query<JsonParams>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = params.token.or_else(|| bearer_token(&headers));
    let max = state.config.documents.update_max_bytes as usize;
    let tasks = state.tasks.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| tasks.track_future(run(state, token, socket)))
}

/// A message from the client.
#[derive(Debug, Deserialize)]
struct Request {
    doc_id: String,
    #[serde(rename = "type")]
    kind: String,
    /// Base64: a state vector for `sync`/`sv`, an update for `update`, an
    /// awareness update for `awareness`.
    #[serde(default)]
    update: Option<String>,
}

/// A message to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply<'a> {
    Sync {
        doc_id: &'a str,
        update: String,
        state_vector: String,
    },
    Update {
        doc_id: &'a str,
        update: String,
    },
    Awareness {
        doc_id: &'a str,
        update: String,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        doc_id: Option<&'a str>,
        code: &'static str,
        message: String,
    },
}

impl Reply<'_> {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// An error for the socket's queue, behind the empty address, which no
    /// document has (names are 1 to 128 bytes), so the writer tells it from
    /// the rooms' frames.
    fn error(doc_id: Option<&str>, code: ErrorCode, message: impl Into<String>) -> Bytes {
        let reply = Reply::Error {
            doc_id,
            code: code.as_str(),
            message: message.into(),
        };
        hocuspocus::addressed(&hocuspocus::address(OWN_ADDRESS), &reply.json())
    }
}

/// The address of the socket's own messages in its queue.
const OWN_ADDRESS: &str = "";

/// A document this socket has open.
struct OpenDocument {
    conn: DocConnection,
    /// The sync step 2 the room answered a `sync` with; the server's sync
    /// step 1 right behind it completes the reply.
    pending_sync: Option<Vec<u8>>,
    /// The room's greeting step 1 comes before any answer and is not one.
    greeted: bool,
}

async fn run(state: AppState, token: Option<String>, mut socket: WebSocket) {
    let documents_max = state.config.documents.max_documents_per_socket as usize;
    let write_timeout = Duration::from_millis(state.config.limits.write_timeout_ms);
    let (link, mut inbox) = state.documents.socket(documents_max);
    let mut handler = Json {
        state: &state,
        link,
        open: HashMap::new(),
        documents_max,
        token,
    };
    let cause = drive(&state, &mut socket, &mut inbox, &mut handler).await;
    let mut open = handler.open;

    for (_, document) in open.drain() {
        state.documents.leave(&*state.storage, document.conn).await;
    }
    if let Some(cause) = &cause {
        close_with(&mut socket, cause, write_timeout).await;
    }
}

/// The JSON protocol on one socket: the documents it has open.
struct Json<'a> {
    state: &'a AppState,
    link: SocketLink,
    open: HashMap<String, OpenDocument>,
    documents_max: usize,
    token: Option<String>,
}

impl SocketHandler for Json<'_> {
    fn outgoing(&mut self, frame: Bytes) -> Option<Message> {
        translate(&mut self.open, &frame).map(Message::Text)
    }

    async fn incoming(&mut self, message: SocketMessage) -> Result<(), CloseCause> {
        match message {
            SocketMessage::Text(text) => {
                handle(
                    self.state,
                    &self.link,
                    &mut self.open,
                    self.documents_max,
                    self.token.as_deref(),
                    &text,
                )
                .await
            }
            SocketMessage::Binary(_) => {
                self.link.push(Reply::error(
                    None,
                    ErrorCode::BadRequest,
                    "messages are JSON text",
                ));
                Ok(())
            }
        }
    }
}

/// Handles one request. Errors the client can fix are answered; an error
/// returned closes the socket.
async fn handle(
    state: &AppState,
    link: &SocketLink,
    open: &mut HashMap<String, OpenDocument>,
    documents_max: usize,
    token: Option<&str>,
    text: &str,
) -> Result<(), CloseCause> {
    let request: Request = match serde_json::from_str(text) {
        Ok(request) => request,
        Err(err) => {
            link.push(Reply::error(
                None,
                ErrorCode::InvalidJson,
                format!("expected {{\"doc_id\", \"type\", \"update\"?}}: {err}"),
            ));
            return Ok(());
        }
    };
    let doc_id = request.doc_id.as_str();
    let bytes = match request.update.as_deref().map(|b64| BASE64.decode(b64)) {
        None => None,
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(_)) => {
            link.push(Reply::error(
                Some(doc_id),
                ErrorCode::BadRequest,
                "`update` is not standard base64",
            ));
            return Ok(());
        }
    };
    let room_frame = match (request.kind.as_str(), bytes) {
        ("sync", None) => ymessage::sync_step1(&[0]),
        ("sync" | "sv", Some(state_vector)) => ymessage::sync_step1(&state_vector),
        ("update", Some(update)) => ymessage::update(&update),
        ("awareness", Some(update)) => ymessage::awareness(&update),
        ("sv" | "update" | "awareness", None) => {
            link.push(Reply::error(
                Some(doc_id),
                ErrorCode::BadRequest,
                format!("`{}` needs `update` (base64)", request.kind),
            ));
            return Ok(());
        }
        (other, _) => {
            link.push(Reply::error(
                Some(doc_id),
                ErrorCode::BadRequest,
                format!("unknown type `{other}`; expected sync, sv, update or awareness"),
            ));
            return Ok(());
        }
    };
    if !open.contains_key(doc_id) {
        if open.len() >= documents_max {
            link.push(Reply::error(
                Some(doc_id),
                ErrorCode::LimitExceeded,
                format!("a connection may open at most {documents_max} documents"),
            ));
            return Ok(());
        }
        let joined = match authorize_any(state, doc_id, token).await {
            Ok((document, access)) => {
                let address = hocuspocus::address(doc_id);
                state
                    .documents
                    .join(
                        &*state.storage,
                        &document,
                        access,
                        link,
                        Dialect::Addressed { address },
                    )
                    .await
            }
            Err(cause) => Err(cause),
        };
        match joined {
            Ok(conn) => {
                open.insert(
                    doc_id.to_owned(),
                    OpenDocument {
                        conn,
                        pending_sync: None,
                        greeted: false,
                    },
                );
            }
            Err(cause) => {
                link.push(Reply::error(Some(doc_id), cause.error, cause.message));
                return Ok(());
            }
        }
    }
    let Some(document) = open.get(doc_id) else {
        return Ok(());
    };
    match state
        .documents
        .receive(&*state.storage, &document.conn, &room_frame)
        .await
    {
        Ok(0) => Ok(()),
        Ok(_) => {
            link.push(Reply::error(
                Some(doc_id),
                ErrorCode::Forbidden,
                "this token is read-only; the update was dropped",
            ));
            Ok(())
        }
        // The document is full; it stays readable.
        Err(cause) if cause.error == ErrorCode::LimitExceeded => {
            link.push(Reply::error(Some(doc_id), cause.error, cause.message));
            Ok(())
        }
        // The update is refused; the room and the socket carry on.
        Err(cause) if cause.error == ErrorCode::InvalidUpdate => {
            leave_after_error(state, open, doc_id).await;
            link.push(Reply::error(Some(doc_id), cause.error, cause.message));
            Ok(())
        }
        Err(cause) => Err(cause),
    }
}

/// A connection that sent a broken update is out of its room (the room
/// treats it as a protocol error); the next message opens it again.
async fn leave_after_error(state: &AppState, open: &mut HashMap<String, OpenDocument>, doc: &str) {
    if let Some(document) = open.remove(doc) {
        state.documents.leave(&*state.storage, document.conn).await;
    }
}

/// Turns a room frame into the JSON the client reads, or nothing.
fn translate(open: &mut HashMap<String, OpenDocument>, frame: &[u8]) -> Option<Utf8Bytes> {
    let (doc_id, room_frame) = hocuspocus::split_address(frame).ok()?;
    if doc_id == OWN_ADDRESS {
        return Utf8Bytes::try_from(room_frame.to_vec()).ok();
    }
    let document = open.get_mut(doc_id)?;
    let mut replies = Vec::new();
    for message in ymessage::decode_frame(room_frame).ok()? {
        match message {
            YMessage::SyncStep2(update) => document.pending_sync = Some(update.to_vec()),
            YMessage::SyncStep1(state_vector) => {
                if !document.greeted {
                    document.greeted = true;
                    continue;
                }
                if let Some(update) = document.pending_sync.take() {
                    replies.push(Reply::Sync {
                        doc_id,
                        update: BASE64.encode(update),
                        state_vector: BASE64.encode(state_vector),
                    });
                }
            }
            YMessage::Update(update) => replies.push(Reply::Update {
                doc_id,
                update: BASE64.encode(update),
            }),
            YMessage::Awareness(update) => replies.push(Reply::Awareness {
                doc_id,
                update: BASE64.encode(update),
            }),
            YMessage::AuthDenied(_) | YMessage::QueryAwareness | YMessage::Unknown(_) => {}
        }
    }
    // The room sends one message per frame.
    let reply = replies.into_iter().next()?;
    Utf8Bytes::try_from(reply.json()).ok()
}

//! One `Collaborate` call: a task that reads the client's messages, the
//! frames its documents' rooms send it, and its sessions' clocks, and
//! writes one ordered queue of `ServerMessage`s back.
//!
//! Each document the stream joins is one connection to the document's room
//! (addressed by the document's name on the stream's one room queue), so
//! updates are applied, stored and relayed exactly as for y-websocket and
//! Hocuspocus clients. One client id per document per stream: a session is
//! `(document, client_id)`.
//!
//! Errors about one message are `ErrorMessage`s and the stream goes on:
//! a malformed update or state vector is refused whole by the room, which
//! keeps nothing of it. The stream ends (with a status) only when the
//! client stops reading (`slow_consumer`), a room it is in fails, a
//! message is larger than `documents.update_max_bytes`, or the server
//! shuts down; its sessions then leave.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_core::ErrorCode;
use conclave_docs::message::{self, Message};
use conclave_docs::{Access, awareness, hocuspocus};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::proto::client_message::MessageType as ClientKind;
use super::proto::server_message::MessageType as ServerKind;
use super::proto::{
    ActiveUser, AwarenessUpdate, ClientMessage, DocumentState, ErrorMessage, JoinDocument,
    SyncResponse, UpdateMessage,
};
use super::sessions::{Outbox, Outgoing, Sessions, message, next_stream_id};
use super::{Principal, document_state, error_type, status_of};
use crate::collab::{CloseCause, Dialect, DocConnection, SocketInbox, SocketLink};
use crate::state::AppState;
use crate::transport::collab::authorize_any;

/// The outbox holds at least this many messages, whatever
/// `limits.session_send_queue_frames` says: a join answers with a state and
/// a burst of awareness states.
const OUTBOX_MIN: usize = 64;

/// How often a stream looks for sessions that timed out: a quarter of the
/// timeout, within these bounds.
const SWEEP_MIN: Duration = Duration::from_millis(100);
const SWEEP_MAX: Duration = Duration::from_secs(1);

/// Starts serving a call; the returned stream is what the client reads.
pub(super) fn start(
    state: AppState,
    sessions: Arc<Sessions>,
    principal: Principal,
    inbound: Streaming<ClientMessage>,
) -> ReceiverStream<Outgoing> {
    let capacity = (state.config.limits.session_send_queue_frames as usize).max(OUTBOX_MIN);
    let (outbox, receiver) = Outbox::new(capacity);
    let documents_max = state.config.documents.max_documents_per_socket as usize;
    let (link, inbox) = state.documents.socket(documents_max);
    let driver = Driver {
        id: next_stream_id(),
        timeout: Duration::from_secs(state.config.documents.grpc_session_timeout_secs),
        update_max: state.config.documents.update_max_bytes as usize,
        documents_max,
        state: state.clone(),
        sessions,
        principal,
        outbox,
        link,
        open: HashMap::new(),
        sequence: 0,
    };
    state.tasks.spawn(driver.run(inbound, inbox));
    ReceiverStream::new(receiver)
}

/// A document this stream has joined, by name.
struct Joined {
    conn: DocConnection,
    client_id: String,
    access: Access,
    last_heard: Instant,
    /// The document's creation time: its `last_modified` until this node
    /// sees it change.
    created_at_ms: i64,
}

struct Driver {
    id: u64,
    state: AppState,
    sessions: Arc<Sessions>,
    principal: Principal,
    outbox: Outbox,
    link: SocketLink,
    open: HashMap<String, Joined>,
    /// The last `UpdateMessage.sequence_number` sent.
    sequence: i64,
    timeout: Duration,
    update_max: usize,
    documents_max: usize,
}

impl Driver {
    async fn run(mut self, mut inbound: Streaming<ClientMessage>, mut inbox: SocketInbox) {
        tracing::debug!(stream = self.id, user = %self.principal.user_id, "gRPC collaboration stream open");
        let kicked = inbox.kicked();
        tokio::pin!(kicked);
        let overflowed = self.outbox.overflowed();
        tokio::pin!(overflowed);
        let shutdown = self.state.shutdown.clone();
        let mut sweep = tokio::time::interval((self.timeout / 4).clamp(SWEEP_MIN, SWEEP_MAX));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let end: Option<Status> = loop {
            tokio::select! {
                biased;
                Some(frame) = inbox.outgoing.recv() => self.relay_from_room(&frame),
                () = &mut kicked => {
                    break Some(inbox.kick_cause().map_or_else(
                        || Status::unavailable("unavailable: a document failed; join again"),
                        |cause| status_of(&cause),
                    ));
                }
                () = &mut overflowed => {
                    break Some(Status::resource_exhausted(
                        "slow_consumer: the client fell behind its documents; join again",
                    ));
                }
                () = shutdown.cancelled() => {
                    break Some(Status::unavailable("shutting_down: the server is shutting down; reconnect"));
                }
                received = inbound.message() => match received {
                    Ok(Some(received)) => self.handle(received).await,
                    // The client closed its side: it leaves everything.
                    Ok(None) => break None,
                    Err(status) => break self.read_failed(status),
                },
                _ = sweep.tick() => self.expire().await,
            }
        };

        let names: Vec<String> = self.open.keys().cloned().collect();
        for name in names {
            self.leave(&name).await;
        }
        if let Some(status) = &end {
            let write_timeout = Duration::from_millis(self.state.config.limits.write_timeout_ms);
            self.outbox.finish(status.clone(), write_timeout).await;
        }
        tracing::debug!(
            stream = self.id,
            status = end.as_ref().map(|s| s.message()),
            "gRPC collaboration stream closed"
        );
    }

    /// Why reading failed, for the client if it is still there.
    fn read_failed(&self, status: Status) -> Option<Status> {
        match status.code() {
            // tonic's word for a message over the decoding limit.
            Code::OutOfRange => Some(Status::resource_exhausted(format!(
                "payload_too_large: a message may not exceed {} bytes",
                self.update_max
            ))),
            Code::Cancelled | Code::Unknown => None,
            _ => {
                tracing::debug!(stream = self.id, error = %status, "gRPC stream read failed");
                Some(status)
            }
        }
    }

    /// Handles one message from the client.
    async fn handle(&mut self, received: ClientMessage) {
        let ClientMessage {
            client_id,
            document_id: name,
            message_type,
            ..
        } = received;
        let Some(kind) = message_type else {
            self.error(
                &name,
                ErrorCode::BadRequest,
                "a message needs one of its message types",
            );
            return;
        };
        match kind {
            ClientKind::JoinDocument(join) => self.join(&name, &client_id, join).await,
            ClientKind::Heartbeat(_) if name.is_empty() => {
                // Renews every session of this client on the stream.
                let now = Instant::now();
                for joined in self.open.values_mut() {
                    if client_id.is_empty() || joined.client_id == client_id {
                        joined.last_heard = now;
                        self.sessions.touch(joined.conn.document, &joined.client_id);
                    }
                }
            }
            kind => {
                let Some(joined) = self
                    .open
                    .get_mut(&name)
                    .filter(|joined| joined.client_id == client_id)
                else {
                    self.error(
                        &name,
                        ErrorCode::BadRequest,
                        &format!(
                            "client `{client_id}` has not joined document `{name}` on this stream; \
                             send JoinDocument first"
                        ),
                    );
                    return;
                };
                joined.last_heard = Instant::now();
                let document = joined.conn.document;
                self.sessions.touch(document, &client_id);
                match kind {
                    ClientKind::SyncRequest(request) => {
                        // The room answers with sync step 2 (what the client
                        // lacks) in order with the updates it relays.
                        let state_vector: &[u8] = if request.state_vector.is_empty() {
                            &[0]
                        } else {
                            &request.state_vector
                        };
                        self.send_to_room(&name, &message::sync_step1(state_vector))
                            .await;
                    }
                    ClientKind::Update(update) => self.update(&name, update).await,
                    ClientKind::Awareness(update) => self.awareness(&name, update),
                    ClientKind::LeaveDocument(_) => self.leave(&name).await,
                    ClientKind::Heartbeat(_) => {}
                    // Handled above.
                    ClientKind::JoinDocument(_) => {}
                }
            }
        }
    }

    /// Joins a document: authorization, the session, the room; then the
    /// client gets the document's state and the others hear of it.
    async fn join(&mut self, name: &str, client_id: &str, join: JoinDocument) {
        if client_id.is_empty() {
            self.error(
                name,
                ErrorCode::BadRequest,
                "JoinDocument needs a client_id",
            );
            return;
        }
        let user = ActiveUser {
            // Who the token says, whatever the message claims.
            user_id: self.principal.user_id.to_string(),
            user_name: join.user_name,
            user_color: join.user_color,
            client_id: client_id.to_owned(),
            last_seen: crate::unix_ms(),
            user_metadata: join.user_metadata,
        };
        if let Some(joined) = self.open.get_mut(name) {
            if joined.client_id != client_id {
                let message = format!(
                    "this stream joined document `{name}` as client `{}`; a stream joins a \
                     document once",
                    joined.client_id
                );
                self.error(name, ErrorCode::Conflict, &message);
                return;
            }
            // Joining again renews the session and resends the state.
            joined.last_heard = Instant::now();
            let (document, created_at_ms) = (joined.conn.document, joined.created_at_ms);
            self.sessions.update_user(document, self.id, user);
            self.send_state(name, document, created_at_ms).await;
            return;
        }
        if self.open.len() >= self.documents_max {
            let message = format!("a stream may join at most {} documents", self.documents_max);
            self.error(name, ErrorCode::LimitExceeded, &message);
            return;
        }
        let (document, access) = match authorize_any(&self.state, name, Some(&self.principal.token))
            .await
        {
            Ok(granted) => granted,
            Err(cause) => {
                tracing::debug!(stream = self.id, document = name, reason = %cause.message, "gRPC join refused");
                self.refused(name, &cause);
                return;
            }
        };
        if self
            .sessions
            .reserve(document.id, user, self.id, self.outbox.clone())
            .is_err()
        {
            let message = format!(
                "client `{client_id}` is already on document `{name}` on another stream; use \
                 another client_id, or wait for that session to end"
            );
            self.error(name, ErrorCode::Conflict, &message);
            return;
        }
        let dialect = Dialect::Addressed {
            address: hocuspocus::address(name),
        };
        let conn = match self
            .state
            .documents
            .join(&*self.state.storage, &document, access, &self.link, dialect)
            .await
        {
            Ok(conn) => conn,
            Err(cause) => {
                self.sessions
                    .remove(document.id, name, client_id, self.id, false);
                self.refused(name, &cause);
                return;
            }
        };
        self.open.insert(
            name.to_owned(),
            Joined {
                conn,
                client_id: client_id.to_owned(),
                access,
                last_heard: Instant::now(),
                created_at_ms: document.created_at_ms,
            },
        );
        self.send_state(name, document.id, document.created_at_ms)
            .await;
        self.sessions
            .announce(document.id, name, client_id, self.id);
        tracing::debug!(
            stream = self.id,
            document = name,
            client = client_id,
            "gRPC session joined"
        );
    }

    /// Sends the joined document's `DocumentState`. Read after the join, so
    /// it holds at least everything the room relays to this stream later
    /// (an update in both is harmless: Yjs applies it once).
    async fn send_state(
        &mut self,
        name: &str,
        document: conclave_core::DocumentId,
        created_at_ms: i64,
    ) {
        match document_state(&self.state, document).await {
            Ok((state_vector, document_data)) => {
                let state = DocumentState {
                    state_vector: state_vector.into(),
                    document_data: document_data.into(),
                    active_users: self.sessions.active_users(document),
                    last_modified: self
                        .sessions
                        .last_modified(document)
                        .unwrap_or(created_at_ms),
                };
                self.outbox
                    .push(message(name, ServerKind::DocumentState(state)));
            }
            Err(cause) => self.refused(name, &cause),
        }
    }

    /// Applies the client's update through the room: stored, then relayed
    /// to every other connection of the document, whatever its protocol.
    async fn update(&mut self, name: &str, update: UpdateMessage) {
        let Some(joined) = self.open.get(name) else {
            return;
        };
        let (document, read_only) = (joined.conn.document, joined.access == Access::ReadOnly);
        if !read_only {
            // Before the room relays it: the others name its origin.
            self.sessions
                .note_author(document, &joined.client_id, &update.update_data);
        }
        match self
            .send_to_room(name, &message::update(&update.update_data))
            .await
        {
            Some(0) => self.sessions.modified(document),
            Some(_) => self.error(
                name,
                ErrorCode::Forbidden,
                "this session is read-only: the update was dropped",
            ),
            // Refused; the client was told why.
            None => {}
        }
    }

    /// Relays a gRPC awareness update to the document's other gRPC
    /// sessions, as sent but for the sender's client id.
    fn awareness(&mut self, name: &str, update: AwarenessUpdate) {
        let Some(joined) = self.open.get(name) else {
            return;
        };
        let is_json = |text: &str| {
            text.is_empty() || serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
        };
        if !is_json(&update.user_info) || !is_json(&update.awareness_state) {
            self.error(
                name,
                ErrorCode::InvalidUpdate,
                "user_info and awareness_state must be JSON",
            );
            return;
        }
        let relayed = AwarenessUpdate {
            client_id: joined.client_id.clone(),
            timestamp: if update.timestamp == 0 {
                crate::unix_ms()
            } else {
                update.timestamp
            },
            ..update
        };
        self.sessions.relay(
            joined.conn.document,
            self.id,
            &message(name, ServerKind::Awareness(relayed)),
        );
    }

    /// Hands a y-websocket frame to the document's room. `Some(dropped)`
    /// when it was taken (`dropped`: updates refused as read-only); `None`
    /// when it was refused, which the client has been told.
    async fn send_to_room(&mut self, name: &str, frame: &[u8]) -> Option<usize> {
        let joined = self.open.get(name)?;
        match self
            .state
            .documents
            .receive(&*self.state.storage, &joined.conn, frame)
            .await
        {
            Ok(dropped) => Some(dropped),
            Err(cause) => {
                // A malformed frame changed nothing and the session goes
                // on; a failed room also closes the stream (its kick).
                self.refused(name, &cause);
                None
            }
        }
    }

    /// Translates what a room sent this stream.
    fn relay_from_room(&mut self, frame: &Bytes) {
        let Ok((name, body)) = hocuspocus::split_address(frame) else {
            return;
        };
        // Frames queued before the stream left the document are dropped.
        let Some(joined) = self.open.get(name) else {
            return;
        };
        let document = joined.conn.document;
        let Ok(messages) = message::decode_frame(body) else {
            tracing::warn!(
                stream = self.id,
                document = name,
                "a room sent a frame that does not decode"
            );
            return;
        };
        for decoded in messages {
            let kind = match decoded {
                Message::Update(update) => {
                    self.sequence += 1;
                    self.sessions.modified(document);
                    ServerKind::Update(UpdateMessage {
                        update_data: frame.slice_ref(update),
                        origin_client_id: self.sessions.origin(document, update),
                        sequence_number: self.sequence,
                    })
                }
                // Only ever the answer to this stream's SyncRequest.
                Message::SyncStep2(update) => ServerKind::SyncResponse(SyncResponse {
                    update_data: frame.slice_ref(update),
                }),
                Message::Awareness(bytes) => {
                    for entry in awareness::decode_update(bytes).unwrap_or_default() {
                        let state = entry.state.as_deref().unwrap_or("null");
                        let update = AwarenessUpdate {
                            client_id: entry.client_id.to_string(),
                            user_info: user_info(state),
                            awareness_state: state.to_owned(),
                            timestamp: crate::unix_ms(),
                        };
                        self.outbox
                            .push(message(name, ServerKind::Awareness(update)));
                    }
                    continue;
                }
                // The room's own sync step 1 (its greeting, and after each
                // answer) is already in DocumentState / SyncResponse.
                _ => continue,
            };
            self.outbox.push(message(name, kind));
        }
    }

    /// Removes the sessions nobody heard from within the timeout.
    async fn expire(&mut self) {
        let expired: Vec<String> = self
            .open
            .iter()
            .filter(|(_, joined)| joined.last_heard.elapsed() >= self.timeout)
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            let message = format!(
                "nothing heard from this session for {} s: it left the document; join again",
                self.timeout.as_secs()
            );
            self.error(&name, ErrorCode::IdleTimeout, &message);
            self.leave(&name).await;
        }
    }

    /// Leaves a document: the others hear of it, the room forgets the
    /// connection.
    async fn leave(&mut self, name: &str) {
        let Some(joined) = self.open.remove(name) else {
            return;
        };
        self.sessions
            .remove(joined.conn.document, name, &joined.client_id, self.id, true);
        self.state
            .documents
            .leave(&*self.state.storage, joined.conn)
            .await;
        tracing::debug!(stream = self.id, document = name, client = %joined.client_id, "gRPC session left");
    }

    /// Tells the client about a refusal from authorization or a room.
    fn refused(&self, name: &str, cause: &CloseCause) {
        self.error(name, cause.error, &cause.message);
    }

    fn error(&self, name: &str, code: ErrorCode, text: &str) {
        let error = ErrorMessage {
            error_code: i32::from(code.http_status()),
            error_message: format!("{}: {text}", code.as_str()),
            error_type: error_type(code).into(),
        };
        self.outbox.push(message(name, ServerKind::Error(error)));
    }
}

/// The `user` field of a y-protocols awareness state (where Yjs editors
/// put the user's name and color), as JSON; "" without one.
fn user_info(state: &str) -> String {
    serde_json::from_str::<serde_json::Value>(state)
        .ok()
        .and_then(|value| value.get("user").cloned())
        .map(|user| user.to_string())
        .unwrap_or_default()
}

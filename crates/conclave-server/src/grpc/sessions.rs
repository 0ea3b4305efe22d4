//! The gRPC sessions of this node: who is on which document, and how to
//! reach their streams.
//!
//! A session is `(document, client_id)`, held by one `Collaborate` stream.
//! The registry answers `GetActiveUsers`, fills `DocumentState`'s active
//! users, and carries what gRPC sessions tell each other (joins, leaves,
//! awareness) to the other streams on the document. Document updates do not
//! go through here: they travel through the rooms, like every protocol's.
//!
//! Every message to another stream is queued without waiting on that
//! stream's bounded outbox; a stream whose outbox is full is not reading,
//! and is ended (`slow_consumer`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use conclave_core::DocumentId;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;
use yrs::updates::decoder::Decode as _;

use super::proto::server_message::MessageType;
use super::proto::{ActiveUser, ServerMessage, UserJoined, UserLeft};

/// What a stream sends its client: messages, or the status that ends it.
pub(super) type Outgoing = Result<ServerMessage, Status>;

/// Yjs client ids remembered per document to name the gRPC session an
/// update came from. Past this the table starts over: an update whose
/// author was forgotten is named by its Yjs client id instead.
const AUTHORS_PER_DOCUMENT_MAX: usize = 4096;

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// A new `Collaborate` stream's number, unique in this process.
pub(super) fn next_stream_id() -> u64 {
    NEXT_STREAM.fetch_add(1, Ordering::Relaxed)
}

/// A stream's queue to its client, bounded. A full queue means the client
/// does not read: the stream ends (`overflowed`), and the client resyncs
/// when it joins again.
#[derive(Clone)]
pub(super) struct Outbox {
    queue: mpsc::Sender<Outgoing>,
    overflow: CancellationToken,
}

impl Outbox {
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<Outgoing>) {
        let (queue, receiver) = mpsc::channel(capacity);
        (
            Self {
                queue,
                overflow: CancellationToken::new(),
            },
            receiver,
        )
    }

    /// Queues a message behind the others, never waiting.
    pub(super) fn push(&self, message: ServerMessage) {
        match self.queue.try_send(Ok(message)) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.overflow.cancel(),
        }
    }

    /// Resolves when a message did not fit.
    pub(super) fn overflowed(&self) -> WaitForCancellationFutureOwned {
        self.overflow.clone().cancelled_owned()
    }

    /// Ends the call with `status`, waiting up to `timeout` for room.
    pub(super) async fn finish(&self, status: Status, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.queue.send(Err(status))).await;
    }
}

/// A server message about `document` (by name), stamped now.
pub(super) fn message(document: &str, kind: MessageType) -> ServerMessage {
    ServerMessage {
        document_id: document.to_owned(),
        timestamp: crate::unix_ms(),
        message_type: Some(kind),
    }
}

#[derive(Default)]
pub(super) struct Sessions {
    documents: Mutex<HashMap<DocumentId, Document>>,
}

#[derive(Default)]
struct Document {
    sessions: HashMap<String, Session>,
    /// Yjs client id -> the gRPC client id whose updates carried it.
    authors: HashMap<u64, String>,
    /// When this node last saw the document change while a gRPC session
    /// was on it (Unix ms).
    last_modified_ms: Option<i64>,
}

struct Session {
    stream: u64,
    user: ActiveUser,
    outbox: Outbox,
}

/// Why a session could not be registered.
#[derive(Debug)]
pub(super) struct Taken;

impl Sessions {
    /// Registers `user` (its `client_id`) on `document` for `stream`,
    /// telling nobody yet ([`Sessions::announce`] does). A session of the
    /// same key on another stream is [`Taken`].
    pub(super) fn reserve(
        &self,
        document: DocumentId,
        user: ActiveUser,
        stream: u64,
        outbox: Outbox,
    ) -> Result<(), Taken> {
        let mut documents = lock(&self.documents);
        let entry = documents.entry(document).or_default();
        if entry.sessions.contains_key(&user.client_id) {
            return Err(Taken);
        }
        entry.sessions.insert(
            user.client_id.clone(),
            Session {
                stream,
                user,
                outbox,
            },
        );
        Ok(())
    }

    /// Replaces what a session says about its user (a repeated
    /// `JoinDocument`) and renews it.
    pub(super) fn update_user(&self, document: DocumentId, stream: u64, user: ActiveUser) {
        let mut documents = lock(&self.documents);
        if let Some(session) = documents
            .get_mut(&document)
            .and_then(|entry| entry.sessions.get_mut(&user.client_id))
            .filter(|session| session.stream == stream)
        {
            session.user = user;
        }
    }

    /// Tells the document's sessions on other streams that `client_id`
    /// joined.
    pub(super) fn announce(&self, document: DocumentId, name: &str, client_id: &str, stream: u64) {
        let documents = lock(&self.documents);
        let Some(entry) = documents.get(&document) else {
            return;
        };
        let Some(joined) = entry.sessions.get(client_id) else {
            return;
        };
        let user = &joined.user;
        let message = message(
            name,
            MessageType::UserJoined(UserJoined {
                user_id: user.user_id.clone(),
                user_name: user.user_name.clone(),
                user_color: user.user_color.clone(),
                client_id: user.client_id.clone(),
                user_metadata: user.user_metadata.clone(),
            }),
        );
        relay(entry, stream, &message);
    }

    /// Removes `stream`'s session `client_id`; with `announce`, the
    /// document's sessions on other streams hear that it left.
    pub(super) fn remove(
        &self,
        document: DocumentId,
        name: &str,
        client_id: &str,
        stream: u64,
        announce: bool,
    ) {
        let mut documents = lock(&self.documents);
        let Some(entry) = documents.get_mut(&document) else {
            return;
        };
        if entry
            .sessions
            .get(client_id)
            .is_none_or(|session| session.stream != stream)
        {
            return;
        }
        let Some(session) = entry.sessions.remove(client_id) else {
            return;
        };
        if announce {
            let message = message(
                name,
                MessageType::UserLeft(UserLeft {
                    user_id: session.user.user_id,
                    client_id: client_id.to_owned(),
                }),
            );
            relay(entry, stream, &message);
        }
        if entry.sessions.is_empty() {
            documents.remove(&document);
        }
    }

    /// Records that the session was heard from now.
    pub(super) fn touch(&self, document: DocumentId, client_id: &str) {
        if let Some(session) = lock(&self.documents)
            .get_mut(&document)
            .and_then(|entry| entry.sessions.get_mut(client_id))
        {
            session.user.last_seen = crate::unix_ms();
        }
    }

    /// Queues `message` to the document's sessions on streams other than
    /// `stream`.
    pub(super) fn relay(&self, document: DocumentId, stream: u64, message: &ServerMessage) {
        if let Some(entry) = lock(&self.documents).get(&document) {
            relay(entry, stream, message);
        }
    }

    /// The document's sessions on this node, by client id.
    pub(super) fn active_users(&self, document: DocumentId) -> Vec<ActiveUser> {
        let mut users: Vec<ActiveUser> = lock(&self.documents)
            .get(&document)
            .map(|entry| entry.sessions.values().map(|s| s.user.clone()).collect())
            .unwrap_or_default();
        users.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        users
    }

    /// Remembers that the Yjs clients of `update` write for `client_id`,
    /// so the update, relayed to others, names it as its origin.
    pub(super) fn note_author(&self, document: DocumentId, client_id: &str, update: &[u8]) {
        let clients = yjs_clients(update);
        if clients.is_empty() {
            return;
        }
        let mut documents = lock(&self.documents);
        let Some(entry) = documents.get_mut(&document) else {
            return;
        };
        if entry.authors.len() + clients.len() > AUTHORS_PER_DOCUMENT_MAX {
            entry.authors.clear();
        }
        for client in clients {
            entry.authors.insert(client, client_id.to_owned());
        }
    }

    /// Who made `update`: the gRPC client id whose updates carried its Yjs
    /// clients, else the Yjs client id when there is exactly one, else ""
    /// (a deletion alone names nobody).
    pub(super) fn origin(&self, document: DocumentId, update: &[u8]) -> String {
        let clients = yjs_clients(update);
        let documents = lock(&self.documents);
        let authors = documents.get(&document).map(|entry| &entry.authors);
        let mut named = clients
            .iter()
            .map(|client| authors.and_then(|authors| authors.get(client)));
        if let Some(Some(first)) = named.next() {
            if named.all(|other| other == Some(first)) {
                return first.clone();
            }
            return String::new();
        }
        match clients.as_slice() {
            [only] => only.to_string(),
            _ => String::new(),
        }
    }

    /// Records a change of the document seen now.
    pub(super) fn modified(&self, document: DocumentId) {
        if let Some(entry) = lock(&self.documents).get_mut(&document) {
            entry.last_modified_ms = Some(crate::unix_ms());
        }
    }

    /// The last change this node saw while gRPC sessions were on the
    /// document.
    pub(super) fn last_modified(&self, document: DocumentId) -> Option<i64> {
        lock(&self.documents)
            .get(&document)
            .and_then(|entry| entry.last_modified_ms)
    }
}

fn relay(entry: &Document, stream: u64, message: &ServerMessage) {
    for session in entry.sessions.values() {
        if session.stream != stream {
            session.outbox.push(message.clone());
        }
    }
}

/// The Yjs client ids whose items a v1 update inserts, in order; none for
/// an update that does not decode or only deletes.
fn yjs_clients(update: &[u8]) -> Vec<u64> {
    let Ok(update) = yrs::Update::decode_v1(update) else {
        return Vec::new();
    };
    let mut clients: Vec<u64> = update
        .state_vector()
        .iter()
        .map(|(client, _)| client.get())
        .collect();
    clients.sort_unstable();
    clients
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

//! Live collaborative documents: one [`Room`] per open document, loaded
//! from storage by its first connection and unloaded (after a final
//! snapshot) when its last connection leaves.
//!
//! Every frame of a document is handled under that document's lock: the
//! room applies it, the updates it produced are appended to storage, and
//! only then is anything sent. A peer never sees an update the database
//! does not hold, so what one client acknowledged survives a crash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use conclave_config::DocumentsConfig;
use conclave_core::{DocumentId, ErrorCode};
use conclave_docs::{Access, ConnectionId, DocError, Effects, Recipients, Room};
use conclave_storage::{DocumentRecord, Storage};

use crate::cluster::{BusMessage, Cluster};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// How long a connection waits for its document's lock. The holder may be
/// writing to storage, which gives up sooner ([`STORAGE_TIMEOUT`]).
const ROOM_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest one document read or write may take. A write that does not
/// finish in time fails the room, like any storage error.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// How often awareness states not renewed for 30 s are dropped (y-protocols
/// checks every 3 s).
pub(crate) const AWARENESS_SWEEP_INTERVAL: Duration = Duration::from_secs(3);

/// A document that is unloaded between taking its slot and locking it is
/// looked up again; more misses than this in a row mean something is wrong.
const JOIN_ATTEMPTS: usize = 3;

/// The greeting (sync step 1 and the awareness states) must fit in a new
/// connection's queue whatever `limits.session_send_queue_frames` says.
const QUEUE_FRAMES_MIN: usize = 4;

/// WebSocket close codes of the document endpoint (RFC 6455, and 44xx as
/// Hocuspocus uses them).
pub(crate) mod close {
    pub(crate) const NORMAL: u16 = 1000;
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const UNSUPPORTED_DATA: u16 = 1003;
    pub(crate) const INVALID_PAYLOAD: u16 = 1007;
    pub(crate) const POLICY: u16 = 1008;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const INTERNAL: u16 = 1011;
    pub(crate) const TRY_AGAIN_LATER: u16 = 1013;
    pub(crate) const UNAUTHORIZED: u16 = 4401;
    pub(crate) const FORBIDDEN: u16 = 4403;
}

/// Why a document connection ends: a WebSocket close code, and the error
/// code sent as the close reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseCause {
    pub code: u16,
    pub error: ErrorCode,
    /// For the log, and for the y-protocols permission-denied message.
    pub message: String,
}

impl CloseCause {
    pub(crate) fn new(code: u16, error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            error,
            message: message.into(),
        }
    }

    fn storage(detail: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %detail, "document storage failed");
        Self::new(
            close::INTERNAL,
            ErrorCode::Unavailable,
            "the document could not be stored; reconnect",
        )
    }

    fn invalid(err: &DocError) -> Self {
        let code = match err {
            DocError::TooManyAwarenessClients => close::TRY_AGAIN_LATER,
            _ => close::INVALID_PAYLOAD,
        };
        let error = match err {
            DocError::TooManyAwarenessClients => ErrorCode::LimitExceeded,
            _ => ErrorCode::InvalidUpdate,
        };
        Self::new(code, error, err.to_string())
    }
}

/// Closes one connection from outside its task (slow reader, failed room).
struct Kick {
    token: CancellationToken,
    cause: Mutex<Option<CloseCause>>,
}

impl Kick {
    fn kick(&self, cause: CloseCause) {
        lock(&self.cause).get_or_insert(cause);
        self.token.cancel();
    }
}

/// A socket's end of the rooms it has joined: every room writes this
/// socket's frames into one bounded queue, in order. When the queue is full
/// the reader is too slow and the socket is closed (it resyncs when it
/// reconnects).
#[derive(Clone)]
pub(crate) struct SocketLink {
    queue: mpsc::Sender<Bytes>,
    kick: Arc<Kick>,
}

impl SocketLink {
    /// Queues a frame behind everything the rooms queued before it.
    pub(crate) fn push(&self, frame: Bytes) {
        match self.queue.try_send(frame) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.kick.kick(CloseCause::new(
                close::TRY_AGAIN_LATER,
                ErrorCode::SlowConsumer,
                "the connection fell behind the document; reconnect",
            )),
        }
    }
}

/// What a socket's writer reads: the frames to send, and the signal that a
/// room closed the socket.
pub(crate) struct SocketInbox {
    pub outgoing: mpsc::Receiver<Bytes>,
    kick: Arc<Kick>,
}

impl SocketInbox {
    /// Resolves when a room closes the socket.
    pub(crate) fn kicked(&self) -> WaitForCancellationFutureOwned {
        self.kick.token.clone().cancelled_owned()
    }

    pub(crate) fn kick_cause(&self) -> Option<CloseCause> {
        lock(&self.kick.cause).clone()
    }
}

/// How a connection's frames are framed on its socket.
#[derive(Debug, Clone)]
pub(crate) enum Dialect {
    /// One document per socket, y-websocket messages as they are.
    YWebsocket,
    /// Many documents per socket: every frame starts with the document's
    /// address, and stateless messages are relayed.
    Hocuspocus { address: Bytes },
    /// Many documents per socket, frames behind the document's address
    /// like Hocuspocus, for a transport that translates them (JSON).
    Addressed { address: Bytes },
}

struct Peer {
    link: SocketLink,
    dialect: Dialect,
}

impl Peer {
    fn push(&self, frame: Bytes) {
        match &self.dialect {
            Dialect::YWebsocket => self.link.push(frame),
            Dialect::Hocuspocus { address } | Dialect::Addressed { address } => self
                .link
                .push(conclave_docs::hocuspocus::addressed(address, &frame)),
        }
    }
}

struct LiveRoom {
    document: DocumentId,
    room: Room,
    peers: HashMap<ConnectionId, Peer>,
    /// Sequence of the newest logged update.
    head_seq: u64,
    /// Sequence the stored snapshot covers.
    snapshot_seq: u64,
    /// Bytes of updates logged since the snapshot.
    bytes_since_snapshot: u64,
    /// Bytes of the stored snapshot.
    snapshot_bytes: u64,
    /// A snapshot is being written in the background.
    compacting: bool,
    /// When the last connection left (ms on the rooms' clock); the room is
    /// unloaded once it has been idle for `documents.unload_after_idle_secs`.
    idle_since_ms: Option<u64>,
}

impl LiveRoom {
    /// Sends a stateless message to the Hocuspocus connections but `sender`.
    fn relay_stateless(&self, sender: ConnectionId, payload: &str) {
        let frame = Bytes::from(conclave_docs::hocuspocus::stateless(payload));
        for (id, peer) in &self.peers {
            if *id != sender && matches!(peer.dialect, Dialect::Hocuspocus { .. }) {
                peer.push(frame.clone());
            }
        }
    }

    fn fan_out(&self, sender: ConnectionId, effects: &Effects) {
        for out in &effects.send {
            for (id, peer) in &self.peers {
                let to_this = match out.to {
                    Recipients::Sender => *id == sender,
                    Recipients::Others => *id != sender,
                    Recipients::Everyone => true,
                };
                if to_this {
                    peer.push(out.frame.clone());
                }
            }
        }
    }
}

enum Slot {
    /// Just created: the first connection loads the document.
    Empty,
    Live(Box<LiveRoom>),
    /// Unloaded or failed, and already removed from the registry; whoever
    /// still holds the slot looks the document up again.
    Gone,
}

type SharedSlot = Arc<tokio::sync::Mutex<Slot>>;

/// One connection's place in a room.
pub(crate) struct DocConnection {
    pub id: ConnectionId,
    pub document: DocumentId,
    slot: SharedSlot,
}

/// The open documents of this server.
pub(crate) struct DocumentRooms {
    rooms: Mutex<HashMap<DocumentId, SharedSlot>>,
    next_connection: AtomicU64,
    /// Awareness times are measured from here: monotonic, so a wall-clock
    /// jump cannot expire every state at once.
    started: Instant,
    queue_frames: usize,
    max_connections: usize,
    compact_every: u64,
    compact_every_bytes: u64,
    unload_after_ms: u64,
    max_document_bytes: u64,
    /// Other nodes hear each stored update, for their rooms of the same
    /// document.
    cluster: Arc<Cluster>,
    /// For snapshots written in the background.
    storage: Arc<dyn Storage>,
}

impl DocumentRooms {
    pub(crate) fn new(
        config: &DocumentsConfig,
        queue_frames: u32,
        cluster: Arc<Cluster>,
        storage: Arc<dyn Storage>,
    ) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            started: Instant::now(),
            queue_frames: (queue_frames as usize).max(QUEUE_FRAMES_MIN),
            max_connections: config.max_connections_per_document as usize,
            compact_every: u64::from(config.compact_every_updates),
            compact_every_bytes: config.compact_every_bytes,
            unload_after_ms: config.unload_after_idle_secs.saturating_mul(1000),
            max_document_bytes: config.max_document_bytes,
            cluster,
            storage,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Documents loaded now.
    pub(crate) fn open_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// A new socket's queue, sized for the greetings of `documents`
    /// documents on top of the usual backlog.
    pub(crate) fn socket(&self, documents: usize) -> (SocketLink, SocketInbox) {
        let capacity = self
            .queue_frames
            .max(QUEUE_FRAMES_MIN.saturating_mul(documents.max(1)));
        let (queue, outgoing) = mpsc::channel(capacity);
        let kick = Arc::new(Kick {
            token: CancellationToken::new(),
            cause: Mutex::new(None),
        });
        (
            SocketLink {
                queue,
                kick: kick.clone(),
            },
            SocketInbox { outgoing, kick },
        )
    }

    /// Adds a connection to the document's room (loading the room first if
    /// needed). The greeting is queued on `link` before this returns.
    pub(crate) async fn join(
        &self,
        storage: &dyn Storage,
        document: &DocumentRecord,
        access: Access,
        link: &SocketLink,
        dialect: Dialect,
    ) -> Result<DocConnection, CloseCause> {
        for _ in 0..JOIN_ATTEMPTS {
            let slot = self.slot(document.id);
            let mut guard = lock_room(&slot).await?;
            self.load_if_empty(storage, document.id, &slot, &mut guard)
                .await?;
            let Slot::Live(live) = &mut *guard else {
                continue;
            };
            if live.peers.len() >= self.max_connections {
                return Err(CloseCause::new(
                    close::TRY_AGAIN_LATER,
                    ErrorCode::LimitExceeded,
                    format!(
                        "document `{}` has {} connections, the most it may have",
                        document.name, self.max_connections
                    ),
                ));
            }
            let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
            live.peers.insert(
                id,
                Peer {
                    link: link.clone(),
                    dialect,
                },
            );
            live.idle_since_ms = None;
            let greeting = live.room.connect(id, access);
            live.fan_out(id, &greeting);
            return Ok(DocConnection {
                id,
                document: document.id,
                slot: slot.clone(),
            });
        }
        Err(being_unloaded())
    }

    /// Loads the document into a slot nobody has loaded yet. A failure
    /// leaves the slot gone.
    async fn load_if_empty(
        &self,
        storage: &dyn Storage,
        document: DocumentId,
        slot: &SharedSlot,
        guard: &mut Slot,
    ) -> Result<(), CloseCause> {
        if matches!(*guard, Slot::Empty) {
            match self.load(storage, document).await {
                Ok(live) => *guard = Slot::Live(Box::new(live)),
                Err(cause) => {
                    *guard = Slot::Gone;
                    self.forget(document, slot);
                    return Err(cause);
                }
            }
        }
        Ok(())
    }

    /// Handles one frame: apply, persist, then send. An error closes this
    /// connection only, unless storage failed: then the whole room is
    /// dropped, because memory would hold what storage does not. Returns
    /// how many updates were dropped because the connection is read-only.
    pub(crate) async fn receive(
        &self,
        storage: &dyn Storage,
        conn: &DocConnection,
        frame: &[u8],
    ) -> Result<usize, CloseCause> {
        let mut guard = lock_room(&conn.slot).await?;
        let Slot::Live(live) = &mut *guard else {
            return Err(room_closed());
        };
        let now_ms = self.now_ms();
        let stored = live.snapshot_bytes + live.bytes_since_snapshot;
        if stored.saturating_add(frame.len() as u64) > self.max_document_bytes
            && live.room.grows(frame)
        {
            return Err(CloseCause::new(
                close::POLICY,
                ErrorCode::LimitExceeded,
                format!(
                    "the document is at its size limit ({} bytes); it can be read and shortened, not grown",
                    self.max_document_bytes
                ),
            ));
        }
        // yrs decodes hostile input; should it panic, the document may be
        // half-changed, so the room goes (clients resync into a fresh one)
        // instead of lingering with a dead connection in it.
        let received = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            live.room.receive(conn.id, frame, now_ms)
        }));
        let effects = match received {
            Ok(effects) => effects,
            Err(_) => {
                tracing::error!(document = %conn.document, connection = conn.id.0, "the document panicked on a message; dropping the room");
                let cause = CloseCause::new(
                    close::INTERNAL,
                    ErrorCode::Internal,
                    "the document failed; reconnect",
                );
                fail(live, cause.clone());
                *guard = Slot::Gone;
                self.forget(conn.document, &conn.slot);
                return Err(cause);
            }
        };
        if effects.dropped_read_only > 0 {
            tracing::debug!(
                document = %conn.document,
                connection = conn.id.0,
                dropped = effects.dropped_read_only,
                "dropped updates from a read-only connection"
            );
        }
        if let Err(cause) = self
            .commit(storage, &conn.slot, live, conn.id, &effects)
            .await
        {
            // Clients still hold their edits and send them again (sync step
            // 2) to the fresh room they reconnect to.
            fail(live, cause.clone());
            *guard = Slot::Gone;
            self.forget(conn.document, &conn.slot);
            return Err(cause);
        }
        match &effects.error {
            Some(err) => Err(CloseCause::invalid(err)),
            None => Ok(effects.dropped_read_only),
        }
    }

    /// Persists what a call into the room changed, tells the other nodes,
    /// then sends; compacts when the log is long enough.
    async fn commit(
        &self,
        storage: &dyn Storage,
        slot: &SharedSlot,
        live: &mut LiveRoom,
        sender: ConnectionId,
        effects: &Effects,
    ) -> Result<(), CloseCause> {
        append(storage, live, &effects.persist).await?;
        if !effects.persist.is_empty() {
            self.cluster.publish(&BusMessage::DocumentUpdates {
                document: live.document,
                updates: effects.persist.iter().map(|u| BASE64.encode(u)).collect(),
            });
        }
        self.publish_awareness(live.document, effects);
        live.fan_out(sender, effects);
        let due = live.head_seq.saturating_sub(live.snapshot_seq) >= self.compact_every
            || live.bytes_since_snapshot >= self.compact_every_bytes;
        if due && !live.compacting {
            if self.cluster.is_clustered() {
                // The stored log is read into the room first (see
                // `compact`), under the lock.
                self.compact(storage, live).await;
            } else {
                self.compact_in_background(slot, live);
            }
        }
        Ok(())
    }

    /// Writes a snapshot of the room as it is now without holding up its
    /// editors: the state is encoded under the lock, stored by a task, and
    /// the room learns what the snapshot covers when it is done.
    fn compact_in_background(&self, slot: &SharedSlot, live: &mut LiveRoom) {
        if live.head_seq <= live.snapshot_seq {
            return;
        }
        live.compacting = true;
        let snapshot = live.room.encode_state();
        let (document, up_to, logged) = (live.document, live.head_seq, live.bytes_since_snapshot);
        let (storage, slot) = (self.storage.clone(), slot.clone());
        tokio::spawn(async move {
            let result = tokio::time::timeout(
                STORAGE_TIMEOUT,
                storage
                    .documents()
                    .compact(document, &snapshot, up_to, crate::unix_ms()),
            )
            .await;
            let stored = match result {
                Ok(Ok(_)) => true,
                Ok(Err(err)) => {
                    tracing::warn!(document = %document, error = %err, "document compaction failed");
                    false
                }
                Err(_) => {
                    tracing::warn!(document = %document, "document compaction timed out");
                    false
                }
            };
            let mut guard = slot.lock().await;
            if let Slot::Live(live) = &mut *guard {
                live.compacting = false;
                if stored && up_to > live.snapshot_seq {
                    live.snapshot_seq = up_to;
                    live.snapshot_bytes = snapshot.len() as u64;
                    live.bytes_since_snapshot = live.bytes_since_snapshot.saturating_sub(logged);
                }
            }
        });
    }

    /// Makes an edit of the server's own (restoring a version): `edit` gets
    /// the document's whole current state (v1), read under its lock, and
    /// returns the update to apply, which is then handled as if an editor
    /// had sent it: stored, then sent to every connection here and on
    /// other nodes. A document nobody has open is loaded for it.
    pub(crate) async fn apply_server_edit(
        &self,
        storage: &dyn Storage,
        document: DocumentId,
        edit: impl FnOnce(&[u8]) -> Result<Vec<u8>, DocError>,
    ) -> Result<(), CloseCause> {
        let mut edit = Some(edit);
        for _ in 0..JOIN_ATTEMPTS {
            let slot = self.slot(document);
            let mut guard = lock_room(&slot).await?;
            self.load_if_empty(storage, document, &slot, &mut guard)
                .await?;
            let Slot::Live(live) = &mut *guard else {
                continue;
            };
            if self.cluster.is_clustered() {
                // Other nodes' updates may not have reached this room yet.
                self.catch_up(storage, live).await?;
            }
            let Some(edit) = edit.take() else {
                break;
            };
            let update =
                edit(&live.room.encode_state()).map_err(|err| CloseCause::invalid(&err))?;
            let effects = live.room.apply_server_update(&update);
            let committed = self
                .commit(storage, &slot, live, ConnectionId(0), &effects)
                .await;
            if let Err(cause) = committed {
                fail(live, cause.clone());
                *guard = Slot::Gone;
                self.forget(document, &slot);
                return Err(cause);
            }
            if live.peers.is_empty() {
                self.compact(storage, live).await;
                if self.unload_after_ms == 0 {
                    *guard = Slot::Gone;
                    self.forget(document, &slot);
                    tracing::debug!(document = %document, "document unloaded");
                } else {
                    live.idle_since_ms.get_or_insert(self.now_ms());
                }
            }
            return match &effects.error {
                Some(err) => Err(CloseCause::invalid(err)),
                None => Ok(()),
            };
        }
        Err(being_unloaded())
    }

    /// Relays a Hocuspocus stateless message to the document's other
    /// Hocuspocus connections, on this node and the others.
    pub(crate) async fn stateless(
        &self,
        conn: &DocConnection,
        payload: &str,
    ) -> Result<(), CloseCause> {
        let guard = lock_room(&conn.slot).await?;
        let Slot::Live(live) = &*guard else {
            return Err(room_closed());
        };
        live.relay_stateless(conn.id, payload);
        if self.cluster.is_clustered() {
            self.cluster.publish(&BusMessage::DocumentStateless {
                document: conn.document,
                payload: payload.to_owned(),
            });
        }
        Ok(())
    }

    /// A stateless message from another node's Hocuspocus connection.
    pub(crate) async fn apply_remote_stateless(&self, document: DocumentId, payload: &str) {
        let Some(slot) = lock(&self.rooms).get(&document).cloned() else {
            return;
        };
        let Ok(guard) = lock_room(&slot).await else {
            return;
        };
        if let Slot::Live(live) = &*guard {
            live.relay_stateless(ConnectionId(0), payload);
        }
    }

    /// Removes a connection; its awareness states become `null` for the
    /// others. The last one out snapshots and unloads the document.
    pub(crate) async fn leave(&self, storage: &dyn Storage, conn: DocConnection) {
        let mut guard = match lock_room(&conn.slot).await {
            Ok(guard) => guard,
            Err(_) => {
                tracing::error!(document = %conn.document, connection = conn.id.0, "could not leave the document: its room stayed locked");
                return;
            }
        };
        let Slot::Live(live) = &mut *guard else {
            return;
        };
        live.peers.remove(&conn.id);
        let effects = live.room.disconnect(conn.id, self.now_ms());
        self.publish_awareness(conn.document, &effects);
        live.fan_out(conn.id, &effects);
        if live.peers.is_empty() {
            self.compact(storage, live).await;
            if self.unload_after_ms == 0 {
                *guard = Slot::Gone;
                self.forget(conn.document, &conn.slot);
                tracing::debug!(document = %conn.document, "document unloaded");
            } else {
                live.idle_since_ms = Some(self.now_ms());
            }
        }
    }

    /// Applies updates another node stored to this node's room of the
    /// document, if it is open here (otherwise storage has them for when it
    /// loads).
    pub(crate) async fn apply_stored(&self, document: DocumentId, updates: &[Vec<u8>]) {
        let Some(slot) = lock(&self.rooms).get(&document).cloned() else {
            return;
        };
        let Ok(mut guard) = lock_room(&slot).await else {
            return;
        };
        if let Slot::Live(live) = &mut *guard {
            for update in updates {
                let effects = live.room.apply_stored(update);
                if let Some(err) = &effects.error {
                    tracing::warn!(document = %document, error = %err, "an update from another node does not apply");
                }
                live.fan_out(ConnectionId(0), &effects);
            }
        }
    }

    /// Tells the other nodes about awareness states this node's editors
    /// changed. A lost message costs little: states are renewed every 15 s.
    fn publish_awareness(&self, document: DocumentId, effects: &Effects) {
        if let Some(update) = &effects.awareness_changed
            && self.cluster.is_clustered()
        {
            self.cluster.publish(&BusMessage::DocumentAwareness {
                document,
                update: BASE64.encode(update),
            });
        }
    }

    /// Applies awareness states another node's editors changed to this
    /// node's room of the document, if it is open here.
    pub(crate) async fn apply_remote_awareness(&self, document: DocumentId, update: &[u8]) {
        let Some(slot) = lock(&self.rooms).get(&document).cloned() else {
            return;
        };
        let Ok(mut guard) = lock_room(&slot).await else {
            return;
        };
        if let Slot::Live(live) = &mut *guard {
            let effects = live.room.apply_remote_awareness(update, self.now_ms());
            if let Some(err) = &effects.error {
                tracing::warn!(document = %document, error = %err, "awareness from another node does not decode");
            }
            live.fan_out(ConnectionId(0), &effects);
        }
    }

    /// Folds the log into a snapshot. A failure only costs a longer log.
    ///
    /// With other nodes, this room may lack an update another node stored
    /// (its bus message is late or lost): the stored log is applied first,
    /// so the snapshot never drops what storage holds.
    async fn compact(&self, storage: &dyn Storage, live: &mut LiveRoom) {
        if self.cluster.is_clustered() && self.catch_up(storage, live).await.is_err() {
            tracing::warn!(document = %live.document, "could not read the document's log to compact it");
            return;
        }
        compact(storage, live).await;
    }

    /// Applies everything storage holds for the document to its room: on a
    /// cluster, other nodes' updates whose bus messages are late or lost.
    async fn catch_up(&self, storage: &dyn Storage, live: &mut LiveRoom) -> Result<(), CloseCause> {
        let stored = tokio::time::timeout(STORAGE_TIMEOUT, storage.documents().load(live.document))
            .await
            .map_err(|_| CloseCause::storage("reading the document timed out"))?
            .map_err(CloseCause::storage)?;
        for bytes in stored
            .snapshot
            .iter()
            .chain(stored.updates.iter().map(|(_, u)| u))
        {
            let effects = live.room.apply_stored(bytes);
            live.fan_out(ConnectionId(0), &effects);
        }
        live.head_seq = live.head_seq.max(stored.head_seq());
        Ok(())
    }

    /// Drops awareness states nobody renewed for 30 s, in every room, and
    /// unloads documents nobody has had open for
    /// `documents.unload_after_idle_secs` (after a last snapshot).
    pub(crate) async fn sweep(&self, storage: &dyn Storage) {
        let slots: Vec<(DocumentId, SharedSlot)> = lock(&self.rooms)
            .iter()
            .map(|(id, slot)| (*id, slot.clone()))
            .collect();
        let now_ms = self.now_ms();
        for (document, slot) in slots {
            // A room busy with storage is swept next time round; the sweep
            // must not queue behind it.
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            let Slot::Live(live) = &mut *guard else {
                continue;
            };
            let effects = live.room.sweep(now_ms);
            live.fan_out(ConnectionId(0), &effects);
            let idle_enough = live
                .idle_since_ms
                .is_some_and(|since| now_ms.saturating_sub(since) >= self.unload_after_ms);
            if idle_enough && live.peers.is_empty() {
                // Updates from other nodes may have arrived while idle.
                self.compact(storage, live).await;
                *guard = Slot::Gone;
                self.forget(document, &slot);
                tracing::debug!(document = %document, "document unloaded");
            }
        }
    }

    fn slot(&self, document: DocumentId) -> SharedSlot {
        lock(&self.rooms)
            .entry(document)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Slot::Empty)))
            .clone()
    }

    /// Removes the document from the registry if `slot` is still its entry.
    fn forget(&self, document: DocumentId, slot: &SharedSlot) {
        let mut rooms = lock(&self.rooms);
        if rooms.get(&document).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            rooms.remove(&document);
        }
    }

    async fn load(&self, storage: &dyn Storage, id: DocumentId) -> Result<LiveRoom, CloseCause> {
        let stored = tokio::time::timeout(STORAGE_TIMEOUT, storage.documents().load(id))
            .await
            .map_err(|_| CloseCause::storage("loading the document timed out"))?
            .map_err(CloseCause::storage)?;
        let room = Room::load(
            stored.snapshot.as_deref(),
            stored.updates.iter().map(|(_, bytes)| bytes.as_slice()),
        )
        .map_err(|err| {
            tracing::error!(document = %id, error = %err, "stored document does not load");
            CloseCause::new(
                close::INTERNAL,
                ErrorCode::Internal,
                "the stored document is unreadable",
            )
        })?;
        tracing::debug!(document = %id, updates = stored.updates.len(), "document loaded");
        Ok(LiveRoom {
            document: id,
            room,
            peers: HashMap::new(),
            head_seq: stored.head_seq(),
            snapshot_seq: stored.snapshot_seq,
            bytes_since_snapshot: stored.updates.iter().map(|(_, u)| u.len() as u64).sum(),
            snapshot_bytes: stored.snapshot.as_ref().map_or(0, |s| s.len() as u64),
            compacting: false,
            idle_since_ms: None,
        })
    }
}

/// Closes every connection of a room that is being dropped.
fn fail(live: &LiveRoom, cause: CloseCause) {
    for peer in live.peers.values() {
        peer.link.kick.kick(cause.clone());
    }
}

/// Appends updates to the document's log, in order; each is durable when
/// its call returns.
async fn append(
    storage: &dyn Storage,
    live: &mut LiveRoom,
    updates: &[Vec<u8>],
) -> Result<(), CloseCause> {
    for update in updates {
        let seq = tokio::time::timeout(
            STORAGE_TIMEOUT,
            storage
                .documents()
                .append_update(live.document, update, crate::unix_ms()),
        )
        .await
        .map_err(|_| CloseCause::storage("appending an update timed out"))?
        .map_err(CloseCause::storage)?;
        live.head_seq = seq;
        live.bytes_since_snapshot += update.len() as u64;
    }
    Ok(())
}

/// Folds the log into a snapshot. A failure only costs a longer log.
async fn compact(storage: &dyn Storage, live: &mut LiveRoom) {
    if live.head_seq <= live.snapshot_seq {
        return;
    }
    let snapshot = live.room.encode_state();
    let result = tokio::time::timeout(
        STORAGE_TIMEOUT,
        storage
            .documents()
            .compact(live.document, &snapshot, live.head_seq, crate::unix_ms()),
    )
    .await;
    match result {
        Ok(Ok(_)) => {
            live.snapshot_seq = live.head_seq;
            live.bytes_since_snapshot = 0;
            live.snapshot_bytes = snapshot.len() as u64;
        }
        Ok(Err(err)) => {
            tracing::warn!(document = %live.document, error = %err, "document compaction failed")
        }
        Err(_) => tracing::warn!(document = %live.document, "document compaction timed out"),
    }
}

async fn lock_room(slot: &SharedSlot) -> Result<tokio::sync::MutexGuard<'_, Slot>, CloseCause> {
    tokio::time::timeout(ROOM_LOCK_TIMEOUT, slot.lock())
        .await
        .map_err(|_| {
            CloseCause::new(
                close::TRY_AGAIN_LATER,
                ErrorCode::Unavailable,
                "the document is busy; reconnect",
            )
        })
}

fn being_unloaded() -> CloseCause {
    CloseCause::new(
        close::TRY_AGAIN_LATER,
        ErrorCode::Unavailable,
        "the document is being unloaded; reconnect",
    )
}

fn room_closed() -> CloseCause {
    CloseCause::new(
        close::TRY_AGAIN_LATER,
        ErrorCode::Unavailable,
        "the document was closed; reconnect",
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reading a document without joining it, for the gRPC service
/// (`crate::grpc`): `GetDocumentState` and the state a joining session is
/// greeted with.
impl DocumentRooms {
    /// The state vector and the whole state (both v1) of `document` if it
    /// is loaded on this node, read under its lock; `None` when it is not
    /// (storage has it).
    pub(crate) async fn live_state(
        &self,
        document: DocumentId,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, CloseCause> {
        let Some(slot) = lock(&self.rooms).get(&document).cloned() else {
            return Ok(None);
        };
        let guard = lock_room(&slot).await?;
        Ok(match &*guard {
            Slot::Live(live) => Some((live.room.state_vector(), live.room.encode_state())),
            Slot::Empty | Slot::Gone => None,
        })
    }
}

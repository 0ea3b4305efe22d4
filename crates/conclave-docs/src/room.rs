//! One document and the connections editing it.
//!
//! The room answers each frame with [`Effects`]: frames to send (to the
//! sender, to every other connection, or to everyone) and updates to
//! persist. The caller must persist before it sends: a peer that saw an
//! update may rely on the server keeping it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Options, ReadTxn, StateVector, Transact, Update};

use crate::DocError;
use crate::awareness::{self, AwarenessTable};
use crate::message::{self, Message};

/// Awareness client ids one connection may introduce. A browser tab
/// controls one; the bound keeps a misbehaving peer from filling the table.
pub const AWARENESS_CLIENTS_PER_CONNECTION_MAX: usize = 16;

/// The server's own Yjs client id. The server never writes content, so
/// the id never appears in a document; it only has to be valid.
const SERVER_CLIENT_ID: u64 = 0;

/// Identifies a connection within a room; the caller assigns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

/// What a connection may do to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// Sync step 2 and updates from it are dropped; it still syncs, reads
    /// and shares awareness.
    ReadOnly,
}

/// Who a frame goes to, relative to the connection that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    Sender,
    /// Every connection of the room except the sender.
    Others,
    Everyone,
}

/// One WebSocket message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub to: Recipients,
    pub frame: Bytes,
}

/// What the caller must do after a call into the room, in this order:
/// append `persist` to the document's log, then send `send`, then close the
/// sender if `error` is set.
#[derive(Debug, Default)]
pub struct Effects {
    pub send: Vec<Outbound>,
    /// v1 updates that changed the document, oldest first.
    pub persist: Vec<Vec<u8>>,
    /// The sender broke the protocol. What it sent before the fault is in
    /// `persist` and `send`; close it afterwards.
    pub error: Option<DocError>,
    /// Updates refused because the sender is read-only.
    pub dropped_read_only: usize,
    /// The awareness states this call changed, as one awareness update,
    /// for the other servers of a cluster; `None` when nothing changed or
    /// the change came from another server.
    pub awareness_changed: Option<Vec<u8>>,
}

impl Effects {
    fn push(&mut self, to: Recipients, frame: Vec<u8>) {
        self.send.push(Outbound {
            to,
            frame: Bytes::from(frame),
        });
    }

    fn failed(error: DocError) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }
}

#[derive(Debug)]
struct Peer {
    access: Access,
    /// Awareness clients this connection introduced; they are removed for
    /// everyone when it leaves (y-websocket's `controlledIDs`).
    controlled: BTreeSet<u64>,
}

/// A message decoded all the way down, before anything is applied.
enum Checked {
    SyncStep1(StateVector),
    Apply(Update),
    ReadOnlyDrop,
    Awareness(Vec<awareness::AwarenessEntry>),
    QueryAwareness,
    Ignore,
}

/// A document with its connections and awareness states.
pub struct Room {
    doc: Doc,
    /// What the document's update observer saw: exactly the change each
    /// transaction made, so no-op updates produce nothing.
    observed: Arc<Mutex<Vec<Vec<u8>>>>,
    awareness: AwarenessTable,
    peers: BTreeMap<ConnectionId, Peer>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("peers", &self.peers)
            .field("awareness", &self.awareness)
            .finish_non_exhaustive()
    }
}

impl Default for Room {
    fn default() -> Self {
        Self::new()
    }
}

impl Room {
    /// An empty document.
    pub fn new() -> Self {
        // The server relays; it must not edit. Formatting cleanup would
        // have it delete marks of its own accord.
        let options = Options {
            cleanup_formatting: false,
            ..Options::with_client_id(yrs::ClientID::new(SERVER_CLIENT_ID))
        };
        let doc = Doc::with_options(options);
        let observed: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink = observed.clone();
        doc.observe_update_v1("conclave-room", move |_, event| {
            lock(&sink).push(event.update.clone());
        })
        .expect("a new document has no transaction open");
        Self {
            doc,
            observed,
            awareness: AwarenessTable::default(),
            peers: BTreeMap::new(),
        }
    }

    /// A document rebuilt from storage: a snapshot (a v1 update of the whole
    /// state) and the updates logged after it.
    pub fn load<'a>(
        snapshot: Option<&'a [u8]>,
        updates: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, DocError> {
        let room = Self::new();
        for bytes in snapshot.into_iter().chain(updates) {
            let update =
                Update::decode_v1(bytes).map_err(|err| DocError::Corrupt(err.to_string()))?;
            room.doc
                .transact_mut()
                .apply_update(update)
                .map_err(|err| DocError::Corrupt(err.to_string()))?;
        }
        lock(&room.observed).clear();
        Ok(room)
    }

    /// Registers a connection and greets it: the server's sync step 1, then
    /// the awareness states, if any (the y-websocket server's order).
    pub fn connect(&mut self, conn: ConnectionId, access: Access) -> Effects {
        self.peers.insert(
            conn,
            Peer {
                access,
                controlled: BTreeSet::new(),
            },
        );
        let mut effects = Effects::default();
        effects.push(
            Recipients::Sender,
            message::sync_step1(&self.state_vector()),
        );
        if let Some(states) = self.awareness.encode_present() {
            effects.push(Recipients::Sender, message::awareness(&states));
        }
        effects
    }

    /// Handles one frame from `conn`. A frame that does not decode is
    /// refused whole, before any of it is applied.
    pub fn receive(&mut self, conn: ConnectionId, frame: &[u8], now_ms: u64) -> Effects {
        let Some(access) = self.peers.get(&conn).map(|peer| peer.access) else {
            return Effects::failed(DocError::UnknownConnection);
        };
        let checked = match check(frame, access) {
            Ok(checked) => checked,
            Err(err) => return Effects::failed(err),
        };
        let mut effects = Effects::default();
        for message in checked {
            match message {
                Checked::SyncStep1(remote) => {
                    let txn = self.doc.transact();
                    let diff = txn.encode_state_as_update_v1(&remote);
                    let ours = txn.state_vector().encode_v1();
                    drop(txn);
                    effects.push(Recipients::Sender, message::sync_step2(&diff));
                    effects.push(Recipients::Sender, message::sync_step1(&ours));
                }
                Checked::Apply(update) => {
                    let applied = self.doc.transact_mut().apply_update(update);
                    for change in std::mem::take(&mut *lock(&self.observed)) {
                        effects.push(Recipients::Others, message::update(&change));
                        effects.persist.push(change);
                    }
                    if let Err(err) = applied {
                        effects.error = Some(DocError::InvalidUpdate(err.to_string()));
                        return effects;
                    }
                }
                Checked::ReadOnlyDrop => effects.dropped_read_only += 1,
                Checked::Awareness(entries) => {
                    if let Err(err) = self.apply_awareness(conn, entries, now_ms, &mut effects) {
                        effects.error = Some(err);
                        return effects;
                    }
                }
                Checked::QueryAwareness => {
                    let present: Vec<u64> = self.awareness.present().collect();
                    effects.push(
                        Recipients::Sender,
                        message::awareness(&self.awareness.encode(&present)),
                    );
                }
                Checked::Ignore => {}
            }
        }
        effects
    }

    /// Applies a document update that is already stored (another server of
    /// the cluster received it): what it changes is sent to every
    /// connection, and nothing is to be persisted again. Applying an update
    /// twice, or out of order, is harmless: Yjs updates commute.
    pub fn apply_stored(&mut self, update: &[u8]) -> Effects {
        self.apply_for_everyone(update, false)
    }

    /// Applies an update the server made itself (restoring a version):
    /// like a client's edit, what it changes is to be persisted, and it is
    /// sent to every connection.
    pub fn apply_server_update(&mut self, update: &[u8]) -> Effects {
        self.apply_for_everyone(update, true)
    }

    fn apply_for_everyone(&mut self, update: &[u8], persist: bool) -> Effects {
        let update = match Update::decode_v1(update) {
            Ok(update) => update,
            Err(err) => return Effects::failed(DocError::InvalidUpdate(err.to_string())),
        };
        let applied = self.doc.transact_mut().apply_update(update);
        let mut effects = Effects::default();
        for change in std::mem::take(&mut *lock(&self.observed)) {
            effects.push(Recipients::Everyone, message::update(&change));
            if persist {
                effects.persist.push(change);
            }
        }
        if let Err(err) = applied {
            effects.error = Some(DocError::InvalidUpdate(err.to_string()));
        }
        effects
    }

    /// Removes a connection; the awareness states it introduced become
    /// `null` for everyone left.
    pub fn disconnect(&mut self, conn: ConnectionId, now_ms: u64) -> Effects {
        let mut effects = Effects::default();
        let Some(peer) = self.peers.remove(&conn) else {
            return effects;
        };
        let removed = self.awareness.remove(peer.controlled, now_ms);
        if !removed.is_empty() {
            let update = self.awareness.encode(&removed);
            effects.push(Recipients::Others, message::awareness(&update));
            effects.awareness_changed = Some(update);
        }
        effects
    }

    /// Applies awareness states another server of the cluster changed (its
    /// clients' states, renewals and removals), under the same clock rule;
    /// what changes is sent to every connection here. These states belong
    /// to no connection of this room: they go when the other server says
    /// so, or when nobody renews them for 30 s.
    pub fn apply_remote_awareness(&mut self, update: &[u8], now_ms: u64) -> Effects {
        let entries = match awareness::decode_update(update) {
            Ok(entries) => entries,
            Err(err) => return Effects::failed(err),
        };
        let mut effects = Effects::default();
        let changes = self.awareness.apply(entries, now_ms);
        let shown = changes.all();
        if !shown.is_empty() {
            effects.push(
                Recipients::Everyone,
                message::awareness(&self.awareness.encode(&shown)),
            );
        }
        effects
    }

    /// Drops awareness states not renewed within
    /// [`AWARENESS_TIMEOUT_MS`](crate::AWARENESS_TIMEOUT_MS), telling
    /// everyone. Call it every few seconds.
    pub fn sweep(&mut self, now_ms: u64) -> Effects {
        let mut effects = Effects::default();
        let removed = self.awareness.sweep(now_ms);
        if !removed.is_empty() {
            for peer in self.peers.values_mut() {
                for client_id in &removed {
                    peer.controlled.remove(client_id);
                }
            }
            effects.push(
                Recipients::Everyone,
                message::awareness(&self.awareness.encode(&removed)),
            );
        }
        effects
    }

    pub fn connection_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether `frame` carries an update with items this document lacks:
    /// what makes a document bigger, as opposed to what it has already or
    /// deletions of what it has (a synced editor's sync step 2). A size
    /// limit refuses such frames. A frame that does not decode grows
    /// nothing; [`receive`](Self::receive) refuses it.
    pub fn grows(&self, frame: &[u8]) -> bool {
        let Ok(messages) = message::decode_frame(frame) else {
            return false;
        };
        let ours = self.doc.transact().state_vector();
        messages.iter().any(|message| match message {
            // An item ending past the document's clock for its client is
            // new (`Update::state_vector` counts only updates that start
            // at clock 0, so the insertions are read instead).
            Message::SyncStep2(bytes) | Message::Update(bytes) => Update::decode_v1(bytes)
                .map(|update| {
                    update.insertions(true).iter().any(|(client, ranges)| {
                        let known = ours.get(client);
                        ranges.iter().any(|range| range.end > known)
                    })
                })
                .unwrap_or(false),
            _ => false,
        })
    }

    /// The document's state vector (v1).
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// The whole document as one v1 update: a snapshot for storage.
    pub fn encode_state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// The awareness states (read access, for tests and metrics).
    pub fn awareness(&self) -> &AwarenessTable {
        &self.awareness
    }

    fn apply_awareness(
        &mut self,
        conn: ConnectionId,
        entries: Vec<awareness::AwarenessEntry>,
        now_ms: u64,
        effects: &mut Effects,
    ) -> Result<(), DocError> {
        let changes = self.awareness.apply(entries, now_ms);
        if changes.is_empty() {
            return Ok(());
        }
        let mut refused = Vec::new();
        if let Some(peer) = self.peers.get_mut(&conn) {
            for client_id in &changes.added {
                if peer.controlled.len() < AWARENESS_CLIENTS_PER_CONNECTION_MAX {
                    peer.controlled.insert(*client_id);
                } else {
                    refused.push(*client_id);
                }
            }
            for client_id in &changes.removed {
                peer.controlled.remove(client_id);
            }
        }
        // Refused states were never shown to anyone; take them back quietly.
        self.awareness.remove(refused.iter().copied(), now_ms);
        let shown: Vec<u64> = changes
            .all()
            .into_iter()
            .filter(|client_id| !refused.contains(client_id))
            .collect();
        if !shown.is_empty() {
            // To the sender too: the y-websocket client counts any message
            // as a sign of life, and awareness renewals every 15 s are what
            // keeps an idle client from reconnecting after 30 s.
            let update = self.awareness.encode(&shown);
            effects.push(Recipients::Everyone, message::awareness(&update));
            effects.awareness_changed = Some(update);
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(DocError::TooManyAwarenessClients)
        }
    }
}

/// Decodes every message of a frame down to Yjs structures, so a bad one
/// refuses the frame before anything is applied.
fn check(frame: &[u8], access: Access) -> Result<Vec<Checked>, DocError> {
    let mut checked = Vec::new();
    for message in message::decode_frame(frame)? {
        checked.push(match message {
            Message::SyncStep1(sv) => Checked::SyncStep1(
                StateVector::decode_v1(sv)
                    .map_err(|_| DocError::Malformed("a state vector does not decode"))?,
            ),
            Message::SyncStep2(_) | Message::Update(_) if access == Access::ReadOnly => {
                Checked::ReadOnlyDrop
            }
            Message::SyncStep2(bytes) | Message::Update(bytes) => Checked::Apply(
                Update::decode_v1(bytes).map_err(|err| DocError::InvalidUpdate(err.to_string()))?,
            ),
            Message::Awareness(bytes) => Checked::Awareness(awareness::decode_update(bytes)?),
            Message::QueryAwareness => Checked::QueryAwareness,
            // Clients have nothing to say with auth; only servers deny.
            Message::AuthDenied(_) => Checked::Ignore,
            Message::Unknown(_) => Checked::Ignore,
        });
    }
    Ok(checked)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The observer only pushes to a Vec; a panic elsewhere cannot leave it
    // half-written.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

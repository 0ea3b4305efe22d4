//! Live sessions: who is connected, on which device, over which transport.
//!
//! Every authenticated connection registers a session here. Pushed events
//! are encoded once per wire format and the same bytes are queued to every
//! target session. Each session's queue is bounded
//! (`limits.session_send_queue_frames`); a session whose queue is full is
//! disconnected with `slow_consumer` and catches up by sync when it returns,
//! so one slow reader never makes the server buffer without bound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use conclave_cluster::SessionEntry;
use conclave_core::{ChannelId, DeviceId, ErrorCode, UserId};
use conclave_protocol::api::EventPayload;
use conclave_protocol::{Frame, FrameType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mailbox::{Mailbox, Refused};

/// An event to push, with its encodings computed at most once.
pub(crate) struct PushEvent {
    pub name: std::borrow::Cow<'static, str>,
    pub channel_id: Option<ChannelId>,
    pub pts: Option<u64>,
    pub body: serde_json::Value,
    json_text: OnceLock<Arc<str>>,
    frame: OnceLock<Bytes>,
}

impl PushEvent {
    pub fn new(name: &'static str, body: serde_json::Value) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            channel_id: None,
            pts: None,
            body,
            json_text: OnceLock::new(),
            frame: OnceLock::new(),
        })
    }

    /// An event whose name arrived at run time (from another node).
    pub fn named(name: String, body: serde_json::Value) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            channel_id: None,
            pts: None,
            body,
            json_text: OnceLock::new(),
            frame: OnceLock::new(),
        })
    }

    /// An event of a channel's log: its channel and pts travel with it.
    pub fn for_channel(
        name: String,
        channel_id: ChannelId,
        pts: u64,
        body: serde_json::Value,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            channel_id: Some(channel_id),
            pts: Some(pts),
            body,
            json_text: OnceLock::new(),
            frame: OnceLock::new(),
        })
    }

    /// The JSON-mode text: `{"event":..,"channel_id":..,"pts":..,"body":..}`.
    pub fn json_text(&self) -> Arc<str> {
        self.json_text
            .get_or_init(|| {
                let payload = EventPayload {
                    event: self.name.to_string(),
                    channel_id: self.channel_id,
                    pts: self.pts,
                    body: self.body.clone(),
                };
                serde_json::to_string(&payload).unwrap_or_default().into()
            })
            .clone()
    }

    /// The encoded `Event` frame: channel and pts in the header.
    pub fn frame_bytes(&self) -> Bytes {
        self.frame
            .get_or_init(|| {
                let payload = EventPayload {
                    event: self.name.to_string(),
                    channel_id: None,
                    pts: None,
                    body: self.body.clone(),
                };
                Frame::json(
                    FrameType::Event,
                    self.channel_id.map_or(0, ChannelId::get),
                    self.pts.unwrap_or(0),
                    &payload,
                )
                .and_then(|frame| frame.encode())
                .unwrap_or_default()
            })
            .clone()
    }
}

/// Why a session ends.
#[derive(Debug, Clone)]
pub(crate) struct CloseReason {
    pub code: ErrorCode,
    pub message: String,
}

/// The registry's view of one session.
pub(crate) struct SessionHandle {
    pub id: u64,
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub transport: &'static str,
    events: Mailbox<Arc<PushEvent>>,
    close: CancellationToken,
    reason: Mutex<Option<CloseReason>>,
    /// A close requested by the session's own in-flight request, carried out
    /// right after that request's reply is sent (logout, revoking oneself).
    close_after_reply: Mutex<Option<CloseReason>>,
    /// Whether queued events are delivered. A client that asked to hold them
    /// catches up by sync first and releases them with `sync/session_ready`,
    /// so no live push races ahead of its catch-up.
    live: std::sync::atomic::AtomicBool,
}

impl SessionHandle {
    /// Ends the session now; the first reason given wins.
    pub fn close(&self, code: ErrorCode, message: impl Into<String>) {
        {
            let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
            if reason.is_none() {
                *reason = Some(CloseReason {
                    code,
                    message: message.into(),
                });
            }
        }
        self.close.cancel();
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn closed(&self) -> &CancellationToken {
        &self.close
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    pub fn go_live(&self) {
        self.live.store(true, Ordering::SeqCst);
    }

    /// Called by the transport after it sends a reply.
    pub fn take_close_after_reply(&self) -> Option<CloseReason> {
        self.close_after_reply
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn entry_of(session: &SessionHandle) -> SessionEntry {
    SessionEntry {
        session: session.id,
        user: session.user_id,
        device: session.device_id,
    }
}

/// Queues an event to one session; a full queue disconnects the session
/// (it catches up by sync), so one slow reader never blocks the others.
fn deliver(session: &SessionHandle, event: &Arc<PushEvent>) -> bool {
    match session.events.try_send(event.clone()) {
        Ok(()) => true,
        Err(Refused::Full(_)) => {
            tracing::info!(
                session = session.id,
                "session queue full; disconnecting it to resync"
            );
            session.close(
                ErrorCode::SlowConsumer,
                "too many undelivered events; reconnect and sync",
            );
            false
        }
        Err(Refused::Closed(_)) => false,
    }
}

fn announce(watchers: &[Arc<SessionHandle>], user: UserId, online: bool, now_ms: i64) {
    let event = PushEvent::new(
        conclave_protocol::api::events::PRESENCE_CHANGED,
        serde_json::json!({ "user_id": user, "online": online, "last_seen_ms": now_ms }),
    );
    for watcher in watchers {
        deliver(watcher, &event);
    }
}

impl Registry {
    fn watcher_sessions(&self, user: UserId) -> Vec<Arc<SessionHandle>> {
        self.watchers
            .get(&user)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| self.by_id.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What the transport owns for its session.
pub(crate) struct SessionLink {
    pub handle: Arc<SessionHandle>,
    manager: Arc<SessionManager>,
}

impl SessionLink {
    /// The events queued for this session.
    pub fn events(&self) -> &Mailbox<Arc<PushEvent>> {
        &self.handle.events
    }
}

impl Drop for SessionLink {
    fn drop(&mut self) {
        self.handle.events.close();
        self.manager.remove(&self.handle);
    }
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<u64, Arc<SessionHandle>>,
    by_user: HashMap<UserId, Vec<u64>>,
    /// Presence subscriptions: watched user -> watching sessions.
    watchers: HashMap<UserId, HashSet<u64>>,
    /// The reverse, to clean up when a session ends.
    watching: HashMap<u64, HashSet<UserId>>,
}

/// Users one session may watch for presence changes: a large contact list,
/// but not the whole directory.
pub(crate) const PRESENCE_WATCH_MAX: usize = 2_000;

/// A session starting or ending, reported to the cluster (directory and
/// presence across nodes).
#[derive(Debug, Clone, Copy)]
pub(crate) enum SessionChange {
    Opened { entry: SessionEntry, first: bool },
    Closed { entry: SessionEntry, last: bool },
}

pub(crate) struct SessionManager {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    queue_frames: usize,
    connections: prometheus::IntGaugeVec,
    /// Set when other nodes may exist. Then a user's last session ending
    /// here is not announced as "offline" by this registry: the cluster does
    /// it, after checking the user is not connected elsewhere.
    changes: Option<mpsc::Sender<SessionChange>>,
}

impl SessionManager {
    pub fn new(
        queue_frames: usize,
        connections: prometheus::IntGaugeVec,
        changes: Option<mpsc::Sender<SessionChange>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            queue_frames: queue_frames.max(1),
            connections,
            changes,
        })
    }

    fn report(&self, change: SessionChange) {
        if let Some(changes) = &self.changes {
            // A closed queue means the cluster worker stopped (shutdown).
            if let Err(mpsc::error::TrySendError::Full(_)) = changes.try_send(change) {
                tracing::warn!("the presence directory is behind; a session change was dropped");
            }
        }
    }

    /// Tells this node's watchers of `user` that it went online or offline
    /// (a change seen on another node, or settled by the cluster).
    pub fn announce_presence(&self, user: UserId, online: bool, at_ms: i64) {
        let watchers = self.lock().watcher_sessions(user);
        if !watchers.is_empty() {
            announce(&watchers, user, online, at_ms);
        }
    }

    /// Every session on this node, for directory heartbeats.
    pub fn entries(&self) -> Vec<SessionEntry> {
        self.lock().by_id.values().map(|s| entry_of(s)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session; it is removed when the returned link drops. With
    /// `hold_events`, events queue until `sync/session_ready`.
    pub fn open(
        self: &Arc<Self>,
        user_id: UserId,
        device_id: DeviceId,
        transport: &'static str,
        hold_events: bool,
    ) -> SessionLink {
        let handle = Arc::new(SessionHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user_id,
            device_id,
            transport,
            events: Mailbox::new(self.queue_frames),
            close: CancellationToken::new(),
            reason: Mutex::new(None),
            close_after_reply: Mutex::new(None),
            live: std::sync::atomic::AtomicBool::new(!hold_events),
        });
        let (first, watchers) = {
            let mut registry = self.lock();
            registry.by_id.insert(handle.id, handle.clone());
            let sessions = registry.by_user.entry(user_id).or_default();
            sessions.push(handle.id);
            // The first session brings the user online.
            if sessions.len() == 1 {
                (true, registry.watcher_sessions(user_id))
            } else {
                (false, Vec::new())
            }
        };
        self.connections.with_label_values(&[transport]).inc();
        self.report(SessionChange::Opened {
            entry: entry_of(&handle),
            first,
        });
        if !watchers.is_empty() {
            announce(&watchers, user_id, true, crate::unix_ms());
        }
        SessionLink {
            handle,
            manager: self.clone(),
        }
    }

    fn remove(&self, handle: &SessionHandle) {
        let (went_offline, watchers) = {
            let mut registry = self.lock();
            if registry.by_id.remove(&handle.id).is_some() {
                self.connections
                    .with_label_values(&[handle.transport])
                    .dec();
            }
            if let Some(watched) = registry.watching.remove(&handle.id) {
                for user in watched {
                    if let Some(set) = registry.watchers.get_mut(&user) {
                        set.remove(&handle.id);
                        if set.is_empty() {
                            registry.watchers.remove(&user);
                        }
                    }
                }
            }
            let mut went_offline = false;
            if let Some(ids) = registry.by_user.get_mut(&handle.user_id) {
                ids.retain(|id| *id != handle.id);
                if ids.is_empty() {
                    registry.by_user.remove(&handle.user_id);
                    went_offline = true;
                }
            }
            let watchers = if went_offline && self.changes.is_none() {
                registry.watcher_sessions(handle.user_id)
            } else {
                Vec::new()
            };
            (went_offline, watchers)
        };
        self.report(SessionChange::Closed {
            entry: entry_of(handle),
            last: went_offline,
        });
        if !watchers.is_empty() {
            announce(&watchers, handle.user_id, false, crate::unix_ms());
        }
    }

    /// Subscribes a session to presence changes of `users`; refuses (with the
    /// limit) when the session would watch more than [`PRESENCE_WATCH_MAX`].
    pub fn watch(&self, session: u64, users: &[UserId]) -> Result<(), usize> {
        let mut registry = self.lock();
        let watched = registry.watching.get(&session);
        let current = watched.map_or(0, HashSet::len);
        let fresh = users
            .iter()
            .filter(|u| !watched.is_some_and(|w| w.contains(u)))
            .count();
        if current + fresh > PRESENCE_WATCH_MAX {
            return Err(PRESENCE_WATCH_MAX);
        }
        for user in users {
            registry.watchers.entry(*user).or_default().insert(session);
            registry.watching.entry(session).or_default().insert(*user);
        }
        Ok(())
    }

    pub fn unwatch(&self, session: u64, users: &[UserId]) {
        let mut registry = self.lock();
        for user in users {
            if let Some(set) = registry.watchers.get_mut(user) {
                set.remove(&session);
                if set.is_empty() {
                    registry.watchers.remove(user);
                }
            }
            if let Some(set) = registry.watching.get_mut(&session) {
                set.remove(user);
            }
        }
    }

    /// Ends the presence subscriptions to `watched` of every session whose
    /// user `keep` refuses (after a block or a stricter privacy setting).
    pub fn drop_watchers(&self, watched: UserId, keep: impl Fn(UserId) -> bool) {
        let mut registry = self.lock();
        let Some(watchers) = registry.watchers.get(&watched).cloned() else {
            return;
        };
        for session in watchers {
            let owner = registry.by_id.get(&session).map(|s| s.user_id);
            if owner.is_some_and(&keep) {
                continue;
            }
            if let Some(set) = registry.watchers.get_mut(&watched) {
                set.remove(&session);
            }
            if let Some(set) = registry.watching.get_mut(&session) {
                set.remove(&watched);
            }
        }
        if registry
            .watchers
            .get(&watched)
            .is_some_and(HashSet::is_empty)
        {
            registry.watchers.remove(&watched);
        }
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.lock().by_user.contains_key(&user)
    }

    fn sessions_where(&self, keep: impl Fn(&SessionHandle) -> bool) -> Vec<Arc<SessionHandle>> {
        self.lock()
            .by_id
            .values()
            .filter(|s| keep(s))
            .cloned()
            .collect()
    }

    fn sessions_of(&self, user: UserId) -> Vec<Arc<SessionHandle>> {
        let registry = self.lock();
        registry
            .by_user
            .get(&user)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| registry.by_id.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Queues `event` to every session of `user` except `except`. A session
    /// whose queue is full is disconnected (it will resync).
    pub fn push_to_user(&self, user: UserId, event: &Arc<PushEvent>, except: Option<u64>) -> usize {
        self.push_to_user_where(user, event, |session| Some(session.id) != except)
    }

    /// Queues `event` to the sessions of `user` that `keep` accepts.
    pub fn push_to_user_where(
        &self,
        user: UserId,
        event: &Arc<PushEvent>,
        keep: impl Fn(&SessionHandle) -> bool,
    ) -> usize {
        self.sessions_of(user)
            .iter()
            .filter(|session| keep(session))
            .filter(|session| deliver(session, event))
            .count()
    }

    /// Ends every session of these devices. `spare` (the caller's own
    /// session) is closed right after its current reply instead.
    pub fn close_devices(
        &self,
        devices: &[DeviceId],
        code: ErrorCode,
        message: &str,
        spare: Option<u64>,
    ) -> usize {
        let sessions = self.sessions_where(|s| devices.contains(&s.device_id));
        for session in &sessions {
            if Some(session.id) == spare {
                *session
                    .close_after_reply
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(CloseReason {
                    code,
                    message: message.to_owned(),
                });
            } else {
                session.close(code, message);
            }
        }
        sessions.len()
    }

    pub fn session(&self, id: u64) -> Option<Arc<SessionHandle>> {
        self.lock().by_id.get(&id).cloned()
    }

    pub fn device_session_count(&self, device: DeviceId) -> u32 {
        self.lock()
            .by_id
            .values()
            .filter(|s| s.device_id == device)
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(queue_frames: usize) -> Arc<SessionManager> {
        let gauge = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("test_connections", "sessions"),
            &["transport"],
        )
        .unwrap();
        SessionManager::new(queue_frames, gauge, None)
    }

    #[tokio::test]
    async fn events_arrive_in_order_and_a_full_queue_ends_the_session() {
        let sessions = manager(2);
        let user = UserId::new(7);
        let link = sessions.open(user, DeviceId::new(1), "websocket", false);
        for n in 1..=2 {
            let event = PushEvent::new("test/event", serde_json::json!({ "n": n }));
            assert_eq!(sessions.push_to_user(user, &event, None), 1);
        }
        assert!(!link.handle.closed().is_cancelled());

        // A third event does not fit: the session is told to resync.
        let event = PushEvent::new("test/event", serde_json::json!({ "n": 3 }));
        assert_eq!(sessions.push_to_user(user, &event, None), 0);
        assert!(link.handle.closed().is_cancelled());
        assert_eq!(link.handle.reason().unwrap().code, ErrorCode::SlowConsumer);

        let first = link.events().recv().await.unwrap();
        let second = link.events().recv().await.unwrap();
        assert_eq!(
            (first.body["n"].clone(), second.body["n"].clone()),
            (1.into(), 2.into())
        );
    }

    #[tokio::test]
    async fn an_ended_session_is_no_longer_a_target() {
        let sessions = manager(8);
        let user = UserId::new(7);
        let link = sessions.open(user, DeviceId::new(1), "websocket", false);
        let handle = link.handle.clone();
        drop(link);
        let event = PushEvent::new("test/event", serde_json::json!({}));
        assert_eq!(sessions.push_to_user(user, &event, None), 0);
        assert!(!deliver(&handle, &event));
    }
}

//! Live sessions: who is connected, on which device, over which transport.
//!
//! Every authenticated connection registers a session here. Pushed events
//! are encoded once per wire format and the same bytes are queued to every
//! target session. Each session's queue is bounded
//! (`limits.session_send_queue_frames`); a session whose queue is full is
//! disconnected with `slow_consumer` and catches up by sync when it returns,
//! so one slow reader never makes the server buffer without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use conclave_core::{ChannelId, DeviceId, ErrorCode, UserId};
use conclave_protocol::api::EventPayload;
use conclave_protocol::{Frame, FrameType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    events: mpsc::Sender<Arc<PushEvent>>,
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

/// What the transport owns for its session.
pub(crate) struct SessionLink {
    pub handle: Arc<SessionHandle>,
    pub events: mpsc::Receiver<Arc<PushEvent>>,
    manager: Arc<SessionManager>,
}

impl Drop for SessionLink {
    fn drop(&mut self) {
        self.manager.remove(&self.handle);
    }
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<u64, Arc<SessionHandle>>,
    by_user: HashMap<UserId, Vec<u64>>,
}

pub(crate) struct SessionManager {
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    queue_frames: usize,
    connections: prometheus::IntGaugeVec,
}

impl SessionManager {
    pub fn new(queue_frames: usize, connections: prometheus::IntGaugeVec) -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            queue_frames: queue_frames.max(1),
            connections,
        })
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
        let (events_tx, events_rx) = mpsc::channel(self.queue_frames);
        let handle = Arc::new(SessionHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user_id,
            device_id,
            transport,
            events: events_tx,
            close: CancellationToken::new(),
            reason: Mutex::new(None),
            close_after_reply: Mutex::new(None),
            live: std::sync::atomic::AtomicBool::new(!hold_events),
        });
        {
            let mut registry = self.lock();
            registry.by_id.insert(handle.id, handle.clone());
            registry.by_user.entry(user_id).or_default().push(handle.id);
        }
        self.connections.with_label_values(&[transport]).inc();
        SessionLink {
            handle,
            events: events_rx,
            manager: self.clone(),
        }
    }

    fn remove(&self, handle: &SessionHandle) {
        let mut registry = self.lock();
        if registry.by_id.remove(&handle.id).is_some() {
            self.connections
                .with_label_values(&[handle.transport])
                .dec();
        }
        if let Some(ids) = registry.by_user.get_mut(&handle.user_id) {
            ids.retain(|id| *id != handle.id);
            if ids.is_empty() {
                registry.by_user.remove(&handle.user_id);
            }
        }
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
        let mut delivered = 0;
        for session in self.sessions_of(user) {
            if Some(session.id) == except {
                continue;
            }
            match session.events.try_send(event.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(
                        session = session.id,
                        "session queue full; disconnecting it to resync"
                    );
                    session.close(
                        ErrorCode::SlowConsumer,
                        "too many undelivered events; reconnect and sync",
                    );
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
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

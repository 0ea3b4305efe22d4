//! This node's place in a cluster of nodes sharing one database.
//!
//! What one node must tell the others travels on the bus as a
//! [`BusMessage`]: committed channel events, pushes to a user's sessions,
//! presence changes and device kicks. Channel events go through the
//! fan-out's sequencer on every node, so sessions see each channel in pts
//! order whatever node committed it. The presence and session directory
//! (Redis) answers "is this user connected anywhere else?".
//!
//! On a single node (`cluster.bus = "local"`) the bus publishes nothing and
//! the directory is empty: everything stays in process.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conclave_cluster::{Bus, BusKind, Directory, LocalDirectory, NodeId, RedisDirectory};
use conclave_config::Config;
use conclave_core::{ChannelId, DeviceId, DocumentId, ErrorCode, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sessions::{PushEvent, SessionChange, SessionManager};

/// Messages waiting to be published. When the bus is this far behind (or
/// down), further messages are dropped and counted; receivers repair
/// channel gaps from the database and clients resync.
const OUTBOUND_CAPACITY: usize = 65_536;

/// Session starts and ends waiting for the directory. Beyond this many (the
/// directory is down or slow) a change is dropped: heartbeats re-add the
/// live sessions, and an entry whose end was dropped expires with the TTL.
const SESSION_CHANGES_CAPACITY: usize = 65_536;

/// What nodes tell each other.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum BusMessage {
    /// A committed channel event, rendered, with who hears it live.
    Channel {
        event: String,
        channel_id: ChannelId,
        pts: u64,
        body: serde_json::Value,
        recipients: Vec<UserId>,
        /// Sessions of this device already have it (the sender's answer).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender_device: Option<DeviceId>,
    },
    /// An event for every session of some users (profile, inbox, typing).
    Users {
        users: Vec<UserId>,
        event: String,
        body: serde_json::Value,
    },
    Presence {
        user: UserId,
        online: bool,
        at_ms: i64,
    },
    CloseDevices {
        devices: Vec<DeviceId>,
        code: String,
        message: String,
    },
    /// Yjs updates (v1, base64) a node stored for a document.
    DocumentUpdates {
        document: DocumentId,
        updates: Vec<String>,
    },
    /// Awareness states a node's editors changed (an awareness update,
    /// base64), for the editors of the document on other nodes.
    DocumentAwareness {
        document: DocumentId,
        update: String,
    },
    /// A Hocuspocus stateless message, for the document's Hocuspocus
    /// connections on other nodes.
    DocumentStateless {
        document: DocumentId,
        payload: String,
    },
}

impl BusMessage {
    pub fn encode(&self) -> Bytes {
        // Serializing plain data to JSON cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

pub(crate) struct Cluster {
    bus: Arc<dyn Bus>,
    directory: Arc<dyn Directory>,
    outbound: mpsc::Sender<Bytes>,
    pub heartbeat_ttl: Duration,
    dropped: prometheus::IntCounter,
}

/// What the server state keeps of the cluster: the cluster, and where the
/// session registry reports session starts and ends (`None` on one node).
pub(crate) struct ClusterLink {
    pub cluster: Arc<Cluster>,
    pub session_changes: Option<mpsc::Sender<SessionChange>>,
}

/// What starting the cluster hands to the rest of the server.
pub(crate) struct ClusterParts {
    pub cluster: Arc<Cluster>,
    /// Payloads from other nodes, for the fan-out.
    pub inbound: mpsc::Receiver<Bytes>,
    /// Session starts and ends, for [`run_directory`]; `None` on one node.
    pub changes: Option<(mpsc::Sender<SessionChange>, mpsc::Receiver<SessionChange>)>,
    /// Publishes queued messages in order until shutdown; spawn it.
    pub publisher: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Cluster {
    pub async fn start(
        config: &Config,
        dropped: prometheus::IntCounter,
        stop: CancellationToken,
    ) -> anyhow::Result<ClusterParts> {
        use anyhow::Context as _;
        let settings = &config.cluster;
        let node = NodeId::random()?;
        let kind = match settings.bus {
            conclave_config::BusKind::Local => BusKind::Local,
            conclave_config::BusKind::Redis => BusKind::Redis,
            conclave_config::BusKind::Nats => BusKind::Nats,
        };
        let bus_url = match kind {
            BusKind::Local => None,
            BusKind::Redis => settings.redis_url.as_ref(),
            BusKind::Nats => settings.nats_url.as_ref(),
        };
        let (bus, inbound) = conclave_cluster::connect_bus(
            kind,
            bus_url.map(|u| u.expose()),
            &settings.namespace,
            node.clone(),
            stop.clone(),
        )
        .await
        .with_context(|| {
            format!(
                "connecting the {} cluster bus{}",
                bus_kind_name(kind),
                bus_url.map(|u| format!(" at {u}")).unwrap_or_default()
            )
        })?;
        let heartbeat_ttl = Duration::from_millis(settings.heartbeat_ttl_ms);
        let directory: Arc<dyn Directory> = match (&settings.redis_url, bus.is_clustered()) {
            (Some(url), true) => Arc::new(
                RedisDirectory::connect(
                    url.expose(),
                    &settings.namespace,
                    node.clone(),
                    heartbeat_ttl,
                )
                .await
                .with_context(|| format!("connecting the presence directory at {url}"))?,
            ),
            _ => Arc::new(LocalDirectory),
        };
        let (outbound_tx, outbound) = mpsc::channel(OUTBOUND_CAPACITY);
        let publisher = Box::pin(run_publisher(bus.clone(), outbound, stop));
        let changes = bus
            .is_clustered()
            .then(|| mpsc::channel(SESSION_CHANGES_CAPACITY));
        tracing::info!(node = %node, bus = bus.kind(), "cluster membership");
        Ok(ClusterParts {
            cluster: Arc::new(Cluster {
                bus,
                directory,
                outbound: outbound_tx,
                heartbeat_ttl,
                dropped,
            }),
            inbound,
            changes,
            publisher,
        })
    }

    pub fn is_clustered(&self) -> bool {
        self.bus.is_clustered()
    }

    /// Queues a message for the other nodes (nothing on a single node).
    pub fn publish(&self, message: &BusMessage) {
        if !self.is_clustered() {
            return;
        }
        if self.outbound.try_send(message.encode()).is_err() {
            self.dropped.inc();
            tracing::warn!("the cluster bus is backed up; a message to other nodes was dropped");
        }
    }

    /// Queues `event` to every session of `user` on every node, except the
    /// local session `except`.
    pub fn push_to_user(
        &self,
        sessions: &SessionManager,
        user: UserId,
        event: &Arc<PushEvent>,
        except: Option<u64>,
    ) {
        self.push_to_users(sessions, &[user], event, except);
    }

    /// [`Self::push_to_user`] for several users, with one bus message.
    pub fn push_to_users(
        &self,
        sessions: &SessionManager,
        users: &[UserId],
        event: &Arc<PushEvent>,
        except: Option<u64>,
    ) {
        for user in users {
            sessions.push_to_user(*user, event, except);
        }
        if self.is_clustered() && !users.is_empty() {
            self.publish(&BusMessage::Users {
                users: users.to_vec(),
                event: event.name.to_string(),
                body: event.body.clone(),
            });
        }
    }

    /// Ends the sessions of these devices on every node (see
    /// [`SessionManager::close_devices`] for `spare`).
    pub fn close_devices(
        &self,
        sessions: &SessionManager,
        devices: &[DeviceId],
        code: ErrorCode,
        message: &str,
        spare: Option<u64>,
    ) -> usize {
        self.publish(&BusMessage::CloseDevices {
            devices: devices.to_vec(),
            code: code.as_str().to_owned(),
            message: message.to_owned(),
        });
        sessions.close_devices(devices, code, message, spare)
    }

    /// Whether the user has a session on any node. A directory that cannot
    /// be reached counts as "not elsewhere" (logged).
    pub async fn is_online(&self, sessions: &SessionManager, user: UserId) -> bool {
        if sessions.is_online(user) {
            return true;
        }
        self.directory
            .online_elsewhere(user)
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(error = %err, "presence directory unreachable");
                false
            })
    }

    /// Sessions of the device on every node.
    pub async fn device_session_count(&self, sessions: &SessionManager, device: DeviceId) -> u32 {
        let here = sessions.device_session_count(device);
        let elsewhere = self
            .directory
            .device_sessions_elsewhere(device)
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(error = %err, "presence directory unreachable");
                0
            });
        here + elsewhere
    }

    /// Applies what another node said that is not a channel event.
    pub fn apply(&self, sessions: &SessionManager, message: BusMessage) {
        match message {
            BusMessage::Channel { .. }
            | BusMessage::DocumentUpdates { .. }
            | BusMessage::DocumentAwareness { .. }
            | BusMessage::DocumentStateless { .. } => {}
            BusMessage::Users { users, event, body } => {
                let event = PushEvent::named(event, body);
                for user in users {
                    sessions.push_to_user(user, &event, None);
                }
            }
            BusMessage::Presence {
                user,
                online,
                at_ms,
            } => sessions.announce_presence(user, online, at_ms),
            BusMessage::CloseDevices {
                devices,
                code,
                message,
            } => {
                let code = ErrorCode::from_wire(&code).unwrap_or(ErrorCode::SessionKicked);
                sessions.close_devices(&devices, code, &message, None);
            }
        }
    }
}

fn bus_kind_name(kind: BusKind) -> &'static str {
    match kind {
        BusKind::Local => "local",
        BusKind::Redis => "Redis",
        BusKind::Nats => "NATS",
    }
}

async fn run_publisher(
    bus: Arc<dyn Bus>,
    mut outbound: mpsc::Receiver<Bytes>,
    stop: CancellationToken,
) {
    loop {
        let payload = tokio::select! {
            () = stop.cancelled() => break,
            next = outbound.recv() => match next {
                Some(payload) => payload,
                None => break,
            },
        };
        if let Err(err) = bus.publish(payload).await {
            tracing::warn!(error = %err, "publishing to the cluster bus failed");
        }
    }
}

/// Keeps the directory in step with this node's sessions, heartbeats it,
/// settles presence when a user's last session here ends, and reaps nodes
/// that died.
pub(crate) async fn run_directory(
    cluster: Arc<Cluster>,
    sessions: Arc<SessionManager>,
    mut changes: mpsc::Receiver<SessionChange>,
    stop: CancellationToken,
) {
    let mut beat = tokio::time::interval(cluster.heartbeat_ttl / 3);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            change = changes.recv() => match change {
                Some(change) => on_change(&cluster, &sessions, change).await,
                None => break,
            },
            _ = beat.tick() => heartbeat(&cluster, &sessions).await,
        }
    }
    if let Err(err) = cluster.directory.leave().await {
        tracing::warn!(error = %err, "could not leave the presence directory");
    }
}

async fn on_change(cluster: &Cluster, sessions: &SessionManager, change: SessionChange) {
    let now = crate::unix_ms();
    match change {
        SessionChange::Opened { entry, first } => {
            if let Err(err) = cluster.directory.opened(entry).await {
                tracing::warn!(error = %err, "presence directory unreachable");
            }
            if first {
                cluster.publish(&BusMessage::Presence {
                    user: entry.user,
                    online: true,
                    at_ms: now,
                });
            }
        }
        SessionChange::Closed { entry, last } => {
            if let Err(err) = cluster.directory.closed(entry, last).await {
                tracing::warn!(error = %err, "presence directory unreachable");
            }
            if last {
                settle_offline(cluster, sessions, entry.user, now).await;
            }
        }
    }
}

/// Announces `user` offline everywhere unless a session remains somewhere.
async fn settle_offline(cluster: &Cluster, sessions: &SessionManager, user: UserId, now: i64) {
    if cluster.is_online(sessions, user).await {
        return;
    }
    sessions.announce_presence(user, false, now);
    cluster.publish(&BusMessage::Presence {
        user,
        online: false,
        at_ms: now,
    });
}

async fn heartbeat(cluster: &Cluster, sessions: &SessionManager) {
    if let Err(err) = cluster.directory.heartbeat(&sessions.entries()).await {
        tracing::warn!(error = %err, "presence heartbeat failed");
        return;
    }
    match cluster.directory.reap_dead_nodes().await {
        Ok(users) => {
            let now = crate::unix_ms();
            for user in users {
                settle_offline(cluster, sessions, user, now).await;
            }
        }
        Err(err) => tracing::warn!(error = %err, "reaping dead nodes failed"),
    }
}

//! Who is connected on the other nodes.
//!
//! Each node records its sessions in the directory and refreshes them with
//! heartbeats; an entry not refreshed within the TTL counts as gone, so the
//! users of a node that dies go offline after the TTL. Presence checks ask
//! "is this user connected on some other node?": the node answers for its
//! own sessions from memory.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use conclave_core::{DeviceId, UserId};

use crate::{ClusterError, NodeId};

/// One session as the directory knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEntry {
    /// Unique on its node.
    pub session: u64,
    pub user: UserId,
    pub device: DeviceId,
}

#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// A session started on this node.
    async fn opened(&self, entry: SessionEntry) -> Result<(), ClusterError>;

    /// A session ended on this node; `last_of_user` when the user has no
    /// other session here.
    async fn closed(&self, entry: SessionEntry, last_of_user: bool) -> Result<(), ClusterError>;

    /// Refreshes this node and every session it holds.
    async fn heartbeat(&self, live: &[SessionEntry]) -> Result<(), ClusterError>;

    /// Whether the user has a live session on another node.
    async fn online_elsewhere(&self, user: UserId) -> Result<bool, ClusterError>;

    /// Live sessions of the device on other nodes.
    async fn device_sessions_elsewhere(&self, device: DeviceId) -> Result<u32, ClusterError>;

    /// Claims the nodes whose heartbeat lapsed (each is claimed by exactly
    /// one surviving node) and returns the users they held, so the claimer
    /// can announce those who are now offline everywhere.
    async fn reap_dead_nodes(&self) -> Result<Vec<UserId>, ClusterError>;

    /// Removes this node's entries (clean shutdown).
    async fn leave(&self) -> Result<(), ClusterError>;
}

/// A single node: nobody is elsewhere.
pub struct LocalDirectory;

#[async_trait]
impl Directory for LocalDirectory {
    async fn opened(&self, _entry: SessionEntry) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn closed(&self, _entry: SessionEntry, _last_of_user: bool) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn heartbeat(&self, _live: &[SessionEntry]) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn online_elsewhere(&self, _user: UserId) -> Result<bool, ClusterError> {
        Ok(false)
    }

    async fn device_sessions_elsewhere(&self, _device: DeviceId) -> Result<u32, ClusterError> {
        Ok(0)
    }

    async fn reap_dead_nodes(&self) -> Result<Vec<UserId>, ClusterError> {
        Ok(Vec::new())
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        Ok(())
    }
}

/// The directory in Redis. Keys, under the namespace `ns`:
/// - `ns:nodes`: sorted set, node id scored by the expiry of its heartbeat;
/// - `ns:node:<node>:users`: set of the users with sessions on that node
///   (read once when the node is reaped);
/// - `ns:user:<id>` and `ns:device:<id>`: sorted sets of `<node>/<session>`
///   scored by expiry.
///
/// Expiry scores are wall-clock milliseconds; nodes' clocks must agree to
/// well within the TTL (NTP does that).
pub struct RedisDirectory {
    connection: redis::aio::ConnectionManager,
    namespace: String,
    node: NodeId,
    ttl: Duration,
}

/// Sessions refreshed per pipelined request.
const HEARTBEAT_SLICE: usize = 1_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl RedisDirectory {
    pub async fn connect(
        url: &str,
        namespace: &str,
        node: NodeId,
        ttl: Duration,
    ) -> Result<Self, ClusterError> {
        let client = redis::Client::open(url)?;
        let connection = client.get_connection_manager().await?;
        Ok(Self {
            connection,
            namespace: namespace.to_owned(),
            node,
            ttl,
        })
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.namespace)
    }

    fn node_users_key(&self, node: &str) -> String {
        format!("{}:node:{node}:users", self.namespace)
    }

    fn user_key(&self, user: UserId) -> String {
        format!("{}:user:{}", self.namespace, user.get())
    }

    fn device_key(&self, device: DeviceId) -> String {
        format!("{}:device:{}", self.namespace, device.get())
    }

    fn member(&self, session: u64) -> String {
        format!("{}/{session}", self.node)
    }

    fn ttl_ms(&self) -> i64 {
        self.ttl.as_millis() as i64
    }

    /// Adds one session's entries (with a fresh expiry) to `pipe`.
    fn add_session(&self, pipe: &mut redis::Pipeline, entry: SessionEntry, expires: i64) {
        let member = self.member(entry.session);
        // Keys outlive their members' expiry a little, so a reader never
        // sees a live member in a key that Redis is about to drop.
        let key_ttl = self.ttl_ms() * 2;
        for key in [self.user_key(entry.user), self.device_key(entry.device)] {
            pipe.cmd("ZADD")
                .arg(&key)
                .arg(expires)
                .arg(&member)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(key_ttl).ignore();
        }
        let users = self.node_users_key(self.node.as_str());
        pipe.cmd("SADD").arg(&users).arg(entry.user.get()).ignore();
        // Kept long enough for another node to reap it after this one dies.
        pipe.cmd("PEXPIRE").arg(&users).arg(key_ttl * 5).ignore();
    }

    /// Live members of a sorted set that belong to other nodes.
    async fn live_elsewhere(&self, key: &str) -> Result<u32, ClusterError> {
        let mut connection = self.connection.clone();
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(key)
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut connection)
            .await?;
        let mine = format!("{}/", self.node);
        Ok(members.iter().filter(|m| !m.starts_with(&mine)).count() as u32)
    }
}

#[async_trait]
impl Directory for RedisDirectory {
    async fn opened(&self, entry: SessionEntry) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        self.add_session(&mut pipe, entry, now_ms() + self.ttl_ms());
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    async fn closed(&self, entry: SessionEntry, last_of_user: bool) -> Result<(), ClusterError> {
        let member = self.member(entry.session);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(self.user_key(entry.user))
            .arg(&member)
            .ignore();
        pipe.cmd("ZREM")
            .arg(self.device_key(entry.device))
            .arg(&member)
            .ignore();
        if last_of_user {
            pipe.cmd("SREM")
                .arg(self.node_users_key(self.node.as_str()))
                .arg(entry.user.get())
                .ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    async fn heartbeat(&self, live: &[SessionEntry]) -> Result<(), ClusterError> {
        let expires = now_ms() + self.ttl_ms();
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(self.nodes_key())
            .arg(expires)
            .arg(self.node.as_str())
            .ignore();
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        // Large directories go in slices, so one heartbeat never builds a
        // single enormous request.
        for slice in live.chunks(HEARTBEAT_SLICE) {
            let mut pipe = redis::pipe();
            for entry in slice {
                self.add_session(&mut pipe, *entry, expires);
            }
            pipe.query_async::<()>(&mut connection).await?;
        }
        Ok(())
    }

    async fn online_elsewhere(&self, user: UserId) -> Result<bool, ClusterError> {
        Ok(self.live_elsewhere(&self.user_key(user)).await? > 0)
    }

    async fn device_sessions_elsewhere(&self, device: DeviceId) -> Result<u32, ClusterError> {
        self.live_elsewhere(&self.device_key(device)).await
    }

    async fn reap_dead_nodes(&self) -> Result<Vec<UserId>, ClusterError> {
        let mut connection = self.connection.clone();
        let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg("-inf")
            .arg(now_ms())
            .query_async(&mut connection)
            .await?;
        let mut users = Vec::new();
        for node in dead {
            // ZREM answers 1 to exactly one of the nodes racing to reap.
            let claimed: i64 = redis::cmd("ZREM")
                .arg(self.nodes_key())
                .arg(&node)
                .query_async(&mut connection)
                .await?;
            if claimed != 1 {
                continue;
            }
            let key = self.node_users_key(&node);
            let held: Vec<u64> = redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut connection)
                .await?;
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(&mut connection)
                .await?;
            // Its sessions may carry a later expiry than its last heartbeat
            // (opened since); remove them now so the users read as offline.
            let prefix = format!("{node}/");
            for user in &held {
                let user_key = self.user_key(UserId::new(*user));
                let members: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&user_key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut connection)
                    .await?;
                let gone: Vec<&String> =
                    members.iter().filter(|m| m.starts_with(&prefix)).collect();
                if !gone.is_empty() {
                    redis::cmd("ZREM")
                        .arg(&user_key)
                        .arg(gone)
                        .query_async::<()>(&mut connection)
                        .await?;
                }
            }
            tracing::info!(%node, users = held.len(), "a node stopped heartbeating; its sessions are gone");
            users.extend(held.into_iter().map(UserId::new));
        }
        users.sort_unstable();
        users.dedup();
        Ok(users)
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        let mut connection = self.connection.clone();
        redis::cmd("ZREM")
            .arg(self.nodes_key())
            .arg(self.node.as_str())
            .query_async::<()>(&mut connection)
            .await?;
        redis::cmd("DEL")
            .arg(self.node_users_key(self.node.as_str()))
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }
}

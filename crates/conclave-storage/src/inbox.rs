//! Each user's inbox: events about the user rather than a channel, with a
//! per-user pts so every device converges by sync.

use async_trait::async_trait;
use conclave_core::UserId;

use crate::StorageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEvent {
    pub user_id: UserId,
    pub pts: u64,
    /// `device/added`, `device/ended`... (the event name clients see).
    pub kind: String,
    /// JSON.
    pub body: String,
    pub created_at_ms: i64,
}

#[async_trait]
pub trait InboxStore: Send + Sync {
    /// Appends an event with the user's next inbox pts.
    async fn append_inbox(
        &self,
        user: UserId,
        kind: &str,
        body: &str,
        now_ms: i64,
    ) -> Result<InboxEvent, StorageError>;
    /// Events after `after_pts`, oldest first, at most `limit`; and the
    /// user's current inbox pts.
    async fn inbox_after(
        &self,
        user: UserId,
        after_pts: u64,
        limit: u32,
    ) -> Result<(Vec<InboxEvent>, u64), StorageError>;
}

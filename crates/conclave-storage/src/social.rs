//! The social graph: friend requests, friendships, blocks, privacy
//! settings and user search.
//!
//! Storage records facts; whether an action is allowed is decided by the
//! server's permission module from these facts.

use async_trait::async_trait;
use conclave_core::{ChannelId, RequestId, UserId};

use crate::{StorageError, UserRecord};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendRequestRecord {
    pub id: RequestId,
    pub from_id: UserId,
    pub to_id: UserId,
    pub message: Option<String>,
    /// `pending`, `accepted`, `rejected` or `recalled`.
    pub status: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendRecord {
    pub friend: UserRecord,
    pub alias: Option<String>,
    pub channel_id: Option<ChannelId>,
    pub since_ms: i64,
}

/// Everything the permission rules need to know about two users, read in
/// one snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relation {
    pub friends: bool,
    /// `a` has blocked `b`.
    pub a_blocked_b: bool,
    /// `b` has blocked `a`.
    pub b_blocked_a: bool,
    /// A pending request from `a` to `b`.
    pub a_requested_b: bool,
    /// A pending request from `b` to `a`.
    pub b_requested_a: bool,
}

/// A user's privacy settings as stored. Values are kept raw: the server
/// reads anything it does not know as the strictest setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivacyRecord {
    pub direct_messages: String,
    pub searchable_by: String,
    pub group_invites: String,
    pub last_seen: String,
}

/// A user whose username matches a search, with what decides whether the
/// searcher may see them.
#[derive(Debug, Clone)]
pub struct SearchCandidate {
    pub user: UserRecord,
    /// `None` when the user has no privacy row (read as the strictest).
    pub privacy: Option<PrivacyRecord>,
    pub relation: Relation,
}

#[async_trait]
pub trait SocialStore: Send + Sync {
    /// Records a pending request. Fails with [`StorageError::Conflict`] when
    /// one is already pending in that direction.
    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        message: Option<&str>,
        now_ms: i64,
    ) -> Result<FriendRequestRecord, StorageError>;
    /// Pending requests from or to the user, newest first.
    async fn pending_requests(
        &self,
        user: UserId,
    ) -> Result<Vec<FriendRequestRecord>, StorageError>;
    /// Ends the pending request from `from` to `to` with `status`
    /// (`rejected` or `recalled`); `None` when none was pending.
    async fn close_request(
        &self,
        from: UserId,
        to: UserId,
        status: &str,
        now_ms: i64,
    ) -> Result<Option<FriendRequestRecord>, StorageError>;
    /// Accepts the pending request from `from` to `to` and makes them
    /// friends (both rows, with their direct channel), in one transaction.
    /// `None` when none was pending.
    async fn accept_request(
        &self,
        from: UserId,
        to: UserId,
        channel: ChannelId,
        now_ms: i64,
    ) -> Result<Option<FriendRequestRecord>, StorageError>;
    /// Ends a friendship on both sides; false when there was none.
    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<bool, StorageError>;
    /// The user's friends, by username.
    async fn friends(&self, user: UserId) -> Result<Vec<FriendRecord>, StorageError>;
    /// Sets the user's alias for a friend; false when they are not friends.
    async fn set_alias(
        &self,
        user: UserId,
        friend: UserId,
        alias: Option<&str>,
    ) -> Result<bool, StorageError>;
    async fn relation(&self, a: UserId, b: UserId) -> Result<Relation, StorageError>;

    /// Blocks `target`; pending requests between the two are closed (and
    /// returned). False (and nothing closed) when already blocked.
    async fn block(
        &self,
        user: UserId,
        target: UserId,
        now_ms: i64,
    ) -> Result<Option<Vec<FriendRequestRecord>>, StorageError>;
    async fn unblock(&self, user: UserId, target: UserId) -> Result<bool, StorageError>;
    /// Users the user has blocked, with when, newest first.
    async fn blocked(&self, user: UserId) -> Result<Vec<(UserRecord, i64)>, StorageError>;

    async fn privacy(&self, user: UserId) -> Result<Option<PrivacyRecord>, StorageError>;
    /// Replaces the user's settings (creating the row if it is missing).
    async fn set_privacy(
        &self,
        user: UserId,
        privacy: &PrivacyRecord,
        now_ms: i64,
    ) -> Result<(), StorageError>;

    /// Users other than `searcher` whose case-folded username starts with
    /// `prefix` and sorts after `after`, in username order, at most `limit`.
    async fn search_users(
        &self,
        searcher: UserId,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SearchCandidate>, StorageError>;
}

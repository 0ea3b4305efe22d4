//! Channels, members, messages and each channel's event log.
//!
//! Every change to a channel is an event with the channel's next `pts`,
//! allocated in the transaction that stores it. Committed events are also
//! sent to the stream returned by [`MessageStore::commits`], which feeds
//! live fan-out and, through it, the cluster bus.

use async_trait::async_trait;
use conclave_core::{ChannelId, DeviceId, MessageId, UserId};

use crate::StorageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Direct,
    Group,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Direct => "direct",
            ChannelKind::Group => "group",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    pub id: ChannelId,
    pub kind: ChannelKind,
    pub title: Option<String>,
    pub pts: u64,
    pub last_message_pts: u64,
    pub last_activity_at_ms: i64,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub channel_id: ChannelId,
    pub user_id: UserId,
    pub role: String,
    pub joined_pts: u64,
    pub read_pts: u64,
    pub pinned: bool,
    pub hidden_until_pts: Option<u64>,
    pub notifications_muted: bool,
    pub send_muted_until_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub id: MessageId,
    pub channel_id: ChannelId,
    pub pts: u64,
    pub sender_id: UserId,
    pub sender_device_id: DeviceId,
    pub client_msg_id: String,
    /// JSON; `None` once revoked.
    pub content: Option<String>,
    pub reply_to: Option<MessageId>,
    /// JSON.
    pub mentions: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revoked_by: Option<UserId>,
    pub pinned: bool,
}

/// Who hears about an event live. Every member can fetch every event by
/// sync either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Members,
    /// The actor's own devices only (a read receipt in a group).
    Actor,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub channel_id: ChannelId,
    pub pts: u64,
    /// `message`, `revoke`, `reaction`, `read`, `pin`...
    pub kind: String,
    pub message_id: Option<MessageId>,
    pub actor_id: UserId,
    pub audience: Audience,
    /// Event-specific JSON; message events carry their message beside it.
    pub body: String,
    pub created_at_ms: i64,
    /// The message a `message` event created, as it is now.
    pub message: Option<MessageRecord>,
}

/// A committed event and who should hear about it live.
#[derive(Debug, Clone)]
pub struct Committed {
    pub event: EventRecord,
    /// Members of the channel (already narrowed by the event's audience).
    pub recipients: Vec<UserId>,
    /// The session that caused it, which has its answer already.
    pub origin_session: Option<u64>,
}

/// One channel in a user's conversation list.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    pub channel: ChannelRecord,
    pub member: MemberRecord,
    /// The other user of a direct channel.
    pub peer_user_id: Option<UserId>,
    pub last_message: Option<MessageRecord>,
    pub unread_count: u64,
}

#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub channel_id: ChannelId,
    pub sender_id: UserId,
    pub sender_device_id: DeviceId,
    pub client_msg_id: &'a str,
    pub content: &'a str,
    /// Indexed for full-text search.
    pub search_text: Option<&'a str>,
    pub reply_to: Option<MessageId>,
    pub mentions: &'a str,
    pub now_ms: i64,
    pub origin_session: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum SendOutcome {
    Sent(EventRecord),
    /// The same (sender, device, client_msg_id) was sent before: nothing new
    /// was stored.
    Duplicate(MessageRecord),
}

/// A change to one's own view of a channel.
#[derive(Debug, Clone, Copy)]
pub enum MemberFlag {
    Pinned(bool),
    NotificationsMuted(bool),
    /// Hide until a newer message arrives.
    Hidden,
}

/// A reaction change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReactionOp {
    Add,
    Remove,
}

#[async_trait]
pub trait MessageStore: Send + Sync {
    /// The stream of events this process committed, each once, after its
    /// commit. SQLite sends them in commit order; PostgreSQL's concurrent
    /// transactions may send a channel's events slightly out of pts order.
    /// It can be taken once.
    fn commits(&self) -> Option<tokio::sync::mpsc::Receiver<Committed>>;

    /// The direct channel between two users, created (with both as members)
    /// if it does not exist. Returns whether it was created.
    async fn direct_channel(
        &self,
        a: UserId,
        b: UserId,
        now_ms: i64,
    ) -> Result<(ChannelRecord, bool), StorageError>;
    async fn channel(&self, id: ChannelId) -> Result<Option<ChannelRecord>, StorageError>;
    async fn member(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<MemberRecord>, StorageError>;
    /// The channel and `user`'s membership in it; `None` when `user` is not
    /// a member (or the channel does not exist). Backends may read both at
    /// once; this default reads one after the other.
    async fn membership(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<(ChannelRecord, MemberRecord)>, StorageError> {
        let Some(member) = self.member(channel, user).await? else {
            return Ok(None);
        };
        Ok(self.channel(channel).await?.map(|record| (record, member)))
    }
    async fn members(&self, channel: ChannelId) -> Result<Vec<MemberRecord>, StorageError>;
    /// The user's channels, pinned first, then by last activity.
    async fn channel_list(
        &self,
        user: UserId,
        include_hidden: bool,
    ) -> Result<Vec<ChannelSummary>, StorageError>;
    async fn set_member_flag(
        &self,
        channel: ChannelId,
        user: UserId,
        flag: MemberFlag,
    ) -> Result<bool, StorageError>;

    /// Stores a message and its event with the channel's next pts. Fails
    /// with [`StorageError::NotFound`] when the sender is not a member, and
    /// [`StorageError::Invalid`] for a reply to a message of another channel.
    async fn send_message(&self, message: NewMessage<'_>) -> Result<SendOutcome, StorageError>;
    async fn message(&self, id: MessageId) -> Result<Option<MessageRecord>, StorageError>;

    /// Erases a message's content and appends a `revoke` event. `None` when
    /// the message is already revoked.
    async fn revoke_message(
        &self,
        message: MessageId,
        actor: UserId,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<Option<EventRecord>, StorageError>;

    /// Adds or removes a reaction; `None` when nothing changed.
    async fn react(
        &self,
        message: MessageId,
        user: UserId,
        emoji: &str,
        op: ReactionOp,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<Option<EventRecord>, StorageError>;
    /// (emoji, users) per emoji, in first-reaction order.
    async fn reactions(
        &self,
        message: MessageId,
    ) -> Result<Vec<(String, Vec<UserId>)>, StorageError>;
    async fn set_pinned(
        &self,
        message: MessageId,
        actor: UserId,
        pinned: bool,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<Option<EventRecord>, StorageError>;

    /// Moves the user's read cursor forward (never back) and appends a
    /// `read` event when it moved. Returns the cursor and the event.
    async fn mark_read(
        &self,
        channel: ChannelId,
        user: UserId,
        pts: u64,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<(u64, Option<EventRecord>), StorageError>;
    async fn unread_count(&self, channel: ChannelId, user: UserId) -> Result<u64, StorageError>;
    /// Members whose read cursor has reached `pts`.
    async fn readers(&self, channel: ChannelId, pts: u64) -> Result<Vec<UserId>, StorageError>;

    /// Events after `after_pts` visible to a member, oldest first, at most
    /// `limit`; and the channel's current pts.
    async fn events_after(
        &self,
        channel: ChannelId,
        after_pts: u64,
        limit: u32,
    ) -> Result<(Vec<EventRecord>, u64), StorageError>;
    /// Messages before `before_pts` (newest first), at most `limit`.
    async fn messages_before(
        &self,
        channel: ChannelId,
        before_pts: u64,
        min_pts: u64,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError>;
    /// Messages from `from_pts` on (oldest first), at most `limit`.
    async fn messages_from(
        &self,
        channel: ChannelId,
        from_pts: u64,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError>;
    /// Full-text search over the channels `user` is a member of (or one of
    /// them), newest first.
    async fn search(
        &self,
        user: UserId,
        words: &[String],
        channel: Option<ChannelId>,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError>;
    /// Current pts of each of the user's channels.
    async fn channel_heads(&self, user: UserId) -> Result<Vec<(ChannelId, u64)>, StorageError>;
}

//! Channels, messages, receipts, reactions and sync.

use conclave_core::{ChannelId, MessageId, UserId};
use serde::{Deserialize, Serialize};

use super::Empty;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Direct,
    Group,
}

/// What a message says. Every kind but `text` refers to a file, a place or
/// another object; `system` is written by the server only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Content {
    Text {
        text: String,
    },
    Image {
        file_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thumbnail_file_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    Audio {
        file_id: String,
        duration_ms: u64,
    },
    Video {
        file_id: String,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thumbnail_file_id: Option<String>,
    },
    File {
        file_id: String,
        name: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mime: Option<String>,
    },
    Location {
        latitude: f64,
        longitude: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    Sticker {
        sticker_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pack_id: Option<String>,
    },
    /// A contact card: another user.
    Card {
        user_id: UserId,
    },
    /// A copy of another message, made by `message/forward`.
    Forward {
        from_channel_id: ChannelId,
        from_message_id: MessageId,
        original_sender_id: UserId,
        original: Box<Content>,
    },
    /// Written by the server (for example "X recalled a message").
    System {
        text: String,
    },
}

impl Content {
    /// The words search should find this message by.
    pub fn search_text(&self) -> Option<String> {
        match self {
            Content::Text { text } | Content::System { text } => Some(text.clone()),
            Content::Image { caption, .. } => caption.clone(),
            Content::File { name, .. } => Some(name.clone()),
            Content::Location { title, address, .. } => {
                let joined = [title.as_deref(), address.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                (!joined.is_empty()).then_some(joined)
            }
            Content::Forward { original, .. } => original.search_text(),
            _ => None,
        }
    }
}

/// Who a message mentions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mentions {
    #[serde(default)]
    pub user_ids: Vec<UserId>,
    /// `@all`.
    #[serde(default)]
    pub all: bool,
}

/// A message as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    pub message_id: MessageId,
    pub channel_id: ChannelId,
    pub pts: u64,
    pub sender_id: UserId,
    pub client_msg_id: String,
    /// `None` once revoked: revoked content is not served.
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    #[serde(default)]
    pub mentions: Mentions,
    pub server_ts: i64,
    pub revoked: bool,
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelView {
    pub channel_id: ChannelId,
    pub kind: ChannelKind,
    pub title: Option<String>,
    /// The other user of a direct channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_user_id: Option<UserId>,
    pub last_message: Option<MessageView>,
    pub unread_count: u64,
    pub pts: u64,
    pub read_pts: u64,
    pub pinned: bool,
    pub hidden: bool,
    pub muted: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelList {
    /// Include channels hidden with `channel/hide`.
    #[serde(default)]
    pub include_hidden: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelListResponse {
    pub channels: Vec<ChannelView>,
}
route!(ChannelList, "channel/list", ChannelListResponse);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectGetOrCreate {
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectChannel {
    pub channel_id: ChannelId,
    pub created: bool,
}
route!(
    DirectGetOrCreate,
    "channel/direct/get_or_create",
    DirectChannel
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelPin {
    pub channel_id: ChannelId,
    #[serde(default = "yes")]
    pub pinned: bool,
}
route!(ChannelPin, "channel/pin", Empty);

/// Hides a channel from the list until a new message arrives in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelHide {
    pub channel_id: ChannelId,
}
route!(ChannelHide, "channel/hide", Empty);

/// Silences notifications for a channel (messages still arrive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelMute {
    pub channel_id: ChannelId,
    #[serde(default = "yes")]
    pub muted: bool,
}
route!(ChannelMute, "channel/mute", Empty);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSend {
    pub channel_id: ChannelId,
    /// Chosen by the client, unique per device: a retry with the same id
    /// returns the first result and creates nothing.
    pub client_msg_id: String,
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<Mentions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSent {
    pub message_id: MessageId,
    pub pts: u64,
    pub server_ts: i64,
    /// True when this answers a retry of an earlier send.
    pub duplicate: bool,
}
route!(MessageSend, "message/send", MessageSent);

/// Copies a message the caller can see into another channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageForward {
    pub from_channel_id: ChannelId,
    pub message_id: MessageId,
    pub to_channel_id: ChannelId,
    pub client_msg_id: String,
}
route!(MessageForward, "message/forward", MessageSent);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRevoke {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub pts: u64,
}
route!(MessageRevoke, "message/revoke", Revoked);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryGet {
    pub channel_id: ChannelId,
    /// Messages older than this pts; the newest when absent.
    #[serde(default)]
    pub before_pts: Option<u64>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Oldest first.
    pub messages: Vec<MessageView>,
    pub has_more: bool,
}
route!(HistoryGet, "message/history/get", HistoryPage);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryAround {
    pub channel_id: ChannelId,
    pub pts: u64,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryWindow {
    pub messages: Vec<MessageView>,
    pub has_more_before: bool,
    pub has_more_after: bool,
}
route!(HistoryAround, "message/history/around", HistoryWindow);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySearch {
    pub query: String,
    #[serde(default)]
    pub channel_id: Option<ChannelId>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    /// Newest first.
    pub messages: Vec<MessageView>,
}
route!(HistorySearch, "message/history/search", SearchResults);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadPts {
    pub channel_id: ChannelId,
    pub pts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadCursor {
    pub channel_id: ChannelId,
    /// The cursor now: never lower than before.
    pub read_pts: u64,
    pub unread_count: u64,
}
route!(ReadPts, "message/status/read_pts", ReadCursor);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRead {
    pub items: Vec<ReadPts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReadResponse {
    pub cursors: Vec<ReadCursor>,
}
route!(BatchRead, "message/status/batch_read", BatchReadResponse);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnreadCount {
    pub channel_id: ChannelId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadCountResponse {
    pub unread_count: u64,
}
route!(UnreadCount, "message/status/count", UnreadCountResponse);

/// Who has read a message (its pts is at or below their read cursor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadList {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadListResponse {
    pub readers: Vec<UserId>,
}
route!(ReadList, "message/status/read_list", ReadListResponse);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadStats {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStatsResponse {
    pub read_count: u64,
    /// Members other than the sender.
    pub recipient_count: u64,
}
route!(ReadStats, "message/status/read_stats", ReadStatsResponse);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactionChange {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
    pub emoji: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionChanged {
    /// The event's pts; `None` when nothing changed.
    pub pts: Option<u64>,
}

/// `message/reaction/add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReactionAdd(pub ReactionChange);
route!(ReactionAdd, "message/reaction/add", ReactionChanged);

/// `message/reaction/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReactionRemove(pub ReactionChange);
route!(ReactionRemove, "message/reaction/remove", ReactionChanged);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactionList {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionGroup {
    pub emoji: String,
    pub user_ids: Vec<UserId>,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionListResponse {
    pub reactions: Vec<ReactionGroup>,
}
route!(ReactionList, "message/reaction/list", ReactionListResponse);

/// `message/reaction/stats`: counts per emoji, without the users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReactionStats(pub ReactionList);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionStatsResponse {
    pub counts: Vec<(String, u64)>,
}
route!(
    ReactionStats,
    "message/reaction/stats",
    ReactionStatsResponse
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagePinChange {
    pub channel_id: ChannelId,
    pub message_id: MessageId,
}

/// `message/pin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessagePin(pub MessagePinChange);
route!(MessagePin, "message/pin", ReactionChanged);

/// `message/unpin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageUnpin(pub MessagePinChange);
route!(MessageUnpin, "message/unpin", ReactionChanged);

/// One event of a channel's log, as sync returns it and as it is pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelEvent {
    pub channel_id: ChannelId,
    pub pts: u64,
    /// The event name: `message/new`, `message/revoked`, `message/reaction`,
    /// `message/read`, `message/pinned`.
    pub event: String,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetDifference {
    pub channel_id: ChannelId,
    pub last_pts: u64,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub events: Vec<ChannelEvent>,
    pub current_pts: u64,
    pub has_more: bool,
}
route!(GetDifference, "sync/get_difference", Difference);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetChannelPts {
    pub channel_id: ChannelId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPts {
    pub channel_id: ChannelId,
    pub pts: u64,
}
route!(GetChannelPts, "sync/get_channel_pts", ChannelPts);

/// The heads of the caller's channels (all of them when `channel_ids` is
/// absent), so a reconnecting device sees which moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchGetChannelPts {
    #[serde(default)]
    pub channel_ids: Option<Vec<ChannelId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPtsList {
    pub channels: Vec<ChannelPts>,
}
route!(
    BatchGetChannelPts,
    "sync/batch_get_channel_pts",
    ChannelPtsList
);

/// An entry of the user's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    pub pts: u64,
    /// `device/added`, `device/ended`; later friend requests and invitations.
    pub event: String,
    pub body: serde_json::Value,
    pub server_ts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetInboxDifference {
    pub last_pts: u64,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxDifference {
    pub events: Vec<InboxEntry>,
    pub current_pts: u64,
    pub has_more: bool,
}
route!(
    GetInboxDifference,
    "sync/get_inbox_difference",
    InboxDifference
);

/// Ends catch-up: events held for this session (connected with
/// `hold_events`) are delivered from now on. Returns the channel heads so the
/// client can check it caught up with each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionReady {}
route!(SessionReady, "sync/session_ready", ChannelPtsList);

fn yes() -> bool {
    true
}

//! Presence (online, last seen) and typing indicators.

use conclave_core::{ChannelId, UserId};
use serde::{Deserialize, Serialize};

use super::Empty;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatus {
    pub user_id: UserId,
    pub online: bool,
    /// When the user was last connected (unix ms); `None` if never seen.
    pub last_seen_ms: Option<i64>,
}

/// Starts `presence/changed` events for these users on this session, and
/// returns their current status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    pub user_ids: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusList {
    pub statuses: Vec<PresenceStatus>,
}
route!(Subscribe, "presence/subscribe", StatusList);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    pub user_ids: Vec<UserId>,
}
route!(Unsubscribe, "presence/unsubscribe", Empty);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusGet {
    pub user_id: UserId,
}
route!(StatusGet, "presence/status/get", PresenceStatus);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusBatchGet {
    pub user_ids: Vec<UserId>,
}
route!(StatusBatchGet, "presence/status/batch_get", StatusList);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypingState {
    Start,
    Stop,
}

/// Tells the channel's other online members that the caller is typing.
/// Ephemeral: not stored, not synced, rate limited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    pub channel_id: ChannelId,
    pub state: TypingState,
}
route!(Typing, "presence/typing", Empty);

//! Friends and the blacklist.
//!
//! Every change is also an inbox entry for both users (or, for the
//! blacklist, for the blocker alone), so all their devices converge through
//! `sync/get_inbox_difference`.

use conclave_core::{ChannelId, RequestId, UserId};
use serde::{Deserialize, Serialize};

use super::Empty;
use super::account::UserCard;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    Accepted,
    Rejected,
    Recalled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRequestView {
    pub request_id: RequestId,
    pub from_user_id: UserId,
    pub to_user_id: UserId,
    pub message: Option<String>,
    pub status: RequestStatus,
    pub created_at_ms: i64,
}

/// Asks `user_id` to be friends. When `user_id` has already asked the
/// caller, this accepts that request instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendApply {
    pub user_id: UserId,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendApplied {
    pub request: FriendRequestView,
    /// The direct channel, when the apply accepted a crossing request.
    pub channel_id: Option<ChannelId>,
}
route!(FriendApply, "contact/friend/apply", FriendApplied);

/// Accepts the pending request from `user_id`; creates (or reuses) the
/// direct channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendAccept {
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendAccepted {
    pub user_id: UserId,
    pub channel_id: ChannelId,
}
route!(FriendAccept, "contact/friend/accept", FriendAccepted);

/// Declines the pending request from `user_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendReject {
    pub user_id: UserId,
}
route!(FriendReject, "contact/friend/reject", Empty);

/// Withdraws the caller's pending request to `user_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendRecall {
    pub user_id: UserId,
}
route!(FriendRecall, "contact/friend/recall", Empty);

/// Ends the friendship on both sides. The direct channel and its history
/// stay; whether it can still be written follows the privacy settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendRemove {
    pub user_id: UserId,
}
route!(FriendRemove, "contact/friend/remove", Empty);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendView {
    pub user: UserCard,
    /// The caller's private name for this friend.
    pub alias: Option<String>,
    pub channel_id: Option<ChannelId>,
    pub since_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendListResponse {
    pub friends: Vec<FriendView>,
}
route!(FriendList, "contact/friend/list", FriendListResponse);

/// Pending requests to and from the caller, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendPending {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendPendingResponse {
    pub incoming: Vec<FriendRequestView>,
    pub outgoing: Vec<FriendRequestView>,
}
route!(
    FriendPending,
    "contact/friend/pending",
    FriendPendingResponse
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendCheck {
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendStatus {
    pub user_id: UserId,
    pub is_friend: bool,
    /// The caller asked `user_id` and is waiting.
    pub request_sent: bool,
    /// `user_id` asked the caller and is waiting.
    pub request_received: bool,
}
route!(FriendCheck, "contact/friend/check", FriendStatus);

/// Sets (or, with `null`, clears) the caller's private name for a friend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendSetAlias {
    pub user_id: UserId,
    #[serde(default)]
    pub alias: Option<String>,
}
route!(FriendSetAlias, "contact/friend/set_alias", Empty);

/// Blocks `user_id`: they can no longer message the caller, ask to be
/// friends, add the caller to groups or see the caller's presence. Pending
/// requests between the two are withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistAdd {
    pub user_id: UserId,
}
route!(BlacklistAdd, "contact/blacklist/add", Empty);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistRemove {
    pub user_id: UserId,
}
route!(BlacklistRemove, "contact/blacklist/remove", Empty);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedView {
    pub user: UserCard,
    pub since_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlacklistListResponse {
    pub users: Vec<BlockedView>,
}
route!(
    BlacklistList,
    "contact/blacklist/list",
    BlacklistListResponse
);

/// Whether the caller has blocked `user_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistCheck {
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStatus {
    pub user_id: UserId,
    pub blocked: bool,
}
route!(BlacklistCheck, "contact/blacklist/check", BlockStatus);

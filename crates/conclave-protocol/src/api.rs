//! The RPC schema shared by the server and its clients.
//!
//! Each request type implements [`Route`], which names its route and its
//! response type once; the server's route table and the client SDK are both
//! built from these declarations, so they cannot disagree about a route.
//!
//! Requests and responses are JSON objects on every transport; this module
//! also defines the envelopes around them (binary frames carry the same
//! JSON inside `RpcRequest`/`RpcResponse`/`Event` frames).

/// Binds a request type to its route name, access rule and response type.
/// Authenticated unless an access rule is given.
macro_rules! route {
    ($request:ty, $name:literal, $response:ty) => {
        route!($request, $name, Authenticated, $response);
    };
    ($request:ty, $name:literal, $access:ident, $response:ty) => {
        impl $crate::api::Route for $request {
            const NAME: &'static str = $name;
            const ACCESS: $crate::api::Access = $crate::api::Access::$access;
            type Response = $response;
        }
    };
}

pub mod account;
pub mod contacts;
pub mod documents;
pub mod files;
pub mod groups;
pub mod messaging;
pub mod presence;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token (registration, login, refresh).
    Public,
    /// A logged-in device.
    Authenticated,
}

/// A request type, bound to its route name and its response type.
pub trait Route: Serialize + DeserializeOwned + Send + 'static {
    const NAME: &'static str;
    const ACCESS: Access;
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// An empty request or response body: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The error object every transport uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable snake_case code from the error table.
    pub code: String,
    pub message: String,
    /// For `rate_limited`: how long to wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The payload of a binary `RpcRequest` frame (the request id is the
/// frame's sequence number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestPayload {
    pub route: String,
    #[serde(default = "empty_object")]
    pub body: serde_json::Value,
}

/// A JSON-mode request on the WebSocket: the same fields plus the id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonRequest {
    pub id: u64,
    pub route: String,
    #[serde(default = "empty_object")]
    pub body: serde_json::Value,
}

/// The payload of a binary `RpcResponse` frame, and (with `id`) a JSON-mode
/// response. The body is a JSON tree by default; a sender holding encoded
/// JSON, or a reader that parses the body into a type later, uses
/// `Box<serde_json::value::RawValue>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponsePayload<B = serde_json::Value> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<B>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A pushed event. In a binary `Event` frame, `channel_id` and `pts` travel
/// in the frame header and are omitted here; in JSON mode they are fields.
/// The body is a JSON tree by default; a reader that parses it into a type
/// later uses `Box<serde_json::value::RawValue>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPayload<B = serde_json::Value> {
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<conclave_core::ChannelId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pts: Option<u64>,
    pub body: B,
}

/// The payload of a `Goaway` frame (and the close reason of a WebSocket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoawayPayload {
    pub code: String,
    pub message: String,
}

/// The first frame a client sends on a QUIC connection (an `Auth` frame):
/// its access token and the protocol versions it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthPayload {
    pub token: String,
    #[serde(default = "default_versions")]
    pub supported_versions: Vec<u32>,
    /// Hold pushed events until `sync/session_ready`.
    #[serde(default)]
    pub hold_events: bool,
}

/// The server's answer once a connection is authenticated (an `Ack` frame;
/// on TCP+Noise the first encrypted frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckPayload {
    pub session_id: conclave_core::SessionId,
    pub user_id: conclave_core::UserId,
    pub device_id: conclave_core::DeviceId,
    pub protocol_version: u32,
    /// How often the server pings; the client should send something at
    /// least this often too.
    pub heartbeat_interval_ms: u64,
}

/// The highest version both sides speak, if any.
pub fn negotiate_version(client: &[u32]) -> Option<u32> {
    client
        .iter()
        .copied()
        .filter(|v| *v == crate::PROTOCOL_VERSION)
        .max()
}

fn default_versions() -> Vec<u32> {
    vec![crate::PROTOCOL_VERSION]
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Names of the events the server pushes.
pub mod events {
    /// This session is being closed because its device was kicked, revoked
    /// or logged out; the body says why.
    pub const SESSION_KICKED: &str = "session/kicked";
    /// The user's profile changed (pushed to the user's own devices).
    pub const USER_UPDATED: &str = "user/updated";
    /// A new entry in the user's inbox (pushed to the user's own devices);
    /// the body is the entry as `sync/get_inbox_difference` returns it.
    pub const INBOX_NEW: &str = "inbox/new";
    /// Inbox entry: a device logged in to the account.
    pub const DEVICE_ADDED: &str = "device/added";
    /// Inbox entry: devices were signed out (kicked, logged out) or removed.
    pub const DEVICE_ENDED: &str = "device/ended";
    /// A message was stored in a channel.
    pub const MESSAGE_NEW: &str = "message/new";
    /// A message was revoked; its content is gone.
    pub const MESSAGE_REVOKED: &str = "message/revoked";
    /// A reaction was added or removed.
    pub const MESSAGE_REACTION: &str = "message/reaction";
    /// A member's read cursor moved.
    pub const MESSAGE_READ: &str = "message/read";
    /// A message was pinned or unpinned.
    pub const MESSAGE_PINNED: &str = "message/pinned";
    /// A watched user came online or went offline.
    pub const PRESENCE_CHANGED: &str = "presence/changed";
    /// Someone in a channel started or stopped typing (not stored).
    pub const TYPING: &str = "typing";

    /// Inbox entries about friends (delivered to both users).
    pub const FRIEND_REQUEST: &str = "friend/request";
    pub const FRIEND_ACCEPTED: &str = "friend/accepted";
    pub const FRIEND_REJECTED: &str = "friend/rejected";
    pub const FRIEND_RECALLED: &str = "friend/recalled";
    pub const FRIEND_REMOVED: &str = "friend/removed";
    pub const FRIEND_ALIAS: &str = "friend/alias";
    /// Inbox entries about the blacklist (the blocker's own devices).
    pub const BLACKLIST_ADDED: &str = "blacklist/added";
    pub const BLACKLIST_REMOVED: &str = "blacklist/removed";
    /// Inbox entry: the user's privacy settings changed.
    pub const PRIVACY_UPDATED: &str = "privacy/updated";
    /// Inbox entry: the user is now a member of a group.
    pub const GROUP_JOINED: &str = "group/joined";
    /// Inbox entry: the user is no longer a member (left, kicked, dissolved).
    pub const GROUP_REMOVED: &str = "group/removed";
    /// Inbox entry: the user was invited and waits for an admin's approval.
    pub const GROUP_INVITED: &str = "group/invited";
    /// Inbox entry: a join request waits for this admin's decision.
    pub const GROUP_APPROVAL: &str = "group/approval";
    /// Inbox entry: the user's join request was declined.
    pub const GROUP_DECLINED: &str = "group/declined";
    /// Inbox entry: the user's role in a group changed.
    pub const GROUP_ROLE_CHANGED: &str = "group/role_changed";
    /// Inbox entry: the user was muted or unmuted in a group.
    pub const GROUP_MEMBER_MUTED: &str = "group/member_muted";
}

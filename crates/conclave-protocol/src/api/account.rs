//! Accounts, authentication and devices.

use conclave_core::{DeviceId, UserId};
use serde::{Deserialize, Serialize};

use super::Empty;

/// Tokens handed out by register, login and refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthGrant {
    pub user_id: UserId,
    pub device_id: DeviceId,
    /// Short-lived access token: `Authorization: Bearer <token>`.
    pub token: String,
    pub token_expires_in_secs: u64,
    /// Long-lived, single-use token for `account/auth/refresh`.
    pub refresh_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub device_name: Option<String>,
    /// Hex X25519 public key this device will prove in the Noise handshake.
    #[serde(default)]
    pub noise_public_key: Option<String>,
}
route!(Register, "account/user/register", Public, AuthGrant);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub device_name: Option<String>,
    /// Log in again on this device (kept if it is the user's and active).
    #[serde(default)]
    pub device_id: Option<DeviceId>,
    #[serde(default)]
    pub noise_public_key: Option<String>,
}
route!(Login, "account/auth/login", Public, AuthGrant);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    pub refresh_token: String,
}
route!(Refresh, "account/auth/refresh", Public, AuthGrant);

/// Ends this device's login: its tokens stop working and its live sessions
/// close.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logout {}
route!(Logout, "account/auth/logout", Authenticated, Empty);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
    pub avatar_file_id: Option<String>,
    pub bio: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDetail {
    /// Whose profile; the caller's own when absent.
    #[serde(default)]
    pub user_id: Option<UserId>,
}
route!(
    UserDetail,
    "account/user/detail",
    Authenticated,
    UserProfile
);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[serde(default)]
    pub display_name: Option<String>,
    /// A file id; JSON `null` removes the avatar, absence keeps it.
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub avatar_file_id: Option<Option<String>>,
    #[serde(default)]
    pub bio: Option<String>,
}
route!(
    UserUpdate,
    "account/user/update",
    Authenticated,
    UserProfile
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device_id: DeviceId,
    pub name: String,
    pub created_at_ms: i64,
    pub last_seen_at_ms: i64,
    /// The device making this request.
    pub current: bool,
    /// Whether the device can use the Noise-encrypted TCP transport.
    pub has_noise_key: bool,
    /// Live connections the device has right now (on this node).
    pub online_sessions: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceListResponse {
    pub devices: Vec<DeviceInfo>,
}
route!(DeviceList, "device/list", Authenticated, DeviceListResponse);

/// Devices whose logins ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesEnded {
    pub device_ids: Vec<DeviceId>,
}

/// Removes a device: its tokens stop working, its sessions close, and it
/// must log in anew (as a new device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRevoke {
    pub device_id: DeviceId,
}
route!(DeviceRevoke, "device/revoke", Authenticated, DevicesEnded);

/// Revokes every device but the caller's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRevokeAll {}
route!(
    DeviceRevokeAll,
    "device/revoke_all",
    Authenticated,
    DevicesEnded
);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdateName {
    pub device_id: DeviceId,
    pub name: String,
}
route!(DeviceUpdateName, "device/update_name", Authenticated, Empty);

/// Signs a device out: its tokens stop working and its sessions close; it
/// stays in the device list and may log in again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceKick {
    pub device_id: DeviceId,
}
route!(DeviceKick, "device/kick", Authenticated, DevicesEnded);

/// Kicks every device but the caller's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceKickOthers {}
route!(
    DeviceKickOthers,
    "device/kick_others",
    Authenticated,
    DevicesEnded
);

/// Tells "absent" (keep) from `null` (clear) for optional fields.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Option<String>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            None => serializer.serialize_none(),
            Some(inner) => inner.serialize(serializer),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(deserializer).map(Some)
    }
}

/// Who a privacy setting lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    Everyone,
    Friends,
    Nobody,
}

/// The caller's privacy settings. Each is enforced by every route it
/// affects; a blocked user is refused whatever the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privacy {
    /// Who may start or continue a direct conversation (`everyone` or
    /// `friends`; `nobody` is refused as input).
    pub direct_messages: Audience,
    /// Who finds the user by username prefix in `account/search/query`.
    pub searchable_by: Audience,
    /// Who may add the user to groups (directly or by an invitation).
    pub group_invites: Audience,
    /// Who sees the user's presence: online status and last seen.
    pub last_seen: Audience,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyGet {}
route!(PrivacyGet, "account/privacy/get", Privacy);

/// Changes the given settings; absent ones stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyUpdate {
    #[serde(default)]
    pub direct_messages: Option<Audience>,
    #[serde(default)]
    pub searchable_by: Option<Audience>,
    #[serde(default)]
    pub group_invites: Option<Audience>,
    #[serde(default)]
    pub last_seen: Option<Audience>,
}
route!(PrivacyUpdate, "account/privacy/update", Privacy);

/// Another user as search, share cards and contact lists show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCard {
    pub user_id: UserId,
    pub username: String,
    pub display_name: String,
    pub avatar_file_id: Option<String>,
    pub is_friend: bool,
}

/// Users whose username starts with `query` (case-insensitive) and whose
/// privacy lets the caller find them, in username order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSearch {
    pub query: String,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSearchResults {
    pub users: Vec<UserCard>,
    /// Present when there may be more results.
    pub next_cursor: Option<String>,
}
route!(UserSearch, "account/search/query", UserSearchResults);

/// A signed code that resolves to the caller (for a QR code or a link).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareCard {
    /// How long the code stays valid; the server default when absent.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A signed, expiring code (a user's share card or a group's invitation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareCode {
    pub code: String,
    pub expires_at_ms: i64,
}
route!(ShareCard, "account/user/share_card", ShareCode);

/// Resolves a share card to its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByQrcode {
    pub code: String,
}
route!(ByQrcode, "account/search/by_qrcode", UserCard);

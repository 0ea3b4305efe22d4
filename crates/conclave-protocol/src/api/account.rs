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

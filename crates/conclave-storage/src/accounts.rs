//! Accounts and devices.

use async_trait::async_trait;
use conclave_core::{DeviceId, UserId};

use crate::StorageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    pub password_hash: String,
    pub display_name: String,
    pub avatar_file_id: Option<String>,
    pub bio: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub display_name: &'a str,
    pub now_ms: i64,
}

/// Profile fields a user may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    pub display_name: Option<String>,
    /// `Some(None)` clears the avatar.
    pub avatar_file_id: Option<Option<String>>,
    pub bio: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub user_id: UserId,
    pub name: String,
    pub noise_public_key: Option<[u8; 32]>,
    pub token_epoch: i64,
    pub refresh_expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub last_seen_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl DeviceRecord {
    pub fn is_active(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}

/// A fresh device, or a new login on an existing one.
#[derive(Debug, Clone)]
pub struct DeviceLogin<'a> {
    pub user_id: UserId,
    /// Reuse this device if it is the user's and still active; otherwise a
    /// new device is created.
    pub existing: Option<DeviceId>,
    pub name: &'a str,
    /// `None` keeps the key an existing device already has.
    pub noise_public_key: Option<[u8; 32]>,
    pub refresh_hash: [u8; 32],
    pub refresh_expires_at_ms: i64,
    /// Active devices a user may have; creating one more fails with
    /// [`StorageError::LimitReached`].
    pub max_devices: u32,
    pub now_ms: i64,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Fails with [`StorageError::Conflict`] when the username (ignoring
    /// case) is taken.
    async fn create_user(&self, user: NewUser<'_>) -> Result<UserRecord, StorageError>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StorageError>;
    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StorageError>;
    async fn update_profile(
        &self,
        id: UserId,
        update: ProfileUpdate,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StorageError>;

    /// Creates a device, or renews the login of an existing active one (new
    /// refresh token; same id and epoch). Enforces the device cap in the same
    /// transaction.
    async fn login_device(&self, login: DeviceLogin<'_>) -> Result<DeviceRecord, StorageError>;
    async fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>, StorageError>;
    /// The user's active devices, oldest first.
    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>, StorageError>;
    /// Replaces the refresh token whose hash is `old_hash` (single use):
    /// returns the device, or `None` when no active device holds an
    /// unexpired token with that hash.
    async fn rotate_refresh(
        &self,
        old_hash: [u8; 32],
        new_hash: [u8; 32],
        new_expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<Option<DeviceRecord>, StorageError>;
    /// Invalidates every token of these devices of `user` (epoch + 1, refresh
    /// token dropped); with `revoke` the devices are removed for good.
    /// Returns the devices actually affected.
    async fn end_device_sessions(
        &self,
        user: UserId,
        devices: &[DeviceId],
        revoke: bool,
        now_ms: i64,
    ) -> Result<Vec<DeviceId>, StorageError>;
    async fn rename_device(
        &self,
        user: UserId,
        device: DeviceId,
        name: &str,
    ) -> Result<bool, StorageError>;
    /// Records when each device was last connected, in one transaction. A
    /// time earlier than the one stored is ignored; unknown devices are
    /// skipped.
    async fn touch_devices(&self, seen: &[(DeviceId, i64)]) -> Result<(), StorageError>;
    /// The latest time any of the user's devices was seen, if ever.
    async fn last_seen(&self, user: UserId) -> Result<Option<i64>, StorageError>;
}

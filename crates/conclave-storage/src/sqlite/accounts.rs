//! [`AccountStore`] on SQLite.

use async_trait::async_trait;
use conclave_core::{DeviceId, UserId};

use super::sql_id as id;
use super::{BACKEND, SqliteStorage, is_unique_violation};
use crate::metrics::timed;
use crate::{
    AccountStore, DeviceLogin, DeviceRecord, NewUser, ProfileUpdate, StorageError, UserRecord,
};

const USER_COLUMNS: &str =
    "id, username, password_hash, display_name, avatar_file_id, bio, created_at, updated_at";
const DEVICE_COLUMNS: &str = "id, user_id, name, noise_public_key, token_epoch, refresh_expires_at, \
                              created_at, last_seen_at, revoked_at";

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    username: String,
    password_hash: String,
    display_name: String,
    avatar_file_id: Option<String>,
    bio: String,
    created_at: i64,
    updated_at: i64,
}

impl From<UserRow> for UserRecord {
    fn from(row: UserRow) -> Self {
        UserRecord {
            id: UserId::new(row.id as u64),
            username: row.username,
            password_hash: row.password_hash,
            display_name: row.display_name,
            avatar_file_id: row.avatar_file_id,
            bio: row.bio,
            created_at_ms: row.created_at,
            updated_at_ms: row.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: i64,
    user_id: i64,
    name: String,
    noise_public_key: Option<Vec<u8>>,
    token_epoch: i64,
    refresh_expires_at: Option<i64>,
    created_at: i64,
    last_seen_at: i64,
    revoked_at: Option<i64>,
}

impl From<DeviceRow> for DeviceRecord {
    fn from(row: DeviceRow) -> Self {
        DeviceRecord {
            id: DeviceId::new(row.id as u64),
            user_id: UserId::new(row.user_id as u64),
            name: row.name,
            // A stored key of the wrong length cannot prove anything; treat
            // it as absent (the handshake then refuses the device).
            noise_public_key: row.noise_public_key.and_then(|k| k.try_into().ok()),
            token_epoch: row.token_epoch,
            refresh_expires_at_ms: row.refresh_expires_at,
            created_at_ms: row.created_at,
            last_seen_at_ms: row.last_seen_at,
            revoked_at_ms: row.revoked_at,
        }
    }
}

#[async_trait]
impl AccountStore for SqliteStorage {
    async fn create_user(&self, user: NewUser<'_>) -> Result<UserRecord, StorageError> {
        timed(BACKEND, "create_user", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let row: UserRow = sqlx::query_as(&format!(
                "INSERT INTO users (username, username_key, password_hash, display_name, bio, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, '', ?, ?) RETURNING {USER_COLUMNS}"
            ))
            .bind(user.username)
            .bind(user.username.to_lowercase())
            .bind(user.password_hash)
            .bind(user.display_name)
            .bind(user.now_ms)
            .bind(user.now_ms)
            .fetch_one(&mut *tx)
            .await
            .map_err(|err| {
                if is_unique_violation(&err) {
                    StorageError::Conflict(format!("username `{}` is taken", user.username))
                } else {
                    err.into()
                }
            })?;
            // Every account starts with the default privacy settings.
            sqlx::query("INSERT INTO privacy_settings (user_id, updated_at) VALUES (?, ?)")
                .bind(row.id)
                .bind(user.now_ms)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row.into())
        })
        .await
    }

    async fn user_by_id(&self, user: UserId) -> Result<Option<UserRecord>, StorageError> {
        timed(BACKEND, "user_by_id", async {
            let row: Option<UserRow> =
                sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
                    .bind(id(user.get()))
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(row.map(Into::into))
        })
        .await
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StorageError> {
        timed(BACKEND, "user_by_username", async {
            let row: Option<UserRow> = sqlx::query_as(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE username_key = ?"
            ))
            .bind(username.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(Into::into))
        })
        .await
    }

    async fn update_profile(
        &self,
        user: UserId,
        update: ProfileUpdate,
        now_ms: i64,
    ) -> Result<Option<UserRecord>, StorageError> {
        timed(BACKEND, "update_profile", async {
            let _writer = self.write_lock.lock().await;
            let (set_avatar, avatar) = match update.avatar_file_id {
                Some(avatar) => (true, avatar),
                None => (false, None),
            };
            let row: Option<UserRow> = sqlx::query_as(&format!(
                "UPDATE users SET \
                   display_name = COALESCE(?, display_name), \
                   avatar_file_id = CASE WHEN ? THEN ? ELSE avatar_file_id END, \
                   bio = COALESCE(?, bio), \
                   updated_at = ? \
                 WHERE id = ? RETURNING {USER_COLUMNS}"
            ))
            .bind(update.display_name)
            .bind(set_avatar)
            .bind(avatar)
            .bind(update.bio)
            .bind(now_ms)
            .bind(id(user.get()))
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(Into::into))
        })
        .await
    }

    async fn login_device(&self, login: DeviceLogin<'_>) -> Result<DeviceRecord, StorageError> {
        timed(BACKEND, "login_device", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            if let Some(existing) = login.existing {
                let renewed: Option<DeviceRow> = sqlx::query_as(&format!(
                    "UPDATE devices SET name = ?, noise_public_key = COALESCE(?, noise_public_key), \
                       refresh_hash = ?, refresh_expires_at = ?, last_seen_at = ? \
                     WHERE id = ? AND user_id = ? AND revoked_at IS NULL RETURNING {DEVICE_COLUMNS}"
                ))
                .bind(login.name)
                .bind(login.noise_public_key.map(|k| k.to_vec()))
                .bind(login.refresh_hash.to_vec())
                .bind(login.refresh_expires_at_ms)
                .bind(login.now_ms)
                .bind(id(existing.get()))
                .bind(id(login.user_id.get()))
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = renewed {
                    tx.commit().await?;
                    return Ok(row.into());
                }
            }
            let (active,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM devices WHERE user_id = ? AND revoked_at IS NULL")
                    .bind(id(login.user_id.get()))
                    .fetch_one(&mut *tx)
                    .await?;
            if active >= i64::from(login.max_devices) {
                return Err(StorageError::LimitReached(format!(
                    "the account already has {active} devices (the limit is {})",
                    login.max_devices
                )));
            }
            let row: DeviceRow = sqlx::query_as(&format!(
                "INSERT INTO devices (user_id, name, noise_public_key, refresh_hash, refresh_expires_at, \
                   created_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {DEVICE_COLUMNS}"
            ))
            .bind(id(login.user_id.get()))
            .bind(login.name)
            .bind(login.noise_public_key.map(|k| k.to_vec()))
            .bind(login.refresh_hash.to_vec())
            .bind(login.refresh_expires_at_ms)
            .bind(login.now_ms)
            .bind(login.now_ms)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(row.into())
        })
        .await
    }

    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StorageError> {
        timed(BACKEND, "device", async {
            let row: Option<DeviceRow> = sqlx::query_as(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?"
            ))
            .bind(id(device.get()))
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(Into::into))
        })
        .await
    }

    async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRecord>, StorageError> {
        timed(BACKEND, "devices_of", async {
            let rows: Vec<DeviceRow> = sqlx::query_as(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ? AND revoked_at IS NULL ORDER BY id"
            ))
            .bind(id(user.get()))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(Into::into).collect())
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        old_hash: [u8; 32],
        new_hash: [u8; 32],
        new_expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<Option<DeviceRecord>, StorageError> {
        timed(BACKEND, "rotate_refresh", async {
            let _writer = self.write_lock.lock().await;
            let row: Option<DeviceRow> = sqlx::query_as(&format!(
                "UPDATE devices SET refresh_hash = ?, refresh_expires_at = ?, last_seen_at = ? \
                 WHERE refresh_hash = ? AND revoked_at IS NULL AND refresh_expires_at > ? \
                 RETURNING {DEVICE_COLUMNS}"
            ))
            .bind(new_hash.to_vec())
            .bind(new_expires_at_ms)
            .bind(now_ms)
            .bind(old_hash.to_vec())
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(Into::into))
        })
        .await
    }

    async fn end_device_sessions(
        &self,
        user: UserId,
        devices: &[DeviceId],
        revoke: bool,
        now_ms: i64,
    ) -> Result<Vec<DeviceId>, StorageError> {
        timed(BACKEND, "end_device_sessions", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let mut ended = Vec::new();
            for device in devices {
                let row: Option<(i64,)> = sqlx::query_as(
                    "UPDATE devices SET token_epoch = token_epoch + 1, refresh_hash = NULL, \
                       refresh_expires_at = NULL, revoked_at = CASE WHEN ? THEN ? ELSE revoked_at END \
                     WHERE id = ? AND user_id = ? AND revoked_at IS NULL RETURNING id",
                )
                .bind(revoke)
                .bind(now_ms)
                .bind(id(device.get()))
                .bind(id(user.get()))
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((ended_id,)) = row {
                    ended.push(DeviceId::new(ended_id as u64));
                }
            }
            tx.commit().await?;
            Ok(ended)
        })
        .await
    }

    async fn rename_device(
        &self,
        user: UserId,
        device: DeviceId,
        name: &str,
    ) -> Result<bool, StorageError> {
        timed(BACKEND, "rename_device", async {
            let _writer = self.write_lock.lock().await;
            let result = sqlx::query(
                "UPDATE devices SET name = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
            )
            .bind(name)
            .bind(id(device.get()))
            .bind(id(user.get()))
            .execute(&self.pool)
            .await?;
            Ok(result.rows_affected() == 1)
        })
        .await
    }

    async fn touch_devices(&self, seen: &[(DeviceId, i64)]) -> Result<(), StorageError> {
        if seen.is_empty() {
            return Ok(());
        }
        timed(BACKEND, "touch_devices", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            for (device, at_ms) in seen {
                sqlx::query("UPDATE devices SET last_seen_at = MAX(last_seen_at, ?) WHERE id = ?")
                    .bind(at_ms)
                    .bind(id(device.get()))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn last_seen(&self, user: UserId) -> Result<Option<i64>, StorageError> {
        timed(BACKEND, "last_seen", async {
            let (seen,): (Option<i64>,) =
                sqlx::query_as("SELECT MAX(last_seen_at) FROM devices WHERE user_id = ?")
                    .bind(id(user.get()))
                    .fetch_one(&self.pool)
                    .await?;
            Ok(seen)
        })
        .await
    }
}

//! [`AccountStore`] on PostgreSQL.

use async_trait::async_trait;
use conclave_core::{DeviceId, UserId};

use super::sql_id as id;
use super::{BACKEND, Fail, PostgresStorage, is_unique_violation, retrying, unsigned};
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
            id: UserId::new(unsigned(row.id)),
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
            id: DeviceId::new(unsigned(row.id)),
            user_id: UserId::new(unsigned(row.user_id)),
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

impl PostgresStorage {
    async fn create_user_once(&self, user: &NewUser<'_>) -> Result<UserRecord, Fail> {
        let mut tx = self.pool.begin().await?;
        // The unique index on the case-folded name decides between
        // concurrent sign-ups on any node: the later one fails here.
        let row: UserRow = sqlx::query_as(&format!(
            "INSERT INTO users (username, username_key, password_hash, display_name, bio, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, '', $5, $5) RETURNING {USER_COLUMNS}"
        ))
        .bind(user.username)
        .bind(user.username.to_lowercase())
        .bind(user.password_hash)
        .bind(user.display_name)
        .bind(user.now_ms)
        .fetch_one(&mut *tx)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                Fail::Refused(StorageError::Conflict(format!(
                    "username `{}` is taken",
                    user.username
                )))
            } else {
                err.into()
            }
        })?;
        // Every account starts with the default privacy settings.
        sqlx::query("INSERT INTO privacy_settings (user_id, updated_at) VALUES ($1, $2)")
            .bind(row.id)
            .bind(user.now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    async fn login_device_once(&self, login: &DeviceLogin<'_>) -> Result<DeviceRecord, Fail> {
        let mut tx = self.pool.begin().await?;
        if let Some(existing) = login.existing {
            let renewed: Option<DeviceRow> = sqlx::query_as(&format!(
                "UPDATE devices SET name = $1, noise_public_key = COALESCE($2, noise_public_key), \
                   refresh_hash = $3, refresh_expires_at = $4, last_seen_at = $5 \
                 WHERE id = $6 AND user_id = $7 AND revoked_at IS NULL RETURNING {DEVICE_COLUMNS}"
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
        // Logins of one user queue on the user's row, so two of them (on
        // any nodes) cannot both see room for one more device.
        sqlx::query("SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id(login.user_id.get()))
            .execute(&mut *tx)
            .await?;
        let (active,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM devices WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(id(login.user_id.get()))
        .fetch_one(&mut *tx)
        .await?;
        if active >= i64::from(login.max_devices) {
            return Err(StorageError::LimitReached(format!(
                "the account already has {active} devices (the limit is {})",
                login.max_devices
            ))
            .into());
        }
        let row: DeviceRow = sqlx::query_as(&format!(
            "INSERT INTO devices (user_id, name, noise_public_key, refresh_hash, refresh_expires_at, \
               created_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(id(login.user_id.get()))
        .bind(login.name)
        .bind(login.noise_public_key.map(|k| k.to_vec()))
        .bind(login.refresh_hash.to_vec())
        .bind(login.refresh_expires_at_ms)
        .bind(login.now_ms)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    async fn end_device_sessions_once(
        &self,
        user: UserId,
        devices: &[DeviceId],
        revoke: bool,
        now_ms: i64,
    ) -> Result<Vec<DeviceId>, Fail> {
        let mut tx = self.pool.begin().await?;
        let mut ended = Vec::new();
        for device in devices {
            let row: Option<(i64,)> = sqlx::query_as(
                "UPDATE devices SET token_epoch = token_epoch + 1, refresh_hash = NULL, \
                   refresh_expires_at = NULL, revoked_at = CASE WHEN $1 THEN $2 ELSE revoked_at END \
                 WHERE id = $3 AND user_id = $4 AND revoked_at IS NULL RETURNING id",
            )
            .bind(revoke)
            .bind(now_ms)
            .bind(id(device.get()))
            .bind(id(user.get()))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((ended_id,)) = row {
                ended.push(DeviceId::new(unsigned(ended_id)));
            }
        }
        tx.commit().await?;
        Ok(ended)
    }
}

#[async_trait]
impl AccountStore for PostgresStorage {
    async fn create_user(&self, user: NewUser<'_>) -> Result<UserRecord, StorageError> {
        timed(
            BACKEND,
            "create_user",
            retrying(|| self.create_user_once(&user)),
        )
        .await
    }

    async fn user_by_id(&self, user: UserId) -> Result<Option<UserRecord>, StorageError> {
        timed(BACKEND, "user_by_id", async {
            let row: Option<UserRow> =
                sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
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
                "SELECT {USER_COLUMNS} FROM users WHERE username_key = $1"
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
            let (set_avatar, avatar) = match update.avatar_file_id {
                Some(avatar) => (true, avatar),
                None => (false, None),
            };
            let row: Option<UserRow> = sqlx::query_as(&format!(
                "UPDATE users SET \
                   display_name = COALESCE($1, display_name), \
                   avatar_file_id = CASE WHEN $2 THEN $3 ELSE avatar_file_id END, \
                   bio = COALESCE($4, bio), \
                   updated_at = $5 \
                 WHERE id = $6 RETURNING {USER_COLUMNS}"
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
        timed(
            BACKEND,
            "login_device",
            retrying(|| self.login_device_once(&login)),
        )
        .await
    }

    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StorageError> {
        timed(BACKEND, "device", async {
            let row: Option<DeviceRow> = sqlx::query_as(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
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
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND revoked_at IS NULL ORDER BY id"
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
            // A concurrent rotation of the same token waits for this row
            // lock, re-reads the row, finds the hash replaced and matches
            // nothing: the token is used once.
            let row: Option<DeviceRow> = sqlx::query_as(&format!(
                "UPDATE devices SET refresh_hash = $1, refresh_expires_at = $2, last_seen_at = $3 \
                 WHERE refresh_hash = $4 AND revoked_at IS NULL AND refresh_expires_at > $3 \
                 RETURNING {DEVICE_COLUMNS}"
            ))
            .bind(new_hash.to_vec())
            .bind(new_expires_at_ms)
            .bind(now_ms)
            .bind(old_hash.to_vec())
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
        timed(
            BACKEND,
            "end_device_sessions",
            retrying(|| self.end_device_sessions_once(user, devices, revoke, now_ms)),
        )
        .await
    }

    async fn rename_device(
        &self,
        user: UserId,
        device: DeviceId,
        name: &str,
    ) -> Result<bool, StorageError> {
        timed(BACKEND, "rename_device", async {
            let result = sqlx::query(
                "UPDATE devices SET name = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
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
        // Sorted by device, so concurrent writers lock rows in one order;
        // one row per device, as UPDATE ... FROM applies one match only.
        let mut seen = seen.to_vec();
        seen.sort_unstable();
        seen.dedup_by(|later, kept| {
            later.0 == kept.0 && {
                kept.1 = kept.1.max(later.1);
                true
            }
        });
        let (devices, times): (Vec<i64>, Vec<i64>) = seen
            .iter()
            .map(|(device, at_ms)| (id(device.get()), *at_ms))
            .unzip();
        timed(BACKEND, "touch_devices", async {
            sqlx::query(
                "UPDATE devices AS d SET last_seen_at = GREATEST(d.last_seen_at, s.at) \
                 FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS s(id, at) WHERE d.id = s.id",
            )
            .bind(&devices)
            .bind(&times)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn last_seen(&self, user: UserId) -> Result<Option<i64>, StorageError> {
        timed(BACKEND, "last_seen", async {
            let (seen,): (Option<i64>,) =
                sqlx::query_as("SELECT MAX(last_seen_at) FROM devices WHERE user_id = $1")
                    .bind(id(user.get()))
                    .fetch_one(&self.pool)
                    .await?;
            Ok(seen)
        })
        .await
    }
}

//! [`SocialStore`] on SQLite.

use async_trait::async_trait;
use conclave_core::{ChannelId, RequestId, UserId};
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::messaging::Tx;
use super::sql_id;
use super::{BACKEND, Columns, SqliteStorage, is_unique_violation};
use crate::metrics::timed;
use crate::{
    FriendRecord, FriendRequestRecord, PrivacyRecord, Relation, SearchCandidate, SocialStore,
    StorageError, UserRecord,
};

const REQUEST_COLUMNS: &str = "id, from_id, to_id, message, status, created_at";
/// The columns of `users u`, prefixed so they can sit beside others.
const USER_COLUMNS: &str = "u.id AS u_id, u.username AS u_username, u.password_hash AS u_password_hash, \
     u.display_name AS u_display_name, u.avatar_file_id AS u_avatar_file_id, u.bio AS u_bio, \
     u.created_at AS u_created_at, u.updated_at AS u_updated_at";
pub(super) const PRIVACY_COLUMNS: &str = "p.direct_messages AS p_direct_messages, p.searchable_by AS p_searchable_by, \
     p.group_invites AS p_group_invites, p.last_seen AS p_last_seen";

fn user(id: i64) -> UserId {
    UserId::new(id as u64)
}

fn request_from(row: &SqliteRow) -> Result<FriendRequestRecord, sqlx::Error> {
    Ok(FriendRequestRecord {
        id: RequestId::new(row.try_get::<i64, _>("id")? as u64),
        from_id: user(row.try_get("from_id")?),
        to_id: user(row.try_get("to_id")?),
        message: row.try_get("message")?,
        status: row.try_get("status")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

fn user_from(row: &SqliteRow) -> Result<UserRecord, sqlx::Error> {
    Ok(UserRecord {
        id: user(row.try_get("u_id")?),
        username: row.try_get("u_username")?,
        password_hash: row.try_get("u_password_hash")?,
        display_name: row.try_get("u_display_name")?,
        avatar_file_id: row.try_get("u_avatar_file_id")?,
        bio: row.try_get("u_bio")?,
        created_at_ms: row.try_get("u_created_at")?,
        updated_at_ms: row.try_get("u_updated_at")?,
    })
}

pub(super) fn privacy_from<R: Columns>(row: &R) -> Result<Option<PrivacyRecord>, R::Error> {
    let Some(direct_messages) = row.opt_text("p_direct_messages")? else {
        return Ok(None);
    };
    Ok(Some(PrivacyRecord {
        direct_messages,
        searchable_by: row.text("p_searchable_by")?,
        group_invites: row.text("p_group_invites")?,
        last_seen: row.text("p_last_seen")?,
    }))
}

/// The relation of `a` to `b` as SQL columns, for users `?1` (a) and the
/// row's `u.id` (b) or a bound `?2`.
pub(super) fn relation_columns(b: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM friendships WHERE user_id = ?1 AND friend_id = {b}) AS r_friends, \
         EXISTS (SELECT 1 FROM blocks WHERE user_id = ?1 AND blocked_id = {b}) AS r_a_blocked_b, \
         EXISTS (SELECT 1 FROM blocks WHERE user_id = {b} AND blocked_id = ?1) AS r_b_blocked_a, \
         EXISTS (SELECT 1 FROM friend_requests WHERE from_id = ?1 AND to_id = {b} AND status = 'pending') AS r_a_requested_b, \
         EXISTS (SELECT 1 FROM friend_requests WHERE from_id = {b} AND to_id = ?1 AND status = 'pending') AS r_b_requested_a"
    )
}

pub(super) fn relation_from<R: Columns>(row: &R) -> Result<Relation, R::Error> {
    Ok(Relation {
        friends: row.int("r_friends")? != 0,
        a_blocked_b: row.int("r_a_blocked_b")? != 0,
        b_blocked_a: row.int("r_b_blocked_a")? != 0,
        a_requested_b: row.int("r_a_requested_b")? != 0,
        b_requested_a: row.int("r_b_requested_a")? != 0,
    })
}

/// Ends the pending request `from` -> `to` in the caller's transaction.
async fn close_pending(
    tx: &mut Tx<'_>,
    from: UserId,
    to: UserId,
    status: &str,
    now_ms: i64,
) -> Result<Option<FriendRequestRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "UPDATE friend_requests SET status = ?, handled_at = ? \
         WHERE from_id = ? AND to_id = ? AND status = 'pending' RETURNING {REQUEST_COLUMNS}"
    ))
    .bind(status)
    .bind(now_ms)
    .bind(sql_id(from.get()))
    .bind(sql_id(to.get()))
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| request_from(&r)).transpose()
}

#[async_trait]
impl SocialStore for SqliteStorage {
    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        message: Option<&str>,
        now_ms: i64,
    ) -> Result<FriendRequestRecord, StorageError> {
        timed(BACKEND, "request_friend", async {
            let _writer = self.write_lock.lock().await;
            let row = sqlx::query(&format!(
                "INSERT INTO friend_requests (from_id, to_id, message, status, created_at) \
                 VALUES (?, ?, ?, 'pending', ?) RETURNING {REQUEST_COLUMNS}"
            ))
            .bind(sql_id(from.get()))
            .bind(sql_id(to.get()))
            .bind(message)
            .bind(now_ms)
            .fetch_one(&self.pool)
            .await
            .map_err(|err| {
                if is_unique_violation(&err) {
                    StorageError::Conflict(format!("a request from {from} to {to} is pending"))
                } else {
                    err.into()
                }
            })?;
            Ok(request_from(&row)?)
        })
        .await
    }

    async fn pending_requests(
        &self,
        user: UserId,
    ) -> Result<Vec<FriendRequestRecord>, StorageError> {
        timed(BACKEND, "pending_requests", async {
            let rows = sqlx::query(&format!(
                "SELECT {REQUEST_COLUMNS} FROM friend_requests \
                 WHERE (from_id = ?1 OR to_id = ?1) AND status = 'pending' ORDER BY id DESC"
            ))
            .bind(sql_id(user.get()))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(request_from).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn close_request(
        &self,
        from: UserId,
        to: UserId,
        status: &str,
        now_ms: i64,
    ) -> Result<Option<FriendRequestRecord>, StorageError> {
        timed(BACKEND, "close_request", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let closed = close_pending(&mut tx, from, to, status, now_ms).await?;
            tx.commit().await?;
            Ok(closed)
        })
        .await
    }

    async fn accept_request(
        &self,
        from: UserId,
        to: UserId,
        channel: ChannelId,
        now_ms: i64,
    ) -> Result<Option<FriendRequestRecord>, StorageError> {
        timed(BACKEND, "accept_request", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let Some(accepted) = close_pending(&mut tx, from, to, "accepted", now_ms).await? else {
                return Ok(None);
            };
            // A crossing request the other way is settled by this too.
            close_pending(&mut tx, to, from, "accepted", now_ms).await?;
            for (user, friend) in [(from, to), (to, from)] {
                sqlx::query(
                    "INSERT INTO friendships (user_id, friend_id, channel_id, created_at) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (user_id, friend_id) DO UPDATE SET channel_id = excluded.channel_id",
                )
                .bind(sql_id(user.get()))
                .bind(sql_id(friend.get()))
                .bind(sql_id(channel.get()))
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Some(accepted))
        })
        .await
    }

    async fn remove_friend(&self, a: UserId, b: UserId) -> Result<bool, StorageError> {
        timed(BACKEND, "remove_friend", async {
            let _writer = self.write_lock.lock().await;
            let removed = sqlx::query(
                "DELETE FROM friendships WHERE (user_id = ?1 AND friend_id = ?2) OR (user_id = ?2 AND friend_id = ?1)",
            )
            .bind(sql_id(a.get()))
            .bind(sql_id(b.get()))
            .execute(&self.pool)
            .await?;
            Ok(removed.rows_affected() > 0)
        })
        .await
    }

    async fn friends(&self, owner: UserId) -> Result<Vec<FriendRecord>, StorageError> {
        timed(BACKEND, "friends", async {
            let rows = sqlx::query(&format!(
                "SELECT {USER_COLUMNS}, f.alias, f.channel_id, f.created_at AS since \
                 FROM friendships f JOIN users u ON u.id = f.friend_id \
                 WHERE f.user_id = ? ORDER BY u.username_key"
            ))
            .bind(sql_id(owner.get()))
            .fetch_all(&self.pool)
            .await?;
            let mut friends = Vec::with_capacity(rows.len());
            for row in &rows {
                friends.push(FriendRecord {
                    friend: user_from(row)?,
                    alias: row.try_get("alias")?,
                    channel_id: row
                        .try_get::<Option<i64>, _>("channel_id")?
                        .map(|id| ChannelId::new(id as u64)),
                    since_ms: row.try_get("since")?,
                });
            }
            Ok(friends)
        })
        .await
    }

    async fn set_alias(
        &self,
        owner: UserId,
        friend: UserId,
        alias: Option<&str>,
    ) -> Result<bool, StorageError> {
        timed(BACKEND, "set_alias", async {
            let _writer = self.write_lock.lock().await;
            let updated =
                sqlx::query("UPDATE friendships SET alias = ? WHERE user_id = ? AND friend_id = ?")
                    .bind(alias)
                    .bind(sql_id(owner.get()))
                    .bind(sql_id(friend.get()))
                    .execute(&self.pool)
                    .await?;
            Ok(updated.rows_affected() == 1)
        })
        .await
    }

    async fn relation(&self, a: UserId, b: UserId) -> Result<Relation, StorageError> {
        timed(BACKEND, "relation", async {
            let row = sqlx::query(&format!("SELECT {}", relation_columns("?2")))
                .bind(sql_id(a.get()))
                .bind(sql_id(b.get()))
                .fetch_one(&self.pool)
                .await?;
            Ok(relation_from(&row)?)
        })
        .await
    }

    async fn block(
        &self,
        owner: UserId,
        target: UserId,
        now_ms: i64,
    ) -> Result<Option<Vec<FriendRequestRecord>>, StorageError> {
        timed(BACKEND, "block", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let inserted = sqlx::query(
                "INSERT OR IGNORE INTO blocks (user_id, blocked_id, created_at) VALUES (?, ?, ?)",
            )
            .bind(sql_id(owner.get()))
            .bind(sql_id(target.get()))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Ok(None);
            }
            let mut closed = Vec::new();
            if let Some(request) = close_pending(&mut tx, target, owner, "rejected", now_ms).await?
            {
                closed.push(request);
            }
            if let Some(request) = close_pending(&mut tx, owner, target, "recalled", now_ms).await?
            {
                closed.push(request);
            }
            tx.commit().await?;
            Ok(Some(closed))
        })
        .await
    }

    async fn unblock(&self, owner: UserId, target: UserId) -> Result<bool, StorageError> {
        timed(BACKEND, "unblock", async {
            let _writer = self.write_lock.lock().await;
            let removed = sqlx::query("DELETE FROM blocks WHERE user_id = ? AND blocked_id = ?")
                .bind(sql_id(owner.get()))
                .bind(sql_id(target.get()))
                .execute(&self.pool)
                .await?;
            Ok(removed.rows_affected() == 1)
        })
        .await
    }

    async fn blocked(&self, owner: UserId) -> Result<Vec<(UserRecord, i64)>, StorageError> {
        timed(BACKEND, "blocked", async {
            let rows = sqlx::query(&format!(
                "SELECT {USER_COLUMNS}, b.created_at AS since FROM blocks b JOIN users u ON u.id = b.blocked_id \
                 WHERE b.user_id = ? ORDER BY b.created_at DESC, u.id DESC"
            ))
            .bind(sql_id(owner.get()))
            .fetch_all(&self.pool)
            .await?;
            let mut list = Vec::with_capacity(rows.len());
            for row in &rows {
                list.push((user_from(row)?, row.try_get("since")?));
            }
            Ok(list)
        })
        .await
    }

    async fn privacy(&self, owner: UserId) -> Result<Option<PrivacyRecord>, StorageError> {
        timed(BACKEND, "privacy", async {
            let row = sqlx::query(&format!(
                "SELECT {PRIVACY_COLUMNS} FROM privacy_settings p WHERE p.user_id = ?"
            ))
            .bind(sql_id(owner.get()))
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(row) => Ok(privacy_from(&row)?),
                None => Ok(None),
            }
        })
        .await
    }

    async fn set_privacy(
        &self,
        owner: UserId,
        privacy: &PrivacyRecord,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        timed(BACKEND, "set_privacy", async {
            let _writer = self.write_lock.lock().await;
            sqlx::query(
                "INSERT INTO privacy_settings (user_id, direct_messages, searchable_by, group_invites, last_seen, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET \
                   direct_messages = excluded.direct_messages, searchable_by = excluded.searchable_by, \
                   group_invites = excluded.group_invites, last_seen = excluded.last_seen, \
                   updated_at = excluded.updated_at",
            )
            .bind(sql_id(owner.get()))
            .bind(&privacy.direct_messages)
            .bind(&privacy.searchable_by)
            .bind(&privacy.group_invites)
            .bind(&privacy.last_seen)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn search_users(
        &self,
        searcher: UserId,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SearchCandidate>, StorageError> {
        timed(BACKEND, "search_users", async {
            // A range scan on the unique index: keys >= prefix and < the
            // prefix with its last character bumped, never a LIKE pattern
            // built from user input.
            let low = match after {
                Some(after) if after > prefix => after.to_owned(),
                _ => prefix.to_owned(),
            };
            let rows = sqlx::query(&format!(
                "SELECT {USER_COLUMNS}, {PRIVACY_COLUMNS}, {} \
                 FROM users u LEFT JOIN privacy_settings p ON p.user_id = u.id \
                 WHERE u.username_key >= ?3 AND substr(u.username_key, 1, length(?4)) = ?4 \
                   AND (?5 IS NULL OR u.username_key > ?5) AND u.id != ?1 \
                 ORDER BY u.username_key LIMIT ?6",
                relation_columns("u.id")
            ))
            .bind(sql_id(searcher.get()))
            .bind(0_i64)
            .bind(&low)
            .bind(prefix)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            let mut found = Vec::with_capacity(rows.len());
            for row in &rows {
                found.push(SearchCandidate {
                    user: user_from(row)?,
                    privacy: privacy_from(row)?,
                    relation: relation_from(row)?,
                });
            }
            Ok(found)
        })
        .await
    }
}

//! [`InboxStore`] on SQLite.

use async_trait::async_trait;
use conclave_core::UserId;

use super::sql_id;
use super::{BACKEND, SqliteStorage};
use crate::metrics::timed;
use crate::{InboxEvent, InboxStore, StorageError};

#[async_trait]
impl InboxStore for SqliteStorage {
    async fn append_inbox(
        &self,
        user: UserId,
        kind: &str,
        body: &str,
        now_ms: i64,
    ) -> Result<InboxEvent, StorageError> {
        timed(BACKEND, "append_inbox", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let next: Option<(i64,)> = sqlx::query_as("UPDATE users SET inbox_pts = inbox_pts + 1 WHERE id = ? RETURNING inbox_pts")
                .bind(sql_id(user.get()))
                .fetch_optional(&mut *tx)
                .await?;
            let (pts,) = next.ok_or_else(|| StorageError::NotFound(format!("no user {user}")))?;
            sqlx::query("INSERT INTO inbox_events (user_id, pts, kind, body, created_at) VALUES (?, ?, ?, ?, ?)")
                .bind(sql_id(user.get()))
                .bind(pts)
                .bind(kind)
                .bind(body)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(InboxEvent {
                user_id: user,
                pts: pts as u64,
                kind: kind.to_owned(),
                body: body.to_owned(),
                created_at_ms: now_ms,
            })
        })
        .await
    }

    async fn inbox_after(
        &self,
        user: UserId,
        after_pts: u64,
        limit: u32,
    ) -> Result<(Vec<InboxEvent>, u64), StorageError> {
        timed(BACKEND, "inbox_after", async {
            let mut tx = self.pool.begin().await?;
            let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
                "SELECT pts, kind, body, created_at FROM inbox_events WHERE user_id = ? AND pts > ? ORDER BY pts LIMIT ?",
            )
            .bind(sql_id(user.get()))
            .bind(i64::try_from(after_pts).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            let head: Option<(i64,)> = sqlx::query_as("SELECT inbox_pts FROM users WHERE id = ?")
                .bind(sql_id(user.get()))
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            let (head,) = head.ok_or_else(|| StorageError::NotFound(format!("no user {user}")))?;
            let events = rows
                .into_iter()
                .map(|(pts, kind, body, created_at)| InboxEvent {
                    user_id: user,
                    pts: pts as u64,
                    kind,
                    body,
                    created_at_ms: created_at,
                })
                .collect();
            Ok((events, head as u64))
        })
        .await
    }
}

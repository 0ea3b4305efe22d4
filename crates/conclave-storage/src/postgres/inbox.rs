//! [`InboxStore`] on PostgreSQL.

use async_trait::async_trait;
use conclave_core::UserId;

use super::{BACKEND, PostgresStorage, sql_id, sql_pos, unsigned};
use crate::metrics::timed;
use crate::{InboxEvent, InboxStore, StorageError};

#[async_trait]
impl InboxStore for PostgresStorage {
    async fn append_inbox(
        &self,
        user: UserId,
        kind: &str,
        body: &str,
        now_ms: i64,
    ) -> Result<InboxEvent, StorageError> {
        timed(BACKEND, "append_inbox", async {
            // One statement (its own transaction): the user's row lock that
            // numbers the event is held only while it is stored, and
            // appends from any node queue on it, so pts stay contiguous.
            let row: Option<(i64,)> = sqlx::query_as(
                "WITH head AS (UPDATE users SET inbox_pts = inbox_pts + 1 WHERE id = $1 RETURNING inbox_pts) \
                 INSERT INTO inbox_events (user_id, pts, kind, body, created_at) \
                 SELECT $1, inbox_pts, $2, $3, $4 FROM head RETURNING pts",
            )
            .bind(sql_id(user.get()))
            .bind(kind)
            .bind(body)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?;
            let (pts,) = row.ok_or_else(|| StorageError::NotFound(format!("no user {user}")))?;
            Ok(InboxEvent {
                user_id: user,
                pts: unsigned(pts),
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
            // One statement, so the events and the head come from one
            // snapshot.
            type Row = (
                i64,
                Option<i64>,
                Option<String>,
                Option<String>,
                Option<i64>,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT u.inbox_pts, e.pts, e.kind, e.body, e.created_at FROM users u \
                 LEFT JOIN LATERAL (SELECT pts, kind, body, created_at FROM inbox_events \
                   WHERE user_id = u.id AND pts > $2 ORDER BY pts LIMIT $3) e ON TRUE \
                 WHERE u.id = $1 ORDER BY e.pts",
            )
            .bind(sql_id(user.get()))
            .bind(sql_pos(after_pts))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            let Some((head, ..)) = rows.first() else {
                return Err(StorageError::NotFound(format!("no user {user}")));
            };
            let head = unsigned(*head);
            let events = rows
                .into_iter()
                .filter_map(|(_, pts, kind, body, created_at)| {
                    Some(InboxEvent {
                        user_id: user,
                        pts: unsigned(pts?),
                        kind: kind?,
                        body: body?,
                        created_at_ms: created_at?,
                    })
                })
                .collect();
            Ok((events, head))
        })
        .await
    }
}

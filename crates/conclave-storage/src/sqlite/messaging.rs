//! [`MessageStore`] on SQLite.

use async_trait::async_trait;
use conclave_core::{ChannelId, DeviceId, GroupId, MessageId, UserId};
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::social::{PRIVACY_COLUMNS, privacy_from, relation_columns, relation_from};
use super::sql_id;
use super::{BACKEND, ColumnIndex, Columns, SqliteStorage};
use crate::metrics::timed;
use crate::{
    Audience, ChannelKind, ChannelRecord, ChannelSummary, Committed, EventRecord, GroupRules,
    MemberFlag, MemberRecord, MessageRecord, MessageStore, NewMessage, PeerContext, ReactionOp,
    SendOutcome, StorageError, WriteContext,
};

pub(super) type Tx<'a> = sqlx::Transaction<'a, sqlx::Sqlite>;

pub(super) const CHANNEL_COLUMNS: &str =
    "c.id, c.kind, c.title, c.pts, c.last_message_pts, c.last_activity_at, c.created_at";
pub(super) const MEMBER_COLUMNS: &str = "cm.channel_id AS m_channel_id, cm.user_id AS m_user_id, cm.role AS m_role, \
     cm.joined_pts AS m_joined_pts, cm.read_pts AS m_read_pts, cm.pinned AS m_pinned, \
     cm.hidden_until_pts AS m_hidden_until_pts, cm.notifications_muted AS m_notifications_muted, \
     cm.send_muted_until AS m_send_muted_until";
pub(super) const MESSAGE_COLUMNS: &str = "m.id AS msg_id, m.channel_id AS msg_channel_id, m.pts AS msg_pts, \
     m.sender_id AS msg_sender_id, m.sender_device_id AS msg_sender_device_id, \
     m.client_msg_id AS msg_client_msg_id, m.content AS msg_content, m.reply_to AS msg_reply_to, \
     m.mentions AS msg_mentions, m.created_at AS msg_created_at, m.revoked_at AS msg_revoked_at, \
     m.revoked_by AS msg_revoked_by, m.pinned AS msg_pinned";

/// Gives a channel its next pts (and, for a message, makes it the channel's
/// last message): `(is_message, is_message, now_ms, channel)`, returning
/// the pts.
pub(super) const BUMP_CHANNEL_SQL: &str = "UPDATE channels SET pts = pts + 1, \
       last_message_pts = CASE WHEN ? THEN pts + 1 ELSE last_message_pts END, \
       last_activity_at = CASE WHEN ? THEN ? ELSE last_activity_at END \
     WHERE id = ? RETURNING pts";
/// `(channel, pts, kind, message, actor, audience, body, created_at)`.
pub(super) const APPEND_EVENT_SQL: &str = "INSERT INTO channel_events \
     (channel_id, pts, kind, message_id, actor_id, audience, body, created_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
/// Stores nothing (no row changed) when the sender's device already sent
/// this `client_msg_id`; the new id is the connection's last insert rowid
/// (no `RETURNING`, which buffers its rows in a temporary table).
pub(super) const INSERT_MESSAGE_SQL: &str = "INSERT INTO messages (channel_id, pts, sender_id, \
     sender_device_id, client_msg_id, content, reply_to, mentions, created_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (sender_id, sender_device_id, client_msg_id) DO NOTHING";

fn pts(raw: i64) -> u64 {
    u64::try_from(raw).unwrap_or(0)
}

fn sql_pts(pts: u64) -> i64 {
    i64::try_from(pts).unwrap_or(i64::MAX)
}

pub(super) fn channel_from<R: Columns>(row: &R) -> Result<ChannelRecord, R::Error> {
    Ok(ChannelRecord {
        id: ChannelId::new(row.int("id")? as u64),
        kind: if row.text("kind")? == "group" {
            ChannelKind::Group
        } else {
            ChannelKind::Direct
        },
        title: row.opt_text("title")?,
        pts: pts(row.int("pts")?),
        last_message_pts: pts(row.int("last_message_pts")?),
        last_activity_at_ms: row.int("last_activity_at")?,
        created_at_ms: row.int("created_at")?,
    })
}

pub(super) fn member_from<R: Columns>(row: &R) -> Result<MemberRecord, R::Error> {
    Ok(MemberRecord {
        channel_id: ChannelId::new(row.int("m_channel_id")? as u64),
        user_id: UserId::new(row.int("m_user_id")? as u64),
        role: row.text("m_role")?,
        joined_pts: pts(row.int("m_joined_pts")?),
        read_pts: pts(row.int("m_read_pts")?),
        pinned: row.int("m_pinned")? != 0,
        hidden_until_pts: row.opt_int("m_hidden_until_pts")?.map(pts),
        notifications_muted: row.int("m_notifications_muted")? != 0,
        send_muted_until_ms: row.opt_int("m_send_muted_until")?,
    })
}

/// The message of a row selected with [`MESSAGE_COLUMNS`]; `None` when the
/// row has none (an outer join).
pub(super) fn message_from<R: Columns>(row: &R) -> Result<Option<MessageRecord>, R::Error> {
    let Some(id) = row.opt_int("msg_id")? else {
        return Ok(None);
    };
    Ok(Some(MessageRecord {
        id: MessageId::new(id as u64),
        channel_id: ChannelId::new(row.int("msg_channel_id")? as u64),
        pts: pts(row.int("msg_pts")?),
        sender_id: UserId::new(row.int("msg_sender_id")? as u64),
        sender_device_id: DeviceId::new(row.int("msg_sender_device_id")? as u64),
        client_msg_id: row.text("msg_client_msg_id")?,
        content: row.opt_text("msg_content")?,
        reply_to: row
            .opt_int("msg_reply_to")?
            .map(|id| MessageId::new(id as u64)),
        mentions: row.text("msg_mentions")?,
        created_at_ms: row.int("msg_created_at")?,
        revoked_at_ms: row.opt_int("msg_revoked_at")?,
        revoked_by: row
            .opt_int("msg_revoked_by")?
            .map(|id| UserId::new(id as u64)),
        pinned: row.int("msg_pinned")? != 0,
    }))
}

fn event_from(row: &SqliteRow) -> Result<EventRecord, sqlx::Error> {
    let audience: String = row.try_get("audience")?;
    Ok(EventRecord {
        channel_id: ChannelId::new(row.try_get::<i64, _>("channel_id")? as u64),
        pts: pts(row.try_get("pts")?),
        kind: row.try_get("kind")?,
        message_id: row
            .try_get::<Option<i64>, _>("message_id")?
            .map(|id| MessageId::new(id as u64)),
        actor_id: UserId::new(row.try_get::<i64, _>("actor_id")? as u64),
        audience: if audience == "actor" {
            Audience::Actor
        } else {
            Audience::Members
        },
        body: row.try_get("body")?,
        created_at_ms: row.try_get("created_at")?,
        message: message_from(row)?,
    })
}

async fn load_message(
    tx: &mut Tx<'_>,
    id: MessageId,
) -> Result<Option<MessageRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?"
    ))
    .bind(sql_id(id.get()))
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        Some(row) => message_from(&row),
        None => Ok(None),
    }
}

/// Appends an event with the channel's next pts (in the caller's
/// transaction) and returns it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn append_event(
    tx: &mut Tx<'_>,
    channel: ChannelId,
    kind: &str,
    message: Option<MessageId>,
    actor: UserId,
    audience: Audience,
    body: &str,
    now_ms: i64,
) -> Result<EventRecord, sqlx::Error> {
    let is_message = kind == "message";
    let (next,): (i64,) = sqlx::query_as(BUMP_CHANNEL_SQL)
        .bind(is_message)
        .bind(is_message)
        .bind(now_ms)
        .bind(sql_id(channel.get()))
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(APPEND_EVENT_SQL)
        .bind(sql_id(channel.get()))
        .bind(next)
        .bind(kind)
        .bind(message.map(|m| sql_id(m.get())))
        .bind(sql_id(actor.get()))
        .bind(match audience {
            Audience::Members => "members",
            Audience::Actor => "actor",
        })
        .bind(body)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    let message = match message {
        Some(id) => load_message(tx, id).await?,
        None => None,
    };
    Ok(EventRecord {
        channel_id: channel,
        pts: pts(next),
        kind: kind.to_owned(),
        message_id: message.as_ref().map(|m| m.id),
        actor_id: actor,
        audience,
        body: body.to_owned(),
        created_at_ms: now_ms,
        message,
    })
}

pub(super) async fn recipients(
    tx: &mut Tx<'_>,
    event: &EventRecord,
) -> Result<Vec<UserId>, sqlx::Error> {
    if event.audience == Audience::Actor {
        return Ok(vec![event.actor_id]);
    }
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT user_id FROM channel_members WHERE channel_id = ?")
            .bind(sql_id(event.channel_id.get()))
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id,)| UserId::new(id as u64))
        .collect())
}

impl SqliteStorage {
    /// Up to `limit` events after `after_pts` and, if there are any, the
    /// channel's head read with them: one statement, so one snapshot (and
    /// one hand-off to the pool's worker).
    async fn event_page(
        &self,
        channel: ChannelId,
        after_pts: u64,
        limit: u32,
    ) -> Result<(Vec<EventRecord>, Option<u64>), sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT (SELECT pts FROM channels WHERE id = ?1) AS head, \
               e.channel_id, e.pts, e.kind, e.message_id, e.actor_id, e.audience, e.body, e.created_at, \
               {MESSAGE_COLUMNS} \
             FROM channel_events e LEFT JOIN messages m ON m.id = e.message_id AND e.kind = 'message' \
             WHERE e.channel_id = ?1 AND e.pts > ?2 ORDER BY e.pts LIMIT ?3"
        ))
        .bind(sql_id(channel.get()))
        .bind(sql_pts(after_pts))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let head = match rows.first() {
            Some(row) => Some(pts(row.try_get("head")?)),
            None => None,
        };
        let events = rows.iter().map(event_from).collect::<Result<_, _>>()?;
        Ok((events, head))
    }

    /// [`crate::Storage::write_context`] in one query: the membership, the
    /// channel and, for a direct channel, the peer with the relation and
    /// their privacy, joined.
    pub(super) async fn write_context_joined(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<WriteContext>, StorageError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {CHANNEL_COLUMNS}, {MEMBER_COLUMNS}, g.id AS g_id, g.mute_all AS g_mute_all, \
                   g.invite_policy AS g_invite_policy, \
                   peer.user_id AS peer_id, {relation}, {PRIVACY_COLUMNS} \
                 FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
                 LEFT JOIN groups g ON g.channel_id = c.id AND g.dissolved_at IS NULL \
                 LEFT JOIN channel_members peer \
                   ON c.kind = 'direct' AND peer.channel_id = c.id AND peer.user_id <> cm.user_id \
                 LEFT JOIN privacy_settings p ON p.user_id = peer.user_id \
                 WHERE cm.user_id = ?1 AND cm.channel_id = ?2 LIMIT 1",
                relation = relation_columns("peer.user_id"),
            )
        });
        // Checked before every message send: read on this thread (see
        // `inline_reads`).
        timed(BACKEND, "write_context", async {
            self.reads.run(|connection| {
                static COLUMNS: std::sync::OnceLock<ColumnIndex> = std::sync::OnceLock::new();
                let mut statement = connection.prepare_cached(&SQL)?;
                let columns = COLUMNS.get_or_init(|| ColumnIndex::of(&statement));
                let mut rows = statement
                    .query(rusqlite::params![sql_id(user.get()), sql_id(channel.get())])?;
                let Some(row) = rows.next()? else {
                    return Ok(None);
                };
                let row = &columns.row(row);
                let peer = match row.opt_int("peer_id")? {
                    Some(peer) => Some(PeerContext {
                        user_id: UserId::new(peer as u64),
                        relation: relation_from(row)?,
                        privacy: privacy_from(row)?,
                    }),
                    None => None,
                };
                let group = match row.opt_int("g_id")? {
                    Some(id) => Some(GroupRules::new(
                        GroupId::new(id as u64),
                        row.int("g_mute_all")? != 0,
                        &row.text("g_invite_policy")?,
                    )),
                    None => None,
                };
                Ok(Some(WriteContext {
                    channel: channel_from(row)?,
                    member: member_from(row)?,
                    group,
                    peer,
                }))
            })
        })
        .await
    }

    /// Commits `tx` and hands the event to the commit stream before the
    /// writer lock (held by the caller) is released, so the stream sees
    /// events in commit order.
    pub(super) async fn commit_event(
        &self,
        tx: Tx<'_>,
        event: EventRecord,
        origin_session: Option<u64>,
    ) -> Result<EventRecord, StorageError> {
        self.commit_event_to(tx, event, &[], origin_session).await
    }

    /// [`Self::commit_event`], also telling `also` live (members who were
    /// just removed by the event).
    pub(super) async fn commit_event_to(
        &self,
        mut tx: Tx<'_>,
        event: EventRecord,
        also: &[UserId],
        origin_session: Option<u64>,
    ) -> Result<EventRecord, StorageError> {
        let mut recipients = recipients(&mut tx, &event).await?;
        let extra: Vec<UserId> = also
            .iter()
            .copied()
            .filter(|u| !recipients.contains(u))
            .collect();
        recipients.extend(extra);
        tx.commit().await?;
        self.publish(Committed {
            event: event.clone(),
            recipients,
            origin_session,
        })
        .await;
        Ok(event)
    }
}

#[async_trait]
impl MessageStore for SqliteStorage {
    fn commits(&self) -> Option<tokio::sync::mpsc::Receiver<Committed>> {
        self.take_commits()
    }

    async fn direct_channel(
        &self,
        a: UserId,
        b: UserId,
        now_ms: i64,
    ) -> Result<(ChannelRecord, bool), StorageError> {
        timed(BACKEND, "direct_channel", async {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let key = format!("{low}:{high}");
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let existing = sqlx::query(&format!("SELECT {CHANNEL_COLUMNS} FROM channels c WHERE c.direct_key = ?"))
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = existing {
                return Ok((channel_from(&row)?, false));
            }
            let row = sqlx::query(&format!(
                "INSERT INTO channels (kind, direct_key, last_activity_at, created_at) VALUES ('direct', ?, ?, ?) \
                 RETURNING {}",
                CHANNEL_COLUMNS.replace("c.", "")
            ))
            .bind(&key)
            .bind(now_ms)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
            let channel = channel_from(&row)?;
            for user in [low, high] {
                sqlx::query("INSERT OR IGNORE INTO channel_members (channel_id, user_id, joined_at) VALUES (?, ?, ?)")
                    .bind(sql_id(channel.id.get()))
                    .bind(sql_id(user.get()))
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok((channel, true))
        })
        .await
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<ChannelRecord>, StorageError> {
        timed(BACKEND, "channel", async {
            let row = sqlx::query(&format!(
                "SELECT {CHANNEL_COLUMNS} FROM channels c WHERE c.id = ?"
            ))
            .bind(sql_id(id.get()))
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| channel_from(&r)).transpose()?)
        })
        .await
    }

    async fn member(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<MemberRecord>, StorageError> {
        timed(BACKEND, "member", async {
            let row = sqlx::query(&format!(
                "SELECT {MEMBER_COLUMNS} FROM channel_members cm WHERE cm.channel_id = ? AND cm.user_id = ?"
            ))
            .bind(sql_id(channel.get()))
            .bind(sql_id(user.get()))
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| member_from(&r)).transpose()?)
        })
        .await
    }

    async fn membership(
        &self,
        channel: ChannelId,
        user: UserId,
    ) -> Result<Option<(ChannelRecord, MemberRecord)>, StorageError> {
        timed(BACKEND, "membership", async {
            let row = sqlx::query(&format!(
                "SELECT {CHANNEL_COLUMNS}, {MEMBER_COLUMNS} \
                 FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
                 WHERE cm.channel_id = ? AND cm.user_id = ?"
            ))
            .bind(sql_id(channel.get()))
            .bind(sql_id(user.get()))
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(row) => Ok(Some((channel_from(&row)?, member_from(&row)?))),
                None => Ok(None),
            }
        })
        .await
    }

    async fn members(&self, channel: ChannelId) -> Result<Vec<MemberRecord>, StorageError> {
        timed(BACKEND, "members", async {
            let rows = sqlx::query(&format!(
                "SELECT {MEMBER_COLUMNS} FROM channel_members cm WHERE cm.channel_id = ? ORDER BY cm.user_id"
            ))
            .bind(sql_id(channel.get()))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(member_from).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn channel_list(
        &self,
        user: UserId,
        include_hidden: bool,
    ) -> Result<Vec<ChannelSummary>, StorageError> {
        timed(BACKEND, "channel_list", async {
            let rows = sqlx::query(&format!(
                "SELECT {CHANNEL_COLUMNS}, {MEMBER_COLUMNS}, {MESSAGE_COLUMNS}, \
                   (SELECT o.user_id FROM channel_members o \
                     WHERE o.channel_id = c.id AND o.user_id != cm.user_id AND c.kind = 'direct' LIMIT 1) AS peer, \
                   (SELECT COUNT(*) FROM messages u WHERE u.channel_id = c.id \
                     AND u.pts > MAX(cm.read_pts, cm.joined_pts) AND u.sender_id != cm.user_id \
                     AND u.revoked_at IS NULL) AS unread \
                 FROM channel_members cm \
                 JOIN channels c ON c.id = cm.channel_id \
                 LEFT JOIN messages m ON m.channel_id = c.id AND m.pts = c.last_message_pts \
                   AND c.last_message_pts > cm.joined_pts \
                 WHERE cm.user_id = ? \
                   AND (? OR cm.hidden_until_pts IS NULL OR c.last_message_pts > cm.hidden_until_pts) \
                 ORDER BY cm.pinned DESC, c.last_activity_at DESC, c.id DESC"
            ))
            .bind(sql_id(user.get()))
            .bind(include_hidden)
            .fetch_all(&self.pool)
            .await?;
            let mut list = Vec::with_capacity(rows.len());
            for row in &rows {
                list.push(ChannelSummary {
                    channel: channel_from(row)?,
                    member: member_from(row)?,
                    peer_user_id: row.try_get::<Option<i64>, _>("peer")?.map(|id| UserId::new(id as u64)),
                    last_message: message_from(row)?,
                    unread_count: row.try_get::<i64, _>("unread")?.max(0) as u64,
                });
            }
            Ok(list)
        })
        .await
    }

    async fn set_member_flag(
        &self,
        channel: ChannelId,
        user: UserId,
        flag: MemberFlag,
    ) -> Result<bool, StorageError> {
        timed(BACKEND, "set_member_flag", async {
            let _writer = self.write_lock.lock().await;
            let query = match flag {
                MemberFlag::Pinned(on) => sqlx::query(
                    "UPDATE channel_members SET pinned = ? WHERE channel_id = ? AND user_id = ?",
                )
                .bind(on),
                MemberFlag::NotificationsMuted(on) => sqlx::query(
                    "UPDATE channel_members SET notifications_muted = ? WHERE channel_id = ? AND user_id = ?",
                )
                .bind(on),
                MemberFlag::Hidden => sqlx::query(
                    "UPDATE channel_members SET hidden_until_pts = \
                       (SELECT last_message_pts FROM channels WHERE id = channel_members.channel_id) \
                     WHERE channel_id = ? AND user_id = ?",
                ),
            };
            let result = query
                .bind(sql_id(channel.get()))
                .bind(sql_id(user.get()))
                .execute(&self.pool)
                .await?;
            Ok(result.rows_affected() == 1)
        })
        .await
    }

    async fn send_message(&self, message: NewMessage<'_>) -> Result<SendOutcome, StorageError> {
        timed(BACKEND, "send_message", async {
            // Sends are committed in groups by one writer: many messages,
            // one transaction and one fsync (see `group_commit`).
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.queue_write(super::group_commit::WriteRequest::Send {
                message: super::group_commit::OwnedMessage::from(&message),
                reply,
            })
            .await?;
            answer.await.map_err(|_| StorageError::Closed)?
        })
        .await
    }

    async fn message(&self, id: MessageId) -> Result<Option<MessageRecord>, StorageError> {
        timed(BACKEND, "message", async {
            let row = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?"
            ))
            .bind(sql_id(id.get()))
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(row) => Ok(message_from(&row)?),
                None => Ok(None),
            }
        })
        .await
    }

    async fn revoke_message(
        &self,
        message: MessageId,
        actor: UserId,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<Option<EventRecord>, StorageError> {
        timed(BACKEND, "revoke_message", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let revoked = sqlx::query(
                "UPDATE messages SET content = NULL, revoked_at = ?, revoked_by = ? \
                 WHERE id = ? AND revoked_at IS NULL RETURNING channel_id",
            )
            .bind(now_ms)
            .bind(sql_id(actor.get()))
            .bind(sql_id(message.get()))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = revoked else {
                return Ok(None);
            };
            let channel = ChannelId::new(row.try_get::<i64, _>("channel_id")? as u64);
            sqlx::query("DELETE FROM messages_fts WHERE rowid = ?")
                .bind(sql_id(message.get()))
                .execute(&mut *tx)
                .await?;
            sqlx::query(super::search_backlog::FORGET_SQL)
                .bind(sql_id(message.get()))
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM reactions WHERE message_id = ?")
                .bind(sql_id(message.get()))
                .execute(&mut *tx)
                .await?;
            let body = serde_json_body(&[
                ("message_id", message.to_string()),
                ("revoked_by", actor.to_string()),
            ]);
            let event = append_event(
                &mut tx,
                channel,
                "revoke",
                Some(message),
                actor,
                Audience::Members,
                &body,
                now_ms,
            )
            .await?;
            Ok(Some(self.commit_event(tx, event, origin_session).await?))
        })
        .await
    }

    async fn react(
        &self,
        message: MessageId,
        user: UserId,
        emoji: &str,
        op: ReactionOp,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<Option<EventRecord>, StorageError> {
        timed(BACKEND, "react", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let Some(target) = load_message(&mut tx, message).await? else {
                return Err(StorageError::NotFound(format!("no message {message}")));
            };
            if target.revoked_at_ms.is_some() {
                return Err(StorageError::Invalid("the message was revoked".to_owned()));
            }
            let changed = match op {
                ReactionOp::Add => sqlx::query(
                    "INSERT OR IGNORE INTO reactions (message_id, user_id, emoji, created_at) VALUES (?, ?, ?, ?)",
                )
                .bind(sql_id(message.get()))
                .bind(sql_id(user.get()))
                .bind(emoji)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                ReactionOp::Remove => sqlx::query(
                    "DELETE FROM reactions WHERE message_id = ? AND user_id = ? AND emoji = ?",
                )
                .bind(sql_id(message.get()))
                .bind(sql_id(user.get()))
                .bind(emoji)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            };
            if changed == 0 {
                return Ok(None);
            }
            let body = serde_json_body(&[
                ("message_id", message.to_string()),
                ("emoji", emoji.to_owned()),
                ("op", if op == ReactionOp::Add { "add" } else { "remove" }.to_owned()),
            ]);
            let event = append_event(
                &mut tx,
                target.channel_id,
                "reaction",
                Some(message),
                user,
                Audience::Members,
                &body,
                now_ms,
            )
            .await?;
            // A reaction event refers to its message; it is not the message.
            let event = EventRecord { message: None, ..event };
            Ok(Some(self.commit_event(tx, event, origin_session).await?))
        })
        .await
    }

    async fn reactions(
        &self,
        message: MessageId,
    ) -> Result<Vec<(String, Vec<UserId>)>, StorageError> {
        timed(BACKEND, "reactions", async {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT emoji, user_id FROM reactions WHERE message_id = ? ORDER BY created_at, emoji, user_id",
            )
            .bind(sql_id(message.get()))
            .fetch_all(&self.pool)
            .await?;
            let mut grouped: Vec<(String, Vec<UserId>)> = Vec::new();
            for (emoji, user) in rows {
                let user = UserId::new(user as u64);
                match grouped.iter_mut().find(|(e, _)| *e == emoji) {
                    Some((_, users)) => users.push(user),
                    None => grouped.push((emoji, vec![user])),
                }
            }
            Ok(grouped)
        })
        .await
    }

    async fn set_pinned(
        &self,
        message: MessageId,
        actor: UserId,
        pinned: bool,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<Option<EventRecord>, StorageError> {
        timed(BACKEND, "set_pinned", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let row = sqlx::query(
                "UPDATE messages SET pinned = ? WHERE id = ? AND pinned != ? AND revoked_at IS NULL RETURNING channel_id",
            )
            .bind(pinned)
            .bind(sql_id(message.get()))
            .bind(pinned)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let channel = ChannelId::new(row.try_get::<i64, _>("channel_id")? as u64);
            let body = serde_json_body(&[
                ("message_id", message.to_string()),
                ("op", if pinned { "pin" } else { "unpin" }.to_owned()),
            ]);
            let event = append_event(&mut tx, channel, "pin", Some(message), actor, Audience::Members, &body, now_ms)
                .await?;
            let event = EventRecord { message: None, ..event };
            Ok(Some(self.commit_event(tx, event, origin_session).await?))
        })
        .await
    }

    async fn mark_read(
        &self,
        channel: ChannelId,
        user: UserId,
        read_pts: u64,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<(u64, Option<EventRecord>), StorageError> {
        timed(BACKEND, "mark_read", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let row = sqlx::query(
                "SELECT cm.read_pts, c.pts, c.kind FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
                 WHERE cm.channel_id = ? AND cm.user_id = ?",
            )
            .bind(sql_id(channel.get()))
            .bind(sql_id(user.get()))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(StorageError::NotFound(format!("no channel {channel} with this member")));
            };
            let current = pts(row.try_get("read_pts")?);
            let head = pts(row.try_get("pts")?);
            let kind: String = row.try_get("kind")?;
            // Never past the head, never backwards.
            let target = read_pts.min(head);
            if target <= current {
                return Ok((current, None));
            }
            sqlx::query("UPDATE channel_members SET read_pts = ? WHERE channel_id = ? AND user_id = ?")
                .bind(sql_pts(target))
                .bind(sql_id(channel.get()))
                .bind(sql_id(user.get()))
                .execute(&mut *tx)
                .await?;
            // Ids are strings on the wire; positions are numbers.
            let body = serde_json::json!({ "user_id": user, "read_pts": target }).to_string();
            // In a direct channel the sender learns its message was read; in a
            // group only the reader's other devices hear it live.
            let audience = if kind == "direct" { Audience::Members } else { Audience::Actor };
            let event = append_event(&mut tx, channel, "read", None, user, audience, &body, now_ms).await?;
            Ok((target, Some(self.commit_event(tx, event, origin_session).await?)))
        })
        .await
    }

    async fn unread_count(&self, channel: ChannelId, user: UserId) -> Result<u64, StorageError> {
        timed(BACKEND, "unread_count", async {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM messages u WHERE u.channel_id = cm.channel_id \
                   AND u.pts > MAX(cm.read_pts, cm.joined_pts) AND u.sender_id != cm.user_id \
                   AND u.revoked_at IS NULL) \
                 FROM channel_members cm WHERE cm.channel_id = ? AND cm.user_id = ?",
            )
            .bind(sql_id(channel.get()))
            .bind(sql_id(user.get()))
            .fetch_optional(&self.pool)
            .await?;
            row.map(|(count,)| count.max(0) as u64).ok_or_else(|| {
                StorageError::NotFound(format!("no channel {channel} with this member"))
            })
        })
        .await
    }

    async fn readers(&self, channel: ChannelId, at_pts: u64) -> Result<Vec<UserId>, StorageError> {
        timed(BACKEND, "readers", async {
            let rows: Vec<(i64,)> = sqlx::query_as(
                "SELECT user_id FROM channel_members WHERE channel_id = ? AND read_pts >= ? ORDER BY user_id",
            )
            .bind(sql_id(channel.get()))
            .bind(sql_pts(at_pts))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(|(id,)| UserId::new(id as u64)).collect())
        })
        .await
    }

    async fn events_after(
        &self,
        channel: ChannelId,
        after_pts: u64,
        limit: u32,
    ) -> Result<(Vec<EventRecord>, u64), StorageError> {
        timed(BACKEND, "events_after", async {
            if let (events, Some(head)) = self.event_page(channel, after_pts, limit).await? {
                return Ok((events, head));
            }
            // Nothing newer: the head alone. Read after the empty page, it
            // may have moved on since; then the events up to it are
            // committed, and the page is read again.
            let (head,): (i64,) = sqlx::query_as("SELECT pts FROM channels WHERE id = ?")
                .bind(sql_id(channel.get()))
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| StorageError::NotFound(format!("no channel {channel}")))?;
            if pts(head) <= after_pts {
                return Ok((Vec::new(), pts(head)));
            }
            let (events, page_head) = self.event_page(channel, after_pts, limit).await?;
            Ok((events, page_head.unwrap_or(pts(head))))
        })
        .await
    }

    async fn messages_before(
        &self,
        channel: ChannelId,
        before_pts: u64,
        min_pts: u64,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError> {
        timed(BACKEND, "messages_before", async {
            let rows = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.channel_id = ? AND m.pts < ? AND m.pts > ? \
                 ORDER BY m.pts DESC LIMIT ?"
            ))
            .bind(sql_id(channel.get()))
            .bind(sql_pts(before_pts))
            .bind(sql_pts(min_pts))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().filter_map(|r| message_from(r).transpose()).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn messages_from(
        &self,
        channel: ChannelId,
        from_pts: u64,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError> {
        timed(BACKEND, "messages_from", async {
            let rows = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.channel_id = ? AND m.pts >= ? \
                 ORDER BY m.pts LIMIT ?"
            ))
            .bind(sql_id(channel.get()))
            .bind(sql_pts(from_pts))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .iter()
                .filter_map(|r| message_from(r).transpose())
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn search(
        &self,
        user: UserId,
        words: &[String],
        channel: Option<ChannelId>,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError> {
        timed(BACKEND, "search", async {
            // Each word becomes a quoted FTS5 string, so user input can never
            // be read as query syntax.
            let query = words
                .iter()
                .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(" ");
            if query.is_empty() {
                return Ok(Vec::new());
            }
            self.index_search_backlog().await?;
            let rows = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages_fts f \
                 JOIN messages m ON m.id = f.rowid \
                 JOIN channel_members cm ON cm.channel_id = m.channel_id AND cm.user_id = ? \
                 WHERE messages_fts MATCH ? AND m.revoked_at IS NULL AND m.pts > cm.joined_pts \
                   AND (? IS NULL OR m.channel_id = ?) \
                 ORDER BY m.id DESC LIMIT ?"
            ))
            .bind(sql_id(user.get()))
            .bind(query)
            .bind(channel.map(|c| sql_id(c.get())))
            .bind(channel.map(|c| sql_id(c.get())))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .iter()
                .filter_map(|r| message_from(r).transpose())
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn channel_heads(&self, user: UserId) -> Result<Vec<(ChannelId, u64)>, StorageError> {
        timed(BACKEND, "channel_heads", async {
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT c.id, c.pts FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
                 WHERE cm.user_id = ? ORDER BY c.id",
            )
            .bind(sql_id(user.get()))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(id, head)| (ChannelId::new(id as u64), pts(head)))
                .collect())
        })
        .await
    }
}

/// A flat JSON object of string fields.
fn serde_json_body(fields: &[(&str, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(key, value)| ((*key).to_owned(), serde_json::Value::String(value.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

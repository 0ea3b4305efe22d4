//! [`MessageStore`] on PostgreSQL.
//!
//! An event's transaction does its reads and checks first, then takes the
//! channel's next pts (`UPDATE channels ... RETURNING pts`, whose row lock
//! queues every other writer of the channel until commit), then inserts
//! and commits at once. Who hears of the event is read after the head is
//! taken, in a fresh snapshot: a membership change commits either wholly
//! before the event (and is seen) or wholly after it.

use async_trait::async_trait;
use conclave_core::{ChannelId, DeviceId, MessageId, UserId};
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::{BACKEND, Fail, PostgresStorage, retrying, sql_id, sql_pos, unsigned};
use crate::metrics::timed;
use crate::{
    Audience, ChannelKind, ChannelRecord, ChannelSummary, Committed, EventRecord, MemberFlag,
    MemberRecord, MessageRecord, MessageStore, NewMessage, ReactionOp, SendOutcome, StorageError,
};

pub(super) type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

pub(super) const CHANNEL_COLUMNS: &str =
    "c.id, c.kind, c.title, c.pts, c.last_message_pts, c.last_activity_at, c.created_at";
const MEMBER_COLUMNS: &str = "cm.channel_id AS m_channel_id, cm.user_id AS m_user_id, cm.role AS m_role, \
     cm.joined_pts AS m_joined_pts, cm.read_pts AS m_read_pts, cm.pinned AS m_pinned, \
     cm.hidden_until_pts AS m_hidden_until_pts, cm.notifications_muted AS m_notifications_muted, \
     cm.send_muted_until AS m_send_muted_until";
const MESSAGE_COLUMNS: &str = "m.id AS msg_id, m.channel_id AS msg_channel_id, m.pts AS msg_pts, \
     m.sender_id AS msg_sender_id, m.sender_device_id AS msg_sender_device_id, \
     m.client_msg_id AS msg_client_msg_id, m.content AS msg_content, m.reply_to AS msg_reply_to, \
     m.mentions AS msg_mentions, m.created_at AS msg_created_at, m.revoked_at AS msg_revoked_at, \
     m.revoked_by AS msg_revoked_by, m.pinned AS msg_pinned";
const EVENT_COLUMNS: &str = "e.channel_id, e.pts, e.kind, e.message_id, e.actor_id, e.audience, \
     e.body, e.created_at";

fn user(raw: i64) -> UserId {
    UserId::new(unsigned(raw))
}

pub(super) fn channel_from(row: &PgRow) -> Result<ChannelRecord, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    Ok(ChannelRecord {
        id: ChannelId::new(unsigned(row.try_get("id")?)),
        kind: if kind == "group" {
            ChannelKind::Group
        } else {
            ChannelKind::Direct
        },
        title: row.try_get("title")?,
        pts: unsigned(row.try_get("pts")?),
        last_message_pts: unsigned(row.try_get("last_message_pts")?),
        last_activity_at_ms: row.try_get("last_activity_at")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

fn member_from(row: &PgRow) -> Result<MemberRecord, sqlx::Error> {
    Ok(MemberRecord {
        channel_id: ChannelId::new(unsigned(row.try_get("m_channel_id")?)),
        user_id: user(row.try_get("m_user_id")?),
        role: row.try_get("m_role")?,
        joined_pts: unsigned(row.try_get("m_joined_pts")?),
        read_pts: unsigned(row.try_get("m_read_pts")?),
        pinned: row.try_get("m_pinned")?,
        hidden_until_pts: row
            .try_get::<Option<i64>, _>("m_hidden_until_pts")?
            .map(unsigned),
        notifications_muted: row.try_get("m_notifications_muted")?,
        send_muted_until_ms: row.try_get("m_send_muted_until")?,
    })
}

fn message_from(row: &PgRow) -> Result<Option<MessageRecord>, sqlx::Error> {
    let Some(id) = row.try_get::<Option<i64>, _>("msg_id")? else {
        return Ok(None);
    };
    Ok(Some(MessageRecord {
        id: MessageId::new(unsigned(id)),
        channel_id: ChannelId::new(unsigned(row.try_get("msg_channel_id")?)),
        pts: unsigned(row.try_get("msg_pts")?),
        sender_id: user(row.try_get("msg_sender_id")?),
        sender_device_id: DeviceId::new(unsigned(row.try_get("msg_sender_device_id")?)),
        client_msg_id: row.try_get("msg_client_msg_id")?,
        content: row.try_get("msg_content")?,
        reply_to: row
            .try_get::<Option<i64>, _>("msg_reply_to")?
            .map(|id| MessageId::new(unsigned(id))),
        mentions: row.try_get("msg_mentions")?,
        created_at_ms: row.try_get("msg_created_at")?,
        revoked_at_ms: row.try_get("msg_revoked_at")?,
        revoked_by: row.try_get::<Option<i64>, _>("msg_revoked_by")?.map(user),
        pinned: row.try_get("msg_pinned")?,
    }))
}

fn audience_name(audience: Audience) -> &'static str {
    match audience {
        Audience::Members => "members",
        Audience::Actor => "actor",
    }
}

fn event_from(row: &PgRow) -> Result<EventRecord, sqlx::Error> {
    let audience: String = row.try_get("audience")?;
    Ok(EventRecord {
        channel_id: ChannelId::new(unsigned(row.try_get("channel_id")?)),
        pts: unsigned(row.try_get("pts")?),
        kind: row.try_get("kind")?,
        message_id: row
            .try_get::<Option<i64>, _>("message_id")?
            .map(|id| MessageId::new(unsigned(id))),
        actor_id: user(row.try_get("actor_id")?),
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

/// The words full-text search sees in `text`: runs of letters and digits,
/// lower-cased, one space apart. Documents and queries both go through
/// this before PostgreSQL's `simple` configuration, so punctuation, URLs
/// and e-mail addresses split into words the way they do in the query.
pub(super) fn search_words(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn load_message<'e, E>(executor: E, id: MessageId) -> Result<Option<MessageRecord>, Fail>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let row = sqlx::query(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = $1"
    ))
    .bind(sql_id(id.get()))
    .fetch_optional(executor)
    .await?;
    Ok(match row {
        Some(row) => message_from(&row)?,
        None => None,
    })
}

/// Takes the channel's next pts: the row lock this takes is what orders
/// the channel's writers, so call it after every read and check the
/// transaction can do without it.
async fn next_pts(tx: &mut Tx, channel: ChannelId, message_at: Option<i64>) -> Result<i64, Fail> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE channels SET pts = pts + 1, \
           last_message_pts = CASE WHEN $1 THEN pts + 1 ELSE last_message_pts END, \
           last_activity_at = COALESCE($2, last_activity_at) \
         WHERE id = $3 RETURNING pts",
    )
    .bind(message_at.is_some())
    .bind(message_at)
    .bind(sql_id(channel.get()))
    .fetch_optional(&mut **tx)
    .await?;
    let (pts,) = row.ok_or_else(|| StorageError::NotFound(format!("no channel {channel}")))?;
    Ok(pts)
}

/// An event about to be appended to a channel's log.
pub(super) struct NewEvent<'a> {
    pub channel: ChannelId,
    pub kind: &'a str,
    pub message_id: Option<MessageId>,
    pub actor: UserId,
    pub audience: Audience,
    pub body: &'a str,
    pub now_ms: i64,
}

/// An event stored in an open transaction, with who hears of it live.
pub(super) struct Appended {
    pub event: EventRecord,
    pub recipients: Vec<UserId>,
}

/// Appends a (non-message) event with the channel's next pts in the
/// caller's transaction, and reads its recipients after the head is taken.
pub(super) async fn append_event(tx: &mut Tx, new: NewEvent<'_>) -> Result<Appended, Fail> {
    let pts = next_pts(tx, new.channel, None).await?;
    let members: Vec<(i64,)> = sqlx::query_as(
        "WITH event AS ( \
           INSERT INTO channel_events (channel_id, pts, kind, message_id, actor_id, audience, body, created_at) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)) \
         SELECT user_id FROM channel_members WHERE channel_id = $1 ORDER BY user_id",
    )
    .bind(sql_id(new.channel.get()))
    .bind(pts)
    .bind(new.kind)
    .bind(new.message_id.map(|m| sql_id(m.get())))
    .bind(sql_id(new.actor.get()))
    .bind(audience_name(new.audience))
    .bind(new.body)
    .bind(new.now_ms)
    .fetch_all(&mut **tx)
    .await?;
    let recipients = match new.audience {
        Audience::Actor => vec![new.actor],
        Audience::Members => members.into_iter().map(|(id,)| user(id)).collect(),
    };
    Ok(Appended {
        event: EventRecord {
            channel_id: new.channel,
            pts: unsigned(pts),
            kind: new.kind.to_owned(),
            message_id: new.message_id,
            actor_id: new.actor,
            audience: new.audience,
            body: new.body.to_owned(),
            created_at_ms: new.now_ms,
            message: None,
        },
        recipients,
    })
}

/// What one attempt at a send found.
enum Sending {
    /// Stored (not yet committed).
    Sent(Appended),
    Duplicate(MessageRecord),
    /// Another transaction stored the same (sender, device, client_msg_id)
    /// while this one was under way: roll back and answer with that one.
    Raced,
}

impl PostgresStorage {
    /// Commits an event's transaction, then hands the event to this node's
    /// commit stream, also telling `also` (members the event just removed).
    pub(super) async fn commit_event_to(
        &self,
        tx: Tx,
        appended: Appended,
        also: &[UserId],
        origin_session: Option<u64>,
    ) -> Result<EventRecord, Fail> {
        let Appended {
            event,
            mut recipients,
        } = appended;
        tx.commit().await?;
        for user in also {
            if !recipients.contains(user) {
                recipients.push(*user);
            }
        }
        self.publish(Committed {
            event: event.clone(),
            recipients,
            origin_session,
        })
        .await;
        Ok(event)
    }

    async fn store_message(tx: &mut Tx, message: &NewMessage<'_>) -> Result<Sending, Fail> {
        // Every check in one round trip, before the channel is locked.
        let row = sqlx::query(
            "SELECT \
               (SELECT id FROM messages WHERE sender_id = $1 AND sender_device_id = $2 AND client_msg_id = $3) AS existing, \
               EXISTS (SELECT 1 FROM channel_members WHERE channel_id = $4 AND user_id = $1) AS member, \
               (SELECT channel_id FROM messages WHERE id = $5) AS reply_channel",
        )
        .bind(sql_id(message.sender_id.get()))
        .bind(sql_id(message.sender_device_id.get()))
        .bind(message.client_msg_id)
        .bind(sql_id(message.channel_id.get()))
        .bind(message.reply_to.map(|m| sql_id(m.get())))
        .fetch_one(&mut **tx)
        .await?;
        if let Some(existing) = row.try_get::<Option<i64>, _>("existing")? {
            if let Some(found) = load_message(&mut **tx, MessageId::new(unsigned(existing))).await?
            {
                return Ok(Sending::Duplicate(found));
            }
        }
        let not_member = || {
            StorageError::NotFound(format!(
                "no channel {} with this member",
                message.channel_id
            ))
        };
        if !row.try_get::<bool, _>("member")? {
            return Err(not_member().into());
        }
        if let Some(reply_to) = message.reply_to {
            let reply_channel: Option<i64> = row.try_get("reply_channel")?;
            if reply_channel != Some(sql_id(message.channel_id.get())) {
                return Err(StorageError::Invalid(format!(
                    "reply_to: no message {reply_to} in this channel"
                ))
                .into());
            }
        }

        let pts = next_pts(tx, message.channel_id, Some(message.now_ms)).await?;
        // The message, its event and the members in one statement, whose
        // snapshot is taken after the head: a removal of the sender that
        // committed first is seen here.
        let search = message
            .search_text
            .map(search_words)
            .filter(|words| !words.is_empty());
        let row = sqlx::query(
            "WITH message AS ( \
               INSERT INTO messages (channel_id, pts, sender_id, sender_device_id, client_msg_id, content, \
                 reply_to, mentions, created_at, search_vector) \
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, to_tsvector('simple', $10)) \
               ON CONFLICT (sender_id, sender_device_id, client_msg_id) DO NOTHING \
               RETURNING id), \
             event AS ( \
               INSERT INTO channel_events (channel_id, pts, kind, message_id, actor_id, audience, body, created_at) \
               SELECT $1, $2, 'message', id, $3, 'members', '{}', $9 FROM message) \
             SELECT (SELECT id FROM message) AS id, \
               ARRAY(SELECT user_id FROM channel_members WHERE channel_id = $1 ORDER BY user_id) AS members",
        )
        .bind(sql_id(message.channel_id.get()))
        .bind(pts)
        .bind(sql_id(message.sender_id.get()))
        .bind(sql_id(message.sender_device_id.get()))
        .bind(message.client_msg_id)
        .bind(message.content)
        .bind(message.reply_to.map(|m| sql_id(m.get())))
        .bind(message.mentions)
        .bind(message.now_ms)
        .bind(search)
        .fetch_one(&mut **tx)
        .await?;
        let Some(id) = row.try_get::<Option<i64>, _>("id")? else {
            return Ok(Sending::Raced);
        };
        let members: Vec<i64> = row.try_get("members")?;
        if !members.contains(&sql_id(message.sender_id.get())) {
            return Err(not_member().into());
        }
        let id = MessageId::new(unsigned(id));
        let record = MessageRecord {
            id,
            channel_id: message.channel_id,
            pts: unsigned(pts),
            sender_id: message.sender_id,
            sender_device_id: message.sender_device_id,
            client_msg_id: message.client_msg_id.to_owned(),
            content: Some(message.content.to_owned()),
            reply_to: message.reply_to,
            mentions: message.mentions.to_owned(),
            created_at_ms: message.now_ms,
            revoked_at_ms: None,
            revoked_by: None,
            pinned: false,
        };
        Ok(Sending::Sent(Appended {
            event: EventRecord {
                channel_id: message.channel_id,
                pts: unsigned(pts),
                kind: "message".to_owned(),
                message_id: Some(id),
                actor_id: message.sender_id,
                audience: Audience::Members,
                body: "{}".to_owned(),
                created_at_ms: message.now_ms,
                message: Some(record),
            },
            recipients: members.into_iter().map(user).collect(),
        }))
    }

    async fn send_once(&self, message: &NewMessage<'_>) -> Result<SendOutcome, Fail> {
        let mut tx = self.pool.begin().await?;
        match Self::store_message(&mut tx, message).await? {
            Sending::Sent(appended) => {
                let event = self
                    .commit_event_to(tx, appended, &[], message.origin_session)
                    .await?;
                Ok(SendOutcome::Sent(event))
            }
            Sending::Duplicate(found) => Ok(SendOutcome::Duplicate(found)),
            Sending::Raced => {
                // Undo the pts taken for nothing; the winner committed, so
                // a fresh read finds it.
                tx.rollback().await?;
                let row = sqlx::query(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m \
                     WHERE m.sender_id = $1 AND m.sender_device_id = $2 AND m.client_msg_id = $3"
                ))
                .bind(sql_id(message.sender_id.get()))
                .bind(sql_id(message.sender_device_id.get()))
                .bind(message.client_msg_id)
                .fetch_optional(&self.pool)
                .await?;
                match row.map(|r| message_from(&r)).transpose()?.flatten() {
                    Some(found) => Ok(SendOutcome::Duplicate(found)),
                    None => Err(StorageError::Corrupt(format!(
                        "message {} conflicted with a message that does not exist",
                        message.client_msg_id
                    ))
                    .into()),
                }
            }
        }
    }

    async fn direct_channel_once(
        &self,
        low: UserId,
        high: UserId,
        now_ms: i64,
    ) -> Result<(ChannelRecord, bool), Fail> {
        let key = format!("{low}:{high}");
        let find_sql = format!("SELECT {CHANNEL_COLUMNS} FROM channels c WHERE c.direct_key = $1");
        let find = || sqlx::query(&find_sql).bind(key.clone());
        if let Some(row) = find().fetch_optional(&self.pool).await? {
            return Ok((channel_from(&row)?, false));
        }
        let mut tx = self.pool.begin().await?;
        // Two nodes creating the same pair at once: the unique key makes
        // the later insert wait for the earlier and then do nothing.
        let created = sqlx::query(&format!(
            "INSERT INTO channels (kind, direct_key, last_activity_at, created_at) \
             VALUES ('direct', $1, $2, $2) ON CONFLICT (direct_key) DO NOTHING RETURNING {}",
            CHANNEL_COLUMNS.replace("c.", "")
        ))
        .bind(&key)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = created else {
            tx.rollback().await?;
            let row = find().fetch_one(&self.pool).await?;
            return Ok((channel_from(&row)?, false));
        };
        let channel = channel_from(&row)?;
        sqlx::query(
            "INSERT INTO channel_members (channel_id, user_id, joined_at) \
             SELECT $1, u, $3 FROM UNNEST($2::BIGINT[]) AS u ON CONFLICT DO NOTHING",
        )
        .bind(sql_id(channel.id.get()))
        .bind(vec![sql_id(low.get()), sql_id(high.get())])
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((channel, true))
    }

    async fn revoke_once(
        &self,
        message: MessageId,
        actor: UserId,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<Option<EventRecord>, Fail> {
        let mut tx = self.pool.begin().await?;
        // The message's row lock settles concurrent revokes (the later
        // finds it revoked) and waits out reactions being added.
        let revoked = sqlx::query(&format!(
            "UPDATE messages m SET content = NULL, search_vector = NULL, revoked_at = $1, revoked_by = $2 \
             WHERE m.id = $3 AND m.revoked_at IS NULL RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind(now_ms)
        .bind(sql_id(actor.get()))
        .bind(sql_id(message.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(record) = revoked.map(|r| message_from(&r)).transpose()?.flatten() else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM reactions WHERE message_id = $1")
            .bind(sql_id(message.get()))
            .execute(&mut *tx)
            .await?;
        let body = serde_json_body(&[
            ("message_id", message.to_string()),
            ("revoked_by", actor.to_string()),
        ]);
        let mut appended = append_event(
            &mut tx,
            NewEvent {
                channel: record.channel_id,
                kind: "revoke",
                message_id: Some(message),
                actor,
                audience: Audience::Members,
                body: &body,
                now_ms,
            },
        )
        .await?;
        appended.event.message = Some(record);
        Ok(Some(
            self.commit_event_to(tx, appended, &[], origin_session)
                .await?,
        ))
    }

    async fn react_once(
        &self,
        message: MessageId,
        user: UserId,
        emoji: &str,
        op: ReactionOp,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<Option<EventRecord>, Fail> {
        let mut tx = self.pool.begin().await?;
        // Shared lock: reactions go on concurrently, a revoke waits for
        // them (and then deletes them), and one that committed first is
        // seen here.
        let target: Option<(i64, bool)> = sqlx::query_as(
            "SELECT channel_id, revoked_at IS NOT NULL FROM messages WHERE id = $1 FOR SHARE",
        )
        .bind(sql_id(message.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((channel, revoked)) = target else {
            return Err(StorageError::NotFound(format!("no message {message}")).into());
        };
        if revoked {
            return Err(StorageError::Invalid("the message was revoked".to_owned()).into());
        }
        let changed = match op {
            ReactionOp::Add => sqlx::query(
                "INSERT INTO reactions (message_id, user_id, emoji, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(sql_id(message.get()))
            .bind(sql_id(user.get()))
            .bind(emoji)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            ReactionOp::Remove => sqlx::query(
                "DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3",
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
            (
                "op",
                if op == ReactionOp::Add {
                    "add"
                } else {
                    "remove"
                }
                .to_owned(),
            ),
        ]);
        // A reaction event refers to its message; it is not the message.
        let appended = append_event(
            &mut tx,
            NewEvent {
                channel: ChannelId::new(unsigned(channel)),
                kind: "reaction",
                message_id: Some(message),
                actor: user,
                audience: Audience::Members,
                body: &body,
                now_ms,
            },
        )
        .await?;
        Ok(Some(
            self.commit_event_to(tx, appended, &[], origin_session)
                .await?,
        ))
    }

    async fn set_pinned_once(
        &self,
        message: MessageId,
        actor: UserId,
        pinned: bool,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<Option<EventRecord>, Fail> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE messages SET pinned = $1 WHERE id = $2 AND pinned != $1 AND revoked_at IS NULL \
             RETURNING channel_id",
        )
        .bind(pinned)
        .bind(sql_id(message.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((channel,)) = row else {
            return Ok(None);
        };
        let body = serde_json_body(&[
            ("message_id", message.to_string()),
            ("op", if pinned { "pin" } else { "unpin" }.to_owned()),
        ]);
        let appended = append_event(
            &mut tx,
            NewEvent {
                channel: ChannelId::new(unsigned(channel)),
                kind: "pin",
                message_id: Some(message),
                actor,
                audience: Audience::Members,
                body: &body,
                now_ms,
            },
        )
        .await?;
        Ok(Some(
            self.commit_event_to(tx, appended, &[], origin_session)
                .await?,
        ))
    }

    async fn mark_read_once(
        &self,
        channel: ChannelId,
        user: UserId,
        read_pts: u64,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<(u64, Option<EventRecord>), Fail> {
        let not_member = || {
            Fail::from(StorageError::NotFound(format!(
                "no channel {channel} with this member"
            )))
        };
        let mut tx = self.pool.begin().await?;
        let row: Option<(i64, i64, String)> = sqlx::query_as(
            "SELECT cm.read_pts, c.pts, c.kind FROM channel_members cm JOIN channels c ON c.id = cm.channel_id \
             WHERE cm.channel_id = $1 AND cm.user_id = $2",
        )
        .bind(sql_id(channel.get()))
        .bind(sql_id(user.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((current, head, kind)) = row else {
            return Err(not_member());
        };
        let current = unsigned(current);
        // Never past the head, never backwards.
        let target = read_pts.min(unsigned(head));
        if target <= current {
            return Ok((current, None));
        }
        // Conditional, so a device of the same user that moved the cursor
        // further meanwhile (on any node) is never undone.
        let moved = sqlx::query(
            "UPDATE channel_members SET read_pts = $1 \
             WHERE channel_id = $2 AND user_id = $3 AND read_pts < $1",
        )
        .bind(sql_pos(target))
        .bind(sql_id(channel.get()))
        .bind(sql_id(user.get()))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            let now: Option<(i64,)> = sqlx::query_as(
                "SELECT read_pts FROM channel_members WHERE channel_id = $1 AND user_id = $2",
            )
            .bind(sql_id(channel.get()))
            .bind(sql_id(user.get()))
            .fetch_optional(&self.pool)
            .await?;
            let (now,) = now.ok_or_else(not_member)?;
            return Ok((unsigned(now), None));
        }
        // Ids are strings on the wire; positions are numbers.
        let body = serde_json::json!({ "user_id": user, "read_pts": target }).to_string();
        // In a direct channel the sender learns its message was read; in a
        // group only the reader's other devices hear it live.
        let audience = if kind == "direct" {
            Audience::Members
        } else {
            Audience::Actor
        };
        let appended = append_event(
            &mut tx,
            NewEvent {
                channel,
                kind: "read",
                message_id: None,
                actor: user,
                audience,
                body: &body,
                now_ms,
            },
        )
        .await?;
        let event = self
            .commit_event_to(tx, appended, &[], origin_session)
            .await?;
        Ok((target, Some(event)))
    }
}

#[async_trait]
impl MessageStore for PostgresStorage {
    fn commits(&self) -> Option<tokio::sync::mpsc::Receiver<Committed>> {
        self.take_commits()
    }

    async fn direct_channel(
        &self,
        a: UserId,
        b: UserId,
        now_ms: i64,
    ) -> Result<(ChannelRecord, bool), StorageError> {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        timed(
            BACKEND,
            "direct_channel",
            retrying(|| self.direct_channel_once(low, high, now_ms)),
        )
        .await
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<ChannelRecord>, StorageError> {
        timed(BACKEND, "channel", async {
            let row = sqlx::query(&format!(
                "SELECT {CHANNEL_COLUMNS} FROM channels c WHERE c.id = $1"
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
                "SELECT {MEMBER_COLUMNS} FROM channel_members cm WHERE cm.channel_id = $1 AND cm.user_id = $2"
            ))
            .bind(sql_id(channel.get()))
            .bind(sql_id(user.get()))
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| member_from(&r)).transpose()?)
        })
        .await
    }

    async fn members(&self, channel: ChannelId) -> Result<Vec<MemberRecord>, StorageError> {
        timed(BACKEND, "members", async {
            let rows = sqlx::query(&format!(
                "SELECT {MEMBER_COLUMNS} FROM channel_members cm WHERE cm.channel_id = $1 ORDER BY cm.user_id"
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
                     WHERE o.channel_id = c.id AND o.user_id != cm.user_id AND c.kind = 'direct' \
                     ORDER BY o.user_id LIMIT 1) AS peer, \
                   (SELECT COUNT(*) FROM messages u WHERE u.channel_id = c.id \
                     AND u.pts > GREATEST(cm.read_pts, cm.joined_pts) AND u.sender_id != cm.user_id \
                     AND u.revoked_at IS NULL) AS unread \
                 FROM channel_members cm \
                 JOIN channels c ON c.id = cm.channel_id \
                 LEFT JOIN messages m ON m.channel_id = c.id AND m.pts = c.last_message_pts \
                   AND c.last_message_pts > cm.joined_pts \
                 WHERE cm.user_id = $1 \
                   AND ($2 OR cm.hidden_until_pts IS NULL OR c.last_message_pts > cm.hidden_until_pts) \
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
                    peer_user_id: row.try_get::<Option<i64>, _>("peer")?.map(self::user),
                    last_message: message_from(row)?,
                    unread_count: unsigned(row.try_get("unread")?),
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
            let query = match flag {
                MemberFlag::Pinned(on) => sqlx::query(
                    "UPDATE channel_members SET pinned = $1 WHERE channel_id = $2 AND user_id = $3",
                )
                .bind(on),
                MemberFlag::NotificationsMuted(on) => sqlx::query(
                    "UPDATE channel_members SET notifications_muted = $1 WHERE channel_id = $2 AND user_id = $3",
                )
                .bind(on),
                MemberFlag::Hidden => sqlx::query(
                    "UPDATE channel_members SET hidden_until_pts = \
                       (SELECT last_message_pts FROM channels WHERE id = channel_members.channel_id) \
                     WHERE channel_id = $1 AND user_id = $2",
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
        timed(
            BACKEND,
            "send_message",
            retrying(|| self.send_once(&message)),
        )
        .await
    }

    async fn message(&self, id: MessageId) -> Result<Option<MessageRecord>, StorageError> {
        timed(BACKEND, "message", async {
            Ok(load_message(&self.pool, id).await?)
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
        timed(
            BACKEND,
            "revoke_message",
            retrying(|| self.revoke_once(message, actor, now_ms, origin_session)),
        )
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
        timed(
            BACKEND,
            "react",
            retrying(|| self.react_once(message, user, emoji, op, now_ms, origin_session)),
        )
        .await
    }

    async fn reactions(
        &self,
        message: MessageId,
    ) -> Result<Vec<(String, Vec<UserId>)>, StorageError> {
        timed(BACKEND, "reactions", async {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT emoji, user_id FROM reactions WHERE message_id = $1 ORDER BY created_at, emoji, user_id",
            )
            .bind(sql_id(message.get()))
            .fetch_all(&self.pool)
            .await?;
            let mut grouped: Vec<(String, Vec<UserId>)> = Vec::new();
            for (emoji, id) in rows {
                let id = user(id);
                match grouped.iter_mut().find(|(e, _)| *e == emoji) {
                    Some((_, users)) => users.push(id),
                    None => grouped.push((emoji, vec![id])),
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
        timed(
            BACKEND,
            "set_pinned",
            retrying(|| self.set_pinned_once(message, actor, pinned, now_ms, origin_session)),
        )
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
        timed(
            BACKEND,
            "mark_read",
            retrying(|| self.mark_read_once(channel, user, read_pts, now_ms, origin_session)),
        )
        .await
    }

    async fn unread_count(&self, channel: ChannelId, user: UserId) -> Result<u64, StorageError> {
        timed(BACKEND, "unread_count", async {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM messages u WHERE u.channel_id = cm.channel_id \
                   AND u.pts > GREATEST(cm.read_pts, cm.joined_pts) AND u.sender_id != cm.user_id \
                   AND u.revoked_at IS NULL) \
                 FROM channel_members cm WHERE cm.channel_id = $1 AND cm.user_id = $2",
            )
            .bind(sql_id(channel.get()))
            .bind(sql_id(user.get()))
            .fetch_optional(&self.pool)
            .await?;
            row.map(|(count,)| unsigned(count)).ok_or_else(|| {
                StorageError::NotFound(format!("no channel {channel} with this member"))
            })
        })
        .await
    }

    async fn readers(&self, channel: ChannelId, at_pts: u64) -> Result<Vec<UserId>, StorageError> {
        timed(BACKEND, "readers", async {
            let rows: Vec<(i64,)> = sqlx::query_as(
                "SELECT user_id FROM channel_members WHERE channel_id = $1 AND read_pts >= $2 ORDER BY user_id",
            )
            .bind(sql_id(channel.get()))
            .bind(sql_pos(at_pts))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(|(id,)| user(id)).collect())
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
            // One statement, so the events and the head come from one
            // snapshot. A channel's events commit in pts order, so what a
            // snapshot sees is always a gapless prefix of the log.
            let rows = sqlx::query(&format!(
                "SELECT c.pts AS head, {EVENT_COLUMNS}, {MESSAGE_COLUMNS} \
                 FROM channels c \
                 LEFT JOIN LATERAL (SELECT * FROM channel_events x \
                   WHERE x.channel_id = c.id AND x.pts > $2 ORDER BY x.pts LIMIT $3) e ON TRUE \
                 LEFT JOIN messages m ON m.id = e.message_id AND e.kind = 'message' \
                 WHERE c.id = $1 ORDER BY e.pts"
            ))
            .bind(sql_id(channel.get()))
            .bind(sql_pos(after_pts))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            let Some(first) = rows.first() else {
                return Err(StorageError::NotFound(format!("no channel {channel}")));
            };
            let head = unsigned(first.try_get("head")?);
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                if row.try_get::<Option<i64>, _>("pts")?.is_some() {
                    events.push(event_from(row)?);
                }
            }
            Ok((events, head))
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
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.channel_id = $1 AND m.pts < $2 AND m.pts > $3 \
                 ORDER BY m.pts DESC LIMIT $4"
            ))
            .bind(sql_id(channel.get()))
            .bind(sql_pos(before_pts))
            .bind(sql_pos(min_pts))
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

    async fn messages_from(
        &self,
        channel: ChannelId,
        from_pts: u64,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StorageError> {
        timed(BACKEND, "messages_from", async {
            let rows = sqlx::query(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.channel_id = $1 AND m.pts >= $2 \
                 ORDER BY m.pts LIMIT $3"
            ))
            .bind(sql_id(channel.get()))
            .bind(sql_pos(from_pts))
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
            // Every word must occur; a word that splits in several (it had
            // punctuation) must occur as that phrase. Words are bound as
            // text, never read as query syntax.
            let words: Vec<String> = words
                .iter()
                .map(|w| search_words(w))
                .filter(|w| !w.is_empty())
                .collect();
            if words.is_empty() {
                return Ok(Vec::new());
            }
            let query = (0..words.len())
                .map(|i| format!("phraseto_tsquery('simple', ${})", i + 4))
                .collect::<Vec<_>>()
                .join(" && ");
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m \
                 JOIN channel_members cm ON cm.channel_id = m.channel_id AND cm.user_id = $1 \
                 WHERE m.search_vector @@ ({query}) AND m.revoked_at IS NULL AND m.pts > cm.joined_pts \
                   AND ($2::BIGINT IS NULL OR m.channel_id = $2) \
                 ORDER BY m.id DESC LIMIT $3"
            );
            let mut statement = sqlx::query(&sql)
                .bind(sql_id(user.get()))
                .bind(channel.map(|c| sql_id(c.get())))
                .bind(i64::from(limit));
            for word in &words {
                statement = statement.bind(word);
            }
            let rows = statement.fetch_all(&self.pool).await?;
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
                 WHERE cm.user_id = $1 ORDER BY c.id",
            )
            .bind(sql_id(user.get()))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(id, head)| (ChannelId::new(unsigned(id)), unsigned(head)))
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

//! [`GroupStore`] on SQLite.

use async_trait::async_trait;
use conclave_core::{ChannelId, GroupId, RequestId, UserId};
use serde_json::json;
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::messaging::{Tx, append_event};
use super::sql_id;
use super::{BACKEND, SqliteStorage};
use crate::metrics::timed;
use crate::{
    Audience, EventRecord, GroupChange, GroupChanged, GroupPatch, GroupRecord, GroupStore,
    JoinRequestRecord, NewGroup, StorageError,
};

const GROUP_COLUMNS: &str = "g.id, g.channel_id, g.name, g.description, g.avatar_file_id, g.owner_id, \
     g.join_approval, g.invite_policy, g.member_cap, g.announcement, g.mute_all, g.qr_epoch, g.created_at, \
     (SELECT COUNT(*) FROM channel_members cm WHERE cm.channel_id = g.channel_id) AS member_count";
const REQUEST_COLUMNS: &str = "id, group_id, user_id, inviter_id, via, status, created_at";

fn group_from(row: &SqliteRow) -> Result<GroupRecord, sqlx::Error> {
    Ok(GroupRecord {
        id: GroupId::new(row.try_get::<i64, _>("id")? as u64),
        channel_id: ChannelId::new(row.try_get::<i64, _>("channel_id")? as u64),
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        avatar_file_id: row.try_get("avatar_file_id")?,
        owner_id: UserId::new(row.try_get::<i64, _>("owner_id")? as u64),
        join_approval: row.try_get::<i64, _>("join_approval")? != 0,
        invite_policy: row.try_get("invite_policy")?,
        member_cap: u32::try_from(row.try_get::<i64, _>("member_cap")?).unwrap_or(0),
        announcement: row.try_get("announcement")?,
        mute_all: row.try_get::<i64, _>("mute_all")? != 0,
        qr_epoch: row.try_get("qr_epoch")?,
        member_count: u32::try_from(row.try_get::<i64, _>("member_count")?).unwrap_or(u32::MAX),
        created_at_ms: row.try_get("created_at")?,
    })
}

fn request_from(row: &SqliteRow) -> Result<JoinRequestRecord, sqlx::Error> {
    Ok(JoinRequestRecord {
        id: RequestId::new(row.try_get::<i64, _>("id")? as u64),
        group_id: GroupId::new(row.try_get::<i64, _>("group_id")? as u64),
        user_id: UserId::new(row.try_get::<i64, _>("user_id")? as u64),
        inviter_id: row
            .try_get::<Option<i64>, _>("inviter_id")?
            .map(|id| UserId::new(id as u64)),
        via: row.try_get("via")?,
        status: row.try_get("status")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

/// The live (not dissolved) group whose `key` column (`id` or
/// `channel_id`) is `value`.
async fn find_group<'e, E>(
    executor: E,
    key: &'static str,
    value: u64,
) -> Result<Option<GroupRecord>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let row = sqlx::query(&format!(
        "SELECT {GROUP_COLUMNS} FROM groups g WHERE g.{key} = ? AND g.dissolved_at IS NULL"
    ))
    .bind(sql_id(value))
    .fetch_optional(executor)
    .await?;
    row.map(|r| group_from(&r)).transpose()
}

async fn load_group(tx: &mut Tx<'_>, id: GroupId) -> Result<Option<GroupRecord>, sqlx::Error> {
    find_group(&mut **tx, "id", id.get()).await
}

async fn role_of(
    tx: &mut Tx<'_>,
    channel: ChannelId,
    user: UserId,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT role FROM channel_members WHERE channel_id = ? AND user_id = ?")
            .bind(sql_id(channel.get()))
            .bind(sql_id(user.get()))
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.map(|(role,)| role))
}

async fn member_count(tx: &mut Tx<'_>, channel: ChannelId) -> Result<u64, sqlx::Error> {
    let (count,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM channel_members WHERE channel_id = ?")
            .bind(sql_id(channel.get()))
            .fetch_one(&mut **tx)
            .await?;
    Ok(count.max(0) as u64)
}

/// Adds members who see the channel's log from its current head on.
async fn insert_members(
    tx: &mut Tx<'_>,
    channel: ChannelId,
    users: &[UserId],
    role: &str,
    now_ms: i64,
) -> Result<(), StorageError> {
    let (head,): (i64,) = sqlx::query_as("SELECT pts FROM channels WHERE id = ?")
        .bind(sql_id(channel.get()))
        .fetch_one(&mut **tx)
        .await?;
    for user in users {
        sqlx::query(
            "INSERT INTO channel_members (channel_id, user_id, role, joined_pts, joined_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(sql_id(channel.get()))
        .bind(sql_id(user.get()))
        .bind(role)
        .bind(head)
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map_err(|err| match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StorageError::Conflict(format!("user {user} is already a member"))
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StorageError::NotFound(format!("no user {user}"))
            }
            _ => err.into(),
        })?;
    }
    Ok(())
}

fn check_cap(current: u64, adding: usize, cap: u32) -> Result<(), StorageError> {
    if current + adding as u64 > u64::from(cap) {
        return Err(StorageError::LimitReached(format!(
            "the group holds at most {cap} members"
        )));
    }
    Ok(())
}

/// Applies a patch; returns the changed fields as the event body.
async fn apply_patch(
    tx: &mut Tx<'_>,
    group: &GroupRecord,
    patch: &GroupPatch,
) -> Result<serde_json::Map<String, serde_json::Value>, sqlx::Error> {
    let mut changed = serde_json::Map::new();
    if let Some(name) = &patch.name {
        sqlx::query("UPDATE channels SET title = ? WHERE id = ?")
            .bind(name)
            .bind(sql_id(group.channel_id.get()))
            .execute(&mut **tx)
            .await?;
        changed.insert("name".to_owned(), json!(name));
    }
    if let Some(description) = &patch.description {
        changed.insert("description".to_owned(), json!(description));
    }
    if let Some(avatar) = &patch.avatar_file_id {
        changed.insert("avatar_file_id".to_owned(), json!(avatar));
    }
    if let Some(on) = patch.join_approval {
        changed.insert("join_approval".to_owned(), json!(on));
    }
    if let Some(policy) = &patch.invite_policy {
        changed.insert("invite_policy".to_owned(), json!(policy));
    }
    if let Some(cap) = patch.member_cap {
        changed.insert("member_cap".to_owned(), json!(cap));
    }
    if let Some(announcement) = &patch.announcement {
        changed.insert("announcement".to_owned(), json!(announcement));
    }
    if let Some(on) = patch.mute_all {
        changed.insert("mute_all".to_owned(), json!(on));
    }
    sqlx::query(
        "UPDATE groups SET name = COALESCE(?, name), description = COALESCE(?, description), \
           avatar_file_id = CASE WHEN ? THEN ? ELSE avatar_file_id END, \
           join_approval = COALESCE(?, join_approval), invite_policy = COALESCE(?, invite_policy), \
           member_cap = COALESCE(?, member_cap), \
           announcement = CASE WHEN ? THEN ? ELSE announcement END, \
           mute_all = COALESCE(?, mute_all), qr_epoch = qr_epoch + ? \
         WHERE id = ?",
    )
    .bind(patch.name.as_deref())
    .bind(patch.description.as_deref())
    .bind(patch.avatar_file_id.is_some())
    .bind(patch.avatar_file_id.clone().flatten())
    .bind(patch.join_approval)
    .bind(patch.invite_policy.as_deref())
    .bind(patch.member_cap.map(i64::from))
    .bind(patch.announcement.is_some())
    .bind(patch.announcement.clone().flatten())
    .bind(patch.mute_all)
    .bind(i64::from(patch.bump_qr_epoch))
    .bind(sql_id(group.id.get()))
    .execute(&mut **tx)
    .await?;
    Ok(changed)
}

impl SqliteStorage {
    /// Applies one change inside `tx`; returns the event kind, its body and
    /// the users it removed.
    async fn apply_change(
        tx: &mut Tx<'_>,
        group: &GroupRecord,
        actor: UserId,
        change: GroupChange,
        now_ms: i64,
    ) -> Result<(&'static str, serde_json::Value, Vec<UserId>), StorageError> {
        let channel = group.channel_id;
        let member_key = |user: UserId| (sql_id(channel.get()), sql_id(user.get()));
        Ok(match change {
            GroupChange::Update(patch) => {
                let mut body = apply_patch(tx, group, &patch).await?;
                body.insert("group_id".to_owned(), json!(group.id));
                ("group/updated", serde_json::Value::Object(body), Vec::new())
            }
            GroupChange::Join {
                users,
                via,
                request,
            } => {
                check_cap(
                    member_count(tx, channel).await?,
                    users.len(),
                    group.member_cap,
                )?;
                insert_members(tx, channel, &users, "member", now_ms).await?;
                // Whoever joins is no longer waiting; the request being
                // approved must be one of those settled here.
                let mut settled = Vec::new();
                for user in &users {
                    let ids: Vec<(i64,)> = sqlx::query_as(
                        "UPDATE group_join_requests SET status = 'approved', handled_at = ?, handled_by = ? \
                         WHERE group_id = ? AND user_id = ? AND status = 'pending' RETURNING id",
                    )
                    .bind(now_ms)
                    .bind(sql_id(actor.get()))
                    .bind(sql_id(group.id.get()))
                    .bind(sql_id(user.get()))
                    .fetch_all(&mut **tx)
                    .await?;
                    settled.extend(ids.into_iter().map(|(id,)| id));
                }
                if let Some(request) = request {
                    if !settled.contains(&sql_id(request.get())) {
                        return Err(StorageError::Conflict(format!(
                            "join request {request} is not pending"
                        )));
                    }
                }
                let body = json!({
                    "group_id": group.id,
                    "user_ids": users,
                    "inviter_id": actor,
                    "via": via,
                });
                ("group/member_joined", body, Vec::new())
            }
            GroupChange::Leave { user, kicked } => {
                let (c, u) = member_key(user);
                let left =
                    sqlx::query("DELETE FROM channel_members WHERE channel_id = ? AND user_id = ?")
                        .bind(c)
                        .bind(u)
                        .execute(&mut **tx)
                        .await?;
                if left.rows_affected() != 1 {
                    return Err(StorageError::NotFound(format!(
                        "user {user} is not a member"
                    )));
                }
                if kicked {
                    let body = json!({ "group_id": group.id, "user_id": user, "by": actor });
                    ("group/member_removed", body, vec![user])
                } else {
                    let body = json!({ "group_id": group.id, "user_id": user });
                    ("group/member_left", body, vec![user])
                }
            }
            GroupChange::SetRole { user, role } => {
                let (c, u) = member_key(user);
                let updated = sqlx::query(
                    "UPDATE channel_members SET role = ? WHERE channel_id = ? AND user_id = ? AND role != 'owner'",
                )
                .bind(&role)
                .bind(c)
                .bind(u)
                .execute(&mut **tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(StorageError::NotFound(format!(
                        "user {user} is not a member whose role can change"
                    )));
                }
                let body = json!({ "group_id": group.id, "user_id": user, "role": role });
                ("group/role_changed", body, Vec::new())
            }
            GroupChange::TransferOwner { to } => {
                let (c, from) = member_key(actor);
                let stepped_down = sqlx::query(
                    "UPDATE channel_members SET role = 'admin' WHERE channel_id = ? AND user_id = ? AND role = 'owner'",
                )
                .bind(c)
                .bind(from)
                .execute(&mut **tx)
                .await?;
                if stepped_down.rows_affected() != 1 {
                    return Err(StorageError::Conflict(format!(
                        "user {actor} is not the owner"
                    )));
                }
                let (c, u) = member_key(to);
                let promoted = sqlx::query(
                    "UPDATE channel_members SET role = 'owner' WHERE channel_id = ? AND user_id = ?",
                )
                .bind(c)
                .bind(u)
                .execute(&mut **tx)
                .await?;
                if promoted.rows_affected() != 1 {
                    return Err(StorageError::NotFound(format!("user {to} is not a member")));
                }
                sqlx::query("UPDATE groups SET owner_id = ? WHERE id = ?")
                    .bind(sql_id(to.get()))
                    .bind(sql_id(group.id.get()))
                    .execute(&mut **tx)
                    .await?;
                let body = json!({ "group_id": group.id, "from_user_id": actor, "to_user_id": to });
                ("group/owner_transferred", body, Vec::new())
            }
            GroupChange::Mute { user, until_ms } => {
                let (c, u) = member_key(user);
                let updated = sqlx::query(
                    "UPDATE channel_members SET send_muted_until = ? WHERE channel_id = ? AND user_id = ?",
                )
                .bind(until_ms)
                .bind(c)
                .bind(u)
                .execute(&mut **tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(StorageError::NotFound(format!(
                        "user {user} is not a member"
                    )));
                }
                let body = json!({ "group_id": group.id, "user_id": user, "until_ms": until_ms });
                ("group/member_muted", body, Vec::new())
            }
            GroupChange::Dissolve => {
                let rows: Vec<(i64,)> = sqlx::query_as(
                    "DELETE FROM channel_members WHERE channel_id = ? RETURNING user_id",
                )
                .bind(sql_id(channel.get()))
                .fetch_all(&mut **tx)
                .await?;
                sqlx::query("UPDATE groups SET dissolved_at = ? WHERE id = ?")
                    .bind(now_ms)
                    .bind(sql_id(group.id.get()))
                    .execute(&mut **tx)
                    .await?;
                sqlx::query(
                    "UPDATE group_join_requests SET status = 'declined', handled_at = ?, handled_by = ? \
                     WHERE group_id = ? AND status = 'pending'",
                )
                .bind(now_ms)
                .bind(sql_id(actor.get()))
                .bind(sql_id(group.id.get()))
                .execute(&mut **tx)
                .await?;
                let removed = rows
                    .into_iter()
                    .map(|(id,)| UserId::new(id as u64))
                    .collect();
                ("group/dissolved", json!({ "group_id": group.id }), removed)
            }
        })
    }
}

#[async_trait]
impl GroupStore for SqliteStorage {
    async fn create_group(
        &self,
        new: NewGroup<'_>,
    ) -> Result<(GroupRecord, EventRecord), StorageError> {
        timed(BACKEND, "create_group", async {
            let mut members: Vec<UserId> = Vec::with_capacity(new.members.len());
            for user in new.members {
                if *user != new.owner && !members.contains(user) {
                    members.push(*user);
                }
            }
            check_cap(1, members.len(), new.member_cap)?;
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let (channel,): (i64,) = sqlx::query_as(
                "INSERT INTO channels (kind, title, last_activity_at, created_at) VALUES ('group', ?, ?, ?) RETURNING id",
            )
            .bind(new.name)
            .bind(new.now_ms)
            .bind(new.now_ms)
            .fetch_one(&mut *tx)
            .await?;
            let channel = ChannelId::new(channel as u64);
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO groups (channel_id, name, description, owner_id, member_cap, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(sql_id(channel.get()))
            .bind(new.name)
            .bind(new.description)
            .bind(sql_id(new.owner.get()))
            .bind(i64::from(new.member_cap))
            .bind(new.now_ms)
            .fetch_one(&mut *tx)
            .await?;
            let id = GroupId::new(id as u64);
            insert_members(&mut tx, channel, &[new.owner], "owner", new.now_ms).await?;
            insert_members(&mut tx, channel, &members, "member", new.now_ms).await?;
            let body = json!({
                "group_id": id,
                "name": new.name,
                "owner_id": new.owner,
                "member_ids": members,
            })
            .to_string();
            let event = append_event(
                &mut tx,
                channel,
                "group/created",
                None,
                new.owner,
                Audience::Members,
                &body,
                new.now_ms,
            )
            .await?;
            let group = load_group(&mut tx, id)
                .await?
                .ok_or_else(|| StorageError::Corrupt(format!("group {id} vanished")))?;
            let event = self.commit_event(tx, event, new.origin_session).await?;
            Ok((group, event))
        })
        .await
    }

    async fn group(&self, id: GroupId) -> Result<Option<GroupRecord>, StorageError> {
        timed(BACKEND, "group", async {
            Ok(find_group(&self.pool, "id", id.get()).await?)
        })
        .await
    }

    async fn group_by_channel(
        &self,
        channel: ChannelId,
    ) -> Result<Option<GroupRecord>, StorageError> {
        timed(BACKEND, "group_by_channel", async {
            Ok(find_group(&self.pool, "channel_id", channel.get()).await?)
        })
        .await
    }

    async fn groups_of(&self, user: UserId) -> Result<Vec<GroupRecord>, StorageError> {
        timed(BACKEND, "groups_of", async {
            let rows = sqlx::query(&format!(
                "SELECT {GROUP_COLUMNS} FROM channel_members m JOIN groups g ON g.channel_id = m.channel_id \
                 WHERE m.user_id = ? AND g.dissolved_at IS NULL ORDER BY g.id"
            ))
            .bind(sql_id(user.get()))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(group_from).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn change_group(
        &self,
        id: GroupId,
        actor: UserId,
        expect: &[(UserId, Option<String>)],
        change: GroupChange,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<GroupChanged, StorageError> {
        timed(BACKEND, "change_group", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let group = load_group(&mut tx, id)
                .await?
                .ok_or_else(|| StorageError::NotFound(format!("no group {id}")))?;
            for (user, role) in expect {
                if role_of(&mut tx, group.channel_id, *user).await? != *role {
                    return Err(StorageError::Conflict(format!(
                        "the membership of user {user} changed meanwhile; retry"
                    )));
                }
            }
            let (kind, body, removed) =
                Self::apply_change(&mut tx, &group, actor, change, now_ms).await?;
            let event = append_event(
                &mut tx,
                group.channel_id,
                kind,
                None,
                actor,
                Audience::Members,
                &body.to_string(),
                now_ms,
            )
            .await?;
            // A dissolved group is not found any more; report it as it was.
            let group = load_group(&mut tx, id).await?.unwrap_or(group);
            let event = self
                .commit_event_to(tx, event, &removed, origin_session)
                .await?;
            Ok(GroupChanged {
                group,
                event,
                removed,
            })
        })
        .await
    }

    async fn request_join(
        &self,
        group: GroupId,
        user: UserId,
        inviter: Option<UserId>,
        via: &str,
        now_ms: i64,
    ) -> Result<JoinRequestRecord, StorageError> {
        timed(BACKEND, "request_join", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let existing = sqlx::query(&format!(
                "SELECT {REQUEST_COLUMNS} FROM group_join_requests WHERE group_id = ? AND user_id = ? AND status = 'pending'"
            ))
            .bind(sql_id(group.get()))
            .bind(sql_id(user.get()))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = existing {
                return Ok(request_from(&row)?);
            }
            let row = sqlx::query(&format!(
                "INSERT INTO group_join_requests (group_id, user_id, inviter_id, via, status, created_at) \
                 VALUES (?, ?, ?, ?, 'pending', ?) RETURNING {REQUEST_COLUMNS}"
            ))
            .bind(sql_id(group.get()))
            .bind(sql_id(user.get()))
            .bind(inviter.map(|u| sql_id(u.get())))
            .bind(via)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(request_from(&row)?)
        })
        .await
    }

    async fn join_request(&self, id: RequestId) -> Result<Option<JoinRequestRecord>, StorageError> {
        timed(BACKEND, "join_request", async {
            let row = sqlx::query(&format!(
                "SELECT {REQUEST_COLUMNS} FROM group_join_requests WHERE id = ?"
            ))
            .bind(sql_id(id.get()))
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|r| request_from(&r)).transpose()?)
        })
        .await
    }

    async fn join_requests(&self, group: GroupId) -> Result<Vec<JoinRequestRecord>, StorageError> {
        timed(BACKEND, "join_requests", async {
            let rows = sqlx::query(&format!(
                "SELECT {REQUEST_COLUMNS} FROM group_join_requests WHERE group_id = ? AND status = 'pending' ORDER BY id"
            ))
            .bind(sql_id(group.get()))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(request_from).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn decline_join(
        &self,
        id: RequestId,
        actor: UserId,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        timed(BACKEND, "decline_join", async {
            let _writer = self.write_lock.lock().await;
            let declined = sqlx::query(
                "UPDATE group_join_requests SET status = 'declined', handled_at = ?, handled_by = ? \
                 WHERE id = ? AND status = 'pending'",
            )
            .bind(now_ms)
            .bind(sql_id(actor.get()))
            .bind(sql_id(id.get()))
            .execute(&self.pool)
            .await?;
            Ok(declined.rows_affected() == 1)
        })
        .await
    }
}

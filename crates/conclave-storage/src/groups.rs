//! Groups: settings and roles around a group channel, and join requests.
//!
//! Every change is an event in the group channel's log (kind `group/...`),
//! stored with the change in one transaction and sent to the commit stream
//! like any other channel event. Changes carry the membership facts the
//! caller's permission decision was based on; the transaction re-checks them
//! and fails with [`StorageError::Conflict`] if they no longer hold, so a
//! decision is never applied to a membership that changed meanwhile.

use async_trait::async_trait;
use conclave_core::{ChannelId, GroupId, RequestId, UserId};

use crate::{EventRecord, StorageError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub id: GroupId,
    pub channel_id: ChannelId,
    pub name: String,
    pub description: String,
    pub avatar_file_id: Option<String>,
    pub owner_id: UserId,
    pub join_approval: bool,
    /// `members` or `admins`.
    pub invite_policy: String,
    pub member_cap: u32,
    pub announcement: Option<String>,
    pub mute_all: bool,
    pub qr_epoch: i64,
    pub member_count: u32,
    pub created_at_ms: i64,
}

/// Fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    /// `Some(None)` clears the avatar.
    pub avatar_file_id: Option<Option<String>>,
    pub join_approval: Option<bool>,
    pub invite_policy: Option<String>,
    pub member_cap: Option<u32>,
    /// `Some(None)` clears the announcement.
    pub announcement: Option<Option<String>>,
    pub mute_all: Option<bool>,
    /// Revokes every invitation code issued so far.
    pub bump_qr_epoch: bool,
}

#[derive(Debug, Clone)]
pub struct NewGroup<'a> {
    pub owner: UserId,
    pub name: &'a str,
    pub description: &'a str,
    pub members: &'a [UserId],
    pub member_cap: u32,
    pub now_ms: i64,
    pub origin_session: Option<u64>,
}

/// One change to a group.
#[derive(Debug, Clone)]
pub enum GroupChange {
    Update(GroupPatch),
    /// New members join (`via`: `create`, `invite`, `qrcode`); with
    /// `request`, that pending join request is approved in the same
    /// transaction. Fails with [`StorageError::LimitReached`] past the cap.
    Join {
        users: Vec<UserId>,
        via: String,
        request: Option<RequestId>,
    },
    /// A member leaves (`kicked`: removed by the actor).
    Leave {
        user: UserId,
        kicked: bool,
    },
    SetRole {
        user: UserId,
        role: String,
    },
    /// The actor (the owner) hands ownership to `to` and becomes an admin.
    TransferOwner {
        to: UserId,
    },
    /// `None` lifts the mute.
    Mute {
        user: UserId,
        until_ms: Option<i64>,
    },
    /// Every member is removed; the group is gone.
    Dissolve,
}

/// What a change did.
#[derive(Debug, Clone)]
pub struct GroupChanged {
    pub group: GroupRecord,
    pub event: EventRecord,
    /// Users who were members before the change and are not now.
    pub removed: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequestRecord {
    pub id: RequestId,
    pub group_id: GroupId,
    pub user_id: UserId,
    pub inviter_id: Option<UserId>,
    /// `invite` or `qrcode`.
    pub via: String,
    /// `pending`, `approved` or `declined`.
    pub status: String,
    pub created_at_ms: i64,
}

#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Creates the group, its channel (owner plus `members`) and its
    /// `group/created` event. Fails with [`StorageError::LimitReached`] when
    /// the members exceed the cap.
    async fn create_group(
        &self,
        group: NewGroup<'_>,
    ) -> Result<(GroupRecord, EventRecord), StorageError>;
    /// A group that is not dissolved.
    async fn group(&self, id: GroupId) -> Result<Option<GroupRecord>, StorageError>;
    async fn group_by_channel(
        &self,
        channel: ChannelId,
    ) -> Result<Option<GroupRecord>, StorageError>;
    /// The user's groups, oldest first.
    async fn groups_of(&self, user: UserId) -> Result<Vec<GroupRecord>, StorageError>;

    /// Applies `change` by `actor`, after checking that each `(user, role)`
    /// in `expect` still holds (`None`: not a member).
    async fn change_group(
        &self,
        group: GroupId,
        actor: UserId,
        expect: &[(UserId, Option<String>)],
        change: GroupChange,
        now_ms: i64,
        origin_session: Option<u64>,
    ) -> Result<GroupChanged, StorageError>;

    /// Records a pending join request, or returns the one already pending
    /// for this user.
    async fn request_join(
        &self,
        group: GroupId,
        user: UserId,
        inviter: Option<UserId>,
        via: &str,
        now_ms: i64,
    ) -> Result<JoinRequestRecord, StorageError>;
    async fn join_request(&self, id: RequestId) -> Result<Option<JoinRequestRecord>, StorageError>;
    /// Pending requests of the group, oldest first.
    async fn join_requests(&self, group: GroupId) -> Result<Vec<JoinRequestRecord>, StorageError>;
    /// Declines a pending request; false when it was not pending.
    async fn decline_join(
        &self,
        id: RequestId,
        actor: UserId,
        now_ms: i64,
    ) -> Result<bool, StorageError>;
}

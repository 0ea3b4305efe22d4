//! Groups: a group channel with roles, settings, invitations and join
//! requests.
//!
//! Every membership or settings change is an event in the group channel's
//! pts stream (`group/...` events, synced like messages), and, for the user
//! it concerns, an inbox entry (`group/joined`, `group/removed`,
//! `group/invited`...).

use conclave_core::{ChannelId, GroupId, RequestId, UserId};
use serde::{Deserialize, Serialize};

use super::Empty;
use super::account::ShareCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// Who may add members (and hand out QR codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvitePolicy {
    /// Any member (subject to join approval).
    Members,
    /// The owner and admins only.
    Admins,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    /// Joins by members' invitations and by QR code wait for an admin.
    pub join_approval: bool,
    pub invite_policy: InvitePolicy,
    pub member_cap: u32,
    pub announcement: Option<String>,
    /// Only the owner and admins may send.
    pub mute_all: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub group_id: GroupId,
    pub channel_id: ChannelId,
    pub name: String,
    pub description: String,
    pub avatar_file_id: Option<String>,
    pub owner_id: UserId,
    pub member_count: u32,
    pub settings: GroupSettings,
    /// The caller's role.
    pub role: Role,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCreate {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Added at once (each must allow the caller to add them); the caller
    /// becomes the owner.
    #[serde(default)]
    pub member_ids: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCreated {
    pub group_id: GroupId,
    pub channel_id: ChannelId,
}
route!(GroupCreate, "group/group/create", GroupCreated);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupInfo {
    pub group_id: GroupId,
}
route!(GroupInfo, "group/group/info", GroupView);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupListResponse {
    pub groups: Vec<GroupView>,
}
route!(GroupList, "group/group/list", GroupListResponse);

/// Changes the group's name, description or avatar (owner and admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupUpdate {
    pub group_id: GroupId,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// `null` leaves it; an empty string clears it.
    #[serde(default)]
    pub avatar_file_id: Option<String>,
}
route!(GroupUpdate, "group/group/update", GroupView);

/// Ends the group (owner only): every member is removed; the last event of
/// the channel says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDissolve {
    pub group_id: GroupId,
}
route!(GroupDissolve, "group/group/dissolve", Empty);

/// Adds users (all or none). Owner and admins add directly; members, when
/// the invite policy lets them, add directly or, with join approval on,
/// create join requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberAdd {
    pub group_id: GroupId,
    pub user_ids: Vec<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersAdded {
    pub added: Vec<UserId>,
    /// Users now waiting for approval.
    pub pending: Vec<UserId>,
}
route!(MemberAdd, "group/member/add", MembersAdded);

/// Removes (kicks) a member of a lower role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRemove {
    pub group_id: GroupId,
    pub user_id: UserId,
}
route!(MemberRemove, "group/member/remove", Empty);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberList {
    pub group_id: GroupId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub user_id: UserId,
    pub role: Role,
    /// The member may not send before this time (unix ms).
    pub muted_until_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberListResponse {
    pub members: Vec<MemberView>,
}
route!(MemberList, "group/member/list", MemberListResponse);

/// Leaves the group (the owner must transfer ownership first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberLeave {
    pub group_id: GroupId,
}
route!(MemberLeave, "group/member/leave", Empty);

/// Stops a member of a lower role from sending until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberMute {
    pub group_id: GroupId,
    pub user_id: UserId,
    pub until_ms: i64,
}
route!(MemberMute, "group/member/mute", Empty);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberUnmute {
    pub group_id: GroupId,
    pub user_id: UserId,
}
route!(MemberUnmute, "group/member/unmute", Empty);

/// Makes a member an admin or an admin a member (owner only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSet {
    pub group_id: GroupId,
    pub user_id: UserId,
    pub role: Role,
}
route!(RoleSet, "group/role/set", Empty);

/// Hands ownership to another member; the caller becomes an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferOwner {
    pub group_id: GroupId,
    pub user_id: UserId,
}
route!(TransferOwner, "group/role/transfer_owner", Empty);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsGet {
    pub group_id: GroupId,
}
route!(SettingsGet, "group/settings/get", GroupSettings);

/// Changes the given settings (owner and admins); absent ones stay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    pub group_id: GroupId,
    #[serde(default)]
    pub join_approval: Option<bool>,
    #[serde(default)]
    pub invite_policy: Option<InvitePolicy>,
    #[serde(default)]
    pub member_cap: Option<u32>,
    /// An empty string clears the announcement.
    #[serde(default)]
    pub announcement: Option<String>,
}
route!(SettingsUpdate, "group/settings/update", GroupSettings);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuteAll {
    pub group_id: GroupId,
    pub muted: bool,
}
route!(MuteAll, "group/settings/mute_all", GroupSettings);

/// A signed, expiring invitation code for the group (whoever may invite).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrcodeGenerate {
    pub group_id: GroupId,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}
route!(QrcodeGenerate, "group/qrcode/generate", ShareCode);

/// Invalidates every invitation code of the group issued so far (owner and
/// admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrcodeRevoke {
    pub group_id: GroupId,
}
route!(QrcodeRevoke, "group/qrcode/revoke", Empty);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrcodeJoin {
    pub code: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinStatus {
    Joined,
    /// A join request waits for the owner or an admin.
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QrcodeJoined {
    pub group_id: GroupId,
    pub channel_id: ChannelId,
    pub status: JoinStatus,
}
route!(QrcodeJoin, "group/qrcode/join", QrcodeJoined);

/// Pending join requests (owner and admins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalList {
    pub group_id: GroupId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinVia {
    Invite,
    Qrcode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub request_id: RequestId,
    pub group_id: GroupId,
    pub user_id: UserId,
    /// Who invited the user (for `via: invite`) or issued the code.
    pub inviter_id: Option<UserId>,
    pub via: JoinVia,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalListResponse {
    pub requests: Vec<ApprovalView>,
}
route!(ApprovalList, "group/approval/list", ApprovalListResponse);

/// Approves (the user joins) or declines a join request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalHandle {
    pub request_id: RequestId,
    pub approve: bool,
}
route!(ApprovalHandle, "group/approval/handle", Empty);

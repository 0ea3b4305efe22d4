//! Who may do what: to a channel, a document, a group or another user.
//! Every handler asks here, so the rules live in one place.
//!
//! The rules are pure functions of facts read beforehand (roles,
//! relations, privacy settings); group rules are one table,
//! [`GROUP_RULES`]. Storage re-checks the memberships a group decision was
//! based on inside the transaction that applies it.

use conclave_core::{ChannelId, ErrorCode, UserId};
use conclave_docs::Access;
use conclave_protocol::api::account::{Audience, Privacy};
use conclave_protocol::api::groups::{InvitePolicy, Role};
use conclave_storage::{
    ChannelKind, ChannelRecord, DocumentRecord, FileRecord, GroupRecord, GroupRules, MemberRecord,
    MessageRecord, PrivacyRecord, Relation, WriteContext,
};

use crate::api_error::ApiError;
use crate::state::AppState;

/// Roles that may moderate a group (revoke anyone's message at any time).
const MODERATOR_ROLES: &[&str] = &["owner", "admin"];

/// The channel and the caller's membership in it; `not_member` otherwise
/// (also when the channel does not exist, which outsiders cannot tell apart).
pub(crate) async fn member_of(
    state: &AppState,
    channel: ChannelId,
    user: UserId,
) -> Result<(ChannelRecord, MemberRecord), ApiError> {
    state
        .storage
        .messages()
        .membership(channel, user)
        .await?
        .ok_or_else(|| not_member(channel))
}

pub(crate) fn not_member(channel: ChannelId) -> ApiError {
    ApiError::new(
        ErrorCode::NotMember,
        format!("you are not a member of channel {channel}"),
    )
}

/// A document opens for its owner and for members of its channel, if it
/// has one.
pub(crate) async fn may_open_document(
    state: &AppState,
    document: &DocumentRecord,
    user: UserId,
) -> Result<(), ApiError> {
    document_access(state, document, user).await.map(|_| ())
}

/// What `user` may do to a document: its owner edits it; a member of its
/// channel edits it while they may write in the channel, and otherwise
/// (muted, a muted-all group without a moderator's role, a direct channel
/// whose peer blocks them) reads it. Anyone else is `forbidden`.
pub(crate) async fn document_access(
    state: &AppState,
    document: &DocumentRecord,
    user: UserId,
) -> Result<Access, ApiError> {
    if document.owner_id == user {
        return Ok(Access::ReadWrite);
    }
    let forbidden = || {
        ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "only the owner and members of its channel may open document `{}`",
                document.name
            ),
        )
    };
    let Some(channel) = document.channel_id else {
        return Err(forbidden());
    };
    let context = match write_context(state, channel, user).await {
        Ok(found) => found,
        Err(err) if err.code == ErrorCode::NotMember => return Err(forbidden()),
        Err(err) => return Err(err),
    };
    match may_write(&context, crate::unix_ms()) {
        Ok(()) => Ok(Access::ReadWrite),
        Err(err) if err.code.http_status() < 500 => Ok(Access::ReadOnly),
        Err(err) => Err(err),
    }
}

/// A file may be downloaded (and shared again) by its uploader and by the
/// current members of any channel where a message referencing it was sent.
pub(crate) async fn may_download(
    state: &AppState,
    file: &FileRecord,
    user: UserId,
) -> Result<(), ApiError> {
    if file.owner_id == user || state.storage.files().referenced_for(file.id, user).await? {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "file {} is only for its uploader and the members of channels it was shared in",
            file.id
        ),
    ))
}

/// A user's privacy settings as stored (fail closed).
pub(crate) async fn privacy_of(state: &AppState, user: UserId) -> Result<Privacy, ApiError> {
    Ok(privacy_from(
        state.storage.social().privacy(user).await?.as_ref(),
    ))
}

/// The relation of `a` to `b` and `b`'s privacy settings (fail closed).
pub(crate) async fn relation_and_privacy(
    state: &AppState,
    a: UserId,
    b: UserId,
) -> Result<(Relation, Privacy), ApiError> {
    let relation = state.storage.social().relation(a, b).await?;
    Ok((relation, privacy_of(state, b).await?))
}

/// The channel and the caller's membership, if the caller may write to it
/// now (send, forward, react, pin, type); `not_member` if not a member.
pub(crate) async fn writable(
    state: &AppState,
    channel: ChannelId,
    user: UserId,
    now_ms: i64,
) -> Result<(ChannelRecord, MemberRecord), ApiError> {
    let context = write_context(state, channel, user).await?;
    may_write(&context, now_ms)?;
    Ok((context.channel, context.member))
}

/// What deciding a write needs, read at once; `not_member` if the user is
/// not a member (also when the channel does not exist).
pub(crate) async fn write_context(
    state: &AppState,
    channel: ChannelId,
    user: UserId,
) -> Result<WriteContext, ApiError> {
    state
        .storage
        .write_context(channel, user)
        .await?
        .ok_or_else(|| not_member(channel))
}

/// May this member write to the channel now? Their own mute; in a group,
/// the group's rules; in a direct channel, the blacklist and the peer's
/// privacy.
pub(crate) fn may_write(context: &WriteContext, now_ms: i64) -> Result<(), ApiError> {
    may_send(&context.member, now_ms)?;
    match context.channel.kind {
        ChannelKind::Group => {
            let rules = context
                .group
                .ok_or_else(|| not_member(context.channel.id))?;
            group_rule(
                GroupAction::Send,
                Standing::Member(role_of(&context.member)),
                None,
                &rules,
            )
        }
        ChannelKind::Direct => match &context.peer {
            None => Ok(()),
            Some(peer) => {
                may_message_directly(&peer.relation, &privacy_from(peer.privacy.as_ref()))
            }
        },
    }
}

/// A member may send unless muted until a time still ahead.
pub(crate) fn may_send(member: &MemberRecord, now_ms: i64) -> Result<(), ApiError> {
    match member.send_muted_until_ms {
        Some(until) if until > now_ms => Err(ApiError::new(
            ErrorCode::Muted,
            format!("you are muted in this channel until {until}"),
        )),
        _ => Ok(()),
    }
}

/// A member sees a message if it is in the channel and not older than the
/// member's joining.
pub(crate) fn may_see(member: &MemberRecord, message: &MessageRecord) -> bool {
    message.channel_id == member.channel_id && message.pts > member.joined_pts
}

/// The sender may revoke within the window; group moderators at any time.
pub(crate) fn may_revoke(
    member: &MemberRecord,
    message: &MessageRecord,
    now_ms: i64,
    window_secs: u64,
) -> Result<(), ApiError> {
    if MODERATOR_ROLES.contains(&member.role.as_str()) {
        return Ok(());
    }
    if message.sender_id != member.user_id {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the sender or a group admin may revoke a message",
        ));
    }
    let window_ms = i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    if now_ms.saturating_sub(message.created_at_ms) > window_ms {
        return Err(ApiError::new(
            ErrorCode::RevokeWindowExpired,
            format!("a message can be revoked for {window_secs} seconds after it is sent"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Privacy and the blacklist

/// Settings that let nobody in: what a missing or unreadable row means.
pub(crate) const STRICTEST_PRIVACY: Privacy = Privacy {
    direct_messages: Audience::Friends,
    searchable_by: Audience::Nobody,
    group_invites: Audience::Nobody,
    last_seen: Audience::Nobody,
};

/// The settings as stored, failing closed: a missing row, or a value this
/// server does not know, reads as the strictest setting.
pub(crate) fn privacy_from(record: Option<&PrivacyRecord>) -> Privacy {
    let Some(record) = record else {
        return STRICTEST_PRIVACY;
    };
    let parse = |raw: &str, strictest: Audience| match raw {
        "everyone" => Audience::Everyone,
        "friends" => Audience::Friends,
        "nobody" => Audience::Nobody,
        _ => strictest,
    };
    let direct_messages = match parse(&record.direct_messages, Audience::Friends) {
        // Not a valid stored value for this setting: fail closed.
        Audience::Nobody => Audience::Friends,
        other => other,
    };
    Privacy {
        direct_messages,
        searchable_by: parse(&record.searchable_by, Audience::Nobody),
        group_invites: parse(&record.group_invites, Audience::Nobody),
        last_seen: parse(&record.last_seen, Audience::Nobody),
    }
}

pub(crate) fn audience_str(audience: Audience) -> &'static str {
    match audience {
        Audience::Everyone => "everyone",
        Audience::Friends => "friends",
        Audience::Nobody => "nobody",
    }
}

fn admits(audience: Audience, relation: &Relation) -> bool {
    match audience {
        Audience::Everyone => true,
        Audience::Friends => relation.friends,
        Audience::Nobody => false,
    }
}

/// Refuses anything between two users when either has blocked the other.
pub(crate) fn not_blocked(relation: &Relation) -> Result<(), ApiError> {
    blocked(relation).map_or(Ok(()), Err)
}

fn blocked(relation: &Relation) -> Option<ApiError> {
    if relation.b_blocked_a {
        return Some(ApiError::new(
            ErrorCode::Blocked,
            "this user has blocked you",
        ));
    }
    if relation.a_blocked_b {
        return Some(ApiError::new(
            ErrorCode::Blocked,
            "you have blocked this user; unblock them first",
        ));
    }
    None
}

/// May `a` write to `b` in their direct channel? `relation` is `a`'s to
/// `b`, `privacy` is `b`'s. A block either way makes the channel read-only.
pub(crate) fn may_message_directly(relation: &Relation, privacy: &Privacy) -> Result<(), ApiError> {
    if let Some(err) = blocked(relation) {
        return Err(err);
    }
    if !admits(privacy.direct_messages, relation) {
        return Err(ApiError::new(
            ErrorCode::PrivacyRestricted,
            "this user accepts direct messages from friends only",
        ));
    }
    Ok(())
}

/// May `a` ask `b` to be friends? Self-requests and duplicates are the
/// caller's to refuse; this is the relation rule.
pub(crate) fn may_befriend(relation: &Relation) -> Result<(), ApiError> {
    if let Some(err) = blocked(relation) {
        return Err(err);
    }
    if relation.friends {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "you are friends already",
        ));
    }
    if relation.a_requested_b {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "your request to this user is still pending",
        ));
    }
    Ok(())
}

/// May `a` add `b` to a group (directly or by an invitation)?
pub(crate) fn may_add_to_group(relation: &Relation, privacy: &Privacy) -> Result<(), ApiError> {
    if let Some(err) = blocked(relation) {
        return Err(err);
    }
    if !admits(privacy.group_invites, relation) {
        return Err(ApiError::new(
            ErrorCode::PrivacyRestricted,
            "this user's privacy settings do not let you add them to groups",
        ));
    }
    Ok(())
}

/// May `a` see `b`'s presence (online and last seen)?
pub(crate) fn may_see_presence(relation: &Relation, privacy: &Privacy) -> bool {
    blocked(relation).is_none() && admits(privacy.last_seen, relation)
}

/// May `a` find `b` by username?
pub(crate) fn may_find(relation: &Relation, privacy: &Privacy) -> bool {
    !relation.b_blocked_a && admits(privacy.searchable_by, relation)
}

// ---------------------------------------------------------------------------
// Groups

/// Everything one can do in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GroupAction {
    View,
    ListMembers,
    Update,
    Dissolve,
    /// Add members, directly or by join requests.
    Invite,
    Kick,
    Leave,
    Mute,
    SetRole,
    TransferOwner,
    GetSettings,
    UpdateSettings,
    MuteAll,
    GenerateCode,
    RevokeCodes,
    ListApprovals,
    HandleApproval,
    Send,
}

/// The actor's standing in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    Member(Role),
    Outsider,
}

/// What an action needs of its actor (and target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Any member.
    Member,
    /// Any member but the owner (who must hand the group over first).
    NotOwner,
    /// The owner or an admin.
    Moderator,
    Owner,
    /// The owner or an admin; members too when the invite policy says so.
    Inviter,
    /// A role above the target's.
    Outranks,
    /// Admins and the owner always; members unless everyone is muted.
    Speaker,
}

/// The group permission table: each action and what it needs.
pub(crate) const GROUP_RULES: &[(GroupAction, Need)] = &[
    (GroupAction::View, Need::Member),
    (GroupAction::ListMembers, Need::Member),
    (GroupAction::GetSettings, Need::Member),
    (GroupAction::Leave, Need::NotOwner),
    (GroupAction::Update, Need::Moderator),
    (GroupAction::UpdateSettings, Need::Moderator),
    (GroupAction::MuteAll, Need::Moderator),
    (GroupAction::RevokeCodes, Need::Moderator),
    (GroupAction::ListApprovals, Need::Moderator),
    (GroupAction::HandleApproval, Need::Moderator),
    (GroupAction::Dissolve, Need::Owner),
    (GroupAction::SetRole, Need::Owner),
    (GroupAction::TransferOwner, Need::Owner),
    (GroupAction::Invite, Need::Inviter),
    (GroupAction::GenerateCode, Need::Inviter),
    (GroupAction::Kick, Need::Outranks),
    (GroupAction::Mute, Need::Outranks),
    (GroupAction::Send, Need::Speaker),
];

/// Decides a group action from the table. `target` is the role of the
/// member acted on, for actions that have one.
pub(crate) fn group_rule(
    action: GroupAction,
    actor: Standing,
    target: Option<Role>,
    group: &GroupRules,
) -> Result<(), ApiError> {
    let need = GROUP_RULES
        .iter()
        .find(|(a, _)| *a == action)
        .map(|(_, need)| *need)
        .unwrap_or(Need::Owner);
    let Standing::Member(role) = actor else {
        return Err(ApiError::new(
            ErrorCode::NotMember,
            format!("you are not a member of group {}", group.group_id),
        ));
    };
    let moderator = role >= Role::Admin;
    let allowed = match need {
        Need::Member => true,
        Need::NotOwner => {
            if role == Role::Owner {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "the owner cannot leave; transfer ownership or dissolve the group",
                ));
            }
            true
        }
        Need::Moderator => moderator,
        Need::Owner => role == Role::Owner,
        Need::Inviter => moderator || group.members_invite,
        Need::Outranks => target.is_some_and(|target| role > target),
        Need::Speaker => {
            if !moderator && group.mute_all {
                return Err(ApiError::new(
                    ErrorCode::Muted,
                    "only the owner and admins may send while the group is muted",
                ));
            }
            true
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("a group {} may not do this", role.as_str()),
        ))
    }
}

/// Whether additions by someone of this standing wait for approval (a
/// plain member's, when the group asks for approval).
pub(crate) fn additions_need_approval(actor: Standing, group: &GroupRecord) -> bool {
    group.join_approval && !matches!(actor, Standing::Member(role) if role >= Role::Admin)
}

/// The stored invite policy; anything unknown reads as the stricter one.
pub(crate) fn invite_policy(group: &GroupRecord) -> InvitePolicy {
    if GroupRules::of(group).members_invite {
        InvitePolicy::Members
    } else {
        InvitePolicy::Admins
    }
}

/// A member's role; an unknown stored role reads as a plain member.
pub(crate) fn role_of(member: &MemberRecord) -> Role {
    Role::parse(&member.role).unwrap_or(Role::Member)
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_core::{DeviceId, MessageId};

    fn member(role: &str, muted_until: Option<i64>) -> MemberRecord {
        MemberRecord {
            channel_id: ChannelId::new(1),
            user_id: UserId::new(10),
            role: role.to_owned(),
            joined_pts: 5,
            read_pts: 0,
            pinned: false,
            hidden_until_pts: None,
            notifications_muted: false,
            send_muted_until_ms: muted_until,
        }
    }

    fn message(sender: u64, pts: u64, created_at_ms: i64) -> MessageRecord {
        MessageRecord {
            id: MessageId::new(1),
            channel_id: ChannelId::new(1),
            pts,
            sender_id: UserId::new(sender),
            sender_device_id: DeviceId::new(1),
            client_msg_id: "c".to_owned(),
            content: Some("{}".to_owned()),
            reply_to: None,
            mentions: "{}".to_owned(),
            created_at_ms,
            revoked_at_ms: None,
            revoked_by: None,
            pinned: false,
        }
    }

    fn group(policy: &str, mute_all: bool) -> GroupRecord {
        GroupRecord {
            id: conclave_core::GroupId::new(1),
            channel_id: ChannelId::new(1),
            name: "g".to_owned(),
            description: String::new(),
            avatar_file_id: None,
            owner_id: UserId::new(1),
            join_approval: false,
            invite_policy: policy.to_owned(),
            member_cap: 10,
            announcement: None,
            mute_all,
            qr_epoch: 0,
            member_count: 3,
            created_at_ms: 0,
        }
    }

    #[test]
    fn the_group_table_covers_every_action_once() {
        use GroupAction::*;
        let all = [
            View,
            ListMembers,
            Update,
            Dissolve,
            Invite,
            Kick,
            Leave,
            Mute,
            SetRole,
            TransferOwner,
            GetSettings,
            UpdateSettings,
            MuteAll,
            GenerateCode,
            RevokeCodes,
            ListApprovals,
            HandleApproval,
            Send,
        ];
        for action in all {
            let rules = GROUP_RULES.iter().filter(|(a, _)| *a == action).count();
            assert_eq!(rules, 1, "{action:?} has exactly one rule");
        }
        assert_eq!(GROUP_RULES.len(), all.len());
    }

    /// (action, actor, target, invite policy, mute_all) -> outcome.
    type Case = (
        GroupAction,
        Standing,
        Option<Role>,
        &'static str,
        bool,
        Result<(), ErrorCode>,
    );

    /// The whole matrix: action x actor x target x group settings.
    #[test]
    fn the_group_permission_matrix() {
        use GroupAction::*;
        const O: Standing = Standing::Member(Role::Owner);
        const A: Standing = Standing::Member(Role::Admin);
        const M: Standing = Standing::Member(Role::Member);
        const N: Standing = Standing::Outsider;
        let ok = Ok(());
        let forbidden = Err(ErrorCode::Forbidden);
        let muted = Err(ErrorCode::Muted);
        let outsider = Err(ErrorCode::NotMember);
        // (action, actor, target, invite policy, mute_all) -> outcome.
        let cases: &[Case] = &[
            (View, O, None, "members", false, ok),
            (View, M, None, "members", false, ok),
            (View, N, None, "members", false, outsider),
            (ListMembers, M, None, "admins", false, ok),
            (ListMembers, N, None, "admins", false, outsider),
            (GetSettings, M, None, "members", false, ok),
            (Update, O, None, "members", false, ok),
            (Update, A, None, "members", false, ok),
            (Update, M, None, "members", false, forbidden),
            (Update, N, None, "members", false, outsider),
            (UpdateSettings, A, None, "members", false, ok),
            (UpdateSettings, M, None, "members", false, forbidden),
            (MuteAll, A, None, "members", false, ok),
            (MuteAll, M, None, "members", false, forbidden),
            (RevokeCodes, A, None, "members", false, ok),
            (RevokeCodes, M, None, "members", false, forbidden),
            (ListApprovals, A, None, "members", false, ok),
            (ListApprovals, M, None, "members", false, forbidden),
            (HandleApproval, O, None, "members", false, ok),
            (HandleApproval, M, None, "members", false, forbidden),
            (Dissolve, O, None, "members", false, ok),
            (Dissolve, A, None, "members", false, forbidden),
            (Dissolve, M, None, "members", false, forbidden),
            (SetRole, O, Some(Role::Member), "members", false, ok),
            (SetRole, A, Some(Role::Member), "members", false, forbidden),
            (TransferOwner, O, Some(Role::Admin), "members", false, ok),
            (
                TransferOwner,
                A,
                Some(Role::Member),
                "members",
                false,
                forbidden,
            ),
            (
                TransferOwner,
                N,
                Some(Role::Member),
                "members",
                false,
                outsider,
            ),
            (Invite, O, None, "admins", false, ok),
            (Invite, A, None, "admins", false, ok),
            (Invite, M, None, "admins", false, forbidden),
            (Invite, M, None, "members", false, ok),
            (Invite, N, None, "members", false, outsider),
            (GenerateCode, M, None, "members", false, ok),
            (GenerateCode, M, None, "admins", false, forbidden),
            (GenerateCode, M, None, "unknown", false, forbidden),
            (Kick, O, Some(Role::Admin), "members", false, ok),
            (Kick, O, Some(Role::Member), "members", false, ok),
            (Kick, A, Some(Role::Member), "members", false, ok),
            (Kick, A, Some(Role::Admin), "members", false, forbidden),
            (Kick, A, Some(Role::Owner), "members", false, forbidden),
            (Kick, M, Some(Role::Member), "members", false, forbidden),
            (Kick, M, Some(Role::Admin), "members", false, forbidden),
            (Kick, N, Some(Role::Member), "members", false, outsider),
            (Mute, A, Some(Role::Member), "members", false, ok),
            (Mute, A, Some(Role::Admin), "members", false, forbidden),
            (Mute, M, Some(Role::Member), "members", false, forbidden),
            (Leave, M, None, "members", false, ok),
            (Leave, A, None, "members", false, ok),
            (Leave, O, None, "members", false, forbidden),
            (Leave, N, None, "members", false, outsider),
            (Send, M, None, "members", false, ok),
            (Send, M, None, "members", true, muted),
            (Send, A, None, "members", true, ok),
            (Send, O, None, "members", true, ok),
            (Send, N, None, "members", false, outsider),
        ];
        for (action, actor, target, policy, mute_all, expected) in cases {
            let got = group_rule(
                *action,
                *actor,
                *target,
                &GroupRules::of(&group(policy, *mute_all)),
            )
            .map_err(|e| e.code);
            assert_eq!(
                got, *expected,
                "{action:?} by {actor:?} on {target:?} (policy {policy}, mute_all {mute_all})"
            );
        }
    }

    fn relation(friends: bool, a_blocked_b: bool, b_blocked_a: bool) -> Relation {
        Relation {
            friends,
            a_blocked_b,
            b_blocked_a,
            ..Relation::default()
        }
    }

    fn privacy(direct: &str, others: &str) -> PrivacyRecord {
        PrivacyRecord {
            direct_messages: direct.to_owned(),
            searchable_by: others.to_owned(),
            group_invites: others.to_owned(),
            last_seen: others.to_owned(),
        }
    }

    #[test]
    fn direct_messages_follow_blocks_then_privacy() {
        let everyone = privacy_from(Some(&privacy("everyone", "everyone")));
        let friends = privacy_from(Some(&privacy("friends", "friends")));
        let cases = [
            (relation(true, false, false), everyone, Ok(())),
            (relation(false, false, false), everyone, Ok(())),
            (relation(true, false, false), friends, Ok(())),
            (
                relation(false, false, false),
                friends,
                Err(ErrorCode::PrivacyRestricted),
            ),
            (
                relation(true, false, true),
                everyone,
                Err(ErrorCode::Blocked),
            ),
            (
                relation(true, true, false),
                everyone,
                Err(ErrorCode::Blocked),
            ),
            (
                relation(false, false, true),
                friends,
                Err(ErrorCode::Blocked),
            ),
        ];
        for (relation, privacy, expected) in cases {
            let got = may_message_directly(&relation, &privacy).map_err(|e| e.code);
            assert_eq!(got, expected, "{relation:?} {privacy:?}");
        }
    }

    #[test]
    fn privacy_fails_closed() {
        assert_eq!(privacy_from(None), STRICTEST_PRIVACY, "a missing row");
        let garbage = privacy_from(Some(&privacy("sometimes", "???")));
        assert_eq!(garbage, STRICTEST_PRIVACY, "unknown values");
        let nobody_dm = privacy_from(Some(&privacy("nobody", "everyone")));
        assert_eq!(nobody_dm.direct_messages, Audience::Friends);
        let stranger = relation(false, false, false);
        let friend = relation(true, false, false);
        let strict = privacy_from(None);
        assert!(!may_find(&stranger, &strict));
        assert!(!may_see_presence(&friend, &strict));
        assert_eq!(
            may_add_to_group(&friend, &strict).map_err(|e| e.code),
            Err(ErrorCode::PrivacyRestricted)
        );
        let open = privacy_from(Some(&privacy("everyone", "everyone")));
        assert!(may_find(&stranger, &open));
        assert!(
            !may_find(&relation(false, false, true), &open),
            "blocked the searcher"
        );
        assert!(
            may_find(&relation(false, true, false), &open),
            "the searcher blocked them"
        );
        assert!(!may_see_presence(&relation(true, true, false), &open));
        let friends_only = privacy_from(Some(&privacy("friends", "friends")));
        assert!(may_see_presence(&friend, &friends_only));
        assert!(!may_see_presence(&stranger, &friends_only));
    }

    #[test]
    fn befriending_rules() {
        let pending = Relation {
            a_requested_b: true,
            ..Relation::default()
        };
        assert_eq!(
            may_befriend(&pending).map_err(|e| e.code),
            Err(ErrorCode::Conflict)
        );
        assert_eq!(
            may_befriend(&relation(true, false, false)).map_err(|e| e.code),
            Err(ErrorCode::Conflict)
        );
        assert_eq!(
            may_befriend(&relation(false, false, true)).map_err(|e| e.code),
            Err(ErrorCode::Blocked)
        );
        assert!(may_befriend(&Relation::default()).is_ok());
    }

    #[test]
    fn the_revoke_rules() {
        let window = 120;
        let own = message(10, 9, 1_000);
        let cases = [
            ("member", &own, 1_000 + 120_000, Ok(())),
            (
                "member",
                &own,
                1_000 + 120_001,
                Err(ErrorCode::RevokeWindowExpired),
            ),
            (
                "member",
                &message(11, 9, 1_000),
                1_000,
                Err(ErrorCode::Forbidden),
            ),
            ("admin", &message(11, 9, 1_000), 10_000_000, Ok(())),
            ("owner", &own, 10_000_000, Ok(())),
        ];
        for (role, msg, now, expected) in cases {
            let got = may_revoke(&member(role, None), msg, now, window).map_err(|e| e.code);
            assert_eq!(got, expected, "{role} at {now}");
        }
    }

    #[test]
    fn muting_and_visibility() {
        assert!(may_send(&member("member", None), 0).is_ok());
        assert_eq!(
            may_send(&member("member", Some(100)), 99).unwrap_err().code,
            ErrorCode::Muted
        );
        assert!(may_send(&member("member", Some(100)), 100).is_ok());
        assert!(
            !may_see(&member("member", None), &message(1, 5, 0)),
            "before joining"
        );
        assert!(may_see(&member("member", None), &message(1, 6, 0)));
    }
}

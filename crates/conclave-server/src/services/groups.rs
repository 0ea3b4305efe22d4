//! Groups: creation, membership, roles, settings, invitation codes and join
//! requests.
//!
//! Each handler reads the facts (the group, the caller's and the target's
//! membership), asks [`crate::permissions::group_rule`], and hands storage
//! the change together with the memberships the decision rested on;
//! storage applies it with its `group/...` event in one transaction, or
//! refuses if those memberships changed meanwhile. Users a change concerns
//! then get an inbox entry.

use std::collections::HashSet;

use conclave_core::{ErrorCode, GroupId, UserId};
use conclave_protocol::api::account::ShareCode;
use conclave_protocol::api::groups::*;
use conclave_protocol::api::{Empty, events};
use conclave_storage::{
    GroupChange, GroupChanged, GroupPatch, GroupRecord, GroupRules, JoinRequestRecord,
    MemberRecord, NewGroup, StorageError,
};
use serde_json::json;

use crate::api_error::ApiError;
use crate::permissions::{
    GroupAction, Standing, additions_need_approval, group_rule, invite_policy, may_add_to_group,
    relation_and_privacy, role_of,
};
use crate::rpc::{Caller, RouteTable, RpcContext};
use crate::services::accounts::valid_text;
use crate::services::inbox::deliver;
use crate::services::social::{code_error, code_ttl_ms};
use crate::state::AppState;
use crate::tokens::{self, GroupInviteClaims};

const NAME_LEN_MAX_BYTES: usize = 128;
const DESCRIPTION_LEN_MAX_BYTES: usize = 2048;
const ANNOUNCEMENT_LEN_MAX_BYTES: usize = 4096;
const FILE_ID_LEN_MAX_BYTES: usize = 128;
/// Users one call may add.
const ADD_BATCH_MAX: usize = 100;

pub(crate) fn register(table: &mut RouteTable) {
    table.add(group_create);
    table.add(group_info);
    table.add(group_list);
    table.add(group_update);
    table.add(group_dissolve);
    table.add(member_add);
    table.add(member_remove);
    table.add(member_list);
    table.add(member_leave);
    table.add(member_mute);
    table.add(member_unmute);
    table.add(role_set);
    table.add(transfer_owner);
    table.add(settings_get);
    table.add(settings_update);
    table.add(mute_all);
    table.add(qrcode_generate);
    table.add(qrcode_revoke);
    table.add(qrcode_join);
    table.add(approval_list);
    table.add(approval_handle);
}

/// A group and the caller's place in it.
struct Scope {
    group: GroupRecord,
    caller: Caller,
    member: Option<MemberRecord>,
}

impl Scope {
    fn standing(&self) -> Standing {
        match &self.member {
            Some(member) => Standing::Member(role_of(member)),
            None => Standing::Outsider,
        }
    }

    /// What storage must find unchanged: the caller's membership.
    fn expect(&self) -> Vec<(UserId, Option<String>)> {
        vec![(
            self.caller.user_id,
            self.member.as_ref().map(|m| m.role.clone()),
        )]
    }

    fn allow(&self, action: GroupAction, target: Option<Role>) -> Result<(), ApiError> {
        group_rule(
            action,
            self.standing(),
            target,
            &GroupRules::of(&self.group),
        )
    }
}

fn no_group(id: GroupId) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no group {id}"))
}

async fn scope(ctx: &RpcContext, id: GroupId) -> Result<Scope, ApiError> {
    let caller = ctx.caller()?;
    let group = ctx
        .state
        .storage
        .groups()
        .group(id)
        .await?
        .ok_or_else(|| no_group(id))?;
    let member = ctx
        .state
        .storage
        .messages()
        .member(group.channel_id, caller.user_id)
        .await?;
    Ok(Scope {
        group,
        caller,
        member,
    })
}

/// The member `user` that the caller acts on with `action`, checked against
/// the rules with the member's role; and the memberships storage must find
/// unchanged (the caller's and the member's).
async fn act_on(
    state: &AppState,
    scope: &Scope,
    action: GroupAction,
    user: UserId,
) -> Result<(MemberRecord, Vec<(UserId, Option<String>)>), ApiError> {
    // Outsiders learn nothing about the members.
    scope.allow(GroupAction::View, None)?;
    let target = state
        .storage
        .messages()
        .member(scope.group.channel_id, user)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("user {user} is not a member of group {}", scope.group.id),
            )
        })?;
    scope.allow(action, Some(role_of(&target)))?;
    let mut expect = scope.expect();
    expect.push((target.user_id, Some(target.role.clone())));
    Ok((target, expect))
}

fn settings(group: &GroupRecord) -> GroupSettings {
    GroupSettings {
        join_approval: group.join_approval,
        invite_policy: invite_policy(group),
        member_cap: group.member_cap,
        announcement: group.announcement.clone(),
        mute_all: group.mute_all,
    }
}

fn view(group: &GroupRecord, role: Role) -> GroupView {
    GroupView {
        group_id: group.id,
        channel_id: group.channel_id,
        name: group.name.clone(),
        description: group.description.clone(),
        avatar_file_id: group.avatar_file_id.clone(),
        owner_id: group.owner_id,
        member_count: group.member_count,
        settings: settings(group),
        role,
        created_at_ms: group.created_at_ms,
    }
}

/// Storage refusals as clients see them in group routes.
fn change_error(err: StorageError) -> ApiError {
    match err {
        StorageError::LimitReached(message) => ApiError::new(ErrorCode::GroupFull, message),
        StorageError::NotFound(message) => ApiError::new(ErrorCode::NotFound, message),
        other => other.into(),
    }
}

async fn apply(
    ctx: &RpcContext,
    scope: &Scope,
    expect: Vec<(UserId, Option<String>)>,
    change: GroupChange,
) -> Result<GroupChanged, ApiError> {
    ctx.state
        .storage
        .groups()
        .change_group(
            scope.group.id,
            scope.caller.user_id,
            &expect,
            change,
            crate::unix_ms(),
            scope.caller.session_id,
        )
        .await
        .map_err(change_error)
}

/// Inbox entry for a user a change concerns (their other sessions too).
async fn tell(
    ctx: &RpcContext,
    user: UserId,
    kind: &str,
    group: &GroupRecord,
    extra: serde_json::Value,
) -> Result<(), ApiError> {
    let mut body = json!({
        "group_id": group.id,
        "channel_id": group.channel_id,
        "name": group.name,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let except = ctx
        .caller
        .filter(|c| c.user_id == user)
        .and_then(|c| c.session_id);
    deliver(&ctx.state, user, kind, body, except).await
}

fn valid_name(name: &str) -> Result<String, ApiError> {
    valid_text("name", name, NAME_LEN_MAX_BYTES, false)
}

/// Users the caller may add: real, distinct, not the caller, and letting
/// the caller add them (blacklist and privacy).
async fn addable(
    state: &AppState,
    caller: &Caller,
    users: &[UserId],
) -> Result<Vec<UserId>, ApiError> {
    if users.len() > ADD_BATCH_MAX {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("user_ids: at most {ADD_BATCH_MAX}"),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        if *user == caller.user_id {
            return Err(ApiError::bad_request("user_ids: you cannot add yourself"));
        }
        if !seen.insert(*user) {
            continue;
        }
        if state.storage.accounts().user_by_id(*user).await?.is_none() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no user {user}"),
            ));
        }
        let (relation, privacy) = relation_and_privacy(state, caller.user_id, *user).await?;
        may_add_to_group(&relation, &privacy).map_err(|err| ApiError {
            message: format!("user {user}: {}", err.message),
            ..err
        })?;
        out.push(*user);
    }
    Ok(out)
}

async fn group_create(ctx: RpcContext, req: GroupCreate) -> Result<GroupCreated, ApiError> {
    let caller = ctx.caller()?;
    let state = &ctx.state;
    let name = valid_name(&req.name)?;
    let description = req
        .description
        .as_deref()
        .map(|d| valid_text("description", d, DESCRIPTION_LEN_MAX_BYTES, true))
        .transpose()?
        .unwrap_or_default();
    let members = addable(state, &caller, &req.member_ids).await?;
    let cap = state.config.messaging.group_member_cap_max;
    let (group, _) = state
        .storage
        .groups()
        .create_group(NewGroup {
            owner: caller.user_id,
            name: &name,
            description: &description,
            members: &members,
            member_cap: cap,
            now_ms: crate::unix_ms(),
            origin_session: caller.session_id,
        })
        .await
        .map_err(change_error)?;
    for user in std::iter::once(caller.user_id).chain(members.iter().copied()) {
        tell(
            &ctx,
            user,
            events::GROUP_JOINED,
            &group,
            json!({ "by": caller.user_id, "via": "create" }),
        )
        .await?;
    }
    Ok(GroupCreated {
        group_id: group.id,
        channel_id: group.channel_id,
    })
}

async fn group_info(ctx: RpcContext, req: GroupInfo) -> Result<GroupView, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::View, None)?;
    let role = scope.member.as_ref().map_or(Role::Member, role_of);
    Ok(view(&scope.group, role))
}

async fn group_list(ctx: RpcContext, _req: GroupList) -> Result<GroupListResponse, ApiError> {
    let caller = ctx.caller()?;
    let groups = ctx.state.storage.groups().groups_of(caller.user_id).await?;
    let mut views = Vec::with_capacity(groups.len());
    for group in &groups {
        let member = ctx
            .state
            .storage
            .messages()
            .member(group.channel_id, caller.user_id)
            .await?;
        if let Some(member) = member {
            views.push(view(group, role_of(&member)));
        }
    }
    Ok(GroupListResponse { groups: views })
}

async fn group_update(ctx: RpcContext, req: GroupUpdate) -> Result<GroupView, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::Update, None)?;
    let patch = GroupPatch {
        name: req.name.as_deref().map(valid_name).transpose()?,
        description: req
            .description
            .as_deref()
            .map(|d| valid_text("description", d, DESCRIPTION_LEN_MAX_BYTES, true))
            .transpose()?,
        avatar_file_id: req
            .avatar_file_id
            .as_deref()
            .map(|id| valid_text("avatar_file_id", id, FILE_ID_LEN_MAX_BYTES, true))
            .transpose()?
            .map(|id| (!id.is_empty()).then_some(id)),
        ..GroupPatch::default()
    };
    if patch == GroupPatch::default() {
        return Err(ApiError::bad_request(
            "nothing to change: give name, description or avatar_file_id",
        ));
    }
    let changed = apply(&ctx, &scope, scope.expect(), GroupChange::Update(patch)).await?;
    let role = scope.member.as_ref().map_or(Role::Member, role_of);
    Ok(view(&changed.group, role))
}

async fn group_dissolve(ctx: RpcContext, req: GroupDissolve) -> Result<Empty, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::Dissolve, None)?;
    let changed = apply(&ctx, &scope, scope.expect(), GroupChange::Dissolve).await?;
    for user in &changed.removed {
        tell(
            &ctx,
            *user,
            events::GROUP_REMOVED,
            &changed.group,
            json!({ "reason": "dissolved", "by": scope.caller.user_id }),
        )
        .await?;
    }
    Ok(Empty {})
}

async fn member_add(ctx: RpcContext, req: MemberAdd) -> Result<MembersAdded, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::Invite, None)?;
    if req.user_ids.is_empty() {
        return Err(ApiError::bad_request("user_ids: name at least one user"));
    }
    let state = &ctx.state;
    let users = addable(state, &scope.caller, &req.user_ids).await?;
    for user in &users {
        if state
            .storage
            .messages()
            .member(scope.group.channel_id, *user)
            .await?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("user {user} is already a member"),
            ));
        }
    }
    if additions_need_approval(scope.standing(), &scope.group) {
        for user in &users {
            request_join(
                &ctx,
                &scope.group,
                *user,
                Some(scope.caller.user_id),
                "invite",
            )
            .await?;
        }
        return Ok(MembersAdded {
            added: Vec::new(),
            pending: users,
        });
    }
    // The cap is checked where the members are added (`group_full`).
    let mut expect = scope.expect();
    expect.extend(users.iter().map(|u| (*u, None)));
    let changed = apply(
        &ctx,
        &scope,
        expect,
        GroupChange::Join {
            users: users.clone(),
            via: "invite".to_owned(),
            request: None,
        },
    )
    .await?;
    for user in &users {
        tell(
            &ctx,
            *user,
            events::GROUP_JOINED,
            &changed.group,
            json!({ "by": scope.caller.user_id, "via": "invite" }),
        )
        .await?;
    }
    Ok(MembersAdded {
        added: users,
        pending: Vec::new(),
    })
}

fn full(group: &GroupRecord) -> ApiError {
    ApiError::new(
        ErrorCode::GroupFull,
        format!("group {} is full ({} members)", group.id, group.member_cap),
    )
}

/// Records a join request and tells the user and the group's moderators.
async fn request_join(
    ctx: &RpcContext,
    group: &GroupRecord,
    user: UserId,
    inviter: Option<UserId>,
    via: &str,
) -> Result<JoinRequestRecord, ApiError> {
    let state = &ctx.state;
    let request = state
        .storage
        .groups()
        .request_join(group.id, user, inviter, via, crate::unix_ms())
        .await?;
    let about = json!({
        "request_id": request.id,
        "user_id": user,
        "inviter_id": inviter,
        "via": via,
    });
    if via == "invite" {
        tell(ctx, user, events::GROUP_INVITED, group, about.clone()).await?;
    }
    let moderators = state.storage.messages().members(group.channel_id).await?;
    for moderator in moderators.iter().filter(|m| role_of(m) >= Role::Admin) {
        tell(
            ctx,
            moderator.user_id,
            events::GROUP_APPROVAL,
            group,
            about.clone(),
        )
        .await?;
    }
    Ok(request)
}

async fn member_remove(ctx: RpcContext, req: MemberRemove) -> Result<Empty, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    if req.user_id == scope.caller.user_id {
        return Err(ApiError::bad_request(
            "user_id: to leave a group use group/member/leave",
        ));
    }
    let (_, expect) = act_on(&ctx.state, &scope, GroupAction::Kick, req.user_id).await?;
    let changed = apply(
        &ctx,
        &scope,
        expect,
        GroupChange::Leave {
            user: req.user_id,
            kicked: true,
        },
    )
    .await?;
    tell(
        &ctx,
        req.user_id,
        events::GROUP_REMOVED,
        &changed.group,
        json!({ "reason": "kicked", "by": scope.caller.user_id }),
    )
    .await?;
    Ok(Empty {})
}

async fn member_list(ctx: RpcContext, req: MemberList) -> Result<MemberListResponse, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::ListMembers, None)?;
    let mut members: Vec<MemberView> = ctx
        .state
        .storage
        .messages()
        .members(scope.group.channel_id)
        .await?
        .iter()
        .map(|m| MemberView {
            user_id: m.user_id,
            role: role_of(m),
            muted_until_ms: m.send_muted_until_ms,
        })
        .collect();
    members.sort_by(|a, b| b.role.cmp(&a.role).then(a.user_id.cmp(&b.user_id)));
    Ok(MemberListResponse { members })
}

async fn member_leave(ctx: RpcContext, req: MemberLeave) -> Result<Empty, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::Leave, None)?;
    let changed = apply(
        &ctx,
        &scope,
        scope.expect(),
        GroupChange::Leave {
            user: scope.caller.user_id,
            kicked: false,
        },
    )
    .await?;
    tell(
        &ctx,
        scope.caller.user_id,
        events::GROUP_REMOVED,
        &changed.group,
        json!({ "reason": "left", "by": scope.caller.user_id }),
    )
    .await?;
    Ok(Empty {})
}

async fn mute(
    ctx: &RpcContext,
    group: GroupId,
    user: UserId,
    until_ms: Option<i64>,
) -> Result<Empty, ApiError> {
    let scope = scope(ctx, group).await?;
    if user == scope.caller.user_id {
        return Err(ApiError::bad_request("user_id: you cannot mute yourself"));
    }
    let (_, expect) = act_on(&ctx.state, &scope, GroupAction::Mute, user).await?;
    let changed = apply(ctx, &scope, expect, GroupChange::Mute { user, until_ms }).await?;
    tell(
        ctx,
        user,
        events::GROUP_MEMBER_MUTED,
        &changed.group,
        json!({ "until_ms": until_ms, "by": scope.caller.user_id }),
    )
    .await?;
    Ok(Empty {})
}

async fn member_mute(ctx: RpcContext, req: MemberMute) -> Result<Empty, ApiError> {
    if req.until_ms <= crate::unix_ms() {
        return Err(ApiError::bad_request(
            "until_ms: must be in the future (use group/member/unmute to lift a mute)",
        ));
    }
    mute(&ctx, req.group_id, req.user_id, Some(req.until_ms)).await
}

async fn member_unmute(ctx: RpcContext, req: MemberUnmute) -> Result<Empty, ApiError> {
    mute(&ctx, req.group_id, req.user_id, None).await
}

async fn role_set(ctx: RpcContext, req: RoleSet) -> Result<Empty, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    if req.role == Role::Owner {
        return Err(ApiError::bad_request(
            "role: `admin` or `member`; hand over ownership with group/role/transfer_owner",
        ));
    }
    scope.allow(GroupAction::View, None)?;
    if req.user_id == scope.caller.user_id {
        return Err(ApiError::bad_request(
            "user_id: you cannot change your own role",
        ));
    }
    let (target, expect) = act_on(&ctx.state, &scope, GroupAction::SetRole, req.user_id).await?;
    if role_of(&target) == req.role {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("user {} is already a {}", req.user_id, req.role.as_str()),
        ));
    }
    let changed = apply(
        &ctx,
        &scope,
        expect,
        GroupChange::SetRole {
            user: req.user_id,
            role: req.role.as_str().to_owned(),
        },
    )
    .await?;
    tell(
        &ctx,
        req.user_id,
        events::GROUP_ROLE_CHANGED,
        &changed.group,
        json!({ "role": req.role, "by": scope.caller.user_id }),
    )
    .await?;
    Ok(Empty {})
}

async fn transfer_owner(ctx: RpcContext, req: TransferOwner) -> Result<Empty, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::TransferOwner, None)?;
    if req.user_id == scope.caller.user_id {
        return Err(ApiError::bad_request("user_id: you own the group already"));
    }
    let (_, expect) = act_on(&ctx.state, &scope, GroupAction::TransferOwner, req.user_id).await?;
    let changed = apply(
        &ctx,
        &scope,
        expect,
        GroupChange::TransferOwner { to: req.user_id },
    )
    .await?;
    for (user, role) in [
        (req.user_id, Role::Owner),
        (scope.caller.user_id, Role::Admin),
    ] {
        tell(
            &ctx,
            user,
            events::GROUP_ROLE_CHANGED,
            &changed.group,
            json!({ "role": role, "by": scope.caller.user_id }),
        )
        .await?;
    }
    Ok(Empty {})
}

async fn settings_get(ctx: RpcContext, req: SettingsGet) -> Result<GroupSettings, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::GetSettings, None)?;
    Ok(settings(&scope.group))
}

async fn settings_update(ctx: RpcContext, req: SettingsUpdate) -> Result<GroupSettings, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::UpdateSettings, None)?;
    let cap_max = ctx.state.config.messaging.group_member_cap_max;
    if let Some(cap) = req.member_cap {
        if !(2..=cap_max).contains(&cap) {
            return Err(ApiError::bad_request(format!(
                "member_cap: between 2 and {cap_max}"
            )));
        }
        if cap < scope.group.member_count {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "member_cap: the group has {} members already",
                    scope.group.member_count
                ),
            ));
        }
    }
    let patch = GroupPatch {
        join_approval: req.join_approval,
        invite_policy: req.invite_policy.map(|p| {
            match p {
                InvitePolicy::Members => "members",
                InvitePolicy::Admins => "admins",
            }
            .to_owned()
        }),
        member_cap: req.member_cap,
        announcement: req
            .announcement
            .as_deref()
            .map(|a| valid_text("announcement", a, ANNOUNCEMENT_LEN_MAX_BYTES, true))
            .transpose()?
            .map(|a| (!a.is_empty()).then_some(a)),
        ..GroupPatch::default()
    };
    if patch == GroupPatch::default() {
        return Err(ApiError::bad_request("nothing to change"));
    }
    let changed = apply(&ctx, &scope, scope.expect(), GroupChange::Update(patch)).await?;
    Ok(settings(&changed.group))
}

async fn mute_all(ctx: RpcContext, req: MuteAll) -> Result<GroupSettings, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::MuteAll, None)?;
    let patch = GroupPatch {
        mute_all: Some(req.muted),
        ..GroupPatch::default()
    };
    let changed = apply(&ctx, &scope, scope.expect(), GroupChange::Update(patch)).await?;
    Ok(settings(&changed.group))
}

async fn qrcode_generate(ctx: RpcContext, req: QrcodeGenerate) -> Result<ShareCode, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::GenerateCode, None)?;
    let expires_at_ms = crate::unix_ms().saturating_add(code_ttl_ms(&ctx.state, req.ttl_secs)?);
    let code = tokens::issue_group_invite(
        ctx.state.secrets.token_signing_key(),
        &GroupInviteClaims {
            group_id: scope.group.id,
            issuer_id: scope.caller.user_id,
            epoch: scope.group.qr_epoch,
            expires_at_ms,
        },
    );
    Ok(ShareCode {
        code,
        expires_at_ms,
    })
}

async fn qrcode_revoke(ctx: RpcContext, req: QrcodeRevoke) -> Result<Empty, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::RevokeCodes, None)?;
    let patch = GroupPatch {
        bump_qr_epoch: true,
        ..GroupPatch::default()
    };
    apply(&ctx, &scope, scope.expect(), GroupChange::Update(patch)).await?;
    Ok(Empty {})
}

async fn qrcode_join(ctx: RpcContext, req: QrcodeJoin) -> Result<QrcodeJoined, ApiError> {
    let caller = ctx.caller()?;
    let state = &ctx.state;
    let claims = tokens::verify_group_invite(
        state.secrets.token_signing_key(),
        req.code.trim(),
        crate::unix_ms(),
    )
    .map_err(code_error)?;
    let scope = scope(&ctx, claims.group_id).await.map_err(|err| {
        if err.code == ErrorCode::NotFound {
            ApiError::new(ErrorCode::LinkInvalid, "the group of this code is gone")
        } else {
            err
        }
    })?;
    if claims.epoch != scope.group.qr_epoch {
        return Err(ApiError::new(
            ErrorCode::LinkExpired,
            "this code was revoked by the group",
        ));
    }
    // The code is only as good as its issuer's right to invite now.
    let issuer = state
        .storage
        .messages()
        .member(scope.group.channel_id, claims.issuer_id)
        .await?;
    let issuer_standing = issuer
        .as_ref()
        .map_or(Standing::Outsider, |m| Standing::Member(role_of(m)));
    if group_rule(
        GroupAction::GenerateCode,
        issuer_standing,
        None,
        &GroupRules::of(&scope.group),
    )
    .is_err()
    {
        return Err(ApiError::new(
            ErrorCode::LinkExpired,
            "whoever issued this code may no longer invite",
        ));
    }
    let answer = |status| QrcodeJoined {
        group_id: scope.group.id,
        channel_id: scope.group.channel_id,
        status,
    };
    if scope.member.is_some() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "you are a member of this group already",
        ));
    }
    if claims.issuer_id != caller.user_id {
        let (relation, _) = relation_and_privacy(state, caller.user_id, claims.issuer_id).await?;
        if relation.b_blocked_a {
            return Err(ApiError::new(
                ErrorCode::Blocked,
                "whoever issued this code has blocked you",
            ));
        }
    }
    if scope.group.member_count >= scope.group.member_cap {
        return Err(full(&scope.group));
    }
    if scope.group.join_approval {
        request_join(
            &ctx,
            &scope.group,
            caller.user_id,
            Some(claims.issuer_id),
            "qrcode",
        )
        .await?;
        return Ok(answer(JoinStatus::Pending));
    }
    let changed = apply(
        &ctx,
        &scope,
        vec![(caller.user_id, None)],
        GroupChange::Join {
            users: vec![caller.user_id],
            via: "qrcode".to_owned(),
            request: None,
        },
    )
    .await?;
    tell(
        &ctx,
        caller.user_id,
        events::GROUP_JOINED,
        &changed.group,
        json!({ "by": claims.issuer_id, "via": "qrcode" }),
    )
    .await?;
    Ok(answer(JoinStatus::Joined))
}

fn approval_view(request: &JoinRequestRecord) -> ApprovalView {
    ApprovalView {
        request_id: request.id,
        group_id: request.group_id,
        user_id: request.user_id,
        inviter_id: request.inviter_id,
        via: if request.via == "qrcode" {
            JoinVia::Qrcode
        } else {
            JoinVia::Invite
        },
        created_at_ms: request.created_at_ms,
    }
}

async fn approval_list(
    ctx: RpcContext,
    req: ApprovalList,
) -> Result<ApprovalListResponse, ApiError> {
    let scope = scope(&ctx, req.group_id).await?;
    scope.allow(GroupAction::ListApprovals, None)?;
    let requests = ctx
        .state
        .storage
        .groups()
        .join_requests(scope.group.id)
        .await?;
    Ok(ApprovalListResponse {
        requests: requests.iter().map(approval_view).collect(),
    })
}

async fn approval_handle(ctx: RpcContext, req: ApprovalHandle) -> Result<Empty, ApiError> {
    let state = &ctx.state;
    let not_found = || {
        ApiError::new(
            ErrorCode::NotFound,
            format!("no pending join request {}", req.request_id),
        )
    };
    let request = state
        .storage
        .groups()
        .join_request(req.request_id)
        .await?
        .ok_or_else(not_found)?;
    let scope = scope(&ctx, request.group_id).await?;
    scope.allow(GroupAction::HandleApproval, None)?;
    if request.status != "pending" {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("join request {} was {} already", request.id, request.status),
        ));
    }
    if !req.approve {
        if !state
            .storage
            .groups()
            .decline_join(request.id, scope.caller.user_id, crate::unix_ms())
            .await?
        {
            return Err(not_found());
        }
        tell(
            &ctx,
            request.user_id,
            events::GROUP_DECLINED,
            &scope.group,
            json!({ "request_id": request.id, "by": scope.caller.user_id }),
        )
        .await?;
        return Ok(Empty {});
    }
    let mut expect = scope.expect();
    expect.push((request.user_id, None));
    let changed = apply(
        &ctx,
        &scope,
        expect,
        GroupChange::Join {
            users: vec![request.user_id],
            via: request.via.clone(),
            request: Some(request.id),
        },
    )
    .await?;
    tell(
        &ctx,
        request.user_id,
        events::GROUP_JOINED,
        &changed.group,
        json!({ "by": scope.caller.user_id, "via": request.via }),
    )
    .await?;
    Ok(Empty {})
}

//! Friends, the blacklist, privacy settings, user search and share cards.
//!
//! Every change is stored first, then told to the users it concerns as an
//! inbox entry (stored with its own pts, pushed live as `inbox/new`), so
//! each of their devices converges by `sync/get_inbox_difference`.

use conclave_core::{ErrorCode, UserId};
use conclave_protocol::api::account::*;
use conclave_protocol::api::contacts::*;
use conclave_protocol::api::{Empty, events};
use conclave_storage::{FriendRequestRecord, PrivacyRecord, UserRecord};
use serde_json::json;

use crate::api_error::ApiError;
use crate::permissions::{
    audience_str, may_befriend, may_find, not_blocked, privacy_from, privacy_of,
};
use crate::rpc::{Caller, RouteTable, RpcContext};
use crate::services::accounts::valid_text;
use crate::services::inbox::deliver;
use crate::state::AppState;
use crate::tokens::{self, TokenError, UserCardClaims};

const REQUEST_MESSAGE_LEN_MAX_BYTES: usize = 256;
const ALIAS_LEN_MAX_BYTES: usize = 64;
const SEARCH_QUERY_LEN_MAX_BYTES: usize = 64;
const SEARCH_PAGE_DEFAULT: u32 = 20;
const SEARCH_PAGE_MAX: u32 = 100;
/// Candidates read per round while filling a search page; privacy may hide
/// some, so a page takes at most this many rounds.
const SEARCH_ROUNDS_MAX: usize = 8;
/// The longest a share code may be asked to live.
pub(crate) const CODE_TTL_MAX_SECS: u64 = 30 * 24 * 3600;

pub(crate) fn register(table: &mut RouteTable) {
    table.add(friend_apply);
    table.add(friend_accept);
    table.add(friend_reject);
    table.add(friend_recall);
    table.add(friend_remove);
    table.add(friend_list);
    table.add(friend_pending);
    table.add(friend_check);
    table.add(friend_set_alias);
    table.add(blacklist_add);
    table.add(blacklist_remove);
    table.add(blacklist_list);
    table.add(blacklist_check);
    table.add(privacy_get);
    table.add(privacy_update);
    table.add(user_search);
    table.add(share_card);
    table.add(by_qrcode);
}

/// The other user of a two-user route: exists, and is not the caller.
pub(crate) async fn other_user(
    state: &AppState,
    caller: &Caller,
    user: UserId,
) -> Result<UserRecord, ApiError> {
    if user == caller.user_id {
        return Err(ApiError::bad_request(
            "user_id: this needs another user, not yourself",
        ));
    }
    state
        .storage
        .accounts()
        .user_by_id(user)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no user {user}")))
}

fn request_view(record: &FriendRequestRecord) -> FriendRequestView {
    FriendRequestView {
        request_id: record.id,
        from_user_id: record.from_id,
        to_user_id: record.to_id,
        message: record.message.clone(),
        status: match record.status.as_str() {
            "accepted" => RequestStatus::Accepted,
            "rejected" => RequestStatus::Rejected,
            "recalled" => RequestStatus::Recalled,
            _ => RequestStatus::Pending,
        },
        created_at_ms: record.created_at_ms,
    }
}

pub(crate) fn card(user: &UserRecord, is_friend: bool) -> UserCard {
    UserCard {
        user_id: user.id,
        username: user.username.clone(),
        display_name: user.display_name.clone(),
        avatar_file_id: user.avatar_file_id.clone(),
        is_friend,
    }
}

/// Tells both users of a friend request about it.
async fn tell_both(
    state: &AppState,
    caller: &Caller,
    kind: &str,
    body: serde_json::Value,
    other: UserId,
) -> Result<(), ApiError> {
    deliver(state, caller.user_id, kind, body.clone(), caller.session_id).await?;
    deliver(state, other, kind, body, None).await
}

async fn friend_apply(ctx: RpcContext, req: FriendApply) -> Result<FriendApplied, ApiError> {
    let caller = ctx.caller()?;
    let state = &ctx.state;
    let message = req
        .message
        .as_deref()
        .map(|m| valid_text("message", m, REQUEST_MESSAGE_LEN_MAX_BYTES, true))
        .transpose()?
        .filter(|m| !m.is_empty());
    other_user(state, &caller, req.user_id).await?;
    let relation = state
        .storage
        .social()
        .relation(caller.user_id, req.user_id)
        .await?;
    may_befriend(&relation)?;
    if relation.b_requested_a {
        // They asked first: asking back is accepting.
        let accepted = accept(state, &caller, req.user_id).await?;
        return Ok(FriendApplied {
            request: accepted.0,
            channel_id: Some(accepted.1),
        });
    }
    let record = state
        .storage
        .social()
        .request_friend(
            caller.user_id,
            req.user_id,
            message.as_deref(),
            crate::unix_ms(),
        )
        .await?;
    let view = request_view(&record);
    let body = serde_json::to_value(&view).unwrap_or_default();
    tell_both(state, &caller, events::FRIEND_REQUEST, body, req.user_id).await?;
    Ok(FriendApplied {
        request: view,
        channel_id: None,
    })
}

/// Accepts the pending request from `from` to the caller.
async fn accept(
    state: &AppState,
    caller: &Caller,
    from: UserId,
) -> Result<(FriendRequestView, conclave_core::ChannelId), ApiError> {
    let social = state.storage.social();
    let relation = social.relation(caller.user_id, from).await?;
    if !relation.b_requested_a {
        return Err(no_request(from));
    }
    not_blocked(&relation)?;
    let now = crate::unix_ms();
    let (channel, _) = state
        .storage
        .messages()
        .direct_channel(caller.user_id, from, now)
        .await?;
    let record = social
        .accept_request(from, caller.user_id, channel.id, now)
        .await?
        .ok_or_else(|| no_request(from))?;
    let view = request_view(&record);
    let body = json!({ "request": view, "channel_id": channel.id });
    tell_both(state, caller, events::FRIEND_ACCEPTED, body, from).await?;
    Ok((view, channel.id))
}

fn no_request(from: UserId) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no pending friend request from user {from}"),
    )
}

async fn friend_accept(ctx: RpcContext, req: FriendAccept) -> Result<FriendAccepted, ApiError> {
    let caller = ctx.caller()?;
    other_user(&ctx.state, &caller, req.user_id).await?;
    let (_, channel_id) = accept(&ctx.state, &caller, req.user_id).await?;
    Ok(FriendAccepted {
        user_id: req.user_id,
        channel_id,
    })
}

async fn close(
    ctx: &RpcContext,
    from: UserId,
    to: UserId,
    status: &str,
    kind: &str,
) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    let other = if from == caller.user_id { to } else { from };
    other_user(&ctx.state, &caller, other).await?;
    let record = ctx
        .state
        .storage
        .social()
        .close_request(from, to, status, crate::unix_ms())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no pending friend request from user {from} to user {to}"),
            )
        })?;
    let body = serde_json::to_value(request_view(&record)).unwrap_or_default();
    tell_both(&ctx.state, &caller, kind, body, other).await?;
    Ok(Empty {})
}

async fn friend_reject(ctx: RpcContext, req: FriendReject) -> Result<Empty, ApiError> {
    let me = ctx.caller()?.user_id;
    close(&ctx, req.user_id, me, "rejected", events::FRIEND_REJECTED).await
}

async fn friend_recall(ctx: RpcContext, req: FriendRecall) -> Result<Empty, ApiError> {
    let me = ctx.caller()?.user_id;
    close(&ctx, me, req.user_id, "recalled", events::FRIEND_RECALLED).await
}

async fn friend_remove(ctx: RpcContext, req: FriendRemove) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    other_user(&ctx.state, &caller, req.user_id).await?;
    if !ctx
        .state
        .storage
        .social()
        .remove_friend(caller.user_id, req.user_id)
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("user {} is not your friend", req.user_id),
        ));
    }
    // Presence shown to friends only is no longer shown to the other, who
    // stops hearing it at once.
    for (watched, watcher) in [(caller.user_id, req.user_id), (req.user_id, caller.user_id)] {
        if privacy_of(&ctx.state, watched).await?.last_seen != Audience::Everyone {
            ctx.state.sessions.drop_watchers(watched, |w| w != watcher);
        }
    }
    let body = json!({ "user_ids": [caller.user_id, req.user_id] });
    tell_both(
        &ctx.state,
        &caller,
        events::FRIEND_REMOVED,
        body,
        req.user_id,
    )
    .await?;
    Ok(Empty {})
}

async fn friend_list(ctx: RpcContext, _req: FriendList) -> Result<FriendListResponse, ApiError> {
    let caller = ctx.caller()?;
    let friends = ctx.state.storage.social().friends(caller.user_id).await?;
    Ok(FriendListResponse {
        friends: friends
            .iter()
            .map(|f| FriendView {
                user: card(&f.friend, true),
                alias: f.alias.clone(),
                channel_id: f.channel_id,
                since_ms: f.since_ms,
            })
            .collect(),
    })
}

async fn friend_pending(
    ctx: RpcContext,
    _req: FriendPending,
) -> Result<FriendPendingResponse, ApiError> {
    let caller = ctx.caller()?;
    let pending = ctx
        .state
        .storage
        .social()
        .pending_requests(caller.user_id)
        .await?;
    let (outgoing, incoming): (Vec<_>, Vec<_>) = pending
        .iter()
        .map(request_view)
        .partition(|r| r.from_user_id == caller.user_id);
    Ok(FriendPendingResponse { incoming, outgoing })
}

async fn friend_check(ctx: RpcContext, req: FriendCheck) -> Result<FriendStatus, ApiError> {
    let caller = ctx.caller()?;
    other_user(&ctx.state, &caller, req.user_id).await?;
    let relation = ctx
        .state
        .storage
        .social()
        .relation(caller.user_id, req.user_id)
        .await?;
    Ok(FriendStatus {
        user_id: req.user_id,
        is_friend: relation.friends,
        request_sent: relation.a_requested_b,
        request_received: relation.b_requested_a,
    })
}

async fn friend_set_alias(ctx: RpcContext, req: FriendSetAlias) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    other_user(&ctx.state, &caller, req.user_id).await?;
    let alias = req
        .alias
        .as_deref()
        .map(|a| valid_text("alias", a, ALIAS_LEN_MAX_BYTES, true))
        .transpose()?
        .filter(|a| !a.is_empty());
    if !ctx
        .state
        .storage
        .social()
        .set_alias(caller.user_id, req.user_id, alias.as_deref())
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("user {} is not your friend", req.user_id),
        ));
    }
    deliver(
        &ctx.state,
        caller.user_id,
        events::FRIEND_ALIAS,
        json!({ "user_id": req.user_id, "alias": alias }),
        caller.session_id,
    )
    .await?;
    Ok(Empty {})
}

async fn blacklist_add(ctx: RpcContext, req: BlacklistAdd) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    let state = &ctx.state;
    other_user(state, &caller, req.user_id).await?;
    let Some(closed) = state
        .storage
        .social()
        .block(caller.user_id, req.user_id, crate::unix_ms())
        .await?
    else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("user {} is already blocked", req.user_id),
        ));
    };
    // A block hides presence both ways: each stops hearing the other at
    // once.
    state
        .sessions
        .drop_watchers(caller.user_id, |watcher| watcher != req.user_id);
    state
        .sessions
        .drop_watchers(req.user_id, |watcher| watcher != caller.user_id);
    deliver(
        state,
        caller.user_id,
        events::BLACKLIST_ADDED,
        json!({ "user_id": req.user_id }),
        caller.session_id,
    )
    .await?;
    for request in &closed {
        let kind = if request.from_id == caller.user_id {
            events::FRIEND_RECALLED
        } else {
            events::FRIEND_REJECTED
        };
        let body = serde_json::to_value(request_view(request)).unwrap_or_default();
        tell_both(state, &caller, kind, body, req.user_id).await?;
    }
    Ok(Empty {})
}

async fn blacklist_remove(ctx: RpcContext, req: BlacklistRemove) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    other_user(&ctx.state, &caller, req.user_id).await?;
    if !ctx
        .state
        .storage
        .social()
        .unblock(caller.user_id, req.user_id)
        .await?
    {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("user {} is not blocked", req.user_id),
        ));
    }
    deliver(
        &ctx.state,
        caller.user_id,
        events::BLACKLIST_REMOVED,
        json!({ "user_id": req.user_id }),
        caller.session_id,
    )
    .await?;
    Ok(Empty {})
}

async fn blacklist_list(
    ctx: RpcContext,
    _req: BlacklistList,
) -> Result<BlacklistListResponse, ApiError> {
    let caller = ctx.caller()?;
    let blocked = ctx.state.storage.social().blocked(caller.user_id).await?;
    Ok(BlacklistListResponse {
        users: blocked
            .iter()
            .map(|(user, since_ms)| BlockedView {
                user: card(user, false),
                since_ms: *since_ms,
            })
            .collect(),
    })
}

async fn blacklist_check(ctx: RpcContext, req: BlacklistCheck) -> Result<BlockStatus, ApiError> {
    let caller = ctx.caller()?;
    other_user(&ctx.state, &caller, req.user_id).await?;
    let relation = ctx
        .state
        .storage
        .social()
        .relation(caller.user_id, req.user_id)
        .await?;
    Ok(BlockStatus {
        user_id: req.user_id,
        blocked: relation.a_blocked_b,
    })
}

async fn privacy_get(ctx: RpcContext, _req: PrivacyGet) -> Result<Privacy, ApiError> {
    let caller = ctx.caller()?;
    privacy_of(&ctx.state, caller.user_id).await
}

async fn privacy_update(ctx: RpcContext, req: PrivacyUpdate) -> Result<Privacy, ApiError> {
    let caller = ctx.caller()?;
    let state = &ctx.state;
    if req.direct_messages == Some(Audience::Nobody) {
        return Err(ApiError::bad_request(
            "direct_messages: `everyone` or `friends`",
        ));
    }
    let current = privacy_of(state, caller.user_id).await?;
    let updated = Privacy {
        direct_messages: req.direct_messages.unwrap_or(current.direct_messages),
        searchable_by: req.searchable_by.unwrap_or(current.searchable_by),
        group_invites: req.group_invites.unwrap_or(current.group_invites),
        last_seen: req.last_seen.unwrap_or(current.last_seen),
    };
    state
        .storage
        .social()
        .set_privacy(
            caller.user_id,
            &PrivacyRecord {
                direct_messages: audience_str(updated.direct_messages).to_owned(),
                searchable_by: audience_str(updated.searchable_by).to_owned(),
                group_invites: audience_str(updated.group_invites).to_owned(),
                last_seen: audience_str(updated.last_seen).to_owned(),
            },
            crate::unix_ms(),
        )
        .await?;
    // Watchers the new last-seen setting shuts out stop hearing at once.
    if updated.last_seen != Audience::Everyone {
        let friends: std::collections::HashSet<UserId> = state
            .storage
            .social()
            .friends(caller.user_id)
            .await?
            .iter()
            .map(|f| f.friend.id)
            .collect();
        let audience = updated.last_seen;
        state.sessions.drop_watchers(caller.user_id, |watcher| {
            watcher == caller.user_id
                || (audience == Audience::Friends && friends.contains(&watcher))
        });
    }
    deliver(
        state,
        caller.user_id,
        events::PRIVACY_UPDATED,
        serde_json::to_value(updated).unwrap_or_default(),
        caller.session_id,
    )
    .await?;
    Ok(updated)
}

async fn user_search(ctx: RpcContext, req: UserSearch) -> Result<UserSearchResults, ApiError> {
    let caller = ctx.caller()?;
    let prefix = req.query.trim().to_lowercase();
    if prefix.is_empty() {
        return Err(ApiError::bad_request("query: must not be empty"));
    }
    if prefix.len() > SEARCH_QUERY_LEN_MAX_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("query: at most {SEARCH_QUERY_LEN_MAX_BYTES} bytes"),
        ));
    }
    let limit = req
        .limit
        .unwrap_or(SEARCH_PAGE_DEFAULT)
        .clamp(1, SEARCH_PAGE_MAX);
    let social = ctx.state.storage.social();
    let mut users = Vec::new();
    let mut after = req.cursor.clone();
    let mut exhausted = false;
    for _ in 0..SEARCH_ROUNDS_MAX {
        let batch = social
            .search_users(caller.user_id, &prefix, after.as_deref(), limit)
            .await?;
        exhausted = batch.len() < limit as usize;
        for candidate in &batch {
            after = Some(candidate.user.username.to_lowercase());
            let privacy = privacy_from(candidate.privacy.as_ref());
            if may_find(&candidate.relation, &privacy) && users.len() < limit as usize {
                users.push(card(&candidate.user, candidate.relation.friends));
            }
        }
        if exhausted || users.len() >= limit as usize {
            break;
        }
    }
    // A full page continues after its last user; a page cut short by the
    // round limit continues after the last user looked at.
    let next_cursor = if users.len() >= limit as usize {
        users.last().map(|u| u.username.to_lowercase())
    } else if exhausted {
        None
    } else {
        after
    };
    Ok(UserSearchResults { next_cursor, users })
}

/// The lifetime of a code: the asked one, bounded, or the configured default.
pub(crate) fn code_ttl_ms(state: &AppState, ttl_secs: Option<u64>) -> Result<i64, ApiError> {
    let secs = match ttl_secs {
        None => state.config.messaging.invite_code_ttl_secs,
        Some(secs) if (1..=CODE_TTL_MAX_SECS).contains(&secs) => secs,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "ttl_secs: between 1 and {CODE_TTL_MAX_SECS}"
            )));
        }
    };
    Ok(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
}

async fn share_card(ctx: RpcContext, req: ShareCard) -> Result<ShareCode, ApiError> {
    let caller = ctx.caller()?;
    let expires_at_ms = crate::unix_ms().saturating_add(code_ttl_ms(&ctx.state, req.ttl_secs)?);
    let code = tokens::issue_user_card(
        ctx.state.secrets.token_signing_key(),
        &UserCardClaims {
            user_id: caller.user_id,
            expires_at_ms,
        },
    );
    Ok(ShareCode {
        code,
        expires_at_ms,
    })
}

pub(crate) fn code_error(err: TokenError) -> ApiError {
    match err {
        TokenError::Expired => ApiError::new(ErrorCode::LinkExpired, "this code has expired"),
        TokenError::Invalid => ApiError::new(
            ErrorCode::LinkInvalid,
            "this is not a code issued by this server, or it was altered",
        ),
    }
}

async fn by_qrcode(ctx: RpcContext, req: ByQrcode) -> Result<UserCard, ApiError> {
    let caller = ctx.caller()?;
    let claims = tokens::verify_user_card(
        ctx.state.secrets.token_signing_key(),
        req.code.trim(),
        crate::unix_ms(),
    )
    .map_err(code_error)?;
    let user = ctx
        .state
        .storage
        .accounts()
        .user_by_id(claims.user_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::LinkInvalid, "this code names no user"))?;
    let relation = ctx
        .state
        .storage
        .social()
        .relation(caller.user_id, user.id)
        .await?;
    if relation.b_blocked_a {
        return Err(ApiError::new(
            ErrorCode::Blocked,
            "this user has blocked you",
        ));
    }
    Ok(card(&user, relation.friends))
}

//! Presence (online, last seen) and typing indicators.

use conclave_core::{ErrorCode, UserId};
use conclave_protocol::api::presence::*;
use conclave_protocol::api::{Empty, events};

use crate::api_error::ApiError;
use crate::permissions::{may_see_presence, relation_and_privacy, writable};
use crate::rpc::{RouteTable, RpcContext};
use crate::sessions::{PRESENCE_WATCH_MAX, PushEvent};
use crate::state::AppState;

/// Users one status request may ask about.
const STATUS_BATCH_MAX: usize = 500;

pub(crate) fn register(table: &mut RouteTable) {
    table.add(subscribe);
    table.add(unsubscribe);
    table.add(status_get);
    table.add(status_batch_get);
    table.add(typing);
}

async fn subscribe(ctx: RpcContext, req: Subscribe) -> Result<StatusList, ApiError> {
    let caller = ctx.caller()?;
    bounded(&req.user_ids)?;
    let session = caller.session_id.ok_or_else(|| {
        ApiError::bad_request("presence/subscribe needs a live connection (WebSocket, TCP or QUIC)")
    })?;
    // Users whose presence the caller may not see are reported offline and
    // not watched.
    let mut visible = Vec::with_capacity(req.user_ids.len());
    for user in &req.user_ids {
        if may_see(&ctx.state, caller.user_id, *user).await? {
            visible.push(*user);
        }
    }
    ctx.state.sessions.watch(session, &visible).map_err(|max| {
        ApiError::new(
            ErrorCode::LimitExceeded,
            format!("a session may watch at most {max} users"),
        )
    })?;
    statuses(&ctx.state, caller.user_id, &req.user_ids).await
}

async fn unsubscribe(ctx: RpcContext, req: Unsubscribe) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    bounded(&req.user_ids)?;
    if let Some(session) = caller.session_id {
        ctx.state.sessions.unwatch(session, &req.user_ids);
    }
    Ok(Empty {})
}

async fn status_get(ctx: RpcContext, req: StatusGet) -> Result<PresenceStatus, ApiError> {
    let caller = ctx.caller()?;
    status(&ctx.state, caller.user_id, req.user_id).await
}

async fn status_batch_get(ctx: RpcContext, req: StatusBatchGet) -> Result<StatusList, ApiError> {
    let caller = ctx.caller()?;
    if req.user_ids.len() > STATUS_BATCH_MAX {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("user_ids: at most {STATUS_BATCH_MAX}"),
        ));
    }
    statuses(&ctx.state, caller.user_id, &req.user_ids).await
}

async fn typing(ctx: RpcContext, req: Typing) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    ctx.state
        .rate_limits
        .check_typing(caller.user_id, req.channel_id)?;
    // Only someone who may write may say they are writing.
    writable(&ctx.state, req.channel_id, caller.user_id, crate::unix_ms()).await?;
    let members = ctx.state.storage.messages().members(req.channel_id).await?;
    let event = PushEvent::new(
        events::TYPING,
        serde_json::json!({
            "channel_id": req.channel_id,
            "user_id": caller.user_id,
            "state": req.state,
        }),
    );
    // The typist's own other devices do not need to hear it.
    let others: Vec<UserId> = members
        .into_iter()
        .map(|m| m.user_id)
        .filter(|user| *user != caller.user_id)
        .collect();
    ctx.state
        .cluster
        .push_to_users(&ctx.state.sessions, &others, &event, None);
    Ok(Empty {})
}

fn bounded(users: &[UserId]) -> Result<(), ApiError> {
    if users.len() > PRESENCE_WATCH_MAX {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("user_ids: at most {PRESENCE_WATCH_MAX}"),
        ));
    }
    Ok(())
}

async fn statuses(
    state: &AppState,
    viewer: UserId,
    users: &[UserId],
) -> Result<StatusList, ApiError> {
    let mut statuses = Vec::with_capacity(users.len());
    for user in users {
        statuses.push(status(state, viewer, *user).await?);
    }
    Ok(StatusList { statuses })
}

/// Whether `viewer` may see `user`'s presence (one's own always).
async fn may_see(state: &AppState, viewer: UserId, user: UserId) -> Result<bool, ApiError> {
    if viewer == user {
        return Ok(true);
    }
    let (relation, privacy) = relation_and_privacy(state, viewer, user).await?;
    Ok(may_see_presence(&relation, &privacy))
}

/// A user's presence as `viewer` may see it: hidden presence reads as
/// offline, never seen.
async fn status(
    state: &AppState,
    viewer: UserId,
    user: UserId,
) -> Result<PresenceStatus, ApiError> {
    if !may_see(state, viewer, user).await? {
        return Ok(PresenceStatus {
            user_id: user,
            online: false,
            last_seen_ms: None,
        });
    }
    let online = state.cluster.is_online(&state.sessions, user).await;
    let last_seen_ms = if online {
        Some(crate::unix_ms())
    } else {
        let stored = state.storage.accounts().last_seen(user).await?;
        stored.max(state.last_seen.latest_of(user))
    };
    Ok(PresenceStatus {
        user_id: user,
        online,
        last_seen_ms,
    })
}

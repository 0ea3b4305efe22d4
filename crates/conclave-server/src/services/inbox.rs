//! The user's inbox: per-user events with their own pts, stored, pushed live
//! as `inbox/new`, and replayed by `sync/get_inbox_difference`.

use conclave_core::{ErrorCode, UserId};
use conclave_protocol::api::events;
use conclave_protocol::api::messaging::{GetInboxDifference, InboxDifference, InboxEntry};
use conclave_storage::InboxEvent;

use crate::api_error::ApiError;
use crate::rpc::{RouteTable, RpcContext};
use crate::sessions::PushEvent;
use crate::state::AppState;

const PAGE_DEFAULT: u32 = 100;
const PAGE_MAX: u32 = 1_000;

pub(crate) fn register(table: &mut RouteTable) {
    table.add(get_inbox_difference);
}

/// Stores an inbox event for `user` and pushes it to the user's sessions
/// (except `except`, which caused it and has its answer).
pub(crate) async fn deliver(
    state: &AppState,
    user: UserId,
    kind: &str,
    body: serde_json::Value,
    except: Option<u64>,
) -> Result<(), ApiError> {
    let stored = state
        .storage
        .inbox()
        .append_inbox(user, kind, &body.to_string(), crate::unix_ms())
        .await?;
    let entry = serde_json::to_value(entry(&stored)).unwrap_or_default();
    state.cluster.push_to_user(
        &state.sessions,
        user,
        &PushEvent::new(events::INBOX_NEW, entry),
        except,
    );
    Ok(())
}

async fn get_inbox_difference(
    ctx: RpcContext,
    req: GetInboxDifference,
) -> Result<InboxDifference, ApiError> {
    let caller = ctx.caller()?;
    let limit = req.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let (stored, head) = ctx
        .state
        .storage
        .inbox()
        .inbox_after(caller.user_id, req.last_pts, limit)
        .await?;
    if req.last_pts > head {
        return Err(ApiError::new(
            ErrorCode::ResyncRequired,
            format!("last_pts {} is ahead of the inbox ({head})", req.last_pts),
        ));
    }
    let has_more = stored.last().is_some_and(|e| e.pts < head);
    Ok(InboxDifference {
        events: stored.iter().map(entry).collect(),
        current_pts: head,
        has_more,
    })
}

fn entry(event: &InboxEvent) -> InboxEntry {
    InboxEntry {
        pts: event.pts,
        event: event.kind.clone(),
        body: serde_json::from_str(&event.body).unwrap_or_default(),
        server_ts: event.created_at_ms,
    }
}

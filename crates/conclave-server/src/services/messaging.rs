//! Channels, messages, receipts, reactions, pins and sync.

use conclave_core::{ChannelId, ErrorCode, MessageId};
use conclave_protocol::api::messaging::*;
use conclave_protocol::api::{Empty, events};
use conclave_storage::{
    EventRecord, MemberFlag, MessageRecord, NewMessage, ReactionOp, SendOutcome,
};

use crate::api_error::ApiError;
use crate::permissions::{
    may_message_directly, may_revoke, may_see, member_of, not_member, relation_and_privacy,
    writable,
};
use crate::rpc::{self, Answer, RouteTable, RpcContext};
use crate::services::files::{check_references, record_references};
use crate::sync_pages::Page as SyncPage;

const CLIENT_MSG_ID_LEN_MAX_BYTES: usize = 64;
const FILE_ID_LEN_MAX_BYTES: usize = 128;
const NAME_LEN_MAX_BYTES: usize = 255;
const CAPTION_LEN_MAX_BYTES: usize = 4096;
const MENTIONS_MAX: usize = 100;
const EMOJI_LEN_MAX_BYTES: usize = 32;
const HISTORY_PAGE_DEFAULT: u32 = 50;
const HISTORY_PAGE_MAX: u32 = 200;
const DIFFERENCE_PAGE_DEFAULT: u32 = 500;
const DIFFERENCE_PAGE_MAX: u32 = 10_000;
const SEARCH_WORDS_MAX: usize = 8;
const SEARCH_WORD_LEN_MAX_BYTES: usize = 64;
const SEARCH_RESULTS_MAX: u32 = 50;
const BATCH_MAX: usize = 200;

pub(crate) fn register(table: &mut RouteTable) {
    table.add(channel_list);
    table.add(direct_get_or_create);
    table.add(channel_pin);
    table.add(channel_hide);
    table.add(channel_mute);
    table.add(message_send);
    table.add(message_forward);
    table.add(message_revoke);
    table.add(history_get);
    table.add(history_around);
    table.add(history_search);
    table.add(read_pts);
    table.add(batch_read);
    table.add(unread_count);
    table.add(read_list);
    table.add(read_stats);
    table.add(reaction_add);
    table.add(reaction_remove);
    table.add(reaction_list);
    table.add(reaction_stats);
    table.add(message_pin);
    table.add(message_unpin);
    table.add_encoded(get_difference);
    table.add(get_channel_pts);
    table.add(batch_get_channel_pts);
    table.add(session_ready);
}

async fn channel_list(ctx: RpcContext, req: ChannelList) -> Result<ChannelListResponse, ApiError> {
    let caller = ctx.caller()?;
    let list = ctx
        .state
        .storage
        .messages()
        .channel_list(caller.user_id, req.include_hidden)
        .await?;
    let channels = list
        .into_iter()
        .map(|summary| {
            let hidden = summary
                .member
                .hidden_until_pts
                .is_some_and(|until| summary.channel.last_message_pts <= until);
            ChannelView {
                channel_id: summary.channel.id,
                kind: match summary.channel.kind {
                    conclave_storage::ChannelKind::Direct => ChannelKind::Direct,
                    conclave_storage::ChannelKind::Group => ChannelKind::Group,
                },
                title: summary.channel.title,
                peer_user_id: summary.peer_user_id,
                last_message: summary.last_message.as_ref().map(message_view),
                unread_count: summary.unread_count,
                pts: summary.channel.pts,
                read_pts: summary.member.read_pts,
                pinned: summary.member.pinned,
                hidden,
                muted: summary.member.notifications_muted,
            }
        })
        .collect();
    Ok(ChannelListResponse { channels })
}

async fn direct_get_or_create(
    ctx: RpcContext,
    req: DirectGetOrCreate,
) -> Result<DirectChannel, ApiError> {
    let caller = ctx.caller()?;
    if req.user_id == caller.user_id {
        return Err(ApiError::bad_request(
            "user_id: a direct channel needs another user",
        ));
    }
    let state = &ctx.state;
    if state
        .storage
        .accounts()
        .user_by_id(req.user_id)
        .await?
        .is_none()
    {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no user {}", req.user_id),
        ));
    }
    let (relation, privacy) = relation_and_privacy(state, caller.user_id, req.user_id).await?;
    may_message_directly(&relation, &privacy)?;
    let (channel, created) = state
        .storage
        .messages()
        .direct_channel(caller.user_id, req.user_id, crate::unix_ms())
        .await?;
    Ok(DirectChannel {
        channel_id: channel.id,
        created,
    })
}

async fn set_flag(
    ctx: &RpcContext,
    channel: ChannelId,
    flag: MemberFlag,
) -> Result<Empty, ApiError> {
    let caller = ctx.caller()?;
    if !ctx
        .state
        .storage
        .messages()
        .set_member_flag(channel, caller.user_id, flag)
        .await?
    {
        return Err(not_member(channel));
    }
    Ok(Empty {})
}

async fn channel_pin(ctx: RpcContext, req: ChannelPin) -> Result<Empty, ApiError> {
    set_flag(&ctx, req.channel_id, MemberFlag::Pinned(req.pinned)).await
}

async fn channel_hide(ctx: RpcContext, req: ChannelHide) -> Result<Empty, ApiError> {
    set_flag(&ctx, req.channel_id, MemberFlag::Hidden).await
}

async fn channel_mute(ctx: RpcContext, req: ChannelMute) -> Result<Empty, ApiError> {
    set_flag(
        &ctx,
        req.channel_id,
        MemberFlag::NotificationsMuted(req.muted),
    )
    .await
}

async fn message_send(ctx: RpcContext, req: MessageSend) -> Result<MessageSent, ApiError> {
    if matches!(
        req.content,
        Content::System { .. } | Content::Forward { .. }
    ) {
        return Err(ApiError::bad_request(
            "content.type: system messages are written by the server; forward with message/forward",
        ));
    }
    validate_content(
        &req.content,
        ctx.state.config.messaging.text_len_max_bytes as usize,
    )?;
    let mentions = req.mentions.unwrap_or_default();
    if mentions.user_ids.len() > MENTIONS_MAX {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("mentions.user_ids: at most {MENTIONS_MAX}"),
        ));
    }
    store_message(
        &ctx,
        req.channel_id,
        &req.client_msg_id,
        &req.content,
        req.reply_to,
        &mentions,
    )
    .await
}

async fn message_forward(ctx: RpcContext, req: MessageForward) -> Result<MessageSent, ApiError> {
    let caller = ctx.caller()?;
    let (_, member) = member_of(&ctx.state, req.from_channel_id, caller.user_id).await?;
    let original = visible_message(&ctx, &member, req.message_id).await?;
    let content = original
        .content
        .as_deref()
        .and_then(|json| serde_json::from_str::<Content>(json).ok())
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the message was revoked"))?;
    // Forwarding a forward keeps the first original.
    let forwarded = match content {
        Content::Forward { .. } => content,
        other => Content::Forward {
            from_channel_id: req.from_channel_id,
            from_message_id: original.id,
            original_sender_id: original.sender_id,
            original: Box::new(other),
        },
    };
    store_message(
        &ctx,
        req.to_channel_id,
        &req.client_msg_id,
        &forwarded,
        None,
        &Mentions::default(),
    )
    .await
}

async fn store_message(
    ctx: &RpcContext,
    channel: ChannelId,
    client_msg_id: &str,
    content: &Content,
    reply_to: Option<MessageId>,
    mentions: &Mentions,
) -> Result<MessageSent, ApiError> {
    let caller = ctx.caller()?;
    if client_msg_id.is_empty()
        || client_msg_id.len() > CLIENT_MSG_ID_LEN_MAX_BYTES
        || client_msg_id.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "client_msg_id: 1 to {CLIENT_MSG_ID_LEN_MAX_BYTES} bytes, no control characters"
        )));
    }
    let now = crate::unix_ms();
    writable(&ctx.state, channel, caller.user_id, now).await?;
    // The files it names, checked; an image's size and thumbnail filled in.
    let shared = check_references(&ctx.state, content, caller.user_id).await?;
    let content = &shared.content;
    let content_json =
        serde_json::to_string(content).map_err(|err| ApiError::internal(err.to_string()))?;
    let mentions_json =
        serde_json::to_string(mentions).map_err(|err| ApiError::internal(err.to_string()))?;
    let search_text = content.search_text();
    let outcome = ctx
        .state
        .storage
        .messages()
        .send_message(NewMessage {
            channel_id: channel,
            sender_id: caller.user_id,
            sender_device_id: caller.device_id,
            client_msg_id,
            content: &content_json,
            search_text: search_text.as_deref(),
            reply_to,
            mentions: &mentions_json,
            now_ms: now,
            origin_session: caller.session_id,
        })
        .await
        .map_err(|err| match err {
            conclave_storage::StorageError::NotFound(_) => not_member(channel),
            conclave_storage::StorageError::Invalid(message) => ApiError::bad_request(message),
            other => other.into(),
        })?;
    // After the send (a retried send records again, so nothing is lost):
    // the channel's members may download the files from now on.
    record_references(&ctx.state, &shared.files, channel).await?;
    Ok(match outcome {
        SendOutcome::Sent(event) => MessageSent {
            message_id: event.message_id.unwrap_or_default(),
            pts: event.pts,
            server_ts: event.created_at_ms,
            duplicate: false,
        },
        SendOutcome::Duplicate(original) => MessageSent {
            message_id: original.id,
            pts: original.pts,
            server_ts: original.created_at_ms,
            duplicate: true,
        },
    })
}

async fn message_revoke(ctx: RpcContext, req: MessageRevoke) -> Result<Revoked, ApiError> {
    let caller = ctx.caller()?;
    let (_, member) = member_of(&ctx.state, req.channel_id, caller.user_id).await?;
    let message = visible_message(&ctx, &member, req.message_id).await?;
    if message.revoked_at_ms.is_some() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the message is already revoked",
        ));
    }
    let now = crate::unix_ms();
    may_revoke(
        &member,
        &message,
        now,
        ctx.state.config.messaging.revoke_window_secs,
    )?;
    let event = ctx
        .state
        .storage
        .messages()
        .revoke_message(message.id, caller.user_id, now, caller.session_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "the message is already revoked"))?;
    Ok(Revoked { pts: event.pts })
}

async fn history_get(ctx: RpcContext, req: HistoryGet) -> Result<HistoryPage, ApiError> {
    let caller = ctx.caller()?;
    let (_, member) = member_of(&ctx.state, req.channel_id, caller.user_id).await?;
    let limit = page(req.limit, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX);
    let mut rows = ctx
        .state
        .storage
        .messages()
        .messages_before(
            req.channel_id,
            req.before_pts.unwrap_or(u64::MAX),
            member.joined_pts,
            limit + 1,
        )
        .await?;
    let mut has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    // Newest first into the budget, so a cut page still ends at the newest.
    let mut messages = within_budget(rows.iter().map(message_view));
    has_more |= messages.len() < rows.len();
    messages.reverse();
    Ok(HistoryPage { messages, has_more })
}

async fn history_around(ctx: RpcContext, req: HistoryAround) -> Result<HistoryWindow, ApiError> {
    let caller = ctx.caller()?;
    let (_, member) = member_of(&ctx.state, req.channel_id, caller.user_id).await?;
    let limit = page(req.limit, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX);
    let half = (limit / 2).max(1);
    let messages = ctx.state.storage.messages();
    let mut before = messages
        .messages_before(req.channel_id, req.pts, member.joined_pts, half + 1)
        .await?;
    let has_more_before = before.len() > half as usize;
    before.truncate(half as usize);
    before.reverse();
    let from = req.pts.max(member.joined_pts + 1);
    let mut after = messages
        .messages_from(req.channel_id, from, half + 1)
        .await?;
    let has_more_after = after.len() > half as usize;
    after.truncate(half as usize);
    before.extend(after);
    Ok(HistoryWindow {
        messages: before.iter().map(message_view).collect(),
        has_more_before,
        has_more_after,
    })
}

async fn history_search(ctx: RpcContext, req: HistorySearch) -> Result<SearchResults, ApiError> {
    let caller = ctx.caller()?;
    let words: Vec<String> = req
        .query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.is_empty() {
        return Err(ApiError::bad_request("query: give at least one word"));
    }
    if words.len() > SEARCH_WORDS_MAX || words.iter().any(|w| w.len() > SEARCH_WORD_LEN_MAX_BYTES) {
        return Err(ApiError::bad_request(format!(
            "query: at most {SEARCH_WORDS_MAX} words of at most {SEARCH_WORD_LEN_MAX_BYTES} bytes"
        )));
    }
    if let Some(channel) = req.channel_id {
        member_of(&ctx.state, channel, caller.user_id).await?;
    }
    let limit = page(req.limit, SEARCH_RESULTS_MAX, SEARCH_RESULTS_MAX);
    let rows = ctx
        .state
        .storage
        .messages()
        .search(caller.user_id, &words, req.channel_id, limit)
        .await?;
    Ok(SearchResults {
        messages: rows.iter().map(message_view).collect(),
    })
}

async fn read_pts(ctx: RpcContext, req: ReadPts) -> Result<ReadCursor, ApiError> {
    mark_read(&ctx, req.channel_id, req.pts).await
}

async fn mark_read(ctx: &RpcContext, channel: ChannelId, pts: u64) -> Result<ReadCursor, ApiError> {
    let caller = ctx.caller()?;
    let messages = ctx.state.storage.messages();
    let (read_pts, _) = messages
        .mark_read(
            channel,
            caller.user_id,
            pts,
            crate::unix_ms(),
            caller.session_id,
        )
        .await
        .map_err(|err| match err {
            conclave_storage::StorageError::NotFound(_) => not_member(channel),
            other => other.into(),
        })?;
    Ok(ReadCursor {
        channel_id: channel,
        read_pts,
        unread_count: messages.unread_count(channel, caller.user_id).await?,
    })
}

async fn batch_read(ctx: RpcContext, req: BatchRead) -> Result<BatchReadResponse, ApiError> {
    if req.items.len() > BATCH_MAX {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("items: at most {BATCH_MAX}"),
        ));
    }
    let mut cursors = Vec::with_capacity(req.items.len());
    for item in req.items {
        cursors.push(mark_read(&ctx, item.channel_id, item.pts).await?);
    }
    Ok(BatchReadResponse { cursors })
}

async fn unread_count(ctx: RpcContext, req: UnreadCount) -> Result<UnreadCountResponse, ApiError> {
    let caller = ctx.caller()?;
    member_of(&ctx.state, req.channel_id, caller.user_id).await?;
    Ok(UnreadCountResponse {
        unread_count: ctx
            .state
            .storage
            .messages()
            .unread_count(req.channel_id, caller.user_id)
            .await?,
    })
}

async fn readers_of(
    ctx: &RpcContext,
    channel: ChannelId,
    message: MessageId,
) -> Result<(MessageRecord, Vec<conclave_core::UserId>), ApiError> {
    let caller = ctx.caller()?;
    let (_, member) = member_of(&ctx.state, channel, caller.user_id).await?;
    let message = visible_message(ctx, &member, message).await?;
    let readers = ctx
        .state
        .storage
        .messages()
        .readers(channel, message.pts)
        .await?;
    let readers = readers
        .into_iter()
        .filter(|u| *u != message.sender_id)
        .collect();
    Ok((message, readers))
}

async fn read_list(ctx: RpcContext, req: ReadList) -> Result<ReadListResponse, ApiError> {
    let (_, readers) = readers_of(&ctx, req.channel_id, req.message_id).await?;
    Ok(ReadListResponse { readers })
}

async fn read_stats(ctx: RpcContext, req: ReadStats) -> Result<ReadStatsResponse, ApiError> {
    let (message, readers) = readers_of(&ctx, req.channel_id, req.message_id).await?;
    let members = ctx.state.storage.messages().members(req.channel_id).await?;
    let recipients = members
        .iter()
        .filter(|m| m.user_id != message.sender_id)
        .count() as u64;
    Ok(ReadStatsResponse {
        read_count: readers.len() as u64,
        recipient_count: recipients,
    })
}

async fn react(
    ctx: &RpcContext,
    change: &ReactionChange,
    op: ReactionOp,
) -> Result<ReactionChanged, ApiError> {
    let caller = ctx.caller()?;
    let emoji = change.emoji.trim();
    if emoji.is_empty()
        || emoji.len() > EMOJI_LEN_MAX_BYTES
        || emoji.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ApiError::bad_request(format!(
            "emoji: 1 to {EMOJI_LEN_MAX_BYTES} bytes without spaces"
        )));
    }
    let message = message_to_mark(ctx, change.channel_id, change.message_id).await?;
    let event = ctx
        .state
        .storage
        .messages()
        .react(
            message.id,
            caller.user_id,
            emoji,
            op,
            crate::unix_ms(),
            caller.session_id,
        )
        .await
        .map_err(|err| match err {
            conclave_storage::StorageError::Invalid(message) => {
                ApiError::new(ErrorCode::Conflict, message)
            }
            other => other.into(),
        })?;
    Ok(ReactionChanged {
        pts: event.map(|e| e.pts),
    })
}

async fn reaction_add(ctx: RpcContext, req: ReactionAdd) -> Result<ReactionChanged, ApiError> {
    react(&ctx, &req.0, ReactionOp::Add).await
}

async fn reaction_remove(
    ctx: RpcContext,
    req: ReactionRemove,
) -> Result<ReactionChanged, ApiError> {
    react(&ctx, &req.0, ReactionOp::Remove).await
}

async fn reaction_list(
    ctx: RpcContext,
    req: ReactionList,
) -> Result<ReactionListResponse, ApiError> {
    let caller = ctx.caller()?;
    let (_, member) = member_of(&ctx.state, req.channel_id, caller.user_id).await?;
    let message = visible_message(&ctx, &member, req.message_id).await?;
    let groups = ctx.state.storage.messages().reactions(message.id).await?;
    Ok(ReactionListResponse {
        reactions: groups
            .into_iter()
            .map(|(emoji, user_ids)| ReactionGroup {
                count: user_ids.len() as u64,
                emoji,
                user_ids,
            })
            .collect(),
    })
}

async fn reaction_stats(
    ctx: RpcContext,
    req: ReactionStats,
) -> Result<ReactionStatsResponse, ApiError> {
    let list = reaction_list(ctx, req.0).await?;
    Ok(ReactionStatsResponse {
        counts: list
            .reactions
            .into_iter()
            .map(|g| (g.emoji, g.count))
            .collect(),
    })
}

async fn pin(
    ctx: &RpcContext,
    change: &MessagePinChange,
    pinned: bool,
) -> Result<ReactionChanged, ApiError> {
    let caller = ctx.caller()?;
    let message = message_to_mark(ctx, change.channel_id, change.message_id).await?;
    let event = ctx
        .state
        .storage
        .messages()
        .set_pinned(
            message.id,
            caller.user_id,
            pinned,
            crate::unix_ms(),
            caller.session_id,
        )
        .await?;
    Ok(ReactionChanged {
        pts: event.map(|e| e.pts),
    })
}

async fn message_pin(ctx: RpcContext, req: MessagePin) -> Result<ReactionChanged, ApiError> {
    pin(&ctx, &req.0, true).await
}

async fn message_unpin(ctx: RpcContext, req: MessageUnpin) -> Result<ReactionChanged, ApiError> {
    pin(&ctx, &req.0, false).await
}

async fn get_difference(ctx: RpcContext, req: GetDifference) -> Result<Answer, ApiError> {
    let caller = ctx.caller()?;
    let (channel, member) = member_of(&ctx.state, req.channel_id, caller.user_id).await?;
    // Events before the member joined are not theirs to see.
    let from = req.last_pts.max(member.joined_pts);
    if from > channel.pts || channel.pts - from > ctx.state.config.messaging.sync_gap_max_events {
        return Err(ApiError::new(
            ErrorCode::ResyncRequired,
            format!(
                "cannot replay from pts {} to {}; reload the channel with message/history/get",
                req.last_pts, channel.pts
            ),
        ));
    }
    let limit = page(req.limit, DIFFERENCE_PAGE_DEFAULT, DIFFERENCE_PAGE_MAX);
    // Devices that come back together ask for the same pages: a page read
    // at the head just read is still exact.
    let pages = &ctx.state.sync_pages;
    if let Some(kept) = pages.get(req.channel_id, from, limit, channel.pts) {
        return Ok(kept.answer.clone());
    }
    let _reading = pages.reading(req.channel_id, from, limit).await;
    if let Some(kept) = pages.get(req.channel_id, from, limit, channel.pts) {
        return Ok(kept.answer.clone());
    }
    let (events, head) = ctx
        .state
        .storage
        .messages()
        .events_after(req.channel_id, from, limit)
        .await?;
    let events = within_budget(events.iter().map(channel_event));
    let has_more = events.last().is_some_and(|e| e.pts < head);
    let worth_keeping = !events.is_empty();
    let answer = rpc::encode(&Difference {
        events,
        current_pts: head,
        has_more,
    })?;
    // Kept only when nothing moved between the membership read and the page
    // read, so the page belongs to the head it is filed under.
    if head == channel.pts && worth_keeping {
        pages.put(
            req.channel_id,
            from,
            limit,
            SyncPage {
                head,
                answer: answer.clone(),
            },
        );
    }
    Ok(answer)
}

async fn get_channel_pts(ctx: RpcContext, req: GetChannelPts) -> Result<ChannelPts, ApiError> {
    let caller = ctx.caller()?;
    let (channel, _) = member_of(&ctx.state, req.channel_id, caller.user_id).await?;
    Ok(ChannelPts {
        channel_id: channel.id,
        pts: channel.pts,
    })
}

async fn batch_get_channel_pts(
    ctx: RpcContext,
    req: BatchGetChannelPts,
) -> Result<ChannelPtsList, ApiError> {
    let caller = ctx.caller()?;
    let heads = ctx
        .state
        .storage
        .messages()
        .channel_heads(caller.user_id)
        .await?;
    let channels = heads
        .into_iter()
        .filter(|(id, _)| {
            req.channel_ids
                .as_ref()
                .is_none_or(|wanted| wanted.contains(id))
        })
        .map(|(channel_id, pts)| ChannelPts { channel_id, pts })
        .collect();
    Ok(ChannelPtsList { channels })
}

async fn session_ready(ctx: RpcContext, _req: SessionReady) -> Result<ChannelPtsList, ApiError> {
    let caller = ctx.caller()?;
    let heads = batch_get_channel_pts(ctx.clone(), BatchGetChannelPts::default()).await?;
    // Over plain HTTP there is no session to release; the heads still help.
    if let Some(session) = caller
        .session_id
        .and_then(|id| ctx.state.sessions.session(id))
    {
        session.go_live();
    }
    Ok(heads)
}

/// A message of the member's channel that the member may see.
/// A message the caller may react to or pin: one they can see, in a
/// channel they may write to now.
async fn message_to_mark(
    ctx: &RpcContext,
    channel: ChannelId,
    message: MessageId,
) -> Result<MessageRecord, ApiError> {
    let caller = ctx.caller()?;
    let (_, member) = writable(&ctx.state, channel, caller.user_id, crate::unix_ms()).await?;
    visible_message(ctx, &member, message).await
}

async fn visible_message(
    ctx: &RpcContext,
    member: &conclave_storage::MemberRecord,
    id: MessageId,
) -> Result<MessageRecord, ApiError> {
    ctx.state
        .storage
        .messages()
        .message(id)
        .await?
        .filter(|m| may_see(member, m))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no message {id} in this channel"),
            )
        })
}

/// Encoded bytes one page of events or messages may take: well under the
/// 256 KiB JSON payload limit, leaving room for the envelope.
const PAGE_BUDGET_BYTES: usize = 192 * 1024;

/// Takes items in order while their JSON fits [`PAGE_BUDGET_BYTES`] (the
/// first one always, so a page is never empty);
/// the caller reports the rest through `has_more`.
fn within_budget<T: serde::Serialize>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut used = 0;
    let mut page = Vec::new();
    for item in items {
        let size = json_len(&item);
        if !page.is_empty() && used + size > PAGE_BUDGET_BYTES {
            break;
        }
        used += size;
        page.push(item);
    }
    page
}

/// The length of `item` as JSON, counted without building the text.
fn json_len(item: &impl serde::Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, item) {
        Ok(()) => counter.0,
        Err(_) => 0,
    }
}

fn page(requested: Option<u32>, default: u32, max: u32) -> u32 {
    requested.unwrap_or(default).clamp(1, max)
}

pub(crate) fn message_view(record: &MessageRecord) -> MessageView {
    MessageView {
        message_id: record.id,
        channel_id: record.channel_id,
        pts: record.pts,
        sender_id: record.sender_id,
        client_msg_id: record.client_msg_id.clone(),
        content: record
            .content
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok()),
        reply_to: record.reply_to,
        mentions: serde_json::from_str(&record.mentions).unwrap_or_default(),
        server_ts: record.created_at_ms,
        revoked: record.revoked_at_ms.is_some(),
        pinned: record.pinned,
    }
}

/// An event of the log as clients see it (sync and live pushes alike).
pub(crate) fn channel_event(event: &EventRecord) -> ChannelEvent {
    let (name, body) = match event.kind.as_str() {
        "message" => (
            events::MESSAGE_NEW,
            event
                .message
                .as_ref()
                .map(|m| serde_json::to_value(message_view(m)).unwrap_or_default())
                .unwrap_or_default(),
        ),
        "revoke" => {
            let mut body: serde_json::Value = serde_json::from_str(&event.body).unwrap_or_default();
            if let Some(object) = body.as_object_mut() {
                object.insert(
                    "marker".to_owned(),
                    serde_json::json!({ "type": "system", "text": "recalled a message" }),
                );
            }
            (events::MESSAGE_REVOKED, body)
        }
        "reaction" => (events::MESSAGE_REACTION, parse(&event.body)),
        "read" => (events::MESSAGE_READ, parse(&event.body)),
        "pin" => (events::MESSAGE_PINNED, parse(&event.body)),
        // Group changes keep their own names: `group/member_joined`...
        kind if kind.starts_with("group/") => (kind, parse(&event.body)),
        _ => ("channel/updated", parse(&event.body)),
    };
    let mut body = body;
    if let Some(object) = body.as_object_mut() {
        object.insert("actor_id".to_owned(), serde_json::json!(event.actor_id));
        object.insert(
            "server_ts".to_owned(),
            serde_json::json!(event.created_at_ms),
        );
    }
    ChannelEvent {
        channel_id: event.channel_id,
        pts: event.pts,
        event: name.to_owned(),
        body,
    }
}

fn parse(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_default()
}

fn validate_content(content: &Content, text_max: usize) -> Result<(), ApiError> {
    let text = |field: &str, value: &str, max: usize, allow_empty: bool| -> Result<(), ApiError> {
        if value.len() > max {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("content.{field}: at most {max} bytes"),
            ));
        }
        if !allow_empty && value.trim().is_empty() {
            return Err(ApiError::bad_request(format!(
                "content.{field}: must not be empty"
            )));
        }
        Ok(())
    };
    let file = |value: &str| text("file_id", value, FILE_ID_LEN_MAX_BYTES, false);
    match content {
        Content::Text { text: body } => text("text", body, text_max, false),
        Content::Image {
            file_id,
            thumbnail_file_id,
            caption,
            ..
        } => {
            file(file_id)?;
            if let Some(thumb) = thumbnail_file_id {
                file(thumb)?;
            }
            caption
                .as_deref()
                .map_or(Ok(()), |c| text("caption", c, CAPTION_LEN_MAX_BYTES, true))
        }
        Content::Audio { file_id, .. } => file(file_id),
        Content::Video {
            file_id,
            thumbnail_file_id,
            ..
        } => {
            file(file_id)?;
            thumbnail_file_id.as_deref().map_or(Ok(()), file)
        }
        Content::File {
            file_id,
            name,
            mime,
            ..
        } => {
            file(file_id)?;
            text("name", name, NAME_LEN_MAX_BYTES, false)?;
            mime.as_deref()
                .map_or(Ok(()), |m| text("mime", m, NAME_LEN_MAX_BYTES, false))
        }
        Content::Location {
            latitude,
            longitude,
            title,
            address,
        } => {
            if !(-90.0..=90.0).contains(latitude) || !(-180.0..=180.0).contains(longitude) {
                return Err(ApiError::bad_request(
                    "content: latitude must be within ±90 and longitude within ±180",
                ));
            }
            title
                .as_deref()
                .map_or(Ok(()), |t| text("title", t, NAME_LEN_MAX_BYTES, true))?;
            address
                .as_deref()
                .map_or(Ok(()), |a| text("address", a, CAPTION_LEN_MAX_BYTES, true))
        }
        Content::Sticker {
            sticker_id,
            pack_id,
        } => {
            text("sticker_id", sticker_id, FILE_ID_LEN_MAX_BYTES, false)?;
            pack_id
                .as_deref()
                .map_or(Ok(()), |p| text("pack_id", p, FILE_ID_LEN_MAX_BYTES, false))
        }
        Content::Card { .. } => Ok(()),
        Content::Forward { .. } | Content::System { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_counts_what_serializing_writes() {
        let event = ChannelEvent {
            channel_id: ChannelId::new(7),
            pts: 42,
            event: events::MESSAGE_NEW.to_owned(),
            body: serde_json::json!({
                "text": "quote \" backslash \\ newline \n tab \t é 漢字 🎉",
                "n": [1, 2.5, null, true],
            }),
        };
        let written = serde_json::to_vec(&event).unwrap();
        assert_eq!(json_len(&event), written.len());
        assert_eq!(json_len(&"x".repeat(10_000)), 10_002);
    }
}

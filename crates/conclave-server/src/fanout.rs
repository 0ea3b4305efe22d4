//! Live delivery of committed channel events.
//!
//! Events come from this node's commits (the storage commit stream) and
//! from other nodes (the cluster bus). Each is rendered once and the same
//! encoded bytes are queued to every online session of every recipient on
//! this node (the sending session excluded: it has its answer). A
//! [`Sequencer`] puts each channel's events in pts order first: an event
//! that arrives ahead of its predecessors has them read from the database
//! and delivered before it; a repeat is dropped. One task does all of this,
//! so each session receives a channel's events in pts order, once.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use conclave_cluster::{Sequencer, Verdict};
use conclave_core::{ChannelId, DeviceId, UserId};
use conclave_storage::{Audience, Committed, EventRecord};
use tokio::sync::mpsc;

use crate::cluster::BusMessage;
use crate::services::messaging::channel_event;
use crate::sessions::PushEvent;
use crate::state::AppState;

/// At most this many missing events are read to fill one gap; a longer gap
/// is left to the clients' sync.
const GAP_FILL_MAX: u64 = 1_000;

/// One event on its way to this node's sessions.
struct Delivery {
    event: std::sync::Arc<PushEvent>,
    channel_id: ChannelId,
    pts: u64,
    recipients: Vec<UserId>,
    /// The local session that caused it (it has its answer already).
    origin_session: Option<u64>,
    /// For events read back from the database: the sender's device, whose
    /// sessions have their answer already.
    sender_device: Option<DeviceId>,
}

pub(crate) async fn run(
    state: AppState,
    mut commits: mpsc::Receiver<Committed>,
    mut inbound: mpsc::Receiver<Bytes>,
    mut sequencer: Sequencer,
) {
    let mut tidy = tokio::time::interval(Duration::from_secs(60));
    let mut inbound_open = true;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            next = commits.recv() => match next {
                Some(committed) => {
                    let delivery = local(&committed);
                    state.cluster.publish(&BusMessage::Channel {
                        event: delivery.event.name.to_string(),
                        channel_id: delivery.channel_id,
                        pts: delivery.pts,
                        body: delivery.event.body.clone(),
                        recipients: delivery.recipients.clone(),
                        sender_device: committed
                            .event
                            .message
                            .as_ref()
                            .map(|m| m.sender_device_id),
                    });
                    sequence(&state, &mut sequencer, delivery).await;
                }
                None => break,
            },
            next = inbound.recv(), if inbound_open => match next {
                Some(bytes) => match BusMessage::decode(&bytes) {
                    Some(BusMessage::Channel { event, channel_id, pts, body, recipients, sender_device }) => {
                        let delivery = Delivery {
                            event: PushEvent::for_channel(event, channel_id, pts, body),
                            channel_id,
                            pts,
                            recipients,
                            origin_session: None,
                            sender_device,
                        };
                        sequence(&state, &mut sequencer, delivery).await;
                    }
                    Some(BusMessage::DocumentUpdates { document, updates }) => {
                        let updates: Vec<Vec<u8>> = updates
                            .iter()
                            .filter_map(|u| BASE64.decode(u).ok())
                            .collect();
                        state.documents.apply_stored(document, &updates).await;
                    }
                    Some(BusMessage::DocumentStateless { document, payload }) => {
                        state.documents.apply_remote_stateless(document, &payload).await;
                    }
                    Some(BusMessage::DocumentAwareness { document, update }) => {
                        if let Ok(update) = BASE64.decode(&update) {
                            state.documents.apply_remote_awareness(document, &update).await;
                        }
                    }
                    Some(other) => state.cluster.apply(&state.sessions, other),
                    None => tracing::warn!(len = bytes.len(), "an unreadable message on the cluster bus"),
                },
                None => inbound_open = false,
            },
            _ = tidy.tick() => sequencer.forget_idle(Instant::now()),
        }
    }
}

impl Delivery {
    /// A stored event, rendered once.
    fn rendered(
        event: &EventRecord,
        recipients: Vec<UserId>,
        origin_session: Option<u64>,
        sender_device: Option<DeviceId>,
    ) -> Self {
        let rendered = channel_event(event);
        Self {
            event: PushEvent::for_channel(
                rendered.event,
                rendered.channel_id,
                rendered.pts,
                rendered.body,
            ),
            channel_id: rendered.channel_id,
            pts: rendered.pts,
            recipients,
            origin_session,
            sender_device,
        }
    }
}

fn local(committed: &Committed) -> Delivery {
    Delivery::rendered(
        &committed.event,
        committed.recipients.clone(),
        committed.origin_session,
        None,
    )
}

async fn sequence(state: &AppState, sequencer: &mut Sequencer, delivery: Delivery) {
    match sequencer.offer(delivery.channel_id, delivery.pts, Instant::now()) {
        Verdict::Deliver => deliver(state, &delivery),
        Verdict::Stale => {}
        Verdict::FillFrom { after } => {
            fill(state, delivery.channel_id, after, delivery.pts, None).await;
            deliver(state, &delivery);
        }
        Verdict::FirstSight { after } => {
            let fresh = crate::unix_ms() - Sequencer::FIRST_SIGHT_FRESHNESS.as_millis() as i64;
            fill(state, delivery.channel_id, after, delivery.pts, Some(fresh)).await;
            deliver(state, &delivery);
        }
    }
}

/// Reads the channel's events in `(after, before)` from the database and
/// delivers them (only those created at or after `fresh_since`, if given).
async fn fill(
    state: &AppState,
    channel: ChannelId,
    after: u64,
    before: u64,
    fresh_since: Option<i64>,
) {
    let missing = before.saturating_sub(after + 1);
    if missing == 0 {
        return;
    }
    let after = after.max(before.saturating_sub(1 + GAP_FILL_MAX));
    let store = state.storage.messages();
    let events = match store
        .events_after(channel, after, (before - after - 1) as u32)
        .await
    {
        Ok((events, _)) => events,
        Err(err) => {
            tracing::warn!(error = %err, channel = %channel, "could not read a gap in a channel's events; sessions will resync");
            return;
        }
    };
    let events: Vec<&EventRecord> = events
        .iter()
        .filter(|e| e.pts < before && fresh_since.is_none_or(|since| e.created_at_ms >= since))
        .collect();
    if events.is_empty() {
        return;
    }
    let members: Vec<UserId> = match store.members(channel).await {
        Ok(members) => members.into_iter().map(|m| m.user_id).collect(),
        Err(err) => {
            tracing::warn!(error = %err, channel = %channel, "could not read a channel's members; sessions will resync");
            return;
        }
    };
    for event in events {
        let recipients = match event.audience {
            Audience::Members => members.clone(),
            Audience::Actor => vec![event.actor_id],
        };
        let sender_device = event.message.as_ref().map(|m| m.sender_device_id);
        deliver(
            state,
            &Delivery::rendered(event, recipients, None, sender_device),
        );
    }
}

fn deliver(state: &AppState, delivery: &Delivery) {
    for user in &delivery.recipients {
        state
            .sessions
            .push_to_user_where(*user, &delivery.event, |session| {
                Some(session.id) != delivery.origin_session
                    && Some(session.device_id) != delivery.sender_device
            });
    }
}

//! Live delivery of committed channel events.
//!
//! Storage hands over committed events in commit order; this task renders
//! each once and queues the same encoded bytes to every online session of
//! every recipient (the sender's other devices included, the sending session
//! excluded: it has its answer). Because one task consumes the stream in
//! order, each session receives a channel's events in pts order.

use conclave_storage::Committed;
use tokio::sync::mpsc;

use crate::services::messaging::channel_event;
use crate::sessions::PushEvent;
use crate::state::AppState;

pub(crate) async fn run(state: AppState, mut commits: mpsc::Receiver<Committed>) {
    loop {
        let committed = tokio::select! {
            () = state.shutdown.cancelled() => break,
            next = commits.recv() => match next {
                Some(committed) => committed,
                None => break,
            },
        };
        deliver(&state, &committed);
    }
}

fn deliver(state: &AppState, committed: &Committed) {
    let rendered = channel_event(&committed.event);
    let event = PushEvent::for_channel(
        rendered.event,
        rendered.channel_id,
        rendered.pts,
        rendered.body,
    );
    for user in &committed.recipients {
        state
            .sessions
            .push_to_user(*user, &event, committed.origin_session);
    }
}

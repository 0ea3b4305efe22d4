//! Paced message traffic in a set of channels, shared by `direct` and
//! `group`: senders post `message/send` on a schedule (or as fast as the
//! server answers), listeners hold sessions that receive the pushes, and at
//! the end every channel is checked for loss, duplicates, reordering and
//! persistence.
//!
//! A scenario sets up its channels (accounts, channels, sessions) and hands
//! them over as [`ChannelPlan`]s; [`run`] does the rest and returns the
//! [`Traffic`] the scenario reports.
//!
//! # Pacing and coordinated omission
//!
//! Every sender is a *stream*, numbered over all channels. With `--rate R`
//! the run follows a fixed schedule: message `j` (over all streams) is due
//! at `start + j / R` and goes to stream `j mod S`. Latencies are measured
//! from that *intended* time, not from when the send actually left: when the
//! server (or the generator) falls behind, the queueing shows up in the
//! latencies instead of silently lowering the offered load. Each stream
//! keeps at most `--window` sends in flight; a full window delays the next
//! send, which again counts against latency.
//!
//! With `--max` each stream keeps `--window` sends in flight back to back
//! (closed loop): this finds the throughput ceiling, and latencies there are
//! measured from the actual send.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use conclave_client::api::messaging::{Content, MessageSend};
use conclave_client::{Connection, Event};
use conclave_core::ChannelId;
use futures_util::FutureExt as _;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::Errors;
use crate::chart::{self, Series};
use crate::common::{self, Progress, Target};
use crate::probe::{self, ProcessSample};
use crate::report::thousands;
use crate::stats::{Latency, LatencySummary, Timeline};

/// Time between the end of setup and the first scheduled send, so that
/// every task is waiting on the schedule when it starts.
pub const START_DELAY: Duration = Duration::from_millis(200);

/// After a listener has every message it expects, how long it keeps
/// listening for extra (duplicate) deliveries.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Events asked for per `sync/get_difference` page when checking
/// persistence (halved while the server says the page is too large).
const VERIFY_PAGE: u32 = 5_000;

/// A sending session gets the pushes of the other senders in its channel,
/// but reads them only between its own sends (the SDK reads events with
/// `&mut` while calls in flight hold `&`). After this many pushes may have
/// queued up (own sends since the last read x other senders), a sender
/// waits for its sends in flight and reads them: about half of what the
/// SDK's event queue ([`conclave_client::EVENT_QUEUE_CAPACITY`], 4096) and
/// the server's session queue (`limits.session_send_queue_frames`, 1024 by
/// default) hold before the session stalls or is closed as a slow consumer.
pub const SENDER_PUSH_BUDGET: u64 = 2048;

/// A message: the stream that sent it and its sequence number there.
pub type MessageKey = (usize, u64);

/// How messages are paced: the flags `direct` and `group` share.
#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct Pacing {
    /// Messages per second offered in total, on a fixed schedule spread
    /// evenly over the senders.
    #[arg(long, required_unless_present = "max", conflicts_with = "max")]
    pub rate: Option<f64>,
    /// As fast as the server answers: every sender keeps `--window` sends in
    /// flight.
    #[arg(long)]
    pub max: bool,
    /// How long messages are sent.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Sends in flight per sender at most.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Length of each message's text.
    #[arg(long, default_value_t = 32)]
    pub text_bytes: usize,
    /// How long listeners wait for the last deliveries after the senders of
    /// their channel have their last answer.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}

impl Pacing {
    /// Checks the flags; returns how many messages the schedule holds in
    /// total (`None` with `--max`).
    ///
    /// # Errors
    ///
    /// A flag out of range, or neither or both of `--rate` and `--max`.
    pub fn scheduled(&self) -> anyhow::Result<Option<u64>> {
        anyhow::ensure!(self.window > 0, "--window must be at least 1");
        anyhow::ensure!(self.text_bytes > 0, "--text-bytes must be at least 1");
        anyhow::ensure!(self.duration_secs > 0, "--duration-secs must be at least 1");
        match (self.rate, self.max) {
            (Some(rate), false) => {
                anyhow::ensure!(
                    rate.is_finite() && rate > 0.0,
                    "--rate must be a positive number"
                );
                let total = (rate * self.duration_secs as f64).floor() as u64;
                anyhow::ensure!(total > 0, "--rate x --duration-secs schedules no message");
                Ok(Some(total))
            }
            (None, true) => Ok(None),
            _ => anyhow::bail!("give exactly one of --rate R and --max"),
        }
    }

    /// When stream `stream` of `streams` sends.
    fn schedule(
        &self,
        scheduled: Option<u64>,
        streams: u64,
        stream: u64,
        end: Instant,
    ) -> Schedule {
        match (scheduled, self.rate) {
            (Some(total), Some(rate)) => Schedule::Rate {
                rate,
                streams,
                stream,
                count: share(total, streams, stream),
            },
            _ => Schedule::Max { end },
        }
    }

    fn mode(&self) -> &'static str {
        if self.max { "max" } else { "rate" }
    }

    fn latency_basis(&self) -> &'static str {
        if self.max {
            "actual send time (closed loop: no schedule to omit)"
        } else {
            "intended send time of the fixed schedule (coordinated-omission safe)"
        }
    }
}

/// How many of `total` scheduled messages fall to `stream` of `streams`
/// when message `j` goes to stream `j mod streams`.
#[must_use]
pub fn share(total: u64, streams: u64, stream: u64) -> u64 {
    let streams = streams.max(1);
    total / streams + u64::from(stream < total % streams)
}

/// When a stream sends.
#[derive(Debug, Clone, Copy)]
enum Schedule {
    /// Message `k` of stream `i` is message `j = k * streams + i` overall,
    /// due at `j / rate` seconds after the start.
    Rate {
        rate: f64,
        streams: u64,
        stream: u64,
        count: u64,
    },
    /// Back to back until the end.
    Max { end: Instant },
}

/// One channel's setup, as a scenario hands it over.
pub struct ChannelPlan {
    pub channel: ChannelId,
    /// The channel's head before the run: persistence is checked from here.
    pub base_pts: u64,
    /// The sessions that send into the channel, one stream each.
    pub senders: Vec<Arc<Connection>>,
    /// The sessions that receive the channel's messages; each must get
    /// every message of every sender exactly once.
    pub listeners: Vec<Listener>,
}

/// A session that receives a channel's pushes.
pub struct Listener {
    /// How problems name it, e.g. `receiver 3`.
    pub label: String,
    pub connection: Connection,
    /// The channel's head when this session was registered for pushes.
    pub base_pts: u64,
}

/// What a listener accepts as this run's messages in its channel.
#[derive(Debug, Clone)]
struct Listening {
    label: String,
    channel: ChannelId,
    /// The streams that send into the channel.
    streams: Range<usize>,
}

/// What a channel's deliveries are checked against.
struct Truth {
    channel: ChannelId,
    /// Where persistence is checked from.
    base_pts: u64,
    /// The streams that send into it.
    streams: Range<usize>,
}

/// A listener's deliveries, back from its task.
struct Heard {
    /// Its place in its channel's listeners.
    position: usize,
    label: String,
    base_pts: u64,
    received: Received,
    connection: Connection,
}

/// Counts shown on the progress bar while running.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
}

/// One stream's outcome on the sending side.
#[derive(Default)]
struct Sent {
    sent: u64,
    /// seq -> pts of every acknowledged send.
    acked: HashMap<u64, u64>,
    errors: Errors,
    duplicate_acks: u64,
    ack_latency: Latency,
    ack_service: Latency,
    sent_timeline: Timeline,
    acked_timeline: Timeline,
    last_ack: Option<Duration>,
    /// Pushes the sending session got (the other senders' messages).
    pushes: u64,
    /// Of those, its own messages (the server must not push them back).
    echoes: u64,
    /// Times the sender stopped sending to read its pushes.
    forced_reads: u64,
}

/// One listener's outcome.
#[derive(Default)]
struct Received {
    /// (pts, message) in arrival order; `None` when the message is not one
    /// of this channel's streams'.
    delivered: Vec<(u64, Option<MessageKey>)>,
    delivery_latency: Latency,
    delivered_timeline: Timeline,
    last_delivery: Option<Duration>,
    other_events: u64,
    problems: Errors,
}

/// How the messages of one channel fared at one listener.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Acknowledged but never delivered.
    pub lost: u64,
    /// Deliveries beyond the first of the same message.
    pub duplicates: u64,
    /// Deliveries whose pts is not above the previous one's.
    pub out_of_order: u64,
    /// Deliveries whose pts skips over one or more pts.
    pub gaps: u64,
    /// Deliveries of messages that were not acknowledged (or not ours).
    pub unexpected: u64,
    /// Deliveries whose pts differs from the one the ack gave.
    pub pts_mismatches: u64,
}

impl Check {
    fn add(&mut self, other: Self) {
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.gaps += other.gaps;
        self.unexpected += other.unexpected;
        self.pts_mismatches += other.pts_mismatches;
    }
}

/// Checks deliveries `(pts, message)` against acknowledgements
/// `message -> pts` in a channel whose head was `base_pts` before the run.
#[must_use]
pub fn check_channel(
    base_pts: u64,
    acked: &HashMap<MessageKey, u64>,
    delivered: &[(u64, Option<MessageKey>)],
) -> Check {
    let mut check = Check::default();
    let mut seen: HashMap<MessageKey, u64> = HashMap::with_capacity(delivered.len());
    let mut previous = base_pts;
    for &(pts, key) in delivered {
        if pts <= previous {
            check.out_of_order += 1;
        } else if pts > previous + 1 {
            check.gaps += 1;
        }
        previous = previous.max(pts);
        match key {
            Some(key) => {
                let times = seen.entry(key).or_insert(0);
                *times += 1;
                if *times > 1 {
                    check.duplicates += 1;
                }
                match acked.get(&key) {
                    None => check.unexpected += 1,
                    Some(&acked_pts) if acked_pts != pts => check.pts_mismatches += 1,
                    Some(_) => {}
                }
            }
            None => check.unexpected += 1,
        }
    }
    check.lost = acked.keys().filter(|key| !seen.contains_key(key)).count() as u64;
    check
}

/// The client_msg_id of message `seq` of stream `stream`, due `due_ns`
/// after the start: listeners read the due time back from it.
#[must_use]
pub fn client_msg_id(stream: usize, seq: u64, due_ns: u64) -> String {
    format!("p{stream}s{seq}t{due_ns}")
}

/// `(stream, seq, due_ns)` from a [`client_msg_id`].
#[must_use]
pub fn parse_client_msg_id(id: &str) -> Option<(usize, u64, u64)> {
    let rest = id.strip_prefix('p')?;
    let (stream, rest) = rest.split_once('s')?;
    let (seq, due) = rest.split_once('t')?;
    Some((stream.parse().ok()?, seq.parse().ok()?, due.parse().ok()?))
}

fn message_id(body: &serde_json::Value) -> Option<(usize, u64, u64)> {
    body.get("client_msg_id")
        .and_then(serde_json::Value::as_str)
        .and_then(parse_client_msg_id)
}

/// [`message_id`] of a pushed event, read straight from its encoded body
/// (no JSON tree: at hundreds of thousands of events a second, building
/// one per event was half the generator's work).
fn pushed_message_id(event: &Event) -> Option<(usize, u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Sent<'a> {
        #[serde(borrow)]
        client_msg_id: Option<std::borrow::Cow<'a, str>>,
    }
    let sent: Sent<'_> = event.body_as().ok()?;
    parse_client_msg_id(&sent.client_msg_id?)
}

#[derive(Debug, Clone, Serialize)]
pub struct Timelines {
    pub sent: Timeline,
    pub acked: Timeline,
    pub delivered: Timeline,
}

/// What a traffic run measured and verified.
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    /// `rate` or `max`.
    pub mode: &'static str,
    /// What latencies are measured from.
    pub latency_basis: &'static str,
    pub offered_rate: Option<f64>,
    pub duration_secs: u64,
    pub window: usize,
    /// Sending sessions (streams).
    pub senders: usize,
    /// Listening sessions.
    pub listeners: usize,
    pub sent: u64,
    pub acked: u64,
    /// Deliveries over all listeners (a message pushed to N listeners counts
    /// N times).
    pub delivered: u64,
    /// Acknowledged messages found by `sync/get_difference` afterwards.
    pub persisted: u64,
    pub send_errors: Errors,
    /// Acks with `duplicate: true` (we never retry, so there should be none).
    pub duplicate_acks: u64,
    pub check: Check,
    /// Acknowledged messages missing from `sync/get_difference`.
    pub not_persisted: u64,
    /// `sync/get_difference` pages refused as `payload_too_large` while
    /// verifying (asked again with half the limit).
    pub oversized_pages: u64,
    /// Listeners that closed, timed out or saw malformed events.
    pub receiver_problems: Errors,
    /// Events received other than this run's `message/new`.
    pub other_events: u64,
    /// Pushes the sending sessions got: the other senders' messages in
    /// their channel (read between sends, not timed or checked for order).
    pub sender_pushes: u64,
    /// Messages pushed back to the session that sent them (must be none).
    pub echoes: u64,
    /// Times a sender held back its next send to read its session's pushes
    /// (see [`SENDER_PUSH_BUDGET`]); the wait counts against latency.
    pub forced_reads: u64,
    /// From the first scheduled send to the last delivery.
    pub elapsed_secs: f64,
    /// Deliveries of acknowledged messages, exactly once each, per second
    /// over `elapsed_secs`.
    pub delivered_per_sec: f64,
    /// The median of the per-second delivered counts, without the first and
    /// the last second of the sending phase.
    pub steady_delivered_per_sec: Option<u64>,
    /// Send -> ack, from the intended send time (see `latency_basis`).
    pub ack_latency: LatencySummary,
    /// Send -> ack, from the moment the send actually left.
    pub ack_service_latency: LatencySummary,
    /// Send -> delivery at each listener, from the intended send time.
    pub delivery_latency: LatencySummary,
    pub timelines: Timelines,
    pub server_cpu_percent: Option<f64>,
    pub loadgen_cpu_percent: Option<f64>,
    pub server_before: ProcessSample,
    pub server_after: ProcessSample,
}

/// Sends and receives in `channels` as `pacing` says, then verifies every
/// channel.
///
/// # Errors
///
/// Bad flags, or a task that failed; failures during the run are counted
/// in the result.
pub async fn run(
    target: &Target,
    pacing: &Pacing,
    channels: Vec<ChannelPlan>,
    progress: &Progress,
) -> anyhow::Result<Traffic> {
    let scheduled = pacing.scheduled()?;
    let streams: usize = channels.iter().map(|plan| plan.senders.len()).sum();
    let listeners: usize = channels.iter().map(|plan| plan.listeners.len()).sum();
    anyhow::ensure!(streams > 0, "no channel has a sender");
    let text: Arc<str> = format!("{:x<width$}", "bench ", width = pacing.text_bytes).into();
    let counters = Arc::new(Counters::default());
    let server_before = probe::sample_server(target).await;
    let self_before = probe::sample_self();
    let sampled_before = Instant::now();

    let start = Instant::now() + START_DELAY;
    let end = start + Duration::from_secs(pacing.duration_secs);
    let drain = Duration::from_secs(pacing.drain_secs);
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    let mut truths = Vec::with_capacity(channels.len());
    let mut next_stream = 0;
    for (index, plan) in channels.into_iter().enumerate() {
        let first = next_stream;
        let in_channel = plan.senders.len() as u64;
        let mut done = Vec::with_capacity(plan.senders.len());
        for connection in plan.senders {
            let (done_tx, done_rx) = watch::channel(None);
            done.push(done_rx);
            let stream = Stream {
                index: next_stream,
                channel: plan.channel,
                others: in_channel - 1,
                schedule: pacing.schedule(scheduled, streams as u64, next_stream as u64, end),
            };
            senders.spawn(send_all(
                connection,
                stream,
                start,
                Arc::clone(&text),
                pacing.window,
                Arc::clone(&counters),
                done_tx,
            ));
            next_stream += 1;
        }
        let streams = first..next_stream;
        for (position, listener) in plan.listeners.into_iter().enumerate() {
            let listening = Listening {
                label: listener.label,
                channel: plan.channel,
                streams: streams.clone(),
            };
            let done = done.clone();
            let counters = Arc::clone(&counters);
            let (connection, base_pts) = (listener.connection, listener.base_pts);
            receivers.spawn(async move {
                let (received, connection) =
                    receive_all(connection, &listening, start, done, drain, counters).await;
                let heard = Heard {
                    position,
                    label: listening.label,
                    base_pts,
                    received,
                    connection,
                };
                (index, heard)
            });
        }
        truths.push(Truth {
            channel: plan.channel,
            base_pts: plan.base_pts,
            streams,
        });
    }

    let ticker = tokio::spawn(show_progress(
        *progress,
        Arc::clone(&counters),
        pacing.duration_secs,
        scheduled,
    ));
    let mut sent_by_stream = HashMap::new();
    while let Some(joined) = senders.join_next().await {
        let (stream, sent) = joined.context("a sender task failed")?;
        sent_by_stream.insert(stream, sent);
    }
    let mut heard_by_channel: HashMap<usize, Vec<Heard>> = HashMap::new();
    while let Some(joined) = receivers.join_next().await {
        let (channel, heard) = joined.context("a receiver task failed")?;
        heard_by_channel.entry(channel).or_default().push(heard);
    }
    ticker.abort();
    let server_after = probe::sample_server(target).await;
    let self_after = probe::sample_self();
    let sampled = sampled_before.elapsed();

    // Verification, channel by channel, and the totals.
    let verify_bar = progress.bar(truths.len() as u64, "verifying persistence");
    let mut totals = Totals::default();
    for (index, truth) in truths.into_iter().enumerate() {
        let mut acked = HashMap::new();
        for stream in truth.streams {
            let sent = sent_by_stream
                .remove(&stream)
                .with_context(|| format!("stream {stream} has no result"))?;
            acked.extend(sent.acked.iter().map(|(&seq, &pts)| ((stream, seq), pts)));
            totals.add_sent(sent);
        }
        let mut heard = heard_by_channel.remove(&index).unwrap_or_default();
        heard.sort_by_key(|listener| listener.position);
        for (i, listener) in heard.into_iter().enumerate() {
            let check = check_channel(listener.base_pts, &acked, &listener.received.delivered);
            totals.check.add(check);
            totals.add_received(listener.received);
            // Persistence once per channel, read by its first listener.
            if i == 0 {
                let found = persisted(
                    &listener.connection,
                    truth.channel,
                    truth.base_pts,
                    &listener.label,
                    &acked,
                )
                .await;
                totals.add_persisted(found);
            }
            listener.connection.close().await;
        }
        verify_bar.inc(1);
    }
    verify_bar.finish_and_clear();

    let last = totals
        .last_delivery
        .max(totals.last_ack)
        .unwrap_or_default();
    let elapsed_secs = last.as_secs_f64();
    let delivered_ok = totals.delivered.saturating_sub(
        totals.check.duplicates + totals.check.unexpected + totals.check.pts_mismatches,
    );
    Ok(Traffic {
        mode: pacing.mode(),
        latency_basis: pacing.latency_basis(),
        offered_rate: pacing.rate,
        duration_secs: pacing.duration_secs,
        window: pacing.window,
        senders: streams,
        listeners,
        sent: totals.sent,
        acked: totals.acked,
        delivered: totals.delivered,
        persisted: totals.persisted,
        send_errors: totals.errors,
        duplicate_acks: totals.duplicate_acks,
        check: totals.check,
        not_persisted: totals.not_persisted,
        oversized_pages: totals.oversized_pages,
        receiver_problems: totals.receiver_problems,
        other_events: totals.other_events,
        sender_pushes: totals.sender_pushes,
        echoes: totals.echoes,
        forced_reads: totals.forced_reads,
        elapsed_secs,
        delivered_per_sec: delivered_ok as f64 / elapsed_secs.max(1e-9),
        steady_delivered_per_sec: totals
            .delivered_timeline
            .steady_median(usize::try_from(pacing.duration_secs).unwrap_or(usize::MAX)),
        ack_latency: totals.ack_latency.summary(),
        ack_service_latency: totals.ack_service.summary(),
        delivery_latency: totals.delivery_latency.summary(),
        timelines: Timelines {
            sent: totals.sent_timeline,
            acked: totals.acked_timeline,
            delivered: totals.delivered_timeline,
        },
        // Both between the samples that bracket the run (start delay and
        // drain included).
        server_cpu_percent: server_before.cpu_percent_until(&server_after, sampled),
        loadgen_cpu_percent: self_before.cpu_percent_until(&self_after, sampled),
        server_before,
        server_after,
    })
}

/// One send's outcome.
struct SendRecord {
    seq: u64,
    due: Instant,
    left: Instant,
    answered: Instant,
    result: Result<(u64, bool), String>,
}

/// One sender: which stream it is, where it sends, and when.
#[derive(Debug, Clone, Copy)]
struct Stream {
    index: usize,
    channel: ChannelId,
    /// Other streams sending into the same channel (whose messages are
    /// pushed to this sender's session).
    others: u64,
    schedule: Schedule,
}

async fn send_all(
    mut connection: Arc<Connection>,
    stream: Stream,
    start: Instant,
    text: Arc<str>,
    window: usize,
    counters: Arc<Counters>,
    done: watch::Sender<Option<u64>>,
) -> (usize, Sent) {
    let slots = Arc::new(Semaphore::new(window));
    let mut in_flight = JoinSet::new();
    let mut outcome = Sent::default();
    let mut seq = 0_u64;
    let mut unread_sends = 0_u64;
    loop {
        let due = match stream.schedule {
            Schedule::Rate {
                rate,
                streams,
                stream,
                count,
            } => {
                if seq >= count {
                    break;
                }
                let overall = seq * streams + stream;
                let due = start + Duration::from_secs_f64(overall as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                due
            }
            Schedule::Max { end } => {
                if seq == 0 {
                    tokio::time::sleep_until(start.into()).await;
                }
                if Instant::now() >= end {
                    break;
                }
                Instant::now()
            }
        };
        if stream.others > 0 {
            // Read the session's pushes while nothing is in flight, or wait
            // until nothing is when too many may have queued up.
            if Arc::get_mut(&mut connection).is_none()
                && unread_sends * stream.others >= SENDER_PUSH_BUDGET
            {
                while let Some(finished) = in_flight.join_next().await {
                    absorb(&mut outcome, finished, start);
                }
                outcome.forced_reads += 1;
            }
            if let Some(session) = Arc::get_mut(&mut connection) {
                read_pushes(session, &stream, &mut outcome);
                unread_sends = 0;
            }
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        while let Some(finished) = in_flight.try_join_next() {
            absorb(&mut outcome, finished, start);
        }
        let due_at = if matches!(stream.schedule, Schedule::Max { .. }) {
            Instant::now()
        } else {
            due
        };
        let due_ns =
            u64::try_from(due_at.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX);
        let request = MessageSend {
            channel_id: stream.channel,
            client_msg_id: client_msg_id(stream.index, seq, due_ns),
            content: Content::Text {
                text: text.to_string(),
            },
            reply_to: None,
            mentions: None,
        };
        let connection = Arc::clone(&connection);
        let counters = Arc::clone(&counters);
        let this = seq;
        in_flight.spawn(async move {
            let left = Instant::now();
            counters.sent.fetch_add(1, Ordering::Relaxed);
            let result = connection.call(&request).await;
            let answered = Instant::now();
            drop(slot);
            if result.is_ok() {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            SendRecord {
                seq: this,
                due: due_at,
                left,
                answered,
                result: result
                    .map(|sent| (sent.pts, sent.duplicate))
                    .map_err(|err| err.to_string()),
            }
        });
        seq += 1;
        unread_sends += 1;
    }
    while let Some(finished) = in_flight.join_next().await {
        absorb(&mut outcome, finished, start);
    }
    if let Some(session) = Arc::get_mut(&mut connection) {
        read_pushes(session, &stream, &mut outcome);
    }
    let _ = done.send(Some(outcome.acked.len() as u64));
    (stream.index, outcome)
}

/// Reads every push waiting on a sending session, without waiting for more:
/// the other senders' messages, and none of its own. Each is polled once
/// (a zero timeout would wait for the timer's next tick), outside tokio's
/// cooperative budget (which would stop the reading after 128).
fn read_pushes(session: &mut Connection, stream: &Stream, outcome: &mut Sent) {
    while let Some(Some(event)) = tokio::task::unconstrained(session.next_event()).now_or_never() {
        outcome.pushes += 1;
        let own = event.name == "message/new"
            && event.channel_id == Some(stream.channel)
            && pushed_message_id(&event).is_some_and(|(from, _, _)| from == stream.index);
        if own {
            outcome.echoes += 1;
        }
    }
}

fn absorb(
    outcome: &mut Sent,
    finished: Result<SendRecord, tokio::task::JoinError>,
    start: Instant,
) {
    let record = match finished {
        Ok(record) => record,
        Err(err) => {
            outcome.errors.push(format!("a send task failed: {err}"));
            return;
        }
    };
    outcome.sent += 1;
    outcome
        .sent_timeline
        .add(record.left.saturating_duration_since(start));
    match record.result {
        Ok((pts, duplicate)) => {
            outcome
                .ack_latency
                .record(record.answered.saturating_duration_since(record.due));
            outcome
                .ack_service
                .record(record.answered.saturating_duration_since(record.left));
            let at = record.answered.saturating_duration_since(start);
            outcome.acked_timeline.add(at);
            outcome.last_ack = outcome.last_ack.max(Some(at));
            if duplicate {
                outcome.duplicate_acks += 1;
            }
            outcome.acked.insert(record.seq, pts);
        }
        Err(err) => outcome.errors.push(format!("send {}: {err}", record.seq)),
    }
}

/// Waits until every sender of the channel has its last answer, and
/// returns how many messages they had acknowledged in total; `None` when a
/// sender ended without saying.
async fn acknowledged_by_all(senders: Vec<watch::Receiver<Option<u64>>>) -> Option<u64> {
    let mut total = 0;
    for mut sender in senders {
        // A sender that is gone may still have said its last word.
        let _ = sender.wait_for(Option::is_some).await;
        let acked = *sender.borrow();
        total += acked?;
    }
    Some(total)
}

async fn receive_all(
    mut connection: Connection,
    listening: &Listening,
    start: Instant,
    senders: Vec<watch::Receiver<Option<u64>>>,
    drain: Duration,
    counters: Arc<Counters>,
) -> (Received, Connection) {
    let label = &listening.label;
    let mut received = Received::default();
    // Until the senders are done, take events and wait for their counts.
    let wanted = {
        let mut all_done = std::pin::pin!(acknowledged_by_all(senders));
        loop {
            tokio::select! {
                event = connection.next_event() => match event {
                    Some(event) => take(&mut received, &event, listening, start, &counters),
                    None => break Err(format!("connection closed: {:?}", connection.close_reason())),
                },
                acked = &mut all_done => break acked.ok_or_else(|| "a sender vanished".to_owned()),
            }
        }
    };
    let wanted = match wanted {
        Ok(wanted) => wanted,
        Err(why) => {
            received.problems.push(format!("{label}: {why}"));
            return (received, connection);
        }
    };
    // Then until everything is here (or the drain time is up), and a quiet
    // period more: anything arriving then is a duplicate.
    let deadline = Instant::now() + drain;
    loop {
        let complete = received.delivered.len() as u64 >= wanted;
        let wait = if complete {
            QUIET_PERIOD
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match connection.next_event_timeout(wait).await {
            Ok(Some(event)) => take(&mut received, &event, listening, start, &counters),
            Ok(None) => {
                received.problems.push(format!(
                    "{label}: connection closed: {:?}",
                    connection.close_reason()
                ));
                break;
            }
            Err(_) if complete => break,
            Err(_) => {
                received.problems.push(format!(
                    "{label}: gave up after waiting {drain:?} ({} of {wanted} delivered)",
                    received.delivered.len()
                ));
                break;
            }
        }
    }
    (received, connection)
}

fn take(
    received: &mut Received,
    event: &Event,
    listening: &Listening,
    start: Instant,
    counters: &Counters,
) {
    if event.name != "message/new" || event.channel_id != Some(listening.channel) {
        received.other_events += 1;
        return;
    }
    let arrived = Instant::now();
    let Some(pts) = event.pts else {
        received
            .problems
            .push(format!("{}: a message/new without pts", listening.label));
        return;
    };
    let parsed =
        pushed_message_id(event).filter(|(stream, _, _)| listening.streams.contains(stream));
    counters.delivered.fetch_add(1, Ordering::Relaxed);
    let at = arrived.saturating_duration_since(start);
    received.delivered_timeline.add(at);
    received.last_delivery = received.last_delivery.max(Some(at));
    match parsed {
        Some((stream, seq, due_ns)) => {
            let due = start + Duration::from_nanos(due_ns);
            received
                .delivery_latency
                .record(arrived.saturating_duration_since(due));
            received.delivered.push((pts, Some((stream, seq))));
        }
        None => received.delivered.push((pts, None)),
    }
}

/// Per-channel persistence: how many of the acknowledged messages
/// `sync/get_difference` returns, and how many are missing.
struct Persisted {
    found: u64,
    missing: u64,
    problem: Option<String>,
    /// Pages the server refused as `payload_too_large` (retried smaller).
    oversized: u32,
}

async fn persisted(
    connection: &Connection,
    channel: ChannelId,
    base_pts: u64,
    label: &str,
    acked: &HashMap<MessageKey, u64>,
) -> Persisted {
    let mut stored = HashSet::new();
    let mut problem = None;
    let mut oversized = 0;
    let mut last_pts = base_pts;
    loop {
        let page = match common::get_difference(connection, channel, last_pts, VERIFY_PAGE).await {
            Ok((page, halved)) => {
                oversized += halved;
                page
            }
            Err(err) => {
                problem = Some(format!("{label}: sync/get_difference failed: {err}"));
                break;
            }
        };
        for event in &page.events {
            last_pts = last_pts.max(event.pts);
            if event.event != "message/new" {
                continue;
            }
            if let Some((stream, seq, _)) = message_id(&event.body) {
                stored.insert((stream, seq));
            }
        }
        if !page.has_more || page.events.is_empty() {
            break;
        }
    }
    let missing = acked.keys().filter(|key| !stored.contains(*key)).count() as u64;
    Persisted {
        found: acked.len() as u64 - missing,
        missing,
        problem,
        oversized,
    }
}

#[derive(Default)]
struct Totals {
    sent: u64,
    acked: u64,
    delivered: u64,
    persisted: u64,
    not_persisted: u64,
    oversized_pages: u64,
    errors: Errors,
    duplicate_acks: u64,
    check: Check,
    receiver_problems: Errors,
    other_events: u64,
    sender_pushes: u64,
    echoes: u64,
    forced_reads: u64,
    ack_latency: Latency,
    ack_service: Latency,
    delivery_latency: Latency,
    sent_timeline: Timeline,
    acked_timeline: Timeline,
    delivered_timeline: Timeline,
    last_ack: Option<Duration>,
    last_delivery: Option<Duration>,
}

impl Totals {
    fn add_sent(&mut self, sent: Sent) {
        self.sent += sent.sent;
        self.acked += sent.acked.len() as u64;
        self.errors.merge(sent.errors);
        self.duplicate_acks += sent.duplicate_acks;
        self.ack_latency.merge(&sent.ack_latency);
        self.ack_service.merge(&sent.ack_service);
        self.sent_timeline.merge(&sent.sent_timeline);
        self.acked_timeline.merge(&sent.acked_timeline);
        self.last_ack = self.last_ack.max(sent.last_ack);
        self.sender_pushes += sent.pushes;
        self.echoes += sent.echoes;
        self.forced_reads += sent.forced_reads;
    }

    fn add_received(&mut self, received: Received) {
        self.delivered += received.delivered.len() as u64;
        self.receiver_problems.merge(received.problems);
        self.other_events += received.other_events;
        self.delivery_latency.merge(&received.delivery_latency);
        self.delivered_timeline.merge(&received.delivered_timeline);
        self.last_delivery = self.last_delivery.max(received.last_delivery);
    }

    fn add_persisted(&mut self, persisted: Persisted) {
        self.persisted += persisted.found;
        self.not_persisted += persisted.missing;
        self.oversized_pages += u64::from(persisted.oversized);
        if let Some(problem) = persisted.problem {
            self.receiver_problems.push(problem);
        }
    }
}

async fn show_progress(
    progress: Progress,
    counters: Arc<Counters>,
    duration_secs: u64,
    scheduled: Option<u64>,
) {
    let bar = progress.bar(duration_secs, "sending");
    let started = Instant::now();
    loop {
        tokio::time::sleep(common::PROGRESS_TICK).await;
        let secs = started.elapsed().as_secs().min(duration_secs);
        bar.set_position(secs);
        let sent = counters.sent.load(Ordering::Relaxed);
        let acked = counters.acked.load(Ordering::Relaxed);
        let delivered = counters.delivered.load(Ordering::Relaxed);
        let of = scheduled.map_or_else(String::new, |n| format!("/{}", thousands(n)));
        bar.set_message(format!(
            "sent {}{of} acked {} delivered {}",
            thousands(sent),
            thousands(acked),
            thousands(delivered)
        ));
    }
}

impl Traffic {
    /// Every way the run went wrong (see [`crate::Outcome::failures`]).
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let c = &self.check;
        let mut count = |n: u64, what: &str| {
            if n > 0 {
                failures.push(format!("{n} {what}"));
            }
        };
        count(c.lost, "acknowledged messages were never delivered (LOST)");
        count(c.duplicates, "messages were delivered more than once");
        count(c.out_of_order, "deliveries arrived out of pts order");
        count(c.gaps, "deliveries skipped over a pts (gap)");
        count(
            c.unexpected,
            "deliveries of messages that were never acknowledged",
        );
        count(
            c.pts_mismatches,
            "deliveries whose pts differs from the ack's",
        );
        count(
            self.not_persisted,
            "acknowledged messages missing from sync/get_difference",
        );
        count(self.duplicate_acks, "sends were answered as duplicates");
        count(
            self.echoes,
            "messages were pushed back to their sending session",
        );
        if !self.send_errors.is_empty() {
            failures.push(self.send_errors.describe("sends failed"));
        }
        if !self.receiver_problems.is_empty() {
            failures.push(self.receiver_problems.describe("receiver problems"));
        }
        if self.acked == 0 {
            failures.push("no message was acknowledged".to_owned());
        }
        failures
    }

    /// `rate 400 msg/s offered` or `max (window 16 per sender)`.
    #[must_use]
    pub fn mode_cell(&self) -> String {
        match self.offered_rate {
            Some(rate) => format!("rate {rate} msg/s offered"),
            None => format!("max (window {} per sender)", self.window),
        }
    }

    /// The results table's rows after the scenario's own: counts, rates
    /// (`delivered` names what a delivery is), latencies, CPU and the check.
    #[must_use]
    pub fn rows(&self, delivered: &str) -> Vec<(String, String)> {
        let opt_pct = |value: Option<f64>| value.map_or("n/a".to_owned(), |p| format!("{p:.0} %"));
        vec![
            (
                "sent / acked / delivered / persisted".to_owned(),
                format!(
                    "{} / {} / {} / {}",
                    thousands(self.sent),
                    thousands(self.acked),
                    thousands(self.delivered),
                    thousands(self.persisted)
                ),
            ),
            (
                delivered.to_owned(),
                format!(
                    "{:.0} (over {:.1} s){}",
                    self.delivered_per_sec,
                    self.elapsed_secs,
                    self.steady_delivered_per_sec
                        .map_or_else(String::new, |m| format!("; steady median {m}/s"))
                ),
            ),
            (
                "send->ack p50/p99/p99.9/max".to_owned(),
                self.ack_latency.cell(),
            ),
            (
                "send->ack (service time)".to_owned(),
                self.ack_service_latency.cell(),
            ),
            (
                "send->delivery p50/p99/p99.9/max".to_owned(),
                self.delivery_latency.cell(),
            ),
            (
                "latency measured from".to_owned(),
                self.latency_basis.to_owned(),
            ),
            (
                "CPU server / load generator".to_owned(),
                format!(
                    "{} / {} of one core",
                    opt_pct(self.server_cpu_percent),
                    opt_pct(self.loadgen_cpu_percent)
                ),
            ),
            (
                "get_difference pages too large".to_owned(),
                format!(
                    "{} (refused as payload_too_large while verifying; asked again smaller)",
                    self.oversized_pages
                ),
            ),
            (
                "lost / dup / out-of-order / gaps".to_owned(),
                format!(
                    "{} / {} / {} / {}",
                    self.check.lost,
                    self.check.duplicates,
                    self.check.out_of_order,
                    self.check.gaps
                ),
            ),
        ]
    }

    /// `400 msg/s offered` or `max rate`, for chart titles.
    #[must_use]
    pub fn mode_title(&self) -> String {
        match self.offered_rate {
            Some(rate) => format!("{rate} msg/s offered"),
            None => "max rate".to_owned(),
        }
    }

    /// send->ack and send->delivery percentiles on a log scale.
    #[must_use]
    pub fn latency_chart(&self, title: &str) -> String {
        let points = |summary: &LatencySummary| -> Vec<f64> {
            summary.points().into_iter().map(|(_, v)| v).collect()
        };
        let categories: Vec<&str> = self
            .ack_latency
            .points()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        chart::log_bars(
            title,
            "ms",
            &categories,
            &[
                Series::new("send->ack", points(&self.ack_latency)),
                Series::new("send->delivery", points(&self.delivery_latency)),
            ],
        )
    }

    /// Sent, acked and delivered per second; deliveries divided by
    /// `receivers` (the listeners each message goes to), so that every line
    /// counts messages.
    #[must_use]
    pub fn throughput_chart(&self, title: &str, receivers: usize) -> String {
        let as_f64 = |t: &Timeline| t.buckets().iter().map(|&n| n as f64).collect::<Vec<_>>();
        let per_receiver = receivers.max(1) as f64;
        let delivered: Vec<f64> = as_f64(&self.timelines.delivered)
            .into_iter()
            .map(|n| n / per_receiver)
            .collect();
        let delivered_name = if receivers > 1 {
            format!("delivered / {receivers} receivers")
        } else {
            "delivered".to_owned()
        };
        chart::lines(
            title,
            "seconds since start",
            "messages per second",
            &[
                Series::new("sent", as_f64(&self.timelines.sent)),
                Series::new("acked", as_f64(&self.timelines.acked)),
                Series::new(delivered_name, delivered),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_ids_round_trip_and_fit() {
        let id = client_msg_id(9_999, u64::MAX, u64::MAX);
        assert!(id.len() <= 64, "{id}");
        assert_eq!(parse_client_msg_id(&id), Some((9_999, u64::MAX, u64::MAX)));
        assert_eq!(parse_client_msg_id("p1s2"), None);
        assert_eq!(parse_client_msg_id("hello"), None);
    }

    #[test]
    fn checks_find_every_kind_of_trouble() {
        let key = |seq| (7, seq);
        let acked: HashMap<MessageKey, u64> =
            [(key(0), 11), (key(1), 12), (key(2), 13), (key(3), 14)].into();
        // All good.
        let good = [
            (11, Some(key(0))),
            (12, Some(key(1))),
            (13, Some(key(2))),
            (14, Some(key(3))),
        ];
        assert_eq!(check_channel(10, &acked, &good), Check::default());
        // Message 2 lost (a gap), message 1 twice (a duplicate, out of order),
        // one stranger.
        let bad = [
            (11, Some(key(0))),
            (12, Some(key(1))),
            (12, Some(key(1))),
            (14, Some(key(3))),
            (15, None),
        ];
        let check = check_channel(10, &acked, &bad);
        assert_eq!(check.lost, 1);
        assert_eq!(check.duplicates, 1);
        assert_eq!(check.out_of_order, 1);
        assert_eq!(check.gaps, 1);
        assert_eq!(check.unexpected, 1);
        // Swapped.
        let swapped = [
            (12, Some(key(1))),
            (11, Some(key(0))),
            (13, Some(key(2))),
            (14, Some(key(3))),
        ];
        let check = check_channel(10, &acked, &swapped);
        assert_eq!((check.out_of_order, check.gaps, check.lost), (1, 1, 0));
        // Delivered under another pts than acknowledged.
        let moved = [
            (11, Some(key(0))),
            (12, Some(key(2))),
            (13, Some(key(1))),
            (14, Some(key(3))),
        ];
        assert_eq!(check_channel(10, &acked, &moved).pts_mismatches, 2);
    }

    #[test]
    fn checks_tell_streams_apart() {
        // Two streams interleaved in one channel: the same seq from each is
        // two messages, not a duplicate.
        let acked: HashMap<MessageKey, u64> =
            [((0, 0), 1), ((1, 0), 2), ((0, 1), 3), ((1, 1), 4)].into();
        let all = [
            (1, Some((0, 0))),
            (2, Some((1, 0))),
            (3, Some((0, 1))),
            (4, Some((1, 1))),
        ];
        assert_eq!(check_channel(0, &acked, &all), Check::default());
        // A message of a third stream is not one of this channel's.
        let stranger = [(1, Some((0, 0))), (2, Some((5, 0)))];
        let check = check_channel(0, &acked, &stranger);
        assert_eq!((check.unexpected, check.lost), (1, 3));
    }

    #[test]
    fn schedules_share_every_message_once() {
        for (total, streams) in [(10, 3), (2, 4), (7, 1), (0, 5), (1_000, 7)] {
            let shares: Vec<u64> = (0..streams).map(|s| share(total, streams, s)).collect();
            assert_eq!(shares.iter().sum::<u64>(), total, "{total} over {streams}");
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{shares:?}");
        }
        assert_eq!(share(5, 0, 0), 5);
    }

    fn pacing(rate: Option<f64>, max: bool) -> Pacing {
        Pacing {
            rate,
            max,
            duration_secs: 2,
            window: 4,
            text_bytes: 8,
            drain_secs: 1,
        }
    }

    #[test]
    fn pacing_flags_are_checked() {
        assert_eq!(pacing(Some(40.0), false).scheduled().ok(), Some(Some(80)));
        assert_eq!(pacing(None, true).scheduled().ok(), Some(None));
        assert!(pacing(None, false).scheduled().is_err());
        assert!(pacing(Some(1.0), true).scheduled().is_err());
        assert!(pacing(Some(0.1), false).scheduled().is_err(), "no message");
        assert!(pacing(Some(f64::NAN), false).scheduled().is_err());
        let no_window = Pacing {
            window: 0,
            ..pacing(None, true)
        };
        assert!(no_window.scheduled().is_err());
    }
}

//! `direct`: 1:1 messages. P pairs of users, each pair in its own direct
//! channel; the sender sends over the chosen transport, the receiver listens
//! on the WebSocket (binary). Measures send->ack and send->delivery latency
//! and delivered messages per second, then checks that every acknowledged
//! message was delivered exactly once, in pts order, with no gap, and is
//! persisted.
//!
//! # Pacing and coordinated omission
//!
//! With `--rate R` the run follows a fixed schedule: message `j` (over all
//! pairs) is due at `start + j / R` and goes to pair `j mod P`. Latencies
//! are measured from that *intended* time, not from when the send actually
//! left: when the server (or the generator) falls behind, the queueing shows
//! up in the latencies instead of silently lowering the offered load. Each
//! pair keeps at most `--window` sends in flight; a full window delays the
//! next send, which again counts against latency.
//!
//! With `--max` each pair keeps `--window` sends in flight back to back
//! (closed loop): this finds the throughput ceiling, and latencies there are
//! measured from the actual send.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use conclave_client::api::messaging::{
    BatchGetChannelPts, Content, DirectGetOrCreate, MessageSend,
};
use conclave_client::{ConnectOptions, Connection, Event};
use conclave_core::ChannelId;
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::Errors;
use crate::chart::{self, Series};
use crate::common::{self, Device, Progress, SETUP_CONCURRENCY, Target, Transport};
use crate::probe::{self, ProcessSample};
use crate::report::{Outcome, thousands};
use crate::stats::{Latency, LatencySummary, Timeline};

/// Time between the end of setup and the first scheduled send, so that
/// every task is waiting on the schedule when it starts.
pub const START_DELAY: Duration = Duration::from_millis(200);

/// After a receiver has every message it expects, how long it keeps
/// listening for extra (duplicate) deliveries.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// How often a waiting receiver looks whether its sender has finished.
const RECEIVER_POLL: Duration = Duration::from_millis(100);

/// Events asked for per `sync/get_difference` page when checking
/// persistence (halved while the server says the page is too large).
const VERIFY_PAGE: u32 = 5_000;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct DirectOptions {
    /// Pairs of users; each pair talks in its own direct channel.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Messages per second offered in total, on a fixed schedule spread
    /// evenly over the pairs.
    #[arg(long, required_unless_present = "max", conflicts_with = "max")]
    pub rate: Option<f64>,
    /// As fast as the server answers: every pair keeps `--window` sends in
    /// flight.
    #[arg(long)]
    pub max: bool,
    /// How long messages are sent.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Transport of the senders (receivers always use the WebSocket).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Sends in flight per pair at most.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Length of each message's text.
    #[arg(long, default_value_t = 32)]
    pub text_bytes: usize,
    /// How long receivers wait for the last deliveries after their sender
    /// has its last answer.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}

/// Counts shown on the progress bar while running.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
}

/// When a pair sends.
#[derive(Debug, Clone, Copy)]
enum Schedule {
    /// Message `k` of pair `i` is message `j = k * pairs + i` overall, due
    /// at `j / rate` seconds after the start.
    Rate {
        rate: f64,
        pairs: u64,
        pair: u64,
        count: u64,
    },
    /// Back to back until the end.
    Max { end: Instant },
}

/// One pair's setup.
struct Pair {
    index: usize,
    channel: ChannelId,
    base_pts: u64,
    sender: Arc<Connection>,
    receiver: Connection,
}

/// Per-pair outcome of the sending side.
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
}

/// Per-pair outcome of the receiving side.
#[derive(Default)]
struct Received {
    /// (pts, seq) in arrival order; seq `None` when the message is not one
    /// of this pair's.
    delivered: Vec<(u64, Option<u64>)>,
    delivery_latency: Latency,
    delivered_timeline: Timeline,
    last_delivery: Option<Duration>,
    other_events: u64,
    problems: Errors,
}

/// How the messages of one channel fared.
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

/// Checks deliveries `(pts, seq)` against acknowledgements `seq -> pts` in a
/// channel whose head was `base_pts` before the run.
#[must_use]
pub fn check_channel(
    base_pts: u64,
    acked: &HashMap<u64, u64>,
    delivered: &[(u64, Option<u64>)],
) -> Check {
    let mut check = Check::default();
    let mut seen: HashMap<u64, u64> = HashMap::with_capacity(delivered.len());
    let mut previous = base_pts;
    for &(pts, seq) in delivered {
        if pts <= previous {
            check.out_of_order += 1;
        } else if pts > previous + 1 {
            check.gaps += 1;
        }
        previous = previous.max(pts);
        match seq {
            Some(seq) => {
                let times = seen.entry(seq).or_insert(0);
                *times += 1;
                if *times > 1 {
                    check.duplicates += 1;
                }
                match acked.get(&seq) {
                    None => check.unexpected += 1,
                    Some(&acked_pts) if acked_pts != pts => check.pts_mismatches += 1,
                    Some(_) => {}
                }
            }
            None => check.unexpected += 1,
        }
    }
    check.lost = acked.keys().filter(|seq| !seen.contains_key(seq)).count() as u64;
    check
}

/// The client_msg_id of message `seq` of pair `pair`, due `due_ns` after the
/// start: the receiver reads the due time back from it.
fn client_msg_id(pair: usize, seq: u64, due_ns: u64) -> String {
    format!("p{pair}s{seq}t{due_ns}")
}

/// `(pair, seq, due_ns)` from a [`client_msg_id`].
fn parse_client_msg_id(id: &str) -> Option<(usize, u64, u64)> {
    let rest = id.strip_prefix('p')?;
    let (pair, rest) = rest.split_once('s')?;
    let (seq, due) = rest.split_once('t')?;
    Some((pair.parse().ok()?, seq.parse().ok()?, due.parse().ok()?))
}

#[derive(Debug, Clone, Serialize)]
pub struct Timelines {
    pub sent: Timeline,
    pub acked: Timeline,
    pub delivered: Timeline,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectResult {
    /// `rate` or `max`.
    pub mode: &'static str,
    /// What latencies are measured from.
    pub latency_basis: &'static str,
    pub transport: Transport,
    pub pairs: usize,
    pub offered_rate: Option<f64>,
    pub duration_secs: u64,
    pub window: usize,
    pub sent: u64,
    pub acked: u64,
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
    /// Receivers that closed, timed out or saw malformed events.
    pub receiver_problems: Errors,
    /// Events received other than this run's `message/new`.
    pub other_events: u64,
    /// From the first scheduled send to the last delivery.
    pub elapsed_secs: f64,
    /// Delivered (and acknowledged) messages per second over `elapsed_secs`.
    pub delivered_per_sec: f64,
    /// The median of the per-second delivered counts, without the first and
    /// the last second of the sending phase.
    pub steady_delivered_per_sec: Option<u64>,
    /// Send -> ack, from the intended send time (see `latency_basis`).
    pub ack_latency: LatencySummary,
    /// Send -> ack, from the moment the send actually left.
    pub ack_service_latency: LatencySummary,
    /// Send -> delivery to the receiver, from the intended send time.
    pub delivery_latency: LatencySummary,
    pub timelines: Timelines,
    pub server_cpu_percent: Option<f64>,
    pub loadgen_cpu_percent: Option<f64>,
    pub server_before: ProcessSample,
    pub server_after: ProcessSample,
}

/// Runs the scenario.
///
/// # Errors
///
/// When the setup fails (registration, channels, connections); failures
/// during the run are counted in the result.
pub async fn run(
    target: &Target,
    options: &DirectOptions,
    progress: &Progress,
) -> anyhow::Result<DirectResult> {
    target.require(options.transport)?;
    anyhow::ensure!(options.pairs > 0, "--pairs must be at least 1");
    anyhow::ensure!(options.window > 0, "--window must be at least 1");
    anyhow::ensure!(options.text_bytes > 0, "--text-bytes must be at least 1");
    anyhow::ensure!(
        options.duration_secs > 0,
        "--duration-secs must be at least 1"
    );
    let total_scheduled = match (options.rate, options.max) {
        (Some(rate), false) => {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "--rate must be a positive number"
            );
            let total = (rate * options.duration_secs as f64).floor() as u64;
            anyhow::ensure!(total > 0, "--rate x --duration-secs schedules no message");
            Some(total)
        }
        (None, true) => None,
        _ => anyhow::bail!("give exactly one of --rate R and --max"),
    };

    let pairs = setup(target, options, progress).await?;
    let text: Arc<str> = format!("{:x<width$}", "bench ", width = options.text_bytes).into();
    let counters = Arc::new(Counters::default());
    let server_before = probe::sample_server(target).await;
    let self_before = probe::sample_self();
    let sampled_before = Instant::now();

    let start = Instant::now() + START_DELAY;
    let end = start + Duration::from_secs(options.duration_secs);
    let drain = Duration::from_secs(options.drain_secs);
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    let mut bases = HashMap::new();
    for pair in pairs {
        let (done_tx, done_rx) = watch::channel(None);
        let schedule = match (total_scheduled, options.rate) {
            (Some(total), Some(rate)) => {
                let p = options.pairs as u64;
                let i = pair.index as u64;
                Schedule::Rate {
                    rate,
                    pairs: p,
                    pair: i,
                    count: total / p + u64::from(i < total % p),
                }
            }
            _ => Schedule::Max { end },
        };
        bases.insert(pair.index, (pair.channel, pair.base_pts));
        senders.spawn(send_all(
            pair.sender,
            pair.index,
            pair.channel,
            schedule,
            start,
            Arc::clone(&text),
            options.window,
            Arc::clone(&counters),
            done_tx,
        ));
        receivers.spawn(receive_all(
            pair.receiver,
            pair.index,
            pair.channel,
            start,
            done_rx,
            drain,
            Arc::clone(&counters),
        ));
    }

    let ticker = tokio::spawn(show_progress(
        *progress,
        Arc::clone(&counters),
        options.duration_secs,
        total_scheduled,
    ));
    let mut sent_by_pair = HashMap::new();
    while let Some(joined) = senders.join_next().await {
        let (pair, sent) = joined.context("a sender task failed")?;
        sent_by_pair.insert(pair, sent);
    }
    let mut received_by_pair = HashMap::new();
    while let Some(joined) = receivers.join_next().await {
        let (pair, received, connection) = joined.context("a receiver task failed")?;
        received_by_pair.insert(pair, (received, connection));
    }
    ticker.abort();
    let server_after = probe::sample_server(target).await;
    let self_after = probe::sample_self();
    let sampled = sampled_before.elapsed();

    // Verification, pair by pair, and the totals.
    let verify_bar = progress.bar(options.pairs as u64, "verifying persistence");
    let mut result = Totals::default();
    for pair in 0..options.pairs {
        let (Some(sent), Some((received, connection))) =
            (sent_by_pair.remove(&pair), received_by_pair.remove(&pair))
        else {
            anyhow::bail!("pair {pair} has no result");
        };
        let (channel, base_pts) = bases.get(&pair).copied().unwrap_or_default();
        let check = check_channel(base_pts, &sent.acked, &received.delivered);
        let persisted = persisted(&connection, channel, base_pts, pair, &sent.acked).await;
        result.add(sent, received, check, persisted);
        connection.close().await;
        verify_bar.inc(1);
    }
    verify_bar.finish_and_clear();

    let last = result
        .last_delivery
        .max(result.last_ack)
        .unwrap_or_default();
    let elapsed_secs = last.as_secs_f64();
    let delivered_ok = result.delivered.saturating_sub(
        result.check.duplicates + result.check.unexpected + result.check.pts_mismatches,
    );
    Ok(DirectResult {
        mode: if options.max { "max" } else { "rate" },
        latency_basis: if options.max {
            "actual send time (closed loop: no schedule to omit)"
        } else {
            "intended send time of the fixed schedule (coordinated-omission safe)"
        },
        transport: options.transport,
        pairs: options.pairs,
        offered_rate: options.rate,
        duration_secs: options.duration_secs,
        window: options.window,
        sent: result.sent,
        acked: result.acked,
        delivered: result.delivered,
        persisted: result.persisted,
        send_errors: result.errors,
        duplicate_acks: result.duplicate_acks,
        check: result.check,
        not_persisted: result.not_persisted,
        oversized_pages: result.oversized_pages,
        receiver_problems: result.receiver_problems,
        other_events: result.other_events,
        elapsed_secs,
        delivered_per_sec: delivered_ok as f64 / elapsed_secs.max(1e-9),
        steady_delivered_per_sec: result
            .delivered_timeline
            .steady_median(usize::try_from(options.duration_secs).unwrap_or(usize::MAX)),
        ack_latency: result.ack_latency.summary(),
        ack_service_latency: result.ack_service.summary(),
        delivery_latency: result.delivery_latency.summary(),
        timelines: Timelines {
            sent: result.sent_timeline,
            acked: result.acked_timeline,
            delivered: result.delivered_timeline,
        },
        // Both between the samples that bracket the run (start delay and
        // drain included).
        server_cpu_percent: server_before.cpu_percent_until(&server_after, sampled),
        loadgen_cpu_percent: self_before.cpu_percent_until(&self_after, sampled),
        server_before,
        server_after,
    })
}

/// Registers the pairs, opens their channels and connections, and reads
/// each channel's head.
async fn setup(
    target: &Target,
    options: &DirectOptions,
    progress: &Progress,
) -> anyhow::Result<Vec<Pair>> {
    let prefix = common::run_prefix();
    let one_each = vec![1; options.pairs];
    let tcp = options.transport == Transport::Tcp;
    let senders = common::create_accounts(target, &prefix, "s", &one_each, tcp, progress).await?;
    let receivers =
        common::create_accounts(target, &prefix, "r", &one_each, false, progress).await?;
    let first = |devices: Vec<Vec<Device>>| -> anyhow::Result<Vec<Device>> {
        devices
            .into_iter()
            .map(|mut d| d.pop().context("an account without a device"))
            .collect()
    };
    let senders = first(senders)?;
    let receivers = first(receivers)?;

    let bar = progress.bar(options.pairs as u64, "connecting pairs");
    let pairs = futures_util::stream::iter(senders.into_iter().zip(receivers).enumerate())
        .map(|(index, (sender, receiver))| {
            let bar = bar.clone();
            async move {
                let channel = target
                    .http_as(&sender)
                    .call(&DirectGetOrCreate {
                        user_id: receiver.grant.user_id,
                    })
                    .await
                    .with_context(|| format!("opening the direct channel of pair {index}"))?
                    .channel_id;
                let receiving = target
                    .open(&receiver, Transport::Ws, ConnectOptions::default())
                    .await
                    .with_context(|| format!("connecting receiver {index}"))?;
                let sending = target
                    .open(&sender, options.transport, ConnectOptions::default())
                    .await
                    .with_context(|| format!("connecting sender {index}"))?;
                // Answered by the receiver's session: it is registered for
                // pushes by now, and the channel's head is the base.
                let heads = receiving
                    .call(&BatchGetChannelPts {
                        channel_ids: Some(vec![channel]),
                    })
                    .await
                    .with_context(|| format!("reading the head of pair {index}'s channel"))?;
                let base_pts = heads
                    .channels
                    .iter()
                    .find(|head| head.channel_id == channel)
                    .map_or(0, |head| head.pts);
                bar.inc(1);
                anyhow::Ok(Pair {
                    index,
                    channel,
                    base_pts,
                    sender: Arc::new(sending),
                    receiver: receiving,
                })
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    pairs.into_iter().collect()
}

/// One send's outcome.
struct SendRecord {
    seq: u64,
    due: Instant,
    left: Instant,
    answered: Instant,
    result: Result<(u64, bool), String>,
}

#[allow(clippy::too_many_arguments)]
async fn send_all(
    connection: Arc<Connection>,
    pair: usize,
    channel: ChannelId,
    schedule: Schedule,
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
    loop {
        let due = match schedule {
            Schedule::Rate {
                rate,
                pairs,
                pair,
                count,
            } => {
                if seq >= count {
                    break;
                }
                let overall = seq * pairs + pair;
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
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        while let Some(finished) = in_flight.try_join_next() {
            absorb(&mut outcome, finished, start);
        }
        let due_at = if matches!(schedule, Schedule::Max { .. }) {
            Instant::now()
        } else {
            due
        };
        let due_ns =
            u64::try_from(due_at.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX);
        let request = MessageSend {
            channel_id: channel,
            client_msg_id: client_msg_id(pair, seq, due_ns),
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
    }
    while let Some(finished) = in_flight.join_next().await {
        absorb(&mut outcome, finished, start);
    }
    let _ = done.send(Some(outcome.acked.len() as u64));
    (pair, outcome)
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

async fn receive_all(
    mut connection: Connection,
    pair: usize,
    channel: ChannelId,
    start: Instant,
    mut expected: watch::Receiver<Option<u64>>,
    drain: Duration,
    counters: Arc<Counters>,
) -> (usize, Received, Connection) {
    let mut received = Received::default();
    // Until the sender is done, wait for events and for its final count.
    let wanted = loop {
        if let Some(wanted) = *expected.borrow_and_update() {
            break Some(wanted);
        }
        tokio::select! {
            event = connection.next_event_timeout(RECEIVER_POLL) => match event {
                Ok(Some(event)) => take(&mut received, &event, pair, channel, start, &counters),
                Ok(None) => break None,
                Err(_) => {}
            },
            changed = expected.changed() => {
                if changed.is_err() {
                    // The sender is gone; it may have said its last word.
                    break *expected.borrow();
                }
            }
        }
    };
    let Some(wanted) = wanted else {
        let why = if connection.is_closed() {
            format!("connection closed: {:?}", connection.close_reason())
        } else {
            "the sender vanished".to_owned()
        };
        received.problems.push(format!("receiver {pair}: {why}"));
        return (pair, received, connection);
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
            Ok(Some(event)) => take(&mut received, &event, pair, channel, start, &counters),
            Ok(None) => {
                received.problems.push(format!(
                    "receiver {pair}: connection closed: {:?}",
                    connection.close_reason()
                ));
                break;
            }
            Err(_) if complete => break,
            Err(_) => {
                received.problems.push(format!(
                    "receiver {pair}: gave up after waiting {drain:?} ({} of {wanted} delivered)",
                    received.delivered.len()
                ));
                break;
            }
        }
    }
    (pair, received, connection)
}

fn take(
    received: &mut Received,
    event: &Event,
    pair: usize,
    channel: ChannelId,
    start: Instant,
    counters: &Counters,
) {
    if event.name != "message/new" || event.channel_id != Some(channel) {
        received.other_events += 1;
        return;
    }
    let arrived = Instant::now();
    let Some(pts) = event.pts else {
        received
            .problems
            .push(format!("receiver {pair}: a message/new without pts"));
        return;
    };
    let parsed = event
        .body
        .get("client_msg_id")
        .and_then(serde_json::Value::as_str)
        .and_then(parse_client_msg_id)
        .filter(|(from, _, _)| *from == pair);
    counters.delivered.fetch_add(1, Ordering::Relaxed);
    let at = arrived.saturating_duration_since(start);
    received.delivered_timeline.add(at);
    received.last_delivery = received.last_delivery.max(Some(at));
    match parsed {
        Some((_, seq, due_ns)) => {
            let due = start + Duration::from_nanos(due_ns);
            received
                .delivery_latency
                .record(arrived.saturating_duration_since(due));
            received.delivered.push((pts, Some(seq)));
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
    pair: usize,
    acked: &HashMap<u64, u64>,
) -> Persisted {
    let mut stored = std::collections::HashSet::new();
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
                problem = Some(format!("pair {pair}: sync/get_difference failed: {err}"));
                break;
            }
        };
        for event in &page.events {
            last_pts = last_pts.max(event.pts);
            if event.event != "message/new" {
                continue;
            }
            if let Some((_, seq, _)) = event
                .body
                .get("client_msg_id")
                .and_then(serde_json::Value::as_str)
                .and_then(parse_client_msg_id)
            {
                stored.insert(seq);
            }
        }
        if !page.has_more || page.events.is_empty() {
            break;
        }
    }
    let missing = acked.keys().filter(|seq| !stored.contains(seq)).count() as u64;
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
    fn add(&mut self, sent: Sent, received: Received, check: Check, persisted: Persisted) {
        self.sent += sent.sent;
        self.acked += sent.acked.len() as u64;
        self.delivered += received.delivered.len() as u64;
        self.persisted += persisted.found;
        self.not_persisted += persisted.missing;
        self.oversized_pages += u64::from(persisted.oversized);
        if let Some(problem) = persisted.problem {
            self.receiver_problems.push(problem);
        }
        self.errors.merge(sent.errors);
        self.duplicate_acks += sent.duplicate_acks;
        self.check.add(check);
        self.receiver_problems.merge(received.problems);
        self.other_events += received.other_events;
        self.ack_latency.merge(&sent.ack_latency);
        self.ack_service.merge(&sent.ack_service);
        self.delivery_latency.merge(&received.delivery_latency);
        self.sent_timeline.merge(&sent.sent_timeline);
        self.acked_timeline.merge(&sent.acked_timeline);
        self.delivered_timeline.merge(&received.delivered_timeline);
        self.last_ack = self.last_ack.max(sent.last_ack);
        self.last_delivery = self.last_delivery.max(received.last_delivery);
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

impl Outcome for DirectResult {
    fn scenario(&self) -> &'static str {
        "direct"
    }

    fn failures(&self) -> Vec<String> {
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

    fn table(&self) -> Vec<(String, String)> {
        let opt_pct = |value: Option<f64>| value.map_or("n/a".to_owned(), |p| format!("{p:.0} %"));
        vec![
            (
                "mode".to_owned(),
                match self.offered_rate {
                    Some(rate) => format!("rate {rate} msg/s offered"),
                    None => format!("max (window {} per pair)", self.window),
                },
            ),
            (
                "pairs / sender transport".to_owned(),
                format!("{} / {}", self.pairs, self.transport.as_str()),
            ),
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
                "persisted+delivered msg/s".to_owned(),
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

    fn charts(&self) -> Vec<(&'static str, String)> {
        let points = |summary: &LatencySummary| -> Vec<f64> {
            summary.points().into_iter().map(|(_, v)| v).collect()
        };
        let categories: Vec<&str> = self
            .ack_latency
            .points()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let mode = match self.offered_rate {
            Some(rate) => format!("{rate} msg/s offered"),
            None => "max rate".to_owned(),
        };
        let latency = chart::log_bars(
            &format!(
                "1:1 latency, {} pairs, {mode}, {} s ({})",
                self.pairs,
                self.duration_secs,
                self.transport.as_str()
            ),
            "ms",
            &categories,
            &[
                Series::new("send->ack", points(&self.ack_latency)),
                Series::new("send->delivery", points(&self.delivery_latency)),
            ],
        );
        let as_f64 = |t: &Timeline| t.buckets().iter().map(|&n| n as f64).collect::<Vec<_>>();
        let throughput = chart::lines(
            &format!("1:1 throughput per second, {} pairs, {mode}", self.pairs),
            "seconds since start",
            "messages per second",
            &[
                Series::new("sent", as_f64(&self.timelines.sent)),
                Series::new("acked", as_f64(&self.timelines.acked)),
                Series::new("delivered", as_f64(&self.timelines.delivered)),
            ],
        );
        vec![("latency", latency), ("throughput", throughput)]
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
        let acked: HashMap<u64, u64> = [(0, 11), (1, 12), (2, 13), (3, 14)].into();
        // All good.
        let good = [(11, Some(0)), (12, Some(1)), (13, Some(2)), (14, Some(3))];
        assert_eq!(check_channel(10, &acked, &good), Check::default());
        // Message 2 lost (a gap), message 1 twice (a duplicate, out of order),
        // one stranger.
        let bad = [
            (11, Some(0)),
            (12, Some(1)),
            (12, Some(1)),
            (14, Some(3)),
            (15, None),
        ];
        let check = check_channel(10, &acked, &bad);
        assert_eq!(check.lost, 1);
        assert_eq!(check.duplicates, 1);
        assert_eq!(check.out_of_order, 1);
        assert_eq!(check.gaps, 1);
        assert_eq!(check.unexpected, 1);
        // Swapped.
        let swapped = [(12, Some(1)), (11, Some(0)), (13, Some(2)), (14, Some(3))];
        let check = check_channel(10, &acked, &swapped);
        assert_eq!((check.out_of_order, check.gaps, check.lost), (1, 1, 0));
        // Delivered under another pts than acknowledged.
        let moved = [(11, Some(0)), (12, Some(2)), (13, Some(1)), (14, Some(3))];
        assert_eq!(check_channel(10, &acked, &moved).pts_mismatches, 2);
    }
}

//! `catchup`: D devices are offline while E messages accumulate in their
//! channels; then all of them reconnect at once and catch up by sync
//! (`sync/batch_get_channel_pts`, then `sync/get_difference` page by page
//! for every channel that moved). Measures the time until every device is
//! current, and checks that each got exactly the messages that were
//! acknowledged, in pts order, with no gap.
//!
//! Accounts are paired, and each pair shares one direct channel (the
//! `group` scenario covers group channels); every account has `--devices-per-user`
//! devices. Messages are posted over HTTP, round-robin over the channels,
//! alternating between the two members.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use conclave_client::api::messaging::{
    BatchGetChannelPts, Content, DirectGetOrCreate, MessageSend,
};
use conclave_client::{ConnectOptions, Connection};
use conclave_core::ChannelId;
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Errors;
use crate::chart::{self, Series};
use crate::common::{self, Device, Progress, SETUP_CONCURRENCY, Target, Transport};
use crate::probe::{self, ProcessSample};
use crate::report::{Outcome, thousands};
use crate::stats::{Latency, LatencySummary, Timeline};

/// Leave this many file descriptors to everything else when checking
/// `--devices` against `ulimit -n`.
const SPARE_FDS: u64 = 64;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct CatchupOptions {
    /// Devices that were offline and catch up.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Messages posted while they were offline, spread over the channels.
    #[arg(long, default_value_t = 1000)]
    pub events: usize,
    /// Devices per account (at most the server's
    /// `auth.max_devices_per_user`); accounts = devices / this, rounded up
    /// to an even number (accounts are paired into direct channels).
    #[arg(long, default_value_t = 10)]
    pub devices_per_user: usize,
    /// `limit` of each `sync/get_difference` page.
    #[arg(long, default_value_t = 500)]
    pub page_size: u32,
    /// Transport of the reconnecting devices.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Connection attempts in flight at once when the devices reconnect.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Messages posted at once (over HTTP) while the devices are offline.
    #[arg(long, default_value_t = 32)]
    pub writers: usize,
    /// Source addresses to spread connections over; 0: automatic (see
    /// `connections --help`).
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// How long each call may wait for its answer (the SDK's default is
    /// 30 s; when thousands of devices ask at once, answers may queue for
    /// longer than that).
    #[arg(long, default_value_t = conclave_client::REQUEST_TIMEOUT.as_secs())]
    pub request_timeout_secs: u64,
    /// Give up on a device that is not current after this long.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// What was posted to one channel: the truth devices are checked against.
#[derive(Debug)]
struct ChannelTruth {
    id: ChannelId,
    /// The head before anything was posted (what the devices had seen).
    base_pts: u64,
    /// `message[pts - base_pts - 1]` is the index of the message posted at
    /// that pts, `None` where the pts is not one of ours.
    messages: Vec<Option<u64>>,
}

impl ChannelTruth {
    fn head(&self) -> u64 {
        self.base_pts + self.messages.len() as u64
    }
}

/// How one device's catch-up went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatchupCheck {
    /// Posted messages a device never got.
    pub lost: u64,
    /// Events whose pts was not the previous one + 1.
    pub out_of_order: u64,
    /// Events at a pts where another message was acknowledged.
    pub mismatched: u64,
    /// Channel heads other than expected.
    pub wrong_heads: u64,
}

impl CatchupCheck {
    fn add(&mut self, other: Self) {
        self.lost += other.lost;
        self.out_of_order += other.out_of_order;
        self.mismatched += other.mismatched;
        self.wrong_heads += other.wrong_heads;
    }
}

#[derive(Default)]
struct DeviceOutcome {
    connect: Option<Duration>,
    /// Since the reconnect began.
    current_after: Option<Duration>,
    events: u64,
    calls: u64,
    oversized_pages: u64,
    check: CatchupCheck,
    problems: Errors,
    connection: Option<Connection>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CatchupResult {
    pub transport: Transport,
    pub devices: usize,
    pub users: usize,
    pub channels: usize,
    pub events_posted: u64,
    pub page_size: u32,
    /// Posting the messages while the devices were offline.
    pub post_secs: f64,
    pub posts_per_sec: f64,
    /// From the reconnect to the last device current; `None` when some
    /// device never got there.
    pub all_current_secs: Option<f64>,
    pub devices_current: usize,
    /// Each device's connect time.
    pub connect_latency: LatencySummary,
    /// Each device's time from the reconnect to current (queueing for a
    /// connection slot included).
    pub current_latency: LatencySummary,
    pub events_fetched: u64,
    pub difference_calls: u64,
    /// `sync/get_difference` pages refused as `payload_too_large` (asked
    /// again with half the limit; counted in `difference_calls`).
    pub oversized_pages: u64,
    pub events_fetched_per_sec: f64,
    pub check: CatchupCheck,
    pub problems: Errors,
    /// Devices that became current, per second since the reconnect.
    pub current_timeline: Timeline,
    pub server_cpu_percent: Option<f64>,
    pub server_before: ProcessSample,
    pub server_after: ProcessSample,
}

/// Runs the scenario.
///
/// # Errors
///
/// When the setup fails (registration, channels, posting); failures while
/// catching up are counted in the result.
pub async fn run(
    target: &Target,
    options: &CatchupOptions,
    progress: &Progress,
) -> anyhow::Result<CatchupResult> {
    target.require(options.transport)?;
    anyhow::ensure!(options.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(
        options.devices_per_user > 0,
        "--devices-per-user must be at least 1"
    );
    anyhow::ensure!(options.page_size > 0, "--page-size must be at least 1");
    if let Some(limit) = probe::open_files_limit()
        && (options.devices as u64) + SPARE_FDS > limit
    {
        anyhow::bail!(
            "--devices {} needs more file descriptors than `ulimit -n` allows ({limit})",
            options.devices
        );
    }
    let users = options
        .devices
        .div_ceil(options.devices_per_user)
        .max(2)
        .next_multiple_of(2);
    let channels = users / 2;
    let devices_per_user = common::spread(options.devices, users);

    let prefix = common::run_prefix();
    let accounts = common::create_accounts(
        target,
        &prefix,
        "u",
        &devices_per_user,
        options.transport == Transport::Tcp,
        progress,
    )
    .await?;
    // Account 2k and 2k + 1 share channel k. Every account has at least
    // one device (the registration's), even where `spread` gave it none:
    // only the first `devices_per_user[i]` of them reconnect.
    let channel_ids = open_channels(target, &accounts, progress).await?;
    let heads = read_heads(target, &accounts, &channel_ids).await?;
    let (truth, post_secs) =
        post_messages(target, options, &accounts, channel_ids, heads, progress).await?;
    let truth = Arc::new(truth);
    let events_posted = options.events as u64;

    // Everyone reconnects at once (within the connection concurrency).
    let server_before = probe::sample_server(target).await;
    let sampled_before = Instant::now();
    let sources = if options.source_ips > 0 {
        options.source_ips
    } else if options.devices > common::CONNECTIONS_PER_SOURCE_IP {
        options.devices.div_ceil(common::CONNECTIONS_PER_SOURCE_IP)
    } else {
        0
    };
    let slots = Arc::new(Semaphore::new(options.connect_concurrency.max(1)));
    let timeout = Duration::from_secs(options.timeout_secs);
    let bar = progress.bar(options.devices as u64, "devices catching up");
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut index = 0;
    for (user, devices) in accounts.into_iter().enumerate() {
        let wanted = devices_per_user.get(user).copied().unwrap_or(0);
        for device in devices.into_iter().take(wanted) {
            let target = target.clone();
            let truth = Arc::clone(&truth);
            let slots = Arc::clone(&slots);
            let bar = bar.clone();
            let connect = ConnectOptions {
                local_addr: common::source_ip(index, sources),
                request_timeout: Duration::from_secs(options.request_timeout_secs.max(1)),
                ..ConnectOptions::default()
            };
            let transport = options.transport;
            let page_size = options.page_size;
            index += 1;
            tasks.spawn(async move {
                let channel = truth.get(user / 2);
                let outcome = match tokio::time::timeout(
                    timeout,
                    catch_up(
                        &target, &device, transport, connect, channel, page_size, &slots, started,
                    ),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        let mut outcome = DeviceOutcome::default();
                        outcome.problems.push(format!(
                            "device {} of {} not current after {timeout:?}",
                            device.grant.device_id, device.username
                        ));
                        outcome
                    }
                };
                bar.inc(1);
                outcome
            });
        }
    }
    let mut connect_latency = Latency::new();
    let mut current_latency = Latency::new();
    let mut current_timeline = Timeline::new();
    let mut check = CatchupCheck::default();
    let mut problems = Errors::default();
    let mut events_fetched = 0;
    let mut difference_calls = 0;
    let mut oversized_pages = 0;
    let mut devices_current = 0;
    let mut last_current = Duration::ZERO;
    let mut connections = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(err) => {
                problems.push(format!("a device task failed: {err}"));
                continue;
            }
        };
        if let Some(took) = outcome.connect {
            connect_latency.record(took);
        }
        if let Some(after) = outcome.current_after
            && outcome.problems.is_empty()
        {
            devices_current += 1;
            current_latency.record(after);
            current_timeline.add(after);
            last_current = last_current.max(after);
        }
        events_fetched += outcome.events;
        difference_calls += outcome.calls;
        oversized_pages += outcome.oversized_pages;
        check.add(outcome.check);
        problems.merge(outcome.problems);
        connections.extend(outcome.connection);
    }
    let all_done = started.elapsed();
    bar.finish_and_clear();
    let server_after = probe::sample_server(target).await;
    let sampled = sampled_before.elapsed();
    drop(connections);

    let all_current = devices_current == options.devices;
    Ok(CatchupResult {
        transport: options.transport,
        devices: options.devices,
        users,
        channels,
        events_posted,
        page_size: options.page_size,
        post_secs,
        posts_per_sec: events_posted as f64 / post_secs.max(1e-9),
        all_current_secs: all_current.then_some(last_current.as_secs_f64()),
        devices_current,
        connect_latency: connect_latency.summary(),
        current_latency: current_latency.summary(),
        events_fetched,
        difference_calls,
        oversized_pages,
        events_fetched_per_sec: events_fetched as f64 / all_done.as_secs_f64().max(1e-9),
        check,
        problems,
        current_timeline,
        server_cpu_percent: server_before.cpu_percent_until(&server_after, sampled),
        server_before,
        server_after,
    })
}

/// Opens the direct channel of every pair of accounts.
async fn open_channels(
    target: &Target,
    accounts: &[Vec<Device>],
    progress: &Progress,
) -> anyhow::Result<Vec<ChannelId>> {
    let bar = progress.bar((accounts.len() / 2) as u64, "opening channels");
    let opened = futures_util::stream::iter(accounts.chunks(2))
        .map(|pair| {
            let bar = bar.clone();
            async move {
                let (Some(a), Some(b)) = (
                    pair.first().and_then(|d| d.first()),
                    pair.get(1).and_then(|d| d.first()),
                ) else {
                    anyhow::bail!("an account pair without devices");
                };
                let channel = target
                    .http_as(a)
                    .call(&DirectGetOrCreate {
                        user_id: b.grant.user_id,
                    })
                    .await
                    .with_context(|| {
                        format!("opening the channel of {} and {}", a.username, b.username)
                    })?;
                bar.inc(1);
                anyhow::Ok(channel.channel_id)
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    opened.into_iter().collect()
}

/// The head of every channel before anything is posted.
async fn read_heads(
    target: &Target,
    accounts: &[Vec<Device>],
    channels: &[ChannelId],
) -> anyhow::Result<Vec<u64>> {
    let read = futures_util::stream::iter(channels.iter().enumerate())
        .map(|(k, &channel)| async move {
            let device = accounts
                .get(2 * k)
                .and_then(|d| d.first())
                .context("a channel without a member")?;
            let heads = tokio::time::timeout(
                common::SETUP_CALL_TIMEOUT,
                target.http_as(device).call(&BatchGetChannelPts {
                    channel_ids: Some(vec![channel]),
                }),
            )
            .await
            .context("reading a channel head timed out")?
            .context("reading a channel head")?;
            anyhow::Ok(
                heads
                    .channels
                    .iter()
                    .find(|head| head.channel_id == channel)
                    .map_or(0, |head| head.pts),
            )
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    read.into_iter().collect()
}

/// Posts the messages and returns what each channel holds now.
async fn post_messages(
    target: &Target,
    options: &CatchupOptions,
    accounts: &[Vec<Device>],
    channels: Vec<ChannelId>,
    heads: Vec<u64>,
    progress: &Progress,
) -> anyhow::Result<(Vec<ChannelTruth>, f64)> {
    let count = channels.len().max(1);
    let bar = progress.bar(options.events as u64, "posting (devices offline)");
    let started = Instant::now();
    let posted = futures_util::stream::iter(0..options.events)
        .map(|j| {
            let bar = bar.clone();
            let channels = &channels;
            async move {
                let k = j % count;
                // Alternate between the pair's two members.
                let author = 2 * k + (j / count) % 2;
                let device = accounts
                    .get(author)
                    .and_then(|d| d.first())
                    .context("a channel without a member")?;
                let channel = *channels.get(k).context("no such channel")?;
                let sent = target
                    .http_as(device)
                    .call(&MessageSend {
                        channel_id: channel,
                        client_msg_id: format!("m{j}"),
                        content: Content::Text {
                            text: format!("catch-up message {j}"),
                        },
                        reply_to: None,
                        mentions: None,
                    })
                    .await
                    .with_context(|| format!("posting message {j}"))?;
                anyhow::ensure!(!sent.duplicate, "message {j} was answered as a duplicate");
                bar.inc(1);
                anyhow::Ok((k, sent.pts, j as u64))
            }
        })
        .buffer_unordered(options.writers.max(1))
        .collect::<Vec<_>>()
        .await;
    let post_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let mut truth: Vec<ChannelTruth> = channels
        .into_iter()
        .zip(heads)
        .map(|(id, base_pts)| ChannelTruth {
            id,
            base_pts,
            messages: Vec::new(),
        })
        .collect();
    for result in posted {
        let (k, pts, j) = result?;
        let channel = truth.get_mut(k).context("no such channel")?;
        let offset = pts
            .checked_sub(channel.base_pts + 1)
            .and_then(|o| usize::try_from(o).ok())
            .with_context(|| format!("message {j} got pts {pts}, not above the head"))?;
        if channel.messages.len() <= offset {
            channel.messages.resize(offset + 1, None);
        }
        let slot = channel.messages.get_mut(offset).context("no such pts")?;
        anyhow::ensure!(
            slot.is_none(),
            "two acknowledged messages share pts {pts} in channel {}",
            channel.id
        );
        *slot = Some(j);
    }
    Ok((truth, post_secs))
}

/// Reconnects one device and brings it up to date.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    target: &Target,
    device: &Device,
    transport: Transport,
    connect: ConnectOptions,
    channel: Option<&ChannelTruth>,
    page_size: u32,
    slots: &Semaphore,
    started: Instant,
) -> DeviceOutcome {
    let mut outcome = DeviceOutcome::default();
    let who = format!("device {} of {}", device.grant.device_id, device.username);
    let Some(channel) = channel else {
        outcome.problems.push(format!("{who}: no channel"));
        return outcome;
    };
    let connection = {
        let Ok(_slot) = slots.acquire().await else {
            outcome.problems.push(format!("{who}: no connection slot"));
            return outcome;
        };
        let begun = Instant::now();
        match target.open(device, transport, connect).await {
            Ok(connection) => {
                outcome.connect = Some(begun.elapsed());
                connection
            }
            Err(err) => {
                outcome.problems.push(format!("{who}: connecting: {err}"));
                return outcome;
            }
        }
    };

    let heads = match connection.call(&BatchGetChannelPts::default()).await {
        Ok(heads) => heads,
        Err(err) => {
            outcome
                .problems
                .push(format!("{who}: sync/batch_get_channel_pts: {err}"));
            outcome.connection = Some(connection);
            return outcome;
        }
    };
    outcome.calls += 1;
    let head = heads
        .channels
        .iter()
        .find(|head| head.channel_id == channel.id)
        .map(|head| head.pts);
    if head != Some(channel.head()) {
        outcome.check.wrong_heads += 1;
        outcome.problems.push(format!(
            "{who}: channel {} head is {head:?}, expected {}",
            channel.id,
            channel.head()
        ));
    }

    // Everything after what the device had seen, page by page.
    let mut last_pts = channel.base_pts;
    let mut got = 0_u64;
    loop {
        let page = match common::get_difference(&connection, channel.id, last_pts, page_size).await
        {
            Ok((page, halved)) => {
                outcome.oversized_pages += u64::from(halved);
                outcome.calls += u64::from(halved);
                page
            }
            Err(err) => {
                outcome
                    .problems
                    .push(format!("{who}: sync/get_difference from {last_pts}: {err}"));
                break;
            }
        };
        outcome.calls += 1;
        for event in &page.events {
            if event.pts != last_pts + 1 {
                outcome.check.out_of_order += 1;
            }
            last_pts = last_pts.max(event.pts);
            outcome.events += 1;
            let index = event
                .pts
                .checked_sub(channel.base_pts + 1)
                .and_then(|o| usize::try_from(o).ok());
            let expected = index.and_then(|i| channel.messages.get(i).copied().flatten());
            let actual = event
                .body
                .get("client_msg_id")
                .and_then(serde_json::Value::as_str)
                .and_then(|id| id.strip_prefix('m'))
                .and_then(|j| j.parse::<u64>().ok());
            if event.event == "message/new" && expected.is_some() && expected == actual {
                got += 1;
            } else {
                outcome.check.mismatched += 1;
            }
        }
        if !page.has_more || page.events.is_empty() {
            break;
        }
    }
    let posted = channel.messages.iter().flatten().count() as u64;
    outcome.check.lost += posted.saturating_sub(got);
    if outcome.check == CatchupCheck::default() && outcome.problems.is_empty() {
        outcome.current_after = Some(started.elapsed());
    } else if outcome.problems.is_empty() {
        outcome
            .problems
            .push(format!("{who}: caught up wrongly: {:?}", outcome.check));
    }
    outcome.connection = Some(connection);
    outcome
}

impl Outcome for CatchupResult {
    fn scenario(&self) -> &'static str {
        "catchup"
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let c = &self.check;
        let mut count = |n: u64, what: &str| {
            if n > 0 {
                failures.push(format!("{n} {what}"));
            }
        };
        count(c.lost, "posted messages never reached a device (LOST)");
        count(c.out_of_order, "events came out of pts order or with a gap");
        count(
            c.mismatched,
            "events were not the message acknowledged at their pts",
        );
        count(c.wrong_heads, "channel heads differed from what was posted");
        if self.devices_current < self.devices {
            failures.push(format!(
                "only {} of {} devices became current",
                self.devices_current, self.devices
            ));
        }
        if !self.problems.is_empty() {
            failures.push(self.problems.describe("device problems"));
        }
        failures
    }

    fn table(&self) -> Vec<(String, String)> {
        vec![
            (
                "devices / accounts / channels".to_owned(),
                format!(
                    "{} / {} / {} ({})",
                    thousands(self.devices as u64),
                    thousands(self.users as u64),
                    thousands(self.channels as u64),
                    self.transport.as_str()
                ),
            ),
            (
                "messages posted while offline".to_owned(),
                format!(
                    "{} in {:.1} s ({:.0}/s over HTTP)",
                    thousands(self.events_posted),
                    self.post_secs,
                    self.posts_per_sec
                ),
            ),
            (
                "all devices current after".to_owned(),
                self.all_current_secs
                    .map_or_else(|| "NEVER".to_owned(), |s| format!("{s:.2} s")),
            ),
            (
                "device current p50/p99/p99.9/max".to_owned(),
                self.current_latency.cell(),
            ),
            (
                "device connect p50/p99/p99.9/max".to_owned(),
                self.connect_latency.cell(),
            ),
            (
                "events fetched / get_difference calls".to_owned(),
                format!(
                    "{} / {} ({:.0} events/s)",
                    thousands(self.events_fetched),
                    thousands(self.difference_calls),
                    self.events_fetched_per_sec
                ),
            ),
            (
                "get_difference pages too large".to_owned(),
                format!(
                    "{} (refused as payload_too_large; asked again smaller)",
                    self.oversized_pages
                ),
            ),
            (
                "server CPU".to_owned(),
                self.server_cpu_percent
                    .map_or("n/a".to_owned(), |p| format!("{p:.0} % of one core")),
            ),
            (
                "lost / out-of-order / mismatched".to_owned(),
                format!(
                    "{} / {} / {}",
                    self.check.lost, self.check.out_of_order, self.check.mismatched
                ),
            ),
        ]
    }

    fn charts(&self) -> Vec<(&'static str, String)> {
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        for &n in self.current_timeline.buckets() {
            total += n as f64;
            cumulative.push(total);
        }
        let per_second = self
            .current_timeline
            .buckets()
            .iter()
            .map(|&n| n as f64)
            .collect();
        vec![(
            "current",
            chart::lines(
                &format!(
                    "Catch-up: {} devices, {} messages",
                    self.devices, self.events_posted
                ),
                "seconds since the reconnect",
                "devices",
                &[
                    Series::new("current (cumulative)", cumulative),
                    Series::new("became current in this second", per_second),
                ],
            ),
        )]
    }
}

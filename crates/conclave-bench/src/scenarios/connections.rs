//! `connections`: N idle authenticated connections, held open; the server's
//! memory per connection and its CPU while they idle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_client::{ConnectOptions, Connection};
use futures_util::StreamExt as _;
use serde::Serialize;

use super::Errors;
use crate::common::{self, Progress, Target, Transport};
use crate::probe::{self, ProcessSample};
use crate::report::{Outcome, bytes, thousands};
use crate::stats::{Latency, LatencySummary};

/// The hold is slept in steps of this, to move the progress bar.
const HOLD_STEP: Duration = Duration::from_secs(1);

/// Leave this many file descriptors to everything else when checking
/// `--count` against `ulimit -n`.
const SPARE_FDS: u64 = 64;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct ConnectionsOptions {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Transport of every connection.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Accounts to spread the connections over.
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Devices logged in per account (at most the server's
    /// `auth.max_devices_per_user`). Connections share devices round-robin:
    /// a device may hold many sessions.
    #[arg(long, default_value_t = 10)]
    pub devices_per_user: usize,
    /// How long to hold the connections open while measuring idle CPU.
    #[arg(long, visible_alias = "duration-secs", default_value_t = 30)]
    pub hold_secs: u64,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Source addresses to spread connections over (127.0.0.2, 127.0.0.3,
    /// ...; each has ~28k ephemeral ports). 0: automatic, one per 20 000
    /// connections above 20 000, otherwise the system's choice.
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
    /// How long to let the server settle after the last connection opened
    /// before measuring memory and starting the hold (the work of the last
    /// connections is over by then).
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
    /// The SDK's own keepalive ping interval (the server also pings every
    /// `limits.heartbeat_interval_ms`).
    #[arg(long, default_value_t = conclave_client::KEEPALIVE_INTERVAL.as_secs())]
    pub keepalive_secs: u64,
}

impl ConnectionsOptions {
    fn source_ip_count(&self) -> usize {
        if self.source_ips > 0 {
            self.source_ips
        } else if self.count > common::CONNECTIONS_PER_SOURCE_IP {
            self.count.div_ceil(common::CONNECTIONS_PER_SOURCE_IP)
        } else {
            0
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsResult {
    pub transport: Transport,
    pub requested: usize,
    pub opened: usize,
    pub connect_errors: Errors,
    pub source_ips: Vec<String>,
    /// From the first attempt to the last connection open.
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    /// Each connection's open time (TCP, upgrade or handshake, auth).
    pub connect_latency: LatencySummary,
    pub hold_secs: f64,
    /// Connections found closed at the end of the hold.
    pub dropped_during_hold: usize,
    /// The server before any connection, with all of them open, and at the
    /// end of the hold.
    pub server_before: ProcessSample,
    pub server_open: ProcessSample,
    pub server_after_hold: ProcessSample,
    /// (RSS with all connections open - RSS before) / connections.
    pub server_rss_per_connection_bytes: Option<f64>,
    /// The same at the end of the hold. Memory the connect burst used for a
    /// moment (handshakes, the device writes) is returned to the system a
    /// few seconds after the burst, so this is what held connections cost.
    pub server_rss_per_held_connection_bytes: Option<f64>,
    /// Server CPU while the connections idled, in % of one core.
    pub server_idle_cpu_percent: Option<f64>,
    /// The load generator's own memory per connection (for scale).
    pub loadgen_rss_per_connection_bytes: Option<f64>,
}

/// Opens `count` connections, holds them, and measures the server.
///
/// # Errors
///
/// When the setup (registration) fails; connection failures are counted in
/// the result instead.
pub async fn run(
    target: &Target,
    options: &ConnectionsOptions,
    progress: &Progress,
) -> anyhow::Result<ConnectionsResult> {
    target.require(options.transport)?;
    anyhow::ensure!(options.count > 0, "--count must be at least 1");
    anyhow::ensure!(
        options.users > 0 && options.devices_per_user > 0,
        "--users and --devices-per-user must be at least 1"
    );
    if let Some(limit) = probe::open_files_limit()
        && (options.count as u64) + SPARE_FDS > limit
    {
        anyhow::bail!(
            "--count {} needs more file descriptors than `ulimit -n` allows ({limit}); \
             raise it (e.g. `ulimit -n 200000`) for this shell and the server's",
            options.count
        );
    }

    let prefix = common::run_prefix();
    let accounts = common::create_accounts(
        target,
        &prefix,
        "c",
        &vec![options.devices_per_user; options.users],
        options.transport == Transport::Tcp,
        progress,
    )
    .await?;
    let devices: Arc<Vec<common::Device>> = Arc::new(accounts.into_iter().flatten().collect());

    let sources = options.source_ip_count();
    let timings = ConnectOptions {
        keepalive_interval: Duration::from_secs(options.keepalive_secs.max(1)),
        ..ConnectOptions::default()
    };
    let server_before = probe::sample_server(target).await;
    let self_before = probe::sample_self();

    let transport = options.transport;
    let bar = progress.bar(options.count as u64, "opening connections");
    let started = Instant::now();
    let attempts = futures_util::stream::iter(0..options.count)
        .map(|i| {
            let devices = Arc::clone(&devices);
            let bar = bar.clone();
            async move {
                let device = devices.get(i % devices.len().max(1))?;
                let options = ConnectOptions {
                    local_addr: common::source_ip(i, sources),
                    ..timings
                };
                let begun = Instant::now();
                let result = target.open(device, transport, options).await;
                bar.inc(1);
                Some((begun.elapsed(), result))
            }
        })
        .buffer_unordered(options.connect_concurrency.max(1));
    let mut attempts = std::pin::pin!(attempts);
    let mut connections: Vec<Connection> = Vec::with_capacity(options.count);
    let mut connect_errors = Errors::default();
    let mut connect_latency = Latency::new();
    while let Some(attempt) = attempts.next().await {
        match attempt {
            Some((took, Ok(connection))) => {
                connect_latency.record(took);
                connections.push(connection);
            }
            Some((_, Err(err))) => connect_errors.push(err.to_string()),
            None => connect_errors.push("no device to connect as"),
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    progress.note(&format!(
        "{} connections open in {connect_secs:.1} s ({} failed); holding for {} s",
        connections.len(),
        connect_errors.count,
        options.hold_secs
    ));

    tokio::time::sleep(Duration::from_secs(options.settle_secs)).await;
    let server_open = probe::sample_server(target).await;
    let self_open = probe::sample_self();
    let hold = Duration::from_secs(options.hold_secs);
    let hold_bar = progress.bar(options.hold_secs, "holding (idle)");
    let hold_started = Instant::now();
    for _ in 0..options.hold_secs {
        tokio::time::sleep(HOLD_STEP).await;
        hold_bar.inc(1);
    }
    let held = hold_started.elapsed();
    let server_after_hold = probe::sample_server(target).await;
    hold_bar.finish_and_clear();
    let dropped_during_hold = connections.iter().filter(|c| c.is_closed()).count();

    let opened = connections.len();
    let per_connection = |before: &ProcessSample, after: &ProcessSample| {
        let grown = after.rss_bytes? as f64 - before.rss_bytes? as f64;
        (opened > 0).then(|| grown / opened as f64)
    };
    let result = ConnectionsResult {
        transport: options.transport,
        requested: options.count,
        opened,
        connect_errors,
        source_ips: (0..sources)
            .filter_map(|i| common::source_ip(i, sources))
            .map(|ip| ip.to_string())
            .collect(),
        connect_secs,
        connects_per_sec: opened as f64 / connect_secs.max(1e-9),
        connect_latency: connect_latency.summary(),
        hold_secs: if hold.is_zero() {
            0.0
        } else {
            held.as_secs_f64()
        },
        dropped_during_hold,
        server_rss_per_connection_bytes: per_connection(&server_before, &server_open),
        server_rss_per_held_connection_bytes: per_connection(&server_before, &server_after_hold),
        server_idle_cpu_percent: server_open.cpu_percent_until(&server_after_hold, held),
        loadgen_rss_per_connection_bytes: per_connection(&self_before, &self_open),
        server_before,
        server_open,
        server_after_hold,
    };

    // Close politely (closing handshake), many at once.
    let closing = progress.bar(opened as u64, "closing");
    futures_util::stream::iter(connections)
        .map(|connection| {
            let closing = closing.clone();
            async move {
                connection.close().await;
                closing.inc(1);
            }
        })
        .buffer_unordered(options.connect_concurrency.max(1))
        .collect::<()>()
        .await;
    closing.finish_and_clear();
    Ok(result)
}

impl Outcome for ConnectionsResult {
    fn scenario(&self) -> &'static str {
        "connections"
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if !self.connect_errors.is_empty() {
            failures.push(self.connect_errors.describe("connections failed to open"));
        }
        if self.opened < self.requested && self.connect_errors.is_empty() {
            failures.push(format!(
                "only {} of {} connections opened",
                self.opened, self.requested
            ));
        }
        if self.dropped_during_hold > 0 {
            failures.push(format!(
                "{} connections were closed during the idle hold",
                self.dropped_during_hold
            ));
        }
        // At least ours: other clients (or connections of an earlier run
        // still closing) may add to the count, but none of ours may be
        // missing from it.
        if let Some(open) = self.server_open.open_connections
            && open < self.opened as u64
        {
            failures.push(format!(
                "the server counts {open} open connections, fewer than the {} opened",
                self.opened
            ));
        }
        failures
    }

    fn table(&self) -> Vec<(String, String)> {
        let opt = |value: Option<f64>, render: &dyn Fn(f64) -> String| {
            value.map_or_else(|| "n/a (give --admin or --server-pid)".to_owned(), render)
        };
        vec![
            ("transport".to_owned(), self.transport.as_str().to_owned()),
            (
                "connections open".to_owned(),
                format!(
                    "{} of {}",
                    thousands(self.opened as u64),
                    thousands(self.requested as u64)
                ),
            ),
            (
                "source addresses".to_owned(),
                if self.source_ips.is_empty() {
                    "system's choice".to_owned()
                } else {
                    format!("{} (from {})", self.source_ips.len(), self.source_ips[0])
                },
            ),
            (
                "connect time".to_owned(),
                format!(
                    "{:.1} s ({:.0} conn/s)",
                    self.connect_secs, self.connects_per_sec
                ),
            ),
            (
                "connect latency p50/p99/p99.9/max".to_owned(),
                self.connect_latency.cell(),
            ),
            (
                "server RSS before -> open".to_owned(),
                match (self.server_before.rss_bytes, self.server_open.rss_bytes) {
                    (Some(a), Some(b)) => format!("{} -> {}", bytes(a as f64), bytes(b as f64)),
                    _ => "n/a (give --admin or --server-pid)".to_owned(),
                },
            ),
            (
                "server RSS after the hold".to_owned(),
                opt(self.server_after_hold.rss_bytes.map(|b| b as f64), &bytes),
            ),
            (
                "server RSS per connection".to_owned(),
                opt(self.server_rss_per_connection_bytes, &bytes),
            ),
            (
                "server RSS per held connection".to_owned(),
                opt(self.server_rss_per_held_connection_bytes, &bytes),
            ),
            (
                format!("server CPU idle ({:.0} s hold)", self.hold_secs),
                opt(self.server_idle_cpu_percent, &|p| {
                    format!("{p:.2} % of one core")
                }),
            ),
            (
                "load generator RSS per connection".to_owned(),
                opt(self.loadgen_rss_per_connection_bytes, &bytes),
            ),
            (
                "dropped during hold".to_owned(),
                self.dropped_during_hold.to_string(),
            ),
        ]
    }
}

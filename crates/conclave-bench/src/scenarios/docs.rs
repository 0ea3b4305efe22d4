//! `docs`: collaborative editing. D documents, each edited by N clients
//! over the real y-websocket protocol (`/collab/<name>?token=...`). Every
//! client is a `yrs` document with its own Yjs client id; it syncs with the
//! server (sync step 1 and 2 both ways), then appends small text chunks to
//! a shared `Y.Text` at a fixed rate (or as fast as the server relays
//! them) and sends each as a y-websocket update. The server stores every
//! update, then relays it to the document's other clients, which apply it
//! and record its end-to-end latency.
//!
//! The server never echoes an update to its sender, so there is no ack to
//! time: latency is measured from the update's send time to its arrival at
//! each other client. Each chunk is `client:seq:due_us` padded with `.` and
//! ended by `;`; the receivers find the chunks an update inserted from the
//! update's own ids (Yjs client id and clock range) in a table the senders
//! fill in before sending, which holds the send times.
//!
//! At the end every document is checked: every client's text, and the
//! server's (read by a fresh connection), must be identical and hold every
//! chunk its clients sent exactly once; every client must have received
//! every other client's updates exactly once (deliveries = updates x
//! (clients per document - 1)). Any miss fails the run.
//!
//! Memory: the server's RSS before any document connection, after the first
//! connection of every document (which loads it), after all connections,
//! and after the edits; per loaded document and per further connection.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use conclave_client::api::documents::{DocCreate, DocScope, DocToken};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use yrs::sync::{Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode as _, DecoderV1};
use yrs::updates::encoder::Encode as _;
use yrs::{Doc, GetString as _, ReadTxn as _, Text as _, TextRef, Transact as _, Update};

use super::Errors;
use super::traffic::{QUIET_PERIOD, START_DELAY};
use crate::chart::{self, Series};
use crate::common::{self, Progress, SETUP_CONCURRENCY, Target};
use crate::probe::{self, DbOperation, ProcessSample};
use crate::report::{Outcome, bytes, thousands};
use crate::stats::{Latency, LatencySummary, Timeline};

/// The shared `Y.Text` every client edits.
pub const TEXT_NAME: &str = "bench";

/// Client `i`'s Yjs client id is `i + CLIENT_ID_BASE` (the server's rooms
/// use 0 and never edit).
pub const CLIENT_ID_BASE: u64 = 1;

/// How long connecting and the sync exchange may take, per connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server is left alone before its memory is read (the work
/// of the last connections is over by then).
pub const SETTLE: Duration = Duration::from_secs(1);

/// How long a client waits for room in its window before it gives up: its
/// earlier updates have not reached the next client of its document for
/// this long. Generous, so that an overloaded server shows as latency
/// rather than as a failure.
pub const WINDOW_TIMEOUT: Duration = Duration::from_secs(120);

/// How long closing a connection may take at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Leave this many file descriptors to everything else when checking the
/// connections against `ulimit -n`.
const SPARE_FDS: u64 = 64;

/// What pads a chunk to `--chunk-bytes` (never part of its header).
const PAD: char = '.';

/// What ends every chunk.
const END: char = ';';

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct DocsOptions {
    /// Documents, each edited by its own clients (one owner account each).
    #[arg(long, default_value_t = 10)]
    pub docs: usize,
    /// y-websocket clients per document, each with its own Yjs client id
    /// and connection (at least 2; at most the server's
    /// `documents.max_connections_per_document` - 1, one is kept for the
    /// final check).
    #[arg(long, default_value_t = 4)]
    pub clients_per_doc: usize,
    /// Updates per second each client sends, on a fixed schedule.
    #[arg(long, required_unless_present = "max", conflicts_with = "max")]
    pub rate: Option<f64>,
    /// As fast as the server relays: every client keeps `--window` updates
    /// in flight.
    #[arg(long)]
    pub max: bool,
    /// How long updates are sent.
    #[arg(long, visible_alias = "duration", default_value_t = 30)]
    pub duration_secs: u64,
    /// Bytes of text each update inserts (more when the chunk's header,
    /// `client:seq:due_us;`, is longer).
    #[arg(long, default_value_t = 32)]
    pub chunk_bytes: usize,
    /// Updates per client not yet relayed to the next client of its
    /// document, at most; a full window delays the next update (which
    /// counts against latency).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// How long clients wait for the next of the last updates after every
    /// other client of their document has sent its last (counted from the
    /// last one that arrived).
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Source addresses to spread connections over (127.0.0.2, 127.0.0.3,
    /// ...). 0: automatic, one per 20 000 connections above 20 000,
    /// otherwise the system's choice.
    #[arg(long, default_value_t = 0)]
    pub source_ips: usize,
}

impl DocsOptions {
    /// All editing clients.
    #[must_use]
    pub fn clients(&self) -> usize {
        self.docs * self.clients_per_doc
    }

    /// Checks the flags; returns how many updates each client sends
    /// (`None` with `--max`).
    ///
    /// # Errors
    ///
    /// A flag out of range, or neither or both of `--rate` and `--max`.
    pub fn check(&self) -> anyhow::Result<Option<u64>> {
        anyhow::ensure!(self.docs > 0, "--docs must be at least 1");
        anyhow::ensure!(
            self.clients_per_doc >= 2,
            "--clients-per-doc must be at least 2 (updates are relayed to the other clients)"
        );
        anyhow::ensure!(self.window > 0, "--window must be at least 1");
        anyhow::ensure!(self.chunk_bytes > 0, "--chunk-bytes must be at least 1");
        anyhow::ensure!(self.duration_secs > 0, "--duration-secs must be at least 1");
        if let Some(limit) = probe::open_files_limit() {
            let needed = (self.clients() + self.docs) as u64 + SPARE_FDS;
            anyhow::ensure!(
                needed <= limit,
                "{} connections need more file descriptors than `ulimit -n` allows ({limit})",
                self.clients() + self.docs
            );
        }
        match (self.rate, self.max) {
            (Some(rate), false) => {
                anyhow::ensure!(
                    rate.is_finite() && rate > 0.0,
                    "--rate must be a positive number"
                );
                let count = (rate * self.duration_secs as f64).floor() as u64;
                anyhow::ensure!(count > 0, "--rate x --duration-secs schedules no update");
                Ok(Some(count))
            }
            (None, true) => Ok(None),
            _ => anyhow::bail!("give exactly one of --rate R and --max"),
        }
    }

    fn source_ip_count(&self) -> usize {
        let connections = self.clients() + self.docs;
        if self.source_ips > 0 {
            self.source_ips
        } else if connections > common::CONNECTIONS_PER_SOURCE_IP {
            connections.div_ceil(common::CONNECTIONS_PER_SOURCE_IP)
        } else {
            0
        }
    }
}

/// The text of chunk `seq` of client `client`, due `due_us` microseconds
/// after the start: `client:seq:due_us`, padded to `chunk_bytes` with `.`,
/// ended by `;`.
#[must_use]
pub fn chunk_text(client: usize, seq: u64, due_us: u64, chunk_bytes: usize) -> String {
    let mut chunk = format!("{client}:{seq}:{due_us}");
    while chunk.len() + 1 < chunk_bytes {
        chunk.push(PAD);
    }
    chunk.push(END);
    chunk
}

/// `(client, seq, due_us)` of a chunk without its final `;`.
#[must_use]
pub fn parse_chunk(record: &str) -> Option<(usize, u64, u64)> {
    let mut parts = record.trim_end_matches(PAD).split(':');
    let client = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let due_us = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((client, seq, due_us))
}

/// How one document's text compares with what its clients sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TextCheck {
    /// Chunks sent (and so expected in the text).
    pub expected: u64,
    /// Expected chunks found, each counted once.
    pub found: u64,
    /// Sent but not in the text.
    pub missing: u64,
    /// Occurrences beyond the first of the same chunk.
    pub duplicated: u64,
    /// Pieces of text that are not a chunk this document's clients sent
    /// (unreadable, another client's, never sent, or altered).
    pub unexpected: u64,
}

impl TextCheck {
    fn add(&mut self, other: Self) {
        self.expected += other.expected;
        self.found += other.found;
        self.missing += other.missing;
        self.duplicated += other.duplicated;
        self.unexpected += other.unexpected;
    }

    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}

/// Checks a document's text against what its clients sent: `sent` maps a
/// client to the `due_us` of each of its chunks, by sequence number.
#[must_use]
pub fn check_text(text: &str, sent: &HashMap<usize, Vec<u64>>, chunk_bytes: usize) -> TextCheck {
    let mut check = TextCheck {
        expected: sent.values().map(|chunks| chunks.len() as u64).sum(),
        ..TextCheck::default()
    };
    let mut seen: HashSet<(usize, u64)> = HashSet::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some((record, after)) = rest.split_once(END) else {
            // Text after the last `;`: not a whole chunk.
            check.unexpected += 1;
            break;
        };
        rest = after;
        let known = parse_chunk(record).filter(|&(client, seq, due_us)| {
            let due = sent
                .get(&client)
                .and_then(|chunks| chunks.get(usize::try_from(seq).ok()?));
            due == Some(&due_us)
                && chunk_text(client, seq, due_us, chunk_bytes).len() == record.len() + 1
        });
        match known {
            Some((client, seq, _)) => {
                if !seen.insert((client, seq)) {
                    check.duplicated += 1;
                }
            }
            None => check.unexpected += 1,
        }
    }
    check.found = seen.len() as u64;
    check.missing = check.expected - check.found;
    check
}

/// `ws://host:port` of the server's `http://host:port`, and the
/// `host:port` to connect to.
///
/// # Errors
///
/// A URL that is not `http://`.
pub fn collab_base(base_url: &str) -> anyhow::Result<(String, String)> {
    let authority = base_url
        .strip_prefix("http://")
        .context("the docs scenario connects to http:// servers only (ws://, no TLS)")?
        .split('/')
        .next()
        .unwrap_or_default();
    anyhow::ensure!(!authority.is_empty(), "no host in `{base_url}`");
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    let with_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((format!("ws://{authority}"), with_port))
}

/// One document's setup.
struct DocPlan {
    name: String,
    /// A token per client, and one more for the final check.
    tokens: Vec<String>,
}

type Socket = WebSocketStream<TcpStream>;
type Sink = SplitSink<Socket, WsMessage>;
type Stream = SplitStream<Socket>;

/// One editing client, connected and synced.
struct Editor {
    doc: Doc,
    text: TextRef,
    socket: Socket,
}

/// A chunk a client sent: where it sits in the client's clock, and when it
/// was due and actually sent.
#[derive(Debug, Clone, Copy)]
struct SentChunk {
    clock: u32,
    due: Instant,
    due_us: u64,
    left: Instant,
}

/// What the clients share while running.
struct Shared {
    start: Instant,
    /// Per client, its chunks by sequence number (clocks increase with it).
    logs: Vec<RwLock<Vec<SentChunk>>>,
    /// Per client, its window: a permit per update it may still send
    /// before the next client of its document has received its earlier
    /// ones.
    windows: Vec<Semaphore>,
    sent: AtomicU64,
    delivered: AtomicU64,
}

/// When a client sends.
#[derive(Debug, Clone, Copy)]
enum Schedule {
    /// Update `k` is due `(k + phase) / rate` seconds after the start.
    Rate { rate: f64, phase: f64, count: u64 },
    /// Back to back (within the window) until the end.
    Max { end: Instant },
}

/// One client's sending side.
#[derive(Default)]
struct SenderOutcome {
    sent: u64,
    chunk_bytes: u64,
    errors: Errors,
    window_waits: u64,
    timeline: Timeline,
    last_send: Option<Duration>,
}

/// One client's receiving side.
#[derive(Default)]
struct ReceiverOutcome {
    /// Distinct chunks of the other clients received through relayed
    /// updates.
    received: HashSet<(usize, u64)>,
    /// Relayed update messages (`0 • 2 • update`).
    frames: u64,
    duplicates: u64,
    /// Updates (or parts) that were not any other client's chunk.
    unexpected: u64,
    latency: Latency,
    service: Latency,
    timeline: Timeline,
    last_delivery: Option<Duration>,
    /// Messages other than updates (sync steps after the handshake,
    /// awareness).
    other_messages: u64,
    problems: Errors,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocsTimelines {
    /// Updates sent per second.
    pub sent: Timeline,
    /// Updates received per second, over all clients.
    pub delivered: Timeline,
}

/// The server's memory as documents load and fill.
#[derive(Debug, Clone, Serialize)]
pub struct DocsMemory {
    /// Before any document connection (accounts, documents and tokens
    /// exist).
    pub server_before: ProcessSample,
    /// With one connection per document (every document loaded, empty).
    pub server_docs_loaded: ProcessSample,
    /// With every client connected and synced.
    pub server_all_connected: ProcessSample,
    /// After the edits, every client still connected.
    pub server_after_run: ProcessSample,
    /// (RSS with every document loaded - RSS before) / documents: a loaded
    /// empty document with its first connection.
    pub rss_per_loaded_doc_bytes: Option<f64>,
    /// (RSS with every client connected - RSS with the documents loaded) /
    /// further connections.
    pub rss_per_further_connection_bytes: Option<f64>,
    /// (RSS after the run - RSS before) / documents: a document with its
    /// text and all its connections.
    pub rss_per_doc_after_run_bytes: Option<f64>,
    /// Length of each document's text at the end (all the same length when
    /// the run passed), averaged.
    pub text_bytes_per_doc: f64,
}

/// The final checks, over all documents.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DocsVerification {
    pub docs_checked: usize,
    /// Documents where some client's text differs from the others'.
    pub texts_differ: usize,
    /// Documents whose text on the server (read by a fresh connection)
    /// differs from the clients'.
    pub server_copy_differs: usize,
    /// The texts against what was sent (one text per document: all are
    /// identical when the two counts above are 0).
    pub text: TextCheck,
    /// Deliveries the run must have made: every update to every other
    /// client of its document.
    pub expected_deliveries: u64,
    /// Expected deliveries that never arrived.
    pub missing_deliveries: u64,
    /// Deliveries beyond the first of the same update at the same client.
    pub duplicate_deliveries: u64,
    /// Updates received that were no other client's chunk.
    pub unexpected_deliveries: u64,
    /// What went wrong, document by document (the first few).
    pub problems: Errors,
}

/// What a `docs` run measured and verified.
#[derive(Debug, Clone, Serialize)]
pub struct DocsResult {
    /// `rate` or `max`.
    pub mode: &'static str,
    /// What latencies are measured from.
    pub latency_basis: &'static str,
    pub docs: usize,
    pub clients_per_doc: usize,
    pub clients: usize,
    /// Updates per second per client (`--rate`).
    pub rate_per_client: Option<f64>,
    /// Updates per second offered over all clients.
    pub offered_updates_per_sec: Option<f64>,
    pub duration_secs: u64,
    pub window: usize,
    pub chunk_bytes: usize,
    /// Bytes each update inserted, on average (the header may be longer
    /// than `--chunk-bytes`).
    pub mean_chunk_bytes: f64,
    pub source_ips: Vec<String>,
    /// Connect + sync exchange of every client.
    pub connect_latency: LatencySummary,
    /// Updates sent.
    pub sent: u64,
    /// Distinct updates received by the other clients of their document
    /// (an update to a document of N clients counts N - 1 times).
    pub deliveries: u64,
    /// Relayed update messages received: `deliveries`, unless the server
    /// relayed several chunks in one update (what a client's sync step 2
    /// brought it).
    pub relayed_frames: u64,
    /// From the first scheduled update to the last sent.
    pub send_secs: f64,
    /// From the first scheduled update to the last delivery.
    pub elapsed_secs: f64,
    /// `sent / send_secs`.
    pub sent_per_sec: f64,
    /// Updates stored and relayed to every other client, per second over
    /// `elapsed_secs` (every sent update, when the run passed).
    pub updates_per_sec: f64,
    /// `deliveries / elapsed_secs`.
    pub deliveries_per_sec: f64,
    /// The median of the per-second counts, without the first and the last
    /// second of the sending phase.
    pub steady_sent_per_sec: Option<u64>,
    pub steady_deliveries_per_sec: Option<u64>,
    /// Times a client waited for its window (see `--window`).
    pub window_waits: u64,
    /// Send -> arrival at each other client, from the intended send time.
    pub delivery_latency: LatencySummary,
    /// Send -> arrival at each other client, from when the update was
    /// made and sent.
    pub delivery_service_latency: LatencySummary,
    pub timelines: DocsTimelines,
    pub send_errors: Errors,
    /// Connections closed by the server, undecodable messages, updates
    /// that did not apply, clients that gave up waiting.
    pub receiver_problems: Errors,
    /// Messages other than relayed updates after the sync exchange.
    pub other_messages: u64,
    pub verification: DocsVerification,
    pub memory: DocsMemory,
    /// Between the samples that bracket the run, in % of one core.
    pub server_cpu_percent: Option<f64>,
    pub loadgen_cpu_percent: Option<f64>,
    /// The server's database operations during the run (its
    /// `conclave_db_query_duration_seconds`, from `/metrics`), most time
    /// first; empty without `--admin`.
    pub db_operations: Vec<DbOperation>,
}

/// Runs the scenario.
///
/// # Errors
///
/// When the setup fails (registration, documents, tokens, connections);
/// failures during the run are counted in the result.
pub async fn run(
    target: &Target,
    options: &DocsOptions,
    progress: &Progress,
) -> anyhow::Result<DocsResult> {
    let count = options.check()?;
    let (ws_base, authority) = collab_base(&target.base_url)?;
    let addr = tokio::net::lookup_host(authority.as_str())
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let plans = setup(target, options, progress).await?;
    let sources = options.source_ip_count();
    let clients = options.clients();
    let per_doc = options.clients_per_doc;
    let url = |doc: usize, token: usize| -> String {
        let plan = &plans[doc];
        format!(
            "{ws_base}/collab/{}?token={}",
            plan.name, plan.tokens[token]
        )
    };

    tokio::time::sleep(SETTLE).await;
    let server_before = probe::sample_server(target).await;

    // The first client of every document loads it...
    let mut connect_latency = Latency::new();
    let firsts: Vec<usize> = (0..options.docs).map(|doc| doc * per_doc).collect();
    let first_editors = connect_all(
        &firsts,
        |client| url(client / per_doc, client % per_doc),
        addr,
        sources,
        options.connect_concurrency,
        progress.bar(firsts.len() as u64, "loading documents"),
        &mut connect_latency,
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    let server_docs_loaded = probe::sample_server(target).await;

    // ...then the others join.
    let others: Vec<usize> = (0..clients).filter(|c| c % per_doc != 0).collect();
    let other_editors = connect_all(
        &others,
        |client| url(client / per_doc, client % per_doc),
        addr,
        sources,
        options.connect_concurrency,
        progress.bar(others.len() as u64, "connecting clients"),
        &mut connect_latency,
    )
    .await?;
    tokio::time::sleep(SETTLE).await;
    let server_all_connected = probe::sample_server(target).await;
    let self_before = probe::sample_self();
    let sampled_before = Instant::now();
    let mut editors: Vec<Option<Editor>> = (0..clients).map(|_| None).collect();
    for (client, editor) in firsts
        .into_iter()
        .zip(first_editors)
        .chain(others.into_iter().zip(other_editors))
    {
        editors[client] = Some(editor);
    }
    let editors: Vec<Editor> = editors
        .into_iter()
        .enumerate()
        .map(|(client, editor)| editor.with_context(|| format!("client {client} never connected")))
        .collect::<anyhow::Result<_>>()?;

    // Edit.
    let db_before = probe::db_operations(target).await;
    let start = Instant::now() + START_DELAY;
    let end = start + Duration::from_secs(options.duration_secs);
    let drain = Duration::from_secs(options.drain_secs);
    let shared = Arc::new(Shared {
        start,
        logs: (0..clients).map(|_| RwLock::new(Vec::new())).collect(),
        windows: (0..clients)
            .map(|_| Semaphore::new(options.window))
            .collect(),
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
    });
    let mut done_senders = Vec::with_capacity(clients);
    let mut done_receivers = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (tx, rx) = watch::channel(None);
        done_senders.push(tx);
        done_receivers.push(rx);
    }
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    let mut docs_of_clients = Vec::with_capacity(clients);
    let mut sinks = Vec::with_capacity(clients);
    for ((client, editor), done) in editors.into_iter().enumerate().zip(done_senders) {
        let document = client / per_doc;
        let first = document * per_doc;
        let position = client - first;
        let (sink, stream) = editor.socket.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let schedule = match count {
            Some(count) => Schedule::Rate {
                rate: options.rate.unwrap_or(1.0),
                phase: client as f64 / clients as f64,
                count,
            },
            None => Schedule::Max { end },
        };
        senders.spawn(send_all(
            Arc::clone(&shared),
            client,
            SendingClient {
                doc: editor.doc.clone(),
                text: editor.text.clone(),
                sink: Arc::clone(&sink),
            },
            schedule,
            options.chunk_bytes,
            done,
        ));
        let peers: Vec<usize> = (first..first + per_doc).filter(|&c| c != client).collect();
        let listening = Listening {
            me: client,
            // This client refills the window of the one before it.
            refills: first + (position + per_doc - 1) % per_doc,
            peers_done: peers.iter().map(|&p| done_receivers[p].clone()).collect(),
            peers,
        };
        receivers.spawn(receive_all(
            Arc::clone(&shared),
            listening,
            editor.doc.clone(),
            stream,
            Arc::clone(&sink),
            drain,
        ));
        docs_of_clients.push((editor.doc, editor.text));
        sinks.push(sink);
    }
    drop(done_receivers);
    let ticker = tokio::spawn(show_progress(
        *progress,
        Arc::clone(&shared),
        options.duration_secs,
        count.map(|c| c * clients as u64),
    ));
    let mut sent_by_client: HashMap<usize, SenderOutcome> = HashMap::new();
    while let Some(joined) = senders.join_next().await {
        let (client, outcome) = joined.context("a sending task failed")?;
        sent_by_client.insert(client, outcome);
    }
    let mut received_by_client: HashMap<usize, ReceiverOutcome> = HashMap::new();
    while let Some(joined) = receivers.join_next().await {
        let (client, outcome) = joined.context("a receiving task failed")?;
        received_by_client.insert(client, outcome);
    }
    ticker.abort();
    let server_after_run = probe::sample_server(target).await;
    let self_after = probe::sample_self();
    let sampled = sampled_before.elapsed();
    let db_after = probe::db_operations(target).await;

    // Totals.
    let mut send_errors = Errors::default();
    let mut receiver_problems = Errors::default();
    let mut sent_timeline = Timeline::new();
    let mut delivered_timeline = Timeline::new();
    let mut latency = Latency::new();
    let mut service = Latency::new();
    let (mut sent, mut chunk_bytes_sent, mut window_waits) = (0, 0, 0);
    let (mut deliveries, mut frames, mut other_messages) = (0, 0, 0);
    let mut last_send: Option<Duration> = None;
    let mut last_delivery: Option<Duration> = None;
    let mut verification = DocsVerification::default();
    for client in 0..clients {
        let outcome = sent_by_client
            .get(&client)
            .with_context(|| format!("client {client} has no sending result"))?;
        sent += outcome.sent;
        chunk_bytes_sent += outcome.chunk_bytes;
        window_waits += outcome.window_waits;
        send_errors.merge(outcome.errors.clone());
        sent_timeline.merge(&outcome.timeline);
        last_send = last_send.max(outcome.last_send);
    }
    for client in 0..clients {
        let outcome = received_by_client
            .remove(&client)
            .with_context(|| format!("client {client} has no receiving result"))?;
        let document = client / per_doc;
        let expected: u64 = (document * per_doc..(document + 1) * per_doc)
            .filter(|&c| c != client)
            .map(|c| sent_by_client.get(&c).map_or(0, |o| o.sent))
            .sum();
        verification.expected_deliveries += expected;
        verification.missing_deliveries += expected.saturating_sub(outcome.received.len() as u64);
        verification.duplicate_deliveries += outcome.duplicates;
        verification.unexpected_deliveries += outcome.unexpected;
        deliveries += outcome.received.len() as u64;
        frames += outcome.frames;
        other_messages += outcome.other_messages;
        receiver_problems.merge(outcome.problems);
        latency.merge(&outcome.latency);
        service.merge(&outcome.service);
        delivered_timeline.merge(&outcome.timeline);
        last_delivery = last_delivery.max(outcome.last_delivery);
    }

    // Every document: the clients' texts, the server's, the chunks.
    let bar = progress.bar(options.docs as u64, "verifying documents");
    let mut text_bytes = 0_u64;
    for (document, plan) in plans.iter().enumerate() {
        let name = &plan.name;
        let members = document * per_doc..(document + 1) * per_doc;
        let texts: Vec<String> = members
            .clone()
            .map(|client| {
                let (doc, text) = &docs_of_clients[client];
                text.get_string(&doc.transact())
            })
            .collect();
        let reference = texts.first().cloned().unwrap_or_default();
        text_bytes += reference.len() as u64;
        if let Some((position, differing)) = texts
            .iter()
            .enumerate()
            .find(|(_, text)| **text != reference)
        {
            verification.texts_differ += 1;
            verification.problems.push(format!(
                "document {name}: client {}'s text differs from client {}'s ({} vs {} bytes)",
                members.start + position,
                members.start,
                differing.len(),
                reference.len()
            ));
        }
        let server_copy = read_server_copy(
            &url(document, per_doc),
            addr,
            common::source_ip(clients + document, sources),
            (clients + document) as u64 + CLIENT_ID_BASE,
        )
        .await;
        match server_copy {
            Ok(copy) if copy == reference => {}
            Ok(copy) => {
                verification.server_copy_differs += 1;
                verification.problems.push(format!(
                    "document {name}: the server's text differs from the clients' ({} vs {} bytes)",
                    copy.len(),
                    reference.len()
                ));
            }
            Err(err) => {
                verification.server_copy_differs += 1;
                verification.problems.push(format!(
                    "document {name}: could not read the server's copy: {err:#}"
                ));
            }
        }
        let sent_chunks: HashMap<usize, Vec<u64>> = members
            .clone()
            .map(|client| {
                let count = sent_by_client.get(&client).map_or(0, |o| o.sent);
                let log = read(&shared.logs[client]);
                let dues = log
                    .iter()
                    .take(usize::try_from(count).unwrap_or(usize::MAX))
                    .map(|chunk| chunk.due_us)
                    .collect();
                (client, dues)
            })
            .collect();
        let check = check_text(&reference, &sent_chunks, options.chunk_bytes);
        if !check.is_clean() {
            verification.problems.push(format!(
                "document {name}: {} of {} chunks missing, {} duplicated, {} unexpected pieces",
                check.missing, check.expected, check.duplicated, check.unexpected
            ));
        }
        verification.text.add(check);
        verification.docs_checked += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    close_all(sinks).await;

    let server_cpu_percent = server_all_connected.cpu_percent_until(&server_after_run, sampled);
    let per = |delta: Option<f64>, n: usize| delta.map(|d| d / n.max(1) as f64);
    let rss_delta = |from: &ProcessSample, to: &ProcessSample| -> Option<f64> {
        Some(to.rss_bytes? as f64 - from.rss_bytes? as f64)
    };
    let memory = DocsMemory {
        rss_per_loaded_doc_bytes: per(rss_delta(&server_before, &server_docs_loaded), options.docs),
        rss_per_further_connection_bytes: per(
            rss_delta(&server_docs_loaded, &server_all_connected),
            clients - options.docs,
        ),
        rss_per_doc_after_run_bytes: per(
            rss_delta(&server_before, &server_after_run),
            options.docs,
        ),
        text_bytes_per_doc: text_bytes as f64 / options.docs as f64,
        server_before,
        server_docs_loaded,
        server_all_connected,
        server_after_run,
    };
    let send_secs = last_send.unwrap_or_default().as_secs_f64();
    let elapsed_secs = last_delivery
        .max(last_send)
        .unwrap_or_default()
        .as_secs_f64();
    let steady_secs = usize::try_from(options.duration_secs).unwrap_or(usize::MAX);
    let fully_relayed = if verification.missing_deliveries == 0 {
        sent
    } else {
        deliveries / (per_doc as u64 - 1)
    };
    Ok(DocsResult {
        mode: if options.max { "max" } else { "rate" },
        latency_basis: if options.max {
            "actual send time (closed loop: no schedule to omit)"
        } else {
            "intended send time of the fixed schedule (coordinated-omission safe)"
        },
        docs: options.docs,
        clients_per_doc: per_doc,
        clients,
        rate_per_client: options.rate,
        offered_updates_per_sec: options.rate.map(|rate| rate * clients as f64),
        duration_secs: options.duration_secs,
        window: options.window,
        chunk_bytes: options.chunk_bytes,
        mean_chunk_bytes: chunk_bytes_sent as f64 / sent.max(1) as f64,
        source_ips: (0..sources)
            .filter_map(|i| common::source_ip(i, sources))
            .map(|ip| ip.to_string())
            .collect(),
        connect_latency: connect_latency.summary(),
        sent,
        deliveries,
        relayed_frames: frames,
        send_secs,
        elapsed_secs,
        sent_per_sec: sent as f64 / send_secs.max(1e-9),
        updates_per_sec: fully_relayed as f64 / elapsed_secs.max(1e-9),
        deliveries_per_sec: deliveries as f64 / elapsed_secs.max(1e-9),
        steady_sent_per_sec: sent_timeline.steady_median(steady_secs),
        steady_deliveries_per_sec: delivered_timeline.steady_median(steady_secs),
        window_waits,
        delivery_latency: latency.summary(),
        delivery_service_latency: service.summary(),
        timelines: DocsTimelines {
            sent: sent_timeline,
            delivered: delivered_timeline,
        },
        send_errors,
        receiver_problems,
        other_messages,
        verification,
        memory,
        server_cpu_percent,
        loadgen_cpu_percent: self_before.cpu_percent_until(&self_after, sampled),
        db_operations: match (db_before, db_after) {
            (Some(before), Some(after)) => probe::db_operations_between(&before, &after),
            _ => Vec::new(),
        },
    })
}

/// Registers an owner per document, creates the documents and asks for a
/// token per client (and one for the final check).
async fn setup(
    target: &Target,
    options: &DocsOptions,
    progress: &Progress,
) -> anyhow::Result<Vec<DocPlan>> {
    let prefix = common::run_prefix();
    let owners = common::create_accounts(
        target,
        &prefix,
        "o",
        &vec![1; options.docs],
        false,
        progress,
    )
    .await?;
    let tokens_each = options.clients_per_doc + 1;
    let bar = progress.bar(options.docs as u64, "creating documents");
    let plans = futures_util::stream::iter(owners.into_iter().enumerate())
        .map(|(index, mut devices)| {
            let bar = bar.clone();
            let prefix = &prefix;
            async move {
                let owner = devices.pop().context("an account without a device")?;
                let http = target.http_as(&owner);
                let name = format!("{prefix}-doc{index}");
                http.call(&DocCreate {
                    name: name.clone(),
                    channel_id: None,
                })
                .await
                .with_context(|| format!("doc/create {name}"))?;
                let mut tokens = Vec::with_capacity(tokens_each);
                for _ in 0..tokens_each {
                    let grant = http
                        .call(&DocToken {
                            name: name.clone(),
                            scope: DocScope::ReadWrite,
                        })
                        .await
                        .with_context(|| format!("doc/token {name}"))?;
                    tokens.push(grant.token);
                }
                bar.inc(1);
                anyhow::Ok(DocPlan { name, tokens })
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    plans.into_iter().collect()
}

/// Connects and syncs `clients` (`connect_concurrency` at a time), in the
/// order given.
async fn connect_all(
    clients: &[usize],
    url: impl Fn(usize) -> String,
    addr: SocketAddr,
    sources: usize,
    concurrency: usize,
    bar: indicatif::ProgressBar,
    latency: &mut Latency,
) -> anyhow::Result<Vec<Editor>> {
    let attempts = futures_util::stream::iter(clients.iter().copied())
        .map(|client| {
            let url = url(client);
            let bar = bar.clone();
            async move {
                let begun = Instant::now();
                let editor = connect_editor(
                    &url,
                    addr,
                    common::source_ip(client, sources),
                    client as u64 + CLIENT_ID_BASE,
                )
                .await
                .with_context(|| format!("connecting client {client}"))?;
                bar.inc(1);
                anyhow::Ok((begun.elapsed(), editor))
            }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    let mut editors = Vec::with_capacity(clients.len());
    for attempt in attempts {
        let (took, editor) = attempt?;
        latency.record(took);
        editors.push(editor);
    }
    Ok(editors)
}

/// A client with Yjs client id `client_id`, connected to `url` and synced.
async fn connect_editor(
    url: &str,
    addr: SocketAddr,
    local: Option<IpAddr>,
    client_id: u64,
) -> anyhow::Result<Editor> {
    let doc = Doc::with_client_id(client_id);
    let text = doc.get_or_insert_text(TEXT_NAME);
    let connecting = async {
        let mut socket = open_socket(url, addr, local).await?;
        handshake(&mut socket, &doc).await?;
        anyhow::Ok(socket)
    };
    let socket = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("not connected and synced within {HANDSHAKE_TIMEOUT:?}"))??;
    Ok(Editor { doc, text, socket })
}

/// Opens the WebSocket to `addr` (from `local` when given) and upgrades
/// it at `url`.
async fn open_socket(url: &str, addr: SocketAddr, local: Option<IpAddr>) -> anyhow::Result<Socket> {
    let stream = match local {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding to {ip}"))?;
            socket.connect(addr).await
        }
    }
    .with_context(|| format!("connecting to {addr}"))?;
    // Small messages: Nagle's algorithm would only add latency.
    stream.set_nodelay(true)?;
    match tokio_tungstenite::client_async(url, stream).await {
        Ok((socket, _response)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => anyhow::bail!(
            "the server refused the WebSocket: {} {}",
            response.status(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
        ),
        Err(err) => Err(anyhow::anyhow!("opening the WebSocket: {err}")),
    }
}

/// The y-websocket sync exchange: sends sync step 1, answers the server's
/// step 1 with step 2, and returns once the server's step 2 is applied.
async fn handshake(socket: &mut Socket, doc: &Doc) -> anyhow::Result<()> {
    let step1 = Message::Sync(SyncMessage::SyncStep1(doc.transact().state_vector())).encode_v1();
    socket
        .send(WsMessage::Binary(step1.into()))
        .await
        .context("sending sync step 1")?;
    loop {
        let message = socket
            .next()
            .await
            .context("the server closed the connection during the sync exchange")?
            .context("reading the sync exchange")?;
        let bytes = match message {
            WsMessage::Binary(bytes) => bytes,
            WsMessage::Close(frame) => anyhow::bail!(
                "the server closed the connection: {}",
                describe_close(frame.as_ref())
            ),
            _ => continue,
        };
        let mut synced = false;
        let mut replies = Vec::new();
        let mut decoder = DecoderV1::from(bytes.as_ref());
        for message in MessageReader::new(&mut decoder) {
            match message.context("an undecodable message from the server")? {
                Message::Sync(SyncMessage::SyncStep1(sv)) => replies.push(step2(doc, &sv)),
                Message::Sync(SyncMessage::SyncStep2(update)) => {
                    apply(doc, &update).map_err(anyhow::Error::msg)?;
                    synced = true;
                }
                Message::Sync(SyncMessage::Update(update)) => {
                    apply(doc, &update).map_err(anyhow::Error::msg)?;
                }
                Message::Auth(Some(reason)) => anyhow::bail!("permission denied: {reason}"),
                _ => {}
            }
        }
        for reply in replies {
            socket
                .send(WsMessage::Binary(reply.into()))
                .await
                .context("sending sync step 2")?;
        }
        if synced {
            return Ok(());
        }
    }
}

/// Sync step 2: what `doc` has that a peer with state vector `sv` lacks.
fn step2(doc: &Doc, sv: &yrs::StateVector) -> Vec<u8> {
    Message::Sync(SyncMessage::SyncStep2(doc.transact().encode_diff_v1(sv))).encode_v1()
}

/// Applies a v1 update to `doc`; returns the ids it inserts: (Yjs client
/// id, clock range).
fn apply(doc: &Doc, bytes: &[u8]) -> Result<Vec<(u64, std::ops::Range<u32>)>, String> {
    let update =
        Update::decode_v1(bytes).map_err(|err| format!("an update does not decode: {err}"))?;
    let insertions = update.insertions(false);
    let inserted = insertions
        .iter()
        .flat_map(|(client, ranges)| ranges.iter().map(|range| (client.get(), range.clone())))
        .collect();
    doc.transact_mut()
        .apply_update(update)
        .map_err(|err| format!("an update does not apply: {err}"))?;
    Ok(inserted)
}

/// Where the chunk an update of client `client_id` inserts starts in its
/// clock.
fn own_clock(update: &[u8], client_id: u64) -> Option<u32> {
    let update = Update::decode_v1(update).ok()?;
    let insertions = update.insertions(false);
    insertions
        .iter()
        .find(|(client, _)| client.get() == client_id)
        .and_then(|(_, ranges)| ranges.iter().next().map(|range| range.start))
}

fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame) => format!("{} {}", u16::from(frame.code), frame.reason),
        None => "without a close frame".to_owned(),
    }
}

/// What a sending task works with.
struct SendingClient {
    doc: Doc,
    text: TextRef,
    sink: Arc<tokio::sync::Mutex<Sink>>,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One client's edits: appends a chunk to the text on its schedule (within
/// its window) and sends the update; says how many it sent when done.
async fn send_all(
    shared: Arc<Shared>,
    me: usize,
    client: SendingClient,
    schedule: Schedule,
    chunk_bytes: usize,
    done: watch::Sender<Option<u64>>,
) -> (usize, SenderOutcome) {
    let mut out = SenderOutcome::default();
    let start = shared.start;
    let client_id = me as u64 + CLIENT_ID_BASE;
    let window = &shared.windows[me];
    let mut seq = 0_u64;
    loop {
        let due = match schedule {
            Schedule::Rate { rate, phase, count } => {
                if seq >= count {
                    break;
                }
                let due = start + Duration::from_secs_f64((seq as f64 + phase) / rate);
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            Schedule::Max { end } => {
                if seq == 0 {
                    tokio::time::sleep_until(start.into()).await;
                }
                if Instant::now() >= end {
                    break;
                }
                None
            }
        };
        match window.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(_) => {
                out.window_waits += 1;
                match tokio::time::timeout(WINDOW_TIMEOUT, window.acquire()).await {
                    Ok(Ok(permit)) => permit.forget(),
                    _ => {
                        out.errors.push(format!(
                            "client {me}: its updates stopped reaching the next client of its \
                             document (window full for {WINDOW_TIMEOUT:?})"
                        ));
                        break;
                    }
                }
            }
        }
        // With --max an update is due when its window lets it go.
        let due = due.unwrap_or_else(Instant::now);
        let due_us = micros(due.saturating_duration_since(start));
        let chunk = chunk_text(me, seq, due_us, chunk_bytes);
        let update = {
            let mut txn = client.doc.transact_mut();
            client.text.push(&mut txn, &chunk);
            txn.encode_update_v1()
        };
        let Some(clock) = own_clock(&update, client_id) else {
            out.errors.push(format!(
                "client {me}: update {seq} inserts nothing of its own"
            ));
            break;
        };
        let frame = Message::Sync(SyncMessage::Update(update)).encode_v1();
        let left = Instant::now();
        write(&shared.logs[me]).push(SentChunk {
            clock,
            due,
            due_us,
            left,
        });
        let sending = client
            .sink
            .lock()
            .await
            .send(WsMessage::Binary(frame.into()))
            .await;
        if let Err(err) = sending {
            out.errors
                .push(format!("client {me}: sending update {seq}: {err}"));
            break;
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
        out.sent += 1;
        out.chunk_bytes += chunk.len() as u64;
        let at = left.saturating_duration_since(start);
        out.timeline.add(at);
        out.last_send = Some(at);
        seq += 1;
    }
    let _ = done.send(Some(out.sent));
    (me, out)
}

/// What a receiving task listens for.
struct Listening {
    me: usize,
    /// The client whose window this one refills (the one before it in its
    /// document).
    refills: usize,
    /// The other clients of its document.
    peers: Vec<usize>,
    /// Their final counts of updates sent.
    peers_done: Vec<watch::Receiver<Option<u64>>>,
}

/// Waits until every other client of the document has sent its last
/// update; returns how many they sent in total (`None` when one ended
/// without saying).
async fn sent_by_all(peers: Vec<watch::Receiver<Option<u64>>>) -> Option<u64> {
    let mut total = 0;
    for mut peer in peers {
        let _ = peer.wait_for(Option::is_some).await;
        let sent = *peer.borrow();
        total += sent?;
    }
    Some(total)
}

/// One client's receiving side: applies every relayed update, records its
/// latency, answers sync step 1; runs until every other client's updates
/// are here (or the drain time is up), and a quiet period more.
async fn receive_all(
    shared: Arc<Shared>,
    listening: Listening,
    doc: Doc,
    mut stream: Stream,
    sink: Arc<tokio::sync::Mutex<Sink>>,
    drain: Duration,
) -> (usize, ReceiverOutcome) {
    let me = listening.me;
    let mut out = ReceiverOutcome::default();
    let receiver = Receiver {
        shared: &shared,
        me,
        refills: listening.refills,
        peers: listening.peers.iter().copied().collect(),
        doc: &doc,
        sink: &sink,
    };
    let wanted = {
        let mut all_done = std::pin::pin!(sent_by_all(listening.peers_done));
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        if let Err(why) = receiver.take(message, &mut out).await {
                            break Err(why);
                        }
                    }
                    Some(Err(err)) => break Err(format!("reading: {err}")),
                    None => break Err("the connection closed".to_owned()),
                },
                total = &mut all_done => {
                    break total.ok_or_else(|| "another client of its document vanished".to_owned());
                }
            }
        }
    };
    let wanted = match wanted {
        Ok(wanted) => wanted,
        Err(why) => {
            out.problems.push(format!("client {me}: {why}"));
            return (me, out);
        }
    };
    // The drain time counts from the last progress: an overloaded server
    // still relaying its backlog is slow, not lossy.
    let mut deadline = Instant::now() + drain;
    let mut had = out.received.len();
    loop {
        let complete = out.received.len() as u64 >= wanted;
        if out.received.len() > had {
            had = out.received.len();
            deadline = Instant::now() + drain;
        }
        let wait = if complete {
            QUIET_PERIOD
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(Ok(message))) => {
                if let Err(why) = receiver.take(message, &mut out).await {
                    out.problems.push(format!("client {me}: {why}"));
                    break;
                }
            }
            Ok(Some(Err(err))) => {
                out.problems.push(format!("client {me}: reading: {err}"));
                break;
            }
            Ok(None) => {
                out.problems
                    .push(format!("client {me}: the connection closed"));
                break;
            }
            Err(_) if complete => break,
            Err(_) => {
                out.problems.push(format!(
                    "client {me}: gave up after {drain:?} without a new update ({} of {wanted} received)",
                    out.received.len()
                ));
                break;
            }
        }
    }
    (me, out)
}

/// What handling one incoming message needs.
struct Receiver<'a> {
    shared: &'a Shared,
    me: usize,
    refills: usize,
    peers: HashSet<usize>,
    doc: &'a Doc,
    sink: &'a tokio::sync::Mutex<Sink>,
}

impl Receiver<'_> {
    /// Handles one WebSocket message; `Err` when the connection is over.
    async fn take(&self, message: WsMessage, out: &mut ReceiverOutcome) -> Result<(), String> {
        let arrived = Instant::now();
        let bytes = match message {
            WsMessage::Binary(bytes) => bytes,
            WsMessage::Close(frame) => {
                return Err(format!(
                    "closed by the server: {}",
                    describe_close(frame.as_ref())
                ));
            }
            WsMessage::Text(_) => {
                out.other_messages += 1;
                return Ok(());
            }
            _ => return Ok(()),
        };
        let mut replies = Vec::new();
        let mut decoder = DecoderV1::from(bytes.as_ref());
        for message in MessageReader::new(&mut decoder) {
            match message {
                Ok(Message::Sync(SyncMessage::Update(update))) => {
                    out.frames += 1;
                    match apply(self.doc, &update) {
                        Ok(inserted) => self.delivered(&inserted, arrived, out),
                        Err(why) => out.problems.push(format!("client {}: {why}", self.me)),
                    }
                }
                Ok(Message::Sync(SyncMessage::SyncStep2(update))) => {
                    out.other_messages += 1;
                    if let Err(why) = apply(self.doc, &update) {
                        out.problems.push(format!("client {}: {why}", self.me));
                    }
                }
                Ok(Message::Sync(SyncMessage::SyncStep1(sv))) => {
                    out.other_messages += 1;
                    replies.push(step2(self.doc, &sv));
                }
                Ok(Message::Auth(Some(reason))) => {
                    return Err(format!("permission denied: {reason}"));
                }
                Ok(_) => out.other_messages += 1,
                Err(err) => {
                    out.problems.push(format!(
                        "client {}: an undecodable message from the server: {err}",
                        self.me
                    ));
                    break;
                }
            }
        }
        for reply in replies {
            self.sink
                .lock()
                .await
                .send(WsMessage::Binary(reply.into()))
                .await
                .map_err(|err| format!("answering sync step 1: {err}"))?;
        }
        Ok(())
    }

    /// Records the chunks an update inserted, by the senders' tables.
    fn delivered(
        &self,
        inserted: &[(u64, std::ops::Range<u32>)],
        arrived: Instant,
        out: &mut ReceiverOutcome,
    ) {
        let start = self.shared.start;
        for (client_id, range) in inserted {
            let sender = client_id
                .checked_sub(CLIENT_ID_BASE)
                .and_then(|c| usize::try_from(c).ok())
                .filter(|c| self.peers.contains(c));
            let Some(sender) = sender else {
                out.unexpected += 1;
                continue;
            };
            let mut refill = 0;
            let mut any = false;
            {
                let log = read(&self.shared.logs[sender]);
                let first = log.partition_point(|chunk| chunk.clock < range.start);
                for (seq, chunk) in log
                    .iter()
                    .enumerate()
                    .skip(first)
                    .take_while(|(_, chunk)| chunk.clock < range.end)
                {
                    any = true;
                    if !out.received.insert((sender, seq as u64)) {
                        out.duplicates += 1;
                        continue;
                    }
                    out.latency
                        .record(arrived.saturating_duration_since(chunk.due));
                    out.service
                        .record(arrived.saturating_duration_since(chunk.left));
                    let at = arrived.saturating_duration_since(start);
                    out.timeline.add(at);
                    out.last_delivery = out.last_delivery.max(Some(at));
                    self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                    if sender == self.refills {
                        refill += 1;
                    }
                }
            }
            if refill > 0 {
                self.shared.windows[sender].add_permits(refill);
            }
            if !any {
                out.unexpected += 1;
            }
        }
    }
}

/// The document's text as the server holds it, read by a fresh client.
async fn read_server_copy(
    url: &str,
    addr: SocketAddr,
    local: Option<IpAddr>,
    client_id: u64,
) -> anyhow::Result<String> {
    let mut editor = connect_editor(url, addr, local, client_id).await?;
    let text = editor.text.get_string(&editor.doc.transact());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, editor.socket.close(None)).await;
    Ok(text)
}

/// Closes every client's connection (a normal close frame each).
async fn close_all(sinks: Vec<Arc<tokio::sync::Mutex<Sink>>>) {
    futures_util::stream::iter(sinks)
        .for_each_concurrent(SETUP_CONCURRENCY * 8, |sink| async move {
            let mut sink = sink.lock().await;
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "done".into(),
            };
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, sink.send(WsMessage::Close(Some(frame)))).await;
        })
        .await;
}

async fn show_progress(
    progress: Progress,
    shared: Arc<Shared>,
    duration_secs: u64,
    scheduled: Option<u64>,
) {
    let bar = progress.bar(duration_secs, "editing");
    let started = Instant::now();
    loop {
        tokio::time::sleep(common::PROGRESS_TICK).await;
        bar.set_position(started.elapsed().as_secs().min(duration_secs));
        let of = scheduled.map_or_else(String::new, |n| format!("/{}", thousands(n)));
        bar.set_message(format!(
            "sent {}{of} delivered {}",
            thousands(shared.sent.load(Ordering::Relaxed)),
            thousands(shared.delivered.load(Ordering::Relaxed))
        ));
    }
}

impl Outcome for DocsResult {
    fn scenario(&self) -> &'static str {
        "docs"
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let v = &self.verification;
        let mut count = |n: u64, what: String| {
            if n > 0 {
                failures.push(format!("{n} {what}"));
            }
        };
        count(
            v.texts_differ as u64,
            "documents whose clients' texts differ".to_owned(),
        );
        count(
            v.server_copy_differs as u64,
            "documents whose text on the server differs from the clients'".to_owned(),
        );
        count(
            v.text.missing,
            format!(
                "of {} sent chunks are missing from the final texts (LOST)",
                v.text.expected
            ),
        );
        count(
            v.text.duplicated,
            "chunks appear more than once in the final texts".to_owned(),
        );
        count(
            v.text.unexpected,
            "pieces of the final texts are no chunk that was sent".to_owned(),
        );
        count(
            v.missing_deliveries,
            format!(
                "of {} deliveries (updates x other clients) never arrived (LOST)",
                v.expected_deliveries
            ),
        );
        count(
            v.duplicate_deliveries,
            "updates arrived more than once at the same client".to_owned(),
        );
        count(
            v.unexpected_deliveries,
            "received updates were no other client's chunk".to_owned(),
        );
        if !self.send_errors.is_empty() {
            failures.push(self.send_errors.describe("sends failed"));
        }
        if !self.receiver_problems.is_empty() {
            failures.push(self.receiver_problems.describe("client problems"));
        }
        for problem in &v.problems.first {
            failures.push(problem.clone());
        }
        if self.sent == 0 {
            failures.push("no update was sent".to_owned());
        }
        failures
    }

    fn table(&self) -> Vec<(String, String)> {
        let pct = |value: Option<f64>| value.map_or("n/a".to_owned(), |p| format!("{p:.0} %"));
        let size = |value: Option<f64>| value.map_or("n/a".to_owned(), bytes);
        let rss = |sample: &ProcessSample| {
            sample
                .rss_bytes
                .map_or("n/a".to_owned(), |b| bytes(b as f64))
        };
        let m = &self.memory;
        let v = &self.verification;
        let mode = match self.rate_per_client {
            Some(rate) => format!(
                "rate {rate} updates/s per client ({} offered in total)",
                self.offered_updates_per_sec.unwrap_or_default()
            ),
            None => format!("max (window {} per client)", self.window),
        };
        let steady = |median: Option<u64>| {
            median.map_or_else(String::new, |m| format!("; steady median {m}/s"))
        };
        let mut rows = vec![
            ("mode".to_owned(), mode),
            (
                "documents x clients".to_owned(),
                format!(
                    "{} x {} ({} y-websocket connections; {:.0}-byte chunks)",
                    self.docs, self.clients_per_doc, self.clients, self.mean_chunk_bytes
                ),
            ),
            (
                "sent / delivered (expected)".to_owned(),
                format!(
                    "{} / {} ({})",
                    thousands(self.sent),
                    thousands(self.deliveries),
                    thousands(v.expected_deliveries)
                ),
            ),
            (
                "updates sent/s".to_owned(),
                format!(
                    "{:.0} (over {:.1} s){}",
                    self.sent_per_sec,
                    self.send_secs,
                    steady(self.steady_sent_per_sec)
                ),
            ),
            (
                "updates stored+relayed/s".to_owned(),
                format!(
                    "{:.0} (over {:.1} s)",
                    self.updates_per_sec, self.elapsed_secs
                ),
            ),
            (
                "deliveries/s".to_owned(),
                format!(
                    "{:.0}{}",
                    self.deliveries_per_sec,
                    steady(self.steady_deliveries_per_sec)
                ),
            ),
            (
                "send->delivery p50/p99/p99.9/max".to_owned(),
                self.delivery_latency.cell(),
            ),
            (
                "send->delivery (from actual send)".to_owned(),
                self.delivery_service_latency.cell(),
            ),
            (
                "latency measured from".to_owned(),
                self.latency_basis.to_owned(),
            ),
            ("window waits".to_owned(), thousands(self.window_waits)),
            (
                "server RSS before/loaded/connected/after".to_owned(),
                format!(
                    "{} / {} / {} / {}",
                    rss(&m.server_before),
                    rss(&m.server_docs_loaded),
                    rss(&m.server_all_connected),
                    rss(&m.server_after_run)
                ),
            ),
            (
                "RSS per loaded document".to_owned(),
                format!(
                    "{} (empty, with its first connection); {} per further connection",
                    size(m.rss_per_loaded_doc_bytes),
                    size(m.rss_per_further_connection_bytes)
                ),
            ),
            (
                "RSS per document after the run".to_owned(),
                format!(
                    "{} (text {} each, all connections)",
                    size(m.rss_per_doc_after_run_bytes),
                    bytes(m.text_bytes_per_doc)
                ),
            ),
            (
                "CPU server / load generator".to_owned(),
                format!(
                    "{} / {} of one core",
                    pct(self.server_cpu_percent),
                    pct(self.loadgen_cpu_percent)
                ),
            ),
        ];
        if let Some(top) = self.db_operations.first() {
            rows.push((
                "server database (most time)".to_owned(),
                format!(
                    "{}: {} calls, mean {:.2} ms, {:.1} s in all",
                    top.op,
                    thousands(top.count),
                    top.mean_ms(),
                    top.total_secs
                ),
            ));
        }
        rows.push((
            "verified".to_owned(),
            format!(
                "{} documents: texts identical {}/{}, server copy identical {}/{}; \
                 chunks missing/dup/unexpected {}/{}/{}; deliveries missing/dup {}/{}",
                v.docs_checked,
                v.docs_checked - v.texts_differ,
                v.docs_checked,
                v.docs_checked - v.server_copy_differs,
                v.docs_checked,
                v.text.missing,
                v.text.duplicated,
                v.text.unexpected,
                v.missing_deliveries,
                v.duplicate_deliveries
            ),
        ));
        rows
    }

    fn charts(&self) -> Vec<(&'static str, String)> {
        let mode = match self.rate_per_client {
            Some(rate) => format!("{rate} updates/s per client"),
            None => "max rate".to_owned(),
        };
        let shape = format!("{} docs x {} clients", self.docs, self.clients_per_doc);
        let points = |summary: &LatencySummary| -> Vec<f64> {
            summary.points().into_iter().map(|(_, v)| v).collect()
        };
        let categories: Vec<&str> = self
            .delivery_latency
            .points()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let latency = chart::log_bars(
            &format!(
                "document update latency, {shape}, {mode}, {} s",
                self.duration_secs
            ),
            "ms",
            &categories,
            &[
                Series::new("send->delivery", points(&self.delivery_latency)),
                Series::new("from actual send", points(&self.delivery_service_latency)),
            ],
        );
        let as_f64 = |t: &Timeline| t.buckets().iter().map(|&n| n as f64).collect::<Vec<_>>();
        let others = self.clients_per_doc.saturating_sub(1).max(1);
        let delivered: Vec<f64> = as_f64(&self.timelines.delivered)
            .into_iter()
            .map(|n| n / others as f64)
            .collect();
        let throughput = chart::lines(
            &format!("document updates per second, {shape}, {mode}"),
            "seconds since start",
            "updates per second",
            &[
                Series::new("sent", as_f64(&self.timelines.sent)),
                Series::new(format!("delivered / {others} other clients"), delivered),
            ],
        );
        vec![("latency", latency), ("throughput", throughput)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_pad() {
        let chunk = chunk_text(12, 345, 6_789, 32);
        assert_eq!(chunk.len(), 32);
        assert!(
            chunk.starts_with("12:345:6789.") && chunk.ends_with(".;"),
            "{chunk}"
        );
        let record = chunk.strip_suffix(';').expect("ends with ;");
        assert_eq!(parse_chunk(record), Some((12, 345, 6_789)));
        // A header longer than asked for is kept whole.
        assert_eq!(chunk_text(1, 2, 3, 2), "1:2:3;");
        assert_eq!(parse_chunk("1:2"), None);
        assert_eq!(parse_chunk("1:2:3:4"), None);
        assert_eq!(parse_chunk("x:2:3"), None);
    }

    #[test]
    fn texts_are_checked_chunk_by_chunk() {
        let sent: HashMap<usize, Vec<u64>> = [(0, vec![10, 20]), (1, vec![15])].into();
        let chunk = |client, seq, due| chunk_text(client, seq, due, 16);
        let good = [chunk(0, 0, 10), chunk(1, 0, 15), chunk(0, 1, 20)].concat();
        let check = check_text(&good, &sent, 16);
        assert!(check.is_clean(), "{check:?}");
        assert_eq!((check.expected, check.found), (3, 3));

        // One lost, one twice, one stranger, one altered, a torn tail.
        let bad = [
            chunk(0, 0, 10),
            chunk(0, 0, 10),
            chunk(2, 0, 10),
            chunk(1, 0, 16),
            "0:1".to_owned(),
        ]
        .concat();
        let check = check_text(&bad, &sent, 16);
        assert_eq!(check.found, 1);
        assert_eq!(check.missing, 2);
        assert_eq!(check.duplicated, 1);
        assert_eq!(check.unexpected, 3);
        // Padding that changed length is not the chunk that was sent.
        let stretched = chunk(1, 0, 15).replacen('.', "..", 1);
        assert_eq!(check_text(&stretched, &sent, 16).unexpected, 1);
        assert_eq!(check_text("", &sent, 16).missing, 3);
    }

    #[test]
    fn the_document_endpoint_is_derived_from_the_server_url() {
        let (ws, authority) = collab_base("http://127.0.0.1:8080").expect("an http URL");
        assert_eq!(ws, "ws://127.0.0.1:8080");
        assert_eq!(authority, "127.0.0.1:8080");
        let (_, authority) = collab_base("http://example.test").expect("an http URL");
        assert_eq!(authority, "example.test:80");
        assert!(collab_base("https://example.test").is_err());
    }

    #[test]
    fn options_are_checked() {
        let options = |docs, clients_per_doc, rate: Option<f64>, max| DocsOptions {
            docs,
            clients_per_doc,
            rate,
            max,
            duration_secs: 2,
            chunk_bytes: 32,
            window: 4,
            drain_secs: 1,
            connect_concurrency: 4,
            source_ips: 0,
        };
        assert_eq!(
            options(2, 3, Some(10.0), false).check().ok(),
            Some(Some(20))
        );
        assert_eq!(options(2, 3, None, true).check().ok(), Some(None));
        assert_eq!(options(2, 3, None, true).clients(), 6);
        assert!(options(0, 3, None, true).check().is_err());
        assert!(options(2, 1, None, true).check().is_err());
        assert!(options(2, 3, None, false).check().is_err());
        assert!(options(2, 3, Some(1.0), true).check().is_err());
        assert!(
            options(2, 3, Some(0.1), false).check().is_err(),
            "no update"
        );
    }

    /// Two clients sync through each other's messages the way they do
    /// through the server, and the receiving side finds the chunk by the
    /// update's ids.
    #[test]
    fn an_update_names_the_chunk_it_inserts() {
        let a = Doc::with_client_id(CLIENT_ID_BASE + 3);
        let text = a.get_or_insert_text(TEXT_NAME);
        let first = {
            let mut txn = a.transact_mut();
            text.push(&mut txn, &chunk_text(3, 0, 1, 16));
            txn.encode_update_v1()
        };
        let second = {
            let mut txn = a.transact_mut();
            text.push(&mut txn, &chunk_text(3, 1, 2, 16));
            txn.encode_update_v1()
        };
        assert_eq!(own_clock(&first, CLIENT_ID_BASE + 3), Some(0));
        assert_eq!(own_clock(&second, CLIENT_ID_BASE + 3), Some(16));
        let b = Doc::with_client_id(CLIENT_ID_BASE + 4);
        assert_eq!(apply(&b, &first), Ok(vec![(CLIENT_ID_BASE + 3, 0..16)]));
        assert_eq!(apply(&b, &second), Ok(vec![(CLIENT_ID_BASE + 3, 16..32)]));
        let b_text = b.get_or_insert_text(TEXT_NAME);
        assert_eq!(
            b_text.get_string(&b.transact()),
            text.get_string(&a.transact())
        );
        assert!(apply(&b, b"\xff").is_err());
    }
}

//! A long editing session through the server, with real Yjs clients
//! (`tests/node/trace.mjs`: stock y-websocket providers on yjs).
//!
//! The trace has the size of crdt-benchmarks' "B4" (182,315 single-character
//! edits of one text, about 100,000 characters at the end); the recording is
//! not available offline, so a seeded generator types at a cursor that
//! sometimes jumps, with runs of backspaces and deletions elsewhere. The
//! expected text is the trace applied to a plain buffer, not through Yjs.
//!
//! One client replays the trace (the first 2,000 edits one update each, the
//! rest in transactions of a few hundred, as a busy editor batches them); a
//! second, connected throughout, must end with exactly the expected text,
//! and so must a client joining while the document is open and another
//! joining after everyone left (the document reloaded from storage). A lost
//! or reordered update leaves the reader with a gap (Yjs holds what follows
//! as pending) or with the wrong text; a reconnect, which would resync and
//! hide the loss, fails the test too.
//!
//! Without node or npm the test prints a notice and passes, except under CI
//! (`CI=true`), where it fails.

mod support;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use conclave_client::api::documents::DocScope;
use serde_json::{Value, json};
use support::collab::CollabEnv;
use support::node::{NODE_DIR, node_ready};

/// The trace: B4's edit count; the seed picks one session of that size.
const SEED: u32 = 4;
const OPS: u64 = 182_315;
/// Edits replayed one transaction (one update message) each, keystroke by
/// keystroke, before the rest go in batches.
const SINGLE_OPS: u64 = 2_000;
const BATCH_OPS: u64 = 300;
/// Transactions the writer may be ahead of what the reader has received:
/// keeps the server's backlog, and so its echo of the writer's awareness,
/// well inside y-websocket's 30 s silence limit.
const WINDOW: u64 = 64;

/// How long the reader may take to hold the whole text after the replay,
/// and how long a step (sync, the reader's progress) may stall. A debug
/// build on a busy 2-core machine needs seconds, not minutes.
const TEXT_TIMEOUT: Duration = Duration::from_secs(120);
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `node trace.mjs` may run before the test kills it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the server may take to unload the document once its last
/// client has gone (a snapshot of the whole document).
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The room's debug lines, and documents unloaded a second after their
/// last editor leaves.
const LOG_ROOMS: &str = "[log]\nlevel = \"info,conclave_server::collab=debug\"\n\
                         [documents]\nunload_after_idle_secs = 1\n";

// ---------------------------------------------------------------------------
// Node

/// What one `node trace.mjs OPTIONS` run reported: its result line, and
/// its stderr (progress) for failure messages.
struct Run {
    result: Value,
    stderr: String,
}

impl Run {
    /// `result[pointer]`, or a failure naming what the run printed.
    fn get(&self, pointer: &str) -> &Value {
        self.result
            .pointer(pointer)
            .unwrap_or_else(|| panic!("no {pointer} in the result{}", self.diagnosis()))
    }

    fn u64(&self, pointer: &str) -> u64 {
        self.get(pointer)
            .as_u64()
            .unwrap_or_else(|| panic!("{pointer} is not a number{}", self.diagnosis()))
    }

    fn str(&self, pointer: &str) -> &str {
        self.get(pointer)
            .as_str()
            .unwrap_or_else(|| panic!("{pointer} is not a string{}", self.diagnosis()))
    }

    /// Asserts that `client` (a result key) holds exactly the expected
    /// text, by length, hash and the script's own comparison.
    fn assert_exact(&self, client: &str, expected_len: u64, expected_sha: &str) {
        let read = self.get(&format!("/{client}"));
        assert!(
            read["equal"] == json!(true)
                && read["length"] == json!(expected_len)
                && read["sha256"] == json!(expected_sha),
            "{client} does not hold the expected text ({expected_len} code units, sha256 \
             {expected_sha}): {read}{}",
            self.diagnosis()
        );
    }

    /// Asserts that no provider's connection closed: a reconnect resyncs
    /// both ways and would repair a lost update unseen.
    fn assert_no_reconnect(&self) {
        let closes = self.get("/closes");
        let any = closes
            .as_object()
            .is_none_or(|clients| clients.values().any(|list| list != &json!([])));
        assert!(
            !any,
            "a connection closed during the run: {closes}{}",
            self.diagnosis()
        );
    }

    fn diagnosis(&self) -> String {
        format!("\nresult: {}\nstderr:\n{}", self.result, self.stderr)
    }
}

/// Runs `node trace.mjs OPTIONS` to the end (killing it after
/// `SCRIPT_TIMEOUT`) and parses its result line.
fn run_trace(options: &Value) -> Run {
    let mut child = Command::new("node")
        .arg("trace.mjs")
        .arg(options.to_string())
        .current_dir(NODE_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    // Both pipes are drained while the script runs, so it never blocks on
    // a full one.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for node") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stdout = stdout.join().expect("the stdout reader");
    let stderr = stderr.join().expect("the stderr reader");
    let result = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|line| line.get("result").cloned());
    let run = Run {
        result: result.unwrap_or(Value::Null),
        stderr,
    };
    assert!(
        status.is_some(),
        "trace.mjs ran longer than {SCRIPT_TIMEOUT:?}{}\nstdout:\n{stdout}",
        run.diagnosis()
    );
    assert!(
        run.result.get("error").is_none(),
        "trace.mjs failed{}",
        run.diagnosis()
    );
    assert!(
        run.result.is_object(),
        "trace.mjs printed no result ({status:?}){}\nstdout:\n{stdout}",
        run.diagnosis()
    );
    run
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

// ---------------------------------------------------------------------------
// Scenario

#[test]
fn a_long_editing_trace_arrives_exactly() {
    if !node_ready() {
        return;
    }
    let rt = runtime();
    // The room's debug lines say when the document is loaded and unloaded.
    let env = CollabEnv::start(LOG_ROOMS);
    let alice = rt.block_on(env.register("alice"));
    rt.block_on(env.create_doc(&alice, "trace", None));
    // Three of alice's devices: the writer's editor, one open beside it,
    // and one opening the finished document read-only.
    let writer_token = rt.block_on(env.token(&alice, "trace", DocScope::ReadWrite));
    let reader_token = rt.block_on(env.token(&alice, "trace", DocScope::ReadWrite));
    let late_token = rt.block_on(env.token(&alice, "trace", DocScope::ReadOnly));

    let started = Instant::now();
    let replay = run_trace(&json!({
        "mode": "replay",
        "url": env.collab_url(),
        "room": "trace",
        "writer_token": writer_token,
        "reader_token": reader_token,
        "seed": SEED,
        "ops": OPS,
        "single_ops": SINGLE_OPS,
        "batch_ops": BATCH_OPS,
        "window": WINDOW,
        "timeout_ms": millis(TEXT_TIMEOUT),
        "stall_ms": millis(STALL_TIMEOUT),
    }));
    let replay_took = started.elapsed();

    // The trace is what the test claims: B4's size, typed mostly forward.
    assert_eq!(replay.u64("/ops"), OPS, "{}", replay.diagnosis());
    assert_eq!(replay.u64("/single_ops"), SINGLE_OPS);
    let deletes = replay.u64("/deletes");
    let expected_len = replay.u64("/expected_length");
    assert!(
        (30_000..60_000).contains(&deletes) && (80_000..120_000).contains(&expected_len),
        "a B4-sized session: {deletes} deletions, {expected_len} code units at the end"
    );
    assert_eq!(
        OPS - 2 * deletes,
        expected_len,
        "every insertion adds one code unit and every deletion removes one"
    );
    assert!(
        replay.u64("/transactions") >= SINGLE_OPS + (OPS - SINGLE_OPS) / BATCH_OPS,
        "the edits went as separate updates{}",
        replay.diagnosis()
    );
    let expected_sha = replay.str("/expected_sha256").to_owned();

    assert_eq!(
        replay.get("/writer_equal"),
        &json!(true),
        "the writer's own Y.Text is the plain replay{}",
        replay.diagnosis()
    );
    replay.assert_exact("reader", expected_len, &expected_sha);
    replay.assert_exact("late_open", expected_len, &expected_sha);
    replay.assert_no_reconnect();

    // Everyone has left: the document is snapshotted and unloaded, and a
    // new client loads it from storage.
    env.server.wait_for_log("document unloaded", UNLOAD_TIMEOUT);
    let read = run_trace(&json!({
        "mode": "read",
        "url": env.collab_url(),
        "room": "trace",
        "token": late_token,
        "seed": SEED,
        "ops": OPS,
        "timeout_ms": millis(TEXT_TIMEOUT),
    }));
    assert_eq!(
        read.str("/expected_sha256"),
        expected_sha,
        "both runs generated the same trace"
    );
    read.assert_exact("late", expected_len, &expected_sha);
    read.assert_no_reconnect();
    let loads = env
        .server
        .count_logs("document loaded", 2, Duration::from_secs(5));
    assert_eq!(loads, 2, "the late client's document came from storage");

    println!(
        "trace: {OPS} edits ({deletes} deletions) in {} transactions, {expected_len} code \
         units at the end; the first {SINGLE_OPS} one by one in {} ms, the writer done after \
         {} ms, the reader equal after {} ms; replay run {:?}, total {:?}",
        replay.u64("/transactions"),
        replay.u64("/single_ms"),
        replay.u64("/sent_ms"),
        replay.u64("/replay_ms"),
        replay_took,
        started.elapsed()
    );
}

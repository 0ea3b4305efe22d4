//! Collaborative documents with real Yjs editors: each client is a Node
//! process running a stock y-websocket `WebsocketProvider` on yjs
//! (`tests/node/client.mjs`), connected to the real binary.
//!
//! - Two editors typing at once converge to the same text; a late joiner
//!   receives all of it; each sees the others' awareness state, and a
//!   state disappears once its client is gone.
//! - A read-only editor's changes reach neither the other editors nor
//!   storage (checked after a restart); bad tokens are closed with 4401 and
//!   tokens for another document with 4403.
//! - Edits another client has received survive `kill -9` of the server.
//! - A lone, idle editor stays connected past y-websocket's 30 s silence
//!   limit, because the server echoes its awareness renewals.
//!
//! The Node packages are installed on first use (`npm install` in
//! `tests/node`). Without node or npm the tests print a notice and pass,
//! except under CI (`CI=true`), where they fail.

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conclave_client::api::documents::DocScope;
use serde_json::{Value, json};
use support::collab::CollabEnv;
use support::node::{NODE_DIR, node_ready};

/// How long a client may take for one step (sync, an edit to arrive, a
/// peer to appear). Loopback makes these milliseconds; CI machines are busy.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Extra time the test grants a Node client to answer beyond the step's
/// own timeout (which the client enforces and reports).
const ANSWER_SLACK: Duration = Duration::from_secs(10);
/// How long to watch for an edit that must not arrive; relayed edits take
/// milliseconds on loopback.
const QUIET_PERIOD: Duration = Duration::from_millis(1_500);
/// y-websocket 3 closes and reconnects when it hears nothing for this
/// long (`messageReconnectTimeout`); WebSocket pings do not count.
const PROVIDER_SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// Lines a client may print before the test reads them; the client waits
/// (its stdout pipe fills) rather than lose any.
const LINE_QUEUE: usize = 1_024;

fn step_ms() -> u64 {
    STEP_TIMEOUT.as_millis() as u64
}

// ---------------------------------------------------------------------------
// Node

/// One editor: a Node process with a Y.Doc and a WebsocketProvider.
struct Editor {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Value>,
    /// Lines without an id (status, synced, close), for failure messages.
    events: Vec<Value>,
    stderr: Arc<Mutex<Vec<String>>>,
    next_id: u64,
}

impl Editor {
    /// Starts a y-websocket editor for document `room` as `user` (its
    /// awareness name).
    fn spawn(user: &str, collab_url: &str, room: &str, token: &str) -> Editor {
        Self::start(
            user,
            json!({"url": collab_url, "room": room, "token": token, "user": user}),
        )
    }

    /// Starts a Hocuspocus editor (`@hocuspocus/provider`).
    fn spawn_hocuspocus(user: &str, url: &str, room: &str, token: &str) -> Editor {
        Self::start(
            user,
            json!({"protocol": "hocuspocus", "url": url, "room": room, "token": token, "user": user}),
        )
    }

    fn start(user: &str, options: Value) -> Editor {
        let mut child = Command::new("node")
            .arg("client.mjs")
            .arg(options.to_string())
            .current_dir(NODE_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = sync_channel(LINE_QUEUE);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Editor {
            name: user.to_owned(),
            child,
            stdin,
            lines,
            events: Vec::new(),
            stderr,
            next_id: 1,
        }
    }

    /// Sends a command without waiting for its answer.
    fn send(&mut self, cmd: &str, args: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = args;
        request["id"] = json!(id);
        request["cmd"] = json!(cmd);
        writeln!(self.stdin, "{request}").unwrap_or_else(|err| {
            panic!("{}: writing {cmd}: {err}{}", self.name, self.diagnosis())
        });
        id
    }

    /// Waits for the answer to command `id`; a failed command fails the
    /// test with the client's explanation.
    fn answer(&mut self, id: u64) -> Value {
        let deadline = Instant::now() + STEP_TIMEOUT + ANSWER_SLACK;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line["id"] == json!(id) => {
                    assert!(
                        line["ok"] == json!(true),
                        "{}: {}{}",
                        self.name,
                        line["error"].as_str().unwrap_or("failed"),
                        self.diagnosis()
                    );
                    return line;
                }
                Ok(line) => self.events.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no answer to command {id}{}",
                        self.name,
                        self.diagnosis()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: the client exited{}", self.name, self.diagnosis())
                }
            }
        }
    }

    fn call(&mut self, cmd: &str, args: Value) -> Value {
        let id = self.send(cmd, args);
        self.answer(id)
    }

    fn wait_synced(&mut self) -> String {
        text_of(&self.call("wait_synced", json!({"timeout_ms": step_ms()})))
    }

    fn text(&mut self) -> String {
        text_of(&self.call("text", json!({})))
    }

    /// Appends `chunk` at the end (or inserts it at `index`).
    fn insert(&mut self, index: Option<u32>, chunk: &str) {
        self.call("insert", json!({"index": index, "chunk": chunk}));
    }

    fn wait_text_containing(&mut self, parts: &[String]) -> String {
        text_of(&self.call(
            "wait_text",
            json!({"contains": parts, "timeout_ms": step_ms()}),
        ))
    }

    fn wait_text_equal(&mut self, expected: &str) -> String {
        text_of(&self.call(
            "wait_text",
            json!({"equals": expected, "timeout_ms": step_ms()}),
        ))
    }

    fn wait_peer(&mut self, name: &str, present: bool) {
        self.call(
            "wait_peer",
            json!({"name": name, "present": present, "timeout_ms": step_ms()}),
        );
    }

    /// The first close the provider saw: `(code, reason)`.
    fn wait_close(&mut self) -> (u64, String) {
        let close = self.call("wait_close", json!({"timeout_ms": step_ms()}));
        (
            close["code"].as_u64().unwrap_or_default(),
            close["reason"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Hocuspocus: the granted scope, or the refusals' reasons.
    fn wait_auth(&mut self) -> (Option<String>, Vec<String>) {
        let auth = self.call("wait_auth", json!({"timeout_ms": step_ms()}));
        let scope = auth["scope"].as_str().map(str::to_owned);
        let failures = auth["failures"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|reason| reason.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        (scope, failures)
    }

    /// How many times the provider's connection has closed.
    fn closes(&mut self) -> u64 {
        self.call("closes", json!({}))["count"]
            .as_u64()
            .unwrap_or_default()
    }

    /// SIGKILL: the client vanishes without a goodbye, as a closed laptop.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn diagnosis(&self) -> String {
        format!(
            "\nevents: {:?}\nstderr:\n{}",
            self.events,
            self.stderr.lock().unwrap().join("\n")
        )
    }
}

impl Drop for Editor {
    fn drop(&mut self) {
        self.kill();
    }
}

fn text_of(answer: &Value) -> String {
    answer["text"]
        .as_str()
        .expect("an answer with the text")
        .to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The chunks `burst` inserts: `prefix0;` ... `prefix{count-1};`.
fn chunks(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i};")).collect()
}

// ---------------------------------------------------------------------------
// Scenarios

#[test]
fn concurrent_editors_converge_and_see_each_other() {
    if !node_ready() {
        return;
    }
    let rt = runtime();
    let env = CollabEnv::start("");
    let (alice, bob, carol) = rt.block_on(async {
        (
            env.register("alice").await,
            env.register("bob").await,
            env.register("carol").await,
        )
    });
    let channel = rt.block_on(env.direct(&alice, &bob));
    rt.block_on(env.create_doc(&alice, "pad", Some(channel)));
    let alice_token = rt.block_on(env.token(&alice, "pad", DocScope::ReadWrite));
    let bob_token = rt.block_on(env.token(&bob, "pad", DocScope::ReadWrite));

    let mut a = Editor::spawn("alice", &env.collab_url(), "pad", &alice_token);
    let mut b = Editor::spawn("bob", &env.collab_url(), "pad", &bob_token);
    assert_eq!(a.wait_synced(), "");
    assert_eq!(b.wait_synced(), "");

    // Both type at once, one at the end and one at the start, so their
    // edits interleave in flight.
    let count = 40;
    let from_a = a.send(
        "burst",
        json!({"prefix": "a", "count": count, "at_start": false}),
    );
    let from_b = b.send(
        "burst",
        json!({"prefix": "b", "count": count, "at_start": true}),
    );
    a.answer(from_a);
    b.answer(from_b);
    let mut all = chunks("a", count);
    all.extend(chunks("b", count));
    let text_a = a.wait_text_containing(&all);
    let text_b = b.wait_text_containing(&all);
    assert_eq!(text_a, text_b, "the editors converge");
    assert_eq!(
        text_a.len(),
        all.iter().map(String::len).sum::<usize>(),
        "nothing lost, nothing doubled"
    );

    a.wait_peer("bob", true);
    b.wait_peer("alice", true);

    // A late joiner gets the whole document and everyone's awareness. It
    // is alice's second device: the document is not carol's to open.
    let late_token = rt.block_on(env.token(&alice, "pad", DocScope::ReadWrite));
    let mut late = Editor::spawn("alice-phone", &env.collab_url(), "pad", &late_token);
    assert_eq!(late.wait_synced(), text_a);
    late.wait_peer("alice", true);
    late.wait_peer("bob", true);
    a.wait_peer("alice-phone", true);

    // Bob's process dies without a word: the server clears his state.
    b.kill();
    a.wait_peer("bob", false);
    late.wait_peer("bob", false);
    assert_eq!(a.text(), text_a);

    let refused = rt.block_on(async {
        env.as_user(&carol)
            .call(&conclave_client::api::documents::DocToken {
                name: "pad".to_owned(),
                scope: DocScope::ReadOnly,
            })
            .await
    });
    assert_eq!(
        refused.unwrap_err().code(),
        Some("forbidden"),
        "carol is neither the owner nor in the channel"
    );
}

#[test]
fn read_only_edits_reach_nobody_and_bad_tokens_are_refused() {
    if !node_ready() {
        return;
    }
    let rt = runtime();
    let mut env = CollabEnv::start("");
    let (alice, bob) =
        rt.block_on(async { (env.register("alice").await, env.register("bob").await) });
    let channel = rt.block_on(env.direct(&alice, &bob));
    rt.block_on(env.create_doc(&alice, "board", Some(channel)));
    rt.block_on(env.create_doc(&alice, "other", None));
    let writer_token = rt.block_on(env.token(&alice, "board", DocScope::ReadWrite));
    let viewer_token = rt.block_on(env.token(&bob, "board", DocScope::ReadOnly));

    let mut writer = Editor::spawn("alice", &env.collab_url(), "board", &writer_token);
    writer.wait_synced();
    writer.insert(None, "base;");
    let mut viewer = Editor::spawn("bob", &env.collab_url(), "board", &viewer_token);
    viewer.wait_text_containing(&["base;".to_owned()]);

    viewer.insert(Some(0), "VANDAL;");
    writer.insert(None, "after;");
    let seen = viewer.wait_text_containing(&["after;".to_owned()]);
    assert!(
        seen.contains("VANDAL;"),
        "the viewer keeps its local edit: {seen}"
    );
    std::thread::sleep(QUIET_PERIOD);
    assert_eq!(
        writer.text(),
        "base;after;",
        "the viewer's edit never arrives"
    );
    writer.wait_peer("bob", true);
    viewer.wait_peer("alice", true);

    let fresh_token = rt.block_on(env.token(&alice, "board", DocScope::ReadWrite));
    let mut fresh = Editor::spawn("alice-2", &env.collab_url(), "board", &fresh_token);
    assert_eq!(
        fresh.wait_synced(),
        "base;after;",
        "nor is it in the server's copy"
    );

    // Nor in storage: a restarted server has only what it stored.
    viewer.kill();
    writer.kill();
    fresh.kill();
    let status = env.server.stop();
    assert!(status.success(), "clean shutdown: {status:?}");
    env.restart();
    let mut reloaded = Editor::spawn("alice-3", &env.collab_url(), "board", &fresh_token);
    assert_eq!(reloaded.wait_synced(), "base;after;");

    // Tokens: garbage is unauthorized, another document's is forbidden.
    let mut mallory = Editor::spawn("mallory", &env.collab_url(), "board", "cd1.e30.AAAA");
    assert_eq!(mallory.wait_close(), (4401, "unauthenticated".to_owned()));
    let mut astray = Editor::spawn("alice-4", &env.collab_url(), "other", &writer_token);
    assert_eq!(astray.wait_close(), (4403, "forbidden".to_owned()));
    assert_eq!(astray.text(), "", "a refused editor learns nothing");
}

#[test]
fn acknowledged_edits_survive_kill_9() {
    if !node_ready() {
        return;
    }
    let rt = runtime();
    let mut env = CollabEnv::start("");
    let alice = rt.block_on(env.register("alice"));
    rt.block_on(env.create_doc(&alice, "crash", None));
    let token = rt.block_on(env.token(&alice, "crash", DocScope::ReadWrite));

    let mut a = Editor::spawn("alice", &env.collab_url(), "crash", &token);
    let mut b = Editor::spawn("alice-2", &env.collab_url(), "crash", &token);
    a.wait_synced();
    b.wait_synced();
    let count = 60;
    let from_a = a.send(
        "burst",
        json!({"prefix": "x", "count": count, "at_start": false}),
    );
    let from_b = b.send(
        "burst",
        json!({"prefix": "y", "count": count, "at_start": true}),
    );
    a.answer(from_a);
    b.answer(from_b);
    let mut all = chunks("x", count);
    all.extend(chunks("y", count));
    // Each side has received the other's edits: the server relayed them,
    // which it does only after storing them.
    let acknowledged = a.wait_text_containing(&all);
    assert_eq!(b.wait_text_containing(&all), acknowledged);

    env.server.signal("KILL");
    env.server.wait_exit(Duration::from_secs(10));
    // The editors would resend everything on reconnect; they must not help.
    a.kill();
    b.kill();

    env.restart();
    let mut after = Editor::spawn("alice-3", &env.collab_url(), "crash", &token);
    assert_eq!(
        after.wait_synced(),
        acknowledged,
        "every acknowledged edit survived"
    );
}

#[test]
fn an_idle_editor_stays_connected() {
    if !node_ready() {
        return;
    }
    let rt = runtime();
    let env = CollabEnv::start("");
    let alice = rt.block_on(env.register("alice"));
    rt.block_on(env.create_doc(&alice, "quiet", None));
    let token = rt.block_on(env.token(&alice, "quiet", DocScope::ReadWrite));
    let mut editor = Editor::spawn("alice", &env.collab_url(), "quiet", &token);
    editor.wait_synced();
    editor.insert(None, "still here");
    std::thread::sleep(PROVIDER_SILENCE_LIMIT + Duration::from_secs(6));
    assert_eq!(
        editor.closes(),
        0,
        "the provider heard its own awareness renewal (every 15 s) back in time"
    );
    assert_eq!(editor.text(), "still here");
}

/// Hocuspocus providers and y-websocket editors on one document: they
/// converge, see each other's awareness, a late joiner gets everything,
/// the server confirms every stored edit (sync status), and stateless
/// messages reach the other Hocuspocus clients.
#[test]
fn hocuspocus_providers_edit_with_y_websocket_editors() {
    if !node_ready() {
        return;
    }
    let rt = runtime();
    let env = CollabEnv::start("");
    let (alice, bob) =
        rt.block_on(async { (env.register("alice").await, env.register("bob").await) });
    let channel = rt.block_on(env.direct(&alice, &bob));
    rt.block_on(env.create_doc(&alice, "spec", Some(channel)));
    let alice_token = rt.block_on(env.token(&alice, "spec", DocScope::ReadWrite));
    let bob_token = rt.block_on(env.token(&bob, "spec", DocScope::ReadWrite));
    let url = env.hocuspocus_url();

    let mut a = Editor::spawn_hocuspocus("alice", &url, "spec", &alice_token);
    let mut b = Editor::spawn_hocuspocus("bob", &url, "spec", &bob_token);
    let mut y = Editor::spawn("alice-ws", &env.collab_url(), "spec", &alice_token);
    assert_eq!(a.wait_auth(), (Some("read-write".to_owned()), vec![]));
    assert_eq!(b.wait_auth(), (Some("read-write".to_owned()), vec![]));
    assert_eq!(a.wait_synced(), "");
    assert_eq!(b.wait_synced(), "");
    assert_eq!(y.wait_synced(), "");

    let count = 30;
    let from_a = a.send(
        "burst",
        json!({"prefix": "h", "count": count, "at_start": false}),
    );
    let from_b = b.send(
        "burst",
        json!({"prefix": "k", "count": count, "at_start": true}),
    );
    let from_y = y.send(
        "burst",
        json!({"prefix": "w", "count": count, "at_start": false}),
    );
    a.answer(from_a);
    b.answer(from_b);
    y.answer(from_y);
    let mut all = chunks("h", count);
    all.extend(chunks("k", count));
    all.extend(chunks("w", count));
    let text = a.wait_text_containing(&all);
    assert_eq!(b.wait_text_containing(&all), text);
    assert_eq!(y.wait_text_containing(&all), text);
    assert_eq!(text.len(), all.iter().map(String::len).sum::<usize>());
    // Every edit was answered with "stored".
    a.call("wait_all_stored", json!({"timeout_ms": step_ms()}));
    b.call("wait_all_stored", json!({"timeout_ms": step_ms()}));

    a.wait_peer("bob", true);
    a.wait_peer("alice-ws", true);
    y.wait_peer("bob", true);

    a.call("send_stateless", json!({"payload": "cursor:42"}));
    let heard = b.call(
        "wait_stateless",
        json!({"count": 1, "timeout_ms": step_ms()}),
    );
    assert_eq!(heard["payloads"], json!(["cursor:42"]));

    let mut late = Editor::spawn_hocuspocus("alice-late", &url, "spec", &alice_token);
    assert_eq!(late.wait_synced(), text);
    late.wait_peer("bob", true);

    b.kill();
    a.wait_peer("bob", false);
    y.wait_peer("bob", false);
}

/// A wrong token is refused with permission denied and learns nothing; a
/// read-only token is granted "readonly", and its edits reach neither the
/// other editors nor storage.
#[test]
fn hocuspocus_refuses_bad_tokens_and_keeps_read_only_edits_out() {
    if !node_ready() {
        return;
    }
    let rt = runtime();
    let mut env = CollabEnv::start("");
    let (alice, bob) =
        rt.block_on(async { (env.register("alice").await, env.register("bob").await) });
    let channel = rt.block_on(env.direct(&alice, &bob));
    rt.block_on(env.create_doc(&alice, "plan", Some(channel)));
    rt.block_on(env.create_doc(&alice, "elsewhere", None));
    let writer_token = rt.block_on(env.token(&alice, "plan", DocScope::ReadWrite));
    let viewer_token = rt.block_on(env.token(&bob, "plan", DocScope::ReadOnly));
    let url = env.hocuspocus_url();

    let mut writer = Editor::spawn_hocuspocus("alice", &url, "plan", &writer_token);
    writer.wait_synced();
    writer.insert(None, "base;");

    let mut mallory = Editor::spawn_hocuspocus("mallory", &url, "plan", "cd1.e30.AAAA");
    let (scope, failures) = mallory.wait_auth();
    assert_eq!(scope, None);
    assert!(
        failures
            .iter()
            .any(|reason| reason.starts_with("unauthenticated")),
        "{failures:?}"
    );
    let mut astray = Editor::spawn_hocuspocus("alice-2", &url, "elsewhere", &writer_token);
    let (scope, failures) = astray.wait_auth();
    assert_eq!(scope, None);
    assert!(
        failures
            .iter()
            .any(|reason| reason.starts_with("forbidden")),
        "{failures:?}"
    );

    let mut viewer = Editor::spawn_hocuspocus("bob", &url, "plan", &viewer_token);
    assert_eq!(viewer.wait_auth(), (Some("readonly".to_owned()), vec![]));
    viewer.wait_text_containing(&["base;".to_owned()]);
    viewer.insert(Some(0), "VANDAL;");
    writer.insert(None, "after;");
    let seen = viewer.wait_text_containing(&["after;".to_owned()]);
    assert!(seen.contains("VANDAL;"), "the viewer keeps its local edit");
    writer.call("wait_all_stored", json!({"timeout_ms": step_ms()}));
    std::thread::sleep(QUIET_PERIOD);
    assert_eq!(
        writer.text(),
        "base;after;",
        "the viewer's edit never arrives"
    );
    assert_eq!(mallory.text(), "", "a refused provider learns nothing");
    assert_eq!(astray.text(), "");
    writer.wait_peer("bob", true);

    // Nor is it stored: a restarted server has only what it stored.
    for editor in [&mut writer, &mut viewer, &mut mallory, &mut astray] {
        editor.kill();
    }
    let status = env.server.stop();
    assert!(status.success(), "clean shutdown: {status:?}");
    env.restart();
    let url = env.hocuspocus_url();
    let mut reloaded = Editor::spawn_hocuspocus("alice-3", &url, "plan", &writer_token);
    assert_eq!(reloaded.wait_synced(), "base;after;");
}

/// Named versions: saved from what editors typed, listed, read back as a
/// Yjs update, and restored for everyone editing (the current content
/// saved first); the restore is stored like any edit.
#[test]
fn versions_are_saved_listed_read_and_restored_for_everyone() {
    use base64::Engine as _;
    use conclave_client::api::documents::{
        DocVersionCreate, DocVersionGet, DocVersionList, DocVersionRestore,
    };
    use yrs::updates::decoder::Decode as _;
    use yrs::{GetString as _, Transact as _};

    if !node_ready() {
        return;
    }
    let rt = runtime();
    let mut env = CollabEnv::start("");
    let (alice, bob, eve) = rt.block_on(async {
        (
            env.register("alice").await,
            env.register("bob").await,
            env.register("eve").await,
        )
    });
    let channel = rt.block_on(env.direct(&alice, &bob));
    rt.block_on(env.create_doc(&alice, "essay", Some(channel)));
    let alice_token = rt.block_on(env.token(&alice, "essay", DocScope::ReadWrite));
    let bob_token = rt.block_on(env.token(&bob, "essay", DocScope::ReadWrite));
    let mut a = Editor::spawn("alice", &env.collab_url(), "essay", &alice_token);
    let mut b = Editor::spawn_hocuspocus("bob", &env.hocuspocus_url(), "essay", &bob_token);
    a.wait_synced();
    b.wait_synced();
    a.insert(None, "first draft;");
    b.wait_text_equal("first draft;");

    let version_text = |state: &str| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(state)
            .expect("base64");
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("text");
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&bytes).expect("a v1 update"))
            .expect("applies");
        text.get_string(&doc.transact())
    };
    let (saved, listed, content) = rt.block_on(async {
        let saved = env
            .as_user(&bob)
            .call(&DocVersionCreate {
                name: "essay".to_owned(),
                label: "Draft 1".to_owned(),
            })
            .await
            .expect("doc/version/create");
        let listed = env
            .as_user(&alice)
            .call(&DocVersionList {
                name: "essay".to_owned(),
            })
            .await
            .expect("doc/version/list");
        let content = env
            .as_user(&alice)
            .call(&DocVersionGet {
                name: "essay".to_owned(),
                version: saved.version,
            })
            .await
            .expect("doc/version/get");
        (saved, listed, content)
    });
    assert_eq!(saved.version, 1);
    assert_eq!(saved.label, "Draft 1");
    assert_eq!(saved.created_by, bob.user_id);
    assert_eq!(listed.versions, vec![saved.clone()]);
    assert_eq!(version_text(&content.state), "first draft;");

    // More edits, from both sides, then the restore.
    a.insert(None, "second;");
    b.insert(Some(0), "intro;");
    let edited = a.wait_text_containing(&["intro;".to_owned(), "second;".to_owned()]);
    assert_eq!(b.wait_text_equal(&edited), edited);
    let restored = rt.block_on(async {
        env.as_user(&alice)
            .call(&DocVersionRestore {
                name: "essay".to_owned(),
                version: 1,
            })
            .await
            .expect("doc/version/restore")
    });
    assert_eq!(restored.saved.version, 2);
    assert_eq!(restored.saved.label, "before restoring version 1");
    assert_eq!(a.wait_text_equal("first draft;"), "first draft;");
    assert_eq!(b.wait_text_equal("first draft;"), "first draft;");
    let before = rt.block_on(async {
        env.as_user(&bob)
            .call(&DocVersionGet {
                name: "essay".to_owned(),
                version: 2,
            })
            .await
            .expect("the automatic version")
    });
    assert_eq!(
        version_text(&before.state),
        edited,
        "the restore can be undone"
    );
    // Editing goes on from the restored text.
    a.insert(None, "third;");
    b.wait_text_equal("first draft;third;");

    // Refusals.
    let errors = rt.block_on(async {
        let stranger = env
            .as_user(&eve)
            .call(&DocVersionList {
                name: "essay".to_owned(),
            })
            .await;
        let missing = env
            .as_user(&alice)
            .call(&DocVersionRestore {
                name: "essay".to_owned(),
                version: 99,
            })
            .await;
        let unlabeled = env
            .as_user(&alice)
            .call(&DocVersionCreate {
                name: "essay".to_owned(),
                label: " ".to_owned(),
            })
            .await;
        [stranger.err(), missing.err(), unlabeled.err()]
            .map(|err| err.and_then(|err| err.code().map(str::to_owned)))
    });
    assert_eq!(
        errors,
        [
            Some("forbidden".to_owned()),
            Some("not_found".to_owned()),
            Some("bad_request".to_owned())
        ]
    );

    // The restore is stored like any edit, not only in memory: it survives
    // kill -9 (before the editors go, so no final snapshot hides a loss).
    env.server.signal("KILL");
    env.server.wait_exit(Duration::from_secs(10));
    a.kill();
    b.kill();
    env.restart();
    let mut reloaded = Editor::spawn("alice-2", &env.collab_url(), "essay", &alice_token);
    assert_eq!(reloaded.wait_synced(), "first draft;third;");
}

/// Two nodes of a cluster (shared PostgreSQL, Redis bus): editors connected
/// to different nodes edit one document and converge; an editor joining
/// later on either node gets everything. Skips without PostgreSQL/Redis.
#[test]
fn editors_on_different_nodes_converge() {
    if !node_ready() {
        return;
    }
    let Some((_dirs, nodes)) = support::start_cluster("redis", 2, 15_000) else {
        return;
    };
    let rt = runtime();
    let base = |n: usize| format!("http://{}", nodes[n].http);
    let collab = |n: usize| format!("ws://{}/collab", nodes[n].http);
    let (alice, bob) = rt.block_on(async {
        let register = |n: usize, name: &'static str| {
            let http = conclave_client::HttpClient::new(&base(n));
            async move {
                http.register(name, support::collab::PASSWORD, Some("laptop"))
                    .await
                    .unwrap_or_else(|err| panic!("register {name}: {err}"))
            }
        };
        (register(0, "alice").await, register(1, "bob").await)
    });
    let token = |n: usize, grant: &conclave_client::api::account::AuthGrant| {
        rt.block_on(async {
            conclave_client::HttpClient::new(&base(n))
                .with_token(&grant.token)
                .call(&conclave_client::api::documents::DocToken {
                    name: "shared".to_owned(),
                    scope: DocScope::ReadWrite,
                })
                .await
                .expect("doc/token")
                .token
        })
    };
    let channel = rt.block_on(async {
        conclave_client::HttpClient::new(&base(0))
            .with_token(&alice.token)
            .call(&conclave_client::api::messaging::DirectGetOrCreate {
                user_id: bob.user_id,
            })
            .await
            .expect("a direct channel")
            .channel_id
    });
    rt.block_on(async {
        conclave_client::HttpClient::new(&base(0))
            .with_token(&alice.token)
            .call(&conclave_client::api::documents::DocCreate {
                name: "shared".to_owned(),
                channel_id: Some(channel),
            })
            .await
            .expect("doc/create")
    });

    let mut a = Editor::spawn("alice", &collab(0), "shared", &token(0, &alice));
    let mut b = Editor::spawn("bob", &collab(1), "shared", &token(1, &bob));
    assert_eq!(a.wait_synced(), "");
    assert_eq!(b.wait_synced(), "");
    let count = 30;
    let from_a = a.send(
        "burst",
        json!({"prefix": "a", "count": count, "at_start": false}),
    );
    let from_b = b.send(
        "burst",
        json!({"prefix": "b", "count": count, "at_start": true}),
    );
    a.answer(from_a);
    b.answer(from_b);
    let mut all = chunks("a", count);
    all.extend(chunks("b", count));
    let text_a = a.wait_text_containing(&all);
    let text_b = b.wait_text_containing(&all);
    assert_eq!(text_a, text_b, "editors on two nodes converge");
    assert_eq!(text_a.len(), all.iter().map(String::len).sum::<usize>());

    // Awareness crosses nodes both ways.
    a.wait_peer("bob", true);
    b.wait_peer("alice", true);

    // A late joiner on node 1 loads what both nodes stored, and sees
    // alice on node 0 (at the latest when her state is renewed).
    let mut late = Editor::spawn("alice-phone", &collab(1), "shared", &token(1, &alice));
    assert_eq!(late.wait_synced(), text_a);
    late.wait_peer("alice", true);
    a.wait_peer("alice-phone", true);

    // Hocuspocus stateless messages cross nodes too.
    let hocuspocus = |n: usize| format!("ws://{}/hocuspocus", nodes[n].http);
    let mut h0 = Editor::spawn_hocuspocus("alice-h", &hocuspocus(0), "shared", &token(0, &alice));
    let mut h1 = Editor::spawn_hocuspocus("bob-h", &hocuspocus(1), "shared", &token(1, &bob));
    assert_eq!(h0.wait_synced(), text_a);
    assert_eq!(h1.wait_synced(), text_a);
    h0.call("send_stateless", json!({"payload": "ping from node 0"}));
    let heard = h1.call(
        "wait_stateless",
        json!({"count": 1, "timeout_ms": step_ms()}),
    );
    assert_eq!(heard["payloads"], json!(["ping from node 0"]));

    // Bob's editor dies: node 1 clears his state, and node 0 hears of it
    // at once rather than after the 30 s expiry.
    let gone = Instant::now();
    b.kill();
    a.wait_peer("bob", false);
    assert!(
        gone.elapsed() < Duration::from_secs(10),
        "removal travelled on the bus, not by expiry: {:?}",
        gone.elapsed()
    );
}

//! Acceptance tests of the messaging core against the real `conclave`
//! binary, through the Rust SDK: offline catch-up, exactly-once sends,
//! live multi-device delivery and revoke, crash survival, the channel
//! list, search isolation, and permissions and input validation.
//!
//! Every test starts its own server in its own temporary directory.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conclave_client::api::account::{AuthGrant, Login};
use conclave_client::api::messaging::{
    ChannelEvent, ChannelHide, ChannelList, ChannelMute, ChannelPin, ChannelView, Content,
    DirectGetOrCreate, GetChannelPts, GetDifference, HistoryGet, HistorySearch, MessageRevoke,
    MessageSend, MessageSent, MessageView, ReactionAdd, ReactionChange, ReadPts, UnreadCount,
};
use conclave_client::{ClientError, Connection, Encoding, Event, HttpClient};
use conclave_core::{ChannelId, MessageId, UserId};
use serde_json::json;
use support::{Server, start_server, write_config};

const PASSWORD: &str = "correct horse battery staple";
/// How long a test waits for something that should happen promptly.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test listens to conclude that an event is not coming; a
/// pushed event follows the response that caused it within milliseconds.
const QUIET_PERIOD: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Harness

/// A test's server and its directory (kept until the test ends).
struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    server: Server,
}

impl Env {
    fn start(extra: &str) -> Env {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = write_config(dir.path(), extra);
        let server = start_server(dir.path(), &config);
        Env {
            dir,
            config,
            server,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.server.http)
    }

    fn http(&self) -> HttpClient {
        HttpClient::new(&self.base())
    }

    fn as_user(&self, grant: &AuthGrant) -> HttpClient {
        self.http().with_token(&grant.token)
    }

    async fn register(&self, username: &str, device: &str) -> AuthGrant {
        self.http()
            .register(username, PASSWORD, Some(device))
            .await
            .unwrap_or_else(|err| panic!("register {username}: {err}"))
    }

    /// Logs a user in as a new device.
    async fn login(&self, username: &str, device: &str) -> AuthGrant {
        self.http()
            .login(username, PASSWORD, Some(device))
            .await
            .unwrap_or_else(|err| panic!("log {username} in on {device}: {err}"))
    }

    /// Logs an existing device in again.
    async fn login_again(&self, username: &str, grant: &AuthGrant) -> AuthGrant {
        let again = self
            .http()
            .call(&Login {
                username: username.to_owned(),
                password: PASSWORD.to_owned(),
                device_name: None,
                device_id: Some(grant.device_id),
                noise_public_key: None,
            })
            .await
            .unwrap_or_else(|err| panic!("log {username} in again: {err}"));
        assert_eq!(again.device_id, grant.device_id, "the same device");
        assert_eq!(again.user_id, grant.user_id);
        again
    }

    async fn connect(&self, grant: &AuthGrant, encoding: Encoding) -> Connection {
        Connection::connect_ws(&self.base(), &grant.token, encoding)
            .await
            .unwrap_or_else(|err| panic!("{encoding:?} connection: {err}"))
    }

    async fn direct(&self, from: &AuthGrant, to: &AuthGrant) -> ChannelId {
        self.as_user(from)
            .call(&DirectGetOrCreate {
                user_id: to.user_id,
            })
            .await
            .expect("channel/direct/get_or_create")
            .channel_id
    }
}

fn text(body: &str) -> Content {
    Content::Text {
        text: body.to_owned(),
    }
}

fn send_text(channel: ChannelId, client_msg_id: &str, body: &str) -> MessageSend {
    MessageSend {
        channel_id: channel,
        client_msg_id: client_msg_id.to_owned(),
        content: text(body),
        reply_to: None,
        mentions: None,
    }
}

fn history(channel: ChannelId) -> HistoryGet {
    HistoryGet {
        channel_id: channel,
        before_pts: None,
        limit: Some(200),
    }
}

fn difference(channel: ChannelId, last_pts: u64) -> GetDifference {
    GetDifference {
        channel_id: channel,
        last_pts,
        limit: None,
    }
}

/// Every event of a channel after `last_pts`, following `has_more`.
async fn all_events_after(
    http: &HttpClient,
    channel: ChannelId,
    mut last_pts: u64,
    page: u32,
) -> Vec<ChannelEvent> {
    let mut events = Vec::new();
    for _ in 0..1_000 {
        let diff = http
            .call(&GetDifference {
                channel_id: channel,
                last_pts,
                limit: Some(page),
            })
            .await
            .expect("sync/get_difference");
        assert!(
            diff.events.len() <= page as usize,
            "a page of {} events for a limit of {page}",
            diff.events.len()
        );
        if let Some(last) = diff.events.last() {
            last_pts = last.pts;
        }
        let more = diff.has_more;
        assert!(
            more || last_pts == diff.current_pts,
            "no more events, yet the last one ({last_pts}) is not the head ({})",
            diff.current_pts
        );
        events.extend(diff.events);
        if !more {
            return events;
        }
    }
    panic!("get_difference kept saying has_more");
}

/// The refusal code of a call that must fail.
fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>, what: &str) -> String {
    match result {
        Ok(value) => panic!("{what} succeeded: {value:?}"),
        Err(err) => err
            .code()
            .unwrap_or_else(|| panic!("{what} failed without a code: {err:?}"))
            .to_owned(),
    }
}

fn is_channel_event(event: &Event) -> bool {
    event.name.starts_with("message/")
}

/// The next channel event (`message/*`) the session receives, skipping
/// unrelated pushes (presence, device changes).
async fn next_channel_event(conn: &mut Connection, who: &str) -> Event {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.next_event_timeout(left).await {
            Ok(Some(event)) if is_channel_event(&event) => return event,
            Ok(Some(_)) => {}
            Ok(None) => panic!("{who}: the connection closed: {:?}", conn.close_reason()),
            Err(_) => panic!("{who}: no channel event within {STEP_TIMEOUT:?}"),
        }
    }
}

/// Fails if the session receives a channel event within the quiet period.
async fn assert_no_channel_event(conn: &mut Connection, who: &str) {
    let deadline = tokio::time::Instant::now() + QUIET_PERIOD;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match conn.next_event_timeout(left).await {
            Ok(Some(event)) if is_channel_event(&event) => {
                panic!("{who} got an unexpected channel event: {event:?}")
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("{who}: the connection closed: {:?}", conn.close_reason()),
            Err(_) => return,
        }
    }
}

/// A `message/new` event for `sent`, checked against what was sent.
fn assert_message_new(
    event: &Event,
    who: &str,
    channel: ChannelId,
    sender: UserId,
    client_msg_id: &str,
    sent: &MessageSent,
    body: &str,
) {
    assert_eq!(event.name, "message/new", "{who}: {event:?}");
    assert_eq!(event.channel_id, Some(channel), "{who}: {event:?}");
    assert_eq!(event.pts, Some(sent.pts), "{who}: {event:?}");
    let view: MessageView = event.body_as().unwrap_or_else(|err| panic!("{who}: {err}"));
    assert_eq!(view.message_id, sent.message_id, "{who}");
    assert_eq!(view.channel_id, channel, "{who}");
    assert_eq!(view.pts, sent.pts, "{who}");
    assert_eq!(view.sender_id, sender, "{who}");
    assert_eq!(view.client_msg_id, client_msg_id, "{who}");
    assert_eq!(view.content, Some(text(body)), "{who}");
    assert_eq!(view.server_ts, sent.server_ts, "{who}");
    assert!(!view.revoked, "{who}");
}

fn channel_ids(list: &[ChannelView]) -> Vec<ChannelId> {
    list.iter().map(|c| c.channel_id).collect()
}

fn find(list: &[ChannelView], channel: ChannelId) -> &ChannelView {
    list.iter()
        .find(|c| c.channel_id == channel)
        .unwrap_or_else(|| panic!("channel {channel} is not in the list"))
}

fn search(query: &str, channel: Option<ChannelId>) -> HistorySearch {
    HistorySearch {
        query: query.to_owned(),
        channel_id: channel,
        limit: None,
    }
}

fn texts(messages: &[MessageView]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match &m.content {
            Some(Content::Text { text }) => text.clone(),
            other => panic!("not a text message: {other:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Offline catch-up

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_catches_up_on_500_messages_and_reads_reach_every_device() {
    const MESSAGES: u64 = 500;
    let env = Env::start("");
    let alice = env.register("alice", "laptop").await;
    let bob_phone = env.register("bob", "phone").await;
    let bob_laptop = env.login("bob", "laptop").await;
    assert_ne!(bob_phone.device_id, bob_laptop.device_id);
    let channel = env.direct(&alice, &bob_phone).await;

    let alice_conn = env.connect(&alice, Encoding::Binary).await;
    let mut laptop = env.connect(&bob_laptop, Encoding::Json).await;

    // Bob's phone is not connected while Alice writes.
    let mut sent = Vec::new();
    for i in 1..=MESSAGES {
        let cmid = format!("offline-{i:04}");
        let ack = alice_conn
            .call(&send_text(channel, &cmid, &format!("message number {i}")))
            .await
            .unwrap_or_else(|err| panic!("send {i}: {err}"));
        assert!(!ack.duplicate, "{cmid}");
        assert_eq!(ack.pts, i, "the {i}th event of a new channel");
        sent.push((cmid, ack));
    }

    // The online laptop got every message live, in pts order.
    for (i, (cmid, ack)) in sent.iter().enumerate() {
        let event = next_channel_event(&mut laptop, "bob's laptop").await;
        assert_message_new(
            &event,
            "bob's laptop",
            channel,
            alice.user_id,
            cmid,
            ack,
            &format!("message number {}", i + 1),
        );
    }

    // The phone comes back (a fresh login of the same device) and syncs,
    // in pages.
    let phone_grant = env.login_again("bob", &bob_phone).await;
    let phone_http = env.as_user(&phone_grant);
    let events = all_events_after(&phone_http, channel, 0, 200).await;
    assert_eq!(events.len(), MESSAGES as usize, "exactly the missed events");
    let mut seen_ids = BTreeSet::new();
    for (i, event) in events.iter().enumerate() {
        let (cmid, ack) = &sent[i];
        assert_eq!(event.event, "message/new", "{event:?}");
        assert_eq!(event.channel_id, channel);
        assert_eq!(event.pts, i as u64 + 1, "contiguous pts, in order");
        let view: MessageView =
            serde_json::from_value(event.body.clone()).expect("a message/new body");
        assert_eq!(&view.client_msg_id, cmid, "Alice's order");
        assert_eq!(view.message_id, ack.message_id);
        assert_eq!(view.pts, event.pts);
        assert_eq!(view.sender_id, alice.user_id);
        assert_eq!(
            view.content,
            Some(text(&format!("message number {}", i + 1)))
        );
        assert!(seen_ids.insert(view.message_id), "no duplicates");
    }
    // The same in one request.
    let whole = phone_http
        .call(&GetDifference {
            channel_id: channel,
            last_pts: 0,
            limit: Some(MESSAGES as u32),
        })
        .await
        .expect("get_difference");
    assert_eq!(whole.events, events);
    assert!(!whole.has_more);
    assert_eq!(whole.current_pts, MESSAGES);

    // Unread on both of Bob's devices.
    let count = UnreadCount {
        channel_id: channel,
    };
    assert_eq!(
        phone_http.call(&count).await.unwrap().unread_count,
        MESSAGES
    );
    assert_eq!(laptop.call(&count).await.unwrap().unread_count, MESSAGES);

    // The phone goes live; the laptop reads everything.
    let mut phone = env.connect(&phone_grant, Encoding::Binary).await;
    let cursor = laptop
        .call(&ReadPts {
            channel_id: channel,
            pts: MESSAGES,
        })
        .await
        .expect("read_pts");
    assert_eq!(cursor.read_pts, MESSAGES);
    assert_eq!(cursor.unread_count, 0);
    assert_eq!(phone.call(&count).await.unwrap().unread_count, 0);
    assert_eq!(laptop.call(&count).await.unwrap().unread_count, 0);
    assert_eq!(phone_http.call(&count).await.unwrap().unread_count, 0);

    let read = next_channel_event(&mut phone, "bob's phone").await;
    assert_eq!(read.name, "message/read", "{read:?}");
    assert_eq!(read.channel_id, Some(channel));
    assert_eq!(read.pts, Some(MESSAGES + 1), "the read receipt's own pts");
    assert_eq!(read.body()["user_id"], json!(bob_phone.user_id), "{read:?}");
    // The reading session has its answer and no echo.
    assert_no_channel_event(&mut laptop, "bob's laptop").await;
    // The sync log has the receipt right after the messages.
    let after = phone_http
        .call(&difference(channel, MESSAGES))
        .await
        .expect("get_difference");
    assert_eq!(after.events.len(), 1, "{after:?}");
    assert_eq!(after.events[0].event, "message/read");
    assert_eq!(after.events[0].pts, MESSAGES + 1);
    // A pts is a number on the wire everywhere else (`pts`, `read_pts` of
    // `message/status/read_pts`), so it is one in the receipt too.
    assert_eq!(read.body()["read_pts"], json!(MESSAGES), "{read:?}");

    drop(alice_conn);
}

// ---------------------------------------------------------------------------
// 2. Exactly-once under retries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_sends_create_exactly_one_message_even_across_a_dropped_connection() {
    let env = Env::start("");
    let alice = env.register("alice", "laptop").await;
    let bob = env.register("bob", "phone").await;
    let channel = env.direct(&alice, &bob).await;
    let mut bob_conn = env.connect(&bob, Encoding::Json).await;

    // Three sends of one id: over the WebSocket, over HTTP, and again over
    // the WebSocket, all from the same device.
    let conn = env.connect(&alice, Encoding::Binary).await;
    let request = send_text(channel, "retry-1", "said once");
    let first = conn.call(&request).await.expect("first send");
    assert!(!first.duplicate);
    let second = env
        .as_user(&alice)
        .call(&request)
        .await
        .expect("second send");
    let third = conn.call(&request).await.expect("third send");
    for retry in [&second, &third] {
        assert!(retry.duplicate, "{retry:?}");
        assert_eq!(
            (retry.message_id, retry.pts, retry.server_ts),
            (first.message_id, first.pts, first.server_ts)
        );
    }
    let event = next_channel_event(&mut bob_conn, "bob").await;
    assert_message_new(
        &event,
        "bob",
        channel,
        alice.user_id,
        "retry-1",
        &first,
        "said once",
    );
    assert_no_channel_event(&mut bob_conn, "bob").await;
    conn.close().await;

    // The server commits the send, but the connection dies before the
    // answer is read: the spawned call owns the connection and is aborted
    // as soon as Bob sees the message.
    let conn = env.connect(&alice, Encoding::Json).await;
    let request = send_text(channel, "retry-lost-ack", "answer lost");
    let in_flight = {
        let request = request.clone();
        tokio::spawn(async move { conn.call(&request).await })
    };
    let event = next_channel_event(&mut bob_conn, "bob").await;
    in_flight.abort();
    let _ = in_flight.await;
    let view: MessageView = event.body_as().expect("a message");
    assert_eq!(view.client_msg_id, "retry-lost-ack");
    let conn = env.connect(&alice, Encoding::Json).await;
    let retry = conn.call(&request).await.expect("resend after reconnect");
    assert!(retry.duplicate, "{retry:?}");
    assert_eq!((retry.message_id, retry.pts), (view.message_id, view.pts));
    assert_no_channel_event(&mut bob_conn, "bob").await;
    conn.close().await;

    // Disconnects at arbitrary moments right after sending: the first try
    // may or may not have reached the server; the resend settles it.
    let mut racy = Vec::new();
    for attempt in 0..6u64 {
        let encoding = if attempt % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::Binary
        };
        let conn = env.connect(&alice, encoding).await;
        let cmid = format!("retry-racy-{attempt}");
        let request = send_text(channel, &cmid, &format!("racy {attempt}"));
        let in_flight = {
            let request = request.clone();
            tokio::spawn(async move { conn.call(&request).await })
        };
        for _ in 0..attempt * 3 {
            tokio::task::yield_now().await;
        }
        if attempt >= 3 {
            tokio::time::sleep(Duration::from_millis(attempt)).await;
        }
        in_flight.abort();
        let _ = in_flight.await;
        let conn = env.connect(&alice, encoding).await;
        let ack = conn.call(&request).await.expect("resend");
        // The abandoned first try may still be in the server's hands; a
        // third try is a duplicate either way and names the same message.
        let again = conn.call(&request).await.expect("resend again");
        assert!(again.duplicate);
        assert_eq!((again.message_id, again.pts), (ack.message_id, ack.pts));
        racy.push((cmid, ack));
        conn.close().await;
    }

    // History holds each client_msg_id exactly once.
    let page = env
        .as_user(&bob)
        .call(&history(channel))
        .await
        .expect("history");
    assert!(!page.has_more);
    let mut by_cmid: HashMap<String, Vec<&MessageView>> = HashMap::new();
    for message in &page.messages {
        by_cmid
            .entry(message.client_msg_id.clone())
            .or_default()
            .push(message);
    }
    let mut expected: Vec<(String, MessageId)> = vec![
        ("retry-1".to_owned(), first.message_id),
        ("retry-lost-ack".to_owned(), view.message_id),
    ];
    expected.extend(racy.iter().map(|(c, ack)| (c.clone(), ack.message_id)));
    assert_eq!(page.messages.len(), expected.len(), "{:#?}", page.messages);
    for (cmid, id) in &expected {
        let found = by_cmid.get(cmid).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(found.len(), 1, "{cmid}: {found:?}");
        assert_eq!(found[0].message_id, *id, "{cmid}");
    }
    // Live, Bob saw each message exactly once as well.
    let mut live: BTreeMap<String, usize> = BTreeMap::new();
    for (cmid, _) in &racy {
        live.insert(cmid.clone(), 0);
    }
    for _ in 0..racy.len() {
        let event = next_channel_event(&mut bob_conn, "bob").await;
        assert_eq!(event.name, "message/new", "{event:?}");
        let view: MessageView = event.body_as().expect("a message");
        *live.entry(view.client_msg_id).or_default() += 1;
    }
    assert_no_channel_event(&mut bob_conn, "bob").await;
    assert!(live.values().all(|n| *n == 1), "{live:?}");
    // And the sync log agrees.
    let events = all_events_after(&env.as_user(&bob), channel, 0, 500).await;
    let new: Vec<_> = events.iter().filter(|e| e.event == "message/new").collect();
    assert_eq!(new.len(), expected.len());
}

// ---------------------------------------------------------------------------
// 3. Live multi-device delivery and revoke

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_revokes_reach_every_other_session_and_the_window_is_enforced() {
    let env = Env::start("[messaging]\nrevoke_window_secs = 2\n");
    let alice_laptop = env.register("alice", "laptop").await;
    let alice_phone = env.login("alice", "phone").await;
    let bob_one = env.register("bob", "phone").await;
    let bob_two = env.login("bob", "tablet").await;
    let channel = env.direct(&alice_laptop, &bob_one).await;

    let mut laptop = env.connect(&alice_laptop, Encoding::Json).await;
    let mut others = vec![
        (
            "alice's phone",
            env.connect(&alice_phone, Encoding::Binary).await,
        ),
        ("bob's phone", env.connect(&bob_one, Encoding::Binary).await),
        ("bob's tablet", env.connect(&bob_two, Encoding::Json).await),
    ];

    // A message from the laptop reaches the three other sessions.
    let first = laptop
        .call(&send_text(channel, "live-1", "hello all"))
        .await
        .expect("send");
    assert_eq!(first.pts, 1);
    for (who, conn) in &mut others {
        let event = next_channel_event(conn, who).await;
        assert_message_new(
            &event,
            who,
            channel,
            alice_laptop.user_id,
            "live-1",
            &first,
            "hello all",
        );
    }
    // Revoked within the window: replaced everywhere.
    let revoked = laptop
        .call(&MessageRevoke {
            channel_id: channel,
            message_id: first.message_id,
        })
        .await
        .expect("revoke within the window");
    assert_eq!(revoked.pts, first.pts + 1);
    for (who, conn) in &mut others {
        let event = next_channel_event(conn, who).await;
        assert_eq!(event.name, "message/revoked", "{who}: {event:?}");
        assert_eq!(event.channel_id, Some(channel), "{who}");
        assert_eq!(event.pts, Some(revoked.pts), "{who}");
        assert_eq!(
            event.body()["message_id"],
            json!(first.message_id),
            "{who}: {event:?}"
        );
        assert_eq!(
            event.body()["revoked_by"],
            json!(alice_laptop.user_id),
            "{who}"
        );
    }
    // The sending session has its answers and hears no echo.
    assert_no_channel_event(&mut laptop, "alice's laptop").await;

    let second = laptop
        .call(&send_text(channel, "live-2", "this one stays"))
        .await
        .expect("send");
    let second_sent_at = tokio::time::Instant::now();
    assert_eq!(second.pts, revoked.pts + 1);
    for (who, conn) in &mut others {
        let event = next_channel_event(conn, who).await;
        assert_message_new(
            &event,
            who,
            channel,
            alice_laptop.user_id,
            "live-2",
            &second,
            "this one stays",
        );
    }

    for grant in [&alice_phone, &bob_two] {
        let page = env
            .as_user(grant)
            .call(&history(channel))
            .await
            .expect("history");
        assert_eq!(page.messages.len(), 2, "{page:?}");
        let gone = &page.messages[0];
        assert_eq!(gone.message_id, first.message_id);
        assert!(gone.revoked, "{gone:?}");
        assert_eq!(gone.content, None, "revoked content is not served");
        let kept = &page.messages[1];
        assert_eq!(kept.message_id, second.message_id);
        assert!(!kept.revoked);
        assert_eq!(kept.content, Some(text("this one stays")));
    }

    // After the window, revoking fails and nothing changes.
    tokio::time::sleep_until(second_sent_at + Duration::from_millis(2_500)).await;
    let head_before = laptop
        .call(&GetChannelPts {
            channel_id: channel,
        })
        .await
        .expect("channel pts")
        .pts;
    let err = laptop
        .call(&MessageRevoke {
            channel_id: channel,
            message_id: second.message_id,
        })
        .await;
    assert_eq!(code_of(err, "a late revoke"), "revoke_window_expired");
    for (who, conn) in &mut others {
        assert_no_channel_event(conn, who).await;
    }
    let head_after = laptop
        .call(&GetChannelPts {
            channel_id: channel,
        })
        .await
        .expect("channel pts")
        .pts;
    assert_eq!(head_after, head_before);
    assert_eq!(head_after, second.pts);
    let page = env
        .as_user(&bob_one)
        .call(&history(channel))
        .await
        .expect("history");
    let kept = page
        .messages
        .iter()
        .find(|m| m.message_id == second.message_id)
        .expect("the second message");
    assert!(!kept.revoked);
    assert_eq!(kept.content, Some(text("this one stays")));
}

// ---------------------------------------------------------------------------
// 4. Crash survival

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_kill_9() {
    const FROM_ALICE: usize = 40;
    const FROM_BOB: usize = 10;
    let mut env = Env::start("");
    let alice = env.register("alice", "laptop").await;
    let bob = env.register("bob", "phone").await;
    let channel = env.direct(&alice, &bob).await;

    // Sends in flight at once, from both sides, over both kinds of
    // transport; every answer is an acknowledgement.
    let conn = Arc::new(env.connect(&alice, Encoding::Binary).await);
    let bob_http = env.as_user(&bob);
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..FROM_ALICE {
        let conn = Arc::clone(&conn);
        sends.spawn(async move {
            let cmid = format!("alice-{i}");
            let body = format!("from alice {i}");
            let ack = conn.call(&send_text(channel, &cmid, &body)).await;
            (cmid, body, ack)
        });
    }
    for i in 0..FROM_BOB {
        let http = bob_http.clone();
        sends.spawn(async move {
            let cmid = format!("bob-{i}");
            let body = format!("from bob {i}");
            let ack = http.call(&send_text(channel, &cmid, &body)).await;
            (cmid, body, ack)
        });
    }
    let mut acked: BTreeMap<u64, (String, String, MessageId)> = BTreeMap::new();
    for (cmid, body, ack) in sends.join_all().await {
        let ack = ack.unwrap_or_else(|err| panic!("{cmid}: {err}"));
        assert!(!ack.duplicate);
        let previous = acked.insert(ack.pts, (cmid, body, ack.message_id));
        assert!(previous.is_none(), "two messages with pts {}", ack.pts);
    }
    let total = (FROM_ALICE + FROM_BOB) as u64;
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    let last_acked = *acked.keys().last().unwrap();

    env.server.signal("KILL");
    env.server.wait_exit(Duration::from_secs(30));
    drop(conn);

    env.server = start_server(env.dir.path(), &env.config);
    let alice = env.login_again("alice", &alice).await;
    let http = env.as_user(&alice);
    let head = http
        .call(&GetChannelPts {
            channel_id: channel,
        })
        .await
        .expect("channel pts after the restart");
    assert_eq!(head.pts, last_acked);

    let page = http.call(&history(channel)).await.expect("history");
    assert!(!page.has_more);
    let stored: BTreeMap<u64, (String, String, MessageId)> = page
        .messages
        .iter()
        .map(|m| {
            let Some(Content::Text { text }) = &m.content else {
                panic!("not a text message: {m:?}");
            };
            (m.pts, (m.client_msg_id.clone(), text.clone(), m.message_id))
        })
        .collect();
    assert_eq!(stored, acked);

    let events = all_events_after(&http, channel, 0, 500).await;
    let pts: Vec<u64> = events.iter().map(|e| e.pts).collect();
    assert_eq!(pts, (1..=total).collect::<Vec<_>>());

    // The restarted server goes on from the head.
    let next = http
        .call(&send_text(channel, "after-restart", "still here"))
        .await
        .expect("send after the restart");
    assert_eq!(next.pts, last_acked + 1);
    // And a resend of an acknowledged id is still recognised.
    let again = http
        .call(&send_text(channel, "alice-0", "from alice 0"))
        .await
        .expect("resend");
    assert!(again.duplicate);
    let (_, _, id) = acked.values().find(|(c, _, _)| c == "alice-0").unwrap();
    assert_eq!(again.message_id, *id);
}

// ---------------------------------------------------------------------------
// 5. The channel list

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_list_orders_pins_hides_mutes_and_counts_across_reconnects() {
    let env = Env::start("");
    let alice = env.register("alice", "laptop").await;
    let bob = env.register("bob", "phone").await;
    let carol = env.register("carol", "phone").await;
    let dave = env.register("dave", "phone").await;
    let with_bob = env.direct(&alice, &bob).await;
    let with_carol = env.direct(&alice, &carol).await;
    let with_dave = env.direct(&alice, &dave).await;

    // Activity at distinct times: Bob's channel is the oldest, Dave's the
    // newest.
    let mut unread = BTreeMap::new();
    for (peer, channel, count) in [
        (&bob, with_bob, 1u64),
        (&carol, with_carol, 2),
        (&dave, with_dave, 3),
    ] {
        for i in 0..count {
            env.as_user(peer)
                .call(&send_text(channel, &format!("m{i}"), &format!("hi {i}")))
                .await
                .expect("send");
        }
        unread.insert(channel, count);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    let conn = env.connect(&alice, Encoding::Json).await;
    let list = conn.call(&ChannelList::default()).await.expect("list");
    assert_eq!(
        channel_ids(&list.channels),
        vec![with_dave, with_carol, with_bob],
        "newest activity first"
    );
    conn.call(&ChannelPin {
        channel_id: with_bob,
        pinned: true,
    })
    .await
    .expect("pin");
    conn.call(&ChannelHide {
        channel_id: with_carol,
    })
    .await
    .expect("hide");
    conn.call(&ChannelMute {
        channel_id: with_dave,
        muted: true,
    })
    .await
    .expect("mute");
    // Reading moves the channel's pts but is not activity.
    let cursor = conn
        .call(&ReadPts {
            channel_id: with_dave,
            pts: 1,
        })
        .await
        .expect("read");
    assert_eq!(cursor.unread_count, 2);
    unread.insert(with_dave, 2);
    conn.close().await;

    let conn = env.connect(&alice, Encoding::Binary).await;
    let list = conn.call(&ChannelList::default()).await.expect("list");
    assert_eq!(
        channel_ids(&list.channels),
        vec![with_bob, with_dave],
        "pinned first, then by activity; hidden left out: {list:#?}"
    );
    let all = conn
        .call(&ChannelList {
            include_hidden: true,
        })
        .await
        .expect("list with hidden");
    assert_eq!(
        channel_ids(&all.channels),
        vec![with_bob, with_dave, with_carol]
    );
    for (channel, peer, pinned, hidden, muted, last_text) in [
        (with_bob, &bob, true, false, false, "hi 0"),
        (with_carol, &carol, false, true, false, "hi 1"),
        (with_dave, &dave, false, false, true, "hi 2"),
    ] {
        let view = find(&all.channels, channel);
        assert_eq!(view.peer_user_id, Some(peer.user_id), "{view:?}");
        assert_eq!(
            (view.pinned, view.hidden, view.muted),
            (pinned, hidden, muted),
            "{view:?}"
        );
        assert_eq!(view.unread_count, unread[&channel], "{view:?}");
        let last = view.last_message.as_ref().expect("a last message");
        assert_eq!(last.sender_id, peer.user_id);
        assert_eq!(last.content, Some(text(last_text)), "{view:?}");
    }
    assert_eq!(find(&all.channels, with_dave).read_pts, 1);
    // A muted channel still delivers and counts.
    let mut conn = conn;
    env.as_user(&dave)
        .call(&send_text(with_dave, "m-muted", "still delivered"))
        .await
        .expect("send");
    let event = next_channel_event(&mut conn, "alice").await;
    assert_eq!(event.name, "message/new");
    assert_eq!(event.channel_id, Some(with_dave));

    // A new message brings the hidden channel back, on top of the unpinned.
    env.as_user(&carol)
        .call(&send_text(with_carol, "m-back", "I am back"))
        .await
        .expect("send");
    let event = next_channel_event(&mut conn, "alice").await;
    assert_eq!(event.name, "message/new");
    assert_eq!(event.channel_id, Some(with_carol));
    conn.close().await;

    let conn = env.connect(&alice, Encoding::Json).await;
    let list = conn.call(&ChannelList::default()).await.expect("list");
    assert_eq!(
        channel_ids(&list.channels),
        vec![with_bob, with_carol, with_dave],
        "{list:#?}"
    );
    let back = find(&list.channels, with_carol);
    assert!(!back.hidden);
    assert_eq!(back.unread_count, 3);
    assert_eq!(
        back.last_message.as_ref().and_then(|m| m.content.clone()),
        Some(text("I am back"))
    );
    let muted = find(&list.channels, with_dave);
    assert!(muted.muted);
    assert_eq!(muted.unread_count, 3);
    assert!(find(&list.channels, with_bob).pinned);
    // The peers' view is untouched by Alice's flags.
    let theirs = env
        .as_user(&carol)
        .call(&ChannelList::default())
        .await
        .expect("carol's list");
    let view = find(&theirs.channels, with_carol);
    assert!(!view.pinned && !view.hidden && !view.muted, "{view:?}");
    assert_eq!(view.unread_count, 0, "her own messages are not unread");
    conn.close().await;
}

// ---------------------------------------------------------------------------
// 6. Search

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_words_only_in_the_callers_channels() {
    let env = Env::start("");
    let alice = env.register("alice", "laptop").await;
    let bob = env.register("bob", "phone").await;
    let carol = env.register("carol", "laptop").await;
    let dave = env.register("dave", "phone").await;
    let eve = env.register("eve", "phone").await;
    let ab = env.direct(&alice, &bob).await;
    let cd = env.direct(&carol, &dave).await;

    let conn = env.connect(&alice, Encoding::Binary).await;
    let report = conn
        .call(&send_text(ab, "s1", "the quarterly zebra report"))
        .await
        .expect("send");
    conn.call(&send_text(ab, "s2", "lunch at noon?"))
        .await
        .expect("send");
    let crossing = env
        .as_user(&carol)
        .call(&send_text(cd, "s1", "zebra crossing"))
        .await
        .expect("send");

    let found = conn.call(&search("zebra", None)).await.expect("search");
    assert_eq!(texts(&found.messages), vec!["the quarterly zebra report"]);
    assert_eq!(found.messages[0].message_id, report.message_id);
    assert_eq!(found.messages[0].channel_id, ab);
    for (who, grant, expected) in [
        ("bob", &bob, "the quarterly zebra report"),
        ("carol", &carol, "zebra crossing"),
        ("dave", &dave, "zebra crossing"),
    ] {
        let found = env
            .as_user(grant)
            .call(&search("zebra", None))
            .await
            .expect("search");
        assert_eq!(texts(&found.messages), vec![expected], "{who}");
    }
    let found = env
        .as_user(&carol)
        .call(&search("zebra", None))
        .await
        .unwrap();
    assert_eq!(found.messages[0].message_id, crossing.message_id);
    let found = env
        .as_user(&eve)
        .call(&search("zebra", None))
        .await
        .expect("search");
    assert!(found.messages.is_empty(), "{found:?}");

    // Case and word order do not matter; every word must match.
    let found = conn
        .call(&search("Report ZEBRA", None))
        .await
        .expect("search");
    assert_eq!(texts(&found.messages), vec!["the quarterly zebra report"]);
    let found = env
        .as_user(&carol)
        .call(&search("zebra report", None))
        .await
        .expect("search");
    assert!(found.messages.is_empty(), "{found:?}");

    // Within a channel: one's own, yes; another's, refused.
    let found = conn.call(&search("zebra", Some(ab))).await.expect("search");
    assert_eq!(found.messages.len(), 1);
    let err = conn.call(&search("zebra", Some(cd))).await;
    assert_eq!(code_of(err, "search in another's channel"), "not_member");
    let err = env.as_user(&eve).call(&search("crossing", Some(cd))).await;
    assert_eq!(code_of(err, "search in another's channel"), "not_member");

    // A revoked message is no longer found, by anyone.
    conn.call(&MessageRevoke {
        channel_id: ab,
        message_id: report.message_id,
    })
    .await
    .expect("revoke");
    for grant in [&alice, &bob] {
        let found = env
            .as_user(grant)
            .call(&search("zebra", None))
            .await
            .expect("search");
        assert!(found.messages.is_empty(), "{found:?}");
        let found = env
            .as_user(grant)
            .call(&search("quarterly", Some(ab)))
            .await
            .expect("search");
        assert!(found.messages.is_empty(), "{found:?}");
    }
    let found = env
        .as_user(&dave)
        .call(&search("zebra", None))
        .await
        .expect("search");
    assert_eq!(texts(&found.messages), vec!["zebra crossing"]);
}

// ---------------------------------------------------------------------------
// 7. Permissions and bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_are_refused_and_bad_input_changes_nothing() {
    let env = Env::start("");
    let alice = env.register("alice", "laptop").await;
    let bob = env.register("bob", "phone").await;
    let eve = env.register("eve", "laptop").await;
    let channel = env.direct(&alice, &bob).await;
    let message = env
        .as_user(&alice)
        .call(&send_text(channel, "p1", "members only"))
        .await
        .expect("send");
    let head = message.pts;

    // An outsider, over both HTTP and the WebSocket; a channel that does
    // not exist looks the same.
    let eve_http = env.as_user(&eve);
    let eve_ws = env.connect(&eve, Encoding::Binary).await;
    for channel in [channel, ChannelId::new(987_654)] {
        let checks: Vec<(&str, Result<serde_json::Value, ClientError>)> = vec![
            (
                "send over HTTP",
                eve_http
                    .call(&send_text(channel, "e1", "let me in"))
                    .await
                    .map(|r| json!(r)),
            ),
            (
                "send over WS",
                eve_ws
                    .call(&send_text(channel, "e2", "let me in"))
                    .await
                    .map(|r| json!(r)),
            ),
            (
                "history",
                eve_ws.call(&history(channel)).await.map(|r| json!(r)),
            ),
            (
                "get_difference",
                eve_http
                    .call(&difference(channel, 0))
                    .await
                    .map(|r| json!(r)),
            ),
            (
                "react",
                eve_ws
                    .call(&ReactionAdd(ReactionChange {
                        channel_id: channel,
                        message_id: message.message_id,
                        emoji: "👍".to_owned(),
                    }))
                    .await
                    .map(|r| json!(r)),
            ),
            (
                "revoke",
                eve_ws
                    .call(&MessageRevoke {
                        channel_id: channel,
                        message_id: message.message_id,
                    })
                    .await
                    .map(|r| json!(r)),
            ),
            (
                "read_pts",
                eve_http
                    .call(&ReadPts {
                        channel_id: channel,
                        pts: 1,
                    })
                    .await
                    .map(|r| json!(r)),
            ),
            (
                "unread count",
                eve_ws
                    .call(&UnreadCount {
                        channel_id: channel,
                    })
                    .await
                    .map(|r| json!(r)),
            ),
            (
                "channel pts",
                eve_ws
                    .call(&GetChannelPts {
                        channel_id: channel,
                    })
                    .await
                    .map(|r| json!(r)),
            ),
            (
                "pin",
                eve_http
                    .call(&ChannelPin {
                        channel_id: channel,
                        pinned: true,
                    })
                    .await
                    .map(|r| json!(r)),
            ),
        ];
        for (what, result) in checks {
            assert_eq!(code_of(result, what), "not_member", "{what} in {channel}");
        }
    }
    let eve_list = eve_http
        .call(&ChannelList {
            include_hidden: true,
        })
        .await
        .expect("list");
    assert!(eve_list.channels.is_empty(), "{eve_list:?}");

    // Bad content from a member, over both transports.
    let alice_ws = env.connect(&alice, Encoding::Json).await;
    let alice_http = env.as_user(&alice);
    let bad: Vec<(&str, Content)> = vec![
        ("empty text", text("")),
        ("blank text", text("   ")),
        (
            "system content",
            Content::System {
                text: "alice was made admin".to_owned(),
            },
        ),
        (
            "latitude 100",
            Content::Location {
                latitude: 100.0,
                longitude: 10.0,
                title: None,
                address: None,
            },
        ),
        (
            "longitude -181",
            Content::Location {
                latitude: 10.0,
                longitude: -181.0,
                title: None,
                address: None,
            },
        ),
    ];
    for (i, (what, content)) in bad.into_iter().enumerate() {
        let request = MessageSend {
            channel_id: channel,
            client_msg_id: format!("bad-{i}"),
            content,
            reply_to: None,
            mentions: None,
        };
        let over_ws = alice_ws.call(&request).await;
        assert_eq!(code_of(over_ws, what), "bad_request", "{what} over WS");
        let over_http = alice_http.call(&request).await;
        assert_eq!(code_of(over_http, what), "bad_request", "{what} over HTTP");
    }
    let err = alice_ws.call(&send_text(channel, "", "no id")).await;
    assert_eq!(code_of(err, "an empty client_msg_id"), "bad_request");
    let err = alice_ws
        .call_raw(
            "message/send",
            json!({
                "channel_id": channel,
                "client_msg_id": "raw-1",
                "content": { "type": "hologram", "text": "hi" },
            }),
        )
        .await;
    assert_eq!(code_of(err, "an unknown content type"), "bad_request");

    // A valid location goes through.
    let place = alice_ws
        .call(&MessageSend {
            channel_id: channel,
            client_msg_id: "place".to_owned(),
            content: Content::Location {
                latitude: -90.0,
                longitude: 180.0,
                title: Some("the pole".to_owned()),
                address: None,
            },
            reply_to: None,
            mentions: None,
        })
        .await
        .expect("a valid location");
    assert_eq!(place.pts, head + 1);
    let head = place.pts;

    // Nothing refused left a trace.
    let page = alice_http.call(&history(channel)).await.expect("history");
    let ids: Vec<&str> = page
        .messages
        .iter()
        .map(|m| m.client_msg_id.as_str())
        .collect();
    assert_eq!(ids, vec!["p1", "place"]);
    let pts = alice_ws
        .call(&GetChannelPts {
            channel_id: channel,
        })
        .await
        .expect("channel pts");
    assert_eq!(pts.pts, head);

    // Sync from beyond the head cannot be served; from the head it is empty.
    for ahead in [head + 1, head + 1_000, u64::MAX] {
        let err = alice_ws.call(&difference(channel, ahead)).await;
        assert_eq!(
            code_of(err, "get_difference ahead of the head"),
            "resync_required",
            "last_pts {ahead}"
        );
    }
    let diff = alice_ws
        .call(&difference(channel, head))
        .await
        .expect("get_difference at the head");
    assert!(diff.events.is_empty());
    assert_eq!(diff.current_pts, head);
    assert!(!diff.has_more);

    // The member may react; the outsider's refusal left no reaction.
    let reacted = env
        .as_user(&bob)
        .call(&ReactionAdd(ReactionChange {
            channel_id: channel,
            message_id: message.message_id,
            emoji: "👍".to_owned(),
        }))
        .await
        .expect("react");
    assert_eq!(reacted.pts, Some(head + 1));
}

/// Devices that ask for the same page get the same answer, and the page
/// asked for again after a revoke or a pin shows the change: a page the
/// server keeps for devices that come back together never outlives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_asked_for_again_after_a_revoke_or_pin_shows_the_change() {
    use conclave_client::api::messaging::{MessagePin, MessagePinChange};

    let env = Env::start("");
    let alice = env.register("alice", "laptop").await;
    let bob = env.register("bob", "laptop").await;
    let bob_phone = env.login("bob", "phone").await;
    let channel = env.direct(&alice, &bob).await;
    let alice_http = env.as_user(&alice);
    let mut sent = Vec::new();
    for i in 0..3 {
        let text = format!("text {i}");
        let message = alice_http
            .call(&send_text(channel, &format!("m{i}"), &text))
            .await
            .expect("message/send");
        sent.push(message);
    }
    let (laptop, phone) = (env.as_user(&bob), env.as_user(&bob_phone));
    let page = |http: HttpClient| async move {
        let diff = http
            .call(&difference(channel, 0))
            .await
            .expect("sync/get_difference");
        serde_json::to_value(diff).unwrap()
    };

    let first = page(laptop.clone()).await;
    assert_eq!(first["events"].as_array().map(Vec::len), Some(3));
    assert_eq!(page(phone.clone()).await, first, "the same page for both");

    alice_http
        .call(&MessageRevoke {
            channel_id: channel,
            message_id: sent[1].message_id,
        })
        .await
        .expect("message/revoke");
    let revoked = page(phone.clone()).await;
    assert_eq!(revoked["events"].as_array().map(Vec::len), Some(4));
    assert_eq!(revoked["events"][1]["body"]["revoked"], json!(true));
    assert_eq!(revoked["events"][1]["body"]["content"], json!(null));
    assert_eq!(revoked["current_pts"], json!(4));

    alice_http
        .call(&MessagePin(MessagePinChange {
            channel_id: channel,
            message_id: sent[2].message_id,
        }))
        .await
        .expect("message/pin");
    let pinned = page(laptop).await;
    assert_eq!(pinned["events"].as_array().map(Vec::len), Some(5));
    assert_eq!(pinned["events"][2]["body"]["pinned"], json!(true));
    assert_eq!(pinned["events"][1]["body"]["revoked"], json!(true));
}

//! Acceptance tests of the social graph against the real `conclave` binary,
//! through the Rust SDK: friend requests across devices and offline
//! catch-up, the request lifecycle, bad input, the direct-message
//! permission matrix, the blacklist and presence, privacy settings, user
//! search and share cards.
//!
//! Every test starts its own server in its own temporary directory.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use conclave_client::api::account::{
    Audience, AuthGrant, ByQrcode, Privacy, PrivacyGet, PrivacyUpdate, ShareCard, UserSearch,
};
use conclave_client::api::contacts::{
    BlacklistAdd, BlacklistCheck, BlacklistList, BlacklistRemove, FriendAccept, FriendApply,
    FriendCheck, FriendList, FriendPending, FriendPendingResponse, FriendRecall, FriendReject,
    FriendRemove, FriendRequestView, FriendSetAlias, FriendStatus, FriendView, RequestStatus,
};
use conclave_client::api::events;
use conclave_client::api::messaging::{
    Content, DirectGetOrCreate, GetChannelPts, GetInboxDifference, InboxEntry, MessageSend,
};
use conclave_client::api::presence::{PresenceStatus, StatusBatchGet, StatusGet, Subscribe};
use conclave_client::{ClientError, Connection, Encoding, Event, HttpClient};
use conclave_core::{ChannelId, UserId};
use serde_json::json;
use support::Server;

const PASSWORD: &str = "correct horse battery staple";
/// How long a test waits for something that should happen promptly.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test listens to conclude that an event is not coming; a
/// pushed event follows the request that caused it within milliseconds.
const QUIET_PERIOD: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Harness

/// A test's server and its directory (the server is stopped first).
struct Env {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = support::write_config(dir.path(), "");
        let server = support::start_server(dir.path(), &config);
        Env { server, _dir: dir }
    }

    fn base(&self) -> String {
        format!("http://{}", self.server.http)
    }

    fn as_user(&self, grant: &AuthGrant) -> HttpClient {
        HttpClient::new(&self.base()).with_token(&grant.token)
    }

    async fn register(&self, username: &str) -> AuthGrant {
        HttpClient::new(&self.base())
            .register(username, PASSWORD, Some("laptop"))
            .await
            .unwrap_or_else(|err| panic!("register {username}: {err}"))
    }

    /// Logs a user in as a new device.
    async fn login(&self, username: &str, device: &str) -> AuthGrant {
        HttpClient::new(&self.base())
            .login(username, PASSWORD, Some(device))
            .await
            .unwrap_or_else(|err| panic!("log {username} in on {device}: {err}"))
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

    /// `from` asks `to`, who accepts; returns their direct channel.
    async fn befriend(&self, from: &AuthGrant, to: &AuthGrant) -> ChannelId {
        self.as_user(from)
            .call(&apply(to.user_id, None))
            .await
            .expect("contact/friend/apply");
        self.as_user(to)
            .call(&FriendAccept {
                user_id: from.user_id,
            })
            .await
            .expect("contact/friend/accept")
            .channel_id
    }

    async fn block(&self, blocker: &AuthGrant, target: &AuthGrant) {
        self.as_user(blocker)
            .call(&BlacklistAdd {
                user_id: target.user_id,
            })
            .await
            .expect("contact/blacklist/add");
    }

    async fn set_privacy(&self, user: &AuthGrant, update: PrivacyUpdate) -> Privacy {
        self.as_user(user)
            .call(&update)
            .await
            .expect("account/privacy/update")
    }

    async fn pending(&self, user: &AuthGrant) -> FriendPendingResponse {
        self.as_user(user)
            .call(&FriendPending {})
            .await
            .expect("contact/friend/pending")
    }

    async fn friends(&self, user: &AuthGrant) -> Vec<FriendView> {
        self.as_user(user)
            .call(&FriendList {})
            .await
            .expect("contact/friend/list")
            .friends
    }

    async fn check(&self, user: &AuthGrant, other: &AuthGrant) -> FriendStatus {
        self.as_user(user)
            .call(&FriendCheck {
                user_id: other.user_id,
            })
            .await
            .expect("contact/friend/check")
    }

    /// The user's whole inbox, in one page.
    async fn inbox(&self, user: &AuthGrant) -> Vec<InboxEntry> {
        let diff = self
            .as_user(user)
            .call(&GetInboxDifference {
                last_pts: 0,
                limit: Some(1_000),
            })
            .await
            .expect("sync/get_inbox_difference");
        assert!(!diff.has_more);
        let pts: Vec<u64> = diff.events.iter().map(|e| e.pts).collect();
        let contiguous: Vec<u64> = (1..=diff.current_pts).collect();
        assert_eq!(pts, contiguous, "inbox pts are contiguous up to the head");
        diff.events
    }

    async fn status(&self, viewer: &AuthGrant, user: &AuthGrant) -> PresenceStatus {
        let status = self
            .as_user(viewer)
            .call(&StatusGet {
                user_id: user.user_id,
            })
            .await
            .expect("presence/status/get");
        assert_eq!(status.user_id, user.user_id);
        status
    }

    async fn channel_pts(&self, member: &AuthGrant, channel: ChannelId) -> u64 {
        self.as_user(member)
            .call(&GetChannelPts {
                channel_id: channel,
            })
            .await
            .expect("sync/get_channel_pts")
            .pts
    }
}

fn apply(user: UserId, message: Option<&str>) -> FriendApply {
    FriendApply {
        user_id: user,
        message: message.map(str::to_owned),
    }
}

fn send_text(channel: ChannelId, client_msg_id: &str) -> MessageSend {
    MessageSend {
        channel_id: channel,
        client_msg_id: client_msg_id.to_owned(),
        content: Content::Text {
            text: format!("hello from {client_msg_id}"),
        },
        reply_to: None,
        mentions: None,
    }
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

/// The next event named `name`, skipping other pushes.
async fn next_event(conn: &mut Connection, who: &str, name: &str) -> Event {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.next_event_timeout(left).await {
            Ok(Some(event)) if event.name == name => return event,
            Ok(Some(_)) => {}
            Ok(None) => panic!("{who}: the connection closed: {:?}", conn.close_reason()),
            Err(_) => panic!("{who}: no `{name}` event within {STEP_TIMEOUT:?}"),
        }
    }
}

/// Fails if an event named `name` arrives within the quiet period.
async fn assert_no_event(conn: &mut Connection, who: &str, name: &str) {
    let deadline = tokio::time::Instant::now() + QUIET_PERIOD;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match conn.next_event_timeout(left).await {
            Ok(Some(event)) if event.name == name => {
                panic!("{who} got an unexpected event: {event:?}")
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("{who}: the connection closed: {:?}", conn.close_reason()),
            Err(_) => return,
        }
    }
}

/// The next live inbox entry, which must be of `kind`.
async fn next_inbox(conn: &mut Connection, who: &str, kind: &str) -> InboxEntry {
    let event = next_event(conn, who, events::INBOX_NEW).await;
    let entry: InboxEntry = event.body_as().unwrap_or_else(|err| panic!("{who}: {err}"));
    assert_eq!(entry.event, kind, "{who}: {entry:?}");
    entry
}

/// The next `presence/changed` event, which must be about `user`.
async fn next_presence(conn: &mut Connection, who: &str, user: &AuthGrant, online: bool) {
    let event = next_event(conn, who, events::PRESENCE_CHANGED).await;
    assert_eq!(
        event.body()["user_id"],
        json!(user.user_id),
        "{who}: {event:?}"
    );
    assert_eq!(event.body()["online"], json!(online), "{who}: {event:?}");
}

async fn subscribe(conn: &Connection, user: &AuthGrant) -> PresenceStatus {
    let list = conn
        .call(&Subscribe {
            user_ids: vec![user.user_id],
        })
        .await
        .expect("presence/subscribe");
    assert_eq!(list.statuses.len(), 1, "{list:?}");
    list.statuses[0].clone()
}

fn assert_hidden(status: &PresenceStatus, what: &str) {
    assert!(
        !status.online && status.last_seen_ms.is_none(),
        "{what}: presence should read as offline, never seen: {status:?}"
    );
}

fn assert_online(status: &PresenceStatus, what: &str) {
    assert!(
        status.online && status.last_seen_ms.is_some(),
        "{what}: should be online: {status:?}"
    );
}

fn request_of(entry: &InboxEntry) -> FriendRequestView {
    serde_json::from_value(entry.body.clone())
        .unwrap_or_else(|err| panic!("{} body is not a request: {err}", entry.event))
}

fn check_is(status: &FriendStatus, friend: bool, sent: bool, received: bool, what: &str) {
    assert_eq!(
        (
            status.is_friend,
            status.request_sent,
            status.request_received
        ),
        (friend, sent, received),
        "{what}: {status:?}"
    );
}

// ---------------------------------------------------------------------------
// 1. Friend requests across devices

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friend_request_reaches_every_device_and_an_offline_device_catches_up() {
    let env = Env::start();
    let alice = env.register("alice").await;
    let alice_phone = env.login("alice", "phone").await;
    let bob = env.register("bob").await;
    let bob_phone = env.login("bob", "phone").await;
    // Never connected: it catches up by sync at the end.
    let bob_tablet = env.login("bob", "tablet").await;

    let mut a1 = env.connect(&alice, Encoding::Json).await;
    let mut a2 = env.connect(&alice_phone, Encoding::Binary).await;
    let mut b1 = env.connect(&bob, Encoding::Json).await;
    let mut b2 = env.connect(&bob_phone, Encoding::Binary).await;

    // Alice asks from her laptop's live session.
    let applied = a1
        .call(&apply(
            bob.user_id,
            Some("hi bob, it's alice from the book club"),
        ))
        .await
        .expect("apply");
    assert_eq!(applied.channel_id, None);
    let request = applied.request.clone();
    assert_eq!(
        (request.from_user_id, request.to_user_id),
        (alice.user_id, bob.user_id)
    );
    assert_eq!(request.status, RequestStatus::Pending);
    assert_eq!(
        request.message.as_deref(),
        Some("hi bob, it's alice from the book club")
    );

    let mut bob_request_pts = None;
    for (who, conn) in [("bob's laptop", &mut b1), ("bob's phone", &mut b2)] {
        let entry = next_inbox(conn, who, events::FRIEND_REQUEST).await;
        assert_eq!(request_of(&entry), request, "{who}");
        assert!(
            bob_request_pts.is_none_or(|pts| pts == entry.pts),
            "{who}: one inbox entry, one pts"
        );
        bob_request_pts = Some(entry.pts);
    }
    let entry = next_inbox(&mut a2, "alice's phone", events::FRIEND_REQUEST).await;
    assert_eq!(request_of(&entry), request);
    let alice_request_pts = entry.pts;
    // The asking session has its answer and no echo.
    assert_no_event(&mut a1, "alice's laptop", events::INBOX_NEW).await;

    assert_eq!(
        env.pending(&bob).await,
        FriendPendingResponse {
            incoming: vec![request.clone()],
            outgoing: vec![]
        }
    );
    assert_eq!(
        env.pending(&alice).await,
        FriendPendingResponse {
            incoming: vec![],
            outgoing: vec![request.clone()]
        }
    );
    check_is(&env.check(&alice, &bob).await, false, true, false, "alice");
    check_is(&env.check(&bob, &alice).await, false, false, true, "bob");

    // Bob accepts from his laptop over HTTP: every live session hears it.
    let accepted = env
        .as_user(&bob)
        .call(&FriendAccept {
            user_id: alice.user_id,
        })
        .await
        .expect("accept");
    assert_eq!(accepted.user_id, alice.user_id);
    let channel = accepted.channel_id;
    let mut accepted_pts = Vec::new();
    for (who, conn) in [
        ("alice's laptop", &mut a1),
        ("alice's phone", &mut a2),
        ("bob's laptop", &mut b1),
        ("bob's phone", &mut b2),
    ] {
        let entry = next_inbox(conn, who, events::FRIEND_ACCEPTED).await;
        assert_eq!(entry.body["channel_id"], json!(channel), "{who}: {entry:?}");
        let request_body = &entry.body["request"];
        assert_eq!(
            request_body["request_id"],
            json!(request.request_id),
            "{who}"
        );
        assert_eq!(request_body["status"], json!("accepted"), "{who}");
        accepted_pts.push(entry.pts);
    }
    // One entry per user, right after the request's.
    let bob_request_pts = bob_request_pts.unwrap();
    assert_eq!(
        accepted_pts,
        vec![
            alice_request_pts + 1,
            alice_request_pts + 1,
            bob_request_pts + 1,
            bob_request_pts + 1
        ]
    );

    // Both lists show the other, with the direct channel.
    for (who, me, other, username) in [
        ("alice", &alice, &bob, "bob"),
        ("bob", &bob, &alice, "alice"),
    ] {
        let friends = env.friends(me).await;
        assert_eq!(friends.len(), 1, "{who}: {friends:?}");
        let friend = &friends[0];
        assert_eq!(friend.user.user_id, other.user_id, "{who}");
        assert_eq!(friend.user.username, username, "{who}");
        assert!(friend.user.is_friend, "{who}");
        assert_eq!(friend.channel_id, Some(channel), "{who}");
        assert_eq!(friend.alias, None, "{who}");
        check_is(&env.check(me, other).await, true, false, false, who);
        let pending = env.pending(me).await;
        assert!(pending.incoming.is_empty() && pending.outgoing.is_empty());
    }
    // It is the pair's direct channel, usable at once.
    let direct = env
        .as_user(&alice)
        .call(&DirectGetOrCreate {
            user_id: bob.user_id,
        })
        .await
        .expect("direct");
    assert_eq!((direct.channel_id, direct.created), (channel, false));
    env.as_user(&alice)
        .call(&send_text(channel, "first-words"))
        .await
        .expect("a friend may write");

    // The tablet was offline all along: its inbox from 0 tells the story,
    // with the same pts the live devices saw.
    let entries = env.inbox(&bob_tablet).await;
    let friendly: Vec<(&str, u64)> = entries
        .iter()
        .filter(|e| e.event.starts_with("friend/"))
        .map(|e| (e.event.as_str(), e.pts))
        .collect();
    assert_eq!(
        friendly,
        vec![
            (events::FRIEND_REQUEST, bob_request_pts),
            (events::FRIEND_ACCEPTED, bob_request_pts + 1),
        ],
        "{entries:#?}"
    );
    assert_eq!(request_of(&entries[bob_request_pts as usize - 1]), request);
    assert_eq!(
        entries.last().map(|e| e.pts),
        Some(bob_request_pts + 1),
        "nothing after the acceptance"
    );
    // Alice's inbox agrees with what her phone saw.
    let entries = env.inbox(&alice).await;
    let friendly: Vec<(&str, u64)> = entries
        .iter()
        .filter(|e| e.event.starts_with("friend/"))
        .map(|e| (e.event.as_str(), e.pts))
        .collect();
    assert_eq!(
        friendly,
        vec![
            (events::FRIEND_REQUEST, alice_request_pts),
            (events::FRIEND_ACCEPTED, alice_request_pts + 1),
        ]
    );
}

// ---------------------------------------------------------------------------
// 1b. Reject, recall, crossing requests, aliases, removal

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_can_be_rejected_recalled_crossed_and_friends_renamed_and_removed() {
    let env = Env::start();
    let alice = env.register("alice").await;
    let carol = env.register("carol").await;
    let dave = env.register("dave").await;
    let mut alice_ws = env.connect(&alice, Encoding::Json).await;
    let alice_http = env.as_user(&alice);

    let carol_req = env
        .as_user(&carol)
        .call(&apply(alice.user_id, Some("carol here")))
        .await
        .expect("carol applies")
        .request;
    let dave_req = env
        .as_user(&dave)
        .call(&apply(alice.user_id, None))
        .await
        .expect("dave applies")
        .request;
    assert_eq!(dave_req.message, None);
    assert_ne!(carol_req.request_id, dave_req.request_id);
    for expected in [&carol_req, &dave_req] {
        let entry = next_inbox(&mut alice_ws, "alice", events::FRIEND_REQUEST).await;
        assert_eq!(&request_of(&entry), expected);
    }
    // Newest first.
    let pending = env.pending(&alice).await;
    assert_eq!(pending.incoming, vec![dave_req.clone(), carol_req.clone()]);
    assert!(pending.outgoing.is_empty());
    let pending = env.pending(&carol).await;
    assert_eq!(pending.outgoing, vec![carol_req.clone()]);
    assert!(pending.incoming.is_empty());

    // Reject: gone on both sides, and both inboxes say so.
    alice_http
        .call(&FriendReject {
            user_id: carol.user_id,
        })
        .await
        .expect("reject");
    let entry = next_inbox(&mut alice_ws, "alice", events::FRIEND_REJECTED).await;
    assert_eq!(request_of(&entry).request_id, carol_req.request_id);
    assert_eq!(request_of(&entry).status, RequestStatus::Rejected);
    let carol_inbox = env.inbox(&carol).await;
    let last = carol_inbox.last().expect("carol's inbox");
    assert_eq!(last.event, events::FRIEND_REJECTED);
    assert_eq!(request_of(last).request_id, carol_req.request_id);
    assert_eq!(env.pending(&alice).await.incoming, vec![dave_req.clone()]);
    let pending = env.pending(&carol).await;
    assert!(pending.incoming.is_empty() && pending.outgoing.is_empty());
    check_is(
        &env.check(&carol, &alice).await,
        false,
        false,
        false,
        "carol",
    );
    check_is(
        &env.check(&alice, &carol).await,
        false,
        false,
        false,
        "alice",
    );
    let again = alice_http
        .call(&FriendReject {
            user_id: carol.user_id,
        })
        .await;
    assert_eq!(code_of(again, "reject twice"), "not_found");

    // Carol may ask again, then recall.
    let second = env
        .as_user(&carol)
        .call(&apply(alice.user_id, Some("second try")))
        .await
        .expect("apply again after a rejection")
        .request;
    assert_ne!(second.request_id, carol_req.request_id);
    next_inbox(&mut alice_ws, "alice", events::FRIEND_REQUEST).await;
    check_is(
        &env.check(&alice, &carol).await,
        false,
        false,
        true,
        "alice",
    );
    env.as_user(&carol)
        .call(&FriendRecall {
            user_id: alice.user_id,
        })
        .await
        .expect("recall");
    let entry = next_inbox(&mut alice_ws, "alice", events::FRIEND_RECALLED).await;
    assert_eq!(request_of(&entry).request_id, second.request_id);
    assert_eq!(request_of(&entry).status, RequestStatus::Recalled);
    assert_eq!(env.pending(&alice).await.incoming, vec![dave_req.clone()]);
    assert!(env.pending(&carol).await.outgoing.is_empty());
    check_is(
        &env.check(&alice, &carol).await,
        false,
        false,
        false,
        "alice",
    );
    let again = env
        .as_user(&carol)
        .call(&FriendRecall {
            user_id: alice.user_id,
        })
        .await;
    assert_eq!(code_of(again, "recall twice"), "not_found");
    // A recalled request cannot be accepted.
    let late = alice_http
        .call(&FriendAccept {
            user_id: carol.user_id,
        })
        .await;
    assert_eq!(code_of(late, "accept a recalled request"), "not_found");
    assert!(env.friends(&alice).await.is_empty());

    // Crossing: Alice asks Dave, who already asked her: that accepts.
    let crossed = alice_http
        .call(&apply(dave.user_id, Some("oh, you asked first")))
        .await
        .expect("crossing apply");
    let channel = crossed.channel_id.expect("the crossing apply accepted");
    assert_eq!(crossed.request.request_id, dave_req.request_id);
    assert_eq!(crossed.request.status, RequestStatus::Accepted);
    let entry = next_inbox(&mut alice_ws, "alice", events::FRIEND_ACCEPTED).await;
    assert_eq!(entry.body["channel_id"], json!(channel));
    for (who, me, other) in [("alice", &alice, &dave), ("dave", &dave, &alice)] {
        let friends = env.friends(me).await;
        assert_eq!(friends.len(), 1, "{who}: {friends:?}");
        assert_eq!(friends[0].user.user_id, other.user_id, "{who}");
        assert_eq!(friends[0].channel_id, Some(channel), "{who}");
        let pending = env.pending(me).await;
        assert!(pending.incoming.is_empty() && pending.outgoing.is_empty());
        check_is(&env.check(me, other).await, true, false, false, who);
    }
    assert_eq!(env.direct(&dave, &alice).await, channel);

    // Aliases are private to the one who sets them.
    alice_http
        .call(&FriendSetAlias {
            user_id: dave.user_id,
            alias: Some("Dee".to_owned()),
        })
        .await
        .expect("set alias");
    let entry = next_inbox(&mut alice_ws, "alice", events::FRIEND_ALIAS).await;
    assert_eq!(entry.body["alias"], json!("Dee"));
    assert_eq!(env.friends(&alice).await[0].alias.as_deref(), Some("Dee"));
    assert_eq!(env.friends(&dave).await[0].alias, None);
    alice_http
        .call(&FriendSetAlias {
            user_id: dave.user_id,
            alias: None,
        })
        .await
        .expect("clear alias");
    let entry = next_inbox(&mut alice_ws, "alice", events::FRIEND_ALIAS).await;
    assert_eq!(entry.body["alias"], json!(null));
    assert_eq!(env.friends(&alice).await[0].alias, None);
    let stranger = alice_http
        .call(&FriendSetAlias {
            user_id: carol.user_id,
            alias: Some("Caz".to_owned()),
        })
        .await;
    assert_eq!(code_of(stranger, "alias for a non-friend"), "not_found");

    // Removal ends it on both sides; the channel and its history stay.
    env.as_user(&dave)
        .call(&FriendRemove {
            user_id: alice.user_id,
        })
        .await
        .expect("remove");
    let entry = next_inbox(&mut alice_ws, "alice", events::FRIEND_REMOVED).await;
    assert_eq!(
        entry.body["user_ids"],
        json!([dave.user_id, alice.user_id]),
        "{entry:?}"
    );
    for (who, me, other) in [("alice", &alice, &dave), ("dave", &dave, &alice)] {
        assert!(env.friends(me).await.is_empty(), "{who}");
        check_is(&env.check(me, other).await, false, false, false, who);
    }
    let again = alice_http
        .call(&FriendRemove {
            user_id: dave.user_id,
        })
        .await;
    assert_eq!(code_of(again, "remove a non-friend"), "not_found");
    assert_eq!(env.direct(&alice, &dave).await, channel);
    // And they may start over.
    let fresh = alice_http
        .call(&apply(dave.user_id, None))
        .await
        .expect("apply after removal");
    assert_eq!(fresh.channel_id, None);
    assert_eq!(env.pending(&dave).await.incoming, vec![fresh.request]);
}

// ---------------------------------------------------------------------------
// 2. Bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_friend_requests_are_refused_with_a_code_and_change_nothing() {
    let env = Env::start();
    let alice = env.register("alice").await;
    let bob = env.register("bob").await;
    let carol = env.register("carol").await;
    let dave = env.register("dave").await;
    let http = env.as_user(&alice);
    let request = http
        .call(&apply(bob.user_id, Some("first")))
        .await
        .expect("apply")
        .request;
    let channel = env.befriend(&alice, &carol).await;
    let alice_head = env.inbox(&alice).await.len();
    let bob_head = env.inbox(&bob).await.len();

    let cases: Vec<(&str, Result<serde_json::Value, ClientError>, &str)> = vec![
        (
            "apply to an unknown user",
            http.call(&apply(UserId::new(987_654), Some("hello?")))
                .await
                .map(|r| json!(r)),
            "not_found",
        ),
        (
            "apply to oneself",
            http.call(&apply(alice.user_id, None))
                .await
                .map(|r| json!(r)),
            "bad_request",
        ),
        (
            "apply twice",
            http.call(&apply(bob.user_id, Some("again")))
                .await
                .map(|r| json!(r)),
            "conflict",
        ),
        (
            "apply to a friend",
            http.call(&apply(carol.user_id, None))
                .await
                .map(|r| json!(r)),
            "conflict",
        ),
        (
            "a friend applies back",
            env.as_user(&carol)
                .call(&apply(alice.user_id, None))
                .await
                .map(|r| json!(r)),
            "conflict",
        ),
        (
            "accept with nothing pending",
            env.as_user(&carol)
                .call(&FriendAccept {
                    user_id: bob.user_id,
                })
                .await
                .map(|r| json!(r)),
            "not_found",
        ),
        (
            "accept one's own outgoing request",
            http.call(&FriendAccept {
                user_id: bob.user_id,
            })
            .await
            .map(|r| json!(r)),
            "not_found",
        ),
        (
            "accept from an unknown user",
            http.call(&FriendAccept {
                user_id: UserId::new(987_654),
            })
            .await
            .map(|r| json!(r)),
            "not_found",
        ),
        (
            "a 257-byte message",
            http.call(&apply(dave.user_id, Some(&"x".repeat(257))))
                .await
                .map(|r| json!(r)),
            "payload_too_large",
        ),
    ];
    for (what, result, expected) in cases {
        assert_eq!(code_of(result, what), expected, "{what}");
    }

    // Nothing changed.
    assert_eq!(
        env.pending(&alice).await,
        FriendPendingResponse {
            incoming: vec![],
            outgoing: vec![request.clone()]
        }
    );
    assert_eq!(env.pending(&bob).await.incoming, vec![request.clone()]);
    let pending = env.pending(&dave).await;
    assert!(pending.incoming.is_empty() && pending.outgoing.is_empty());
    let friends = env.friends(&alice).await;
    assert_eq!(friends.len(), 1, "{friends:?}");
    assert_eq!(
        (friends[0].user.user_id, friends[0].channel_id),
        (carol.user_id, Some(channel))
    );
    assert!(env.friends(&bob).await.is_empty());
    check_is(&env.check(&alice, &bob).await, false, true, false, "bob");
    check_is(
        &env.check(&alice, &carol).await,
        true,
        false,
        false,
        "carol",
    );
    check_is(&env.check(&alice, &dave).await, false, false, false, "dave");
    assert_eq!(
        env.inbox(&alice).await.len(),
        alice_head,
        "no inbox entries"
    );
    assert_eq!(env.inbox(&bob).await.len(), bob_head, "no inbox entries");

    // The limit itself is fine.
    let ok = http
        .call(&apply(dave.user_id, Some(&"x".repeat(256))))
        .await
        .expect("a 256-byte message");
    assert_eq!(ok.request.message.map(|m| m.len()), Some(256));
}

// ---------------------------------------------------------------------------
// 3. Direct messages: blocks and privacy

#[derive(Debug, Clone, Copy)]
enum Relationship {
    Friend,
    Stranger,
    PeerBlockedMe,
    IBlockedPeer,
}

struct DirectCase {
    relationship: Relationship,
    /// The peer's `direct_messages` setting.
    peer_allows: Audience,
    /// What the caller's writes meet: `None` when allowed.
    expected: Option<&'static str>,
    /// What the peer's writes back meet (the caller allows everyone).
    reverse: Option<&'static str>,
}

const DIRECT_CASES: &[DirectCase] = &[
    DirectCase {
        relationship: Relationship::Friend,
        peer_allows: Audience::Everyone,
        expected: None,
        reverse: None,
    },
    DirectCase {
        relationship: Relationship::Friend,
        peer_allows: Audience::Friends,
        expected: None,
        reverse: None,
    },
    DirectCase {
        relationship: Relationship::Stranger,
        peer_allows: Audience::Everyone,
        expected: None,
        reverse: None,
    },
    DirectCase {
        relationship: Relationship::Stranger,
        peer_allows: Audience::Friends,
        expected: Some("privacy_restricted"),
        reverse: None,
    },
    DirectCase {
        relationship: Relationship::PeerBlockedMe,
        peer_allows: Audience::Everyone,
        expected: Some("blocked"),
        reverse: Some("blocked"),
    },
    DirectCase {
        relationship: Relationship::PeerBlockedMe,
        peer_allows: Audience::Friends,
        expected: Some("blocked"),
        reverse: Some("blocked"),
    },
    DirectCase {
        relationship: Relationship::IBlockedPeer,
        peer_allows: Audience::Everyone,
        expected: Some("blocked"),
        reverse: Some("blocked"),
    },
    DirectCase {
        relationship: Relationship::IBlockedPeer,
        peer_allows: Audience::Friends,
        expected: Some("blocked"),
        reverse: Some("blocked"),
    },
];

/// Opens (or refuses) the direct channel and sends in it, checking the
/// outcome and that a refusal leaves the channel's pts where it was.
async fn try_direct(
    env: &Env,
    me: &AuthGrant,
    peer: &AuthGrant,
    channel: ChannelId,
    expected: Option<&str>,
    what: &str,
) {
    let before = env.channel_pts(me, channel).await;
    let opened = env
        .as_user(me)
        .call(&DirectGetOrCreate {
            user_id: peer.user_id,
        })
        .await;
    let sent = env
        .as_user(me)
        .call(&send_text(channel, &format!("{what}-{}", me.user_id)))
        .await;
    let after = env.channel_pts(me, channel).await;
    match expected {
        None => {
            let opened = opened.unwrap_or_else(|err| panic!("{what}: get_or_create: {err}"));
            assert_eq!(
                (opened.channel_id, opened.created),
                (channel, false),
                "{what}"
            );
            let sent = sent.unwrap_or_else(|err| panic!("{what}: send: {err}"));
            assert_eq!(sent.pts, before + 1, "{what}");
            assert_eq!(after, before + 1, "{what}");
        }
        Some(code) => {
            assert_eq!(code_of(opened, what), code, "{what}: get_or_create");
            assert_eq!(code_of(sent, what), code, "{what}: send");
            assert_eq!(after, before, "{what}: a refusal leaves the pts alone");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_follow_the_blacklist_and_the_peers_privacy() {
    let env = Env::start();
    for (i, case) in DIRECT_CASES.iter().enumerate() {
        let what = format!(
            "{:?} / peer allows {:?}",
            case.relationship, case.peer_allows
        );
        let me = env.register(&format!("me{i}")).await;
        let peer = env.register(&format!("peer{i}")).await;
        // The channel exists before anything restricts it.
        let channel = env.direct(&me, &peer).await;
        match case.relationship {
            Relationship::Friend => {
                assert_eq!(env.befriend(&me, &peer).await, channel, "{what}");
            }
            Relationship::Stranger => {}
            Relationship::PeerBlockedMe => env.block(&peer, &me).await,
            Relationship::IBlockedPeer => env.block(&me, &peer).await,
        }
        let privacy = env
            .set_privacy(
                &peer,
                PrivacyUpdate {
                    direct_messages: Some(case.peer_allows),
                    ..PrivacyUpdate::default()
                },
            )
            .await;
        assert_eq!(privacy.direct_messages, case.peer_allows, "{what}");
        try_direct(&env, &me, &peer, channel, case.expected, &what).await;
        try_direct(
            &env,
            &peer,
            &me,
            channel,
            case.reverse,
            &format!("{what}, written back"),
        )
        .await;
    }

    // A block either way refuses friend requests.
    let alice = env.register("alice").await;
    let bob = env.register("bob").await;
    env.block(&alice, &bob).await;
    let err = env.as_user(&bob).call(&apply(alice.user_id, None)).await;
    assert_eq!(code_of(err, "the blocked one applies"), "blocked");
    let err = env.as_user(&alice).call(&apply(bob.user_id, None)).await;
    assert_eq!(code_of(err, "the blocker applies"), "blocked");
    for user in [&alice, &bob] {
        let pending = env.pending(user).await;
        assert!(pending.incoming.is_empty() && pending.outgoing.is_empty());
    }

    // Blocking withdraws what is pending between the two, either way.
    let carol = env.register("carol").await;
    let dave = env.register("dave").await;
    let erin = env.register("erin").await;
    let from_dave = env
        .as_user(&dave)
        .call(&apply(carol.user_id, None))
        .await
        .expect("dave applies")
        .request;
    let to_erin = env
        .as_user(&carol)
        .call(&apply(erin.user_id, None))
        .await
        .expect("carol applies")
        .request;
    env.block(&carol, &dave).await;
    env.block(&carol, &erin).await;
    for user in [&carol, &dave, &erin] {
        let pending = env.pending(user).await;
        assert!(
            pending.incoming.is_empty() && pending.outgoing.is_empty(),
            "{pending:?}"
        );
    }
    check_is(&env.check(&dave, &carol).await, false, false, false, "dave");
    check_is(
        &env.check(&carol, &erin).await,
        false,
        false,
        false,
        "carol",
    );
    for (user, kind, request) in [
        (&dave, events::FRIEND_REJECTED, &from_dave),
        (&erin, events::FRIEND_RECALLED, &to_erin),
    ] {
        let inbox = env.inbox(user).await;
        let last = inbox.last().expect("an inbox entry");
        assert_eq!(last.event, kind, "{inbox:#?}");
        assert_eq!(request_of(last).request_id, request.request_id);
    }
    let err = env
        .as_user(&carol)
        .call(&FriendAccept {
            user_id: dave.user_id,
        })
        .await;
    assert_eq!(code_of(err, "accept a withdrawn request"), "not_found");
    assert!(env.friends(&carol).await.is_empty());
}

// ---------------------------------------------------------------------------
// 4. The blacklist and presence

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blacklist_is_kept_and_hides_presence() {
    let env = Env::start();
    let alice = env.register("alice").await;
    let bob = env.register("bob").await;
    let carol = env.register("carol").await;
    let dave = env.register("dave").await;
    let eve = env.register("eve").await;
    let http = env.as_user(&alice);

    assert!(http.call(&BlacklistList {}).await.unwrap().users.is_empty());
    for (user, code) in [
        (alice.user_id, "bad_request"),
        (UserId::new(987_654), "not_found"),
    ] {
        let err = http.call(&BlacklistAdd { user_id: user }).await;
        assert_eq!(code_of(err, "block oneself or no one"), code);
    }

    // Before any block, Bob and Carol both watch Alice come online, and
    // Alice (on a second session) and Carol watch Eve.
    let mut bob_ws = env.connect(&bob, Encoding::Json).await;
    let mut carol_ws = env.connect(&carol, Encoding::Binary).await;
    subscribe(&bob_ws, &alice).await;
    subscribe(&carol_ws, &alice).await;
    let alice_ws = env.connect(&alice, Encoding::Json).await;
    next_presence(&mut bob_ws, "bob", &alice, true).await;
    next_presence(&mut carol_ws, "carol", &alice, true).await;
    assert_online(&env.status(&bob, &alice).await, "bob sees alice");
    let mut alice_watch = env.connect(&alice, Encoding::Binary).await;
    subscribe(&alice_watch, &eve).await;
    subscribe(&carol_ws, &eve).await;

    // Add, list, check, remove.
    http.call(&BlacklistAdd {
        user_id: bob.user_id,
    })
    .await
    .expect("block bob");
    let again = http
        .call(&BlacklistAdd {
            user_id: bob.user_id,
        })
        .await;
    assert_eq!(code_of(again, "block twice"), "conflict");
    http.call(&BlacklistAdd {
        user_id: dave.user_id,
    })
    .await
    .expect("block dave");
    let list = http.call(&BlacklistList {}).await.expect("list").users;
    let listed: Vec<(UserId, &str, bool)> = list
        .iter()
        .map(|b| (b.user.user_id, b.user.username.as_str(), b.user.is_friend))
        .collect();
    assert_eq!(
        listed,
        vec![(dave.user_id, "dave", false), (bob.user_id, "bob", false)],
        "newest first"
    );
    for (user, blocked) in [(&bob, true), (&dave, true), (&carol, false)] {
        let status = http
            .call(&BlacklistCheck {
                user_id: user.user_id,
            })
            .await
            .expect("check");
        assert_eq!((status.user_id, status.blocked), (user.user_id, blocked));
    }
    let theirs = env
        .as_user(&bob)
        .call(&BlacklistCheck {
            user_id: alice.user_id,
        })
        .await
        .expect("check");
    assert!(!theirs.blocked, "bob has blocked no one");
    http.call(&BlacklistRemove {
        user_id: dave.user_id,
    })
    .await
    .expect("unblock dave");
    for (user, what) in [(&dave, "unblock twice"), (&carol, "unblock a stranger")] {
        let err = http
            .call(&BlacklistRemove {
                user_id: user.user_id,
            })
            .await;
        assert_eq!(code_of(err, what), "not_found", "{what}");
    }
    let list = http.call(&BlacklistList {}).await.expect("list").users;
    assert_eq!(
        list.iter().map(|b| b.user.user_id).collect::<Vec<_>>(),
        vec![bob.user_id]
    );
    let kinds: Vec<(String, serde_json::Value)> = env
        .inbox(&alice)
        .await
        .into_iter()
        .filter(|e| e.event.starts_with("blacklist/"))
        .map(|e| (e.event, e.body["user_id"].clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (events::BLACKLIST_ADDED.to_owned(), json!(bob.user_id)),
            (events::BLACKLIST_ADDED.to_owned(), json!(dave.user_id)),
            (events::BLACKLIST_REMOVED.to_owned(), json!(dave.user_id)),
        ]
    );

    // Bob no longer sees Alice, who is connected; Carol still does.
    assert_hidden(&env.status(&bob, &alice).await, "bob looks at alice");
    let batch = env
        .as_user(&bob)
        .call(&StatusBatchGet {
            user_ids: vec![alice.user_id, carol.user_id],
        })
        .await
        .expect("batch");
    assert_hidden(&batch.statuses[0], "bob's batch");
    assert_online(&batch.statuses[1], "bob sees carol");
    assert_online(&env.status(&carol, &alice).await, "carol looks at alice");
    // A block hides presence both ways.
    assert_hidden(&env.status(&alice, &bob).await, "alice looks at bob");

    // Alice blocks Eve, whom she was watching: her subscription ends too.
    env.block(&alice, &eve).await;
    let eve_ws = env.connect(&eve, Encoding::Json).await;
    next_presence(&mut carol_ws, "carol", &eve, true).await;
    assert_no_event(&mut alice_watch, "alice", events::PRESENCE_CHANGED).await;
    assert_hidden(&env.status(&alice, &eve).await, "alice looks at eve");
    assert_hidden(&env.status(&eve, &alice).await, "eve looks at alice");
    eve_ws.close().await;
    next_presence(&mut carol_ws, "carol", &eve, false).await;
    assert_no_event(&mut alice_watch, "alice", events::PRESENCE_CHANGED).await;
    alice_watch.close().await;

    // Alice leaves and comes back: Carol hears it, Bob's earlier
    // subscription has ended.
    alice_ws.close().await;
    next_presence(&mut carol_ws, "carol", &alice, false).await;
    assert_no_event(&mut bob_ws, "bob", events::PRESENCE_CHANGED).await;
    let alice_ws = env.connect(&alice, Encoding::Json).await;
    next_presence(&mut carol_ws, "carol", &alice, true).await;
    assert_no_event(&mut bob_ws, "bob", events::PRESENCE_CHANGED).await;
    // A fresh subscription reads as hidden and hears nothing either.
    assert_hidden(&subscribe(&bob_ws, &alice).await, "bob subscribes");
    alice_ws.close().await;
    next_presence(&mut carol_ws, "carol", &alice, false).await;
    assert_no_event(&mut bob_ws, "bob", events::PRESENCE_CHANGED).await;
    let alice_ws = env.connect(&alice, Encoding::Json).await;
    next_presence(&mut carol_ws, "carol", &alice, true).await;
    assert_no_event(&mut bob_ws, "bob", events::PRESENCE_CHANGED).await;

    // Unblocking restores it.
    http.call(&BlacklistRemove {
        user_id: bob.user_id,
    })
    .await
    .expect("unblock bob");
    let list = http.call(&BlacklistList {}).await.expect("list").users;
    assert_eq!(
        list.iter().map(|b| b.user.user_id).collect::<Vec<_>>(),
        vec![eve.user_id]
    );
    assert_online(&env.status(&bob, &alice).await, "bob, unblocked");
    assert_online(&subscribe(&bob_ws, &alice).await, "bob, unblocked");
    alice_ws.close().await;
    next_presence(&mut bob_ws, "bob", &alice, false).await;
}

// ---------------------------------------------------------------------------
// 5. Privacy settings

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_settings_are_kept_and_last_seen_follows_them() {
    let env = Env::start();
    let alice = env.register("alice").await;
    let fred = env.register("fred").await;
    let sam = env.register("sam").await;
    env.befriend(&fred, &alice).await;
    let http = env.as_user(&alice);

    let everyone = Privacy {
        direct_messages: Audience::Everyone,
        searchable_by: Audience::Everyone,
        group_invites: Audience::Everyone,
        last_seen: Audience::Everyone,
    };
    assert_eq!(http.call(&PrivacyGet {}).await.unwrap(), everyone);
    let updated = env
        .set_privacy(
            &alice,
            PrivacyUpdate {
                group_invites: Some(Audience::Friends),
                ..PrivacyUpdate::default()
            },
        )
        .await;
    let expected = Privacy {
        group_invites: Audience::Friends,
        ..everyone
    };
    assert_eq!(updated, expected);
    assert_eq!(http.call(&PrivacyGet {}).await.unwrap(), expected);
    let refused = http
        .call(&PrivacyUpdate {
            direct_messages: Some(Audience::Nobody),
            last_seen: Some(Audience::Nobody),
            ..PrivacyUpdate::default()
        })
        .await;
    assert_eq!(code_of(refused, "direct_messages: nobody"), "bad_request");
    let refused = http
        .call_raw(
            "account/privacy/update",
            json!({ "last_seen": "sometimes" }),
        )
        .await;
    assert_eq!(code_of(refused, "an unknown audience"), "bad_request");
    assert_eq!(
        http.call(&PrivacyGet {}).await.unwrap(),
        expected,
        "refusals change nothing"
    );
    // Others' settings are their own.
    assert_eq!(
        env.as_user(&fred).call(&PrivacyGet {}).await.unwrap(),
        everyone
    );

    // Everyone sees Alice by default.
    let mut fred_ws = env.connect(&fred, Encoding::Json).await;
    let mut sam_ws = env.connect(&sam, Encoding::Binary).await;
    let alice_ws = env.connect(&alice, Encoding::Json).await;
    assert_online(&subscribe(&fred_ws, &alice).await, "fred");
    assert_online(&subscribe(&sam_ws, &alice).await, "sam");

    // last_seen: nobody hides her from friends and strangers alike.
    env.set_privacy(
        &alice,
        PrivacyUpdate {
            last_seen: Some(Audience::Nobody),
            ..PrivacyUpdate::default()
        },
    )
    .await;
    assert_hidden(&env.status(&fred, &alice).await, "fred, nobody");
    assert_hidden(&env.status(&sam, &alice).await, "sam, nobody");
    assert_online(&env.status(&alice, &alice).await, "alice sees herself");
    alice_ws.close().await;
    assert_no_event(&mut fred_ws, "fred", events::PRESENCE_CHANGED).await;
    assert_no_event(&mut sam_ws, "sam", events::PRESENCE_CHANGED).await;
    let alice_ws = env.connect(&alice, Encoding::Json).await;
    assert_hidden(
        &subscribe(&fred_ws, &alice).await,
        "fred subscribes, nobody",
    );
    assert_hidden(&subscribe(&sam_ws, &alice).await, "sam subscribes, nobody");

    // last_seen: friends shows her to Fred only.
    env.set_privacy(
        &alice,
        PrivacyUpdate {
            last_seen: Some(Audience::Friends),
            ..PrivacyUpdate::default()
        },
    )
    .await;
    assert_online(&env.status(&fred, &alice).await, "fred, friends");
    assert_hidden(&env.status(&sam, &alice).await, "sam, friends");
    assert_online(
        &subscribe(&fred_ws, &alice).await,
        "fred subscribes, friends",
    );
    assert_hidden(&subscribe(&sam_ws, &alice).await, "sam subscribes, friends");
    alice_ws.close().await;
    next_presence(&mut fred_ws, "fred", &alice, false).await;
    assert_no_event(&mut sam_ws, "sam", events::PRESENCE_CHANGED).await;
    let last_seen = env.status(&fred, &alice).await;
    assert!(
        !last_seen.online && last_seen.last_seen_ms.is_some(),
        "{last_seen:?}"
    );
    let alice_ws = env.connect(&alice, Encoding::Json).await;
    next_presence(&mut fred_ws, "fred", &alice, true).await;
    assert_no_event(&mut sam_ws, "sam", events::PRESENCE_CHANGED).await;

    // Once they are no longer friends, Fred is shut out too.
    http.call(&FriendRemove {
        user_id: fred.user_id,
    })
    .await
    .expect("remove fred");
    assert_hidden(&env.status(&fred, &alice).await, "fred, no longer a friend");
    alice_ws.close().await;
    assert_no_event(&mut fred_ws, "fred", events::PRESENCE_CHANGED).await;
}

// ---------------------------------------------------------------------------
// 5b. User search

/// Every page of a search, following `next_cursor`.
async fn search_all(http: &HttpClient, query: &str, limit: u32) -> Vec<(String, bool)> {
    let mut found = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let page = http
            .call(&UserSearch {
                query: query.to_owned(),
                cursor: cursor.clone(),
                limit: Some(limit),
            })
            .await
            .expect("account/search/query");
        assert!(
            page.users.len() <= limit as usize,
            "{} results for a limit of {limit}",
            page.users.len()
        );
        found.extend(page.users.into_iter().map(|u| (u.username, u.is_friend)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return found,
        }
    }
    panic!("search kept returning a next_cursor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_by_prefix_only_those_who_let_themselves_be_found() {
    let env = Env::start();
    let seeker = env.register("seeker").await;
    let outsider = env.register("outsider").await;
    // (username, searchable_by, friend of the seeker, has blocked the seeker)
    let people = [
        ("Zoe_a", Audience::Everyone, false, false),
        ("zoe_b", Audience::Friends, true, false),
        ("ZOE_c", Audience::Friends, false, false),
        ("zoe_d", Audience::Nobody, true, false),
        ("zoe_e", Audience::Everyone, false, true),
        ("zoe_f", Audience::Nobody, false, false),
        ("zoe_g", Audience::Everyone, false, false),
        ("Zoe_H", Audience::Everyone, true, false),
        ("zoe_i", Audience::Friends, false, false),
        ("zoe_j", Audience::Everyone, false, false),
        // A run of hidden users longer than a page's search rounds.
        ("zoe_k00", Audience::Nobody, false, false),
        ("zoe_k01", Audience::Nobody, false, false),
        ("zoe_k02", Audience::Nobody, false, false),
        ("zoe_k03", Audience::Nobody, false, false),
        ("zoe_k04", Audience::Nobody, false, false),
        ("zoe_k05", Audience::Nobody, false, false),
        ("zoe_k06", Audience::Nobody, false, false),
        ("zoe_k07", Audience::Nobody, false, false),
        ("zoe_k08", Audience::Nobody, false, false),
        ("zoe_k09", Audience::Nobody, false, false),
        ("zoe_z", Audience::Everyone, false, false),
        ("zo_x", Audience::Everyone, false, false),
        ("xzoe", Audience::Everyone, false, false),
    ];
    for (name, audience, friend, blocks) in people {
        let user = env.register(name).await;
        env.set_privacy(
            &user,
            PrivacyUpdate {
                searchable_by: Some(audience),
                ..PrivacyUpdate::default()
            },
        )
        .await;
        if friend {
            env.befriend(&seeker, &user).await;
        }
        if blocks {
            env.block(&user, &seeker).await;
        }
    }
    let owned = |list: &[(&str, bool)]| -> Vec<(String, bool)> {
        list.iter().map(|(n, f)| ((*n).to_owned(), *f)).collect()
    };
    let for_seeker = owned(&[
        ("Zoe_a", false),
        ("zoe_b", true),
        ("zoe_g", false),
        ("Zoe_H", true),
        ("zoe_j", false),
        ("zoe_z", false),
    ]);
    let for_outsider = owned(&[
        ("Zoe_a", false),
        ("zoe_e", false),
        ("zoe_g", false),
        ("Zoe_H", false),
        ("zoe_j", false),
        ("zoe_z", false),
    ]);

    for (who, user, expected) in [
        ("seeker", &seeker, &for_seeker),
        ("outsider", &outsider, &for_outsider),
    ] {
        let http = env.as_user(user);
        for query in ["zoe", "ZOE", "zOe_"] {
            let page = http
                .call(&UserSearch {
                    query: query.to_owned(),
                    cursor: None,
                    limit: Some(100),
                })
                .await
                .expect("search");
            let found: Vec<(String, bool)> = page
                .users
                .iter()
                .map(|u| (u.username.clone(), u.is_friend))
                .collect();
            assert_eq!(&found, expected, "{who}, {query:?}");
            assert_eq!(page.next_cursor, None, "{who}: one page holds them all");
        }
        // Every visible match exactly once, in order, whatever the page size.
        for limit in [1, 2, 3, 4] {
            let found = search_all(&http, "Zoe", limit).await;
            assert_eq!(&found, expected, "{who}, limit {limit}");
            let unique: BTreeSet<&String> = found.iter().map(|(n, _)| n).collect();
            assert_eq!(unique.len(), found.len(), "{who}: no duplicates");
        }
    }
    // A narrower prefix; one that matches only the unsearchable.
    let found = search_all(&env.as_user(&seeker), "ZO", 2).await;
    // `_` sorts before `e`.
    let mut wider = vec![("zo_x".to_owned(), false)];
    wider.extend(for_seeker.iter().cloned());
    assert_eq!(found, wider);
    assert!(
        search_all(&env.as_user(&outsider), "zoe_d", 5)
            .await
            .is_empty()
    );
    assert!(
        search_all(&env.as_user(&seeker), "zoe_e", 5)
            .await
            .is_empty()
    );
    let err = env
        .as_user(&seeker)
        .call(&UserSearch {
            query: "  ".to_owned(),
            cursor: None,
            limit: None,
        })
        .await;
    assert_eq!(code_of(err, "an empty query"), "bad_request");
}

// ---------------------------------------------------------------------------
// 6. Share cards

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_cards_resolve_until_they_expire_and_refuse_tampering() {
    let env = Env::start();
    let alice = env.register("alice").await;
    let bob = env.register("bob").await;
    let alice_http = env.as_user(&alice);
    let bob_http = env.as_user(&bob);
    let resolve = |code: String| {
        let bob_http = bob_http.clone();
        async move { bob_http.call(&ByQrcode { code }).await }
    };

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let card = alice_http
        .call(&ShareCard {
            ttl_secs: Some(600),
        })
        .await
        .expect("share_card");
    assert!(
        (before + 599_000..=before + 610_000).contains(&card.expires_at_ms),
        "{card:?} issued at {before}"
    );
    let found = resolve(card.code.clone()).await.expect("by_qrcode");
    assert_eq!(found.user_id, alice.user_id);
    assert_eq!(found.username, "alice");
    assert!(!found.is_friend);
    // With the default lifetime, too.
    let default = alice_http
        .call(&ShareCard { ttl_secs: None })
        .await
        .expect("share_card");
    assert!(default.expires_at_ms > before);
    assert_eq!(
        resolve(default.code).await.expect("by_qrcode").user_id,
        alice.user_id
    );

    // One character changed in the middle.
    let mut chars: Vec<char> = card.code.chars().collect();
    let middle = chars.len() / 2;
    let mut at = middle;
    while chars[at] == '.' {
        at += 1;
    }
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    assert_ne!(tampered, card.code);
    assert_eq!(
        code_of(resolve(tampered).await, "a tampered code"),
        "link_invalid"
    );
    for garbage in ["", "garbage", "not.a.code", "%%%%"] {
        assert_eq!(
            code_of(resolve(garbage.to_owned()).await, garbage),
            "link_invalid",
            "{garbage:?}"
        );
    }

    // Expiry.
    let short = alice_http
        .call(&ShareCard { ttl_secs: Some(1) })
        .await
        .expect("share_card");
    assert_eq!(
        resolve(short.code.clone()).await.expect("fresh").user_id,
        alice.user_id
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        code_of(resolve(short.code).await, "an expired code"),
        "link_expired"
    );

    // Someone who has blocked you cannot be found by card either.
    env.block(&alice, &bob).await;
    let fresh = alice_http
        .call(&ShareCard { ttl_secs: None })
        .await
        .expect("share_card");
    assert_eq!(
        code_of(resolve(fresh.code).await, "the card of a blocker"),
        "blocked"
    );

    for ttl in [0, 365 * 24 * 3600] {
        let err = alice_http
            .call(&ShareCard {
                ttl_secs: Some(ttl),
            })
            .await;
        assert_eq!(code_of(err, "a bad ttl"), "bad_request", "ttl {ttl}");
    }
}
